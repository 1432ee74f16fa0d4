"""Hand-written hostile request bodies, shared by the FakeEngine tests and the real-server e2e
run: each is (name, raw body, the statuses it may get). None may be a 5xx; errors are envelopes."""

from __future__ import annotations

import json
from typing import Any

from tests.api_util import MODEL_ID


def _body(model: str = MODEL_ID, **fields: Any) -> bytes:
    fields.setdefault("messages", [{"role": "user", "content": "Hi"}])
    fields.setdefault("max_tokens", 4)
    return json.dumps({"model": model, **fields}).encode()


def _user(content: Any) -> list[dict[str, Any]]:
    return [{"role": "user", "content": content}]


def hostile_bodies(model: str = MODEL_ID) -> list[tuple[str, bytes, set[int]]]:
    """(name, body, allowed statuses) for the served model id `model`."""
    ok_or_400 = {200, 400}
    b = lambda **f: _body(model, **f)  # noqa: E731
    valid = b().decode()
    return [
        (
            "invalid utf-8 in a string",
            valid.replace("Hi", "\udcff").encode("utf-8", "surrogateescape"),
            {400},
        ),
        (
            "invalid utf-8 bytes",
            b'{"model": "' + model.encode() + b'", "messages": "\xc3\x28"}',
            {400},
        ),
        ("lone surrogate escape", valid.replace("Hi", "\\ud800").encode(), ok_or_400),
        ("NUL and control characters", b(messages=_user("a\x00b\x01\x1b[31m\u202e")), {200}),
        ("NaN literal", valid.replace('"max_tokens": 4', '"max_tokens": NaN').encode(), {400}),
        (
            "Infinity literal",
            valid.replace('"max_tokens": 4', '"temperature": Infinity').encode(),
            {400},
        ),
        (
            "1e400 overflows to inf",
            valid.replace('"max_tokens": 4', '"temperature": 1e400').encode(),
            {400},
        ),
        (
            "huge integer max_tokens",
            valid.replace('"max_tokens": 4', '"max_tokens": ' + "9" * 400).encode(),
            ok_or_400,  # without --max-tokens-cap the context is the limit
        ),
        ("huge top_k", b(top_k=10**30), ok_or_400),
        ("huge seed", b(seed=2**64), {400}),
        ("negative max_tokens", b(max_tokens=-1), {400}),
        ("float max_tokens", b(max_tokens=4.5), {400}),
        ("bool temperature", b(temperature=True), {400}),
        ("huge logit_bias key", b(logit_bias={"9" * 40: 5}), ok_or_400),
        ("empty content parts", b(messages=_user([])), ok_or_400),
        ("empty text part", b(messages=_user([{"type": "text", "text": ""}])), ok_or_400),
        ("empty string content", b(messages=_user("")), ok_or_400),
        ("unknown part type", b(messages=_user([{"type": "audio", "data": "x"}])), {400}),
        ("unknown role", b(messages=[{"role": "wizard", "content": "hi"}]), {400}),
        ("function role", b(messages=[{"role": "function", "name": "f", "content": "x"}]), {400}),
        (
            "tool message without id",
            b(messages=[*_user("hi"), {"role": "tool", "content": "42"}]),
            {400},
        ),
        (
            "assistant tool call without id",
            b(
                messages=[
                    *_user("hi"),
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {"type": "function", "function": {"name": "f", "arguments": "{}"}}
                        ],
                    },
                ]
            ),
            {400},
        ),
        ("only a system message", b(messages=[{"role": "system", "content": "x"}]), ok_or_400),
        ("messages is an object", b(messages={"role": "user"}), {400}),
        ("message is a string", b(messages=["hello"]), {400}),
        ("model is very long", _body("m" * 100_000), {404}),
        ("stop strings: 1000 of them", b(stop=["x"] * 1000), {400}),
        ("stop string: 100k chars", b(stop="x" * 100_000), {400}),
        (
            "image url: a local file outside any allowed directory",
            b(messages=_user([{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}])),
            {403},
        ),
        (
            "image data not base64",
            b(
                messages=_user(
                    [{"type": "image_url", "image_url": {"url": "data:image/png;base64,%%%"}}]
                )
            ),
            {400},
        ),
        (
            "image that is not an image",
            b(
                messages=_user(
                    [{"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}]
                )
            ),
            {400},
        ),
        ("chat_template_kwargs", b(chat_template_kwargs={"add_generation_prompt": False}), {400}),
        (
            "duplicate keys",
            valid.replace('"max_tokens": 4', '"max_tokens": 4, "max_tokens": -5').encode(),
            {400},
        ),
        ("top-level array", b"[" + valid.encode() + b"]", {400}),
        ("trailing garbage", valid.encode() + b" }", {400}),
        ("BOM prefix", b"\xef\xbb\xbf" + valid.encode(), {200, 400}),
        ("1 MB of whitespace", b" " * 1_000_000 + valid.encode(), {200}),
    ]
