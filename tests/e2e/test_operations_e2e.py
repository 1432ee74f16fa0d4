"""The real server process on the tiny Gemma 3 model: graceful shutdown on SIGTERM/SIGINT,
the API key, and /metrics with the real engine's figures."""

from __future__ import annotations

import json
import re
import signal
import time

import httpx
import openai
import pytest

from mlx_server.testing.server import start_server, stop_server

pytestmark = pytest.mark.e2e

FAMILY = "gemma3"
# The tiny Gemma's end-of-turn ids, pushed down so that a stream runs until max_tokens.
NO_EOS = {"1": -100, "7": -100}


def _long_stream_body(server, max_tokens: int) -> dict:
    return {
        "model": server.model_id,
        "messages": [{"role": "user", "content": "Talk."}],
        "max_tokens": max_tokens,
        "stream": True,
        "logit_bias": NO_EOS,
    }


def _stream_then_signal(server, body: dict, sig: int, after_events: int = 10):
    """Stream `body`, send `sig` after some events; return the payloads, seconds from the
    signal to the end of the stream, and whether a new connection was refused meanwhile."""
    payloads, refused, signalled_at = [], None, 0.0
    with httpx.stream("POST", server.v1 + "/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            payloads.append(line[len("data: ") :])
            if len(payloads) == after_events:
                server.proc.send_signal(sig)
                signalled_at = time.monotonic()
            elif refused is None and signalled_at and time.monotonic() - signalled_at > 0.3:
                try:
                    httpx.get(server.base_url + "/health", timeout=1)
                    refused = False
                except httpx.ConnectError:
                    refused = True
    return payloads, time.monotonic() - signalled_at, refused


def _assert_clean_exit(server) -> None:
    assert server.proc.wait(timeout=20) == 0
    log = server.log()
    assert "Traceback" not in log and "threads still running" not in log, log[-3000:]


def test_sigterm_ends_a_long_stream_with_an_error_event_and_exits_0(tiny_models, tmp_path):
    server = start_server(
        tiny_models[FAMILY], tmp_path / "server.log", "--shutdown-grace", "1", family=FAMILY
    )
    try:
        body = _long_stream_body(server, max_tokens=5000)  # ~20 s of decoding
        payloads, after_signal, refused = _stream_then_signal(server, body, signal.SIGTERM)
        assert payloads[-1] == "[DONE]"
        error = json.loads(payloads[-2])["error"]
        assert error["code"] == "shutting_down" and error["type"] == "server_error"
        assert 0.8 <= after_signal < 6, after_signal  # the grace, then the end
        assert refused is True  # the listener closed at once
        _assert_clean_exit(server)
        assert "shutting down: running requests get 1.0 s" in server.log()
    finally:
        stop_server(server)


def test_sigint_lets_a_short_stream_finish_and_exits_0(tiny_models, tmp_path):
    server = start_server(
        tiny_models[FAMILY], tmp_path / "server.log", "--shutdown-grace", "20", family=FAMILY
    )
    try:
        body = _long_stream_body(server, max_tokens=300)
        payloads, _, _ = _stream_then_signal(server, body, signal.SIGINT, after_events=5)
        assert payloads[-1] == "[DONE]"
        chunks = [json.loads(p) for p in payloads[:-1]]
        assert not any("error" in c for c in chunks)
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        _assert_clean_exit(server)
    finally:
        stop_server(server)


def test_api_key_and_metrics_on_the_real_server(tiny_models, tmp_path):
    key = "sk-e2e-test-key"
    server = start_server(
        tiny_models[FAMILY], tmp_path / "server.log", "--api-key", key, family=FAMILY
    )
    try:
        ok = openai.OpenAI(base_url=server.v1, api_key=key, max_retries=0)
        out = ok.chat.completions.create(
            model=server.model_id, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )
        assert out.usage.completion_tokens >= 1
        wrong = openai.OpenAI(base_url=server.v1, api_key="nope", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as info:
            wrong.models.list()
        assert info.value.code == "invalid_api_key"
        assert httpx.get(server.base_url + "/health").status_code == 200
        assert httpx.get(server.base_url + "/metrics").status_code == 401
        auth = {"authorization": f"Bearer {key}"}
        text = httpx.get(server.base_url + "/metrics", headers=auth).text
        assert 'mlx_server_engine_info{dtype="float32",family="gemma3"} 1.0' in text
        assert "mlx_server_engine_context_length " in text
        assert "mlx_server_time_to_first_token_seconds_count 1.0" in text
        assert "process_resident_memory_bytes" in text
        assert "mlx_server_engine_constraints_misses 0.0" in text
        schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
        rf = {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}}
        for _ in range(2):  # compiled once, then served from the compile cache
            ok.chat.completions.create(
                model=server.model_id,
                messages=[{"role": "user", "content": "Hi"}],
                max_tokens=4,
                response_format=rf,
            )
        text = httpx.get(server.base_url + "/metrics", headers=auth).text
        assert "mlx_server_engine_constraints_misses 1.0" in text
        assert "mlx_server_engine_constraints_hits 1.0" in text
        compile_s = re.search(r"^mlx_server_engine_constraints_compile_seconds (\S+)$", text, re.M)
        assert compile_s is not None and float(compile_s.group(1)) > 0
        assert key not in server.log()
    finally:
        stop_server(server)
