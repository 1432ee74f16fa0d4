"""The real engine: a loaded model, its runner and the worker thread, behind the Engine protocol."""

from __future__ import annotations

import logging
import time
from typing import Any

from ..config import Settings
from .loader import LoadedModel, load_model
from .runner import MLXRunner
from .types import GenerationRequest, Message, ModelInfo, SamplingParams, TextPart
from .worker import Worker, WorkerJob

log = logging.getLogger("mlx_server.engine")


class MLXEngine:
    def __init__(self, lm: LoadedModel, settings: Settings):
        self.lm = lm
        self.settings = settings
        self.info = ModelInfo(
            model_id=settings.model_id,
            family=lm.family,  # type: ignore[arg-type]
            context_length=lm.context_length,
            created=int(time.time()),
        )
        self.runner = MLXRunner(
            lm,
            kv_bits=settings.kv_bits,
            kv_group_size=settings.kv_group_size,
            prefill_step=settings.prefill_step_size,
        )
        self._warm_up()
        self.worker = Worker(self.runner, max_queue=settings.max_queue)

    def _warm_up(self) -> None:
        """Run two tokens before serving so kernel compilation is not billed to a client."""
        started = time.perf_counter()
        req = GenerationRequest(
            request_id="warmup",
            messages=(Message(role="user", content=(TextPart("hi"),)),),
            sampling=SamplingParams(temperature=0, max_tokens=2),
        )
        seq, _ = self.runner.start(req)
        while not seq.finished:
            seq.advance()
        seq.close(cancelled=False)
        log.info("warm-up took %.2f s", time.perf_counter() - started)

    def submit(self, request: GenerationRequest) -> WorkerJob:
        return self.worker.submit(request)

    def stats(self) -> dict[str, Any]:
        return {
            "family": self.lm.family,
            "dtype": str(self.lm.dtype).removeprefix("mlx.core."),
            "context_length": self.lm.context_length,
            **self.worker.stats(),
        }

    def drain(self, grace: float) -> None:
        self.worker.drain(grace)

    def close(self) -> None:
        self.worker.close()


def load_engine(settings: Settings) -> MLXEngine:
    """Load the configured model and start serving it."""
    lm = load_model(settings.model, dtype=settings.dtype, offline=settings.hf_offline)
    return MLXEngine(lm, settings)
