"""Prefix reuse through the real server: cached_tokens on turn 2, /v1/cache, and a request
abandoned mid-prefill whose retry resumes from the KV it had already computed."""

from __future__ import annotations

import httpx
import pytest

from mlx_server.testing.server import start_server, stop_server

pytestmark = pytest.mark.e2e

SYSTEM = "You are an IDE assistant. The project files follow. " + "def f(x): return x * 2\n" * 60


def chat(server, messages, **kw):
    body = {"model": server.model_id, "messages": messages, "max_tokens": 6, "temperature": 0}
    r = httpx.post(server.v1 + "/chat/completions", json={**body, **kw}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def test_turn_two_reuses_turn_one(server):
    turn1 = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Explain f."}]
    r1 = chat(server, turn1)
    answer = r1["choices"][0]["message"]["content"] or "ok"
    turn2 = [
        *turn1,
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "And g?"},
    ]
    r2 = chat(server, turn2)
    cached = r2["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached >= r1["usage"]["prompt_tokens"] - 1
    assert cached < r2["usage"]["prompt_tokens"]
    stats = httpx.get(server.v1 + "/cache").json()
    assert stats["enabled"] and stats["prompt_cache"]["hits"] >= 1
    assert stats["prompt_cache"]["bytes"] > 0


@pytest.fixture(scope="module")
def slow_prefill_server(tiny_models, tmp_path_factory):
    log = tmp_path_factory.mktemp("logs") / "server-slow.log"
    srv = start_server(
        tiny_models["qwen2_5_vl"], log, "--prefill-step-size", "8", family="qwen2_5_vl"
    )
    yield srv
    stop_server(srv)


def test_cancel_mid_prefill_then_retry_resumes(slow_prefill_server):
    srv = slow_prefill_server
    msgs = [{"role": "system", "content": SYSTEM * 3}, {"role": "user", "content": "Go."}]
    body = {"model": srv.model_id, "messages": msgs, "max_tokens": 4, "stream": True}
    with httpx.stream("POST", srv.v1 + "/chat/completions", json=body, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith(": prefill"):
                break
    r2 = chat(srv, msgs)
    cached = r2["usage"]["prompt_tokens_details"]["cached_tokens"]
    # Cut after a chunk or two (of ~250): the retry resumes from there, not from scratch.
    assert 0 < cached < r2["usage"]["prompt_tokens"] // 2


def test_no_prompt_cache_flag(tiny_models, tmp_path_factory):
    log = tmp_path_factory.mktemp("logs") / "server-nocache.log"
    srv = start_server(tiny_models["gemma3"], log, "--no-prompt-cache", family="gemma3")
    try:
        msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi."}]
        chat(srv, msgs)
        again = chat(srv, msgs)
        assert again["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
        assert httpx.get(srv.v1 + "/cache").json()["enabled"] is False
    finally:
        stop_server(srv)
