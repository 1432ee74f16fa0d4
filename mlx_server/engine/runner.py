"""The MLX side of the worker: builds Generations and steps them. Worker thread only."""

from __future__ import annotations

import logging
from typing import Any

import mlx.core as mx
from mlx_vlm.models.cache import KVCache, QuantizedKVCache

from .errors import ContextLengthExceededError
from .families import FAMILY_IMPLS
from .generate import Generation
from .loader import LoadedModel
from .prompt import build_prompt
from .types import EngineEvent, GenerationRequest, PromptReady

log = logging.getLogger("mlx_server.engine")


def release_streams() -> None:
    """End this thread's MLX streams; call it last in a thread that did MLX work.

    MLX streams belong to the thread that made them. A thread that ends without releasing
    them leaves a joinable stream thread behind, and the process then aborts at exit
    ("terminate called without an active exception") about half the time (mlx 0.32.4).
    Arrays this thread evaluated stay usable from other threads.
    """
    mx.clear_streams()


def make_cache(language_model: Any, kv_bits: int | None, group_size: int) -> list[Any]:
    """The model's own cache layout with every full-attention layer 8-bit from token 0.

    Sliding-window layers keep their RotatingKVCache unquantized: mlx-vlm cannot quantize
    a rotating cache, and those layers hold at most one window of keys anyway."""
    if hasattr(language_model, "make_cache"):
        caches = language_model.make_cache()
    else:
        caches = [KVCache() for _ in language_model.layers]
    if kv_bits:
        caches = [
            QuantizedKVCache(group_size=group_size, bits=kv_bits) if type(c) is KVCache else c
            for c in caches
        ]
    return caches


class MLXRunner:
    def __init__(
        self,
        lm: LoadedModel,
        *,
        kv_bits: int | None = 8,
        kv_group_size: int = 64,
        prefill_step: int = 256,
        constraints: Any = None,
    ):
        self.lm = lm
        self.family = FAMILY_IMPLS[lm.family]
        self.kv_bits = kv_bits
        self.kv_group_size = kv_group_size
        self.prefill_step = prefill_step
        self.constraints = constraints

    def start(self, request: GenerationRequest) -> tuple[Generation, list[EngineEvent]]:
        lm = self.lm
        prompt = build_prompt(lm.processor, lm.family, request.messages, request.tools)
        n = len(prompt.token_ids)
        wanted = request.sampling.max_tokens
        if n >= lm.context_length or (wanted is not None and n + wanted > lm.context_length):
            asked = f" + {wanted} completion tokens" if wanted is not None else ""
            raise ContextLengthExceededError(
                f"this model's maximum context length is {lm.context_length} tokens, "
                f"but the request needs {n} prompt tokens{asked}",
                param="messages",
            )
        max_tokens = wanted if wanted is not None else lm.context_length - n
        matcher = None
        if request.constraint is not None:
            matcher = self.constraints.start(request.constraint)
        gen = Generation(
            request=request,
            prompt=prompt,
            model=lm.model,
            family=self.family,
            tokenizer=lm.tokenizer,
            cache=make_cache(lm.model.language_model, self.kv_bits, self.kv_group_size),
            eos_ids=lm.eos_token_ids,
            vocab_size=lm.vocab_size,
            max_tokens=max_tokens,
            prefill_step=self.prefill_step,
            matcher=matcher,
        )
        return gen, [PromptReady(prompt_tokens=n, cached_tokens=0)]

    def release_thread(self) -> None:
        """Last call on the worker thread: drop its MLX streams (see service.release_streams)."""
        release_streams()

    def step(self, seqs: list[Generation]) -> dict[Generation, list[EngineEvent]]:
        return {seq: seq.advance() for seq in seqs}
