"""Logits -> next token for one sequence: penalties, bias, constraint mask, temperature,
top-k / top-p / min-p, and a per-request seeded RNG (same seed => same tokens)."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import mlx.core as mx

from .types import SamplingParams

_MASK64 = (1 << 64) - 1
NEG_INF = float("-inf")


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def step_key(seed: int, step: int) -> mx.array:
    """An RNG key that depends only on (seed, step), so a sequence samples the same
    tokens whether it runs alone or beside others."""
    return mx.random.key(_splitmix64(_splitmix64(seed & _MASK64) ^ step))


@dataclass
class SampleResult:
    token: mx.array  # () int32, possibly still lazy
    logprobs: mx.array | None  # (V,) log-softmax of the raw logits, when requested


class Sampler:
    """Stateful sampler for one sequence; `prompt_ids` feed the repetition penalty."""

    def __init__(self, params: SamplingParams, vocab_size: int, prompt_ids: Sequence[int] = ()):
        self.params = params
        self.vocab_size = vocab_size
        self.seed = params.seed if params.seed is not None else secrets.randbits(63)
        self._step = 0
        self._needs_history = params.repetition_penalty != 1.0 or (
            params.presence_penalty != 0.0 or params.frequency_penalty != 0.0
        )
        self._bias = self._bias_vector(params.logit_bias, vocab_size)
        # Counts of generated tokens (presence/frequency) and a seen-mask over prompt +
        # output (repetition), kept as MLX arrays so updates stay lazy.
        self._counts = mx.zeros((vocab_size,), dtype=mx.float32) if self._needs_history else None
        self._seen = None
        if params.repetition_penalty != 1.0:
            seen = mx.zeros((vocab_size,), dtype=mx.bool_)
            ids = [i for i in prompt_ids if 0 <= i < vocab_size]
            if ids:
                seen[mx.array(ids, dtype=mx.int32)] = True
            self._seen = seen

    @staticmethod
    def _bias_vector(bias: Sequence[tuple[int, float]], vocab_size: int) -> mx.array | None:
        pairs = [(t, b) for t, b in bias if 0 <= t < vocab_size]
        if not pairs:
            return None
        vec = mx.zeros((vocab_size,), dtype=mx.float32)
        vec[mx.array([t for t, _ in pairs])] = mx.array([b for _, b in pairs], dtype=mx.float32)
        return vec

    def process(self, logits: mx.array) -> mx.array:
        """Bias and penalties on a (V,) float32 logits vector."""
        p = self.params
        if self._bias is not None:
            logits = logits + self._bias
        if self._seen is not None:
            penalised = mx.where(
                logits > 0, logits / p.repetition_penalty, logits * p.repetition_penalty
            )
            logits = mx.where(self._seen, penalised, logits)
        if self._counts is not None and (p.presence_penalty or p.frequency_penalty):
            logits = (
                logits
                - p.frequency_penalty * self._counts
                - p.presence_penalty * (self._counts > 0).astype(mx.float32)
            )
        return logits

    def sample(self, logits: mx.array, mask: mx.array | None = None) -> SampleResult:
        """Pick the next token from (V,) or (1, V) logits; `mask` (bool, V) keeps allowed ids."""
        p = self.params
        logits = logits.reshape(-1)[: self.vocab_size].astype(mx.float32)
        raw_logprobs = None
        if p.logprobs:
            raw_logprobs = logits - mx.logsumexp(logits)
        logits = self.process(logits)
        if mask is not None:
            logits = mx.where(mask, logits, NEG_INF)
        if p.temperature <= 0:
            token = mx.argmax(logits)
        else:
            token = self._draw(logits / p.temperature)
        self._step += 1
        self._record(token)
        return SampleResult(token=token.astype(mx.int32), logprobs=raw_logprobs)

    def _draw(self, logits: mx.array) -> mx.array:
        p = self.params
        if 0 < p.top_k < logits.shape[0]:
            kth = mx.min(mx.topk(logits, p.top_k))
            logits = mx.where(logits < kth, NEG_INF, logits)
        if p.min_p > 0:
            top = mx.max(logits)
            logits = mx.where(logits < top + mx.log(mx.array(p.min_p)), NEG_INF, logits)
        if p.top_p < 1.0:
            order = mx.argsort(-logits)
            sorted_logits = logits[order]
            probs = mx.softmax(sorted_logits)
            before = mx.cumsum(probs) - probs
            n_keep = mx.maximum(mx.sum(before < p.top_p), 1)
            threshold = sorted_logits[n_keep - 1]
            logits = mx.where(logits < threshold, NEG_INF, logits)
        return mx.random.categorical(logits, key=step_key(self.seed, self._step))

    def _record(self, token: mx.array) -> None:
        if self._counts is not None:
            self._counts = self._counts + (mx.arange(self.vocab_size) == token)
        if self._seen is not None:
            self._seen = self._seen | (mx.arange(self.vocab_size) == token)
