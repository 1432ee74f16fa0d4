"""One contract suite over every tool format: parsing, content rules, streaming == collected."""

from __future__ import annotations

import itertools
import json
import logging
import re

import pytest

from mlx_server.tools import (
    FORMATS,
    ContentDelta,
    ToolCall,
    ToolCallDelta,
    ToolDef,
    ToolStreamSplitter,
    format_for,
    new_call_id,
    split_all,
)
from mlx_server.tools.base import open_quote

TOOLS = [
    ToolDef(
        "get_weather",
        "Current weather in a city.",
        {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["c", "f"]},
            },
            "required": ["city"],
        },
    ),
    ToolDef(
        "search",
        "Search the web.",
        {
            "type": "object",
            "properties": {
                "query": {"type": "string"},
                "opts": {"type": "object"},
            },
            "required": ["query"],
        },
    ),
    ToolDef("get_time", "The time now.", {"type": "object", "properties": {}}),
]

NESTED = {"query": 'say "hi"\n\\ok', "opts": {"safe": True, "n": [1, 2.5, None], "d": {}}}
UNICODE = {"city": "São Paulo 東京 🌧"}

# Each block writer renders calls the way the family's models write them.
GEMMA_NESTED = (
    'search(query="say \\"hi\\"\\n\\\\ok", opts={"safe": True, "n": [1, 2.5, None], "d": {}})'
)
QWEN_NESTED = (
    '{"name": "search", "arguments": {"query": "say \\"hi\\"\\n\\\\ok", '
    '"opts": {"safe": true, "n": [1, 2.5, null], "d": {}}}}'
)


def gemma(*lines: str) -> str:
    return "```tool_code\n" + "\n".join(lines) + "\n```"


def qwen(*objects: str) -> str:
    return "\n".join(f"<tool_call>\n{obj}\n</tool_call>" for obj in objects)


# name -> {family: (model text, expected content, expected [(name, arguments)])}
CASES = {
    "no_call": {
        "gemma3": ("The weather is nice.", "The weather is nice.", []),
        "qwen": ("The weather is nice.", "The weather is nice.", []),
    },
    "one_call": {
        "gemma3": (gemma('get_weather(city="Paris")'), None, [("get_weather", {"city": "Paris"})]),
        "qwen": (
            qwen('{"name": "get_weather", "arguments": {"city": "Paris"}}'),
            None,
            [("get_weather", {"city": "Paris"})],
        ),
    },
    "parallel_calls": {
        "gemma3": (
            gemma('get_weather(city="Paris", unit="c")', 'search(query="news")')
            + "\n"
            + gemma("get_time()"),
            None,
            [
                ("get_weather", {"city": "Paris", "unit": "c"}),
                ("search", {"query": "news"}),
                ("get_time", {}),
            ],
        ),
        "qwen": (
            qwen(
                '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}',
                '{"name": "search", "arguments": {"query": "news"}}',
                '{"name": "get_time", "arguments": {}}',
            ),
            None,
            [
                ("get_weather", {"city": "Paris", "unit": "c"}),
                ("search", {"query": "news"}),
                ("get_time", {}),
            ],
        ),
    },
    "surrounding_text": {
        "gemma3": (
            "  Let me check.\n" + gemma('get_weather(city="Oslo")') + "\nDone. \n",
            "Let me check.\n\nDone.",
            [("get_weather", {"city": "Oslo"})],
        ),
        "qwen": (
            "  Let me check.\n"
            + qwen('{"name": "get_weather", "arguments": {"city": "Oslo"}}')
            + "\nDone. \n",
            "Let me check.\n\nDone.",
            [("get_weather", {"city": "Oslo"})],
        ),
    },
    "nested_escaped": {
        "gemma3": (gemma(GEMMA_NESTED), None, [("search", NESTED)]),
        "qwen": (qwen(QWEN_NESTED), None, [("search", NESTED)]),
    },
    "unicode": {
        "gemma3": (
            "Voilà 🌧 " + gemma('get_weather(city="São Paulo 東京 🌧")'),
            "Voilà 🌧",
            [("get_weather", UNICODE)],
        ),
        "qwen": (
            "Voilà 🌧 " + qwen('{"name": "get_weather", "arguments": {"city": "São Paulo 東京 🌧"}}'),
            "Voilà 🌧",
            [("get_weather", UNICODE)],
        ),
    },
    "empty_args": {
        "gemma3": (gemma("get_time()"), None, [("get_time", {})]),
        "qwen": (qwen('{"name": "get_time", "arguments": {}}'), None, [("get_time", {})]),
    },
    "malformed_block": {
        "gemma3": (
            "Sure. " + gemma('get_weather(city=open("/etc/passwd").read())') + " Bye.",
            "Sure. " + gemma('get_weather(city=open("/etc/passwd").read())') + " Bye.",
            [],
        ),
        "qwen": (
            "Sure. " + qwen('{"name": "get_weather", "arguments": {"city": }') + " Bye.",
            "Sure. " + qwen('{"name": "get_weather", "arguments": {"city": }') + " Bye.",
            [],
        ),
    },
    "unknown_function": {
        "gemma3": (gemma('launch(target="moon")'), None, [("launch", {"target": "moon"})]),
        "qwen": (
            qwen('{"name": "launch", "arguments": {"target": "moon"}}'),
            None,
            [("launch", {"target": "moon"})],
        ),
    },
    "marker_like_text": {
        "gemma3": (
            "Code:\n```python\nprint(1)\n```\nand `` ticks ```tool_cod",
            "Code:\n```python\nprint(1)\n```\nand `` ticks ```tool_cod",
            [],
        ),
        "qwen": (
            "Use <tool_ prefixes, <tool_response> and < tool_call> tags. <tool_cal",
            "Use <tool_ prefixes, <tool_response> and < tool_call> tags. <tool_cal",
            [],
        ),
    },
    "marker_inside_string": {
        "gemma3": (
            gemma('search(query="a ```tool_code fence ``` here")'),
            None,
            [("search", {"query": "a ```tool_code fence ``` here"})],
        ),
        "qwen": (
            qwen('{"name": "search", "arguments": {"query": "a <tool_call> x </tool_call> y"}}'),
            None,
            [("search", {"query": "a <tool_call> x </tool_call> y"})],
        ),
    },
    "unterminated_complete": {
        "gemma3": (
            "Ok " + gemma('get_weather(city="Rome")')[:-2],
            "Ok",
            [("get_weather", {"city": "Rome"})],
        ),
        "qwen": (
            qwen('{"name": "get_weather", "arguments": {"city": "Rome"}}')[:-5],
            None,
            [("get_weather", {"city": "Rome"})],
        ),
    },
    "unterminated_incomplete": {
        "gemma3": (
            'Ok ```tool_code\nget_weather(city="Ro',
            'Ok ```tool_code\nget_weather(city="Ro',
            [],
        ),
        "qwen": (
            'Ok <tool_call>\n{"name": "get_weather", "argu',
            'Ok <tool_call>\n{"name": "get_weather", "argu',
            [],
        ),
    },
    "positional": {
        "gemma3": (
            gemma('get_weather("Paris", "f")'),
            None,
            [("get_weather", {"city": "Paris", "unit": "f"})],
        ),
    },
    "shell_style": {
        "gemma3": (
            gemma("search latest mlx release notes"),
            None,
            [("search", {"query": "latest mlx release notes"})],
        ),
    },
    "list_print_and_dotted": {
        "gemma3": (
            gemma('[api.get_weather(city="Lima"), print(get_time())]', "get_time"),
            None,
            [("get_weather", {"city": "Lima"}), ("get_time", {}), ("get_time", {})],
        ),
    },
    "arguments_as_json_string": {
        "qwen": (
            qwen('{"name": "get_weather", "arguments": "{\\"city\\": \\"Kyiv\\"}"}'),
            None,
            [("get_weather", {"city": "Kyiv"})],
        ),
    },
}

