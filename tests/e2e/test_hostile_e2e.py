"""The hostile bodies of tests/hostile.py against the real server (each tiny family), where the
tokenizer, the prompt template and the sampler see them: never a 5xx, and it keeps serving."""

from __future__ import annotations

import httpx
import pytest

from tests.hostile import hostile_bodies

pytestmark = pytest.mark.e2e


def test_hostile_bodies_on_the_real_server(server):
    failures = []
    with httpx.Client(base_url=server.v1, timeout=60) as client:
        for name, raw, allowed in hostile_bodies(server.model_id):
            r = client.post(
                "/chat/completions", content=raw, headers={"content-type": "application/json"}
            )
            error = r.json().get("error") if r.status_code >= 400 else None
            if r.status_code not in allowed or (
                error is not None and set(error) != {"message", "type", "param", "code"}
            ):
                failures.append((name, r.status_code, r.text[:200]))
        assert client.get(server.base_url + "/health").json()["status"] == "ok"
    assert failures == []
