"""Concurrency through the real server: 8 streamed requests decoded together each equal
their solo run, a cancelled one disturbs nobody, and a full queue answers 429s while every
accepted request completes."""

from __future__ import annotations

import base64
import io
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image

from mlx_server.testing.server import start_server, stop_server

pytestmark = pytest.mark.e2e


def image_url(i):
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (30 * i % 256, 120, 250 - 30 * i)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def body(server, i, no_eos, **extra):
    content = [{"type": "text", "text": f"Request {i}: describe."}]
    if i % 2 == 0:
        content.insert(0, {"type": "image_url", "image_url": {"url": image_url(i)}})
    return {
        "model": server.model_id,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 12 + i,
        "temperature": 0 if i % 3 == 0 else 0.8,
        "seed": 7 * i,
        "logit_bias": no_eos,
        "stream": True,
        **extra,
    }


def stream(server, payload, stop_after=None):
    text, tokens = "", 0
    with httpx.stream("POST", server.v1 + "/chat/completions", json=payload, timeout=120) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk["choices"]:
                text += chunk["choices"][0]["delta"].get("content") or ""
                tokens += 1
            if stop_after is not None and tokens >= stop_after:
                return text, None
        return text, chunk


@pytest.fixture(scope="module")
def batch_server(tiny_models, tmp_path_factory):
    log = tmp_path_factory.mktemp("logs") / "batch-server.log"
    srv = start_server(
        tiny_models["qwen2_5_vl"], log, "--max-concurrency", "8", family="qwen2_5_vl"
    )
    yield srv
    stop_server(srv)


def eos_bias(server):
    cfg = json.loads((server.model_dir / "generation_config.json").read_text())
    return {str(i): -100 for i in cfg["eos_token_id"]}


def test_eight_concurrent_equal_their_solo_runs(batch_server):
    srv, no_eos = batch_server, eos_bias(batch_server)
    solo = [stream(srv, body(srv, i, no_eos))[0] for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda i: stream(srv, body(srv, i, no_eos))[0], range(8)))
    assert together == solo
    assert httpx.get(srv.base_url + "/health").json()["batch_peak"] >= 4


def test_cancelled_stream_does_not_disturb_the_others(batch_server):
    srv, no_eos = batch_server, eos_bias(batch_server)
    solo = [stream(srv, body(srv, i, no_eos))[0] for i in range(4)]
    long = body(srv, 9, no_eos, max_tokens=400)
    with ThreadPoolExecutor(5) as pool:
        quitter = pool.submit(stream, srv, long, 3)
        others = [pool.submit(stream, srv, body(srv, i, no_eos)) for i in range(4)]
        assert quitter.result()[1] is None
        assert [f.result()[0] for f in others] == solo


def test_full_queue_gives_429_and_accepted_requests_complete(tiny_models, tmp_path_factory):
    log = tmp_path_factory.mktemp("logs") / "queue-server.log"
    srv = start_server(
        tiny_models["gemma3"], log, "--max-concurrency", "2", "--max-queue", "2", family="gemma3"
    )
    try:
        no_eos = eos_bias(srv)
        results, lock = [], threading.Lock()

        def one(i):
            payload = {**body(srv, i, no_eos), "stream": False, "max_tokens": 60}
            r = httpx.post(srv.v1 + "/chat/completions", json=payload, timeout=120)
            with lock:
                results.append(r)

        with ThreadPoolExecutor(12) as pool:
            list(pool.map(one, range(12)))
        codes = sorted(r.status_code for r in results)
        assert set(codes) <= {200, 429} and 429 in codes and codes.count(200) >= 4
        for r in results:
            if r.status_code == 429:
                assert r.headers.get("retry-after") and r.json()["error"]["type"]
            else:
                assert r.json()["choices"][0]["finish_reason"] == "length"
    finally:
        stop_server(srv)
