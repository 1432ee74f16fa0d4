"""Constrained-decoding grammars: they compile, accept and reject the right calls, and every
string a random walk through them produces parses back into schema-valid arguments."""

from __future__ import annotations

import copy
import json
import random

import jsonschema
import llguidance
import pytest

from mlx_server.tools import ToolDef, format_for, split_all

EOS = 256


class _ByteTokenizer:
    """One token per byte plus EOS: the grammar is checked byte by byte."""

    eos_token_id = EOS
    bos_token_id = None
    tokens = [bytes([i]) for i in range(256)] + [b"<eos>"]
    special_token_ids = [EOS]

    def __call__(self, text):
        return list(text.encode() if isinstance(text, str) else text)


TOKENIZER = llguidance.LLTokenizer(llguidance.TokenizerWrapper(_ByteTokenizer()))

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "friends": {"type": "array", "items": {"$ref": "#/$defs/person"}, "maxItems": 2},
    },
    "required": ["name"],
}
BOOK = ToolDef(
    "book",
    "Book a trip.",
    {
        "type": "object",
        "properties": {
            "city": {"type": "string", "minLength": 1, "maxLength": 20},
            "code": {"type": "string", "pattern": "^[A-Z]{3}$"},
            "when": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}$"},
            "guests": {"type": "integer", "minimum": 1, "maximum": 9},
            "budget": {"type": "number"},
            "ratio": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
            "unit": {"enum": ["c", "f", 3, None]},
            "flag": {"type": "boolean"},
            "note": {"type": ["string", "null"]},
            "choice": {"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 3}]},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
            "matrix": {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}},
            "where": {
                "type": "object",
                "properties": {
                    "lat": {"type": "number"},
                    "lon": {"type": "number"},
                    "label": {"type": "string"},
                },
                "required": ["lat"],
            },
            "meta": {"type": "object", "additionalProperties": {"type": "integer"}},
            "extra": {},
            "person": {"$ref": "#/$defs/person"},
            "mode": {"const": "fast"},
        },
        "required": ["city", "code", "guests"],
        "$defs": {"person": PERSON},
    },
)
PING = ToolDef("ping", "No arguments.", {"type": "object", "properties": {}})
ECHO = ToolDef("echo", "", {"type": "object", "properties": {"text": {"type": "string"}}})
WEATHER = ToolDef(
    "get_weather",
    "",
    {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
        "required": ["city"],
    },
)
TOOLS = [BOOK, PING, ECHO, WEATHER]
FAMILIES = ["gemma3", "qwen2_5_vl"]


def accepts(grammar: str, text: str) -> bool:
    matcher = llguidance.LLMatcher(TOKENIZER, grammar, log_level=0)
    assert not matcher.is_error(), matcher.get_error()
    return matcher.consume_tokens(list(text.encode())) and matcher.is_accepting()


def random_walk(grammar: str, rng: random.Random, budget: int = 1500) -> str | None:
    """A random string the grammar accepts, steered towards closing quotes and brackets."""
    matcher = llguidance.LLMatcher(TOKENIZER, grammar, log_level=0)
    out = bytearray()
    while len(out) < budget:
        mask = matcher.compute_bitmask()
        allowed = [t for t in range(257) if mask[t >> 3] >> (t & 7) & 1]
        assert allowed, "the grammar left no way forward"
        if EOS in allowed and (len(allowed) == 1 or rng.random() < 0.5):
            return out.decode()
        choices = [t for t in allowed if t != EOS]
        closers = [t for t in choices if t in b'")]}`,\n']
        if len(out) > 30 and closers and rng.random() < 0.7:
            choices = closers
        ascii_only = [t for t in choices if t < 128]
        if ascii_only and rng.random() < 0.9:
            choices = ascii_only
        token = rng.choice(choices)
        assert matcher.consume_token(token), matcher.get_error()
        out.append(token)
    return None


