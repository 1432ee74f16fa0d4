"""Media in requests (FakeEngine): uuid reuse, limits, body size, mm_processor_kwargs, videos
sampled at the requested fps; and the pure pieces behind them (LRU, sampler, flags)."""

from __future__ import annotations

import json

import httpx
import pytest
from PIL import Image

from mlx_server.api.app import create_app
from mlx_server.api.media.cache import MediaCache
from mlx_server.api.media.video import sample_indices
from mlx_server.cli import main as cli_main
from mlx_server.cli import parse_mm_limits
from mlx_server.config import parse_rgb, settings_from_env
from mlx_server.engine.types import ImageInput, ImagePart, VideoPart
from tests.api_util import MODEL_ID, assert_envelope, chat_body
from tests.media_util import data_url, png_url, write_video

URL = "/v1/chat/completions"


def user(*parts) -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": "Describe."}, *parts]}]


def image_part(url: str | None, uuid: str | None = None) -> dict:
    part: dict = {"type": "image_url", "image_url": None if url is None else {"url": url}}
    if uuid is not None:
        part["uuid"] = uuid
    return part


def video_part(url: str | None, uuid: str | None = None) -> dict:
    part: dict = {"type": "video_url", "video_url": None if url is None else {"url": url}}
    if uuid is not None:
        part["uuid"] = uuid
    return part


@pytest.fixture(scope="module")
def video_url(tmp_path_factory) -> str:
    path = write_video(tmp_path_factory.mktemp("video") / "clip.mp4", seconds=3.0, fps=10.0)
    return data_url(path.read_bytes(), "video/mp4")


def make_client(engine, **settings):
    from mlx_server.config import Settings

    app = create_app(Settings(model=MODEL_ID, **settings), engine)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


pytestmark = pytest.mark.anyio


async def test_uuid_reuse_with_a_null_payload(client, engine):
    red = png_url((255, 0, 0))
    r = await client.post(URL, json=chat_body(messages=user(image_part(red, "red-1"))))
    assert r.status_code == 200, r.text
    (first,) = engine.last.messages[0].images
    body = chat_body(messages=user(image_part(None, "red-1"), image_part(None, "red-1")))
    r = await client.post(URL, json=body)
    assert r.status_code == 200, r.text
    again = engine.last.messages[0].images
    assert again == (first, first) and again[0].image.getpixel((0, 0)) == (255, 0, 0)
    # Defined and reused within one request, in either order.
    body = chat_body(
        messages=user(image_part(None, "blue"), image_part(png_url((0, 0, 255)), "blue"))
    )
    r = await client.post(URL, json=body)
    assert r.status_code == 200, r.text
    a, b = engine.last.messages[0].images
    assert a == b and a.image.getpixel((0, 0)) == (0, 0, 255)


async def test_unknown_uuid_and_kind_mismatch_are_400s_naming_the_part(client, engine):
    r = await client.post(URL, json=chat_body(messages=user(image_part(None, "nope"))))
    err = assert_envelope(r, 400, param="messages[0].content[1].uuid", code="unknown_media_uuid")
    assert "nope" in err["message"]
    r = await client.post(URL, json=chat_body(messages=user(image_part(png_url(), "pic"))))
    assert r.status_code == 200
    r = await client.post(URL, json=chat_body(messages=user(video_part(None, "pic"))))
    assert_envelope(r, 400, param="messages[0].content[1].uuid", code="unknown_media_uuid")
    r = await client.post(URL, json=chat_body(messages=user({"type": "image_url"})))
    assert_envelope(r, 400, param="messages[0].content[1].image_url")
    assert len(engine.requests) == 1


async def test_uuid_cache_off_means_null_payloads_are_unknown(engine):
    async with make_client(engine, media_cache_mb=0) as c:
        r = await c.post(URL, json=chat_body(messages=user(image_part(png_url(), "x"))))
        assert r.status_code == 200
        r = await c.post(URL, json=chat_body(messages=user(image_part(None, "x"))))
    err = assert_envelope(r, 400, code="unknown_media_uuid")
    assert "cache is off" in err["message"]


