"""The prefix cache as a data structure: keys, lookup, cutting, snapshots, budget, LRU."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
from mlx_vlm.models.cache import KVCache, QuantizedKVCache, RotatingKVCache

from mlx_server.engine.prefix_cache import (
    PrefixCache,
    cache_key,
    can_cut,
    restore_layer,
    snapshot_layer,
)

H, D = 2, 64


def kv(n, seed=0):
    mx.random.seed(seed)
    return mx.random.normal((1, H, n, D)), mx.random.normal((1, H, n, D))


def filled(cache, n, seed=0, step=None):
    k, v = kv(n, seed)
    step = step or n
    for i in range(0, n, step):
        cache.update_and_fetch(k[:, :, i : i + step], v[:, :, i : i + step])
    mx.eval(cache.state)
    return cache, (k, v)


def layers(n, seed=0):
    return [snapshot_layer(filled(QuantizedKVCache(64, 8), n, seed)[0])]


def test_cache_key_marks_media_by_content_and_length():
    a = cache_key([1, 2, 9, 9, 9, 3], [(2, 5, "imgA")])
    b = cache_key([1, 2, 9, 9, 9, 3], [(2, 5, "imgB")])
    c = cache_key([1, 2, 9, 9, 3], [(2, 4, "imgA")])
    assert a[:2].tolist() == [1, 2] and (a[2:5] < 0).all() and len(set(a[2:5])) == 1
    assert a[2] != b[2] and a[2] != c[2]


def test_restore_cuts_full_attention_layers_exactly():
    cache, (k, _) = filled(KVCache(), 10)
    snap = snapshot_layer(cache)
    back = restore_layer(snap, 6)
    assert back.offset == 6 and mx.array_equal(back.keys, k[:, :, :6])
    # Writing into the restored cache never changes the snapshot.
    back.update_and_fetch(*kv(1, seed=5))
    assert mx.array_equal(snap[1][0], k)


def test_quantized_layers_round_trip():
    cache, _ = filled(QuantizedKVCache(64, 8), 20, step=7)
    snap = snapshot_layer(cache)
    back = restore_layer(snap, 12)
    assert back.offset == 12 and back.keys[0].shape[2] == 12


def test_rotating_layers_cut_only_before_wrapping_or_at_their_length():
    small, _ = filled(RotatingKVCache(max_size=16), 10)
    big, _ = filled(RotatingKVCache(max_size=16), 40, step=8)
    assert can_cut(snapshot_layer(small), 5)
    snap = snapshot_layer(big)
    assert not can_cut(snap, 30) and can_cut(snap, 40)
    back = restore_layer(snap, 40)
    assert back.offset == 40 and back.max_size == 16


def test_lookup_finds_longest_prefix_within_limit():
    pc = PrefixCache(1 << 30)
    key = np.arange(50, dtype=np.int64)
    pc.insert(key, layers(50))
    other = np.concatenate([np.arange(30), [999] * 10])
    m = pc.lookup(other, limit=39)
    assert m is not None and m.length == 30
    assert pc.lookup(key, limit=20).length == 20
    assert pc.lookup(np.array([7, 7, 7]), limit=2) is None


def test_insert_supersedes_prefixes_and_skips_covered_ones():
    pc = PrefixCache(1 << 30)
    pc.insert(np.arange(20), layers(20))
    pc.insert(np.arange(40), layers(40))
    assert pc.stats()["entries"] == 1
    assert not pc.insert(np.arange(10), layers(10))
    assert pc.stats()["entries"] == 1


def test_checkpoints_make_wrapped_windows_reusable():
    pc = PrefixCache(1 << 30)
    rot, _ = filled(RotatingKVCache(max_size=16), 40, step=8)
    mid, _ = filled(RotatingKVCache(max_size=16), 24, step=8)
    pc.insert(np.arange(40), [snapshot_layer(rot)], {24: {0: snapshot_layer(mid)}})
    query = np.concatenate([np.arange(32), [-5] * 8])
    m = pc.lookup(query, limit=39)
    assert m.length == 24
    assert m.entry.restore(24)[0].offset == 24


def test_budget_evicts_least_recently_used():
    one = layers(64)
    size = sum(x.nbytes for part in one[0][1] for x in part)
    pc = PrefixCache(int(size * 2.5))
    pc.insert(np.arange(64), layers(64, 1))
    pc.insert(np.arange(1000, 1064), layers(64, 2))
    pc.lookup(np.arange(64), limit=63)  # touch the first
    pc.insert(np.arange(2000, 2064), layers(64, 3))
    stats = pc.stats()
    assert stats["entries"] == 2 and stats["bytes"] <= pc.budget
    assert pc.lookup(np.arange(1000, 1064), limit=63) is None
    assert pc.lookup(np.arange(64), limit=63) is not None


def test_entry_larger_than_budget_is_not_kept():
    pc = PrefixCache(1024)
    assert not pc.insert(np.arange(64), layers(64))
    assert pc.stats()["entries"] == 0


def test_stored_state_owns_exactly_its_bytes():
    # One KV head: a slice of the 256-position buffer is row-contiguous, the case in which
    # a "copy if needed" would keep the whole buffer alive behind a small entry.
    mx.clear_cache()
    base = mx.get_active_memory()
    cache = QuantizedKVCache(64, 8)
    k = mx.random.normal((1, 1, 20, D))
    cache.update_and_fetch(k, k)
    mx.eval(cache.keys, cache.values)
    snap = snapshot_layer(cache)
    mx.eval(snap[1])
    assert [x.dtype for p in snap[1] for x in p] == [
        x.dtype for p in (cache.keys, cache.values) for x in p
    ]
    del cache, k
    mx.clear_cache()
    held = mx.get_active_memory() - base
    stored = sum(x.nbytes for part in snap[1] for x in part)
    assert held <= stored + 1024, (held, stored)
