"""The MLX side of the worker: builds Generations and steps them. Worker thread only."""

from __future__ import annotations

import logging
from typing import Any

import mlx.core as mx
import numpy as np
from mlx_vlm.models.cache import KVCache, QuantizedKVCache, RotatingKVCache

from ..tools import format_for
from .batch import DecodeBatch
from .constraint_spec import constraint_for_grammar
from .errors import ContextLengthExceededError, InvalidRequestError
from .families import FAMILY_IMPLS, MediaItem
from .generate import Generation, PrefixPlan
from .loader import LoadedModel
from .prefix_cache import PrefixCache, cache_key, common_prefix, live_nbytes, snapshot_layer
from .prompt import PromptInputs, build_prompt
from .types import Constraint, EngineEvent, GenerationRequest, PromptReady
from .vision_cache import VisionFeatureCache

log = logging.getLogger("mlx_server.engine")

TURN_START = {"gemma3": "<start_of_turn>", "qwen2_vl": "<|im_start|>", "qwen2_5_vl": "<|im_start|>"}
MAX_TURN_CHECKPOINTS = 3
MIN_SHARED = 32  # tokens of shared prefix worth waiting for


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
        prefix_cache: PrefixCache | None = None,
        vision_cache: VisionFeatureCache | None = None,
    ):
        self.lm = lm
        self.family = FAMILY_IMPLS[lm.family]
        self.kv_bits = kv_bits
        self.kv_group_size = kv_group_size
        self.prefill_step = prefill_step
        self.constraints = constraints
        self.prefix_cache = prefix_cache
        self.vision_cache = vision_cache
        self._windowed = any(isinstance(c, RotatingKVCache) for c in self._fresh_cache())
        self.batch = DecodeBatch(lm.model, self.family)
        self._prefilling: list[Generation] = []  # planned sequences still prefilling
        self._turn = 0  # round-robin over sequences still prefilling

    def _fresh_cache(self) -> list[Any]:
        return make_cache(self.lm.model.language_model, self.kv_bits, self.kv_group_size)

    def _check_length(self, n: int, wanted: int | None) -> int:
        ctx = self.lm.context_length
        if n >= ctx or (wanted is not None and n + wanted > ctx):
            asked = f" + {wanted} completion tokens" if wanted is not None else ""
            raise ContextLengthExceededError(
                f"this model's maximum context length is {ctx} tokens, "
                f"but the request needs {n} prompt tokens{asked}",
                param="messages",
            )
        return wanted if wanted is not None else ctx - n

    def start(self, request: GenerationRequest) -> tuple[Generation, list[EngineEvent]]:
        lm = self.lm
        prompt = build_prompt(
            lm.processor, lm.family, request.messages, request.tools, request.mm_processor_kwargs
        )
        n = len(prompt.token_ids)
        max_tokens = self._check_length(n, request.sampling.max_tokens)
        constraint = self._constraint(request)
        matcher = self.constraints.start(constraint) if constraint is not None else None
        items = self.family.media_items(prompt) if prompt.image_spans else []
        # Spans carry each image's pixel hash (a video's: its frames and fps); the key adds
        # the span length, so a different resize of the same image is a different key.
        key = cache_key(prompt.token_ids, prompt.image_spans)
        gen = Generation(
            request=request,
            prompt=prompt,
            model=lm.model,
            family=self.family,
            tokenizer=lm.tokenizer,
            cache=None,
            eos_ids=lm.eos_token_ids,
            vocab_size=lm.vocab_size,
            max_tokens=max_tokens,
            prefill_step=self.prefill_step,
            matcher=matcher,
            on_close=self._store if self.prefix_cache is not None else None,
            cache_key=key,
        )
        gen.media_items = items
        if not self._blocked(gen):
            self._begin(gen)
        return gen, [PromptReady(prompt_tokens=n, cached_tokens=gen.cached_tokens)]

    def _blocked(self, gen: Generation) -> bool:
        """Whether a prompt still being prefilled will compute KV this one can reuse: then
        this one waits for it instead of computing the same prefix twice (e.g. several
        questions about one image sent at once)."""
        if self.prefix_cache is None:
            return False
        for other in self._prefilling:
            if other is not gen:
                shared = common_prefix(other.cache_key, gen.cache_key)
                if shared >= other.cached_tokens + MIN_SHARED:
                    return True
        return False

    def _begin(self, gen: Generation) -> None:
        """Restore the longest cached prefix into the sequence; it may start prefilling."""
        cache, plan = self._plan(gen.prompt, gen.media_items, gen.cache_key)
        gen.begin(cache, plan)
        if self.prefix_cache is not None:
            gen.on_prefilled = self._store_prompt
            self._prefilling.append(gen)

    def _constraint(self, request: GenerationRequest) -> Constraint | None:
        """response_format's constraint, or the grammar of a forced tool call in the
        family's own format (arguments valid against the tool's schema)."""
        if request.tool_choice not in ("required", "function"):
            return request.constraint
        fmt = format_for(self.lm.family)
        tok = self.lm.tokenizer
        markers = fmt.marker_tokens(lambda s: tok.encode(s, add_special_tokens=False))
        try:
            grammar = fmt.grammar(
                request.tools,
                choice=request.tool_name,
                parallel=request.parallel_tool_calls,
                marker_tokens=markers,
            )
        except ValueError as exc:
            raise InvalidRequestError(str(exc), param="tools") from exc
        return constraint_for_grammar(grammar, kind="tool_call", param="tools")

    def _plan(
        self, prompt: PromptInputs, items: list[MediaItem], key: np.ndarray
    ) -> tuple[list[Any], PrefixPlan]:
        """Restore the longest cached prefix and plan checkpoints for the rest."""
        n = len(prompt.token_ids)
        cache, cached, inherited = None, 0, {}
        if self.prefix_cache is not None:
            match = self.prefix_cache.lookup(key, limit=n - 1)
            if match is not None:
                cached = match.length
                cache = match.entry.restore(cached)
                inherited = {c: s for c, s in match.entry.checkpoints.items() if c <= cached}
        use_checkpoints = self._windowed and self.prefix_cache is not None
        checkpoints = self._checkpoints(prompt, items) if use_checkpoints else ()
        plan = PrefixPlan(
            cached_tokens=cached,
            checkpoints=tuple(c for c in checkpoints if c > cached),
            snapshots=inherited,
            features=(lambda: [self._features(it, cached) for it in items]) if items else None,
        )
        return cache if cache is not None else self._fresh_cache(), plan

    def _checkpoints(self, prompt: PromptInputs, items: list[MediaItem]) -> tuple[int, ...]:
        """Where sliding-window layers get snapshots: after the system text, after each
        image, at the last few turn starts and at the end of the prompt."""
        ids = prompt.token_ids
        tok = self.lm.tokenizer
        turn = tok.convert_tokens_to_ids(TURN_START[self.lm.family])
        turns = [i for i, t in enumerate(ids) if t == turn and i > 0][-MAX_TURN_CHECKPOINTS:]
        ends = [it.end + 1 if it.end < len(ids) else it.end for it in items]
        return tuple(sorted({*prompt.boundaries, *ends, *turns, len(ids)}))

    def _features(self, item: MediaItem, cached: int) -> mx.array:
        vc = self.vision_cache
        found = vc.get(item.key) if vc is not None else None
        if found is not None:
            return found
        if item.end <= cached:
            # Inside the reused prefix: the values are never read, only their shape.
            return self.family.placeholder_features(self.lm.model, item)
        features = self.family.item_features(self.lm.model, item)
        mx.eval(features)
        if vc is not None:
            vc.put(item.key, features)
        return features

    def _store_prompt(self, gen: Generation) -> None:
        """The prompt is prefilled: make its KV reusable now, not only when the answer ends."""
        if gen in self._prefilling:
            self._prefilling.remove(gen)
        n = gen.cached_length()
        layers = [snapshot_layer(c) for c in gen.cache]
        self.prefix_cache.insert(gen.cache_key[:n], layers, gen.snapshots)

    def _store(self, gen: Generation, cancelled: bool) -> None:
        """Put what the sequence computed into the prefix cache."""
        if gen in self._prefilling:
            self._prefilling.remove(gen)
        n = gen.cached_length()
        if n <= 0:
            return
        key = np.concatenate([gen.cache_key, np.asarray(gen.generated, dtype=np.int64)])[:n]
        layers = [snapshot_layer(c) for c in gen.cache]
        self.prefix_cache.insert(key, layers, gen.snapshots)

    def idle(self) -> None:
        """No sequence is running: return MLX's cached buffers to the system, so memory
        after a burst of requests is what the caches hold, not the burst's peak."""
        mx.clear_cache()

    def release_thread(self) -> None:
        """Last call on the worker thread: drop its MLX streams (see service.release_streams)."""
        release_streams()

    def step(self, seqs: list[Generation]) -> dict[Generation, list[EngineEvent]]:
        """One prefill chunk for one waiting prompt (round-robin), then one batched decode
        step for every decoding sequence: long prompts never freeze the running streams."""
        out: dict[Generation, list[EngineEvent]] = {s: [] for s in seqs}
        waiting = [s for s in seqs if not s.finished and not s.decoding and s.batch is None]
        for seq in waiting:
            if not seq.planned and not self._blocked(seq):
                self._begin(seq)
        waiting = [s for s in waiting if s.planned]
        first_token = False
        if waiting:
            seq = waiting[self._turn % len(waiting)]
            self._turn += 1
            out[seq] += seq.prefill_chunk()
            if seq.decoding:  # prefill just sampled its first token: send it now
                out[seq].append(seq.accept_first())
                first_token = True
        # A step that produced a first token ends here, so that token is not held behind a
        # decode step of the whole batch (at most one skipped decode step per new request).
        if not first_token:
            for seq in seqs:
                if seq.decoding and seq.batch is None:
                    self.batch.join(seq)
            if len(self.batch):
                for seq, events in self.batch.step().items():
                    out[seq] += events
        if self.prefix_cache is not None:
            live = [c for s in seqs if s.cache for c in s.cache] + (self.batch.cache or [])
            self.prefix_cache.reserve(live_nbytes(live))
        return out

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "batch_size": len(self.batch),
            "batch_peak": self.batch.peak,
            "mlx_active_bytes": mx.get_active_memory(),
            "mlx_cache_bytes": mx.get_cache_memory(),
            "mlx_peak_bytes": mx.get_peak_memory(),
        }
        if self.prefix_cache is not None:
            out["prompt_cache"] = self.prefix_cache.stats()
        if self.vision_cache is not None:
            out["vision_cache"] = self.vision_cache.stats()
        if self.constraints is not None:
            out["constraints"] = self.constraints.stats()
        return out
