"""Qwen2-VL / Qwen2.5-VL tool calls, Hermes style: <tool_call>\\n{json}\\n</tool_call>.

The prompt text is the one Qwen2.5's chat template writes when given `tools` (the Qwen2.5
Instruct `tokenizer_config.json` template, also in Qwen3's): the VL templates have no tool
support of their own, and Qwen2.5-VL was trained on the Qwen2.5 convention.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from .base import (
    CallLike,
    ParsedCall,
    ToolFormat,
    ToolLike,
    ToolResult,
    load_arguments,
    marker_atom,
    open_quote,
    select_tools,
)
from .schema import lark_literal, tighten

START, END = "<tool_call>", "</tool_call>"
PREAMBLE_HEAD = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
PREAMBLE_TAIL = (
    "\n</tools>\n\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)
# Compact-free separators and fixed whitespace: the layout the template (and model) uses.
_JSON_STYLE = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
    "coerce_one_of": True,
    "lenient": True,
}


def tool_json(tool: ToolLike) -> dict[str, Any]:
    """The OpenAI tool object the template dumps: type, then name/description/parameters."""
    function: dict[str, Any] = {"name": tool.name}
    if tool.description:
        function["description"] = tool.description
    function["parameters"] = dict(tool.parameters or {})
    return {"type": "function", "function": function}


def render_tools_preamble(tools: Sequence[ToolLike]) -> str:
    """The "# Tools" block Qwen2.5's template appends to the system text (after a blank line)."""
    listed = "".join("\n" + json.dumps(tool_json(t), ensure_ascii=False) for t in tools)
    return PREAMBLE_HEAD + listed + PREAMBLE_TAIL


def render_tool_calls(calls: Sequence[CallLike]) -> str:
    """Prior assistant calls, one <tool_call> block each, as the template writes them."""
    return "\n".join(
        '<tool_call>\n{"name": '
        + json.dumps(call.name, ensure_ascii=False)
        + ', "arguments": '
        + json.dumps(load_arguments(call), ensure_ascii=False)
        + "}\n</tool_call>"
        for call in calls
    )


def render_tool_results(results: Sequence[ToolResult]) -> str:
    """Consecutive tool results as one user turn's text of <tool_response> blocks."""
    return "\n".join(f"<tool_response>\n{content}\n</tool_response>" for _name, content in results)


def parse(block: str, tools: Sequence[ToolLike]) -> list[ParsedCall] | None:
    """The calls in one <tool_call> body: a JSON object, several in a row, or a JSON list."""
    decoder = json.JSONDecoder()
    text, pos, values = block.strip(), 0, []
    try:
        while pos < len(text):
            value, pos = decoder.raw_decode(text, pos)
            values.extend(value if isinstance(value, list) else [value])
            while pos < len(text) and text[pos] in " \t\r\n,":
                pos += 1
    except (json.JSONDecodeError, RecursionError):
        return None
    calls = [call for call in map(_call, values) if call is not None]
    return calls if values and len(calls) == len(values) else None


def _call(value: Any) -> ParsedCall | None:
    if not isinstance(value, dict) or not isinstance(value.get("name"), str) or not value["name"]:
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):
        # Some models double-encode: "arguments": "{\"city\": \"Paris\"}".
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            return None
    if not isinstance(arguments, dict):
        return None
    return value["name"], arguments


def grammar(
    tools: Sequence[ToolLike],
    choice: str | None = None,
    parallel: bool = True,
    marker_tokens: Mapping[str, int] | None = None,
) -> str:
    """Lark grammar for <tool_call> blocks calling `tools` (or the `choice` tool).

    The arguments are an inline `%json` of each tool's schema (objects closed to unlisted keys,
    keys in schema order); `parallel` False: exactly one block; True: one or more, separated
    by a newline. `marker_tokens` maps a marker to the id of the single token that spells it
    (Qwen2.5-VL's <tool_call> is one): llguidance counts such added tokens as special, which
    a quoted literal never matches, so the grammar names them by id instead.
    """
    tokens = marker_tokens or {}
    rules = []
    for i, tool in enumerate(select_tools(tools, choice)):
        schema = tighten(dict(tool.parameters or {}))
        schema.setdefault("type", "object")
        if schema["type"] == "object" and "properties" not in schema:
            schema.setdefault("additionalProperties", False)
        head = lark_literal(json.dumps(tool.name, ensure_ascii=False)[1:] + ', "arguments": ')
        body = json.dumps({**schema, "x-guidance": _JSON_STYLE}, ensure_ascii=False)
        rules.append(f"f{i}: {head} %json {body}")
    names = " | ".join(f"f{i}" for i in range(len(rules)))
    repeat = ' ("\\n" call)*' if parallel else ""
    lines = [
        f"start: call{repeat}",
        f'call: {marker_atom(START, tokens)} "\\n{{\\"name\\": \\"" fn '
        f'"}}\\n" {marker_atom(END, tokens)}',
        f"fn: {names}",
        *rules,
    ]
    return "\n".join(lines) + "\n"


FORMAT = ToolFormat(
    family="qwen",
    start=START,
    end=END,
    parse=parse,
    render_tools_preamble=render_tools_preamble,
    render_tool_calls=render_tool_calls,
    render_tool_results=render_tool_results,
    grammar=grammar,
    in_string=lambda body: open_quote(body) is not None,
)
