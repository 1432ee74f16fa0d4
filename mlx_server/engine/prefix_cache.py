"""Multi-entry KV prefix cache: longest-prefix reuse across requests, byte budget, LRU.

An entry holds the per-layer KV state of `len(key)` tokens. Full-attention layers (plain or
8-bit) can be cut back to any shorter prefix. Sliding-window layers (RotatingKVCache) can be
cut only while they have never wrapped; past that, only the positions where a snapshot was
taken (`checkpoints`) or the entry's full length are usable. A wrong answer is never
acceptable, a smaller hit is.

Keys are token ids with media spans replaced by negative markers derived from the media's
content hash, so the same text with a different image stops matching at the image.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
import numpy as np
from mlx_vlm.models.cache import KVCache, QuantizedKVCache, RotatingKVCache

# (kind, state, meta): kind is "kv", "qkv" or "rot"; state holds detached arrays.
LayerState = tuple[str, Any, tuple]


def media_marker(key: str) -> int:
    """A negative int standing for every token of one media span in a cache key."""
    return -(int(hashlib.sha256(key.encode()).hexdigest()[:15], 16) + 1)


def cache_key(token_ids: Sequence[int], spans: Sequence[tuple[int, int, str]]) -> np.ndarray:
    key = np.asarray(token_ids, dtype=np.int64).copy()
    for start, end, media_key in spans:
        key[start:end] = media_marker(f"{media_key}:{end - start}")
    return key


def _cut(x: mx.array, n: int) -> mx.array:
    """A new array object holding the first n positions (axis -2): never aliases `x`,
    because MLX slice assignment on a live cache would otherwise write into a snapshot."""
    return x[..., :n, :]


def _tree_cut(state: Any, n: int) -> Any:
    if isinstance(state, tuple | list):
        return type(state)(_tree_cut(s, n) for s in state)
    return _cut(state, n)


def _compact(state: Any, n: int) -> Any:
    """Like _tree_cut, but copied into buffers of exactly n positions: a slice keeps the live
    cache's whole buffer (grown in 256-token steps) alive, so stored entries would hold
    several times the memory their nbytes report. mx.contiguous does not copy a slice that is
    already row-contiguous (one KV head), an elementwise op always writes a new buffer."""
    if isinstance(state, tuple | list):
        return type(state)(_compact(s, n) for s in state)
    return state[..., :n, :] * 1


def _nbytes(state: Any) -> int:
    if isinstance(state, tuple | list):
        return sum(_nbytes(s) for s in state)
    return int(state.nbytes) if state is not None else 0


def live_nbytes(caches: Sequence[Any]) -> int:
    """Bytes held by live layer caches (single or batched, plain or 8-bit)."""
    return sum(_nbytes(c.keys) + _nbytes(c.values) for c in caches if c.keys is not None)


def snapshot_layer(c: Any) -> LayerState:
    """Detached state of one live layer cache."""
    if isinstance(c, RotatingKVCache):
        return (
            "rot",
            _compact((c.keys, c.values), c.keys.shape[2]),
            (c.keep, c.max_size, c.offset, c._idx),
        )
    if isinstance(c, QuantizedKVCache):
        return ("qkv", _compact((c.keys, c.values), c.offset), (c.group_size, c.bits, c.offset))
    if isinstance(c, KVCache):
        return ("kv", _compact((c.keys, c.values), c.offset), (c.offset,))
    raise TypeError(f"cannot snapshot a {type(c).__name__}")


def layer_length(s: LayerState) -> int:
    return s[2][2] if s[0] in ("rot", "qkv") else s[2][0]


def can_cut(s: LayerState, n: int) -> bool:
    """Whether this layer's state can be cut back to exactly n tokens."""
    if n > layer_length(s):
        return False
    if s[0] == "rot":
        keep, max_size, offset, idx = s[2]
        return n == offset or offset < max_size  # never wrapped: still in temporal order
    return True


def restore_layer(s: LayerState, n: int) -> Any:
    """A fresh live cache holding the first n tokens of a snapshot (can_cut must hold)."""
    kind, state, meta = s
    if kind == "rot":
        keep, max_size, offset, idx = meta
        c = RotatingKVCache(max_size=max_size, keep=keep)
        if n == offset:
            c.keys, c.values = (_cut(x, x.shape[2]) for x in state)
            c.offset, c._idx = offset, idx
        else:
            c.keys, c.values = (_cut(x, n) for x in state)
            c.offset, c._idx = n, n
        return c
    if kind == "qkv":
        c = QuantizedKVCache(group_size=meta[0], bits=meta[1])
        c.keys, c.values = _tree_cut(state, n)
    else:
        c = KVCache()
        c.keys, c.values = _tree_cut(state, n)
    c.offset = n
    return c


