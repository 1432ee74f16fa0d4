"""Plain helpers for the API tests (the FakeEngine itself lives in conftest.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

MODEL_ID = "test-org/tiny-vlm"


def chat_body(**overrides: Any) -> dict[str, Any]:
    """A minimal valid request body, with overrides."""
    body: dict[str, Any] = {"model": MODEL_ID, "messages": [{"role": "user", "content": "Hi"}]}
    body.update(overrides)
    return body


def sse_data(text: str) -> list[str]:
    """The `data:` payloads of an SSE body, in order (comments skipped)."""
    return [
        line[len("data: ") :]
        for block in text.split("\n\n")
        for line in block.splitlines()
        if line.startswith("data: ")
    ]


def sse_json(text: str) -> Iterator[dict[str, Any]]:
    """The JSON events of an SSE body, without the final [DONE]."""
    for payload in sse_data(text):
        if payload != "[DONE]":
            yield json.loads(payload)


def assert_envelope(response: Any, status: int, param: str | None = ..., code: Any = ...) -> dict:
    """The response is one OpenAI error envelope with this status (and param / code)."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["type"], str)
    assert err["code"] is None or isinstance(err["code"], str)
    if param is not ...:
        assert err["param"] == param, err
    if code is not ...:
        assert err["code"] == code, err
    return err
