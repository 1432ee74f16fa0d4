"""OpenAI chat messages (pydantic) -> the engine's frozen `Message`s.

Role rules follow OpenAI: `developer` is a system message; images and videos only in user
messages; `tool_calls` only on assistant messages; a tool message needs `tool_call_id`; content
may be null only on an assistant message that makes tool calls.

Media comes in two passes: `media_refs` lists what to fetch (checking each part's shape first),
the media package resolves it, and `convert_messages` puts the decoded parts in place.
"""

from __future__ import annotations

from collections.abc import Mapping

from mlx_server.engine.errors import InvalidRequestError
from mlx_server.engine.types import ContentPart, MediaPart, Message, TextPart, ToolCallSpec

from .media.refs import MediaRef
from .protocol import ChatMessage
from .protocol import ContentPart as ContentPartIn

_ROLES = {"developer": "system"}
MEDIA_TYPES = {"image_url": "image", "video_url": "video"}


def _media_ref(part: ContentPartIn, role: str, param: str) -> MediaRef:
    kind = MEDIA_TYPES[part.type]
    field = part.image_url if kind == "image" else part.video_url
    if field is None and part.uuid is None:
        raise InvalidRequestError(
            f"{param}.{part.type} is required (or a uuid naming media sent before)",
            param=f"{param}.{part.type}",
        )
    if role != "user":
        raise InvalidRequestError(
            f"{kind}s are only allowed in user messages, not in a {role} message", param=param
        )
    return MediaRef(param, kind, None if field is None else field.url, part.uuid)


def _check_type(part: ContentPartIn, param: str) -> None:
    if part.type == "text":
        if part.text is None:
            raise InvalidRequestError(f"{param}.text is required", param=f"{param}.text")
        return
    if part.type in MEDIA_TYPES:
        return
    if part.type == "input_audio":
        raise InvalidRequestError(
            "audio input is not supported", param=f"{param}.type", code="unsupported_content"
        )
    raise InvalidRequestError(
        f"unsupported content part type {part.type[:40]!r}; supported: text, image_url, video_url",
        param=f"{param}.type",
        code="unsupported_content",
    )


def media_refs(messages: list[ChatMessage]) -> tuple[MediaRef, ...]:
    """Every image and video part in prompt order, its shape and role checked (400s name it)."""
    refs: list[MediaRef] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg.content, list):
            continue
        for j, part in enumerate(msg.content):
            param = f"messages[{i}].content[{j}]"
            _check_type(part, param)
            if part.type in MEDIA_TYPES:
                refs.append(_media_ref(part, msg.role, param))
    return tuple(refs)


def _content(
    msg: ChatMessage, param: str, media: Mapping[str, MediaPart]
) -> tuple[ContentPart, ...]:
    if msg.content is None:
        if msg.role == "assistant" and msg.tool_calls:
            return ()
        raise InvalidRequestError(f"{param}.content is required", param=f"{param}.content")
    if isinstance(msg.content, str):
        return (TextPart(msg.content),) if msg.content else ()
    parts: list[ContentPart] = []
    for j, part in enumerate(msg.content):
        where = f"{param}.content[{j}]"
        _check_type(part, where)
        if part.type in MEDIA_TYPES:
            parts.append(media[where])
        elif part.text:
            parts.append(TextPart(part.text))
    return tuple(parts)


def _tool_calls(msg: ChatMessage, param: str) -> tuple[ToolCallSpec, ...]:
    if not msg.tool_calls:
        return ()
    if msg.role != "assistant":
        raise InvalidRequestError(
            f"only assistant messages may carry tool_calls, not a {msg.role} message",
            param=f"{param}.tool_calls",
        )
    return tuple(
        ToolCallSpec(id=c.id, name=c.function.name, arguments=c.function.arguments)
        for c in msg.tool_calls
    )


def convert_message(msg: ChatMessage, index: int, media: Mapping[str, MediaPart]) -> Message:
    """One OpenAI message -> an engine `Message`; errors name `messages[index]...`.

    `media` maps each media part's path (`messages[1].content[0]`) to its decoded part."""
    param = f"messages[{index}]"
    if msg.role == "tool" and not msg.tool_call_id:
        raise InvalidRequestError(
            "a tool message needs the tool_call_id it answers", param=f"{param}.tool_call_id"
        )
    return Message(
        role=_ROLES.get(msg.role, msg.role),  # type: ignore[arg-type]
        content=_content(msg, param, media),
        tool_calls=_tool_calls(msg, param),
        tool_call_id=msg.tool_call_id if msg.role == "tool" else None,
        name=msg.name,
    )


def convert_messages(
    messages: list[ChatMessage], media: Mapping[str, MediaPart] | None = None
) -> tuple[Message, ...]:
    """All messages, in order. Raises InvalidRequestError naming the offending one."""
    resolved = media or {}
    return tuple(convert_message(m, i, resolved) for i, m in enumerate(messages))
