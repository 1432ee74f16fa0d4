"""Worker.drain: refuse new work at once, let running sequences go on until the deadline, then
end them (and anything still queued) with ShuttingDownError; the thread exits."""

from __future__ import annotations

import asyncio
import time

import pytest

from mlx_server.engine.errors import ShuttingDownError
from mlx_server.engine.types import (
    GenerationRequest,
    Message,
    PromptReady,
    SamplingParams,
    TextPart,
    TokenEvent,
    Usage,
)
from mlx_server.engine.worker import Worker

pytestmark = pytest.mark.anyio


class Seq:
    def __init__(self, tokens: int):
        self.left = tokens
        self.finished = False
        self.closed: bool | None = None

    def close(self, cancelled: bool) -> None:
        self.closed = cancelled


class SlowRunner:
    """Each step takes `step_s` and emits one token; a sequence runs for `tokens` steps."""

    def __init__(self, tokens: int, step_s: float = 0.01):
        self.tokens = tokens
        self.step_s = step_s

    def start(self, request):
        return Seq(self.tokens), [PromptReady(prompt_tokens=3, cached_tokens=0)]

    def step(self, seqs):
        time.sleep(self.step_s)
        out = {}
        for seq in seqs:
            seq.left -= 1
            seq.finished = seq.left <= 0
            reason = "length" if seq.finished else None
            usage = Usage(3, self.tokens, 0) if seq.finished else None
            out[seq] = [TokenEvent(text="x", token_ids=(5,), finish_reason=reason, usage=usage)]
        return out


def _request(i: int = 0) -> GenerationRequest:
    return GenerationRequest(
        request_id=f"r{i}",
        messages=(Message(role="user", content=(TextPart("hi"),)),),
        sampling=SamplingParams(),
    )


async def _drain_job(job) -> tuple[list, BaseException | None]:
    events = []
    try:
        async for event in job:
            events.append(event)
    except ShuttingDownError as exc:
        return events, exc
    return events, None


async def test_a_short_job_finishes_within_the_grace():
    worker = Worker(SlowRunner(tokens=5), max_active=1)
    job = worker.submit(_request())
    await asyncio.sleep(0.02)
    worker.drain(5.0)
    events, error = await _drain_job(job)
    assert error is None and events[-1].finish_reason == "length"
    worker.close()
    assert not worker._thread.is_alive()


async def test_a_long_job_is_ended_at_the_deadline_and_queued_ones_fail():
    worker = Worker(SlowRunner(tokens=10_000), max_active=1)
    running, queued = worker.submit(_request(1)), worker.submit(_request(2))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    worker.drain(0.3)
    with pytest.raises(ShuttingDownError):
        worker.submit(_request(3))
    (events, error), (queued_events, queued_error) = await asyncio.gather(
        _drain_job(running), _drain_job(queued)
    )
    elapsed = time.monotonic() - started
    assert isinstance(error, ShuttingDownError) and 0.25 <= elapsed < 2.0
    assert isinstance(events[0], PromptReady) and len(events) > 5  # it kept running meanwhile
    assert queued_events == [] and isinstance(queued_error, ShuttingDownError)
    worker._thread.join(2)
    assert not worker._thread.is_alive()


async def test_close_after_drain_keeps_the_sooner_deadline():
    worker = Worker(SlowRunner(tokens=10_000), max_active=1)
    job = worker.submit(_request())
    await asyncio.sleep(0.02)
    worker.drain(60.0)
    started = time.monotonic()
    await asyncio.to_thread(worker.close, 0.0, 5.0)  # close() overrides with "now"
    assert time.monotonic() - started < 2.0 and not worker._thread.is_alive()
    _, error = await _drain_job(job)
    assert isinstance(error, ShuttingDownError)
