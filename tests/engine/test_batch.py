"""Continuous batching: sequences decoded together give what they give alone (greedy and
seeded sampling), with images, 8-bit KV, stops and constraints, and joining/leaving."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from mlx_server.engine.constraint_spec import constraint_for_json_schema
from mlx_server.engine.constraints import ConstraintCompiler
from mlx_server.engine.prefix_cache import PrefixCache
from mlx_server.engine.runner import MLXRunner
from mlx_server.engine.types import (
    GenerationRequest,
    ImageInput,
    ImagePart,
    Message,
    SamplingParams,
    TextPart,
    TokenEvent,
)

SCHEMA = {
    "type": "object",
    "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 99}},
    "required": ["n"],
    "additionalProperties": False,
}


def image(i):
    return ImageInput.from_pil(Image.new("RGB", (64, 64), (40 * i % 256, 90, 200 - 20 * i)))


def requests(lm, n=6):
    no_eos = tuple((t, -100.0) for t in lm.eos_token_ids)
    out = []
    for i in range(n):
        parts = [TextPart(f"Question number {i}: " + "tell me more. " * (i + 1))]
        if i % 2 == 0:
            parts.insert(0, ImagePart(image(i)))
        params = SamplingParams(
            temperature=0 if i % 3 == 0 else 0.9,
            top_p=0.9 if i % 3 == 1 else 1.0,
            seed=100 + i,
            max_tokens=10 + 3 * i,
            logit_bias=no_eos,
            stop=("zzzz",) if i == 4 else (),
        )
        constraint = constraint_for_json_schema(SCHEMA) if i == 5 else None
        out.append(
            GenerationRequest(
                f"r{i}", (Message("user", tuple(parts)),), params, constraint=constraint
            )
        )
    return out


def runner(lm):
    cc = ConstraintCompiler(lm.tokenizer, stop_token_ids=lm.eos_token_ids, vocab_size=lm.vocab_size)
    return MLXRunner(lm, kv_bits=8, prefill_step=32, constraints=cc)


def drive(r, reqs, stagger=False):
    """Start requests (all at once, or one more every step) and step them all to the end."""
    seqs, texts, pending = [], {}, list(reqs)
    while pending or any(not s.finished for s in seqs):
        for q in pending[:1] if stagger else pending:
            seq, _ = r.start(q)
            seqs.append(seq)
            texts[seq] = []
        pending = pending[1:] if stagger else []
        live = [s for s in seqs if not s.finished]
        for seq, events in r.step(live).items():
            texts[seq] += [e.text for e in events if isinstance(e, TokenEvent)]
        r.widest = max(getattr(r, "widest", 0), len(r.batch))
        for s in [s for s in live if s.finished]:
            s.close(cancelled=False)
    return [(s.generated, "".join(texts[s])) for s in seqs]


@pytest.mark.parametrize("family", ["gemma3", "qwen2_5_vl"])
def test_batched_equals_solo(loaded, family):
    lm = loaded(family)
    reqs = requests(lm)
    solo = [drive(runner(lm), [q])[0] for q in reqs]
    r = runner(lm)
    batched = drive(r, reqs)
    assert r.widest >= 4  # most of them decoded together for a while
    for i, (a, b) in enumerate(zip(solo, batched)):
        assert a == b, f"request {i} differs when batched"
    json.loads(batched[5][1])  # the constrained one still parses


@pytest.mark.parametrize("family", ["gemma3", "qwen2_5_vl"])
def test_joining_and_leaving_mid_flight(loaded, family):
    lm = loaded(family)
    reqs = requests(lm)
    solo = [drive(runner(lm), [q])[0] for q in reqs]
    staggered = drive(runner(lm), reqs, stagger=True)
    assert staggered == solo


def test_cancelled_row_leaves_the_others_alone(loaded):
    lm = loaded("qwen2_5_vl")
    reqs = requests(lm, 4)
    solo = [drive(runner(lm), [q])[0] for q in reqs]
    r = runner(lm)
    seqs = [r.start(q)[0] for q in reqs]
    steps = 0
    while any(not s.finished for s in seqs):
        live = [s for s in seqs if not s.finished]
        r.step(live)
        steps += 1
        if steps == 8 and not seqs[1].finished:
            seqs[1].close(cancelled=True)
        for s in [s for s in live if s.finished and s is not seqs[1]]:
            s.close(cancelled=False)
    for i in (0, 2, 3):
        assert seqs[i].generated == solo[i][0]
    assert len(r.batch) == 0


def test_batch_rows_go_to_the_prefix_cache(loaded):
    lm = loaded("qwen2_5_vl")
    r = runner(lm)
    r.prefix_cache = PrefixCache(1 << 30)
    reqs = requests(lm, 3)
    drive(r, reqs)
    assert r.prefix_cache.stats()["entries"] == 3


def test_first_token_goes_out_in_the_step_that_ends_its_prefill(loaded):
    """A request arriving while others decode gets its first token as soon as its prompt is
    prefilled, not after another decode step of the whole batch; one with max_tokens=1 ends
    there and never joins the batch."""
    lm = loaded("qwen2_5_vl")
    reqs = requests(lm, 3)
    r = runner(lm)
    running, _ = r.start(reqs[0])
    while not running.generated:
        r.step([running])
    late, _ = r.start(reqs[1])
    one = GenerationRequest("one", reqs[2].messages, SamplingParams(max_tokens=1))
    single, _ = r.start(one)
    seen = {late: 0, single: 0}
    while not (late.generated and single.finished):
        before = len(running.generated)
        live = [s for s in (running, late, single) if not s.finished]
        out = r.step(live)
        for s in seen:
            firsts = [e for e in out.get(s, []) if isinstance(e, TokenEvent)]
            if firsts and not seen[s]:
                seen[s] = 1
                assert len(firsts) == 1 and s.prefilled == s.prompt_len
                assert len(running.generated) == before  # no decode step held it back
        for s in [s for s in live if s.finished]:
            s.close(cancelled=False)
    assert single.generated and len(single.generated) == 1 and single.batch is None
    while not (late.finished and running.finished):
        live = [s for s in (running, late) if not s.finished]
        r.step(live)
        for s in [s for s in live if s.finished]:
            s.close(cancelled=False)
    solo = drive(runner(lm), [reqs[1]])[0]
    assert (late.generated, late.batch) == (solo[0], None)
