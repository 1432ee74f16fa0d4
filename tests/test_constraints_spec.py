"""response_format -> Constraint, schema refusals, and the added-token literal rewrite (no MLX)."""

from __future__ import annotations

import json

import pytest

from mlx_server.engine.constraint_spec import (
    JSON_OPTIONS,
    constraint_for_grammar,
    constraint_for_json_schema,
    constraint_for_response_format,
    lark_json,
)
from mlx_server.engine.errors import InvalidConstraintError
from mlx_server.engine.grammar_tokens import reference_added_tokens

SCHEMA = {
    "type": "object",
    "properties": {"b": {"type": "string"}, "a": {"type": "integer"}},
    "required": ["b", "a"],
    "additionalProperties": False,
}


def _schema_format(schema, **extra):
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, **extra}}


def test_text_and_missing_mean_unconstrained():
    assert constraint_for_response_format(None) is None
    assert constraint_for_response_format({"type": "text"}) is None


def test_json_object_is_any_object():
    constraint = constraint_for_response_format({"type": "json_object"})
    assert constraint.kind == "json"
    assert constraint.grammar.startswith('start: %json {"type": "object"')
    # A json_schema without a schema (OpenAI makes it optional) means the same.
    bare = constraint_for_response_format({"type": "json_schema", "json_schema": {"name": "n"}})
    assert bare == constraint


def test_json_schema_embeds_schema_with_compact_options():
    constraint = constraint_for_response_format(_schema_format(SCHEMA, strict=True))
    body = json.loads(constraint.grammar.removeprefix("start: %json "))
    assert body.pop("x-guidance") == JSON_OPTIONS
    assert body == SCHEMA
    assert list(body["properties"]) == ["b", "a"]  # declared order is the output order


def test_key_is_stable_and_distinguishes_schemas():
    one = constraint_for_response_format(_schema_format(SCHEMA))
    again = constraint_for_response_format(_schema_format(json.loads(json.dumps(SCHEMA))))
    other = constraint_for_response_format(_schema_format(dict(SCHEMA, required=["a"])))
    assert one.key == again.key and len(one.key) == 32
    assert one.key != other.key
    assert constraint_for_json_schema(SCHEMA) == one


@pytest.mark.parametrize(
    ("response_format", "fragment"),
    [
        ("json", "must be an object"),
        ({"type": "yaml"}, "response_format.type"),
        ({"type": "json_schema"}, "json_schema must be an object"),
        (
            {"type": "json_schema", "json_schema": {"name": 3, "schema": {}}},
            "name must be a string",
        ),
        (_schema_format({}, strict="yes"), "strict must be a boolean"),
        (_schema_format([1]), "must be a JSON object"),
        (_schema_format(False), "matches nothing"),
    ],
)
def test_malformed_response_format_is_refused(response_format, fragment):
    with pytest.raises(InvalidConstraintError, match=fragment) as info:
        constraint_for_response_format(response_format)
    assert info.value.param == "response_format"
    assert info.value.code == "invalid_response_format"


@pytest.mark.parametrize(
    ("schema", "fragment"),
    [
        ({"not": {"type": "string"}}, "unsupported JSON schema keyword 'not' at #"),
        ({"type": "array", "uniqueItems": True}, "'uniqueItems' at #"),
        ({"if": {}, "then": {}}, "keyword 'if'"),
        ({"type": "object", "propertyNames": {"pattern": "a"}}, "'propertyNames'"),
        ({"type": "object", "dependentRequired": {"a": ["b"]}}, "'dependentRequired'"),
        ({"type": "array", "contains": {"type": "integer"}}, "'contains'"),
        ({"type": "string", "maxLenght": 3}, "'maxLenght' at #"),  # typos are not ignored
        ({"type": "string", "x-guidance": {"lenient": True}}, "'x-guidance'"),
        ({"properties": {"a": {"items": {"nope": 1}}}}, "'nope' at #/properties/a/items"),
        ({"$defs": {"d": {"unevaluatedProperties": False}}}, "at #/\\$defs/d"),
        ({"$ref": "https://example.com/s.json"}, "only local \\$ref"),
        ({"$ref": "#/$defs/missing"}, "does not exist"),
        ({"type": "array", "items": [{"type": "string"}]}, "use 'prefixItems'"),
        ({"anyOf": []}, "non-empty list"),
        ({"properties": []}, "must be an object of schemas"),
        ({"properties": {"a": 3}}, "#/properties/a must be an object or a boolean"),
        ({"type": "foo"}, "Invalid type: foo"),
        ({"type": 5}, "type must be a string"),
        ({"type": "object", "required": "a"}, "Expected array for 'required'"),
        ({"type": "string", "minLength": 5, "maxLength": 2}, "Unsatisfiable"),
        ({"type": "string", "pattern": "(("}, "regex parse error"),
        ({"type": "string", "format": "bogus"}, "Unknown format: bogus"),
        ({"enum": []}, "Unsatisfiable"),
        ({"oneOf": [{"type": "number"}, {"type": "integer"}]}, "oneOf"),
        ({"type": "number", "maximum": float("nan")}, "non-finite"),
        ({"type": "object", "properties": {"a": {"default": {1, 2}}}}, "not plain JSON"),
    ],
)
def test_unsupported_or_invalid_schema_is_named(schema, fragment):
    with pytest.raises(InvalidConstraintError, match=fragment):
        constraint_for_response_format(_schema_format(schema))


