"""Who may call the API: the bearer key, browser origins (CORS), and the exposure warning.

A local server is still a server: any page the user visits can send requests to 127.0.0.1, so a
request that carries a browser `Origin` not on the allow-list is refused before any work is done,
and with `--api-key` every `/v1/*` (and `/metrics`) request must present the key.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import sys

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from mlx_server.config import Settings

from .errors import ApiError, error_response

log = logging.getLogger("mlx_server.api")

# Paths behind the key. /health stays open for probes; /docs and /openapi.json describe the
# API but hold no data, and the browser page of /docs cannot send a key for its own fetches.
PROTECTED_PREFIXES = ("/v1/", "/metrics")


def _digest(value: bytes) -> bytes:
    # Comparing fixed-length digests keeps even the key's length out of the timing.
    return hashlib.sha256(value).digest()


def bearer_token(scope: Scope) -> bytes | None:
    """The token of an `Authorization: Bearer <token>` header, as raw bytes, or None."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return token.strip()
            return None
    return None


def is_protected(path: str) -> bool:
    return path.startswith(PROTECTED_PREFIXES) or path == "/v1"


class ApiKeyMiddleware:
    """401 `invalid_api_key` for protected paths without the right bearer token.

    The key is compared in constant time (`hmac.compare_digest`) and never logged or echoed.
    """

    def __init__(self, app: ASGIApp, api_key: str):
        self.app = app
        self._expected = _digest(api_key.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_protected(scope["path"]):
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope)
        if token is None or not hmac.compare_digest(_digest(token), self._expected):
            message = (
                "Incorrect API key provided."
                if token is not None
                else "Missing API key: send it as `Authorization: Bearer <key>`."
            )
            error = ApiError(
                401,
                message,
                type="invalid_request_error",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
            await error_response(error)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _origin(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"origin":
            return value.decode("latin-1")
    return None


class OriginGuardMiddleware:
    """403 for any request whose `Origin` header names a browser origin not allowed.

    CORS alone only stops a page from reading the answer; a "simple" cross-origin POST (no
    preflight) would still make the server work. Non-browser clients send no Origin.
    """

    def __init__(self, app: ASGIApp, allowed: tuple[str, ...]):
        self.app = app
        self._any = "*" in allowed
        self._allowed = frozenset(allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        origin = _origin(scope) if scope["type"] == "http" else None
        if origin is None or self._any or origin in self._allowed:
            await self.app(scope, receive, send)
            return
        log.warning("refused a request from browser origin %r", origin[:100])
        error = ApiError(
            403,
            f"Requests from the browser origin {origin[:100]!r} are not allowed; start the "
            "server with --cors-origins to allow it",
            type="permission_error",
            code="origin_not_allowed",
        )
        await error_response(error)(scope, receive, send)


def install_security(app: FastAPI, settings: Settings) -> None:
    """Add the API-key check, CORS (only with `cors_origins`) and the origin guard.

    Starlette runs the last-added middleware first: the guard, then CORS, then the key.
    """
    # Browsers send `scheme://host[:port]`, never a trailing slash.
    origins = tuple(o.rstrip("/") for o in settings.cors_origins)
    if settings.api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key)
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(origins),
            allow_methods=["GET", "HEAD", "POST", "OPTIONS"],
            allow_headers=["*"],  # the openai JS client sends x-stainless-* headers
            expose_headers=["x-request-id", "retry-after"],
            max_age=600,
        )
    app.add_middleware(OriginGuardMiddleware, allowed=origins)


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host.strip("[]").lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything


def exposure_warning(settings: Settings) -> str | None:
    """The loud warning for a server other machines can reach without a key, else None."""
    if settings.api_key or is_loopback(settings.host):
        return None
    return (
        f"WARNING: mlx-server is listening on {settings.host}, reachable from other machines, "
        "and has NO API KEY: anyone who can connect can use it. Set MLX_SERVER_API_KEY "
        "(or --api-key) or bind to 127.0.0.1."
    )


def warn_if_exposed(settings: Settings) -> None:
    """The loud warning, on stderr and in the log, for a reachable server without a key."""
    warning = exposure_warning(settings)
    if warning is not None:
        bar = "!" * 78
        print(f"{bar}\n{warning}\n{bar}", file=sys.stderr, flush=True)
        log.warning("%s", warning)
