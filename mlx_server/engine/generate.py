"""One request's generation: chunked prefill -> decode with the 8-bit KV cache -> events."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
from mlx_vlm.models.cache import RotatingKVCache

from .families import Embedded, Family
from .prefix_cache import LayerState, snapshot_layer
from .prompt import PromptInputs
from .sampling import Sampler
from .textstream import IncrementalDetokenizer, StopMatcher
from .types import (
    EngineEvent,
    FinishReason,
    GenerationRequest,
    PrefillProgress,
    TokenEvent,
    TokenLogprob,
    TopLogprob,
    Usage,
)


@dataclass
class PrefixPlan:
    """How a sequence starts: tokens already in its (restored) cache, prompt positions at
    which to snapshot sliding-window layers, snapshots inherited from the cache entry, and
    a thunk producing per-media vision features (from the vision cache or the tower)."""

    cached_tokens: int = 0
    checkpoints: tuple[int, ...] = ()
    snapshots: dict[int, dict[int, LayerState]] = field(default_factory=dict)
    features: Callable[[], list[mx.array]] | None = None


class Generation:
    """State of one sequence. `advance()` does one unit of work: a prefill chunk or one token."""

    def __init__(
        self,
        *,
        request: GenerationRequest,
        prompt: PromptInputs,
        model: Any,
        family: Family,
        tokenizer: Any,
        cache: list[Any] | None,
        eos_ids: tuple[int, ...],
        vocab_size: int,
        max_tokens: int,
        prefill_step: int,
        plan: PrefixPlan | None = None,
        matcher: Any = None,
        on_close: Callable[[Generation, bool], None] | None = None,
        cache_key: Any = None,
    ):
        self.request = request
        self.prompt = prompt
        self.model = model
        self.family = family
        self.tokenizer = tokenizer
        self.cache = cache
        self.eos_ids = frozenset(eos_ids)
        self.max_tokens = max_tokens
        self.prefill_step = max(1, prefill_step)
        self.planned = False
        self.on_prefilled: Callable[[Generation], None] | None = None
        self.begin(cache, plan or PrefixPlan())
        self.matcher = matcher
        self.on_close = on_close
        self.cache_key = cache_key  # prompt tokens with media markers, for the prefix cache
        self.batch: Any = None  # the DecodeBatch holding this sequence's KV rows, if any
        self.media_items: list[Any] = []  # per-image items for the vision-feature cache
        params = request.sampling
        self.sampler = Sampler(params, vocab_size, prompt.token_ids)
        self.detok = IncrementalDetokenizer(
            lambda ids: tokenizer.decode(ids, skip_special_tokens=False)
        )
        self.stops = StopMatcher(params.stop)
        self.generated: list[int] = []
        self.emb: Embedded | None = None
        self.rope_delta = 0
        self._pending: Any = None  # next token's SampleResult, maybe still computing
        self._taken_early = False  # the pending token was already accepted (accept_first)
        self.finished = False
        self.finish_reason: FinishReason | None = None
        self.started = time.perf_counter()
        self.first_token_at: float | None = None

    def begin(self, cache: list[Any] | None, plan: PrefixPlan) -> None:
        """Give the sequence its (possibly restored) cache; prefill may start once it has one."""
        self.cache = cache
        self.plan = plan
        self.cached_tokens = plan.cached_tokens
        self.prefilled = plan.cached_tokens
        self.snapshots = dict(plan.snapshots)
        self.planned = cache is not None

    def close(self, cancelled: bool) -> None:
        """Hand the KV to the prefix cache (cancelled ones too: a retry resumes), then drop it."""
        if self.batch is not None:
            self.cache = self.batch.leave(self)
        if self.on_close is not None and self.cache:
            self.on_close(self, cancelled)
        self.cache = []
        self.emb = None
        self._pending = None
        self.finished = True
        if cancelled and self.finish_reason is None:
            self.finish_reason = "cancelled"

    @property
    def prompt_len(self) -> int:
        return len(self.prompt.token_ids)

    # -- prefill -----------------------------------------------------------------
    def _prefill_chunk(self) -> list[EngineEvent]:
        if self.emb is None:
            features = self.plan.features() if self.plan.features else None
            self.emb = self.family.embed(
                self.model, self.prompt.token_ids, self.prompt.model_inputs, features
            )
            self.rope_delta = self.emb.rope_delta
        last = self.prompt_len - 1
        stop = min((c for c in self.plan.checkpoints if c > self.prefilled), default=last)
        n = min(self.prefill_step, min(stop, last) - self.prefilled)
        if n > 0:
            self.family.forward(
                self.model, self.cache, self.emb, self.prefilled, self.prefilled + n
            )
            mx.eval([c.state for c in self.cache])
            self.prefilled += n
            self._checkpoint()
            progress = [PrefillProgress(done=self.prefilled, total=self.prompt_len)]
            if self.prefilled < last:
                return progress
            # Only the last token is left: run it now rather than a step later, so the first
            # token is not held behind another round of the batch's decode step.
            return progress + self._prefill_last(last)
        return self._prefill_last(last)

    def _prefill_last(self, last: int) -> list[EngineEvent]:
        """The prompt's last token: its logits give the first sampled token."""
        logits = self.family.forward(self.model, self.cache, self.emb, last, last + 1)
        self.prefilled = self.prompt_len
        self._checkpoint()
        self.emb = None  # the prompt embeddings are no longer needed
        if self.on_prefilled is not None:
            self.on_prefilled(self)
        self._pending = self._sample(logits)
        mx.async_eval(self._pending.token)
        return []

    def _checkpoint(self) -> None:
        """Snapshot the sliding-window layers at a planned position: they cannot be cut
        back later, so this is the only way to reuse a prefix ending here."""
        if self.prefilled in self.plan.checkpoints:
            self.snapshots[self.prefilled] = {
                i: snapshot_layer(c)
                for i, c in enumerate(self.cache)
                if isinstance(c, RotatingKVCache)
            }

    def cached_length(self) -> int:
        """Tokens whose KV the live cache holds (prompt + fed-back generated tokens)."""
        return min(int(c.offset) for c in self.cache) if self.cache else 0

    # -- decode ------------------------------------------------------------------
    @property
    def decoding(self) -> bool:
        """Prefill is done and the next token is sampled (maybe still computing)."""
        return not self.finished and self._pending is not None

    @property
    def pending(self) -> Any:
        return self._pending

    @pending.setter
    def pending(self, value: Any) -> None:
        self._pending = value

    @property
    def position(self) -> int:
        """Cache position of the next token fed to the model (the pending one)."""
        return self.prompt_len + len(self.generated) - (1 if self._taken_early else 0)

    def sample_row(self, logits: mx.array) -> Any:
        """Sample this sequence's next token from its (V,) logits row (lazily)."""
        if self.matcher is not None:
            logits = self.matcher.apply(logits)
        return self.sampler.sample(logits)

    def _sample(self, logits: mx.array):
        return self.sample_row(logits[0, -1])

    def _launch_next(self, token: mx.array) -> Any:
        offset = self.prompt_len + len(self.generated)
        logits = self.family.decode(self.model, self.cache, token, offset, self.rope_delta)
        nxt = self._sample(logits)
        mx.async_eval(nxt.token)
        return nxt

    def prefill_chunk(self) -> list[EngineEvent]:
        """One prefill chunk (the last one also samples the first token)."""
        return self._prefill_chunk()

    def advance(self) -> list[EngineEvent]:
        """Solo stepping: a prefill chunk, or one decode step on this sequence's own cache."""
        if self.finished:
            return []
        events: list[EngineEvent] = []
        if self.prefilled < self.prompt_len:
            events = self._prefill_chunk()
            if self._pending is None:
                return events
        current = self._pending
        # Unconstrained: queue the next step before reading this token, so the model
        # computes while Python turns this token into text.
        nxt = self._launch_next(current.token) if self.matcher is None else None
        token = int(current.token.item())
        event = self.accept(token, current)
        if not self.finished:
            if self.matcher is not None:
                nxt = self._launch_next(current.token)
            self._pending = nxt
        return [*events, event]

    def accept_first(self) -> TokenEvent:
        """Batched stepping: take the first token as soon as prefill has sampled it, before
        the batch feeds it back; the batch's next step then feeds it without taking it again."""
        event = self.accept(int(self._pending.token.item()), self._pending)
        self._taken_early = True
        return event

    def take_early(self) -> bool:
        """Was the pending token already taken by accept_first? (Clears the mark.)"""
        early, self._taken_early = self._taken_early, False
        return early

    def accept(self, token: int, sample: Any) -> TokenEvent:
        """Take the sampled token: text (stop strings applied), finish checks, logprobs."""
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        self.generated.append(token)
        logprobs = self._logprobs(token, sample.logprobs)
        reason: FinishReason | None = None
        text = ""
        if token in self.eos_ids:
            reason = "stop"
        else:
            if self.matcher is not None:
                self.matcher.advance(token)
            text, hit = self.stops.feed(self.detok.add(token))
            grammar_done = self.matcher is not None and self.matcher.is_finished
            if hit or grammar_done:
                reason = "stop"
            elif len(self.generated) >= self.max_tokens:
                reason = "length"
        if reason is not None:
            if not self.stops.stopped:
                text += self.stops.feed(self.detok.flush())[0]
                text += self.stops.flush()
            return self._finish(reason, text, token, logprobs)
        return TokenEvent(text=text, token_ids=(token,), logprobs=logprobs)

    def _finish(self, reason: FinishReason, text: str, token: int, logprobs) -> TokenEvent:
        self.finished = True
        self.finish_reason = reason
        self._pending = None
        usage = Usage(
            prompt_tokens=self.prompt_len,
            completion_tokens=len(self.generated),
            cached_tokens=self.cached_tokens,
        )
        return TokenEvent(
            text=text, token_ids=(token,), logprobs=logprobs, finish_reason=reason, usage=usage
        )

    def _logprobs(self, token: int, lp: mx.array | None) -> tuple[TokenLogprob, ...]:
        params = self.request.sampling
        if not params.logprobs or lp is None:
            return ()
        top: tuple[TopLogprob, ...] = ()
        if params.top_logprobs > 0:
            k = params.top_logprobs
            idx = mx.argpartition(-lp, k - 1)[:k]
            vals = lp[idx]
            order = mx.argsort(-vals)
            top = tuple(
                TopLogprob(self._piece(int(i)), float(v))
                for i, v in zip(idx[order].tolist(), vals[order].tolist())
            )
        return (TokenLogprob(self._piece(token), float(lp[token].item()), top),)

    def _piece(self, token: int) -> str:
        return self.tokenizer.decode([token], skip_special_tokens=False)
