"""Request ids, the one log line per request, and /metrics."""

from __future__ import annotations

import asyncio
import logging

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mlx_server.api.app import create_app
from mlx_server.config import Settings
from mlx_server.engine.errors import EngineError
from tests.api_util import MODEL_ID, chat_body
from tests.test_api_disconnect import Client, _leave_after

pytestmark = pytest.mark.anyio

URL = "/v1/chat/completions"
SECRET = "SECRET-PROMPT-TEXT-8d1f"


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample of an exposition, keyed by name and sorted labels."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def scrape(client) -> dict[tuple[str, tuple], float]:
    r = await client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return samples(r.text)


def requests_total(m, route: str, status: str, method: str = "POST") -> float:
    key = ("mlx_server_requests_total", (("method", method), ("route", route), ("status", status)))
    return m.get(key, 0.0)


async def test_every_response_carries_a_request_id(client):
    responses = [
        await client.post(URL, json=chat_body()),
        await client.get("/v1/models"),
        await client.get("/nowhere"),
        await client.post(URL, content=b"{", headers={"content-type": "application/json"}),
        await client.get("/health"),
        await client.get("/metrics"),
    ]
    ids = [r.headers["x-request-id"] for r in responses]
    assert all(i.startswith("req_") and len(i) == 28 for i in ids)
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize(
    "given,kept",
    [
        ("trace-42.a_b:c", True),
        ("0f8e2c1a-5b7d-4e0a-9c1b-3d2e4f5a6b7c", True),
        ("x" * 129, False),
        ("has space", False),
        ("-leading-dash", False),
        ("new\\nline", False),
    ],
)
async def test_a_sane_client_request_id_is_echoed(client, given, kept):
    r = await client.get("/v1/models", headers={"x-request-id": given})
    assert (r.headers["x-request-id"] == given) is kept


async def test_one_log_line_per_request_without_prompt_text(client, caplog):
    caplog.set_level(logging.DEBUG)
    body = chat_body(messages=[{"role": "user", "content": SECRET}], user=SECRET, stop=[SECRET])
    r = await client.post(URL, json=body, headers={"x-request-id": "trace-1"})
    assert r.status_code == 200
    lines = [rec.getMessage() for rec in caplog.records if "trace-1" in rec.getMessage()]
    assert len(lines) == 1
    line = lines[0]
    assert "POST /v1/chat/completions 200" in line
    assert "prompt=12 cached=0 completion=4 finish=stop" in line
    assert "ttft=" in line and r.json()["id"] in line
    r = await client.post(URL, json={**body, "stream": True}, headers={"x-request-id": "trace-2"})
    assert r.status_code == 200
    lines = [rec.getMessage() for rec in caplog.records if "trace-2" in rec.getMessage()]
    assert len(lines) == 1 and "completion=4 finish=stop" in lines[0]
    assert SECRET not in caplog.text


async def test_metrics_count_requests_tokens_and_timings(client, engine):
    for stream in (False, True):
        r = await client.post(URL, json=chat_body(stream=stream))
        assert r.status_code == 200
    await client.post(URL, json=chat_body(model="nope"))
    await client.get("/v1/models")
    for path in ("/random-1", "/random-2"):
        await client.get(path)
    m = await scrape(client)
    assert requests_total(m, "/v1/chat/completions", "200") == 2
    assert requests_total(m, "/v1/chat/completions", "404") == 1
    assert requests_total(m, "/v1/models", "200", "GET") == 1
    assert requests_total(m, "unmatched", "404", "GET") == 2  # raw paths never become labels
    assert m[("mlx_server_prompt_tokens_total", ())] == 24
    assert m[("mlx_server_completion_tokens_total", ())] == 8
    assert m[("mlx_server_cached_prompt_tokens_total", ())] == 0
    assert m[("mlx_server_completions_total", (("finish_reason", "stop"),))] == 2
    assert m[("mlx_server_time_to_first_token_seconds_count", ())] == 2
    assert m[("mlx_server_decode_tokens_per_second_count", ())] == 2
    assert m[("mlx_server_queue_depth", ())] == 0
    assert m[("mlx_server_active_sequences", ())] == 0
    assert m[("mlx_server_engine_completed", ())] == 2
    assert m[("mlx_server_requests_in_flight", ())] == 1  # the scrape itself
    assert m[("mlx_server_info", (("model", MODEL_ID), ("version", "0.1.0")))] == 1


async def test_engine_stats_are_rendered_generically(client, engine, monkeypatch):
    stats = {
        "queued": 3,
        "active": 2,
        "family": "gemma3",
        "prefix cache": {"bytes": 1024, "hit-rate": 0.25, "enabled": True},
        "notes": ["lists are skipped"],
    }
    monkeypatch.setattr(engine, "stats", lambda: stats)
    m = await scrape(client)
    assert m[("mlx_server_queue_depth", ())] == 3
    assert m[("mlx_server_active_sequences", ())] == 2
    assert m[("mlx_server_engine_prefix_cache_bytes", ())] == 1024
    assert m[("mlx_server_engine_prefix_cache_hit_rate", ())] == 0.25
    assert m[("mlx_server_engine_prefix_cache_enabled", ())] == 1
    assert m[("mlx_server_engine_info", (("family", "gemma3"),))] == 1
    assert not [k for k in m if "notes" in k[0]]


async def test_a_failing_stats_call_does_not_break_the_scrape(client, engine, monkeypatch):
    def broken():
        raise RuntimeError("boom")

    monkeypatch.setattr(engine, "stats", broken)
    m = await scrape(client)
    assert ("mlx_server_queue_depth", ()) not in m
    assert ("mlx_server_requests_in_flight", ()) in m


async def test_openmetrics_is_negotiated(client):
    r = await client.get("/metrics", headers={"accept": "application/openmetrics-text"})
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    assert r.text.rstrip().endswith("# EOF")


async def test_errors_and_disconnects_are_counted(app, client, engine, caplog):
    engine.scripted(error=EngineError("exploded", code="boom"), error_after=2)
    r = await client.post(URL, json=chat_body(stream=True), headers={"x-request-id": "t-err"})
    assert '"code":"boom"' in r.text
    line = next(rec for rec in caplog.records if "t-err" in rec.getMessage())
    assert line.levelname == "WARNING" and "finish=error error=boom" in line.getMessage()

    engine.scripted(error=None, pieces=[f"t{i} " for i in range(100)], delay=0.02)
    gone = Client(app)
    watcher = asyncio.create_task(_leave_after(gone, lambda: len(gone.chunks) >= 3))
    await gone.post(chat_body(stream=True))
    await watcher
    m = await scrape(client)
    assert m[("mlx_server_completions_total", (("finish_reason", "error"),))] == 1
    assert m[("mlx_server_completions_total", (("finish_reason", "disconnected"),))] == 1


async def test_apps_keep_separate_registries(engine):
    a = create_app(Settings(model=MODEL_ID), engine)
    b = create_app(Settings(model=MODEL_ID), engine)
    assert a.state.metrics.registry is not b.state.metrics.registry
    a.state.metrics.prompt_tokens.inc(5)
    assert b.state.metrics.registry.get_sample_value("mlx_server_prompt_tokens_total") == 0
