"""`create_app(settings, engine=None)`: routers, error handlers, and the engine's lifespan."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from mlx_server import __version__
from mlx_server.config import Settings
from mlx_server.engine.base import Engine

from . import chat, models
from .bodylimit import BodySizeLimitMiddleware
from .errors import install_error_handlers
from .media import MediaResolver

log = logging.getLogger("mlx_server.api")


def create_app(settings: Settings, engine: Engine | None = None) -> FastAPI:
    """Build the ASGI app. With no `engine`, the lifespan loads the real one and closes it on
    shutdown; a given engine belongs to the caller and is left open."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            async with _engine_lifespan(app, settings):
                yield
        finally:
            await app.state.media.aclose()

    app = FastAPI(title="mlx_server", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.engine = engine
    app.state.media = MediaResolver.from_settings(settings)  # fetcher + uuid cache, per app
    app.include_router(chat.router)
    app.include_router(models.router)
    install_error_handlers(app)
    # Added last so it runs first: oversized bodies are refused before anything reads them.
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_request_body_mb * 2**20)
    return app


@asynccontextmanager
async def _engine_lifespan(app: FastAPI, settings: Settings) -> AsyncIterator[None]:
    """Load the real engine unless one was given, and close only what was loaded here."""
    if app.state.engine is not None:
        yield
        return
    from mlx_server.engine import load_engine  # lazy: the API never imports MLX itself

    log.info("loading %s", settings.model)
    app.state.engine = await asyncio.to_thread(load_engine, settings)
    try:
        yield
    finally:
        owned, app.state.engine = app.state.engine, None
        await asyncio.to_thread(owned.close)
