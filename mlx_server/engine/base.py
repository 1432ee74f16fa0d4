"""The contract between the API layer and any engine (the real MLX one or a test fake)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from .types import EngineEvent, GenerationRequest, ModelInfo


class Job(Protocol):
    """One submitted request: iterate its events; cancel() is idempotent and thread-safe."""

    def __aiter__(self) -> AsyncIterator[EngineEvent]: ...

    def cancel(self) -> None: ...


class Engine(Protocol):
    info: ModelInfo

    def submit(self, request: GenerationRequest) -> Job:
        """Queue a request. Raises ServerBusyError when the queue is full.

        Iterating the job yields PromptReady first (or raises InvalidRequestError and
        friends when the prompt cannot be built), then PrefillProgress and TokenEvents;
        the last TokenEvent carries finish_reason and usage.
        """
        ...

    def stats(self) -> dict[str, Any]:
        """Queue depth, cache figures and the like, for /health and /metrics."""
        ...

    def drain(self, grace: float) -> None:
        """Begin a graceful shutdown without waiting: refuse new work (ShuttingDownError),
        let running jobs go on for `grace` seconds, then end them with ShuttingDownError."""
        ...

    def close(self) -> None:
        """Stop the worker; pending jobs end with an error."""
        ...
