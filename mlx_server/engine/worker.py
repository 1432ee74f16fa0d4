"""The single thread that owns all MLX work. submit() -> Job (async iterator); cancel()."""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

from .errors import EngineError, ServerBusyError, ShuttingDownError
from .types import EngineEvent, GenerationRequest

log = logging.getLogger("mlx_server.engine")
_END = object()


class Sequence(Protocol):
    """One request's generation state, owned by the worker thread."""

    finished: bool

    def close(self, cancelled: bool) -> None: ...


class Runner(Protocol):
    """Does the MLX work; every method is called on the worker thread only."""

    def start(self, request: GenerationRequest) -> tuple[Sequence, list[EngineEvent]]: ...

    def step(self, seqs: list[Sequence]) -> dict[Sequence, list[EngineEvent]]: ...


class WorkerJob:
    """The async side of one request. Events cross threads via call_soon_threadsafe."""

    def __init__(self, request: GenerationRequest, loop: asyncio.AbstractEventLoop):
        self.request = request
        self._loop = loop
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self.cancelled = threading.Event()
        self.submitted_at = time.monotonic()

    def _put(self, item: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.cancelled.set()

    def push(self, events: list[EngineEvent]) -> None:
        for ev in events:
            self._put(ev)

    def fail(self, exc: BaseException) -> None:
        self._put(exc)
        self._put(_END)

    def end(self) -> None:
        self._put(_END)

    def cancel(self) -> None:
        self.cancelled.set()

    async def __aiter__(self) -> AsyncIterator[EngineEvent]:
        while True:
            item = await self._queue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


class Worker:
    """Owns the MLX thread: admits queued jobs, steps active sequences, routes events."""

    def __init__(self, runner: Runner, *, max_queue: int = 64, max_active: int = 8):
        self._runner = runner
        self._max_queue = max_queue
        self._max_active = max_active
        self._pending: collections.deque[WorkerJob] = collections.deque()
        self._active: dict[Sequence, WorkerJob] = {}
        self._cond = threading.Condition()
        self._draining = False
        self._deadline = float("inf")
        self.completed = 0
        self._thread = threading.Thread(target=self._run, name="mlx-worker", daemon=True)
        self._thread.start()

    def submit(self, request: GenerationRequest) -> WorkerJob:
        job = WorkerJob(request, asyncio.get_running_loop())
        with self._cond:
            if self._draining:
                raise ShuttingDownError("the server is shutting down")
            if len(self._pending) >= self._max_queue:
                raise ServerBusyError(
                    f"the request queue is full ({self._max_queue} waiting); retry shortly"
                )
            self._pending.append(job)
            self._cond.notify()
        return job

    def stats(self) -> dict[str, int]:
        return {
            "queued": len(self._pending),
            "active": len(self._active),
            "completed": self.completed,
        }

    def drain(self, grace: float) -> None:
        """Refuse new work now; active sequences may run `grace` more seconds, then they and
        any queued jobs end with ShuttingDownError. Returns at once (safe on the event loop)."""
        with self._cond:
            self._draining = True
            self._deadline = min(self._deadline, time.monotonic() + grace)
            self._cond.notify()

    def close(self, grace: float = 0.0, timeout: float = 30.0) -> None:
        """drain(grace), then wait for the thread to end (a deadline already set by an
        earlier drain is kept when it is sooner)."""
        self.drain(grace)
        self._thread.join(grace + timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                idle = not self._draining and not self._pending and not self._active
            if idle:
                self._idle()
            with self._cond:
                while not self._draining and not self._pending and not self._active:
                    self._cond.wait()
                if self._draining and (not self._active or time.monotonic() >= self._deadline):
                    break
                admit = []
                while (
                    not self._draining
                    and self._pending
                    and len(self._active) + len(admit) < self._max_active
                ):
                    admit.append(self._pending.popleft())
            for job in admit:
                self._admit(job)
            self._step()
        self._shutdown()
        release = getattr(self._runner, "release_thread", None)
        if release is not None:
            release()

    def _idle(self) -> None:
        """Nothing to do: let the runner hand freed memory back (on this, the MLX thread)."""
        idle = getattr(self._runner, "idle", None)
        if idle is not None:
            try:
                idle()
            except Exception:
                log.exception("idle housekeeping failed")

    def _admit(self, job: WorkerJob) -> None:
        if job.cancelled.is_set():
            job.end()
            return
        try:
            seq, events = self._runner.start(job.request)
        except EngineError as exc:
            job.fail(exc)
            return
        except Exception as exc:  # a bug, not the client's fault: report and keep serving
            log.exception("failed to start request %s", job.request.request_id)
            job.fail(exc)
            return
        job.push(events)
        self._active[seq] = job

    def _step(self) -> None:
        for seq, job in list(self._active.items()):
            if job.cancelled.is_set():
                self._retire(seq, cancelled=True)
        live = [s for s in self._active if not s.finished]
        if not live:
            return
        try:
            out = self._runner.step(live)
        except Exception as exc:
            log.exception("generation step failed; failing %d request(s)", len(live))
            for seq in live:
                self._active[seq].fail(exc)
                self._retire(seq, cancelled=True, notify=False)
            return
        for seq, events in out.items():
            self._active[seq].push(events)
        for seq in [s for s in live if s.finished]:
            self._retire(seq, cancelled=False)

    def _retire(self, seq: Sequence, cancelled: bool, notify: bool = True) -> None:
        job = self._active.pop(seq)
        try:
            seq.close(cancelled)
        except Exception:
            log.exception("cleanup of request %s failed", job.request.request_id)
        if notify:
            job.end()
        if not cancelled:
            self.completed += 1

    def _shutdown(self) -> None:
        err = ShuttingDownError("the server is shutting down")
        for seq, job in list(self._active.items()):
            job.fail(err)
            self._retire(seq, cancelled=True, notify=False)
        while self._pending:
            self._pending.popleft().fail(err)
