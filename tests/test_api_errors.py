"""Every failure is one OpenAI error envelope, and the server keeps serving after each."""

from __future__ import annotations

import logging

import pytest

from mlx_server.engine.errors import (
    ContextLengthExceededError,
    EngineError,
    InvalidRequestError,
    ServerBusyError,
    ShuttingDownError,
)
from tests.api_util import assert_envelope, chat_body

pytestmark = pytest.mark.anyio

URL = "/v1/chat/completions"
JSON = {"content-type": "application/json"}


async def _still_serving(client) -> None:
    r = await client.post(URL, json=chat_body())
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "Hello, world!"


@pytest.mark.parametrize(
    "raw,needle",
    [
        (b'{"model": "x", "messages": [', "not valid JSON"),
        (b"{'model': 'x'}", "not valid JSON"),
        (b'{"model": "m", "temperature": NaN}', "not valid JSON"),
        (b'{"model": "m", "metadata": {"a": -Infinity}}', "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"", "empty"),
        (b"[1, 2]", "object"),
        (b'"hello"', "object"),
    ],
)
async def test_malformed_body_is_a_400(client, engine, raw, needle):
    r = await client.post(URL, content=raw, headers=JSON)
    err = assert_envelope(r, 400, param=None)
    assert needle in err["message"]
    assert engine.requests == []
    await _still_serving(client)


@pytest.mark.parametrize(
    "body,param",
    [
        ({"messages": [{"role": "user", "content": "Hi"}]}, "model"),
        ({"model": "test-org/tiny-vlm"}, "messages"),
        (chat_body(messages=[]), "messages"),
        (chat_body(messages="Hi"), "messages"),
        (chat_body(messages=[{"content": "Hi"}]), "messages[0].role"),
        (chat_body(messages=[{"role": "robot", "content": "Hi"}]), "messages[0].role"),
        (chat_body(messages=[{"role": "user", "content": 42}]), "messages[0].content"),
        (chat_body(messages=[{"role": "user"}]), "messages[0].content"),
        (
            chat_body(messages=[{"role": "user", "content": [{"type": "text", "text": 1}]}]),
            "messages[0].content[0].text",
        ),
        (
            chat_body(messages=[{"role": "user", "content": [{"type": "text"}]}]),
            "messages[0].content[0].text",
        ),
        (
            chat_body(messages=[{"role": "user", "content": [{"text": "no type"}]}]),
            "messages[0].content[0].type",
        ),
        (
            chat_body(messages=[{"role": "user", "content": [{"type": "image_url"}]}]),
            "messages[0].content[0].image_url",
        ),
        (chat_body(model=7), "model"),
        (chat_body(stream_options={"include_usage": "yes"}), "stream_options.include_usage"),
    ],
)
async def test_missing_or_mistyped_fields_are_400s_naming_the_field(client, body, param):
    r = await client.post(URL, json=body)
    err = assert_envelope(r, 400, param=param)
    assert err["type"] == "invalid_request_error"
    assert err["message"].startswith(param) or param in err["message"]
    await _still_serving(client)


@pytest.mark.parametrize(
    "message,param",
    [
        ({"role": "tool", "content": "42"}, "messages[0].tool_call_id"),
        ({"role": "assistant"}, "messages[0].content"),
        (
            {"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]},
            "messages[0].content[0].type",
        ),
        (
            {"role": "user", "content": [{"type": "file", "file": {}}]},
            "messages[0].content[0].type",
        ),
        (
            {
                "role": "system",
                "content": [{"type": "image_url", "image_url": {"url": "data:,"}}],
            },
            "messages[0].content[0]",
        ),
        (
            {
                "role": "user",
                "content": "x",
                "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{}"}}],
            },
            "messages[0].tool_calls",
        ),
    ],
)
async def test_message_rules_are_400s_naming_the_message(client, engine, message, param):
    r = await client.post(URL, json=chat_body(messages=[message]))
    assert_envelope(r, 400, param=param)
    assert engine.requests == []


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
async def test_wrong_content_type_is_a_415(client, content_type):
    r = await client.post(URL, content=b'{"model": "x"}', headers={"content-type": content_type})
    err = assert_envelope(r, 415, code="unsupported_media_type")
    assert content_type in err["message"]
    await _still_serving(client)


async def test_json_with_charset_and_missing_content_type_are_accepted(client):
    import json

    raw = json.dumps(chat_body()).encode()
    for headers in ({"content-type": "application/json; charset=utf-8"}, {}):
        r = await client.post(URL, content=raw, headers=headers)
        assert r.status_code == 200, r.text


