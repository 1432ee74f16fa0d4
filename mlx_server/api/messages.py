"""OpenAI chat messages (pydantic) -> the engine's frozen `Message`s, images decoded.

Role rules follow OpenAI: `developer` is a system message; images only in user messages;
`tool_calls` only on assistant messages; a tool message needs `tool_call_id`; content may be
null only on an assistant message that makes tool calls.
"""

from __future__ import annotations

from collections.abc import Callable

from mlx_server.engine.errors import InvalidRequestError
from mlx_server.engine.types import (
    ContentPart,
    ImageInput,
    ImagePart,
    Message,
    TextPart,
    ToolCallSpec,
)

from .protocol import ChatMessage
from .protocol import ContentPart as ContentPartIn

# (data URL, param for errors) -> decoded image; media.decode_image_url in production.
ImageDecoder = Callable[[str, str], ImageInput]

_ROLES = {"developer": "system"}


def _part(
    part: ContentPartIn, role: str, param: str, decode_image: ImageDecoder
) -> ContentPart | None:
    if part.type == "text":
        if part.text is None:
            raise InvalidRequestError(f"{param}.text is required", param=f"{param}.text")
        return TextPart(part.text) if part.text else None
    if part.type == "image_url":
        if part.image_url is None:
            raise InvalidRequestError(f"{param}.image_url is required", param=f"{param}.image_url")
        if role != "user":
            raise InvalidRequestError(
                f"images are only allowed in user messages, not in a {role} message",
                param=param,
            )
        return ImagePart(decode_image(part.image_url.url, f"{param}.image_url"))
    if part.type == "input_audio":
        raise InvalidRequestError(
            "audio input is not supported", param=f"{param}.type", code="unsupported_content"
        )
    raise InvalidRequestError(
        f"unsupported content part type {part.type[:40]!r}; supported: text, image_url",
        param=f"{param}.type",
        code="unsupported_content",
    )


def _content(msg: ChatMessage, param: str, decode_image: ImageDecoder) -> tuple[ContentPart, ...]:
    if msg.content is None:
        if msg.role == "assistant" and msg.tool_calls:
            return ()
        raise InvalidRequestError(f"{param}.content is required", param=f"{param}.content")
    if isinstance(msg.content, str):
        return (TextPart(msg.content),) if msg.content else ()
    parts = (
        _part(part, msg.role, f"{param}.content[{j}]", decode_image)
        for j, part in enumerate(msg.content)
    )
    return tuple(p for p in parts if p is not None)


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


def convert_message(msg: ChatMessage, index: int, decode_image: ImageDecoder) -> Message:
    """One OpenAI message -> an engine `Message`; errors name `messages[index]...`."""
    param = f"messages[{index}]"
    if msg.role == "tool" and not msg.tool_call_id:
        raise InvalidRequestError(
            "a tool message needs the tool_call_id it answers", param=f"{param}.tool_call_id"
        )
    return Message(
        role=_ROLES.get(msg.role, msg.role),  # type: ignore[arg-type]
        content=_content(msg, param, decode_image),
        tool_calls=_tool_calls(msg, param),
        tool_call_id=msg.tool_call_id if msg.role == "tool" else None,
        name=msg.name,
    )


def convert_messages(
    messages: list[ChatMessage], decode_image: ImageDecoder
) -> tuple[Message, ...]:
    """All messages, in order. Raises InvalidRequestError naming the offending one."""
    return tuple(convert_message(m, i, decode_image) for i, m in enumerate(messages))


def has_images(messages: list[ChatMessage]) -> bool:
    """Whether any message carries an image part (decoding then belongs off the event loop)."""
    return any(
        isinstance(m.content, list) and any(p.type == "image_url" for p in m.content)
        for m in messages
    )
