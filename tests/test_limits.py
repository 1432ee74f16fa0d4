"""Request limits: body bytes (declared, chunked or lying), JSON depth, message count."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from mlx_server.api.app import create_app
from mlx_server.api.errors import ApiError
from mlx_server.api.limits import BodyLimitMiddleware, json_depth
from mlx_server.config import Settings
from tests.api_util import MODEL_ID, assert_envelope, chat_body

pytestmark = pytest.mark.anyio

URL = "/v1/chat/completions"
JSON = {"content-type": "application/json"}


@pytest.fixture
def small(engine):
    settings = Settings(model=MODEL_ID, max_body_bytes=16384, max_messages=8, max_json_depth=10)
    return create_app(settings, engine)


def _client(app) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


async def test_a_declared_oversized_body_is_refused_unread(small, engine):
    body = json.dumps(chat_body(messages=[{"role": "user", "content": "x" * 20000}]))
    async with _client(small) as c:
        r = await c.post(URL, content=body, headers=JSON)
        assert_envelope(r, 413, code="request_too_large")
        assert r.headers["connection"] == "close"
        ok = await c.post(URL, json=chat_body())
        assert ok.status_code == 200
    assert len(engine.requests) == 1


async def test_a_chunked_body_is_counted_as_it_arrives(small, engine):
    sent = []

    async def chunks():
        for _ in range(100):  # 100 KiB offered; the limit is 16 KiB
            sent.append(1)
            yield b" " * 1024

    async with _client(small) as c:
        r = await c.post(URL, content=chunks(), headers=JSON)
    assert "content-length" not in r.request.headers
    assert_envelope(r, 413, code="request_too_large")
    assert engine.requests == []


async def test_a_lying_content_length_cannot_bring_in_more():
    """Content-Length says 10, the stream brings 10 KiB: cut off at the limit, not at 10."""
    read = []

    async def app(scope, receive, send):
        while True:
            message = await receive()
            read.append(len(message.get("body", b"")))
            if not message.get("more_body"):
                return

    chunks = [{"type": "http.request", "body": b"x" * 1024, "more_body": True}] * 10
    messages = iter(chunks)

    async def receive():
        return next(messages)

    scope = {"type": "http", "headers": [(b"content-length", b"10")]}
    with pytest.raises(ApiError) as info:
        await BodyLimitMiddleware(app, max_bytes=3000)(scope, receive, None)
    assert info.value.status == 413 and sum(read) <= 3000


@pytest.mark.parametrize("depth,status", [(9, 200), (11, 400), (150, 400), (5000, 400)])
async def test_json_nesting_depth(small, engine, depth, status):
    # metadata is an ignored field typed Any: only the depth limit can refuse it.
    nested = "[" * depth + "]" * depth
    raw = json.dumps(chat_body()).replace('"messages"', f'"metadata": {nested}, "messages"')
    async with _client(small) as c:
        r = await c.post(URL, content=raw, headers=JSON)
    if status == 200:
        assert r.status_code == 200, r.text
    else:
        err = assert_envelope(r, 400)
        assert err["code"] in ("json_too_deep", "invalid_json")


async def test_the_message_count_is_checked_before_validation(small, engine):
    messages = [{"role": "user", "content": "hi"}] * 9
    async with _client(small) as c:
        r = await c.post(URL, json=chat_body(messages=messages))
        assert_envelope(r, 400, param="messages", code="too_many_messages")
        messages = [{"role": "robot"}] * 9  # invalid too, but the count speaks first
        r = await c.post(URL, json=chat_body(messages=messages))
        assert_envelope(r, 400, param="messages", code="too_many_messages")
        r = await c.post(URL, json=chat_body(messages=[{"role": "user", "content": "hi"}] * 8))
        assert r.status_code == 200
    assert len(engine.requests) == 1


async def test_a_hundred_thousand_messages_are_refused_quickly(client, engine):
    raw = json.dumps(chat_body(messages=[{"role": "user", "content": "x"}] * 100_000))
    started = time.perf_counter()
    r = await client.post(URL, content=raw, headers=JSON)
    assert_envelope(r, 400, param="messages", code="too_many_messages")
    assert time.perf_counter() - started < 2.0
    assert engine.requests == []


def test_json_depth():
    assert [json_depth(v) for v in (1, "s", None, [], {}, [[1]], {"a": {"b": []}})] == [
        0,
        0,
        0,
        1,
        1,
        2,
        3,
    ]
    deep: list = []
    for _ in range(100_000):  # built by hand: no parser would hand us this
        deep = [deep]
    assert json_depth(deep) == 100_001