async def test_unknown_model_is_a_404_naming_the_served_one(client, engine):
    r = await client.post(URL, json=chat_body(model="gpt-4o"))
    err = assert_envelope(r, 404, param="model", code="model_not_found")
    assert "gpt-4o" in err["message"] and "test-org/tiny-vlm" in err["message"]
    assert engine.requests == []
    await _still_serving(client)


async def test_unknown_route_is_a_404(client):
    r = await client.get("/v1/nothing")
    err = assert_envelope(r, 404, code="not_found")
    assert err["type"] == "not_found_error" and "/v1/nothing" in err["message"]
    r = await client.post("/v1/completions", json={})
    assert_envelope(r, 404)


async def test_wrong_method_is_a_405_with_allow(client):
    r = await client.get(URL)
    err = assert_envelope(r, 405, code="method_not_allowed")
    assert r.headers["allow"] == "POST" and "GET" in err["message"]
    r = await client.post("/v1/models", json={})
    assert_envelope(r, 405)
    assert "GET" in r.headers["allow"]


async def test_options_answers_with_allowed_methods(client):
    r = await client.options(URL)
    assert r.status_code == 204
    assert r.headers["allow"] == "POST, OPTIONS"
    r = await client.options("/nowhere")
    assert_envelope(r, 404)


async def test_head_works_on_get_routes(client):
    r = await client.head("/health")
    assert r.status_code == 200
    r = await client.head(URL)
    assert r.status_code == 405


@pytest.mark.parametrize(
    "exc,status,type_,code",
    [
        (
            ContextLengthExceededError("the prompt has 5000 tokens; the context is 4096"),
            400,
            "invalid_request_error",
            "context_length_exceeded",
        ),
        (
            InvalidRequestError("bad token id in logit_bias", param="logit_bias"),
            400,
            "invalid_request_error",
            None,
        ),
        (ShuttingDownError("stopping"), 503, "server_error", "shutting_down"),
        (EngineError("worker died"), 500, "server_error", None),
    ],
)
async def test_prompt_errors_from_the_engine_are_plain_responses(
    client, engine, exc, status, type_, code
):
    engine.scripted(prompt_error=exc)
    for stream in (False, True):
        r = await client.post(URL, json=chat_body(stream=stream))
        err = assert_envelope(r, status, code=code)
        assert err["type"] == type_ and err["message"] == exc.message
        assert r.headers["content-type"] == "application/json"
    assert all(job.cancelled for job in engine.jobs)
    engine.scripted(prompt_error=None)
    await _still_serving(client)


async def test_invalid_request_error_keeps_its_param(client, engine):
    engine.scripted(
        prompt_error=InvalidRequestError("token 99999 is out of range", param="logit_bias")
    )
    r = await client.post(URL, json=chat_body())
    assert_envelope(r, 400, param="logit_bias")


async def test_busy_engine_is_a_429_with_retry_after(client, engine):
    engine.busy = ServerBusyError("queue full", retry_after=2.5)
    r = await client.post(URL, json=chat_body())
    err = assert_envelope(r, 429, code="server_busy")
    assert err["type"] == "rate_limit_error"
    assert r.headers["retry-after"] == "3"
    engine.busy = None
    await _still_serving(client)


async def test_closed_engine_is_a_503(client, engine):
    engine.closed = True
    r = await client.post(URL, json=chat_body())
    assert_envelope(r, 503, code="shutting_down")


async def test_unexpected_exception_is_a_logged_500_envelope(client, engine, caplog):
    engine.scripted(prompt_error=RuntimeError("kaboom in the engine"))
    with caplog.at_level(logging.ERROR, logger="mlx_server.api"):
        r = await client.post(URL, json=chat_body())
    err = assert_envelope(r, 500, code=None)
    assert err["type"] == "server_error"
    assert "kaboom" not in err["message"]  # internals stay in the log
    assert any(rec.exc_info and "kaboom" in str(rec.exc_info[1]) for rec in caplog.records)
    engine.scripted(prompt_error=None)
    await _still_serving(client)


async def test_unexpected_exception_before_the_engine_is_a_500(client, engine, monkeypatch):
    from mlx_server.api import chat

    def broken(*args, **kwargs):
        raise KeyError("bug")

    monkeypatch.setattr(chat, "to_generation_request", broken)
    r = await client.post(URL, json=chat_body())
    assert_envelope(r, 500)


async def test_a_validation_error_inside_the_server_is_a_500_not_a_400(client, monkeypatch):
    from mlx_server.api import render
    from mlx_server.api.protocol import UsageOut

    def buggy(meta, collected):
        return UsageOut(prompt_tokens="many")  # a server bug, not the client's fault

    monkeypatch.setattr(render, "completion", buggy)
    r = await client.post(URL, json=chat_body())
    assert_envelope(r, 500)
