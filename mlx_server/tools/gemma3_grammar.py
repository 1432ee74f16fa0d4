"""llguidance Lark grammar forcing Gemma 3 calls: ```tool_code\\nNAME(kw=value, ...)\\n```.

Values are Python literals shaped by each parameter's JSON schema: double-quoted strings
(escapes \\" \\\\ \\n \\r \\t only), ints, floats, True/False, None, lists and dicts, enum and const
values as alternatives. Required parameters always appear, in signature order; optional ones may
follow in that order. Keywords enforced: type, enum, const, anyOf, oneOf (as anyOf), a one-item
allOf, $ref (local, recursion allowed), nullable, properties/required/additionalProperties,
items, minItems/maxItems, minLength/maxLength, pattern and format (through llguidance's JSON
string compiler), minimum/maximum/exclusive bounds/multipleOf. Other assertion keywords
(uniqueItems, not, if/then/else, min/maxProperties, ...) are not enforced.
"""

from __future__ import annotations

import json
import keyword
from collections.abc import Mapping, Sequence
from typing import Any

from .base import ToolLike, select_tools
from .gemma3_render import py_literal
from .schema import lark_literal, param_order, properties, required, resolve, schema_types

# One decoded character of a double-quoted Python string, in the escapes JSON shares.
_CHAR = r'([^"\\\x00-\x1F]|\\["\\nrt])'
# Bounded so every accepted number is a finite float (1e999 would be inf, which JSON lacks).
_NUMBER = r"/-?(0|[1-9][0-9]{0,15})(\.[0-9]{1,16})?([eE][+-]?[0-9]{1,2})?/"
_BOUND = 10**15  # fills a missing side of a numeric range, keeping digits bounded
_ESCAPES = {"json_allowed_escapes": '"\\nrt', "whitespace_flexible": False}
_NUMERIC_KEYS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")

_STRING_RULE = f'PY_STRING: /"{_CHAR}*"/'
_ANY_RULES = f"""\
any_value: PY_STRING | PY_NUMBER | "True" | "False" | "None" | any_list | any_dict
any_list: "[" (any_value (", " any_value)*)? "]"
any_dict: "{{" (PY_STRING ": " any_value (", " PY_STRING ": " any_value)*)? "}}"
PY_NUMBER: {_NUMBER}"""


def _ident(name: str, what: str) -> str:
    if not name.isidentifier() or keyword.iskeyword(name):
        raise ValueError(f"{what} {name!r} cannot be written as a Python call")
    return name


def comma_sequence(required_items: Sequence[str], optional_items: Sequence[str]) -> str:
    """Lark for a ", "-separated list: every required item, then any optional ones, in order."""
    sep = '", "'
    if required_items:
        expr = f" {sep} ".join(required_items)
        return expr + "".join(f" ({sep} {item})?" for item in optional_items)
    alternatives = [
        item + "".join(f" ({sep} {later})?" for later in optional_items[i + 1 :])
        for i, item in enumerate(optional_items)
    ]
    return f"({' | '.join(alternatives)})?" if alternatives else ""


