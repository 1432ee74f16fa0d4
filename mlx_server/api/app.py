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

from . import chat, metrics, models
from .errors import install_error_handlers
from .limits import install_limits
from .media import MediaResolver
from .metrics import Metrics
from .openapi import install_openapi
from .requestlog import RequestLogMiddleware
from .security import install_security

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
    app.state.metrics = Metrics(lambda: _stats(app), settings.model_id)
    app.include_router(chat.router)
    app.include_router(models.router)
    app.include_router(metrics.router)
    # Middleware runs last-added first: request log -> catch-all -> origin guard -> CORS ->
    # API key -> body limit -> routes. The log is outermost so refusals are logged and counted.
    install_limits(app, settings)
    install_security(app, settings)
    install_error_handlers(app)
    app.add_middleware(RequestLogMiddleware)
    install_openapi(app, settings)
    return app


def _stats(app: FastAPI) -> dict | None:
    engine = app.state.engine
    return None if engine is None else engine.stats()


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