@dataclass(eq=False)
class Entry:
    key: np.ndarray
    layers: list[LayerState]
    # position -> {layer index: snapshot} for layers that cannot be cut there
    checkpoints: dict[int, dict[int, LayerState]] = field(default_factory=dict)
    nbytes: int = 0
    last_used: float = 0.0
    hits: int = 0

    def usable(self, n: int) -> bool:
        snaps = self.checkpoints.get(n, {})
        return all(i in snaps or can_cut(s, n) for i, s in enumerate(self.layers))

    def usable_length(self, n: int) -> int:
        """The longest usable prefix of at most n tokens (0 if none)."""
        if n <= 0 or self.usable(n):
            return max(n, 0)
        return max((c for c in self.checkpoints if c < n and self.usable(c)), default=0)

    def restore(self, n: int) -> list[Any]:
        snaps = self.checkpoints.get(n, {})
        return [restore_layer(snaps.get(i, s), n) for i, s in enumerate(self.layers)]

    def measure(self) -> None:
        self.nbytes = sum(_nbytes(s[1]) for s in self.layers) + sum(
            _nbytes(s[1]) for snaps in self.checkpoints.values() for s in snaps.values()
        )


def _needed(
    layers: list[LayerState], checkpoints: dict[int, dict[int, LayerState]]
) -> dict[int, dict[int, LayerState]]:
    """Drop snapshots the full state can stand in for: a sliding-window layer that never
    wrapped can be cut anywhere, so its snapshots would only cost memory."""
    kept = {}
    for pos, snaps in checkpoints.items():
        snaps = {i: snap for i, snap in snaps.items() if not can_cut(layers[i], pos)}
        if snaps:
            kept[pos] = snaps
    return kept


@dataclass(frozen=True)
class Match:
    entry: Entry
    length: int


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    m = min(len(a), len(b))
    if m == 0:
        return 0
    diff = np.flatnonzero(a[:m] != b[:m])
    return int(diff[0]) if diff.size else m


class PrefixCache:
    """Thread-safe store of KV prefixes under a byte budget (whole entries evicted, LRU)."""

    def __init__(self, budget_bytes: int):
        self.budget = budget_bytes
        self.reserved = 0  # bytes of KV held by running sequences, which share the budget
        self._entries: list[Entry] = []
        self._lock = threading.Lock()
        self.lookups = self.hits = 0
        self.tokens_requested = self.tokens_reused = 0

    def lookup(self, key: np.ndarray, limit: int) -> Match | None:
        """The entry and length of the longest usable cached prefix, at most `limit`."""
        best: Match | None = None
        with self._lock:
            self.lookups += 1
            self.tokens_requested += len(key)
            for entry in self._entries:
                n = entry.usable_length(min(common_prefix(entry.key, key), limit))
                if n > 0 and (best is None or n > best.length):
                    best = Match(entry, n)
            if best is not None:
                self.hits += 1
                self.tokens_reused += best.length
                best.entry.hits += 1
                best.entry.last_used = time.monotonic()
        return best

    def insert(
        self,
        key: np.ndarray,
        layers: list[LayerState],
        checkpoints: dict[int, dict[int, LayerState]] | None = None,
    ) -> bool:
        """Store a prefix. Entries whose keys it extends are merged into it (their
        checkpoints kept); a prefix already covered by a longer entry only adds checkpoints."""
        if len(key) == 0:
            return False
        entry = Entry(key=key, layers=layers, checkpoints=_needed(layers, checkpoints or {}))
        mx.eval([s[1] for s in layers])
        with self._lock:
            for other in list(self._entries):
                n = common_prefix(other.key, key)
                if n == len(other.key):  # the new entry extends `other`
                    for pos, snaps in other.checkpoints.items():
                        entry.checkpoints.setdefault(pos, snaps)
                    self._entries.remove(other)
                elif n == len(key):  # `other` already covers this prefix
                    extra = {len(key): {i: s for i, s in enumerate(layers) if s[0] == "rot"}}
                    extra.update(entry.checkpoints)
                    for pos, snaps in _needed(other.layers, extra).items():
                        other.checkpoints.setdefault(pos, snaps)
                    other.measure()
                    other.last_used = time.monotonic()
                    self._evict()
                    return False
            entry.measure()
            if entry.nbytes > self.budget - self.reserved:
                return False
            entry.last_used = time.monotonic()
            self._entries.append(entry)
            self._evict()
        return True

    def reserve(self, live_bytes: int) -> None:
        """Running sequences now hold `live_bytes` of KV: shrink the cache to leave room."""
        with self._lock:
            self.reserved = live_bytes
            self._evict()

    def _evict(self) -> None:
        room = self.budget - self.reserved
        while self._entries and sum(e.nbytes for e in self._entries) > room:
            self._entries.remove(min(self._entries, key=lambda e: e.last_used))

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "entries": len(self._entries),
                "bytes": sum(e.nbytes for e in self._entries),
                "budget_bytes": self.budget,
                "reserved_bytes": self.reserved,
                "tokens": int(sum(len(e.key) for e in self._entries)),
                "lookups": self.lookups,
                "hits": self.hits,
                "hit_rate": self.hits / self.lookups if self.lookups else 0.0,
                "tokens_reused": self.tokens_reused,
                "token_hit_rate": (
                    self.tokens_reused / self.tokens_requested if self.tokens_requested else 0.0
                ),
            }