def validate(tool: ToolDef, arguments: dict) -> None:
    jsonschema.validate(
        arguments,
        tool.parameters,
        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
    )


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("parallel", [True, False])
@pytest.mark.parametrize("choice", [None, "book", "ping", "echo"])
def test_grammar_compiles(family, parallel, choice):
    grammar = format_for(family).grammar(TOOLS, choice, parallel)
    assert llguidance.LLMatcher.validate_grammar(grammar, TOKENIZER) == ""


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("choice", "parallel"), [(None, True), (None, False), ("book", False)])
def test_random_calls_parse_back_and_validate(family, choice, parallel):
    fmt = format_for(family)
    grammar = fmt.grammar(TOOLS, choice, parallel)
    rng = random.Random(f"{family}{choice}{parallel}")
    by_name = {t.name: t for t in TOOLS}
    seen, multi = set(), 0
    for _ in range(25):
        text = random_walk(grammar, rng)
        if text is None:
            continue
        content, calls = split_all(fmt, TOOLS, text)
        assert content is None, text
        assert calls and (parallel or len(calls) == 1), text
        multi += len(calls) > 1
        for call in calls:
            assert choice in (None, call.name)
            validate(by_name[call.name], json.loads(call.arguments))
            seen.add(call.name)
    assert seen, "no sample finished"
    assert choice is not None or len(seen) > 1


GEMMA_OK = [
    '```tool_code\nget_weather(city="Paris")\n```',
    '```tool_code\nget_weather(city="a\\"b\\n", unit="f")\n```',
    '```tool_code\nping()\necho()\necho(text="```")\n```',
    '```tool_code\nbook(city="Rome", code="FCO", guests=2, tags=["a"], where={"lat": 1.5}, mode="fast")\n```',
    '```tool_code\nbook(city="R", code="ABC", guests=9, unit=None, note=None, extra={"k": [True, 1e5]})\n```',
]
GEMMA_BAD = [
    "```tool_code\nget_weather()\n```",  # required parameter missing
    '```tool_code\nget_weather(city="Paris", unit="k")\n```',  # not in the enum
    "```tool_code\nget_weather(city='Paris')\n```",  # single quotes are not generated
    "```tool_code\nget_weather(city=Paris)\n```",  # a name, not a literal
    '```tool_code\nget_weather(city="Paris", days=2)\n```',  # unknown parameter
    '```tool_code\nget_forecast(city="Paris")\n```',  # unknown tool
    '```tool_code\nbook(city="", code="FCO", guests=2)\n```',  # minLength
    '```tool_code\nbook(city="Rome", code="fco", guests=2)\n```',  # pattern
    '```tool_code\nbook(city="Rome", code="FCO", guests=10)\n```',  # maximum
    '```tool_code\nbook(city="Rome", code="FCO", guests=2, tags=[])\n```',  # minItems
    '```tool_code\nbook(city="Rome", code="FCO", guests=2, where={"lon": 1})\n```',  # required key
    '```tool_code\nbook(city="Rome", code="FCO", guests=2, budget=1e999)\n```',  # not finite
    'get_weather(city="Paris")',  # no fence
]
QWEN_OK = [
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
    '<tool_call>\n{"name": "ping", "arguments": {}}\n</tool_call>\n'
    '<tool_call>\n{"name": "echo", "arguments": {"text": "</tool_call>"}}\n</tool_call>',
    '<tool_call>\n{"name": "book", "arguments": {"city": "Rome", "code": "FCO", "guests": 2, '
    '"unit": null, "where": {"lat": 1.5}}}\n</tool_call>',
]
QWEN_BAD = [
    '<tool_call>\n{"name": "get_weather", "arguments": {}}\n</tool_call>',
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "x": 1}}\n</tool_call>',
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": 3}}\n</tool_call>',
    '<tool_call>\n{"name":"get_weather","arguments":{"city":"Paris"}}\n</tool_call>',
    '<tool_call>\n{"name": "book", "arguments": {"city": "Rome", "code": "FCO", "guests": 2, '
    '"where": {"lat": 1.5}, "unit": null}}\n</tool_call>',  # keys out of schema order
    '<tool_call>\n{"name": "nope", "arguments": {}}\n</tool_call>',
    '<tool_call>\n{"name": "ping", "arguments": {"x": 1}}\n</tool_call>',
    '{"name": "ping", "arguments": {}}',
]


@pytest.mark.parametrize(
    ("family", "text", "ok"),
    [("gemma3", t, True) for t in GEMMA_OK]
    + [("gemma3", t, False) for t in GEMMA_BAD]
    + [("qwen2_5_vl", t, True) for t in QWEN_OK]
    + [("qwen2_5_vl", t, False) for t in QWEN_BAD],
)
def test_accepts_and_rejects(family, text, ok):
    fmt = format_for(family)
    assert accepts(fmt.grammar(TOOLS), text) is ok
    if ok:
        _, calls = split_all(fmt, TOOLS, text)
        assert calls


