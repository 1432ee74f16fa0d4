"""Structured output through the real server: with random weights at temperature 1.0, every
answer parses and validates, which only real constrained decoding can achieve."""

from __future__ import annotations

import base64
import io
import json

import jsonschema
import openai
import pytest
from PIL import Image

pytestmark = pytest.mark.e2e

ANNOTATION = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["cat", "dog", "car", "tree"]},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "count": {"type": "integer", "minimum": 0, "maximum": 99},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3},
        "box": {
            "type": "object",
            "properties": {
                "x": {"type": "integer", "maximum": 999},
                "y": {"type": "integer", "maximum": 999},
            },
            "required": ["x", "y"],
            "additionalProperties": False,
        },
        "occluded": {"type": "boolean"},
        "note": {"type": ["string", "null"], "maxLength": 12},
    },
    "required": ["label", "confidence", "count", "tags", "box", "occluded", "note"],
    "additionalProperties": False,
}
REFS = {
    "$defs": {
        "point": {
            "type": "object",
            "properties": {"x": {"type": "integer", "minimum": 0, "maximum": 9}},
            "required": ["x"],
            "additionalProperties": False,
        }
    },
    "type": "object",
    "properties": {"points": {"type": "array", "items": {"$ref": "#/$defs/point"}, "maxItems": 3}},
    "required": ["points"],
    "additionalProperties": False,
}
SCHEMAS = {"annotation": ANNOTATION, "refs": REFS}


def image_url():
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (30, 160, 90)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0, timeout=120)


def ask(server, client, rf, seed, *, stream, image, max_tokens=300):
    parts = [{"type": "text", "text": "Annotate this."}]
    if image:
        parts.insert(0, {"type": "image_url", "image_url": {"url": image_url()}})
    kw = dict(
        model=server.model_id,
        messages=[{"role": "user", "content": parts}],
        response_format=rf,
        temperature=1.0,
        seed=seed,
        max_tokens=max_tokens,
    )
    if not stream:
        c = client.chat.completions.create(**kw).choices[0]
        return c.message.content, c.finish_reason
    text, finish = "", None
    for chunk in client.chat.completions.create(**kw, stream=True):
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
    return text, finish


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_twenty_answers_all_validate(server, client, name):
    schema = SCHEMAS[name]
    rf = {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}
    for seed in range(20):
        text, finish = ask(server, client, rf, seed, stream=seed % 2 == 0, image=seed % 4 < 2)
        assert finish == "stop", (seed, text)
        jsonschema.validate(json.loads(text), schema)


def test_json_object_gives_an_object(server, client):
    for seed in range(4):
        text, finish = ask(
            server,
            client,
            {"type": "json_object"},
            seed,
            stream=seed % 2 == 1,
            image=False,
            max_tokens=600,
        )
        if finish == "stop":
            assert isinstance(json.loads(text), dict)
        else:
            assert finish == "length" and text.startswith("{")


def test_cut_by_max_tokens_reports_length(server, client):
    rf = {"type": "json_schema", "json_schema": {"name": "a", "schema": ANNOTATION}}
    text, finish = ask(server, client, rf, 0, stream=False, image=False, max_tokens=5)
    assert finish == "length" and text.startswith("{")


def test_invalid_schema_is_a_400(server, client):
    rf = {
        "type": "json_schema",
        "json_schema": {"name": "bad", "schema": {"type": "object", "not": {}}},
    }
    with pytest.raises(openai.BadRequestError) as err:
        ask(server, client, rf, 0, stream=False, image=False)
    assert "not" in str(err.value)
