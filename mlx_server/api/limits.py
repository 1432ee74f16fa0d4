"""Request-size limits: body bytes (counted as they arrive), JSON nesting depth, message count.

The body is counted chunk by chunk, so neither a lying Content-Length nor a chunked body can make
the server hold more than the limit. (Read deadlines for slow clients live in `server.py`, at
the protocol level, where they also cover requests whose body nobody reads.)
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mlx_server.config import Settings

from .errors import ApiError, error_response

# The connection is closed after these: the rest of an oversized body is never read.
_CLOSE = {"Connection": "close"}


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        f"The request body is larger than this server's limit of {limit} bytes "
        f"({limit / 2**20:g} MiB; --max-body-bytes)",
        code="request_too_large",
        headers=_CLOSE,
    )


def _content_length(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return value.decode("latin-1")
    return None


class BodyLimitMiddleware:
    """413 `request_too_large` once a body passes `max_bytes`: at once for a declared
    Content-Length above it, else as soon as the bytes received pass it."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        declared_size = int(declared) if declared and declared.strip().isdigit() else 0
        if declared_size > self.max_bytes:
            await error_response(_too_large(self.max_bytes))(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _too_large(self.max_bytes)  # the route's error handler answers
            return message

        await self.app(scope, counting_receive, send)


def json_depth(value: Any) -> int:
    """Nesting depth of parsed JSON: a scalar is 0, `[]` and `{}` are 1, `[[1]]` is 2.

    Iterative, so a hostile document cannot exhaust the Python stack.
    """
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return deepest


def check_json_limits(data: dict[str, Any], settings: Settings) -> None:
    """400 for too many messages or too deep a document, before pydantic walks it."""
    messages = data.get("messages")
    if isinstance(messages, list) and len(messages) > settings.max_messages:
        raise ApiError(
            400,
            f"messages has {len(messages)} items; this server takes at most "
            f"{settings.max_messages}",
            param="messages",
            code="too_many_messages",
        )
    depth = json_depth(data)
    if depth > settings.max_json_depth:
        raise ApiError(
            400,
            f"The request body nests {depth} levels deep; this server takes at most "
            f"{settings.max_json_depth}",
            code="json_too_deep",
        )


def install_limits(app: FastAPI, settings: Settings) -> None:
    """Add the body-size limit (innermost of the request guards)."""
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
