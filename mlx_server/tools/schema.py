"""Small JSON-schema helpers shared by the formats: parameter order, local refs, grammar prep."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any


def properties(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """The `properties` of an object schema ({} when absent or not a mapping)."""
    props = parameters.get("properties") if isinstance(parameters, Mapping) else None
    return dict(props) if isinstance(props, Mapping) else {}


def required(parameters: Mapping[str, Any]) -> list[str]:
    """The `required` names of an object schema, as strings, in their given order."""
    names = parameters.get("required") if isinstance(parameters, Mapping) else None
    return [n for n in names if isinstance(n, str)] if isinstance(names, list) else []


def param_order(parameters: Mapping[str, Any]) -> list[str]:
    """Parameter names in signature order: required first, each group in schema order.

    Positional Gemma calls map onto this order, and the prompt lists parameters in it.
    """
    props = properties(parameters)
    need = set(required(parameters))
    order = [n for n in props if n in need]
    order += [n for n in required(parameters) if n not in props and n not in order]
    order += [n for n in props if n not in need]
    return order


def resolve(schema: Any, root: Mapping[str, Any], depth: int = 0) -> Any:
    """Follow a local `$ref` ("#/$defs/X" style) against `root`; other schemas pass through."""
    if not isinstance(schema, Mapping) or "$ref" not in schema:
        return schema
    ref = schema["$ref"]
    if depth > 32 or not isinstance(ref, str) or not ref.startswith("#"):
        raise ValueError(f"unsupported $ref {ref!r} in tool parameters")
    node: Any = root
    for part in filter(None, ref[1:].split("/")):
        key = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, Mapping) or key not in node:
            raise ValueError(f"unresolvable $ref {ref!r} in tool parameters")
        node = node[key]
    return resolve(node, root, depth + 1)


def tighten(schema: Any) -> Any:
    """A copy where objects with listed properties allow no others unless they say so.

    Stricter than the schema (every accepted value still validates), and it keeps a
    constrained model from inventing extra keys.
    """
    schema = copy.deepcopy(schema)
    _tighten_in_place(schema)
    return schema


_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions")
_SCHEMA_LISTS = ("anyOf", "oneOf", "prefixItems")
_SCHEMA_ONE = ("items", "additionalProperties", "contains")
# Combinators may add properties from elsewhere; closing such an object could make it unsatisfiable.
_OPEN_ENDED = ("allOf", "anyOf", "oneOf", "$ref", "patternProperties", "not")


def _tighten_in_place(node: Any) -> None:
    # Only walks subschema positions, so enum/const/default values are never touched; never
    # enters allOf/not, where a stricter part does not make a stricter whole.
    if not isinstance(node, dict):
        return
    closable = not any(key in node for key in _OPEN_ENDED)
    if closable and isinstance(node.get("properties"), dict) and "additionalProperties" not in node:
        node["additionalProperties"] = False
    for key in _SCHEMA_MAPS:
        if isinstance(node.get(key), dict):
            for sub in node[key].values():
                _tighten_in_place(sub)
    for key in (*_SCHEMA_LISTS, "items"):
        if isinstance(node.get(key), list):
            for sub in node[key]:
                _tighten_in_place(sub)
    for key in _SCHEMA_ONE:
        _tighten_in_place(node.get(key))


def lark_literal(text: str) -> str:
    """`text` as a Lark string literal (JSON escaping is a subset llguidance accepts)."""
    return json.dumps(text, ensure_ascii=False)


def schema_types(schema: Mapping[str, Any]) -> list[str]:
    """The JSON types a schema names in `type` (a string or a list), in order."""
    kind = schema.get("type")
    if isinstance(kind, str):
        return [kind]
    if isinstance(kind, list):
        return [k for k in kind if isinstance(k, str)]
    return []
