"""uvicorn, configured for an exposed server: read deadlines and a graceful shutdown.

uvicorn's h11 protocol has a keep-alive timeout but no deadline for reading a request: a client
that trickles its headers (slow loris) or its body one byte at a time holds a connection for
ever, because every byte re-arms nothing and cancels the keep-alive timer. `GuardedH11Protocol`
gives each request `header_timeout` seconds for its head and `body_timeout` more for its body.

Shutdown order matters: on SIGTERM/SIGINT uvicorn stops listening, waits for open connections
(up to `timeout_graceful_shutdown`), cancels what is left, and only then runs the lifespan
shutdown. So `GracefulServer` tells the engine first (`engine.drain(grace)`): new work is refused,
running streams get `grace` seconds, then the engine ends them and each stream closes with an
error event and `data: [DONE]` while uvicorn is still waiting for it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import threading
from typing import Any

import h11
import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from mlx_server.config import Settings
from mlx_server.engine.errors import ShuttingDownError

from . import sse
from .errors import ApiError, error_body, error_response

log = logging.getLogger("mlx_server.api")

# uvicorn keeps waiting this long past the grace for the engine's final error events to go out.
SHUTDOWN_SLACK_S = 2.0


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus read deadlines (set by `guarded_protocol`)."""

    header_timeout: float = 10.0
    body_timeout: float = 60.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._read_timer: asyncio.TimerHandle | None = None
        self._read_phase: str | None = None
        super().connection_made(transport)
        self._arm("head")  # a client that connects and says nothing is cut off too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._update_read_deadline(bytes_arrived=True)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._update_read_deadline(bytes_arrived=False)

    def _update_read_deadline(self, bytes_arrived: bool) -> None:
        state = self.conn.their_state
        if state is h11.IDLE:
            # Bytes of a next request's head have arrived (uvicorn just cancelled its
            # keep-alive timer) or are buffered: the head deadline runs. Otherwise the
            # connection is idle between requests, which the keep-alive timeout covers.
            if bytes_arrived or self.conn.trailing_data[0]:
                self._arm("head")
            else:
                self._disarm()
        elif state is h11.SEND_BODY:
            self._arm("body")
        else:
            self._disarm()

    def _arm(self, phase: str) -> None:
        if self._read_phase == phase:
            return  # the deadline runs from the phase's start, not from the last byte
        self._disarm()
        timeout = self.header_timeout if phase == "head" else self.body_timeout
        self._read_phase = phase
        self._read_timer = self.loop.call_later(timeout, self._read_timed_out)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
        self._read_timer, self._read_phase = None, None

    def _read_timed_out(self) -> None:
        phase, self._read_timer, self._read_phase = self._read_phase, None, None
        if self.transport.is_closing():
            return
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
        log.warning("closing the connection from %s: request %s too slow", client, phase)
        cycle = self.cycle
        if phase == "body" and cycle is not None and not cycle.response_started:
            self._send_408()
        if cycle is not None:
            cycle.disconnected = True  # the app sees http.disconnect; its sends become no-ops
            cycle.message_event.set()
        self.transport.close()

    def _send_408(self) -> None:
        error = ApiError(
            408,
            f"The request body did not arrive within {self.body_timeout:g} seconds",
            code="request_timeout",
        )
        body = json.dumps(error_body(error)).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        try:
            response = h11.Response(status_code=408, headers=headers, reason=b"Request Timeout")
            out = self.conn.send(response)
            out += self.conn.send(h11.Data(data=body)) + self.conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError:  # h11 will not frame it in this state: just close
            return
        self.transport.write(out)


def guarded_protocol(settings: Settings) -> type[GuardedH11Protocol]:
    """A protocol class carrying this server's read deadlines."""
    return type(
        "GuardedH11Protocol",
        (GuardedH11Protocol,),
        {"header_timeout": settings.header_timeout, "body_timeout": settings.body_timeout},
    )


class FinishOnCancel:
    """Ends a request properly when uvicorn cancels it at the end of the graceful-shutdown
    wait (an engine too stuck to end it): a 503 envelope if nothing was sent yet, else a final
    error event and `data: [DONE]` for an unfinished SSE stream. Outermost ASGI layer."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = finished = streaming = False

        async def tracking_send(message: Message) -> None:
            nonlocal started, finished, streaming
            if message["type"] == "http.response.start":
                started = True
                headers = dict(message.get("headers", ()))
                streaming = headers.get(b"content-type", b"").startswith(sse.MEDIA_TYPE.encode())
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                finished = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except asyncio.CancelledError:
            error = ShuttingDownError("the server is shutting down")
            log.warning("%s %s ended by the shutdown deadline", scope["method"], scope["path"])
            if not started:
                await error_response(error)(scope, receive, send)
            elif streaming and not finished:
                body = sse.data(error_body(error)) + sse.DONE
                await send({"type": "http.response.body", "body": body, "more_body": False})
            # Not re-raised: uvicorn cancelled the task only to end the request, which is ended.


class GracefulServer(uvicorn.Server):
    """uvicorn.Server that starts the engine's drain before it waits for connections."""

    def __init__(self, config: uvicorn.Config, app: Any, grace: float):
        super().__init__(config)
        self.app = app
        self.grace = grace

    async def shutdown(self, sockets: Any = None) -> None:
        engine = getattr(getattr(self.app, "state", None), "engine", None)
        if engine is not None:
            log.info("shutting down: running requests get %.1f s to finish", self.grace)
            engine.drain(self.grace)
        await super().shutdown(sockets)


def build_server(app: Any, settings: Settings, **config: Any) -> GracefulServer:
    """The configured uvicorn server for `app` (extra uvicorn.Config options in `config`)."""
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "access_log": False,  # RequestLogMiddleware writes one line per request instead
        "http": guarded_protocol(settings),
        "limit_concurrency": settings.max_connections,
        "timeout_graceful_shutdown": settings.shutdown_grace + SHUTDOWN_SLACK_S,
        **config,
    }
    config = uvicorn.Config(FinishOnCancel(app), **options)
    return GracefulServer(config, app, settings.shutdown_grace)


def _swallow(signum: int, frame: Any) -> None:
    """uvicorn re-raises the signal that stopped it after a clean shutdown; by then the work
    is done, so the process should exit 0 rather than die of that signal."""


def run_server(app: Any, settings: Settings) -> int:
    """Serve until SIGTERM/SIGINT, shut down gracefully, return the exit code (0)."""
    server = build_server(app, settings)
    # uvicorn restores the handlers it found and re-raises the captured signal into them.
    previous = {sig: signal.signal(sig, _swallow) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    left = [t.name for t in threading.enumerate() if t is not threading.current_thread()]
    if left:
        log.warning("threads still running at exit: %s", ", ".join(left))
    return 0 if server.started else 1
