"""What a route needs from the app: the engine, the settings and the media resolver, kept on
`app.state`."""

from __future__ import annotations

from starlette.requests import Request

from mlx_server.config import Settings
from mlx_server.engine.base import Engine

from .errors import ApiError
from .media import MediaResolver


def get_engine(request: Request) -> Engine:
    """The app's engine; 503 while the lifespan is still loading it."""
    engine = getattr(request.app.state, "engine", None)
    if engine is None:
        raise ApiError(
            503, "The model is still loading; retry shortly", type="server_error", code="loading"
        )
    return engine


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_media(request: Request) -> MediaResolver:
    return request.app.state.media