def test_lru_bounded_by_count_and_bytes():
    def part(side: int) -> ImagePart:
        return ImagePart(ImageInput.from_pil(Image.new("RGB", (side, side))))

    cache = MediaCache(max_bytes=10 * 10 * 3 * 3, max_entries=2)
    for name in "abc":
        assert cache.put(name, part(10))
    assert cache.get("a") is None and cache.get("b") is not None  # count evicts the oldest
    assert cache.put("d", part(10))  # "c" is now the least recently used
    assert cache.get("c") is None and cache.get("b") is not None
    assert cache.put("big", part(16)) and cache.stats() == {"entries": 1, "bytes": 768}
    assert not cache.put("huge", part(40)) and cache.get("big") is not None


async def test_too_many_images_and_videos_are_400s_with_the_limit(engine, video_url):
    async with make_client(engine, max_images_per_prompt=2, max_videos_per_prompt=1) as c:
        three = user(*(image_part(png_url()) for _ in range(3)))
        r = await c.post(URL, json=chat_body(messages=three))
        err = assert_envelope(r, 400, param="messages[0].content[3].image_url")
        assert err["code"] == "too_many_images" and "at most 2" in err["message"]
        two_videos = user(video_part(video_url), video_part(video_url))
        r = await c.post(URL, json=chat_body(messages=two_videos))
        assert_envelope(r, 400, param="messages[0].content[2].video_url", code="too_many_videos")
        r = await c.post(URL, json=chat_body(messages=user(image_part(png_url()))))
        assert r.status_code == 200
    assert len(engine.requests) == 1


async def test_request_bodies_over_the_limit_are_413s(engine):
    async with make_client(engine, max_body_bytes=2**20) as c:
        big = user(image_part("data:image/png;base64," + "A" * (2**20)))
        r = await c.post(URL, json=chat_body(messages=big))
        err = assert_envelope(r, 413, code="request_too_large")
        assert "1 MiB" in err["message"]

        async def chunks():  # no Content-Length: counted while reading
            yield json.dumps(chat_body(messages=big)).encode()

        r = await c.post(URL, content=chunks(), headers={"content-type": "application/json"})
        assert_envelope(r, 413, code="request_too_large")
        r = await c.post(URL, json=chat_body(messages=user(image_part(png_url()))))
        assert r.status_code == 200
    assert len(engine.requests) == 1


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"do_resize": False}, "do_resize"),
        ({"fps": 0}, "fps"),
        ({"fps": "2"}, "fps"),
        ({"fps": 1000}, "fps"),
        ({"max_pixels": -1}, "max_pixels"),
        ({"max_pixels": True}, "max_pixels"),
        ({"min_pixels": 10**12}, "limit"),
        ({"min_pixels": 5000, "max_pixels": 4000}, "above max_pixels"),
    ],
)
async def test_bad_mm_processor_kwargs_are_400s_naming_the_field(client, engine, kwargs, needle):
    r = await client.post(URL, json=chat_body(mm_processor_kwargs=kwargs))
    err = assert_envelope(r, 400, param="mm_processor_kwargs")
    assert needle in err["message"]
    assert engine.requests == []


