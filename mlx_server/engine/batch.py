"""Continuous batching: every decoding sequence advances in one forward pass per step.

A sequence joins when its prefill is done (its single-sequence caches are merged into the
batch's left-padded caches) and leaves when it finishes or is cancelled (its row is
extracted back into single caches for the prefix cache). Sampling stays per row, so each
request keeps its own parameters, seed, stop strings and constraint.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
from mlx_vlm.models.cache import (
    BatchKVCache,
    BatchRotatingKVCache,
    KVCache,
    QuantizedKVCache,
    RotatingKVCache,
)

from .families import Family
from .types import EngineEvent


def to_batch(c: Any) -> Any:
    """A one-row batch cache holding a single-sequence cache's state."""
    if isinstance(c, QuantizedKVCache):
        merged = c.prefix_cache_merge([c], [c.offset])
        if merged is None:
            raise TypeError("cannot batch this quantized cache")
        return merged
    if isinstance(c, RotatingKVCache):
        return BatchRotatingKVCache.merge([c])
    if isinstance(c, KVCache):
        return BatchKVCache.merge([c])
    raise TypeError(f"cannot batch a {type(c).__name__}")


class DecodeBatch:
    """The decoding sequences and their batched KV caches (one per layer)."""

    def __init__(self, model: Any, family: Family):
        self.model = model
        self.family = family
        self.rows: list[Any] = []  # Generations, in cache-row order
        self.cache: list[Any] | None = None
        self.peak = 0  # most rows ever decoded together

    def __len__(self) -> int:
        return len(self.rows)

    def join(self, gen: Any) -> None:
        """Move a prefilled sequence's caches into the batch."""
        rows = [to_batch(c) for c in gen.cache]
        if self.cache is None:
            self.cache = rows
        else:
            for mine, theirs in zip(self.cache, rows):
                mine.extend(theirs)
        gen.cache = None
        gen.batch = self
        self.rows.append(gen)
        self.peak = max(self.peak, len(self.rows))

    def leave(self, gen: Any) -> list[Any]:
        """Take a sequence out; returns its own single-sequence caches."""
        idx = self.rows.index(gen)
        mx.eval([c.state for c in self.cache])
        singles = [c.extract(idx) for c in self.cache]
        self.rows.pop(idx)
        if self.rows:
            keep = mx.array([i for i in range(len(self.rows) + 1) if i != idx])
            for c in self.cache:
                c.filter(keep)
        else:
            self.cache = None
        gen.batch = None
        return singles

    def _forward(self, tokens: mx.array, offsets: list[int]) -> list[Any]:
        """Feed each row its token at its position; returns each row's next SampleResult."""
        deltas = [g.rope_delta for g in self.rows]
        logits = self.family.decode_batch(self.model, self.cache, tokens, offsets, deltas)
        nxt = [g.sample_row(logits[i, -1]) for i, g in enumerate(self.rows)]
        mx.async_eval([n.token for n in nxt])
        return nxt

    def step(self) -> dict[Any, list[EngineEvent]]:
        """One decode step for every row. Unconstrained batches queue the next forward pass
        before reading this step's tokens, so the model computes while Python makes text."""
        rows = list(self.rows)
        current = [g.pending for g in rows]
        offsets = [g.position for g in rows]
        tokens = mx.stack([c.token for c in current])
        constrained = any(g.matcher is not None for g in rows)
        nxt = None if constrained else self._forward(tokens, offsets)
        ids = tokens.tolist()
        events = {
            g: [] if g.take_early() else [g.accept(t, c)] for g, t, c in zip(rows, ids, current)
        }
        if constrained:  # masks depend on the tokens just accepted
            nxt = self._forward(tokens, offsets)
        for g, n in zip(rows, nxt):
            g.pending = None if g.finished else n
        return events
