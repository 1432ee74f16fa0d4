"""`POST /v1/chat/completions` against the FakeEngine: shapes, streaming, usage, logprobs."""

from __future__ import annotations

import json

import pytest

from mlx_server.engine.errors import EngineError, InvalidRequestError
from tests.api_util import MODEL_ID, chat_body, sse_data, sse_json

pytestmark = pytest.mark.anyio

URL = "/v1/chat/completions"


async def _stream(client, **body):
    r = await client.post(URL, json=chat_body(stream=True, **body))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    return r


async def test_non_streamed_response_shape(client, engine):
    engine.scripted(prompt_tokens=21, cached_tokens=16)
    r = await client.post(URL, json=chat_body())
    assert r.status_code == 200
    body = r.json()
    assert body["id"].startswith("chatcmpl-") and len(body["id"]) > 20
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int) and body["model"] == MODEL_ID
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello, world!"},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert body["usage"] == {
        "prompt_tokens": 21,
        "completion_tokens": 4,
        "total_tokens": 25,
        "prompt_tokens_details": {"cached_tokens": 16},
    }
    assert engine.last.request_id == body["id"]
    assert engine.jobs[-1].cancelled  # the finally always cancels; a no-op on a finished job


async def test_streamed_chunk_sequence(client, engine):
    engine.scripted(cached_tokens=8)
    r = await _stream(client, stream_options={"include_usage": True})
    payloads = sse_data(r.text)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert {c["model"] for c in chunks} == {MODEL_ID}
    first, *content, last_choice, usage = chunks
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert first["choices"][0]["finish_reason"] is None
    assert [c["choices"][0]["delta"] for c in content] == [
        {"content": t} for t in ["Hello", ",", " world", "!"]
    ]
    assert all(c["choices"][0]["finish_reason"] is None for c in content)
    assert last_choice["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert usage["choices"] == []
    assert usage["usage"] == {
        "prompt_tokens": 12,
        "completion_tokens": 4,
        "total_tokens": 16,
        "prompt_tokens_details": {"cached_tokens": 8},
    }
    assert all("usage" not in c for c in chunks[:-1])
    assert r.text.endswith("data: [DONE]\n\n")


@pytest.mark.parametrize("options", [None, {}, {"include_usage": False}])
async def test_no_usage_chunk_unless_asked(client, options):
    body = {} if options is None else {"stream_options": options}
    r = await _stream(client, **body)
    chunks = list(sse_json(r.text))
    assert all(c["choices"] for c in chunks)
    assert all("usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    "script",
    [
        {},
        {"finish_on_last_piece": True},
        {"pieces": ["é", "t", "é ", "🙂", "\n", "ok"]},
        {"pieces": []},
        {"pieces": lambda req: list(req.messages[-1].text.upper())},
    ],
)
@pytest.mark.parametrize("extra", [{}, {"max_tokens": 2}, {"stop": "t"}, {"logprobs": True}])
async def test_streamed_concatenation_equals_non_streamed(client, engine, script, extra):
    engine.scripted(**script)
    whole = (await client.post(URL, json=chat_body(**extra))).json()
    r = await _stream(client, stream_options={"include_usage": True}, **extra)
    chunks = list(sse_json(r.text))
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert streamed == whole["choices"][0]["message"]["content"]
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finish[-1] == whole["choices"][0]["finish_reason"] and not any(finish[:-1])
    assert chunks[-1]["usage"] == whole["usage"]
    if extra.get("logprobs"):
        streamed_lp = [
            lp
            for c in chunks
            if c["choices"] and c["choices"][0]["logprobs"]
            for lp in c["choices"][0]["logprobs"]["content"]
        ]
        assert streamed_lp == whole["choices"][0]["logprobs"]["content"]


async def test_max_tokens_gives_finish_length(client):
    r = await client.post(URL, json=chat_body(max_tokens=2))
    choice = r.json()["choices"][0]
    assert (choice["message"]["content"], choice["finish_reason"]) == ("Hello,", "length")
    assert r.json()["usage"]["completion_tokens"] == 2


async def test_stop_string_is_not_emitted(client):
    r = await client.post(URL, json=chat_body(stop=[" wor"]))
    choice = r.json()["choices"][0]
    assert (choice["message"]["content"], choice["finish_reason"]) == ("Hello,", "stop")


@pytest.mark.parametrize("top", [0, 2])
async def test_logprobs_shape(client, engine, top):
    engine.scripted(pieces=["Hi", "é"])
    body = chat_body(logprobs=True, top_logprobs=top)
    r = await client.post(URL, json=body)
    content = r.json()["choices"][0]["logprobs"]["content"]
    assert [c["token"] for c in content] == ["Hi", "é"]
    assert content[1]["bytes"] == list("é".encode())
    assert content[0]["logprob"] == 0.0 and content[1]["logprob"] == pytest.approx(-0.1)
    for c in content:
        assert set(c) == {"token", "logprob", "bytes", "top_logprobs"}
        assert len(c["top_logprobs"]) == top
        for t in c["top_logprobs"]:
            assert set(t) == {"token", "logprob", "bytes"}
            assert t["bytes"] == list(t["token"].encode())
    r = await _stream(client, logprobs=True, top_logprobs=top)
    chunks = [c for c in sse_json(r.text) if c["choices"]]
    assert chunks[0]["choices"][0]["logprobs"] is None
    assert [c["choices"][0]["logprobs"]["content"][0]["token"] for c in chunks[1:-1]] == [
        "Hi",
        "é",
    ]


async def test_prefill_progress_becomes_sse_comments(client, engine):
    engine.scripted(prefill=((256, 800), (512, 800), (800, 800)))
    r = await _stream(client)
    comments = [line for line in r.text.splitlines() if line.startswith(":")]
    assert comments == [": prefill 256/800", ": prefill 512/800", ": prefill 800/800"]
    # Comments come after the role chunk and before content.
    assert r.text.index(": prefill 256/800") > r.text.index('"role":"assistant"')
    assert r.text.index(": prefill 800/800") < r.text.index('"Hello"')


@pytest.mark.parametrize(
    "error,type_,code",
    [
        (EngineError("decode step failed", code="oom"), "server_error", "oom"),
        (InvalidRequestError("token out of vocabulary"), "invalid_request_error", None),
        (RuntimeError("unexpected"), "server_error", None),
    ],
)
async def test_mid_stream_error_becomes_error_event_then_done(client, engine, error, type_, code):
    engine.scripted(error=error, error_after=2)
    r = await _stream(client)
    payloads = sse_data(r.text)
    assert payloads[-1] == "[DONE]"
    err = json.loads(payloads[-2])
    assert set(err) == {"error"} and err["error"]["type"] == type_
    assert err["error"]["code"] == code
    deltas = [json.loads(p)["choices"][0]["delta"] for p in payloads[:-2]]
    assert deltas == [{"role": "assistant", "content": ""}, {"content": "Hello"}, {"content": ","}]
    assert engine.jobs[-1].cancelled
    engine.scripted(error=None)
    r = await client.post(URL, json=chat_body())
    assert r.json()["choices"][0]["message"]["content"] == "Hello, world!"


async def test_mid_generation_error_without_stream_is_an_envelope(client, engine):
    engine.scripted(error=EngineError("decode step failed"), error_after=1)
    r = await client.post(URL, json=chat_body())
    assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
    assert engine.jobs[-1].cancelled


async def test_job_without_finish_is_a_server_error(client, engine):
    engine.scripted(send_finish=False)
    r = await client.post(URL, json=chat_body())
    assert r.status_code == 500 and r.json()["error"]["code"] == "incomplete"
    r = await _stream(client)
    assert json.loads(sse_data(r.text)[-2])["error"]["code"] == "incomplete"


async def test_messages_reach_the_engine(client, engine):
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "system", "content": [{"type": "text", "text": "Rule two."}]},
        {
            "role": "user",
            "content": [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}],
            "name": "ann",
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "f", "arguments": '{"x":1}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "42"},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "Thanks"},
    ]
    r = await client.post(URL, json=chat_body(messages=messages))
    assert r.status_code == 200, r.text
    got = engine.last.messages
    assert [m.role for m in got] == [
        "system",
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
        "user",
    ]
    assert [m.text for m in got] == ["Be brief.", "Rule two.", "AB", "", "42", "", "Thanks"]
    assert got[2].name == "ann" and len(got[2].content) == 2
    call = got[3].tool_calls[0]
    assert (call.id, call.name, call.arguments) == ("call_1", "f", '{"x":1}')
    assert got[4].tool_call_id == "call_1"


