"""Tool calling and response_format at the HTTP layer (FakeEngine, Gemma 3 family)."""

from __future__ import annotations

import json

import pytest

from tests.api_util import assert_envelope, chat_body, sse_json

pytestmark = pytest.mark.anyio
URL = "/v1/chat/completions"

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}
CALL_TEXT = 'Let me check.\n```tool_code\nget_weather(city="Paris", days=2)\n```'


def pieces(text, size=3):
    return [text[i : i + size] for i in range(0, len(text), size)]


async def test_gemma_tool_call_parsed_non_streamed(client, engine):
    engine.scripted(pieces=pieces(CALL_TEXT))
    r = await client.post(URL, json=chat_body(tools=[WEATHER]))
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Let me check."
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris", "days": 2}
    assert engine.last.tools[0].name == "get_weather" and engine.last.tool_choice == "auto"


async def test_gemma_tool_call_streamed_deltas(client, engine):
    engine.scripted(pieces=pieces(CALL_TEXT, 2))
    r = await client.post(URL, json=chat_body(tools=[WEATHER], stream=True))
    chunks = list(sse_json(r.text))
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    content = "".join(d.get("content") or "" for d in deltas)
    calls = [tc for d in deltas for tc in d.get("tool_calls") or []]
    assert content == "Let me check."
    first = calls[0]
    assert first["index"] == 0 and first["id"].startswith("call_")
    assert first["function"]["name"] == "get_weather"
    args = "".join(tc["function"].get("arguments", "") for tc in calls)
    assert json.loads(args) == {"city": "Paris", "days": 2}
    assert all("id" not in tc for tc in calls[1:])
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_tool_choice_none_offers_no_tools_and_parses_nothing(client, engine):
    engine.scripted(pieces=pieces(CALL_TEXT))
    r = await client.post(URL, json=chat_body(tools=[WEATHER], tool_choice="none"))
    choice = r.json()["choices"][0]
    assert engine.last.tools == () and engine.last.tool_choice == "none"
    assert choice["finish_reason"] == "stop" and "tool_calls" not in choice["message"]
    assert "```tool_code" in choice["message"]["content"]


async def test_required_and_named_choices_reach_the_engine(client, engine):
    await client.post(URL, json=chat_body(tools=[WEATHER], tool_choice="required"))
    assert engine.last.tool_choice == "required" and engine.last.tool_name is None
    named = {"type": "function", "function": {"name": "get_weather"}}
    await client.post(
        URL, json=chat_body(tools=[WEATHER], tool_choice=named, parallel_tool_calls=False)
    )
    assert engine.last.tool_choice == "function" and engine.last.tool_name == "get_weather"
    assert engine.last.parallel_tool_calls is False


async def test_malformed_block_stays_content(client, engine):
    text = "```tool_code\nget_weather(city=open('x'))\n```"
    engine.scripted(pieces=pieces(text))
    r = await client.post(URL, json=chat_body(tools=[WEATHER]))
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["message"]["content"] == text


@pytest.mark.parametrize(
    "extra,param",
    [
        ({"tool_choice": "required"}, "tool_choice"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice.function.name",
        ),
        ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name"),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, None),
        (
            {
                "tools": [
                    {"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}
                ]
            },
            "tools[0].function.parameters",
        ),
        (
            {
                "tools": [WEATHER],
                "tool_choice": "required",
                "response_format": {"type": "json_object"},
            },
            "response_format",
        ),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {"name": "f", "parameters": {"type": "object", "not": {}}},
                    }
                ],
                "tool_choice": "required",
            },
            "tools[0].function.parameters",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "object", "not": {}}},
                }
            },
            None,
        ),
        ({"response_format": {"type": "xml"}}, None),
    ],
)
async def test_bad_tool_and_format_fields_are_400s(client, engine, extra, param):
    r = await client.post(URL, json=chat_body(**extra))
    err = assert_envelope(r, 400)
    if param is not None:
        assert err["param"] == param
    assert engine.requests == []


async def test_json_schema_becomes_a_constraint(client, engine):
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    rf = {"type": "json_schema", "json_schema": {"name": "s", "schema": schema, "strict": True}}
    r = await client.post(URL, json=chat_body(response_format=rf))
    assert r.status_code == 200
    c = engine.last.constraint
    assert c.kind == "json" and "%json" in c.grammar and c.key
