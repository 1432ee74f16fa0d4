"""`POST /v1/chat/completions`: body -> GenerationRequest -> engine job -> SSE or one response.

The job's first event (PromptReady) is awaited before any header is sent, so prompt errors are
ordinary 4xx responses. After that, one consumer (`output.output_pieces`) drives both modes.
Any exit (finish, error, client disconnect) cancels the job in a `finally`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import string
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from pydantic import ValidationError
from pydantic_core import from_json
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from mlx_server.engine.base import Job
from mlx_server.engine.errors import EngineError, ShuttingDownError
from mlx_server.engine.types import GenerationRequest
from mlx_server.tools import ToolStreamSplitter, format_for

from . import render, sse
from .deps import get_engine, get_media, get_settings
from .errors import ApiError, error_body, invalid_body
from .limits import check_json_limits
from .output import (
    Finish,
    Held,
    Keepalive,
    PassthroughSplitter,
    Piece,
    TextSplitter,
    collect,
    output_pieces,
)
from .protocol import ChatCompletionRequest
from .render import CompletionMeta
from .requestlog import RequestRecord, metered, record_of
from .requests import plan_request, to_generation_request

log = logging.getLogger("mlx_server.api")
router = APIRouter()

_ID_ALPHABET = string.ascii_letters + string.digits


def new_completion_id() -> str:
    """`chatcmpl-` and 24 random letters and digits, like OpenAI's ids."""
    return "chatcmpl-" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media in ("", "application/json") or media.endswith("+json")


async def read_body(request: Request) -> ChatCompletionRequest:
    """Parse and validate the JSON body (pydantic errors become a 400 envelope)."""
    content_type = request.headers.get("content-type", "")
    if not _is_json(content_type):
        raise ApiError(
            415,
            f"Content-Type must be application/json, got {content_type[:80]!r}",
            code="unsupported_media_type",
        )
    raw = await request.body()
    if not raw.strip():
        raise ApiError(400, "The request body is empty; send a JSON object", code="invalid_json")
    try:
        # Parsed apart from validation so that NaN and Infinity, which are not JSON, fail
        # everywhere, even inside fields typed Any.
        data = from_json(raw, allow_inf_nan=False)
    except ValueError as exc:
        raise ApiError(
            400, f"The request body is not valid JSON ({exc})", code="invalid_json"
        ) from None
    if not isinstance(data, dict):
        raise ApiError(400, "The request body must be a JSON object", code="invalid_json")
    check_json_limits(data, get_settings(request))
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        raise invalid_body(exc) from None


def splitter_for(request: GenerationRequest, family: str) -> TextSplitter:
    """The family's tool-call splitter when tools are offered; otherwise all text is content."""
    if not request.tools:
        return PassthroughSplitter()
    return ToolStreamSplitter(format_for(family), request.tools)


class DisconnectWatcher:
    """Cancels the job as soon as the client goes away, even while no byte is being sent."""

    def __init__(self, request: Request, job: Job):
        self.disconnected = False
        self._job = job
        self._receive = request.receive
        self._task = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        try:
            while (await self._receive())["type"] != "http.disconnect":
                pass
        except Exception:  # a broken receive channel means the client is gone too
            log.debug("receive failed; treating it as a disconnect", exc_info=True)
        self.disconnected = True
        self._job.cancel()

    def stop(self) -> None:
        self._task.cancel()


async def _start(
    request: Request, gen: GenerationRequest
) -> tuple[Job, DisconnectWatcher, AsyncIterator[Piece] | None]:
    """Submit and await the first event; pieces is None when the client left meanwhile."""
    job = get_engine(request).submit(gen)
    watcher = DisconnectWatcher(request, job)
    try:
        events = aiter(job)
        first = await anext(events, None)
        if first is None:
            if watcher.disconnected:
                return job, watcher, None
            raise ShuttingDownError("the request ended before it started")
        splitter = splitter_for(gen, get_engine(request).info.family)
        pieces = output_pieces(first, events, splitter)
        return job, watcher, metered(pieces, record_of(request))
    except BaseException:
        watcher.stop()
        job.cancel()
        raise


