"""The app factory: lifespan ownership of the engine, /health, /v1/models, no MLX import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

import mlx_server.engine
from mlx_server.api.app import create_app
from mlx_server.config import Settings
from tests.api_util import MODEL_ID, assert_envelope, chat_body

pytestmark = pytest.mark.anyio


def _client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def test_lifespan_loads_the_engine_lazily_and_closes_it(monkeypatch, settings, engine):
    loaded = []

    def load_engine(s):
        loaded.append(s)
        return engine

    monkeypatch.setattr(mlx_server.engine, "load_engine", load_engine, raising=False)
    app = create_app(settings)
    assert loaded == []  # nothing loads at construction time
    async with _client(app) as client:
        r = await client.get("/health")
        assert_envelope(r, 503, code="loading")
        async with app.router.lifespan_context(app):
            assert loaded == [settings]
            r = await client.post("/v1/chat/completions", json=chat_body())
            assert r.status_code == 200
            assert not engine.closed
        assert engine.closed
        assert_envelope(await client.get("/health"), 503)


async def test_a_given_engine_is_left_open(settings, engine):
    app = create_app(settings, engine)
    async with app.router.lifespan_context(app):
        pass
    assert not engine.closed


async def test_apps_share_nothing(engine):
    other = type(engine)()
    a = create_app(Settings(model="a"), engine)
    b = create_app(Settings(model="b"), other)
    async with _client(a) as ca, _client(b) as cb:
        assert (await ca.get("/v1/models")).json()["data"][0]["id"] == "a"
        assert (await cb.get("/v1/models")).json()["data"][0]["id"] == "b"
        await cb.post("/v1/chat/completions", json=chat_body(model="b"))
    assert engine.requests == [] and len(other.requests) == 1


async def test_health_reports_status_model_and_engine_stats(client, engine):
    await client.post("/v1/chat/completions", json=chat_body())
    body = (await client.get("/health")).json()
    assert body == {"status": "ok", "model": MODEL_ID, "queued": 0, "active": 0, "completed": 1}


async def test_models_endpoints(client):
    listing = (await client.get("/v1/models")).json()
    assert listing == {
        "object": "list",
        "data": [
            {
                "id": MODEL_ID,
                "object": "model",
                "created": 1_700_000_000,
                "owned_by": "mlx_server",
                "context_length": 4096,
            }
        ],
    }
    r = await client.get(f"/v1/models/{MODEL_ID}")  # the id contains a slash
    assert r.status_code == 200 and r.json() == listing["data"][0]
    r = await client.get("/v1/models/other/model")
    assert_envelope(r, 404, code="model_not_found")


async def test_openapi_schema_renders(client):
    r = await client.get("/openapi.json")
    assert r.status_code == 200
    assert "/v1/chat/completions" in r.json()["paths"]


def test_the_api_package_never_imports_mlx():
    code = (
        "import sys, mlx_server.api.app, mlx_server.api.chat;"
        "bad = [m for m in sys.modules if m == 'mlx' or m.startswith(('mlx.', 'mlx_vlm'))];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    root = Path(__file__).parents[1]
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
