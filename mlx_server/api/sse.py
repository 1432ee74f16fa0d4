"""Server-sent-event framing and an idle keepalive for streamed responses."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, TypeVar

from pydantic import BaseModel
from pydantic_core import to_json

T = TypeVar("T")

_END: Any = object()
DONE = b"data: [DONE]\n\n"
KEEPALIVE_INTERVAL_S = 15.0
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
MEDIA_TYPE = "text/event-stream"


def data(payload: BaseModel | dict[str, Any]) -> bytes:
    """One `data:` event holding compact JSON (JSON never contains a raw newline)."""
    body = (
        payload.model_dump_json().encode() if isinstance(payload, BaseModel) else to_json(payload)
    )
    return b"data: " + body + b"\n\n"


def comment(text: str) -> bytes:
    """An SSE comment line: clients ignore it; it keeps proxies and sockets alive."""
    return b": " + text.replace("\r", " ").replace("\n", " ").encode() + b"\n\n"


async def with_keepalive(
    items: AsyncIterator[T], interval: float = KEEPALIVE_INTERVAL_S
) -> AsyncIterator[T | None]:
    """Yield `items`, and None whenever `interval` seconds pass with nothing new.

    The pending `anext` runs as a task that a timeout never cancels, so the underlying
    iterator is not disturbed by the waiting.
    """
    pending: asyncio.Future[T] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(items, _END))
            done, _ = await asyncio.wait({pending}, timeout=interval)
            if not done:
                yield None
                continue
            item, pending = pending.result(), None
            if item is _END:
                return
            yield item
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
