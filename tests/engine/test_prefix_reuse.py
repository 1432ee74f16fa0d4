"""Prefix reuse is invisible in the output: a warm request's first-token log-probabilities
equal a cold run's (tight without KV quantization, within a stated tolerance with 8-bit KV),
for both families, the IDE and annotation patterns, with and without images, and Gemma
prompts longer than its sliding window."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mlx_server.engine.prefix_cache import PrefixCache
from mlx_server.engine.runner import MLXRunner
from mlx_server.engine.types import (
    GenerationRequest,
    ImageInput,
    ImagePart,
    Message,
    PromptReady,
    SamplingParams,
    TextPart,
    TokenEvent,
)
from mlx_server.engine.vision_cache import VisionFeatureCache

RED = ImageInput.from_pil(Image.new("RGB", (64, 64), (220, 20, 20)))
BLUE = ImageInput.from_pil(Image.new("RGB", (64, 64), (20, 20, 220)))
# Longer than the tiny Gemma's 128-token sliding window on its own.
SYSTEM = "You are a careful assistant for code review. " * 14
TOL = {None: 2e-4, 8: 5e-2}


def user(*parts):
    return Message(
        "user", tuple(TextPart(p) if isinstance(p, str) else ImagePart(p) for p in parts)
    )


def system():
    return Message("system", (TextPart(SYSTEM),))


def runner(lm, kv_bits, cached=True):
    return MLXRunner(
        lm,
        kv_bits=kv_bits,
        prefill_step=48,
        prefix_cache=PrefixCache(1 << 30) if cached else None,
        vision_cache=VisionFeatureCache(1 << 28) if cached else None,
    )


def run(r, messages, max_tokens=6):
    params = SamplingParams(temperature=0, max_tokens=max_tokens, logprobs=True, top_logprobs=5)
    seq, events = r.start(GenerationRequest("t", tuple(messages), params))
    while not seq.finished:
        events += seq.advance()
    seq.close(cancelled=False)
    ready = next(e for e in events if isinstance(e, PromptReady))
    tokens = [e for e in events if isinstance(e, TokenEvent)]
    return ready, tokens, seq


def assert_same_first_token(warm, cold, kv_bits):
    w, c = warm[0].logprobs[0], cold[0].logprobs[0]
    wt = {t.token: t.logprob for t in w.top}
    ct = {t.token: t.logprob for t in c.top}
    tol = TOL[kv_bits]
    assert abs(w.logprob - c.logprob) < tol
    for tok in set(wt) & set(ct):
        assert abs(wt[tok] - ct[tok]) < tol
    top = sorted(ct.values(), reverse=True)
    if top[0] - top[1] > 2 * tol:  # not near-tied: greedy must agree
        assert warm[0].token_ids == cold[0].token_ids


def answer_text(lm, seq):
    ids = [t for t in seq.generated if t not in lm.eos_token_ids]
    return lm.tokenizer.decode(ids, skip_special_tokens=True)


def scenario(lm, pattern, image):
    """(first request, second request) messages for one reuse pattern."""
    img = (RED,) if image else ()
    if pattern == "multi_turn":
        turn1 = [system(), user(*img, "Review this function please.")]
        return turn1, None  # turn 2 depends on turn 1's answer
    if pattern == "same_system":
        return (
            [system(), user(*img, "What does line 3 do?")],
            [system(), user(*img, "Is there a bug on line 9?")],
        )
    if pattern == "same_image":
        return [user(RED, "Describe the colours.")], [user(RED, "Count the objects here.")]
    raise ValueError(pattern)


@pytest.mark.parametrize("family", ["gemma3", "qwen2_5_vl"])
@pytest.mark.parametrize("kv_bits", [None, 8])
@pytest.mark.parametrize(
    "pattern,image",
    [
        ("multi_turn", False),
        ("multi_turn", True),
        ("same_system", False),
        ("same_system", True),
        ("same_image", True),
    ],
)
def test_warm_equals_cold(loaded, family, kv_bits, pattern, image):
    lm = loaded(family)
    warm_runner = runner(lm, kv_bits)
    first, second = scenario(lm, pattern, image)
    ready1, _, seq1 = run(warm_runner, first)
    assert ready1.cached_tokens == 0
    if second is None:
        second = [
            *first,
            Message("assistant", (TextPart(answer_text(lm, seq1)),)),
            user("And now?"),
        ]
    ready, warm, _ = run(warm_runner, second)
    cold_ready, cold, _ = run(runner(lm, kv_bits, cached=False), second)
    assert cold_ready.cached_tokens == 0 and ready.prompt_tokens == cold_ready.prompt_tokens
    assert ready.cached_tokens > 0
    if pattern == "multi_turn":
        assert ready.cached_tokens >= ready1.prompt_tokens - 1
    if pattern == "same_system":
        assert ready.cached_tokens >= len(lm.tokenizer(SYSTEM)["input_ids"]) - 2
    if pattern == "same_image":
        image_tokens = seq1.prompt.image_spans[0][1]
        assert ready.cached_tokens >= image_tokens
    assert_same_first_token(warm, cold, kv_bits)
    assert warm[-1].usage.cached_tokens == ready.cached_tokens


@pytest.mark.parametrize("family", ["gemma3", "qwen2_5_vl"])
def test_different_image_same_text_stops_reuse_at_the_image(loaded, family):
    lm = loaded(family)
    r = runner(lm, 8)
    _, _, seq = run(r, [user("Look at this:", RED, "What is it?")])
    ready, warm, _ = run(r, [user("Look at this:", BLUE, "What is it?")])
    start = seq.prompt.image_spans[0][0]
    assert 0 < ready.cached_tokens <= start
    _, cold, _ = run(runner(lm, 8, cached=False), [user("Look at this:", BLUE, "What is it?")])
    assert_same_first_token(warm, cold, 8)


@pytest.mark.parametrize("family", ["gemma3", "qwen2_5_vl"])
def test_cancelled_prefill_keeps_its_kv_for_the_retry(loaded, family):
    lm = loaded(family)
    r = runner(lm, 8)
    msgs = [system(), user("Summarise everything above.")]
    params = SamplingParams(temperature=0, max_tokens=4, logprobs=True, top_logprobs=5)
    seq, _ = r.start(GenerationRequest("t", tuple(msgs), params))
    seq.advance()
    seq.advance()  # two prefill chunks, then the client goes away
    done = seq.prefilled
    assert 0 < done < seq.prompt_len - 1
    seq.close(cancelled=True)
    ready, warm, _ = run(r, msgs)
    assert ready.cached_tokens == done
    _, cold, _ = run(runner(lm, 8, cached=False), msgs)
    assert_same_first_token(warm, cold, 8)


def test_gemma_reuse_past_the_window_uses_checkpoints(loaded):
    lm = loaded("gemma3")
    r = runner(lm, None)
    run(r, [system(), user("First question about the code?")], max_tokens=2)
    entry = r.prefix_cache._entries[0]
    window = lm.model.language_model.config.sliding_window
    assert len(entry.key) > window
    assert entry.checkpoints, "sliding-window layers need snapshots past the window"
    ready, _, _ = run(r, [system(), user("A different question entirely?")], max_tokens=2)
    assert ready.cached_tokens in entry.checkpoints


def test_vision_tower_skipped_for_a_repeated_image(loaded):
    lm = loaded("qwen2_5_vl")
    r = runner(lm, 8)
    run(r, [user(RED, "one")])
    before = r.vision_cache.stats()
    run(r, [user("a different prefix", RED, "two")])
    after = r.vision_cache.stats()
    assert after["hits"] == before["hits"] + 1 and after["misses"] == before["misses"]


def test_prefix_cache_stats_report_hits(loaded):
    lm = loaded("qwen2_5_vl")
    r = runner(lm, 8)
    run(r, [system(), user("q1")])
    run(r, [system(), user("q2")])
    stats = r.stats()["prompt_cache"]
    assert stats["hits"] >= 1 and stats["entries"] >= 1 and stats["bytes"] > 0
    assert 0 < stats["hit_rate"] <= 1 and np.isfinite(stats["token_hit_rate"])


def test_questions_about_one_image_sent_together_share_its_prefill(loaded):
    lm = loaded("qwen2_5_vl")
    r = runner(lm, 8)
    params = SamplingParams(temperature=0, max_tokens=3)
    reqs = [
        GenerationRequest(f"q{i}", (user(RED, SYSTEM + f" Question {i}?"),), params)
        for i in range(4)
    ]
    seqs = [r.start(q)[0] for q in reqs]
    assert [s.planned for s in seqs] == [True, False, False, False]
    while any(not s.finished for s in seqs):
        live = [s for s in seqs if not s.finished]
        r.step(live)
        for s in [s for s in live if s.finished]:
            s.close(cancelled=False)
    shared = seqs[0].prompt_len - len(lm.tokenizer(" Question 0?")["input_ids"]) - 8
    assert seqs[0].cached_tokens == 0
    assert all(s.cached_tokens >= shared for s in seqs[1:])
