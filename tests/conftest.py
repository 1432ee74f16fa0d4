"""Shared fixtures. `FakeEngine` is THE engine double for API tests: define it only here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace

import httpx
import pytest

from mlx_server.api.app import create_app
from mlx_server.config import Settings
from mlx_server.engine.errors import ServerBusyError, ShuttingDownError
from mlx_server.engine.types import (
    EngineEvent,
    GenerationRequest,
    ModelInfo,
    PrefillProgress,
    PromptReady,
    TokenEvent,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from tests.api_util import MODEL_ID


@dataclass
class Script:
    """What the fake engine answers. `pieces` are tokens (one id each), given as a list or
    computed from the request. Errors: `prompt_error` instead of PromptReady, `error` after
    `error_after` pieces."""

    pieces: list[str] | Callable[[GenerationRequest], list[str]] = field(
        default_factory=lambda: ["Hello", ",", " world", "!"]
    )
    delay: float = 0.0  # before each piece
    queue_delay: float = 0.0  # before PromptReady, as if waiting in the queue
    prompt_tokens: int = 12
    cached_tokens: int = 0
    prefill: tuple[tuple[int, int], ...] = ()
    prompt_error: Exception | None = None
    error: Exception | None = None
    error_after: int = 0
    finish_on_last_piece: bool = False  # else a final empty TokenEvent carries the finish
    send_finish: bool = True  # False: a broken engine that ends a job without finishing it


def plan(script: Script, request: GenerationRequest) -> tuple[list[str], str]:
    """The pieces a real engine would emit for `request`: cut at max_tokens (finish "length")
    or at the first stop string (finish "stop", the stop text itself never emitted)."""
    pieces = script.pieces(request) if callable(script.pieces) else list(script.pieces)
    limit = request.sampling.max_tokens
    reason = "stop"
    if limit is not None and len(pieces) > limit:
        pieces, reason = pieces[:limit], "length"
    text = "".join(pieces)
    cuts = [text.find(s) for s in request.sampling.stop if s in text]
    if not cuts:
        return pieces, reason
    keep, out, used = min(cuts), [], 0
    for piece in pieces:
        if used >= keep:
            break
        out.append(piece[: keep - used])
        used += len(out[-1])
    return out, "stop"


def _logprob(token: str, i: int, top: int) -> TokenLogprob:
    alts = tuple(TopLogprob(token=f"{token}#{k}", logprob=-0.1 * (i + k)) for k in range(top))
    return TokenLogprob(token=token, logprob=-0.1 * i, top=alts)


class FakeJob:
    def __init__(self, engine: FakeEngine, request: GenerationRequest, script: Script):
        self.engine = engine
        self.request = request
        self.script = script
        self.cancelled = False
        self.finished = False
        self.emitted: list[str] = []

    def cancel(self) -> None:
        self.cancelled = True

    async def __aiter__(self) -> AsyncIterator[EngineEvent]:
        s, sampling = self.script, self.request.sampling
        if s.queue_delay:
            await asyncio.sleep(s.queue_delay)
        if self.cancelled:
            return  # cancelled while queued: the worker ends the job with no event
        if s.prompt_error is not None:
            raise s.prompt_error
        yield PromptReady(prompt_tokens=s.prompt_tokens, cached_tokens=s.cached_tokens)
        for done, total in s.prefill:
            yield PrefillProgress(done=done, total=total)
        pieces, reason = plan(s, self.request)
        for i, piece in enumerate(pieces):
            if s.delay:
                await asyncio.sleep(s.delay)
            if self.cancelled:
                return  # like the real worker: a cancelled job just ends
            if s.error is not None and i == s.error_after:
                raise s.error
            self.emitted.append(piece)
            last = s.send_finish and s.finish_on_last_piece and i == len(pieces) - 1
            yield TokenEvent(
                text=piece,
                token_ids=(1000 + i,),
                logprobs=(_logprob(piece, i, sampling.top_logprobs),) if sampling.logprobs else (),
                finish_reason=reason if last else None,
                usage=self._usage(len(pieces)) if last else None,
            )
        if s.error is not None and s.error_after >= len(pieces):
            raise s.error
        self.finished = True
        if s.send_finish and (not s.finish_on_last_piece or not pieces):
            yield TokenEvent(text="", finish_reason=reason, usage=self._usage(len(pieces)))

    def _usage(self, completion: int) -> Usage:
        return Usage(self.script.prompt_tokens, completion, self.script.cached_tokens)


class FakeEngine:
    """Implements the Engine protocol; records every request and job."""

    def __init__(self, script: Script | None = None):
        self.info = ModelInfo(
            model_id=MODEL_ID, family="gemma3", context_length=4096, created=1_700_000_000
        )
        self.script = script or Script()
        self.requests: list[GenerationRequest] = []
        self.jobs: list[FakeJob] = []
        self.busy: ServerBusyError | None = None
        self.closed = False
        self.drain_grace: float | None = None

    def submit(self, request: GenerationRequest) -> FakeJob:
        if self.closed:
            raise ShuttingDownError("the server is shutting down")
        if self.busy is not None:
            raise self.busy
        self.requests.append(request)
        job = FakeJob(self, request, self.script)
        self.jobs.append(job)
        return job

    def scripted(self, **changes) -> FakeEngine:
        """Change what the engine answers from now on (fields of `Script`)."""
        self.script = replace(self.script, **changes)
        return self

    def stats(self) -> dict[str, int]:
        done = sum(j.finished for j in self.jobs)
        return {"queued": 0, "active": len(self.jobs) - done, "completed": done}

    def drain(self, grace: float) -> None:
        self.closed = True  # like the real worker: new work is refused from now on
        self.drain_grace = grace

    def close(self) -> None:
        self.closed = True

    @property
    def last(self) -> GenerationRequest:
        return self.requests[-1]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def settings() -> Settings:
    return Settings(model=MODEL_ID)


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def app(settings: Settings, engine: FakeEngine):
    return create_app(settings, engine)


@pytest.fixture
async def client(app) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c