async def test_tool_call_deltas_render_in_both_modes(client, engine, monkeypatch):
    """The splitter seam: a scripted splitter's ToolCallDelta events become tool_calls."""
    from mlx_server.api import chat
    from mlx_server.api.output import ContentDelta, ToolCallDelta

    class ScriptedSplitter:
        def feed(self, text):
            if text == ",":
                return [ToolCallDelta(0, "call_a", "get", '{"q":'), ContentDelta("")]
            if text == " world":
                return [ToolCallDelta(0, None, None, '"x"}')]
            return [ContentDelta(text)]

        def finish(self):
            return [ToolCallDelta(1, "call_b", "put", "{}")]

    monkeypatch.setattr(chat, "splitter_for", lambda gen, family: ScriptedSplitter())
    whole = (await client.post(URL, json=chat_body())).json()["choices"][0]
    assert whole["finish_reason"] == "tool_calls"
    assert whole["message"] == {
        "role": "assistant",
        "content": "Hello!",
        "tool_calls": [
            {
                "id": "call_a",
                "type": "function",
                "function": {"name": "get", "arguments": '{"q":"x"}'},
            },
            {"id": "call_b", "type": "function", "function": {"name": "put", "arguments": "{}"}},
        ],
    }
    r = await _stream(client)
    deltas = [c["choices"][0]["delta"] for c in sse_json(r.text)]
    assert deltas[2] == {
        "tool_calls": [
            {
                "index": 0,
                "id": "call_a",
                "type": "function",
                "function": {"name": "get", "arguments": '{"q":'},
            }
        ]
    }
    assert deltas[3] == {"tool_calls": [{"index": 0, "function": {"arguments": '"x"}'}}]}
    assert deltas[5]["tool_calls"][0]["index"] == 1