@pytest.mark.parametrize(
    "schema",
    [
        True,
        {},
        {"type": ["string", "null"], "title": "t", "description": "d", "examples": ["x"]},
        {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "boolean"},
        {"definitions": {"a": {"type": "integer"}}, "$ref": "#/definitions/a"},
        {"type": "string", "format": "date-time"},
        {"type": "object", "patternProperties": {"^x": {"type": "integer"}}},
        {"oneOf": [{"type": "string"}, {"type": "integer"}]},
        {"allOf": [{"type": "object"}, {"required": ["a"]}]},
        {"type": "object", "additionalProperties": {"type": "integer"}, "maxProperties": 2},
        {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1, "multipleOf": 0.25},
    ],
)
def test_supported_schemas_compile(schema):
    assert constraint_for_json_schema(schema).grammar.startswith("start: %json {")


def test_lark_json_is_embeddable_and_checked():
    fragment = lark_json(SCHEMA)
    assert fragment.startswith("%json {") and '"x-guidance"' in fragment
    constraint_for_grammar(f'start: "call " {fragment}')
    with pytest.raises(InvalidConstraintError, match="'not'") as info:
        lark_json({"not": {}}, param="tools")
    assert info.value.param == "tools"


def test_grammar_constraints():
    lark = 'start: "<tool_call>\\n" %json {"type": "object"} "\\n</tool_call>"'
    constraint = constraint_for_grammar(lark)
    assert (constraint.kind, constraint.grammar) == ("tool_call", lark)
    assert constraint_for_grammar(lark, "grammar").key == constraint.key
    with pytest.raises(InvalidConstraintError, match="invalid grammar") as info:
        constraint_for_grammar("start: missing_rule")
    assert info.value.param == "tool_choice"
    with pytest.raises(InvalidConstraintError, match="non-empty"):
        constraint_for_grammar("  ")


TOKENS = {"<tool_call>": 7, "</tool_call>": 8, "<|im_end|>": 2}


@pytest.mark.parametrize(
    ("grammar", "expected"),
    [
        ('start: "<tool_call>\\n{"', 'start: (<[7]> "\\n{")'),
        ('start: "a</tool_call>b<tool_call>"', 'start: ("a" <[8]> "b" <[7]>)'),
        ('start: "<tool_call>"+ x', "start: <[7]>+ x"),
        ('start: "x" | "<|im_end|>"?', 'start: "x" | <[2]>?'),
        ('start: "no tokens here"', 'start: "no tokens here"'),
        ('start: "\\"<tool_call>\\""', 'start: ("\\"" <[7]> "\\"")'),
        ('start: "\\\\<tool_call>"', 'start: ("\\\\" <[7]>)'),
        # Left alone: terminals, case-insensitive literals, regexes, comments, %json bodies.
        ('TAG: "<tool_call>"\nstart: TAG', 'TAG: "<tool_call>"\nstart: TAG'),
        ('start: "<tool_call>"i', 'start: "<tool_call>"i'),
        ('start: /"<tool_call>"/', 'start: /"<tool_call>"/'),
        ('// "<tool_call>"\nstart: "a"', '// "<tool_call>"\nstart: "a"'),
        (
            'start: %json {"const": "<tool_call>", "x": {"y": "}"}} "<tool_call>"',
            'start: %json {"const": "<tool_call>", "x": {"y": "}"}} <[7]>',
        ),
        ('A: "<tool_call>"\n  | "x"\nb: "<tool_call>"', 'A: "<tool_call>"\n  | "x"\nb: <[7]>'),
    ],
)
def test_reference_added_tokens(grammar, expected):
    assert reference_added_tokens(grammar, TOKENS) == expected


def test_rewritten_grammars_stay_valid():
    lark = 'start: "<tool_call>\\n{\\"name\\": \\"f\\"}\\n</tool_call>" | "plain"'
    rewritten = reference_added_tokens(lark, TOKENS)
    assert rewritten.count("<[") == 2
    constraint_for_grammar(rewritten)  # llguidance accepts the token references
