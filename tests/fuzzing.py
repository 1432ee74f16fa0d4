"""Schema fuzzing shared by tests/test_fuzz.py (bounded) and scripts/fuzz.py (long runs).

schemathesis generates requests from the server's own OpenAPI document, valid and invalid
alike, and sends them to the ASGI app with the FakeEngine. The contract: never a 5xx, and every
4xx is exactly one OpenAI error envelope.
"""

from __future__ import annotations

import json
from typing import Any

import schemathesis
from hypothesis import strategies as st
from schemathesis import Config

from mlx_server.api.app import create_app
from mlx_server.config import Settings
from tests.api_util import MODEL_ID
from tests.conftest import FakeEngine

ENVELOPE_KEYS = {"message", "type", "param", "code"}


def fuzz_schema(max_examples: int, seed: int | None = None) -> Any:
    """The app's OpenAPI schema, loaded for fuzzing valid and invalid requests."""
    options: dict[str, Any] = {"generation": {"mode": "all", "max-examples": max_examples}}
    if seed is not None:
        options["seed"] = seed
    app = create_app(Settings(model=MODEL_ID, max_tokens_cap=64), FakeEngine())
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=Config.from_dict(options))

    # A random `model` is a 404 before anything else is looked at; name the served model in
    # most cases so that the fuzzing reaches the rest of the request.
    @schema.hook
    def flatmap_case(context: Any, case: Any) -> Any:
        if not (isinstance(case.body, dict) and "model" in case.body):
            return st.just(case)

        def named(keep: bool) -> Any:
            if not keep:
                case.body = {**case.body, "model": MODEL_ID}
            return case

        return st.sampled_from([False, False, False, True]).map(named)  # first: the simplest

    @schema.hook
    def flatmap_path_parameters(context: Any, params: Any) -> Any:
        if isinstance(params, dict) and "model_id" in params:
            return st.sampled_from([params, {**params, "model_id": MODEL_ID}])
        return st.just(params)

    return schema


def check_response(status: int, content_type: str, body: bytes) -> None:
    """No 5xx; every error is one envelope with a string message and a string-or-null code."""
    assert status < 500, f"{status}: {body[:500]!r}"
    if status < 400:
        return
    assert content_type.startswith("application/json"), content_type
    data = json.loads(body)
    assert set(data) == {"error"}, data
    error = data["error"]
    assert set(error) == ENVELOPE_KEYS, error
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    assert error["code"] is None or isinstance(error["code"], str)
    assert error["param"] is None or isinstance(error["param"], str)
