"""The official `openai` client against the ASGI app: shapes parse, errors map to its types."""

from __future__ import annotations

import base64
import io

import httpx
import openai
import pytest
from PIL import Image

from mlx_server.engine.errors import ContextLengthExceededError, EngineError
from tests.api_util import MODEL_ID

pytestmark = pytest.mark.anyio

HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture
async def oai(app):
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport) as http:
        yield openai.AsyncOpenAI(
            base_url="http://test/v1", api_key="x", http_client=http, max_retries=0
        )


async def test_models_list(oai):
    models = await oai.models.list()
    assert [m.id for m in models.data] == [MODEL_ID]
    assert (await oai.models.retrieve(MODEL_ID)).id == MODEL_ID
    with pytest.raises(openai.NotFoundError):
        await oai.models.retrieve("gpt-4o")


async def test_non_streamed(oai, engine):
    engine.scripted(cached_tokens=4)
    out = await oai.chat.completions.create(model=MODEL_ID, messages=HI, seed=7, temperature=0)
    assert out.object == "chat.completion" and out.model == MODEL_ID
    assert out.choices[0].message.content == "Hello, world!"
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].finish_reason == "stop"
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    assert out.usage.prompt_tokens_details.cached_tokens == 4
    assert (engine.last.sampling.seed, engine.last.sampling.temperature) == (7, 0.0)


async def test_streamed_with_usage(oai):
    stream = await oai.chat.completions.create(
        model=MODEL_ID, messages=HI, stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello, world!"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4


async def test_logprobs_parse(oai):
    out = await oai.chat.completions.create(
        model=MODEL_ID, messages=HI, logprobs=True, top_logprobs=2
    )
    content = out.choices[0].logprobs.content
    assert [t.token for t in content] == ["Hello", ",", " world", "!"]
    assert all(len(t.top_logprobs) == 2 for t in content)


async def test_image_message(oai, engine):
    buf = io.BytesIO()
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Describe"},
                {"type": "image_url", "image_url": {"url": url}},
            ],
        }
    ]
    out = await oai.chat.completions.create(model=MODEL_ID, messages=messages)
    assert out.choices[0].message.content
    (image,) = engine.last.messages[0].images
    assert image.image.getpixel((0, 0)) == (255, 255, 255)


async def test_errors_map_to_the_clients_exception_types(oai, engine):
    with pytest.raises(openai.BadRequestError) as bad:
        await oai.chat.completions.create(model=MODEL_ID, messages=HI, temperature=-1)
    assert bad.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as refused:
        await oai.chat.completions.create(model=MODEL_ID, messages=HI, n=3)
    assert refused.value.code == "unsupported_parameter" and refused.value.param == "n"
    with pytest.raises(openai.NotFoundError) as missing:
        await oai.chat.completions.create(model="gpt-4o", messages=HI)
    assert missing.value.code == "model_not_found"
    engine.scripted(prompt_error=ContextLengthExceededError("prompt too long: 9000 > 4096"))
    with pytest.raises(openai.BadRequestError) as too_long:
        await oai.chat.completions.create(model=MODEL_ID, messages=HI, stream=True)
    assert too_long.value.code == "context_length_exceeded"


async def test_mid_stream_error_raises_in_the_client(oai, engine):
    engine.scripted(error=EngineError("decode failed"), error_after=1)
    stream = await oai.chat.completions.create(model=MODEL_ID, messages=HI, stream=True)
    seen = []
    with pytest.raises(openai.APIError, match="decode failed"):
        async for chunk in stream:
            seen.append(chunk.choices[0].delta.content)
    assert seen == ["", "Hello"]
