"""The OpenAPI document, corrected to say what the server really does.

The chat route reads its body itself (so that every failure is our envelope, never FastAPI's
422), which leaves FastAPI's generated document without a request body. This adds the pydantic
request and response schemas, replaces the 422s the server never sends with the error envelope,
and declares the bearer key when one is set. Schema fuzzing (tests, scripts/fuzz.py) reads it.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from mlx_server.config import Settings

from .errors import ErrorResponse
from .protocol import ChatCompletion, ChatCompletionRequest
from .security import is_protected

_REF = "#/components/schemas/{model}"
CHAT_PATH = "/v1/chat/completions"


def _add_schema(doc: dict[str, Any], model: type[BaseModel], mode: str) -> dict[str, str]:
    """Put `model` (and its nested models) into components; return a $ref to it."""
    schema = model.model_json_schema(ref_template=_REF, mode=mode)  # type: ignore[arg-type]
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(schema.pop("$defs", {}))
    schemas[model.__name__] = schema
    return {"$ref": _REF.format(model=model.__name__)}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def describe(doc: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Correct FastAPI's generated document in place (and return it)."""
    envelope = _add_schema(doc, ErrorResponse, "serialization")
    chat = doc["paths"].get(CHAT_PATH, {}).get("post")
    if chat is not None:
        chat["requestBody"] = {
            "required": True,
            "content": _json(_add_schema(doc, ChatCompletionRequest, "validation")),
        }
        chat["responses"]["200"]["content"] = {
            **_json(_add_schema(doc, ChatCompletion, "serialization")),
            "text/event-stream": {"schema": {"type": "string"}},
        }
    for path, operations in doc["paths"].items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            responses["default"] = {
                "description": "An OpenAI error envelope",
                "content": _json(envelope),
            }
            if settings.api_key and is_protected(path):
                operation["security"] = [{"bearer": []}]
    schemas = doc["components"]["schemas"]
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    if settings.api_key:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return doc


def install_openapi(app: FastAPI, settings: Settings) -> None:
    """Make `app.openapi()` (and /openapi.json) serve the corrected document."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = describe(generate(), settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
