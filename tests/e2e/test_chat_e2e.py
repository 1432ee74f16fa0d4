"""The real server on tiny Gemma 3 and Qwen2.5-VL checkpoints, driven by the openai client
and raw httpx. Random weights produce gibberish, so these assert structure, counts and rules."""

from __future__ import annotations

import base64
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from PIL import Image

pytestmark = pytest.mark.e2e


def image_url(color=(200, 30, 30), size=(64, 64), fmt="PNG") -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, fmt)
    mime = "jpeg" if fmt == "JPEG" else fmt.lower()
    return f"data:image/{mime};base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0, timeout=120)


def ask(client, server, content="Say something.", **kw):
    kw.setdefault("max_tokens", 12)
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(
        model=server.model_id, messages=[{"role": "user", "content": content}], **kw
    )


def stream_text(client, server, content="Say something.", **kw):
    kw.setdefault("max_tokens", 12)
    kw.setdefault("temperature", 0)
    chunks = list(
        client.chat.completions.create(
            model=server.model_id,
            messages=[{"role": "user", "content": content}],
            stream=True,
            **kw,
        )
    )
    return chunks


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == [server.model_id]
    health = httpx.get(server.base_url + "/health").json()
    assert health["status"] == "ok" and health["family"] == server.family


def test_non_streamed_shape_and_usage(server, client):
    r = ask(client, server, max_tokens=8)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    u = r.usage
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert 1 <= u.completion_tokens <= 8 and u.prompt_tokens > 5
    assert u.prompt_tokens_details.cached_tokens >= 0
    if choice.finish_reason == "length":
        assert u.completion_tokens == 8


def test_streamed_equals_non_streamed_greedy(server, client):
    full = ask(client, server, max_tokens=16)
    chunks = stream_text(client, server, max_tokens=16, stream_options={"include_usage": True})
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0] is chunks[-2]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == (full.choices[0].message.content or "")
    assert finish[0].choices[0].finish_reason == full.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_stream_without_usage_has_no_usage_chunk(server, client):
    chunks = stream_text(client, server, max_tokens=4)
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)


def test_one_and_two_images(server, client):
    text_only = ask(client, server, max_tokens=2).usage.prompt_tokens

    def with_images(n):
        parts = [
            {"type": "image_url", "image_url": {"url": image_url((40 * i, 90, 200))}}
            for i in range(n)
        ]
        parts.append({"type": "text", "text": "Say something."})
        return client.chat.completions.create(
            model=server.model_id,
            messages=[{"role": "user", "content": parts}],
            max_tokens=4,
            temperature=0,
        )

    one, two = with_images(1), with_images(2)
    per_image = one.usage.prompt_tokens - text_only
    assert per_image >= 4
    assert two.usage.prompt_tokens - one.usage.prompt_tokens == per_image
    assert two.choices[0].finish_reason in ("stop", "length")