async def test_concurrent_requests_are_independent(client, engine):
    import asyncio

    engine.scripted(pieces=lambda req: [req.messages[0].text, "-done"], delay=0.01)
    bodies = [chat_body(messages=[{"role": "user", "content": f"q{i}"}]) for i in range(8)]
    rs = await asyncio.gather(*(client.post(URL, json=b) for b in bodies))
    assert [r.json()["choices"][0]["message"]["content"] for r in rs] == [
        f"q{i}-done" for i in range(8)
    ]
    assert len({r.json()["id"] for r in rs}) == 8


async def test_held_back_tool_call_tokens_count_for_timing(client, engine, monkeypatch, caplog):
    """Tokens whose text a splitter holds back (a tool call being written) send nothing, but
    time to first token is taken at the first of them, and long holds send SSE comments."""
    import logging
    import re

    from mlx_server.api import chat
    from mlx_server.api.output import ToolCallDelta

    class HoldAll:
        def feed(self, text):
            return []

        def finish(self):
            return [ToolCallDelta(0, "call_a", "get", "{}")]

    monkeypatch.setattr(chat, "splitter_for", lambda gen, family: HoldAll())
    engine.scripted(delay=0.1)
    caplog.set_level(logging.INFO)
    whole = (await client.post(URL, json=chat_body(), headers={"x-request-id": "held"})).json()
    assert whole["choices"][0]["finish_reason"] == "tool_calls"
    line = next(r.getMessage() for r in caplog.records if "held" in r.getMessage())
    ttft = float(re.search(r"ttft=([0-9.]+)s", line).group(1))
    total = float(re.search(r" 200 ([0-9.]+)s", line).group(1))
    assert ttft < 0.25 and total >= 0.35, line  # first of 4 tokens, not the finished call
    assert "decode=" in line

    monkeypatch.setattr(chat, "HELD_NOTICE_INTERVAL_S", 0.0)
    r = await _stream(client)
    comments = [x for x in r.text.splitlines() if x.startswith(":")]
    assert comments and all(c == ": 1 token(s) held back" for c in comments)
    deltas = [c["choices"][0]["delta"] for c in sse_json(r.text)]
    assert deltas[1]["tool_calls"][0]["id"] == "call_a"