FAMILY_KEY = {"gemma3": "gemma3", "qwen2_vl": "qwen", "qwen2_5_vl": "qwen"}
PARAMS = [
    pytest.param(family, case, id=f"{family}-{case}")
    for family in FORMATS
    for case, by_family in CASES.items()
    if FAMILY_KEY[family] in by_family
]


def counter_ids():
    numbers = itertools.count()
    return lambda: f"call_{next(numbers)}"


def stream(family: str, text: str, size: int):
    splitter = ToolStreamSplitter(format_for(family), TOOLS, id_factory=counter_ids())
    events = []
    for at in range(0, len(text), size):
        events += splitter.feed(text[at : at + size])
    events += splitter.finish()
    return splitter, events


def calls_from_deltas(events) -> list[ToolCall]:
    """Rebuilds calls from deltas the way an OpenAI client does, checking the delta rules."""
    calls: list[list[str]] = []
    for event in events:
        if not isinstance(event, ToolCallDelta):
            continue
        if event.index == len(calls):  # a new call: id and name come once, first
            assert event.id is not None and event.name is not None
            calls.append([event.id, event.name, event.arguments])
        else:
            assert event.index == len(calls) - 1, "indices increase by one, calls never interleave"
            assert event.id is None and event.name is None
            calls[-1][2] += event.arguments
    return [ToolCall(*call) for call in calls]


@pytest.mark.parametrize(("family", "case"), PARAMS)
def test_contract(family, case, caplog):
    text, content, expected = CASES[case][FAMILY_KEY[family]]
    fmt = format_for(family)
    with caplog.at_level(logging.WARNING, logger="mlx_server.tools"):
        got_content, calls = split_all(fmt, TOOLS, text, id_factory=counter_ids())
    assert got_content == content
    assert [(c.name, c.arguments) for c in calls] == [
        (name, json.dumps(args, ensure_ascii=False, separators=(",", ":")))
        for name, args in expected
    ]
    assert [c.id for c in calls] == [f"call_{i}" for i in range(len(calls))]
    if case in ("malformed_block", "unknown_function", "unterminated_incomplete"):
        assert any(r.name == "mlx_server.tools" for r in caplog.records)
    for size in range(1, 9):
        splitter, events = stream(family, text, size)
        streamed = "".join(e.text for e in events if isinstance(e, ContentDelta))
        assert streamed == (content or ""), f"chunk size {size}"
        assert calls_from_deltas(events) == calls, f"chunk size {size}"
        assert splitter.tool_calls == calls and splitter.content == content
        assert splitter.has_calls == bool(calls)


