"""The real engine: a loaded model, its runner and the worker thread, behind the Engine protocol."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from ..config import Settings
from .constraints import ConstraintCompiler
from .loader import LoadedModel, load_model
from .prefix_cache import PrefixCache
from .runner import MLXRunner
from .types import GenerationRequest, Message, ModelInfo, SamplingParams, TextPart
from .vision_cache import VisionFeatureCache
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
        budget = settings.prompt_cache_bytes or default_cache_bytes()
        self.runner = MLXRunner(
            lm,
            kv_bits=settings.kv_bits,
            kv_group_size=settings.kv_group_size,
            prefill_step=settings.prefill_step_size,
            constraints=ConstraintCompiler(
                lm.tokenizer, stop_token_ids=lm.eos_token_ids, vocab_size=lm.vocab_size
            ),
            prefix_cache=PrefixCache(budget) if settings.prompt_cache else None,
            vision_cache=VisionFeatureCache(max(64 << 20, budget // 8)),
        )
        self._warm_up()
        self.worker = Worker(
            self.runner, max_queue=settings.max_queue, max_active=settings.max_concurrency
        )

    def _warm_up(self) -> None:
        """Run two tokens before serving so kernel compilation is not billed to a client."""
        started = time.perf_counter()
        req = GenerationRequest(
            request_id="warmup",
            messages=(Message(role="user", content=(TextPart("hi"),)),),
            sampling=SamplingParams(temperature=0, max_tokens=2),
        )
        plain = MLXRunner(self.lm, kv_bits=self.settings.kv_bits, prefill_step=64)
        seq, _ = plain.start(req)
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
            **self.runner.stats(),
        }

    def drain(self, grace: float) -> None:
        self.worker.drain(grace)

    def close(self) -> None:
        self.worker.close()


def default_cache_bytes() -> int:
    """A fifth of physical memory, between 256 MiB and 8 GiB."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 << 30
    return int(min(8 << 30, max(256 << 20, total // 5)))


def load_engine(settings: Settings) -> MLXEngine:
    """Load the configured model and start serving it."""
    lm = load_model(settings.model, dtype=settings.dtype, offline=settings.hf_offline)
    return MLXEngine(lm, settings)
