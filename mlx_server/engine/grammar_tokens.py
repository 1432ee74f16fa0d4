"""Rewrite Lark string literals that spell a tokenizer's added tokens into token references.

llguidance (1.9) treats every added token (`<tool_call>`, `<|im_end|>`) as special: plain text
never produces it. But where a literal's bytes are forced it asks the HF tokenizer for the
tokens, which splits added tokens out, so the mask offers the added token and consuming it then
fails; decoding dead-ends. Qwen2.5's `<tool_call>` is such a token, Qwen2-VL's is plain text, so
only the engine (which holds the tokenizer) can decide. `"<tool_call>\\n{"` becomes
`(<[151657]> "\\n{")` for the former and stays as it is for the latter.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

_DEFINITION = re.compile(r"[ \t]*[?!]?(_?[A-Za-z][A-Za-z0-9_]*)(\.-?\d+)?[ \t]*:")


def reference_added_tokens(grammar: str, tokens: Mapping[str, int]) -> str:
    """Return `grammar` with added-token text in rule literals replaced by `<[id]>` references.

    Literals in terminal (UPPERCASE) definitions, case-insensitive literals, regexes, comments
    and `%json {...}` bodies are left alone: token references are not allowed there.
    """
    if not tokens:
        return grammar
    # Longest first, so `</tool_call>` wins over a shorter token inside it.
    needles = sorted(
        ((json.dumps(text, ensure_ascii=False)[1:-1], tid) for text, tid in tokens.items()),
        key=lambda item: -len(item[0]),
    )
    out: list[str] = []
    i, n, in_terminal = 0, len(grammar), False
    while i < n:
        if i == 0 or grammar[i - 1] == "\n":
            match = _DEFINITION.match(grammar, i)
            if match:
                in_terminal = match.group(1).lstrip("_")[:1].isupper()
        ch = grammar[i]
        if grammar.startswith("//", i):
            end = grammar.find("\n", i)
            end = n if end < 0 else end
        elif ch == '"':
            end = _quoted_end(grammar, i)
            case_flag = grammar[end : end + 1] == "i"
            if not in_terminal and not case_flag:
                out.append(_split_literal(grammar[i + 1 : end - 1], needles))
                i = end
                continue
        elif ch == "/":
            end = _quoted_end(grammar, i, "/")
        elif grammar.startswith("%json", i):
            end = _json_end(grammar, i + len("%json"))
        else:
            end = i + 1
        out.append(grammar[i:end])
        i = end
    return "".join(out)


def _quoted_end(text: str, start: int, quote: str = '"') -> int:
    """Index just past the closing quote of the literal opening at `start`."""
    i = start + 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == quote:
            return i + 1
        i += 1
    return len(text)


def _json_end(text: str, i: int) -> int:
    """Index just past the balanced `{...}` that follows `%json` (strings may hold braces)."""
    while i < len(text) and text[i].isspace():
        i += 1
    if i >= len(text) or text[i] != "{":
        return i
    depth = 0
    while i < len(text):
        ch = text[i]
        if ch == '"':
            i = _quoted_end(text, i)
            continue
        if ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return i


def _split_literal(body: str, needles: list[tuple[str, int]]) -> str:
    parts: list[str] = []
    rest = body
    while rest:
        hit = _first_hit(rest, needles)
        if hit is None:
            parts.append(f'"{rest}"')
            break
        at, needle, tid = hit
        if at:
            parts.append(f'"{rest[:at]}"')
        parts.append(f"<[{tid}]>")
        rest = rest[at + len(needle) :]
    if len(parts) == 1:
        return parts[0]
    return "(" + " ".join(parts) + ")" if parts else '""'


def _first_hit(body: str, needles: list[tuple[str, int]]) -> tuple[int, str, int] | None:
    best: tuple[int, str, int] | None = None
    for needle, tid in needles:
        at = body.find(needle)
        while at >= 0 and _escaped(body, at):
            at = body.find(needle, at + 1)
        if at >= 0 and (best is None or at < best[0]):
            best = (at, needle, tid)
    return best


def _escaped(body: str, at: int) -> bool:
    """True when the character at `at` follows an odd run of backslashes."""
    run = 0
    while at - run - 1 >= 0 and body[at - run - 1] == "\\":
        run += 1
    return run % 2 == 1