def test_stop_string_cuts_text_and_is_never_emitted(server, client):
    base = ask(client, server, max_tokens=30).choices[0].message.content or ""
    clean = [i for i in range(4, len(base) - 3) if "\ufffd" not in base[i : i + 3]]
    if not clean:
        pytest.skip("greedy output too short or not clean text to pick a stop string from")
    stop = base[clean[len(clean) // 2] : clean[len(clean) // 2] + 3]
    expected = base[: base.find(stop)]
    r = ask(client, server, max_tokens=30, stop=[stop, "never-appears-xyz"])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == expected
    chunks = stream_text(client, server, max_tokens=30, stop=stop)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == expected and stop not in streamed


def test_max_tokens_gives_length(server, client):
    r = ask(client, server, max_tokens=3, logit_bias=_no_eos_bias(server))
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3


def _no_eos_bias(server):
    cfg = json.loads((server.model_dir / "generation_config.json").read_text())
    eos = cfg["eos_token_id"]
    return {str(i): -100 for i in (eos if isinstance(eos, list) else [eos])}


def test_seed_determinism(server, client):
    kw = dict(max_tokens=16, temperature=1.0, seed=1234, logit_bias=_no_eos_bias(server))
    a = ask(client, server, **kw).choices[0].message.content
    b = ask(client, server, **kw).choices[0].message.content
    c = ask(client, server, **{**kw, "seed": 99}).choices[0].message.content
    assert a == b
    assert a != c


def test_logprobs(server, client):
    r = ask(client, server, max_tokens=4, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for item in content:
        assert item.logprob <= 0 and len(item.top_logprobs) == 3
        assert item.top_logprobs[0].logprob >= item.logprob - 1e-4


def post(server, body, **kw):
    return httpx.post(server.v1 + "/chat/completions", timeout=60, **kw, json=body)


def assert_error(resp, status, param=None, code=None):
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param
    if code is not None:
        assert err["code"] == code
    return err


def test_error_cases(server):
    msgs = [{"role": "user", "content": "hi"}]
    bad = httpx.post(
        server.v1 + "/chat/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert_error(bad, 400)
    assert_error(post(server, {"model": server.model_id}), 400, param="messages")
    assert_error(post(server, {"model": server.model_id, "messages": "hi"}), 400)
    img = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@notbase64"}}]
    assert_error(
        post(server, {"model": server.model_id, "messages": [{"role": "user", "content": img}]}),
        400,
    )
    txt = base64.b64encode(b"this is not an image at all").decode()
    img = [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{txt}"}}]
    assert_error(
        post(server, {"model": server.model_id, "messages": [{"role": "user", "content": img}]}),
        400,
    )
    assert_error(
        post(server, {"model": server.model_id, "messages": msgs, "temperature": -1}),
        400,
        param="temperature",
    )
    assert_error(
        post(server, {"model": server.model_id, "messages": msgs, "max_tokens": 0}),
        400,
        param="max_tokens",
    )
    assert_error(post(server, {"model": "nope", "messages": msgs}), 404, code="model_not_found")
    assert_error(
        post(server, {"model": server.model_id, "messages": msgs, "max_tokens": 10**7}),
        400,
        code="context_length_exceeded",
    )
    # Still serving after all of that.
    ok = post(server, {"model": server.model_id, "messages": msgs, "max_tokens": 2})
    assert ok.status_code == 200


def test_prompt_longer_than_context(server):
    ctx = httpx.get(server.base_url + "/health").json()["context_length"]
    long = "lorem ipsum dolor sit amet " * (ctx // 2)
    r = post(server, {"model": server.model_id, "messages": [{"role": "user", "content": long}]})
    assert_error(r, 400, code="context_length_exceeded")


def test_eight_concurrent_requests(server):
    body = {"model": server.model_id, "max_tokens": 8, "temperature": 0.7}

    def one(i):
        r = post(server, {**body, "seed": i, "messages": [{"role": "user", "content": f"n{i}"}]})
        return r.status_code, r.json()

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    assert all(status == 200 for status, _ in results)
    assert all(r["choices"][0]["finish_reason"] in ("stop", "length") for _, r in results)


def test_abandoned_stream_then_normal_request(server):
    body = {
        "model": server.model_id,
        "messages": [{"role": "user", "content": "go on"}],
        "max_tokens": 2000,
        "stream": True,
        "logit_bias": _no_eos_bias(server),
    }
    with httpx.stream("POST", server.v1 + "/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        lines = 0
        for line in r.iter_lines():
            lines += line.startswith("data: ")
            if lines >= 3:
                break
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        stats = httpx.get(server.base_url + "/health").json()
        if stats["active"] == 0 and stats["queued"] == 0:
            break
        time.sleep(0.1)
    assert stats["active"] == 0, "the abandoned job is still running"
    ok = post(server, {"model": server.model_id, "messages": body["messages"], "max_tokens": 3})
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] >= 1