@router.post("/v1/chat/completions")
async def create_chat_completion(request: Request) -> Response:
    """OpenAI chat completions, streamed (SSE) or not."""
    body = await read_body(request)
    settings = get_settings(request)
    completion_id = new_completion_id()
    record = record_of(request)
    record.completion_id = completion_id
    plan = plan_request(body, settings, request_id=completion_id)
    media = await get_media(request).resolve(plan.media, plan.fps) if plan.media else {}
    gen = to_generation_request(body, plan, media)
    meta = CompletionMeta(
        id=completion_id,
        created=int(time.time()),
        model=settings.model_id,
        logprobs=gen.sampling.logprobs,
        include_usage=bool(body.stream_options and body.stream_options.include_usage),
    )
    job, watcher, pieces = await _start(request, gen)
    if pieces is None:
        return _client_gone(record, watcher, job)
    if body.stream:
        stream = _stream(meta, pieces, job, watcher, record)
        return StreamingResponse(stream, media_type=sse.MEDIA_TYPE, headers=sse.HEADERS)
    try:
        collected = await collect(pieces)
    except Exception as exc:
        if watcher.disconnected:
            return _client_gone(record, watcher, job)
        record.fail("error", getattr(exc, "code", None))
        raise
    finally:
        watcher.stop()
        job.cancel()
    body_json = render.completion(meta, collected).model_dump_json()
    return Response(body_json, media_type="application/json")


def _client_gone(record: RequestRecord, watcher: DisconnectWatcher, job: Job) -> Response:
    watcher.stop()
    job.cancel()
    record.fail("disconnected")
    return _NoResponse()


class _NoResponse(Response):
    """Nothing to send: the client is gone (and an ASGI 2.4 server would raise on send)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        return None


# While a tool call is being written nothing can be sent; a comment this often keeps
# proxies and clients from timing the stream out.
HELD_NOTICE_INTERVAL_S = sse.KEEPALIVE_INTERVAL_S


async def _stream(
    meta: CompletionMeta,
    pieces: AsyncIterator[Piece],
    job: Job,
    watcher: DisconnectWatcher,
    record: RequestRecord,
) -> AsyncIterator[bytes]:
    """SSE chunks: role first, content, finish_reason, optional usage, then [DONE].

    An error after the headers went out becomes an error event followed by [DONE].
    """
    ticking = sse.with_keepalive(pieces, sse.KEEPALIVE_INTERVAL_S)
    try:
        yield sse.data(render.role_chunk(meta))
        last_write = time.monotonic()
        async for piece in ticking:
            if isinstance(piece, Held):  # a tool call in progress: keep the line alive
                if time.monotonic() - last_write >= HELD_NOTICE_INTERVAL_S:
                    last_write = time.monotonic()
                    yield sse.comment(f"{piece.tokens} token(s) held back")
                continue
            last_write = time.monotonic()
            if piece is None:
                yield sse.comment("keepalive")
            elif isinstance(piece, Keepalive):
                yield sse.comment(piece.text)
            elif isinstance(piece, Finish):
                yield sse.data(render.finish_chunk(meta, piece))
                if meta.include_usage:
                    yield sse.data(render.usage_chunk(meta, piece.usage))
            else:
                yield sse.data(render.delta_chunk(meta, piece))
        yield sse.DONE
    except Exception as exc:
        if watcher.disconnected:  # the job was cancelled because nobody is listening
            record.fail("disconnected")
            return
        record.fail("error", getattr(exc, "code", None))
        if isinstance(exc, EngineError):
            log.warning("%s: failed mid-stream: %s", meta.id, exc)
        else:
            log.exception("%s: failed mid-stream", meta.id)
        yield sse.data(error_body(exc))
        yield sse.DONE
    finally:
        if watcher.disconnected:  # also when the server cancelled us on seeing the disconnect
            record.fail("disconnected")
        watcher.stop()
        job.cancel()
        await ticking.aclose()
