"""Messages -> the model's own chat template -> token ids + processed images and videos."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx

from ..tools import format_for
from .errors import InvalidRequestError
from .media_spans import IMAGE_TOKENS as IMAGE_TOKENS  # re-exported
from .media_spans import VIDEO_TOKENS, media_spans
from .types import ContentPart, ImageInput, ImagePart, Message, TextPart, ToolSpec, VideoPart

log = logging.getLogger("mlx_server.engine")

# Image-processor overrides each family's processor understands (vLLM's mm_processor_kwargs).
# Gemma 3 resizes every image to its fixed input size, so it takes none.
PROCESSOR_KWARGS: dict[str, frozenset[str]] = {
    "gemma3": frozenset(),
    "qwen2_vl": frozenset({"min_pixels", "max_pixels"}),
    "qwen2_5_vl": frozenset({"min_pixels", "max_pixels"}),
}

Media = ImageInput | VideoPart  # one media item in prompt order


@dataclass(frozen=True)
class Turn:
    """A message as the chat template will see it: role + ordered text/image/video parts."""

    role: str
    parts: tuple[ContentPart, ...]


@dataclass
class PromptInputs:
    text: str
    token_ids: list[int]
    images: tuple[ImageInput, ...]  # what the processor got as images (Gemma: video frames too)
    model_inputs: dict[str, Any] = field(default_factory=dict)  # pixel_values, image_grid_thw...
    # (start, end, content hash) per media item (image or video) in prompt order.
    image_spans: tuple[tuple[int, int, str], ...] = ()
    media: tuple[Media, ...] = ()
    # Token positions worth a cache checkpoint inside the first turn (end of system text).
    boundaries: tuple[int, ...] = ()


def _join(a: tuple, b: tuple) -> tuple:
    """Concatenate part lists; adjacent texts are joined by a blank line (templates trim items)."""
    if a and b and isinstance(a[-1], TextPart) and isinstance(b[0], TextPart):
        return (*a[:-1], TextPart(a[-1].text.rstrip() + "\n\n" + b[0].text.lstrip()), *b[1:])
    return a + b


def _merge_same_role(turns: list[Turn]) -> list[Turn]:
    out: list[Turn] = []
    for t in turns:
        if out and out[-1].role == t.role:
            out[-1] = Turn(t.role, _join(out[-1].parts, t.parts))
        else:
            out.append(t)
    return out


# Qwen-VL's template adds this system text when there is none; tools must keep it.
DEFAULT_SYSTEM = {
    "qwen2_vl": "You are a helpful assistant.",
    "qwen2_5_vl": "You are a helpful assistant.",
}


def _tool_name(messages: tuple[Message, ...], upto: int, call_id: str | None) -> str | None:
    for m in reversed(messages[:upto]):
        for call in m.tool_calls:
            if call.id == call_id:
                return call.name
    return None


def _history_turns(family: str, messages: tuple[Message, ...]) -> list[Turn]:
    """Messages as plain turns: prior tool calls and tool results rendered in the family's
    own tool convention; consecutive tool results become one user turn."""
    fmt = format_for(family)
    turns: list[Turn] = []
    results: list[tuple[str | None, str]] = []
    for i, m in enumerate(messages):
        if m.role == "tool":
            results.append((m.name or _tool_name(messages, i, m.tool_call_id), m.text))
            continue
        if results:
            turns.append(Turn("user", (TextPart(fmt.render_tool_results(results)),)))
            results = []
        if m.role == "assistant" and m.tool_calls:
            try:
                text = fmt.render_assistant(m.text, m.tool_calls)
            except ValueError as exc:
                raise InvalidRequestError(str(exc), param=f"messages[{i}].tool_calls") from exc
            turns.append(Turn("assistant", (TextPart(text),)))
        else:
            turns.append(Turn(m.role, m.content))
    if results:
        turns.append(Turn("user", (TextPart(fmt.render_tool_results(results)),)))
    return turns


def normalize_turns(
    family: str, messages: tuple[Message, ...], tools: tuple[ToolSpec, ...] = ()
) -> list[Turn]:
    """Apply the family's conversation rules (system folding, alternation) before templating."""
    if not messages:
        raise InvalidRequestError("messages must not be empty", param="messages")
    turns = _history_turns(family, messages)
    system = [t for t in turns if t.role == "system"]
    rest = [t for t in turns if t.role != "system"]
    if any(isinstance(p, ImagePart | VideoPart) for t in system for p in t.parts):
        raise InvalidRequestError(
            "system messages cannot contain images or videos", param="messages"
        )
    sys_text = "\n\n".join(
        "".join(p.text for p in t.parts if isinstance(p, TextPart)).strip() for t in system
    ).strip()
    if tools:
        base = sys_text or DEFAULT_SYSTEM.get(family, "")
        preamble = format_for(family).render_tools_preamble(tools)
        sys_text = f"{base}\n\n{preamble}" if base else preamble
    if family == "gemma3":
        rest = _merge_same_role(rest)
        # Gemma 3 has no system role and demands user/model alternation starting with user.
        if not rest or rest[0].role != "user":
            rest.insert(0, Turn("user", ()))
        for i, t in enumerate(rest):
            want = "user" if i % 2 == 0 else "assistant"
            if t.role != want:
                raise InvalidRequestError(
                    f"conversation roles must alternate user/assistant after merging; got {t.role!r} at turn {i}",
                    param="messages",
                )
    head = [Turn("system", (TextPart(sys_text),))] if sys_text else []
    return head + rest


