"""Gemma 3's ```tool_code``` convention: reading the calls a model writes.

A block holds one or more calls, one per line or as a list `[a(), b()]`:
- keyword form `get_weather(city="Paris", days=2)`;
- positional form `get_weather("Paris")`, mapped onto the parameters in signature order
  (required first, as the prompt lists them);
- the shell-style `read_file some/path with words` small models write: the first parameter
  gets the rest of the line as a string (only for a known tool, so prose is never a call);
- a bare known tool name, `get_time`, is a call without arguments;
- `print(call(...))` is unwrapped (Gemma imitates notebook code);
- dotted names `api.get_weather(...)` resolve to the last part when that is a known tool,
  otherwise the dotted name is returned as is (an unknown function, left to the client).
Arguments are read with `ast.literal_eval` on each argument node: literals only, nothing is
ever evaluated; names other than True/False/None, attribute access, calls, `*args` and
`**kwargs` make the block malformed.
"""

from __future__ import annotations

import ast
import math
import re
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

from .base import ParsedCall, ToolFormat, ToolLike, open_quote
from .gemma3_grammar import grammar
from .gemma3_render import render_tool_calls, render_tool_results, render_tools_preamble
from .schema import param_order

_SHELL = re.compile(r"([A-Za-z_][\w.]*)\s+(\S.*)")


class _Malformed(Exception):
    pass


def parse(block: str, tools: Sequence[ToolLike]) -> list[ParsedCall] | None:
    """The calls in the body of one ```tool_code``` block, or None when it is malformed."""
    text = textwrap.dedent(block).strip()
    if not text:
        return None
    by_name = {t.name: t for t in tools}
    try:
        try:
            tree = ast.parse(text, mode="exec")
        except SyntaxError:
            # Shell-style lines are not Python; read each line on its own.
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            return [_parse_line(line, by_name) for line in lines]
        return [call for stmt in tree.body for call in _calls(stmt, by_name)] or None
    except (_Malformed, ValueError, SyntaxError, RecursionError, MemoryError):
        return None


def _parse_line(line: str, by_name: Mapping[str, ToolLike]) -> ParsedCall:
    try:
        tree = ast.parse(line, mode="exec")
    except SyntaxError:
        return _shell_call(line, by_name)
    calls = [call for stmt in tree.body for call in _calls(stmt, by_name)]
    if len(calls) != 1:
        raise _Malformed
    return calls[0]


def _shell_call(line: str, by_name: Mapping[str, ToolLike]) -> ParsedCall:
    match = _SHELL.fullmatch(line)
    if not match:
        raise _Malformed
    name = _resolve_name(match.group(1), by_name)
    tool = by_name.get(name)
    order = param_order(tool.parameters or {}) if tool else []
    if not order:
        raise _Malformed
    rest = match.group(2).strip()
    try:
        quoted = ast.literal_eval(rest)  # `read_file "a b.txt"` keeps the quotes' meaning
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        quoted = None
    return name, {order[0]: quoted if isinstance(quoted, str) else rest}


def _calls(stmt: ast.stmt, by_name: Mapping[str, ToolLike]) -> list[ParsedCall]:
    if not isinstance(stmt, ast.Expr):
        raise _Malformed
    value = stmt.value
    nodes = value.elts if isinstance(value, (ast.List, ast.Tuple)) else [value]
    return [_call(node, by_name) for node in nodes]


def _call(node: ast.expr, by_name: Mapping[str, ToolLike]) -> ParsedCall:
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "print"
        and "print" not in by_name
        and len(node.args) == 1
        and not node.keywords
        and isinstance(node.args[0], ast.Call)
    ):
        node = node.args[0]
    if not isinstance(node, ast.Call):
        name = _dotted(node)
        if name is None or _resolve_name(name, by_name) not in by_name:
            raise _Malformed
        return _resolve_name(name, by_name), {}
    name = _dotted(node.func)
    if name is None:
        raise _Malformed
    name = _resolve_name(name, by_name)
    arguments: dict[str, Any] = {}
    if node.args:
        tool = by_name.get(name)
        order = param_order(tool.parameters or {}) if tool else []
        if len(node.args) > len(order):
            raise _Malformed
        for param, arg in zip(order, node.args, strict=False):
            arguments[param] = _literal(arg)
    for keyword in node.keywords:
        if keyword.arg is None or keyword.arg in arguments:
            raise _Malformed
        arguments[keyword.arg] = _literal(keyword.value)
    return name, arguments


def _dotted(node: ast.expr) -> str | None:
    """`a.b.c` for a chain of plain names, else None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value)
        return f"{head}.{node.attr}" if head else None
    return None


def _resolve_name(name: str, by_name: Mapping[str, ToolLike]) -> str:
    last = name.rsplit(".", 1)[-1]
    return last if name not in by_name and last in by_name else name


def _literal(node: ast.expr) -> Any:
    if isinstance(node, ast.Starred):
        raise _Malformed
    return _jsonable(ast.literal_eval(node))


def _jsonable(value: Any) -> Any:
    """The literal as a JSON value: tuples become lists; sets, bytes, complex are refused."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Malformed
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise _Malformed
        return {k: _jsonable(v) for k, v in value.items()}
    raise _Malformed


FORMAT = ToolFormat(
    family="gemma3",
    start="```tool_code",
    end="```",
    parse=parse,
    render_tools_preamble=render_tools_preamble,
    render_tool_calls=render_tool_calls,
    render_tool_results=render_tool_results,
    grammar=grammar,
    in_string=lambda body: open_quote(body, "\"'", python=True) is not None,
)
