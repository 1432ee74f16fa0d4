"""Image data URLs: decoding, flattening, refusals that name the part, off the event loop."""

from __future__ import annotations

import base64
import io
import threading

import pytest
from PIL import Image

from mlx_server.api import media
from mlx_server.api.media import decode_image_url
from mlx_server.engine.errors import InvalidRequestError
from mlx_server.engine.types import ImageInput
from tests.api_util import assert_envelope, chat_body

URL = "/v1/chat/completions"


def _encode(image: Image.Image, fmt: str, **save) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **save)
    return buf.getvalue()


def _data_url(raw: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(raw).decode()


def _rgba_png() -> bytes:
    """Left half opaque red, right half fully transparent (green underneath)."""
    image = Image.new("RGBA", (8, 4), (0, 255, 0, 0))
    for x in range(4):
        for y in range(4):
            image.putpixel((x, y), (255, 0, 0, 255))
    return _encode(image, "PNG")


def _palette_gif() -> bytes:
    """Two frames; the first: palette index 0 transparent (left), index 1 blue (right)."""
    first = Image.new("P", (6, 2), 0)
    first.putpalette([0, 255, 0, 0, 0, 255] + [0, 0, 0] * 254)
    for y in range(2):
        for x in range(3, 6):
            first.putpixel((x, y), 1)
    second = Image.new("P", (6, 2), 1)
    second.putpalette([0, 255, 0, 0, 0, 255] + [0, 0, 0] * 254)
    return _encode(first, "GIF", save_all=True, append_images=[second], transparency=0)


SAMPLES = {
    "png-rgba": (_rgba_png(), "image/png"),
    "gif-palette": (_palette_gif(), "image/gif"),
    "jpeg": (_encode(Image.new("RGB", (16, 8), (10, 200, 30)), "JPEG"), "image/jpeg"),
    "webp": (_encode(Image.new("RGB", (5, 7), (200, 10, 30)), "WEBP", lossless=True), "image/webp"),
    "png-gray": (_encode(Image.new("L", (3, 3), 128), "PNG"), "image/png"),
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_supported_formats_decode_to_rgb(name):
    raw, mime = SAMPLES[name]
    out = decode_image_url(_data_url(raw, mime), "p")
    assert isinstance(out, ImageInput) and out.image.mode == "RGB"
    assert len(out.sha256) == 64
    assert out == ImageInput.from_pil(out.image)


def test_rgba_is_flattened_on_white():
    img = decode_image_url(_data_url(_rgba_png(), "image/png"), "p").image
    assert img.size == (8, 4)
    assert img.getpixel((0, 0)) == (255, 0, 0)
    assert img.getpixel((7, 3)) == (255, 255, 255)  # transparent green became white


def test_gif_first_frame_with_transparency_is_flattened_on_white():
    img = decode_image_url(_data_url(_palette_gif(), "image/gif"), "p").image
    assert img.getpixel((0, 0)) == (255, 255, 255)
    assert img.getpixel((5, 1)) == (0, 0, 255)


def test_jpeg_exif_orientation_is_applied():
    image = Image.new("RGB", (20, 10), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    raw = _encode(image, "JPEG", exif=exif)
    assert decode_image_url(_data_url(raw, "image/jpeg"), "p").image.size == (10, 20)


@pytest.mark.parametrize(
    "url,code,needle",
    [
        ("https://example.com/cat.png", "unsupported_image_url", "not supported yet"),
        ("http://example.com/cat.png", "unsupported_image_url", "not supported yet"),
        ("file:///etc/passwd", "unsupported_image_url", "not supported yet"),
        ("ftp://x/y.png", "invalid_image_url", "data: URL"),
        ("cat.png", "invalid_image_url", "data: URL"),
        ("data:image/png;base64", "invalid_image_url", "malformed"),
        ("data:image/png,rawbytes", "invalid_image_url", "base64"),
        ("data:image/bmp;base64,Qk0=", "invalid_image_url", "image/bmp"),
        ("data:text/plain;base64,aGVsbG8=", "invalid_image_url", "text/plain"),
        ("data:image/png;base64,", "invalid_image_url", "empty"),
        ("data:image/png;base64,iVBO!!!!", "invalid_image_url", "base64"),
        ("data:image/png;base64,iVBORw0KGgo", "invalid_image_url", "base64"),  # bad padding
        ("data:image/png;base64,iVBO Rw==", "invalid_image_url", "base64"),
        ("data:image/png;base64,aGVsbG8gd29ybGQ=", "invalid_image", "not a supported image"),
    ],
)
def test_bad_urls_are_refused_naming_the_part(url, code, needle):
    with pytest.raises(InvalidRequestError) as info:
        decode_image_url(url, "messages[1].content[0].image_url")
    assert info.value.param == "messages[1].content[0].image_url"
    assert info.value.code == code
    assert needle in info.value.message


def test_truncated_and_foreign_images_are_refused():
    raw = SAMPLES["png-rgba"][0]
    with pytest.raises(InvalidRequestError, match="could not be decoded|not a supported"):
        decode_image_url(_data_url(raw[: len(raw) // 2], "image/png"), "p")
    bmp = _encode(Image.new("RGB", (2, 2)), "BMP")
    with pytest.raises(InvalidRequestError, match="not a supported image"):
        decode_image_url(_data_url(bmp, "image/png"), "p")


def test_oversized_images_are_refused(monkeypatch):
    monkeypatch.setattr(media, "MAX_IMAGE_PIXELS", 100)
    raw = _encode(Image.new("RGB", (11, 10)), "PNG")
    with pytest.raises(InvalidRequestError, match="too large"):
        decode_image_url(_data_url(raw, "image/png"), "p")


def _image_message(*urls: str, text: str = "What is this?") -> list[dict]:
    parts = [{"type": "text", "text": text}]
    parts += [{"type": "image_url", "image_url": {"url": u, "detail": "low"}} for u in urls]
    return [{"role": "system", "content": "sys"}, {"role": "user", "content": parts}]


@pytest.mark.anyio
async def test_images_reach_the_engine_as_rgb_in_order(client, engine):
    urls = [_data_url(*SAMPLES[n]) for n in ("png-rgba", "gif-palette", "jpeg", "webp")]
    r = await client.post(URL, json=chat_body(messages=_image_message(*urls)))
    assert r.status_code == 200, r.text
    user = engine.last.messages[1]
    assert user.text == "What is this?"
    assert [im.image.size for im in user.images] == [(8, 4), (6, 2), (16, 8), (5, 7)]
    assert all(im.image.mode == "RGB" for im in user.images)
    assert user.images[0].image.getpixel((7, 0)) == (255, 255, 255)


@pytest.mark.anyio
async def test_images_are_decoded_off_the_event_loop(client, engine, monkeypatch):
    from mlx_server.api import chat

    threads = []

    def spy(url, param):
        threads.append(threading.current_thread())
        return decode_image_url(url, param)

    original = chat.to_generation_request
    monkeypatch.setattr(
        chat,
        "to_generation_request",
        lambda body, settings, **kw: original(body, settings, decode_image=spy, **kw),
    )
    url = _data_url(*SAMPLES["jpeg"])
    r = await client.post(URL, json=chat_body(messages=_image_message(url, url)))
    assert r.status_code == 200
    assert len(threads) == 2 and threading.main_thread() not in threads


@pytest.mark.anyio
@pytest.mark.parametrize(
    "url,status,code",
    [
        ("data:image/png;base64,%%%", 400, "invalid_image_url"),
        ("data:image/png;base64,aGVsbG8gd29ybGQ=", 400, "invalid_image"),
        ("https://example.com/a.png", 400, "unsupported_image_url"),
    ],
)
async def test_bad_images_are_400s_naming_the_part_and_the_server_keeps_serving(
    client, engine, url, status, code
):
    good = _data_url(*SAMPLES["jpeg"])
    r = await client.post(URL, json=chat_body(messages=_image_message(good, url)))
    assert_envelope(r, status, param="messages[1].content[2].image_url", code=code)
    assert engine.requests == []
    r = await client.post(URL, json=chat_body(messages=_image_message(good)))
    assert r.status_code == 200