async def test_videos_are_sampled_at_the_requested_fps(client, engine, video_url):
    counts = {}
    for fps in (1, 2, 4):
        body = chat_body(messages=user(video_part(video_url)), mm_processor_kwargs={"fps": fps})
        r = await client.post(URL, json=body)
        assert r.status_code == 200, r.text
        (video,) = engine.last.messages[0].videos
        assert isinstance(video, VideoPart) and video.fps == fps
        counts[fps] = len(video.frames)
        reds = [f.image.getpixel((8, 8))[0] for f in video.frames]
        assert reds == sorted(reds) and abs(reds[1] - reds[0] - 80 // fps) <= 12
    assert counts == {1: 3, 2: 6, 4: 12}
    r = await client.post(URL, json=chat_body(messages=user(video_part(video_url))))
    assert len(engine.last.messages[0].videos[0].frames) == 6  # the default is 2 fps


async def test_videos_are_capped_at_max_video_frames_over_the_whole_clip(engine, video_url):
    async with make_client(engine, max_video_frames=4) as c:
        body = chat_body(messages=user(video_part(video_url)), mm_processor_kwargs={"fps": 10})
        r = await c.post(URL, json=body)
    assert r.status_code == 200, r.text
    (video,) = engine.last.messages[0].videos
    assert len(video.frames) == 4 and video.fps == pytest.approx(4 / 3)
    assert video.frames[-1].image.getpixel((8, 8))[0] > 150  # the end of the clip, not 0.4 s


@pytest.mark.parametrize(
    "part,param,code",
    [
        (
            video_part("data:video/mp4;base64,aGVsbG8="),
            "messages[0].content[1].video_url",
            "invalid_video",
        ),
        (
            video_part("data:image/png;base64,aGVsbG8="),
            "messages[0].content[1].video_url",
            "invalid_video_url",
        ),
        ({"type": "video_url"}, "messages[0].content[1].video_url", None),
    ],
)
async def test_bad_videos_are_400s_naming_the_part(client, engine, part, param, code):
    r = await client.post(URL, json=chat_body(messages=user(part)))
    assert_envelope(r, 400, param=param, **({} if code is None else {"code": code}))


async def test_media_only_in_user_messages(client, video_url):
    msgs = [{"role": "assistant", "content": [video_part(video_url)]}, *user()]
    r = await client.post(URL, json=chat_body(messages=msgs))
    err = assert_envelope(r, 400, param="messages[0].content[0]")
    assert "only allowed in user messages" in err["message"]


def test_sampler():
    assert sample_indices(30, 10.0, 2.0, 32) == ([0, 5, 10, 15, 20, 25], 2.0)
    assert sample_indices(30, 10.0, 20.0, 100) == (list(range(30)), 10.0)  # never above native
    indices, rate = sample_indices(300, 10.0, 2.0, 4)
    assert indices == [0, 75, 150, 225] and rate == pytest.approx(4 / 30)
    assert sample_indices(1, 25.0, 2.0, 8) == ([0], 2.0)


def test_media_flags_and_environment(monkeypatch):
    assert parse_mm_limits("5") == {"image": 5}
    assert parse_mm_limits('{"image": 3, "video": 1}') == {"image": 3, "video": 1}
    for bad in ("-1", '{"audio": 1}', '{"image": "x"}', "[1]"):
        with pytest.raises(Exception, match="expected"):
            parse_mm_limits(bad)
    assert parse_rgb("0,128,255") == parse_rgb("[0, 128, 255]") == parse_rgb("#0080ff")
    with pytest.raises(ValueError):
        parse_rgb("256,0,0")
    env = {
        "MLX_SERVER_RGBA_BACKGROUND_COLOR": "1,2,3",
        "MLX_SERVER_ALLOW_PRIVATE_MEDIA_URLS": "true",
        "MLX_SERVER_ALLOWED_LOCAL_MEDIA_PATH": "/data",
        "MLX_SERVER_MEDIA_FETCH_TIMEOUT": "2.5",
    }
    s = settings_from_env(env)
    assert s.rgba_background_color == (1, 2, 3) and s.allow_private_media_urls
    assert s.allowed_local_media_path == "/data" and s.media_fetch_timeout == 2.5
    seen = {}
    monkeypatch.setattr("mlx_server.cli.serve", lambda settings: seen.setdefault("s", settings))
    cli_main(
        ["serve", "--limit-mm-per-prompt", '{"image": 7, "video": 2}', "--max-video-frames", "9",
         "--media-cache-size", "0", "--rgba-background-color", "#000000", "--max-media-mb", "3",
         "--allowed-local-media-path", "/x", "--allow-private-media-urls", "--max-image-pixels",
         "100", "--media-fetch-timeout", "1", "--max-body-bytes", "2097152", "--media-cache-entries", "5"]
    )  # fmt: skip
    s = seen["s"]
    assert (s.max_images_per_prompt, s.max_videos_per_prompt, s.max_video_frames) == (7, 2, 9)
    assert (s.media_cache_mb, s.media_cache_entries, s.rgba_background_color) == (0, 5, (0, 0, 0))
    assert (s.max_media_mb, s.allowed_local_media_path, s.allow_private_media_urls) == (
        3,
        "/x",
        True,
    )
    assert (s.max_image_pixels, s.media_fetch_timeout, s.max_body_bytes) == (100, 1.0, 2097152)
