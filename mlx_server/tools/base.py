"""The contract every tool-call format implements, and the value types it speaks.

Pure text in, values out: nothing here knows MLX or HTTP. Functions accept any object with
the attributes they read (`ToolLike`, `CallLike`), so the engine's own frozen `ToolSpec` and
`ToolCallSpec` can be passed in without translation.
"""

from __future__ import annotations

import json
import secrets
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

# (function name, arguments) as read from the model's text; arguments is a JSON object.
ParsedCall = tuple[str, dict[str, Any]]
# (tool name or None, result text) for one `tool` message.
ToolResult = tuple[str | None, str]

_ID_ALPHABET = string.ascii_letters + string.digits


class ToolLike(Protocol):
    """Anything describing a callable function: `ToolDef`, or the engine's `ToolSpec`."""

    @property
    def name(self) -> str: ...

    @property
    def description(self) -> str: ...

    @property
    def parameters(self) -> Mapping[str, Any]: ...


class CallLike(Protocol):
    """Anything describing a call already made: `ToolCall`, or the engine's `ToolCallSpec`."""

    @property
    def name(self) -> str: ...

    @property
    def arguments(self) -> str: ...


@dataclass(frozen=True)
class ToolDef:
    """A function the model may call; `parameters` is its JSON schema (an object schema)."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class ToolCall:
    """A call the model made. `arguments` is compact JSON text, as OpenAI returns it."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ContentDelta:
    """A piece of ordinary answer text."""

    text: str


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of one call, shaped like OpenAI's streamed `tool_calls[i]` delta.

    The first delta of a call carries `id` and `name`; later ones only `arguments` fragments,
    which concatenate to the call's final `arguments` JSON text.
    """

    index: int
    id: str | None
    name: str | None
    arguments: str


Event = ContentDelta | ToolCallDelta


def new_call_id() -> str:
    """A fresh OpenAI-style call id: "call_" and 24 random letters and digits."""
    return "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


def dump_arguments(arguments: Mapping[str, Any]) -> str:
    """The wire form of call arguments: compact JSON, non-ASCII kept as is (like OpenAI)."""
    return json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))


def load_arguments(call: CallLike) -> dict[str, Any]:
    """A prior call's arguments as a dict; "" counts as {}. Raises ValueError otherwise."""
    text = call.arguments.strip()
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"arguments of the call to {call.name!r} are not valid JSON") from exc
    if not isinstance(value, dict):
        raise ValueError(f"arguments of the call to {call.name!r} are not a JSON object")
    return value


@dataclass(frozen=True)
class ToolFormat:
    """One model family's tool-call convention: markers, parser, prompt rendering, grammar.

    - `parse(block, tools)`: the text between `start` and `end` -> calls, or None when the
      block is malformed (the caller then keeps it as content).
    - `render_tools_preamble(tools)`: the tool listing and instructions for the system text;
      both families append it to the system text after a blank line.
    - `render_tool_calls(calls)`: prior assistant calls as the model writes them.
    - `render_tool_results(results)`: consecutive `tool` messages as one user-turn text.
    - `grammar(tools, choice=None, parallel=True, marker_tokens=None)`: an llguidance Lark
      grammar forcing well-formed calls: `choice` None means any of `tools` (tool_choice
      "required"), a name means that tool; `parallel` False means exactly one call, True one
      or more. `marker_tokens` maps a marker (`start`/`end`) to the id of the single token
      spelling it in the model's vocabulary, if any. Raises ValueError for a tool the format
      cannot express (unknown choice, a name or parameter it cannot write).
    - `in_string(body)`: whether a block body so far ends inside a string literal, so an end
      marker met there (```` ``` ```` in a Python string, `</tool_call>` in a JSON one) is text.
    """

    family: str
    start: str
    end: str
    parse: Callable[[str, Sequence[ToolLike]], list[ParsedCall] | None]
    render_tools_preamble: Callable[[Sequence[ToolLike]], str]
    render_tool_calls: Callable[[Sequence[CallLike]], str]
    render_tool_results: Callable[[Sequence[ToolResult]], str]
    grammar: Callable[..., str]
    in_string: Callable[[str], bool] = field(default=lambda body: False)

    def marker_tokens(self, encode: Callable[[str], Sequence[int]]) -> dict[str, int]:
        """The markers `encode` (a tokenizer, no special tokens added) spells as one token.

        Pass the result to `grammar`: e.g. {"<tool_call>": 151657, "</tool_call>": 151658}
        for Qwen2.5-VL, {} for Qwen2-VL and Gemma 3 where the markers are plain text.
        """
        found = {}
        for marker in (self.start, self.end):
            ids = list(encode(marker))
            if len(ids) == 1:
                found[marker] = int(ids[0])
        return found

    def render_assistant(self, content: str, calls: Sequence[CallLike]) -> str:
        """An assistant turn's text: its content, then its calls on the next line."""
        if not calls:
            return content
        rendered = self.render_tool_calls(calls)
        return f"{content}\n{rendered}" if content else rendered


def open_quote(text: str, quotes: str = '"', python: bool = False) -> str | None:
    """The quote that opened a string literal still open at the end of `text`, or None.

    Follows backslash escapes; a raw newline ends a one-quote string (neither JSON nor Python
    lets it continue). With `python`, triple quotes and `#` comments are understood too.
    """
    delim: str | None = None
    i = 0
    while i < len(text):
        ch = text[i]
        if delim is None:
            if python and ch == "#":
                i = text.find("\n", i)
                if i < 0:
                    return None
            elif ch in quotes:
                delim = ch * 3 if python and text.startswith(ch * 3, i) else ch
                i += len(delim) - 1
        elif ch == "\\":
            i += 1
        elif text.startswith(delim, i):
            i += len(delim) - 1
            delim = None
        elif ch == "\n" and len(delim) == 1:
            delim = None
        i += 1
    return delim[0] if delim else None


def marker_atom(marker: str, marker_tokens: Mapping[str, int]) -> str:
    """A marker in Lark: `<[id]>` when one token spells it, else the quoted text."""
    if marker in marker_tokens:
        return f"<[{int(marker_tokens[marker])}]>"
    return json.dumps(marker, ensure_ascii=False)


def select_tools(tools: Sequence[ToolLike], choice: str | None) -> list[ToolLike]:
    """The tools a grammar may call: all of them, or the one named by `choice`."""
    if choice is None:
        if not tools:
            raise ValueError("tool_choice requires a call but no tools were given")
        return list(tools)
    chosen = [t for t in tools if t.name == choice]
    if not chosen:
        raise ValueError(f"tool_choice names {choice!r}, which is not among the tools")
    return chosen[:1]
