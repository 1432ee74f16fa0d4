"""Prompt rendering per family, compared with exact expected text."""

from __future__ import annotations

import ast

import pytest

from mlx_server.tools import ToolCall, ToolDef, format_for
from mlx_server.tools.gemma3_render import py_literal, render_function

WEATHER = ToolDef(
    "get_weather",
    "Current weather in a city.",
    {
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": 'City name, e.g. "Paris".'},
            "unit": {
                "type": "string",
                "enum": ["celsius", "fahrenheit"],
                "default": "celsius",
                "description": "Temperature unit.",
            },
            "days": {"type": ["integer", "null"], "description": "Forecast days."},
        },
        "required": ["city"],
    },
)
EVENT = ToolDef(
    "add_event",
    "Add a calendar event.\nReturns its id.",
    {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"type": "string"}},
            "title": {"type": "string"},
            "where": {
                "type": "object",
                "description": "Place.",
                "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}},
            },
            "attendees": {"type": "array", "items": {"$ref": "#/$defs/person"}},
            "all_day": {"type": "boolean", "default": False},
        },
        "required": ["title"],
        "$defs": {"person": {"type": "object"}},
    },
)
TIME = ToolDef("get_time", "", {})
CALLS = [
    ToolCall("call_1", "get_weather", '{"city":"São Paulo","days":null}'),
    ToolCall(
        "call_2",
        "add_event",
        '{"title":"a \\"b\\"\\n","all_day":true,"tags":["x"],"where":{"lat":1.5}}',
    ),
    ToolCall("call_3", "get_time", ""),
]

GEMMA_PREAMBLE = '''\
You have access to the Python functions defined below. To call one or more of them, write the \
calls in a ```tool_code``` block, one call per line, with keyword arguments whose values are \
Python literals:
```tool_code
function_name(argument_name="value")
```
Only call the functions defined below. The result of each call will be given to you in a \
```tool_output``` block; use it to answer, or call more functions if needed. If no function is \
needed, answer directly.

```python
def get_weather(city: str, unit: str = "celsius", days: int | None = None):
    """Current weather in a city.

    Args:
        city: City name, e.g. "Paris".
        unit: Temperature unit. One of: "celsius", "fahrenheit".
        days: Forecast days.
    """

def add_event(title: str, tags: list[str] = None, where: dict = None, \
attendees: list[dict] = None, all_day: bool = False):
    """Add a calendar event.
    Returns its id.

    Args:
        where: Place. Keys: lat (float), lon (float).
    """

def get_time():
    ...
```'''

QWEN_PREAMBLE = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    '{"type": "function", "function": {"name": "get_weather", "description": "Current weather '
    'in a city.", "parameters": {"type": "object", "properties": {"city": {"type": "string", '
    '"description": "City name, e.g. \\"Paris\\"."}, "unit": {"type": "string", "enum": '
    '["celsius", "fahrenheit"], "default": "celsius", "description": "Temperature unit."}, '
    '"days": {"type": ["integer", "null"], "description": "Forecast days."}}, "required": '
    '["city"]}}}\n'
    '{"type": "function", "function": {"name": "get_time", "parameters": {}}}\n'
    "</tools>\n\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)


def test_gemma_preamble():
    assert format_for("gemma3").render_tools_preamble([WEATHER, EVENT, TIME]) == GEMMA_PREAMBLE


def test_gemma_signatures_are_valid_python():
    for tool in (WEATHER, EVENT, TIME):
        ast.parse(render_function(tool))
    quoted = ToolDef("say", 'Says "hi"', {"properties": {"x": {"type": "string"}}})
    assert render_function(quoted) == 'def say(x: str = None):\n    """Says "hi"\n    """'
    ast.parse(render_function(quoted))


def test_gemma_history():
    fmt = format_for("gemma3")
    assert fmt.render_tool_calls(CALLS) == (
        "```tool_code\n"
        'get_weather(city="São Paulo", days=None)\n'
        'add_event(title="a \\"b\\"\\n", all_day=True, tags=["x"], where={"lat": 1.5})\n'
        "get_time()\n"
        "```"
    )
    assert fmt.render_assistant("Sure.", CALLS[:1]) == (
        'Sure.\n```tool_code\nget_weather(city="São Paulo", days=None)\n```'
    )
    assert fmt.render_assistant("Plain.", []) == "Plain."
    assert fmt.render_tool_results([("get_weather", "22C"), (None, '{"t": "12:00"}')]) == (
        '```tool_output\n22C\n```\n```tool_output\n{"t": "12:00"}\n```'
    )


def test_gemma_history_round_trips_through_the_parser():
    fmt = format_for("gemma3")
    body = fmt.render_tool_calls(CALLS)[len(fmt.start) : -len(fmt.end)]
    parsed = fmt.parse(body, [WEATHER, EVENT, TIME])
    assert parsed == [
        ("get_weather", {"city": "São Paulo", "days": None}),
        ("add_event", {"title": 'a "b"\n', "all_day": True, "tags": ["x"], "where": {"lat": 1.5}}),
        ("get_time", {}),
    ]


def test_qwen_preamble():
    fmt = format_for("qwen2_5_vl")
    assert fmt.render_tools_preamble([WEATHER, TIME]) == QWEN_PREAMBLE


def test_qwen_history():
    fmt = format_for("qwen2_vl")
    assert fmt.render_assistant("Checking.", CALLS[:1] + CALLS[2:]) == (
        "Checking.\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "São Paulo", "days": null}}\n'
        "</tool_call>\n<tool_call>\n"
        '{"name": "get_time", "arguments": {}}\n'
        "</tool_call>"
    )
    assert fmt.render_tool_results([(None, "22C"), ("get_time", "12:00")]) == (
        "<tool_response>\n22C\n</tool_response>\n<tool_response>\n12:00\n</tool_response>"
    )


@pytest.mark.parametrize("family", ["gemma3", "qwen2_5_vl"])
@pytest.mark.parametrize("arguments", ["not json", "[1, 2]"])
def test_history_with_bad_arguments_is_refused(family, arguments):
    with pytest.raises(ValueError, match="get_time"):
        format_for(family).render_tool_calls([ToolCall("c", "get_time", arguments)])


@pytest.mark.parametrize(
    ("value", "literal"),
    [
        (None, "None"),
        (True, "True"),
        (3, "3"),
        (2.5, "2.5"),
        ('a"\\\n\tü', '"a\\"\\\\\\n\\tü"'),
        ([1, {"k": [False]}], '[1, {"k": [False]}]'),
    ],
)
def test_py_literal_evaluates_back(value, literal):
    assert py_literal(value) == literal
    assert ast.literal_eval(literal) == value
