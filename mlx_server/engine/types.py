"""Frozen value types the engine speaks. No pydantic, no HTTP: the API layer translates."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal

from PIL import Image

Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "tool_calls", "cancelled", "error"]


@dataclass(frozen=True)
class SamplingParams:
    """Per-request decoding controls. `temperature == 0` means greedy."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    logit_bias: tuple[tuple[int, float], ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0


@dataclass(frozen=True, eq=False)
class ImageInput:
    """A decoded RGB image and the sha256 of its pixels (mode, size and bytes)."""

    image: Image.Image
    sha256: str

    @classmethod
    def from_pil(cls, image: Image.Image) -> ImageInput:
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        digest = hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode())
        digest.update(rgb.tobytes())
        return cls(image=rgb, sha256=digest.hexdigest())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ImageInput) and other.sha256 == self.sha256

    def __hash__(self) -> int:
        return hash(self.sha256)


@dataclass(frozen=True)
class TextPart:
    text: str


@dataclass(frozen=True)
class ImagePart:
    image: ImageInput


@dataclass(frozen=True)
class VideoPart:
    """Frames sampled from a video at `fps` frames per second of video time, in order."""

    frames: tuple[ImageInput, ...]
    fps: float

    @property
    def sha256(self) -> str:
        """Identity of the video as the model sees it: the frames and their sampling rate."""
        digest = hashlib.sha256(f"video:{self.fps!r}:{len(self.frames)}:".encode())
        for frame in self.frames:
            digest.update(frame.sha256.encode())
        return digest.hexdigest()


ContentPart = TextPart | ImagePart | VideoPart
MediaPart = ImagePart | VideoPart


@dataclass(frozen=True)
class ToolCallSpec:
    """A tool call already made by the assistant in the conversation history."""

    id: str
    name: str
    arguments: str  # JSON text, as OpenAI sends it


@dataclass(frozen=True)
class Message:
    role: Role
    content: tuple[ContentPart, ...] = ()
    tool_calls: tuple[ToolCallSpec, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.content if isinstance(p, TextPart))

    @property
    def images(self) -> tuple[ImageInput, ...]:
        return tuple(p.image for p in self.content if isinstance(p, ImagePart))

    @property
    def videos(self) -> tuple[VideoPart, ...]:
        return tuple(p for p in self.content if isinstance(p, VideoPart))


@dataclass(frozen=True)
class ToolSpec:
    """One function the model may call: name, description, JSON-schema parameters."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class Constraint:
    """Constrained decoding request: a llguidance grammar (lark syntax, may embed %json).

    `key` identifies the grammar for the compile cache (e.g. a hash of the schema).
    """

    grammar: str
    key: str
    kind: Literal["json", "tool_call", "grammar"] = "grammar"


ToolChoice = Literal["auto", "none", "required", "function"]


@dataclass(frozen=True)
class GenerationRequest:
    """One chat request as the engine sees it.

    `tools` are offered to the model (empty when tool_choice is "none"). With tool_choice
    "required" (any tool) or "function" (`tool_name`), the engine forces a well-formed call
    by constrained decoding; `constraint` is any other constraint (response_format).
    """

    request_id: str
    messages: tuple[Message, ...]
    sampling: SamplingParams = SamplingParams()
    tools: tuple[ToolSpec, ...] = ()
    constraint: Constraint | None = None
    tool_choice: ToolChoice = "auto"
    tool_name: str | None = None
    parallel_tool_calls: bool = True
    # Image-processor overrides (vLLM's `mm_processor_kwargs`), e.g. (("max_pixels", 50176),).
    mm_processor_kwargs: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class TopLogprob:
    token: str
    logprob: float


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    top: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True)
class PromptReady:
    """First event of every job: the prompt was rendered, tokenised and accepted."""

    prompt_tokens: int
    cached_tokens: int


@dataclass(frozen=True)
class PrefillProgress:
    done: int
    total: int


@dataclass(frozen=True)
class TokenEvent:
    """Text produced by one or more decode steps; stop strings already removed.

    The final event of a job carries `finish_reason` and `usage` (its text may be empty).
    """

    text: str
    token_ids: tuple[int, ...] = ()
    logprobs: tuple[TokenLogprob, ...] = ()
    finish_reason: FinishReason | None = None
    usage: Usage | None = None


EngineEvent = PromptReady | PrefillProgress | TokenEvent


@dataclass(frozen=True)
class ModelInfo:
    model_id: str
    family: Literal["gemma3", "qwen2_vl", "qwen2_5_vl"]
    context_length: int
    created: int
    supports_images: bool = True
