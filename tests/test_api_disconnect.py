"""Client disconnects cancel the job; keepalives flow while the engine is quiet.

httpx's ASGITransport cannot disconnect mid-response, so these tests drive the ASGI app
directly with a `receive` that reports `http.disconnect` when the test says so.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from mlx_server.api import sse
from tests.api_util import chat_body, sse_data

pytestmark = pytest.mark.anyio


class Client:
    """A hand-driven HTTP/1.1 client at the ASGI level."""

    def __init__(self, app, spec_version: str = "2.3"):
        self.app = app
        self.spec_version = spec_version
        self.sent: list[dict] = []
        self.gone = asyncio.Event()
        self._body_read = False

    async def _receive(self) -> dict:
        if not self._body_read:
            self._body_read = True
            return {"type": "http.request", "body": self._body, "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: dict) -> None:
        if self.gone.is_set():
            if self.spec_version >= "2.4":
                raise OSError("client went away")  # what an ASGI 2.4 server does
            return  # uvicorn (ASGI 2.3) drops what is sent after a disconnect
        self.sent.append(message)

    @property
    def chunks(self) -> list[bytes]:
        return [m["body"] for m in self.sent if m["type"] == "http.response.body" and m["body"]]

    async def post(self, body: dict) -> None:
        self._body = json.dumps(body).encode()
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": self.spec_version},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/chat/completions",
            "raw_path": b"/v1/chat/completions",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"content-type", b"application/json"), (b"host", b"test")],
            "client": ("127.0.0.1", 5000),
            "server": ("test", 80),
        }
        await asyncio.wait_for(self.app(scope, self._receive, self._send), 5)


async def _leave_after(client: Client, condition, timeout: float = 3.0) -> None:
    async def watch():
        while not condition():
            await asyncio.sleep(0.005)
        client.gone.set()

    await asyncio.wait_for(watch(), timeout)


@pytest.mark.parametrize("spec_version", ["2.3", "2.4"])
async def test_disconnect_mid_stream_cancels_the_job(app, engine, spec_version, caplog):
    engine.scripted(pieces=[f"t{i} " for i in range(100)], delay=0.02)
    client = Client(app, spec_version)
    watcher = asyncio.create_task(_leave_after(client, lambda: len(client.chunks) >= 3))
    await client.post(chat_body(stream=True))
    await watcher
    job = engine.jobs[-1]
    assert job.cancelled
    assert 2 <= len(job.emitted) < 20  # stopped within a piece or two of the disconnect
    assert not job.finished
    assert not [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")]


@pytest.mark.parametrize("spec_version", ["2.3", "2.4"])
async def test_disconnect_during_non_streamed_generation_cancels_the_job(
    app, engine, spec_version, caplog
):
    engine.scripted(pieces=[f"t{i} " for i in range(100)], delay=0.02)
    client = Client(app, spec_version)
    watcher = asyncio.create_task(
        _leave_after(client, lambda: len(engine.jobs[-1].emitted) >= 3 if engine.jobs else False)
    )
    await client.post(chat_body())
    await watcher
    job = engine.jobs[-1]
    assert job.cancelled and not job.finished and len(job.emitted) < 20
    assert client.sent == []
    assert not [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")]


@pytest.mark.parametrize("spec_version", ["2.3", "2.4"])
async def test_disconnect_while_queued_cancels_before_any_token(app, engine, spec_version):
    engine.scripted(queue_delay=0.2)
    client = Client(app, spec_version)
    watcher = asyncio.create_task(_leave_after(client, lambda: bool(engine.jobs)))
    await client.post(chat_body(stream=True))
    await watcher
    job = engine.jobs[-1]
    assert job.cancelled and job.emitted == []
    assert client.sent == []


async def test_server_keeps_serving_after_a_disconnect(app, engine, client):
    engine.scripted(pieces=["a"] * 50, delay=0.01)
    gone = Client(app)
    watcher = asyncio.create_task(_leave_after(gone, lambda: len(gone.chunks) >= 2))
    await gone.post(chat_body(stream=True))
    await watcher
    engine.scripted(pieces=["fine"], delay=0)
    r = await client.post("/v1/chat/completions", json=chat_body())
    assert r.json()["choices"][0]["message"]["content"] == "fine"


async def test_idle_keepalive_comments_while_the_engine_is_quiet(client, engine, monkeypatch):
    monkeypatch.setattr(sse, "KEEPALIVE_INTERVAL_S", 0.01)
    engine.scripted(pieces=["slow", " answer"], delay=0.06)
    r = await client.post("/v1/chat/completions", json=chat_body(stream=True))
    assert r.text.count(": keepalive\n\n") >= 2
    chunks = [json.loads(p) for p in sse_data(r.text)[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "slow answer"


async def test_with_keepalive_ticks_and_keeps_items_intact():
    async def slow():
        for i in range(3):
            await asyncio.sleep(0.03)
            yield i

    out = [x async for x in sse.with_keepalive(slow(), interval=0.01)]
    assert [x for x in out if x is not None] == [0, 1, 2]
    assert out.count(None) >= 3


async def test_with_keepalive_close_cancels_the_pending_item():
    cancelled = asyncio.Event()

    async def never():
        try:
            await asyncio.sleep(10)
            yield 1
        except asyncio.CancelledError:
            cancelled.set()
            raise

    ticking = sse.with_keepalive(never(), interval=0.01)
    assert await anext(ticking) is None
    await ticking.aclose()
    assert cancelled.is_set()


def test_sse_framing():
    assert sse.data({"a": "x\ny"}) == b'data: {"a":"x\\ny"}\n\n'
    assert sse.comment("prefill 1/2\nnext") == b": prefill 1/2 next\n\n"
    assert sse.DONE == b"data: [DONE]\n\n"
