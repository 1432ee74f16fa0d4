import mlx.core as mx
import numpy as np

from mlx_server.engine.sampling import Sampler
from mlx_server.engine.types import SamplingParams

V = 50


def logits(seed=0):
    return mx.array(np.random.default_rng(seed).normal(size=V).astype(np.float32) * 3)


def draw(params, n=20, prompt=()):
    s = Sampler(params, V, prompt)
    return [s.sample(logits(i)).token.item() for i in range(n)]


def test_greedy_is_argmax():
    s = Sampler(SamplingParams(temperature=0), V)
    x = logits()
    assert s.sample(x).token.item() == int(np.argmax(np.array(x)))


def test_same_seed_same_tokens_and_different_seed_differs():
    a = draw(SamplingParams(temperature=1.0, seed=7))
    b = draw(SamplingParams(temperature=1.0, seed=7))
    c = draw(SamplingParams(temperature=1.0, seed=8))
    assert a == b
    assert a != c


def test_top_k_one_is_greedy():
    x = logits(3)
    s = Sampler(SamplingParams(temperature=1.5, top_k=1, seed=1), V)
    assert s.sample(x).token.item() == int(np.argmax(np.array(x)))


def test_top_p_restricts_to_nucleus():
    x = mx.array([10.0, 9.5, 0.0, -1.0] + [-5.0] * (V - 4))
    seen = set()
    for seed in range(40):
        s = Sampler(SamplingParams(temperature=1.0, top_p=0.5, seed=seed), V)
        seen.add(s.sample(x).token.item())
    assert seen <= {0}


def test_min_p_drops_unlikely_tokens():
    x = mx.array([5.0, 4.9, 0.0] + [-3.0] * (V - 3))
    seen = {
        Sampler(SamplingParams(temperature=1.0, min_p=0.5, seed=s), V).sample(x).token.item()
        for s in range(60)
    }
    assert seen == {0, 1}


def test_mask_is_respected():
    mask = mx.zeros((V,), dtype=mx.bool_)
    mask[7] = True
    s = Sampler(SamplingParams(temperature=1.0, seed=3), V)
    assert all(s.sample(logits(i), mask).token.item() == 7 for i in range(5))


def test_logit_bias_and_repetition_penalty():
    x = mx.zeros((V,))
    s = Sampler(SamplingParams(temperature=0, logit_bias=((5, 100.0),)), V)
    assert s.sample(x).token.item() == 5
    y = mx.array([2.0, 1.9] + [0.0] * (V - 2))
    s = Sampler(SamplingParams(temperature=0, repetition_penalty=2.0), V, prompt_ids=[0])
    assert s.sample(y).token.item() == 1


def test_frequency_penalty_discourages_repeats():
    y = mx.array([1.0, 0.9] + [-5.0] * (V - 2))
    s = Sampler(SamplingParams(temperature=0, frequency_penalty=0.5), V)
    assert [s.sample(y).token.item() for _ in range(2)] == [0, 1]


def test_logprobs_are_raw_log_softmax():
    x = logits(5)
    r = Sampler(SamplingParams(temperature=0, logprobs=True), V).sample(x)
    expected = np.array(x) - np.log(np.exp(np.array(x)).sum())
    assert np.allclose(np.array(r.logprobs), expected, atol=1e-5)
