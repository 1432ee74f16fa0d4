"""The generation loop against mlx-vlm's own: same greedy tokens, 8-bit KV past Gemma's
sliding window, chunk-size invariance, and the worker's cancellation."""

from __future__ import annotations

import asyncio

import mlx.core as mx
import pytest
from mlx_vlm.generate import stream_generate
from mlx_vlm.models.cache import QuantizedKVCache, RotatingKVCache
from PIL import Image

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
from mlx_server.engine.worker import Worker

IMG = ImageInput.from_pil(Image.new("RGB", (64, 64), (200, 30, 30)))
# Long enough to cross the tiny Gemma's 128-token sliding window and several prefill chunks.
LONG = "Describe this picture in detail, please, with care. " * 12


def request(text=LONG, image=True, max_tokens=24, **sampling):
    parts = (TextPart(text), ImagePart(IMG)) if image else (TextPart(text),)
    params = SamplingParams(temperature=0, max_tokens=max_tokens, **sampling)
    return GenerationRequest("t", (Message("user", parts),), params)


def run(runner, req):
    seq, events = runner.start(req)
    while not seq.finished:
        events += seq.advance()
    return seq, events


def reference_tokens(lm, seq, n, **kw):
    extra = dict(seq.prompt.model_inputs)
    ids = mx.array([seq.prompt.token_ids])
    out = stream_generate(
        lm.model,
        lm.processor,
        seq.prompt.text,
        image=[IMG.image],
        max_tokens=n,
        temperature=0.0,
        input_ids=ids,
        mask=mx.ones(ids.shape),
        **extra,
        **kw,
    )
    return [r.token for r in out]


@pytest.mark.parametrize("family", ["gemma3", "qwen2_5_vl", "qwen2_vl"])
def test_greedy_matches_mlx_vlm_without_kv_quantization(loaded, family):
    lm = loaded(family)
    seq, _ = run(MLXRunner(lm, kv_bits=None, prefill_step=16), request())
    assert seq.prompt_len > 128
    assert seq.generated == reference_tokens(lm, seq, 24)[: len(seq.generated)]


def test_qwen_greedy_matches_mlx_vlm_with_8bit_kv(loaded):
    lm = loaded("qwen2_5_vl")
    seq, _ = run(MLXRunner(lm, kv_bits=8, prefill_step=16), request())
    ref = reference_tokens(lm, seq, 24, kv_bits=8, quantized_kv_start=0)
    assert seq.generated == ref[: len(seq.generated)]


@pytest.mark.parametrize("family", ["gemma3", "qwen2_5_vl"])
def test_8bit_kv_runs_past_the_window_and_stays_close(loaded, family):
    lm = loaded(family)
    quant = MLXRunner(lm, kv_bits=8, prefill_step=32)
    seq, events = run(quant, request(max_tokens=160, logprobs=True))
    assert seq.prompt_len + len(seq.generated) > 256
    assert events[-1].finish_reason in ("stop", "length")
    _, plain_events = run(
        MLXRunner(lm, kv_bits=None, prefill_step=32), request(max_tokens=1, logprobs=True)
    )
    first_q = next(e for e in events if isinstance(e, TokenEvent)).logprobs[0]
    first_p = next(e for e in plain_events if isinstance(e, TokenEvent)).logprobs[0]
    assert abs(first_q.logprob - first_p.logprob) < 0.05


@pytest.mark.parametrize("family", ["gemma3", "qwen2_5_vl"])
def test_cache_layout_is_8bit_on_global_layers_only(loaded, family):
    lm = loaded(family)
    seq, _ = MLXRunner(lm, kv_bits=8).start(request(max_tokens=1))
    kinds = [type(c) for c in seq.cache]
    assert QuantizedKVCache in kinds
    if family == "gemma3":
        assert RotatingKVCache in kinds
    else:
        assert set(kinds) == {QuantizedKVCache}


def test_prefill_chunk_size_does_not_change_tokens(loaded):
    lm = loaded("gemma3")
    a, _ = run(MLXRunner(lm, kv_bits=None, prefill_step=7), request(max_tokens=12))
    b, _ = run(MLXRunner(lm, kv_bits=None, prefill_step=4096), request(max_tokens=12))
    assert a.generated == b.generated


def test_worker_cancel_frees_the_thread_and_next_request_runs(loaded):
    lm = loaded("qwen2_5_vl")
    worker = Worker(MLXRunner(lm, kv_bits=8), max_queue=4)

    async def scenario():
        long_req = request(
            text="go",
            image=False,
            max_tokens=20000,
            logit_bias=tuple((i, -100.0) for i in lm.eos_token_ids),
        )
        job = worker.submit(long_req)
        seen = 0
        async for ev in job:
            seen += isinstance(ev, TokenEvent)
            if seen == 3:
                job.cancel()
                break
        for _ in range(200):
            if worker.stats()["active"] == 0:
                break
            await asyncio.sleep(0.01)
        assert worker.stats()["active"] == 0
        events = [ev async for ev in worker.submit(request(text="hi", image=False, max_tokens=3))]
        assert isinstance(events[0], PromptReady)
        assert events[-1].finish_reason in ("stop", "length")

    try:
        asyncio.run(scenario())
    finally:
        worker.close()