def _hf_content(family: str, parts: tuple[ContentPart, ...]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p in parts:
        if isinstance(p, TextPart):
            out.append({"type": "text", "text": p.text})
        elif isinstance(p, ImagePart):
            out.append({"type": "image"})
        elif family in VIDEO_TOKENS:
            out.append({"type": "video"})
        else:  # no video tokens (Gemma 3): the frames, in order, as images
            out.extend({"type": "image"} for _ in p.frames)
    return out


def render(
    tokenizer: Any, family: str, messages: tuple[Message, ...], tools: tuple[ToolSpec, ...] = ()
) -> tuple[str, tuple[Media, ...]]:
    """The prompt text through the model's own chat template, plus the media in prompt order
    (an `ImageInput` per image, the `VideoPart` itself per video)."""
    turns = normalize_turns(family, messages, tools)
    hf = []
    for t in turns:
        if t.role == "system":
            hf.append({"role": "system", "content": t.parts[0].text})
        else:
            hf.append({"role": t.role, "content": _hf_content(family, t.parts)})
    text = tokenizer.apply_chat_template(hf, tokenize=False, add_generation_prompt=True)
    media = tuple(
        p.image if isinstance(p, ImagePart) else p
        for t in turns
        for p in t.parts
        if isinstance(p, ImagePart | VideoPart)
    )
    return text, media


def processor_kwargs(family: str, mm_kwargs: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    """The image-processor overrides for this family; a key it cannot honour is a 400."""
    allowed = PROCESSOR_KWARGS[family]
    for key, _ in mm_kwargs:
        if key not in allowed:
            why = (
                "this model resizes every image to its fixed input size"
                if not allowed
                else f"supported: {', '.join(sorted(allowed))}"
            )
            raise InvalidRequestError(
                f"mm_processor_kwargs.{key} is not supported by {family} models ({why})",
                param="mm_processor_kwargs",
                code="unsupported_parameter",
            )
    return dict(mm_kwargs)


def _processor_inputs(family: str, media: tuple[Media, ...]) -> tuple[list[ImageInput], list]:
    """Images (Gemma: video frames among them, in order) and, for Qwen, videos as frame lists."""
    images: list[ImageInput] = []
    videos: list[list[Any]] = []
    for item in media:
        if isinstance(item, ImageInput):
            images.append(item)
        elif family in VIDEO_TOKENS:
            videos.append([f.image for f in item.frames])
        else:
            images.extend(item.frames)
    return images, videos


def build_prompt(
    processor: Any,
    family: str,
    messages: tuple[Message, ...],
    tools: tuple[ToolSpec, ...] = (),
    mm_processor_kwargs: tuple[tuple[str, Any], ...] = (),
) -> PromptInputs:
    """Render, expand image/video placeholders and tokenise through the model's processor."""
    tokenizer = getattr(processor, "tokenizer", processor)
    overrides = processor_kwargs(family, mm_processor_kwargs)
    text, media = render(tokenizer, family, messages, tools)
    images, videos = _processor_inputs(family, media)
    kwargs: dict[str, Any] = {"text": [text], "add_special_tokens": False}
    if images:
        kwargs["images"] = [img.image for img in images]
        kwargs.update(overrides)
    if videos:
        kwargs["videos"] = videos
    try:
        out = dict(processor(**kwargs))
    except ValueError as exc:  # sizes or aspect ratios the processor cannot handle
        log.info("processor refused the media: %s", exc)
        raise InvalidRequestError(
            f"the model's processor cannot handle this media: {exc}", param="messages"
        ) from None
    ids = out.pop("input_ids")
    ids = (ids.tolist() if isinstance(ids, mx.array) else list(ids))[0]
    out.pop("attention_mask", None)
    out.pop("token_type_ids", None)
    model_inputs = {k: v if isinstance(v, mx.array) else mx.array(v) for k, v in out.items()}
    if videos:
        # Qwen2.5-VL's temporal RoPE needs the seconds each temporal patch spans.
        video_proc = getattr(processor, "video_processor", None) or processor.image_processor
        patch = getattr(video_proc, "temporal_patch_size", 2)
        fps = [m.fps for m in media if isinstance(m, VideoPart)]
        model_inputs["second_per_grid_ts"] = mx.array([patch / f for f in fps])
    spans = media_spans(ids, family, tokenizer, media) if media else ()
    bounds = _system_boundary(tokenizer, text, ids, messages)
    return PromptInputs(text, ids, tuple(images), model_inputs, spans, media, bounds)


def _system_boundary(
    tokenizer: Any, text: str, ids: list[int], messages: tuple[Message, ...]
) -> tuple[int, ...]:
    """Token position right after the system text, when tokenisation splits cleanly there:
    requests sharing a system prompt but asking something else can reuse up to it."""
    system = next((m.text.strip() for m in messages if m.role == "system" and m.text), "")
    at = text.find(system) if system else -1
    if at < 0:
        return ()
    end = at + len(system)
    while text.startswith("\n", end):
        end += 1
    prefix = tokenizer(text[:end], add_special_tokens=False)["input_ids"]
    return (len(prefix),) if 0 < len(prefix) < len(ids) and ids[: len(prefix)] == prefix else ()
