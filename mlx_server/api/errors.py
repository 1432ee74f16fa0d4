"""One OpenAI error envelope for every failure, and the one table that maps exceptions to it.

`{"error": {"message", "type", "param", "code"}}`: `code` is a string or null. Handlers cover
engine errors, HTTP-layer errors, request validation, unknown routes and methods, and (through
`CatchAllMiddleware`) anything unexpected, which becomes a logged 500.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mlx_server.engine.errors import (
    EngineError,
    InvalidRequestError,
    ModelNotFoundError,
    ServerBusyError,
    ShuttingDownError,
)

log = logging.getLogger("mlx_server.api")


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ApiError(Exception):
    """A failure the HTTP layer itself detects (bad content type, unknown route, ...)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}


@dataclass(frozen=True)
class ErrorKind:
    status: int
    type: str


# Engine exception -> HTTP status and OpenAI error type. First match wins: subclasses first.
ENGINE_ERRORS: tuple[tuple[type[EngineError], ErrorKind], ...] = (
    (InvalidRequestError, ErrorKind(400, "invalid_request_error")),
    # OpenAI answers an unknown model with 404 and type invalid_request_error.
    (ModelNotFoundError, ErrorKind(404, "invalid_request_error")),
    (ServerBusyError, ErrorKind(429, "rate_limit_error")),
    (ShuttingDownError, ErrorKind(503, "server_error")),
    (EngineError, ErrorKind(500, "server_error")),
)

