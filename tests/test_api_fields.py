"""Every request field has a policy, and the server does what the table says."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from mlx_server.api.fields import FIELD_POLICIES, Policy, render_policy_table
from mlx_server.api.protocol import ChatCompletionRequest
from mlx_server.config import Settings
from tests.api_util import MODEL_ID, assert_envelope, chat_body

pytestmark = pytest.mark.anyio

# Honoured field -> (value sent, attribute path on the GenerationRequest, value expected there).
HONOURED = {
    "model": (MODEL_ID, None, None),
    "messages": (
        [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "messages",
        None,  # checked in test_messages_reach_the_engine
    ),
    "max_completion_tokens": (7, "sampling.max_tokens", 7),
    "max_tokens": (9, "sampling.max_tokens", 9),
    "temperature": (0.25, "sampling.temperature", 0.25),
    "top_p": (0.5, "sampling.top_p", 0.5),
    "top_k": (40, "sampling.top_k", 40),
    "min_p": (0.05, "sampling.min_p", 0.05),
    "repetition_penalty": (1.1, "sampling.repetition_penalty", 1.1),
    "presence_penalty": (-0.5, "sampling.presence_penalty", -0.5),
    "frequency_penalty": (1.5, "sampling.frequency_penalty", 1.5),
    "seed": (1234, "sampling.seed", 1234),
    "stop": (["\n\n", "END"], "sampling.stop", ("\n\n", "END")),
    "stream": (False, None, None),
    "stream_options": ({"include_usage": True}, None, None),
    "logprobs": (True, "sampling.logprobs", True),
    "top_logprobs": (3, "sampling.top_logprobs", 3),
    "logit_bias": ({"50": 5, "7": -100}, "sampling.logit_bias", ((7, -100.0), (50, 5.0))),
    "tools": (
        [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "tools.0.name",
        "f",
    ),
    "tool_choice": ({"type": "function", "function": {"name": "f"}}, "tool_name", "f"),
    "parallel_tool_calls": (False, "parallel_tool_calls", False),
    "response_format": ({"type": "json_object"}, "constraint.kind", "json"),
    "mm_processor_kwargs": (
        {"max_pixels": 50176, "min_pixels": 3136, "fps": 1},
        "mm_processor_kwargs",
        (("max_pixels", 50176), ("min_pixels", 3136)),
    ),
}
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
# Fields an honoured field needs beside it to make sense.
NEEDS = {
    "top_logprobs": {"logprobs": True},
    "tool_choice": {"tools": TOOLS},
    "parallel_tool_calls": {"tools": TOOLS},
}

# Refused field -> a value that asks for the unsupported feature.
REFUSED = {
    "n": 2,
    "functions": [{"name": "f"}],
    "function_call": "auto",
    "chat_template_kwargs": {"enable_thinking": True},
    "audio": {"voice": "alloy", "format": "wav"},
    "modalities": ["text", "audio"],
}

IGNORED = {
    "user": "user-123",
    "metadata": {"k": "v"},
    "store": True,
    "service_tier": "auto",
    "prediction": {"type": "content", "content": "x"},
    "reasoning_effort": "low",
}


def _get(obj, path: str):
    for name in path.split("."):
        obj = obj[int(name)] if name.isdigit() else getattr(obj, name)
    return obj


def test_every_request_field_has_exactly_one_policy_and_one_test():
    names = [p.name for p in FIELD_POLICIES]
    assert len(names) == len(set(names))
    assert set(names) == set(ChatCompletionRequest.model_fields)
    by_policy = {
        policy: {p.name for p in FIELD_POLICIES if p.policy is policy} for policy in Policy
    }
    assert by_policy[Policy.HONOURED] == set(HONOURED)
    assert by_policy[Policy.REFUSED] == set(REFUSED)
    assert by_policy[Policy.IGNORED] == set(IGNORED)


def test_fields_md_mirrors_the_table():
    text = (Path(__file__).parents[1] / "mlx_server" / "api" / "FIELDS.md").read_text()
    assert text.endswith(render_policy_table())


@pytest.mark.parametrize("name", sorted(HONOURED))
async def test_honoured_field_reaches_the_engine(client, engine, name):
    value, path, expected = HONOURED[name]
    extra = NEEDS.get(name, {})
    r = await client.post("/v1/chat/completions", json=chat_body(**{name: value}, **extra))
    assert r.status_code == 200, r.text
    if path is not None and expected is not None:
        assert _get(engine.last, path) == expected


async def test_sampling_defaults_when_fields_are_absent(client, engine):
    r = await client.post("/v1/chat/completions", json=chat_body())
    assert r.status_code == 200
    s = engine.last.sampling
    assert (s.temperature, s.top_p, s.top_k, s.min_p) == (1.0, 1.0, 0, 0.0)
    assert (s.max_tokens, s.seed, s.stop, s.logit_bias, s.logprobs) == (None, None, (), (), False)


@pytest.mark.parametrize("name", sorted(REFUSED))
async def test_refused_field_is_a_400_naming_it(client, engine, name):
    r = await client.post("/v1/chat/completions", json=chat_body(**{name: REFUSED[name]}))
    err = assert_envelope(r, 400, param=name, code="unsupported_parameter")
    assert name in err["message"]
    assert engine.requests == []


@pytest.mark.parametrize(
    "name,value",
    [("n", 1), ("response_format", {"type": "text"}), ("modalities", ["text"]), ("tools", None)],
)
async def test_refused_field_accepts_values_that_ask_for_nothing(client, name, value):
    r = await client.post("/v1/chat/completions", json=chat_body(**{name: value}))
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("name", sorted(IGNORED))
async def test_ignored_field_is_logged_by_name_not_value(client, caplog, name):
    caplog.set_level(logging.INFO, logger="mlx_server.api")
    r = await client.post("/v1/chat/completions", json=chat_body(**{name: IGNORED[name]}))
    assert r.status_code == 200, r.text
    lines = [rec.getMessage() for rec in caplog.records if "ignoring" in rec.getMessage()]
    assert len(lines) == 1 and repr(name) in lines[0]
    assert "user-123" not in caplog.text


async def test_unknown_field_is_logged_by_name_and_ignored(client, caplog):
    caplog.set_level(logging.INFO, logger="mlx_server.api")
    body = chat_body(frobnicate="s3cret-value")
    r = await client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200
    assert "ignoring unknown field 'frobnicate'" in caplog.text
    assert "s3cret-value" not in caplog.text


@pytest.mark.parametrize(
    "field,value",
    [
        ("temperature", -0.1),
        ("temperature", 2.5),
        ("top_p", 0),
        ("top_p", 1.01),
        ("top_k", -1),
        ("min_p", 1.5),
        ("repetition_penalty", 0),
        ("presence_penalty", -2.5),
        ("frequency_penalty", 3),
        ("max_tokens", 0),
        ("max_tokens", -5),
        ("max_completion_tokens", 0),
        ("top_logprobs", 21),
        ("seed", 2**70),
        ("n", 0),
        ("stream", "yes"),
        ("temperature", "0.5"),
        ("max_tokens", 10.5),
        ("logprobs", 1),
        ("stop", 5),
        ("logit_bias", {"5": "x"}),
    ],
)
async def test_out_of_range_or_mistyped_value_is_a_400_naming_it(client, field, value):
    r = await client.post("/v1/chat/completions", json=chat_body(**{field: value}))
    err = assert_envelope(r, 400, param=field)
    assert err["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "body,param",
    [
        (chat_body(stop=["a", "b", "c", "d", "e"]), "stop"),
        (chat_body(stop=""), "stop"),
        (chat_body(stop=["ok", "x" * 257]), "stop"),
        (chat_body(top_logprobs=2), "top_logprobs"),
        (chat_body(logprobs=False, top_logprobs=2), "top_logprobs"),
        (chat_body(logit_bias={"token": 1}), "logit_bias"),
        (chat_body(logit_bias={"-3": 1}), "logit_bias"),
        (chat_body(logit_bias={"3": 101}), "logit_bias"),
        (chat_body(max_tokens=5, max_completion_tokens=6), "max_tokens"),
    ],
)
async def test_cross_field_rules_are_400s_naming_the_field(client, engine, body, param):
    r = await client.post("/v1/chat/completions", json=body)
    assert_envelope(r, 400, param=param)
    assert engine.requests == []


async def test_max_tokens_and_max_completion_tokens_may_agree(client, engine):
    r = await client.post(
        "/v1/chat/completions", json=chat_body(max_tokens=5, max_completion_tokens=5)
    )
    assert r.status_code == 200
    assert engine.last.sampling.max_tokens == 5


@pytest.mark.parametrize("settings", [Settings(model=MODEL_ID, max_tokens_cap=16)])
async def test_max_tokens_cap_refuses_more_and_is_the_default(client, engine, settings):
    r = await client.post("/v1/chat/completions", json=chat_body(max_completion_tokens=17))
    err = assert_envelope(r, 400, param="max_completion_tokens")
    assert "16" in err["message"]
    r = await client.post("/v1/chat/completions", json=chat_body(max_tokens=16))
    assert r.status_code == 200 and engine.last.sampling.max_tokens == 16
    r = await client.post("/v1/chat/completions", json=chat_body())
    assert r.status_code == 200 and engine.last.sampling.max_tokens == 16


async def test_top_logprobs_is_zero_unless_logprobs(client, engine):
    r = await client.post("/v1/chat/completions", json=chat_body(logprobs=True))
    assert r.status_code == 200
    assert engine.last.sampling.top_logprobs == 0
    r = await client.post("/v1/chat/completions", json=chat_body(top_logprobs=0))
    assert r.status_code == 200
    assert (engine.last.sampling.logprobs, engine.last.sampling.top_logprobs) == (False, 0)


async def test_single_stop_string_and_served_name(client, engine):
    r = await client.post("/v1/chat/completions", json=chat_body(stop="###"))
    assert r.status_code == 200
    assert engine.last.sampling.stop == ("###",)


@pytest.mark.parametrize("settings", [Settings(model="/models/x", served_model_name="alias")])
async def test_model_must_be_the_served_name(client, engine, settings):
    r = await client.post("/v1/chat/completions", json=chat_body(model="/models/x"))
    err = assert_envelope(r, 404, param="model", code="model_not_found")
    assert "'alias'" in err["message"]
    r = await client.post("/v1/chat/completions", json=chat_body(model="alias"))
    assert r.status_code == 200
    assert r.json()["model"] == "alias"


def test_readme_mirrors_the_table():
    text = (Path(__file__).parents[1] / "README.md").read_text()
    start = text.index("<!-- fields-table -->\n") + len("<!-- fields-table -->\n")
    end = text.index("<!-- /fields-table -->")
    assert text[start:end] == render_policy_table()
