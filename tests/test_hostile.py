"""Hostile request bodies against the app with the FakeEngine: never a 5xx, always an envelope,
and the server keeps serving (tests/e2e/test_hostile_e2e.py sends the same to the real one)."""

from __future__ import annotations

import pytest

from tests.api_util import assert_envelope, chat_body
from tests.hostile import hostile_bodies

pytestmark = pytest.mark.anyio

CASES = hostile_bodies()


@pytest.mark.parametrize("name,raw,allowed", CASES, ids=[c[0] for c in CASES])
async def test_hostile_body(client, name, raw, allowed):
    r = await client.post(
        "/v1/chat/completions", content=raw, headers={"content-type": "application/json"}
    )
    assert r.status_code in allowed, (r.status_code, r.text[:300])
    if r.status_code >= 400:
        assert_envelope(r, r.status_code)
    ok = await client.post("/v1/chat/completions", json=chat_body())
    assert ok.status_code == 200
