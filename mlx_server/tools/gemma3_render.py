"""Gemma 3 prompt text: tools as Python signatures, calls and results as fenced blocks.

Gemma 3 has no tool tokens; it follows a prompt convention: calls in ```tool_code``` fences as
Python, results in ```tool_output``` fences.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from .base import CallLike, ToolLike, ToolResult, load_arguments
from .schema import param_order, properties, required, resolve, schema_types

PREAMBLE_HEAD = """\
You have access to the Python functions defined below. To call one or more of them, write \
the calls in a ```tool_code``` block, one call per line, with keyword arguments whose values \
are Python literals:
```tool_code
function_name(argument_name="value")
```
Only call the functions defined below. The result of each call will be given to you in a \
```tool_output``` block; use it to answer, or call more functions if needed. If no function \
is needed, answer directly.
"""

_SCALARS = {
    "string": "str",
    "integer": "int",
    "number": "float",
    "boolean": "bool",
    "null": "None",
    "object": "dict",
}
_INDENT = "    "


def py_literal(value: Any) -> str:
    """A JSON value as Python literal source: double-quoted strings, True/False/None."""
    if value is None or isinstance(value, bool):
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("non-finite numbers have no JSON form")
        return repr(value)
    if isinstance(value, str):
        # JSON's escapes are all valid Python escapes with the same meaning.
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(py_literal(v) for v in value) + "]"
    if isinstance(value, Mapping):
        items = (f"{py_literal(str(k))}: {py_literal(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    raise ValueError(f"{type(value).__name__} is not a JSON value")


def py_type(schema: Any, root: Mapping[str, Any]) -> str | None:
    """The Python annotation for a JSON schema (`str`, `list[int]`, `str | None`...), or None."""
    try:
        schema = resolve(schema, root)
    except ValueError:
        return None
    if not isinstance(schema, Mapping):
        return None
    names: list[str] = []
    for kind in schema_types(schema):
        if kind == "array":
            item = py_type(schema.get("items"), root)
            names.append(f"list[{item}]" if item else "list")
        elif kind in _SCALARS:
            names.append(_SCALARS[kind])
    for key in ("anyOf", "oneOf"):
        for sub in schema.get(key) or []:
            names.append(py_type(sub, root) or "")
    if not names and isinstance(schema.get("enum"), list):
        names = [_value_type(v) for v in schema["enum"]]
    if not names and "const" in schema:
        names = [_value_type(schema["const"])]
    unique = list(dict.fromkeys(names))
    return None if not unique or "" in unique else " | ".join(unique)


def _value_type(value: Any) -> str:
    if value is None:
        return "None"
    if isinstance(value, bool):
        return "bool"
    return {int: "int", float: "float", str: "str", list: "list", dict: "dict"}.get(type(value), "")


def _signature(tool: ToolLike) -> str:
    params = tool.parameters or {}
    need = set(required(params))
    props = properties(params)
    parts = []
    for name in param_order(params):
        annotation = py_type(props.get(name, {}), params)
        part = f"{name}: {annotation}" if annotation else name
        if name not in need:
            default = (
                props.get(name, {}).get("default") if isinstance(props.get(name), Mapping) else None
            )
            part += f" = {_safe_literal(default)}"
        parts.append(part)
    return f"def {tool.name}({', '.join(parts)}):"


def _safe_literal(value: Any) -> str:
    try:
        return py_literal(value)
    except ValueError:
        return "None"


def _arg_doc(name: str, schema: Any, root: Mapping[str, Any]) -> list[str]:
    """The `Args:` lines of one parameter: description, allowed values, nested keys."""
    try:
        schema = resolve(schema, root)
    except ValueError:
        return []
    if not isinstance(schema, Mapping):
        return []
    notes = [str(schema["description"]).strip()] if schema.get("description") else []
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        notes.append("One of: " + ", ".join(_safe_literal(v) for v in schema["enum"]) + ".")
    keys = properties(schema)
    if keys:
        shown = (f"{k} ({py_type(v, root) or 'any'})" for k, v in keys.items())
        notes.append("Keys: " + ", ".join(shown) + ".")
    if not notes:
        return []
    first, *rest = " ".join(notes).splitlines()
    return [f"{_INDENT}{name}: {first}"] + [_INDENT * 2 + line.strip() for line in rest]


def render_function(tool: ToolLike) -> str:
    """One tool as a Python function stub with a Google-style docstring."""
    params = tool.parameters or {}
    props = properties(params)
    doc = (tool.description or "").strip().splitlines()
    args = [line for n in param_order(params) for line in _arg_doc(n, props.get(n, {}), params)]
    if args:
        doc += ([""] if doc else []) + ["Args:", *args]
    doc = [line.replace('"""', '\\"""') for line in doc]
    if not doc:
        body = [f"{_INDENT}..."]
    elif len(doc) == 1 and not doc[0].endswith('"'):
        body = [f'{_INDENT}"""{doc[0]}"""']
    else:
        body = [f'{_INDENT}"""{doc[0]}', *((_INDENT + line).rstrip() for line in doc[1:])]
        body.append(f'{_INDENT}"""')
    return "\n".join([_signature(tool), *body])


def render_tools_preamble(tools: Sequence[ToolLike]) -> str:
    """The system-text block that lists the tools and explains the fences."""
    functions = "\n\n".join(render_function(t) for t in tools)
    return f"{PREAMBLE_HEAD}\n```python\n{functions}\n```"


def render_tool_calls(calls: Sequence[CallLike]) -> str:
    """Prior assistant calls as one ```tool_code``` block, one call per line."""
    lines = []
    for call in calls:
        args = ", ".join(f"{k}={py_literal(v)}" for k, v in load_arguments(call).items())
        lines.append(f"{call.name}({args})")
    return "```tool_code\n" + "\n".join(lines) + "\n```"


def render_tool_results(results: Sequence[ToolResult]) -> str:
    """Tool results as ```tool_output``` blocks, one per result, in call order."""
    return "\n".join(f"```tool_output\n{content}\n```" for _name, content in results)