# HTTP status (from Starlette's HTTPException) -> OpenAI error type and code.
HTTP_STATUS_ERRORS: dict[int, tuple[str, str | None]] = {
    404: ("not_found_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
}

_INTERNAL = ErrorKind(500, "server_error")


def _engine_kind(exc: EngineError) -> ErrorKind:
    for cls, kind in ENGINE_ERRORS:
        if isinstance(exc, cls):
            return kind
    return _INTERNAL  # unreachable: EngineError is the last row


def error_status(exc: BaseException) -> tuple[int, ErrorDetail, dict[str, str]]:
    """The status, envelope body and extra headers for any exception."""
    if isinstance(exc, ApiError):
        detail = ErrorDetail(message=exc.message, type=exc.type, param=exc.param, code=exc.code)
        return exc.status, detail, exc.headers
    if isinstance(exc, EngineError):
        kind = _engine_kind(exc)
        detail = ErrorDetail(message=exc.message, type=kind.type, param=exc.param, code=exc.code)
        headers = {}
        if isinstance(exc, ServerBusyError):
            headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
        return kind.status, detail, headers
    if isinstance(exc, RequestValidationError):
        return 400, validation_detail(exc.errors()), {}
    if isinstance(exc, HTTPException):
        type_, code = HTTP_STATUS_ERRORS.get(exc.status_code, ("invalid_request_error", None))
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        detail = ErrorDetail(message=message, type=type_, code=code)
        return exc.status_code, detail, dict(exc.headers or {})
    detail = ErrorDetail(
        message="The server had an error while processing your request.", type=_INTERNAL.type
    )
    return _INTERNAL.status, detail, {}


def error_body(exc: BaseException) -> dict[str, Any]:
    """The envelope as a dict, e.g. for an error event in the middle of a stream."""
    return ErrorResponse(error=error_status(exc)[1]).model_dump()


def error_response(exc: BaseException) -> JSONResponse:
    status, detail, headers = error_status(exc)
    return JSONResponse(
        ErrorResponse(error=detail).model_dump(), status_code=status, headers=headers
    )


# Labels pydantic puts in an error's location for union members; they are not request fields.
_TYPE_LABELS = frozenset({"str", "int", "float", "bool", "dict", "list", "none"})


def param_path(loc: tuple[Any, ...]) -> str | None:
    """`("messages", 1, "content", "list[ContentPart]", 0, "text")` -> `messages[1].content[0].text`."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in _TYPE_LABELS or "[" in part or part.startswith("function-"):
            continue
        else:
            path += f".{part}" if path else part
    return path or None


def invalid_body(exc: ValidationError) -> ApiError:
    """A 400 for a request body that failed validation. (Any other pydantic ValidationError
    is a server bug and stays a 500.)"""
    detail = validation_detail(exc.errors())
    return ApiError(400, detail.message, param=detail.param, code=detail.code)


def validation_detail(errors: list[Any]) -> ErrorDetail:
    """One envelope for pydantic's error list: the deepest location, its messages joined."""
    if any(e["type"] == "json_invalid" for e in errors):
        reason = next(e for e in errors if e["type"] == "json_invalid").get("ctx", {}).get("error")
        message = "The request body is not valid JSON" + (f" ({reason})." if reason else ".")
        return ErrorDetail(message=message, type="invalid_request_error", code="invalid_json")
    by_param: dict[str | None, list[str]] = {}
    depth: dict[str | None, int] = {}
    for e in errors:
        loc = tuple(x for x in e["loc"] if x != "body")  # FastAPI prefixes body fields
        param = param_path(loc)
        msgs = by_param.setdefault(param, [])
        if e["msg"] not in msgs:
            msgs.append(e["msg"])
        depth[param] = max(depth.get(param, 0), len(loc))
    param = max(by_param, key=lambda p: depth[p])  # stable: the first of the deepest
    msgs = by_param[param]
    text = msgs[0] + "".join(" or " + m.removeprefix("Input should be ") for m in msgs[1:])
    if param is not None:
        text = f"{param}: {text}"
    # Errors at a prefix of `param` are the union alternatives that did not fit, not news.
    others = [p for p in by_param if p != param and not (param or "").startswith(p or "")]
    if others:
        text += f" (and {len(others)} more problem(s))"
    return ErrorDetail(
        message=text, type="invalid_request_error", param=param, code="invalid_value"
    )


async def _handle(request: Request, exc: Exception) -> Response:
    response = error_response(exc)
    if response.status_code >= 500:
        log.error("%s %s failed: %s", request.method, request.url.path, exc)
    return response


async def _handle_http(request: Request, exc: Exception) -> Response:
    # A preflight or OPTIONS probe of a known path: say which methods it allows.
    if isinstance(exc, HTTPException) and exc.status_code == 405 and request.method == "OPTIONS":
        allow = (exc.headers or {}).get("Allow", "")
        return Response(
            status_code=204, headers={"Allow": ", ".join(filter(None, [allow, "OPTIONS"]))}
        )
    if isinstance(exc, HTTPException) and exc.status_code == 404 and exc.detail == "Not Found":
        exc = ApiError(
            404,
            f"Unknown path {request.url.path[:200]!r}",
            type="not_found_error",
            code="not_found",
        )
    elif isinstance(exc, HTTPException) and exc.status_code == 405:
        allow = (exc.headers or {}).get("Allow", "")
        message = f"{request.method} is not allowed on {request.url.path[:200]!r}; use {allow}"
        exc = ApiError(405, message, code="method_not_allowed", headers=dict(exc.headers or {}))
    return error_response(exc)


def install_error_handlers(app: FastAPI) -> None:
    """Register the envelope handlers and the catch-all middleware on `app`."""
    for exc_class in (ApiError, EngineError, RequestValidationError):
        app.add_exception_handler(exc_class, _handle)
    app.add_exception_handler(HTTPException, _handle_http)
    app.add_middleware(CatchAllMiddleware)


class CatchAllMiddleware:
    """Turns an unexpected exception into a logged 500 envelope before Starlette sees it.

    Starlette's own last-resort handler would log it twice and re-raise it to the server.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except ClientDisconnect:
            log.info("%s %s: client disconnected", scope.get("method"), scope.get("path"))
        except Exception as exc:
            log.exception("%s %s failed", scope.get("method"), scope.get("path"))
            if started:  # too late for a status line; the server closes the connection
                raise
            await error_response(exc)(scope, receive, send)
