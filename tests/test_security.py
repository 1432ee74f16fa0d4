"""API key, browser origins (CORS and the origin guard) and the exposure warning."""

from __future__ import annotations

import logging

import httpx
import pytest

from mlx_server.api.app import create_app
from mlx_server.api.security import exposure_warning, is_loopback, warn_if_exposed
from mlx_server.cli import build_settings, main, make_parser
from mlx_server.config import Settings, settings_from_env
from tests.api_util import MODEL_ID, assert_envelope, chat_body

pytestmark = pytest.mark.anyio

KEY = "sk-local-0123456789abcdef"
URL = "/v1/chat/completions"
EVIL = "https://evil.example"
GOOD = "https://app.example"


def _client(app) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000")


@pytest.fixture
def keyed(engine):
    return create_app(Settings(model=MODEL_ID, api_key=KEY), engine)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": "Bearer wrong"},
        {"authorization": "Bearer " + KEY[:-1] + "X"},  # same length, last byte differs
        {"authorization": "Bearer " + KEY + "x"},
        {"authorization": "Basic " + KEY},
        {"authorization": KEY},
        {"authorization": "Bearer"},
        {"authorization": "Bearer \xe9\xe9".encode("latin-1")},
    ],
)
async def test_v1_needs_the_key(keyed, engine, headers, caplog):
    caplog.set_level(logging.DEBUG)
    async with _client(keyed) as c:
        for r in (
            await c.post(URL, json=chat_body(), headers=headers),
            await c.get("/v1/models", headers=headers),
            await c.get("/v1/models/" + MODEL_ID, headers=headers),
            await c.get("/metrics", headers=headers),
            await c.get("/v1/nowhere", headers=headers),
        ):
            err = assert_envelope(r, 401, code="invalid_api_key")
            assert err["type"] == "invalid_request_error"
            assert r.headers["www-authenticate"] == "Bearer"
            assert KEY not in r.text
    assert engine.requests == []
    assert KEY not in caplog.text


async def test_the_right_key_opens_v1_and_metrics(keyed, engine):
    async with _client(keyed) as c:
        for scheme in ("Bearer", "bearer"):
            auth = {"authorization": f"{scheme} {KEY}"}
            r = await c.post(URL, json=chat_body(), headers=auth)
            assert r.status_code == 200, r.text
            assert (await c.get("/metrics", headers=auth)).status_code == 200
            assert (await c.get("/v1/models", headers=auth)).status_code == 200
    assert len(engine.requests) == 2


async def test_health_and_docs_stay_open(keyed):
    async with _client(keyed) as c:
        assert (await c.get("/health")).json()["status"] == "ok"
        assert (await c.head("/health")).status_code == 200
        doc = (await c.get("/openapi.json")).json()
        assert doc["components"]["securitySchemes"] == {
            "bearer": {"type": "http", "scheme": "bearer"}
        }
        assert doc["paths"]["/v1/models"]["get"]["security"] == [{"bearer": []}]
        assert "security" not in doc["paths"]["/health"]["get"]


async def test_without_a_key_nothing_is_asked(client):
    assert (await client.get("/v1/models")).status_code == 200
    assert (await client.get("/metrics")).status_code == 200


def test_the_key_never_shows_in_settings_repr_and_comes_from_env_or_flag():
    s = settings_from_env({"MLX_SERVER_API_KEY": KEY, "MLX_SERVER_CORS_ORIGINS": f"{GOOD}, x,"})
    assert s.api_key == KEY and KEY not in repr(s)
    assert s.cors_origins == (GOOD, "x")
    args = make_parser().parse_args(["serve", "--api-key", "from-flag", "--cors-origins", "a,b"])
    flagged = build_settings(args, s)
    assert (flagged.api_key, flagged.cors_origins) == ("from-flag", ("a", "b"))
    assert build_settings(make_parser().parse_args(["serve"]), s) == s


# ------------------------------------------------------------------ origins


@pytest.mark.parametrize("origin", [EVIL, "null", "http://127.0.0.1:8000", GOOD + ".evil.example"])
async def test_a_browser_origin_is_refused_by_default_before_any_work(client, engine, origin):
    headers = {"origin": origin}
    r = await client.post(URL, json=chat_body(), headers=headers)
    assert_envelope(r, 403, code="origin_not_allowed")
    assert "access-control-allow-origin" not in r.headers
    # A "simple" request (no preflight): no content type at all, or text/plain.
    r = await client.post(URL, content=b'{"model": "m"}', headers=headers)
    assert_envelope(r, 403, code="origin_not_allowed")
    preflight = {
        **headers,
        "access-control-request-method": "POST",
        "access-control-request-headers": "content-type",
    }
    r = await client.options(URL, headers=preflight)
    assert_envelope(r, 403, code="origin_not_allowed")
    assert (await client.get("/health", headers=headers)).status_code == 403
    assert engine.requests == []


async def test_a_text_plain_post_without_origin_is_a_415(client, engine):
    r = await client.post(URL, content=b"{}", headers={"content-type": "text/plain"})
    assert_envelope(r, 415, code="unsupported_media_type")
    assert engine.requests == []


async def test_allowed_origins_get_cors_headers(engine):
    app = create_app(Settings(model=MODEL_ID, cors_origins=(GOOD + "/",)), engine)
    async with _client(app) as c:
        preflight = {
            "origin": GOOD,
            "access-control-request-method": "POST",
            "access-control-request-headers": "content-type, authorization, x-stainless-os",
        }
        r = await c.options(URL, headers=preflight)
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == GOOD
        assert "x-stainless-os" in r.headers["access-control-allow-headers"].lower()
        r = await c.post(URL, json=chat_body(), headers={"origin": GOOD})
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == GOOD
        assert "x-request-id" in r.headers["access-control-expose-headers"].lower()
        r = await c.post(URL, json=chat_body(), headers={"origin": EVIL})
        assert_envelope(r, 403, code="origin_not_allowed")
    assert len(engine.requests) == 1


async def test_preflight_of_a_keyed_server_needs_no_key(engine):
    app = create_app(Settings(model=MODEL_ID, api_key=KEY, cors_origins=(GOOD,)), engine)
    async with _client(app) as c:
        r = await c.options(URL, headers={"origin": GOOD, "access-control-request-method": "POST"})
        assert r.status_code == 200
        r = await c.post(URL, json=chat_body(), headers={"origin": GOOD})
        assert_envelope(r, 401, code="invalid_api_key")


# ------------------------------------------------------------------ exposure


@pytest.mark.parametrize("host", ["127.0.0.1", "127.3.4.5", "localhost", "::1", "[::1]"])
def test_loopback_hosts(host):
    assert is_loopback(host)
    assert exposure_warning(Settings(host=host)) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "my-mac.local"])
def test_exposed_without_a_key_warns_loudly(host, capsys, caplog):
    assert not is_loopback(host)
    assert exposure_warning(Settings(host=host, api_key=KEY)) is None
    warn_if_exposed(Settings(host=host))
    err = capsys.readouterr().err
    assert "NO API KEY" in err and host in err
    assert "NO API KEY" in caplog.text


def test_serve_warns_on_stderr_before_loading(monkeypatch, capsys):
    """The CLI path: the warning comes out even when loading the model then fails."""

    def fail(settings):
        raise SystemExit(3)

    monkeypatch.setattr("mlx_server.api.app.create_app", fail)
    with pytest.raises(SystemExit):
        main(["serve", "--model", "x", "--host", "0.0.0.0"])
    assert "NO API KEY" in capsys.readouterr().err
