"""The app behind a real uvicorn on a loopback port (FakeEngine): real sockets, real disconnects."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn

from mlx_server.api.app import create_app
from tests.api_util import chat_body, sse_json


@pytest.fixture
def base_url(settings, engine) -> Iterator[str]:
    config = uvicorn.Config(
        create_app(settings, engine), host="127.0.0.1", port=0, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def _wait_cancelled(job, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not job.cancelled and time.monotonic() < deadline:
        time.sleep(0.01)


def test_abandoned_stream_cancels_the_job_and_the_next_request_succeeds(base_url, engine):
    engine.scripted(pieces=[f"t{i} " for i in range(200)], delay=0.01)
    with httpx.Client(timeout=10) as client:
        with client.stream(
            "POST", base_url + "/v1/chat/completions", json=chat_body(stream=True)
        ) as r:
            assert r.status_code == 200
            events = 0
            for line in r.iter_lines():
                events += line.startswith("data:")
                if events >= 4:
                    break
        job = engine.jobs[-1]
        _wait_cancelled(job)
        assert job.cancelled and not job.finished and len(job.emitted) < 50
        engine.scripted(pieces=["still", " here"], delay=0)
        body = chat_body(stream=True, stream_options={"include_usage": True})
        r = client.post(base_url + "/v1/chat/completions", json=body)
        chunks = list(sse_json(r.text))
        assert (
            "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
            == "still here"
        )
        assert r.text.endswith("data: [DONE]\n\n")


def test_abandoned_non_streamed_request_cancels_the_job(base_url, engine):
    engine.scripted(pieces=[f"t{i} " for i in range(200)], delay=0.01)
    with pytest.raises(httpx.TimeoutException):
        httpx.post(base_url + "/v1/chat/completions", json=chat_body(), timeout=0.15)
    job = engine.jobs[-1]
    _wait_cancelled(job)
    assert job.cancelled and not job.finished


def test_errors_over_real_http(base_url):
    r = httpx.post(
        base_url + "/v1/chat/completions",
        content=b"{oops",
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = httpx.head(base_url + "/health")
    assert r.status_code == 200 and r.content == b""
