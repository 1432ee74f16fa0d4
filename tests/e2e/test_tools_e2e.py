"""Tool calling through the real server on both tiny families: forced calls are valid
against the schema (streamed and not), `none` gives none, and a round trip is accepted."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

pytestmark = pytest.mark.e2e

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 20},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
SEARCH = {
    "type": "function",
    "function": {
        "name": "search_files",
        "description": "Search the project.",
        "parameters": {
            "type": "object",
            "properties": {
                "query": {"type": "string", "maxLength": 16},
                "limit": {"type": "integer", "maximum": 50},
            },
            "required": ["query"],
        },
    },
}
TOOLS = [WEATHER, SEARCH]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
MSGS = [{"role": "user", "content": "What's the weather in Paris?"}]


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0, timeout=120)


def check_calls(calls, allowed):
    assert calls
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_")
        assert call.function.name in allowed
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def streamed_calls(stream):
    calls, finish = {}, None
    for chunk in stream:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        for tc in choice.delta.tool_calls or []:
            entry = calls.setdefault(tc.index, {"id": None, "name": None, "args": ""})
            if tc.id:
                assert entry["id"] is None, "id only in the first delta of a call"
                entry["id"] = tc.id
            if tc.function and tc.function.name:
                entry["name"] = tc.function.name
            if tc.function and tc.function.arguments:
                entry["args"] += tc.function.arguments
    return calls, finish


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("parallel", [True, False])
def test_required_gives_valid_calls(server, client, seed, parallel):
    r = client.chat.completions.create(
        model=server.model_id,
        messages=MSGS,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=parallel,
        temperature=1.0,
        seed=seed,
        max_tokens=200,
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    check_calls(choice.message.tool_calls, set(SCHEMAS))
    if not parallel:
        assert len(choice.message.tool_calls) == 1


@pytest.mark.parametrize("seed", [4, 5])
def test_named_choice_streamed_gives_that_call(server, client, seed):
    stream = client.chat.completions.create(
        model=server.model_id,
        messages=MSGS,
        tools=TOOLS,
        temperature=1.0,
        seed=seed,
        tool_choice={"type": "function", "function": {"name": "search_files"}},
        parallel_tool_calls=False,
        max_tokens=200,
        stream=True,
    )
    calls, finish = streamed_calls(stream)
    assert finish == "tool_calls" and list(calls) == [0]
    call = calls[0]
    assert call["id"].startswith("call_") and call["name"] == "search_files"
    jsonschema.validate(json.loads(call["args"]), SCHEMAS["search_files"])


def test_streamed_equals_non_streamed_for_a_forced_call(server, client):
    kw = dict(
        model=server.model_id,
        messages=MSGS,
        tools=TOOLS,
        tool_choice="required",
        temperature=0,
        max_tokens=200,
    )
    whole = client.chat.completions.create(**kw).choices[0].message
    calls, _ = streamed_calls(client.chat.completions.create(**kw, stream=True))
    assert [c.function.name for c in whole.tool_calls] == [calls[i]["name"] for i in sorted(calls)]
    assert [c.function.arguments for c in whole.tool_calls] == [
        calls[i]["args"] for i in sorted(calls)
    ]


def test_none_gives_no_calls(server, client):
    r = client.chat.completions.create(
        model=server.model_id, messages=MSGS, tools=TOOLS, tool_choice="none", max_tokens=20
    )
    assert not r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason in ("stop", "length")


def test_round_trip_is_accepted(server, client):
    first = (
        client.chat.completions.create(
            model=server.model_id,
            messages=MSGS,
            tools=TOOLS,
            tool_choice="required",
            temperature=0,
            max_tokens=200,
        )
        .choices[0]
        .message
    )
    history = [
        *MSGS,
        {
            "role": "assistant",
            "content": first.content,
            "tool_calls": [tc.model_dump() for tc in first.tool_calls],
        },
        *(
            {"role": "tool", "tool_call_id": tc.id, "content": '{"temp": 21}'}
            for tc in first.tool_calls
        ),
    ]
    r = client.chat.completions.create(
        model=server.model_id, messages=history, tools=TOOLS, max_tokens=10
    )
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert r.usage.prompt_tokens > 0
