"""Pure helpers that turn a request's response_format or a tool grammar into a `Constraint`.

No MLX and no tokenizer here, so the API layer can validate up front and answer 400 before
anything is queued. The grammar is llguidance's Lark dialect; JSON schemas are embedded with
`%json {...}` and always compiled with compact separators and no free whitespace, so a model
(random weights included) cannot wander off into endless blank lines.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, Literal

import llguidance

from .errors import InvalidConstraintError
from .types import Constraint

# Compact JSON: the same separators json.dumps(..., separators=(", ", ": ")) uses.
JSON_OPTIONS = {"item_separator": ", ", "key_separator": ": ", "whitespace_flexible": False}

# Keywords llguidance 1.x enforces; every one is covered by a test that samples against it.
_ASSERTING = frozenset(
    [
        "type",
        "enum",
        "const",
        "$ref",
        "$defs",
        "definitions",
        "anyOf",
        "oneOf",
        "allOf",
        "properties",
        "required",
        "additionalProperties",
        "patternProperties",
        "minProperties",
        "maxProperties",
        "items",
        "prefixItems",
        "minItems",
        "maxItems",
        "minLength",
        "maxLength",
        "pattern",
        "format",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
    ]
)
# Annotations: accepted and ignored, as JSON Schema prescribes.
_ANNOTATIONS = frozenset(
    [
        "title",
        "description",
        "default",
        "examples",
        "$schema",
        "$id",
        "$comment",
        "deprecated",
        "readOnly",
        "writeOnly",
    ]
)
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_VALUES = ("additionalProperties", "items")
_MAX_DEPTH = 64


def constraint_for_response_format(response_format: Mapping[str, Any] | None) -> Constraint | None:
    """Map OpenAI's `response_format` to a constraint; None means free text.

    Accepts `{"type": "text"}`, `{"type": "json_object"}` (any JSON object) and
    `{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}`. Raises
    InvalidConstraintError naming the problem for anything else, never falls back silently.
    """
    if response_format is None:
        return None
    if not isinstance(response_format, Mapping):
        raise _invalid("response_format must be an object")
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return constraint_for_json_schema({"type": "object"})
    if kind != "json_schema":
        raise _invalid(
            f"response_format.type must be 'text', 'json_object' or 'json_schema', got {kind!r}"
        )
    spec = response_format.get("json_schema")
    if not isinstance(spec, Mapping):
        raise _invalid("response_format.json_schema must be an object with a 'schema'")
    name = spec.get("name")
    if name is not None and not isinstance(name, str):
        raise _invalid("response_format.json_schema.name must be a string")
    strict = spec.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise _invalid("response_format.json_schema.strict must be a boolean")
    schema = spec.get("schema")
    if schema is None:  # OpenAI makes it optional; without one, any object will do
        schema = {"type": "object"}
    return constraint_for_json_schema(schema)


def constraint_for_json_schema(schema: Any, *, param: str = "response_format") -> Constraint:
    """A constraint whose answer is one JSON value validating against `schema`."""
    grammar = "start: " + lark_json(schema, param=param)
    return Constraint(grammar=grammar, key=grammar_key(grammar), kind="json")


def constraint_for_grammar(
    lark: str,
    kind: Literal["json", "tool_call", "grammar"] = "tool_call",
    *,
    param: str = "tool_choice",
) -> Constraint:
    """A constraint from a llguidance Lark grammar (e.g. a tool call with `%json` arguments).

    Build embedded schemas with `lark_json(schema)` so they get the same checks and compact
    separators. Text of the model's added tokens (`<tool_call>`) may be written as plain
    string literals: the compiler turns them into token references for the tokenizer at hand.
    """
    if not isinstance(lark, str) or not lark.strip():
        raise _invalid("grammar must be a non-empty string", param)
    error = _grammar_error(lark)
    if error:
        raise _invalid(f"invalid grammar: {error}", param)
    return Constraint(grammar=lark, key=grammar_key(lark), kind=kind)


def lark_json(schema: Any, *, param: str = "response_format") -> str:
    """`%json {...}` for a Lark grammar: the schema checked and set to compact separators."""
    check_json_schema(schema, param=param)
    if schema is True:
        schema = {}
    body = dict(schema, **{"x-guidance": JSON_OPTIONS})
    try:
        text = json.dumps(body, ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise _invalid(f"schema is not plain JSON: {exc}", param) from exc
    fragment = "%json " + text
    error = _grammar_error("start: " + fragment)
    if error:
        raise _invalid(f"unsupported or invalid JSON schema: {error}", param)
    return fragment


def check_json_schema(schema: Any, *, param: str = "response_format") -> None:
    """Refuse keywords we cannot enforce, naming the keyword and where it sits."""
    if schema is False:
        raise _invalid("schema 'false' matches nothing", param)
    if not isinstance(schema, (Mapping, bool)):
        raise _invalid("schema must be a JSON object", param)
    _walk(schema, "#", 0, param)


def _walk(node: Any, path: str, depth: int, param: str) -> None:
    if isinstance(node, bool):
        return
    if not isinstance(node, Mapping):
        raise _invalid(f"schema at {path} must be an object or a boolean", param)
    if depth > _MAX_DEPTH:
        raise _invalid(f"schema nested deeper than {_MAX_DEPTH} levels at {path}", param)
    for key, value in node.items():
        where = f"{path}/{key}"
        if key not in _ASSERTING and key not in _ANNOTATIONS:
            raise _invalid(f"unsupported JSON schema keyword '{key}' at {path}", param)
        if isinstance(value, float) and not math.isfinite(value):
            raise _invalid(f"non-finite number at {where}", param)
        if key == "$ref" and not (isinstance(value, str) and value.startswith("#")):
            raise _invalid(
                f"only local $ref ('#/...') is supported, got {value!r} at {path}", param
            )
        if key == "items" and isinstance(value, list):
            raise _invalid(f"'items' as a list at {path}: use 'prefixItems'", param)
        if key in _SCHEMA_MAPS:
            if not isinstance(value, Mapping):
                raise _invalid(f"'{key}' at {path} must be an object of schemas", param)
            for name, sub in value.items():
                _walk(sub, f"{where}/{name}", depth + 1, param)
        elif key in _SCHEMA_LISTS:
            if not isinstance(value, list) or not value:
                raise _invalid(f"'{key}' at {path} must be a non-empty list of schemas", param)
            for i, sub in enumerate(value):
                _walk(sub, f"{where}/{i}", depth + 1, param)
        elif key in _SCHEMA_VALUES:
            _walk(value, where, depth + 1, param)


@lru_cache(maxsize=512)
def _grammar_error(grammar: str) -> str:
    """llguidance's verdict on a grammar ('' when fine), cached: annotation runs repeat it."""
    message = llguidance.LLMatcher.validate_grammar(grammar, None)
    return clean_llguidance_error(message)


def clean_llguidance_error(message: str) -> str:
    """First line of an llguidance error, without the 'at 1(8): ' position prefix."""
    first = message.strip().splitlines()[0] if message.strip() else ""
    if first.startswith("at ") and "): " in first:
        first = first.split("): ", 1)[1]
    return first.removeprefix("failed to compile JSON schema: ")


def grammar_key(grammar: str) -> str:
    """Stable cache key of a grammar text (schemas keep their key order: it is the output order)."""
    return hashlib.sha256(grammar.encode()).hexdigest()[:32]


def _invalid(message: str, param: str = "response_format") -> InvalidConstraintError:
    return InvalidConstraintError(message, param=param)
