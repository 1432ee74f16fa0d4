"""Messages -> the model's own chat template -> token ids + processed images."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx

from ..tools import format_for
from .errors import InvalidRequestError
from .types import ImageInput, ImagePart, Message, TextPart, ToolSpec

# The family's image placeholder token as its processor expands it.
IMAGE_TOKENS = {
    "gemma3": "<image_soft_token>",
    "qwen2_vl": "<|image_pad|>",
    "qwen2_5_vl": "<|image_pad|>",
}


@dataclass(frozen=True)
class Turn:
    """A message as the chat template will see it: role + ordered text/image parts."""

    role: str
    parts: tuple[TextPart | ImagePart, ...]


@dataclass
class PromptInputs:
    text: str
    token_ids: list[int]
    images: tuple[ImageInput, ...]
    model_inputs: dict[str, Any] = field(default_factory=dict)  # pixel_values, image_grid_thw...
    image_spans: tuple[tuple[int, int, str], ...] = ()  # (start, end, sha256) per image
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
    if any(isinstance(p, ImagePart) for t in system for p in t.parts):
        raise InvalidRequestError("system messages cannot contain images", param="messages")
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


def _hf_content(parts: tuple[TextPart | ImagePart, ...]) -> list[dict[str, Any]]:
    return [
        {"type": "text", "text": p.text} if isinstance(p, TextPart) else {"type": "image"}
        for p in parts
    ]


def render(
    tokenizer: Any, family: str, messages: tuple[Message, ...], tools: tuple[ToolSpec, ...] = ()
) -> tuple[str, tuple[ImageInput, ...]]:
    """The prompt text through the model's own chat template, plus images in prompt order."""
    turns = normalize_turns(family, messages, tools)
    hf = []
    for t in turns:
        if t.role == "system":
            hf.append({"role": "system", "content": t.parts[0].text})
        else:
            hf.append({"role": t.role, "content": _hf_content(t.parts)})
    text = tokenizer.apply_chat_template(hf, tokenize=False, add_generation_prompt=True)
    images = tuple(p.image for t in turns for p in t.parts if isinstance(p, ImagePart))
    return text, images


def image_spans(token_ids: list[int], image_token_id: int, images: tuple[ImageInput, ...]):
    """(start, end, sha256) of each run of image tokens, matched to images in order."""
    runs: list[tuple[int, int]] = []
    start = None
    for i, tok in enumerate([*token_ids, -1]):
        if tok == image_token_id and start is None:
            start = i
        elif tok != image_token_id and start is not None:
            runs.append((start, i))
            start = None
    if len(runs) != len(images):
        raise InvalidRequestError(
            f"the prompt has {len(runs)} image placeholders for {len(images)} images"
        )
    return tuple((s, e, img.sha256) for (s, e), img in zip(runs, images))


def build_prompt(
    processor: Any, family: str, messages: tuple[Message, ...], tools: tuple[ToolSpec, ...] = ()
) -> PromptInputs:
    """Render, expand image placeholders and tokenise through the model's processor."""
    tokenizer = getattr(processor, "tokenizer", processor)
    text, images = render(tokenizer, family, messages, tools)
    kwargs: dict[str, Any] = {"text": [text], "add_special_tokens": False}
    if images:
        kwargs["images"] = [img.image for img in images]
    out = dict(processor(**kwargs))
    ids = out.pop("input_ids")
    ids = (ids.tolist() if isinstance(ids, mx.array) else list(ids))[0]
    out.pop("attention_mask", None)
    out.pop("token_type_ids", None)
    model_inputs = {k: v if isinstance(v, mx.array) else mx.array(v) for k, v in out.items()}
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKENS[family])
    spans = image_spans(ids, image_id, images) if images else ()
    bounds = _system_boundary(tokenizer, text, ids, messages)
    return PromptInputs(text, ids, images, model_inputs, spans, bounds)


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