class _Builder:
    """Turns schemas into numbered Lark rules."""

    def __init__(self, root: Mapping[str, Any], prefix: str) -> None:
        self.root = root  # where local $refs point
        self.prefix = prefix  # keeps rule names of different tools apart
        self.rules: list[str] = []
        self.refs: dict[str, str] = {}
        self.uses_any = False  # needs the any_value rules
        self.uses_string = False  # needs the PY_STRING terminal

    def define(self, body: str, name: str | None = None) -> str:
        name = name or f"{self.prefix}v{len(self.rules)}"
        self.rules.append(f"{name}: {body}")
        return name

    def any_value(self) -> str:
        self.uses_any = self.uses_string = True
        return "any_value"

    def string(self) -> str:
        self.uses_string = True
        return "PY_STRING"

    def value(self, schema: Any) -> str:
        """A rule name (or literal) accepting the Python literals valid for `schema`."""
        if schema is False:
            raise ValueError("a parameter schema accepts no value")
        if not isinstance(schema, Mapping) or not schema:
            return self.any_value()
        if "$ref" in schema:
            ref = schema["$ref"]
            if ref not in self.refs:
                self.refs[ref] = f"{self.prefix}ref{len(self.refs)}"
                self.define(self.value(resolve(schema, self.root)), self.refs[ref])
            return self.refs[ref]
        return self.define(" | ".join(self._alternatives(schema)))

    def _alternatives(self, schema: Mapping[str, Any]) -> list[str]:
        if "const" in schema:
            return [lark_literal(py_literal(schema["const"]))]
        if isinstance(schema.get("enum"), list):
            values = [lark_literal(py_literal(v)) for v in schema["enum"]]
            if not values:
                raise ValueError("a parameter schema has an empty enum")
            return values
        for key in ("anyOf", "oneOf"):
            if isinstance(schema.get(key), list) and schema[key]:
                return [self.value(sub) for sub in schema[key]]
        if isinstance(schema.get("allOf"), list):
            if len(schema["allOf"]) != 1:
                raise ValueError("allOf with several schemas is not supported in tool parameters")
            return [self.value(schema["allOf"][0])]
        kinds = schema_types(schema) or _implied_types(schema)
        if not kinds:
            return [self.any_value()]
        if schema.get("nullable") is True and "null" not in kinds:
            kinds.append("null")
        return [self._typed(kind, schema) for kind in kinds]

    def _typed(self, kind: str, schema: Mapping[str, Any]) -> str:
        if kind == "string":
            return self._string(schema)
        if kind in ("integer", "number"):
            return self._number(kind, schema)
        if kind == "boolean":
            return '"True" | "False"'
        if kind == "null":
            return '"None"'
        if kind == "array":
            return self._array(schema)
        if kind == "object":
            return self._object(schema)
        raise ValueError(f"unknown JSON type {kind!r} in tool parameters")

    def _string(self, schema: Mapping[str, Any]) -> str:
        if "pattern" in schema or "format" in schema:
            keys = ("pattern", "format", "minLength", "maxLength")
            leaf = {"type": "string", **{k: schema[k] for k in keys if k in schema}}
            return "%json " + json.dumps({**leaf, "x-guidance": _ESCAPES})
        low, high = int(schema.get("minLength", 0)), schema.get("maxLength")
        if not low and high is None:
            return self.string()
        count = f"{{{low},{'' if high is None else int(high)}}}"
        return self.define(f'/"{_CHAR}{count}"/', f"{self.prefix.upper()}STR{len(self.rules)}")

    def _number(self, kind: str, schema: Mapping[str, Any]) -> str:
        # Draft-4 boolean exclusive bounds are dropped: the closed bound beside them still holds.
        bounds = {k: v for k in _NUMERIC_KEYS if _is_number(v := schema.get(k))}
        leaf: dict[str, Any] = {"type": kind, **bounds}
        if not any(k in leaf for k in ("minimum", "exclusiveMinimum")):
            leaf["minimum"] = -_BOUND
        if not any(k in leaf for k in ("maximum", "exclusiveMaximum")):
            leaf["maximum"] = _BOUND
        return "%json " + json.dumps({**leaf, "x-guidance": _ESCAPES})

    def _array(self, schema: Mapping[str, Any]) -> str:
        items = schema.get("items", {})
        low, high = int(schema.get("minItems", 0)), schema.get("maxItems")
        if high is not None and int(high) == 0:
            return '"[]"'
        item = self.value(items if isinstance(items, Mapping) else {})
        more_low = max(low - 1, 0)
        more = (
            "*"
            if not more_low and high is None
            else f"{{{more_low},{'' if high is None else int(high) - 1}}}"
        )
        seq = f'{item} (", " {item}){more}'
        return f'"[" {seq} "]"' if low else f'"[" ({seq})? "]"'

    def _object(self, schema: Mapping[str, Any]) -> str:
        props = properties(schema)
        extra = schema.get("additionalProperties", True)
        if not props:
            if extra is False:
                return '"{}"'
            value = self.value(extra if isinstance(extra, Mapping) else {})
            entry = f'{self.string()} ": " {value}'
            return f'"{{" ({entry} (", " {entry})*)? "}}"'
        entries = {
            key: f"{lark_literal(py_literal(key) + ': ')} {self.value(props.get(key, {}))}"
            for key in param_order(schema)
        }
        return f'"{{" {self.entries(entries, schema)} "}}"'

    def entries(self, items: Mapping[str, str], schema: Mapping[str, Any]) -> str:
        """The ", "-separated entries of an object or call, required ones always present."""
        need = set(required(schema))
        return comma_sequence(
            [expr for key, expr in items.items() if key in need],
            [expr for key, expr in items.items() if key not in need],
        )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _implied_types(schema: Mapping[str, Any]) -> list[str]:
    if "properties" in schema or "additionalProperties" in schema:
        return ["object"]
    if "items" in schema:
        return ["array"]
    return []


def _call_rule(builder: _Builder, tool: ToolLike) -> str:
    params = tool.parameters or {}
    props = properties(params)
    kwargs = {
        name: f"{lark_literal(_ident(name, 'parameter') + '=')} {builder.value(props.get(name, {}))}"
        for name in param_order(params)
    }
    head = lark_literal(_ident(tool.name, "tool name") + "(")
    return builder.define(f'{head} {builder.entries(kwargs, params)} ")"')


def grammar(
    tools: Sequence[ToolLike],
    choice: str | None = None,
    parallel: bool = True,
    marker_tokens: Mapping[str, int] | None = None,
) -> str:
    """Lark grammar for one ```tool_code``` block of calls to `tools` (or the `choice` tool).

    `parallel` False: exactly one call; True: one or more, one per line. `marker_tokens` is
    accepted for the common signature; Gemma's fences are ordinary text.
    """
    del marker_tokens
    chosen = select_tools(tools, choice)
    builders = [_Builder(tool.parameters or {}, f"t{i}_") for i, tool in enumerate(chosen)]
    calls = [_call_rule(b, tool) for b, tool in zip(builders, chosen, strict=True)]
    repeat = ' ("\\n" call)*' if parallel else ""
    lines = [f'start: "```tool_code\\n" call{repeat} "\\n```"', f"call: {' | '.join(calls)}"]
    lines += [rule for b in builders for rule in b.rules]
    if any(b.uses_string for b in builders):
        lines.append(_STRING_RULE)
    if any(b.uses_any for b in builders):
        lines.append(_ANY_RULES)
    return "\n".join(lines) + "\n"