@pytest.mark.parametrize("family", FAMILIES)
def test_single_call_and_named_choice(family):
    fmt = format_for(family)
    two = GEMMA_OK[2] if family == "gemma3" else QWEN_OK[1]
    assert accepts(fmt.grammar(TOOLS, None, True), two)
    assert not accepts(fmt.grammar(TOOLS, None, False), two)
    one = GEMMA_OK[0] if family == "gemma3" else QWEN_OK[0]
    assert accepts(fmt.grammar(TOOLS, "get_weather", False), one)
    assert not accepts(fmt.grammar(TOOLS, "ping", True), one)


@pytest.mark.parametrize("family", FAMILIES)
def test_string_format_goes_through_llguidance(family):
    # Formats are llguidance's regex approximations (a date regex cannot know leap years),
    # so they are checked here by example rather than in the random walk.
    fmt = format_for(family)
    tool = ToolDef(
        "f", "", {"properties": {"d": {"type": "string", "format": "date"}}, "required": ["d"]}
    )
    grammar = fmt.grammar([tool])
    wrap = (
        (lambda v: f"```tool_code\nf(d={v})\n```")
        if family == "gemma3"
        else (lambda v: f'<tool_call>\n{{"name": "f", "arguments": {{"d": {v}}}}}\n</tool_call>')
    )
    assert accepts(grammar, wrap('"2024-01-02"'))
    assert not accepts(grammar, wrap('"tomorrow"'))


class _MarkerTokenizer(_ByteTokenizer):
    """Bytes plus <tool_call> / </tool_call> as single added tokens, as in Qwen2.5-VL."""

    tokens = _ByteTokenizer.tokens + [b"<tool_call>", b"</tool_call>"]
    special_token_ids = [EOS, 257, 258]

    def __call__(self, text):
        raw = text.encode() if isinstance(text, str) else text
        ids, at = [], 0
        while at < len(raw):
            for token in (257, 258):
                if raw.startswith(self.tokens[token], at):
                    ids.append(token)
                    at += len(self.tokens[token])
                    break
            else:
                ids.append(raw[at])
                at += 1
        return ids


def test_qwen_markers_as_single_tokens():
    wrapper = _MarkerTokenizer()
    tokenizer = llguidance.LLTokenizer(llguidance.TokenizerWrapper(wrapper))
    fmt = format_for("qwen2_5_vl")
    markers = fmt.marker_tokens(wrapper)
    assert markers == {"<tool_call>": 257, "</tool_call>": 258}
    assert format_for("gemma3").marker_tokens(wrapper) == {}
    ids = wrapper(QWEN_OK[0] + "\n" + QWEN_OK[0])
    assert ids.count(257) == 2 and ids.count(258) == 2
    for grammar, ok in (
        (fmt.grammar(TOOLS), False),
        (fmt.grammar(TOOLS, marker_tokens=markers), True),
    ):
        matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
        # llguidance counts added tokens as special: a quoted "<tool_call>" cannot match one.
        assert (matcher.consume_tokens(ids) and matcher.is_accepting()) is ok


def test_gemma_nullable_openapi_style():
    tool = ToolDef(
        "f", "", {"properties": {"x": {"type": "string", "nullable": True}}, "required": ["x"]}
    )
    grammar = format_for("gemma3").grammar([tool])
    assert accepts(grammar, "```tool_code\nf(x=None)\n```")
    assert accepts(grammar, '```tool_code\nf(x="y")\n```')


@pytest.mark.parametrize("family", FAMILIES)
def test_grammar_refusals(family):
    fmt = format_for(family)
    with pytest.raises(ValueError, match="nope"):
        fmt.grammar(TOOLS, "nope")
    with pytest.raises(ValueError, match="no tools"):
        fmt.grammar([], None)


@pytest.mark.parametrize(
    "tool",
    [
        ToolDef("my-tool", "", {}),
        ToolDef("f", "", {"properties": {"user-id": {"type": "string"}}}),
        ToolDef("f", "", {"properties": {"class": {"type": "string"}}}),
    ],
)
def test_gemma_refuses_names_python_cannot_write(tool):
    with pytest.raises(ValueError, match="Python"):
        format_for("gemma3").grammar([tool])


def test_grammar_leaves_the_schema_untouched():
    before = copy.deepcopy(BOOK.parameters)
    for family in FAMILIES:
        format_for(family).grammar(TOOLS)
    assert BOOK.parameters == before
