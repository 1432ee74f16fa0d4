"""One log line and one metrics record per request, under a request id (`x-request-id`).

`RequestLogMiddleware` is the outermost layer: it gives every request a `RequestRecord`, which
the chat route fills in (tokens, finish reason, time to first token) through `record_of` and
`metered`; when the response is done it logs one line and feeds the app's `Metrics`.
Prompt text and header values never reach the log.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mlx_server.engine.types import Usage

from .output import Delta, Finish, Held, Piece

log = logging.getLogger("mlx_server.api")

_SANE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,127}")
_STATE_KEY = "request_record"
# Probes and scrapes would drown the log at info level; their failures still show.
_QUIET_PATHS = frozenset({"/health", "/metrics"})
CLIENT_GONE = 499  # nginx's "client closed request": no status line was ever sent


@dataclass
class RequestRecord:
    """What one request did, filled in as it runs."""

    request_id: str
    method: str
    path: str
    started: float
    status: int | None = None
    completion_id: str | None = None
    usage: Usage | None = None
    finish_reason: str | None = None  # stop, length, tool_calls, error, disconnected
    error_code: str | None = None
    first_token_at: float | None = None
    finished_at: float | None = None
    ended: float | None = None

    @property
    def duration(self) -> float:
        return (self.ended or time.perf_counter()) - self.started

    @property
    def ttft(self) -> float | None:
        """Seconds from the request's arrival to its first output token."""
        return None if self.first_token_at is None else self.first_token_at - self.started

    @property
    def decode_rate(self) -> float | None:
        """Tokens per second after the first one (None with fewer than two tokens)."""
        if self.usage is None or self.first_token_at is None or self.finished_at is None:
            return None
        elapsed = self.finished_at - self.first_token_at
        tokens = self.usage.completion_tokens - 1
        return tokens / elapsed if tokens > 0 and elapsed > 0 else None

    def fail(self, reason: str, code: str | None = None) -> None:
        """The completion ended without finishing: `disconnected` or `error` (with its code)."""
        self.finish_reason = self.finish_reason or reason
        self.error_code = code

    def line(self) -> str:
        """The one log line: id, method, path, status, latency, then token figures."""
        status = self.status if self.status is not None else f"{CLIENT_GONE}(client gone)"
        parts = [self.request_id, self.method, self.path[:200], str(status)]
        parts.append(f"{self.duration:.3f}s")
        if self.usage is not None:
            u = self.usage
            parts.append(
                f"prompt={u.prompt_tokens} cached={u.cached_tokens} "
                f"completion={u.completion_tokens}"
            )
        if self.finish_reason is not None:
            parts.append(f"finish={self.finish_reason}")
        if self.error_code is not None:
            parts.append(f"error={self.error_code}")
        if self.ttft is not None:
            parts.append(f"ttft={self.ttft:.3f}s")
        if self.decode_rate is not None:
            parts.append(f"decode={self.decode_rate:.1f}tok/s")
        if self.completion_id is not None:
            parts.append(self.completion_id)
        return " ".join(parts)


def new_request_id() -> str:
    return "req_" + secrets.token_hex(12)


def client_request_id(scope: Scope) -> str | None:
    """The client's `x-request-id` if it is a short plain token, else None."""
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            return text if _SANE_ID.fullmatch(text) else None
    return None


def record_of(request: Request) -> RequestRecord:
    """The request's record (a detached one when the middleware is not installed)."""
    state = request.scope.setdefault("state", {})
    record = state.get(_STATE_KEY)
    if record is None:
        record = RequestRecord(new_request_id(), request.method, request.url.path, _now())
        state[_STATE_KEY] = record
    return record


def _now() -> float:
    return time.perf_counter()


async def metered(pieces: AsyncIterator[Piece], record: RequestRecord) -> AsyncIterator[Piece]:
    """Pass pieces through, noting the first token's time and the finish on `record`."""
    try:
        async for piece in pieces:
            if isinstance(piece, Delta | Held) and record.first_token_at is None:
                record.first_token_at = _now()
            elif isinstance(piece, Finish):
                record.finished_at = _now()
                record.usage = piece.usage
                record.finish_reason = piece.reason
            yield piece
    finally:
        aclose = getattr(pieces, "aclose", None)
        if aclose is not None:
            await aclose()


def route_label(scope: Scope) -> str:
    """The matched route's template (`/v1/models/{model_id:path}`), never the raw path, so
    that probes of random paths cannot blow up the metrics' label sets."""
    route = scope.get("route")
    if route is None:
        app = scope.get("app")
        for candidate in getattr(getattr(app, "router", None), "routes", ()):
            match, _ = candidate.matches({**scope, "method": scope.get("method", "GET")})
            if match is not Match.NONE:
                route = candidate
                break
    return getattr(route, "path", None) or "unmatched"


class RequestLogMiddleware:
    """Request id in and out, one log line, and the metrics for every HTTP request."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record = RequestRecord(
            client_request_id(scope) or new_request_id(), scope["method"], scope["path"], _now()
        )
        scope.setdefault("state", {})[_STATE_KEY] = record
        metrics = getattr(getattr(scope.get("app"), "state", None), "metrics", None)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
                MutableHeaders(scope=message).append("x-request-id", record.request_id)
            await send(message)

        if metrics is not None:
            metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_with_id)
        except BaseException:
            record.fail("error", record.error_code or "internal")
            raise
        finally:
            record.ended = _now()
            if metrics is not None:
                metrics.in_flight.dec()
                metrics.observe(record, route_label(scope))
            _log(record)


def _log(record: RequestRecord) -> None:
    status = record.status or CLIENT_GONE
    if status >= 500 or record.finish_reason == "error":
        level = logging.WARNING
    elif record.path in _QUIET_PATHS and status < 400:
        level = logging.DEBUG
    else:
        level = logging.INFO
    log.log(level, "%s", record.line())