@pytest.mark.parametrize("family", list(FORMATS))
def test_disabled_passes_everything_through(family):
    text = CASES["surrounding_text"][FAMILY_KEY[family]][0]
    assert split_all(format_for(family), TOOLS, text, enabled=False) == (text, [])
    splitter = ToolStreamSplitter(format_for(family), TOOLS, enabled=False)
    events = [e for ch in text for e in splitter.feed(ch)] + splitter.finish()
    assert "".join(e.text for e in events) == text and not splitter.has_calls


@pytest.mark.parametrize("family", list(FORMATS))
def test_partial_marker_held_back_then_released(family):
    fmt = format_for(family)
    splitter = ToolStreamSplitter(fmt, TOOLS)
    head = fmt.start[:-1]
    assert splitter.feed("Hi " + head) == [ContentDelta("Hi")]
    assert splitter.feed("X!") == [ContentDelta(" " + head + "X!")]
    assert splitter.finish() == []


@pytest.mark.parametrize("family", list(FORMATS))
def test_content_before_a_block_streams_before_it_closes(family):
    text = CASES["surrounding_text"][FAMILY_KEY[family]][0]
    splitter = ToolStreamSplitter(format_for(family), TOOLS)
    first_block = text.index(format_for(family).start)
    events = splitter.feed(text[: first_block + len(format_for(family).start) + 3])
    assert events == [ContentDelta("Let me check.")]


def test_default_ids_are_openai_shaped_and_unique():
    ids = {new_call_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(re.fullmatch(r"call_[A-Za-z0-9]{24}", i) for i in ids)
    _, calls = split_all(format_for("gemma3"), TOOLS, gemma("get_time()", "get_time()"))
    assert calls[0].id != calls[1].id and calls[0].id.startswith("call_")


def test_format_table_and_unknown_family():
    assert format_for("qwen2_vl") is format_for("qwen2_5_vl")
    assert format_for("gemma3").start == "```tool_code"
    with pytest.raises(ValueError, match="llama"):
        format_for("llama")


@pytest.mark.parametrize(
    "body",
    [
        'get_weather(city=__import__("os").getcwd())',  # calls inside arguments
        "get_weather(city=x.y)",  # attribute access
        "get_weather(city=some_name)",  # a bare name
        "get_weather(**{'city': 'Paris'})",  # kwargs unpacking
        "get_weather(*['Paris'])",  # star args
        'get_weather("Paris", city="Rome")',  # the same parameter twice
        'get_weather("a", "c", "extra")',  # more positional arguments than parameters
        "get_weather(city={1, 2})",  # a set is not JSON
        "get_weather(city=1e999)",  # infinity is not JSON
        "get_weather(city={1: 2})",  # non-string keys
        'unknown_tool("positional")',  # positional needs the schema
        "rm -rf /",  # shell-style only for known tools
        "x = get_time()",  # statements are not calls
        "",
    ],
)
def test_gemma_rejects_anything_but_literal_calls(body):
    assert format_for("gemma3").parse(body, TOOLS) is None


@pytest.mark.parametrize(
    "body",
    [
        '{"name": "get_time"}',  # arguments omitted count as {}
        '[{"name": "get_time", "arguments": {}}, {"name": "get_time", "parameters": {}}]',
    ],
)
def test_qwen_lenient_shapes(body):
    calls = format_for("qwen2_5_vl").parse(body, TOOLS)
    assert calls and all(call == ("get_time", {}) for call in calls)


@pytest.mark.parametrize(
    "body",
    [
        '{"arguments": {}}',
        '{"name": "f", "arguments": [1]}',
        '{"name": "f", "arguments": "x"}',
        "[]",
    ],
)
def test_qwen_rejects_malformed(body):
    assert format_for("qwen2_5_vl").parse(body, TOOLS) is None


@pytest.mark.parametrize(
    ("text", "python", "expected"),
    [
        ('f(x="a', False, '"'),
        ('f(x="a\\"', False, '"'),
        ('f(x="a\\\\"', False, None),
        ('f(x="a\nb', False, None),  # a raw newline ends a one-quote string
        ("search what's new\n", True, None),
        ("f(x='a", True, "'"),
        ('f(x="""a\nb', True, '"'),
        ("f() # it's \"quoted", True, None),
    ],
)
def test_open_quote(text, python, expected):
    assert open_quote(text, "\"'" if python else '"', python=python) == expected
