"""`GET /v1/models`, `GET /v1/models/{id}`, `GET /v1/cache` and `GET /health`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Request

from mlx_server.engine.errors import ModelNotFoundError

from .deps import get_engine, get_settings
from .protocol import ModelCard, ModelList

router = APIRouter()
F = TypeVar("F", bound=Callable[..., Any])


def _get(path: str) -> Callable[[F], F]:
    """A GET route that also answers HEAD (kept out of the OpenAPI schema)."""

    def register(endpoint: F) -> F:
        router.add_api_route(path, endpoint, methods=["GET"])
        router.add_api_route(path, endpoint, methods=["HEAD"], include_in_schema=False)
        return endpoint

    return register


def _card(request: Request) -> ModelCard:
    info = get_engine(request).info
    return ModelCard(
        id=get_settings(request).model_id,
        created=info.created,
        context_length=info.context_length,
    )


@_get("/v1/models")
async def list_models(request: Request) -> ModelList:
    """The one loaded model, in OpenAI's list shape."""
    return ModelList(data=[_card(request)])


@_get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, request: Request) -> ModelCard:
    """The loaded model by id; any other id is a 404 `model_not_found`."""
    card = _card(request)
    if model_id != card.id:
        raise ModelNotFoundError(
            f"The model {model_id[:200]!r} does not exist; this server serves {card.id!r}",
            param="model",
        )
    return card


@_get("/health")
async def health(request: Request) -> dict[str, Any]:
    """Liveness plus the engine's figures (queue depth, cache use, ...)."""
    engine = get_engine(request)
    return {**engine.stats(), "status": "ok", "model": get_settings(request).model_id}


@_get("/v1/cache")
async def cache_stats(request: Request) -> dict[str, Any]:
    """The prompt (KV prefix) cache and vision-feature cache: entries, bytes, hit rates."""
    stats = get_engine(request).stats()
    return {
        "object": "cache.stats",
        "enabled": "prompt_cache" in stats,
        "prompt_cache": stats.get("prompt_cache"),
        "vision_cache": stats.get("vision_cache"),
    }
