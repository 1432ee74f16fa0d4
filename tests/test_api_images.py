"""Image decoding: every format to RGB, transparency on the background colour, EXIF, CMYK,
16-bit and float modes, bombs refused from the header; over HTTP with the FakeEngine: order,
decoding off the event loop, refusals naming the part."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

from mlx_server.api.app import create_app
from mlx_server.api.media import image as image_mod
from mlx_server.api.media.dataurl import parse_data_url
from mlx_server.api.media.image import ImageLimits, decode_image
from mlx_server.config import Settings
from mlx_server.engine.errors import InvalidRequestError
from mlx_server.engine.types import ImageInput
from tests.api_util import MODEL_ID, assert_envelope, chat_body
from tests.media_util import data_url, encode, png_bomb

URL = "/v1/chat/completions"
LIMITS = ImageLimits()


def _rgba_png() -> bytes:
    """Left half opaque red, right half fully transparent (green underneath)."""
    image = Image.new("RGBA", (8, 4), (0, 255, 0, 0))
    for x in range(4):
        for y in range(4):
            image.putpixel((x, y), (255, 0, 0, 255))
    return encode(image, "PNG")


def _palette_gif() -> bytes:
    """Two frames; the first: palette index 0 transparent (left), index 1 blue (right)."""
    first = Image.new("P", (6, 2), 0)
    first.putpalette([0, 255, 0, 0, 0, 255] + [0, 0, 0] * 254)
    for y in range(2):
        for x in range(3, 6):
            first.putpixel((x, y), 1)
    second = Image.new("P", (6, 2), 1)
    second.putpalette([0, 255, 0, 0, 0, 255] + [0, 0, 0] * 254)
    return encode(first, "GIF", save_all=True, append_images=[second], transparency=0)


SAMPLES = {
    "png-rgba": (_rgba_png(), "image/png"),
    "gif-palette": (_palette_gif(), "image/gif"),
    "jpeg": (encode(Image.new("RGB", (16, 8), (10, 200, 30)), "JPEG"), "image/jpeg"),
    "webp": (encode(Image.new("RGB", (5, 7), (200, 10, 30)), "WEBP", lossless=True), "image/webp"),
    "png-gray": (encode(Image.new("L", (3, 3), 128), "PNG"), "image/png"),
    "bmp": (encode(Image.new("RGB", (4, 3), (1, 2, 3)), "BMP"), "image/bmp"),
    "png-la": (encode(Image.new("LA", (2, 2), (0, 0)), "PNG"), "image/png"),
}


def _decode(raw: bytes, limits: ImageLimits = LIMITS) -> Image.Image:
    return decode_image(raw, "p", limits).image


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_supported_formats_decode_to_rgb(name):
    raw, mime = SAMPLES[name]
    out = decode_image(parse_data_url(data_url(raw, mime), "image", "p", 2**20), "p", LIMITS)
    assert isinstance(out, ImageInput) and out.image.mode == "RGB"
    assert len(out.sha256) == 64 and out == ImageInput.from_pil(out.image)


def test_rgba_is_flattened_on_the_background_colour():
    img = _decode(SAMPLES["png-rgba"][0])
    assert img.size == (8, 4)
    assert img.getpixel((0, 0)) == (255, 0, 0)
    assert img.getpixel((7, 3)) == (255, 255, 255)  # transparent green became white
    black = _decode(SAMPLES["png-rgba"][0], ImageLimits(background=(0, 0, 0)))
    assert black.getpixel((7, 3)) == (0, 0, 0) and black.getpixel((0, 0)) == (255, 0, 0)
    assert _decode(SAMPLES["png-la"][0], ImageLimits(background=(9, 8, 7))).getpixel((0, 0)) == (
        9,
        8,
        7,
    )


def test_gif_first_frame_with_transparency_is_flattened():
    img = _decode(_palette_gif())
    assert img.getpixel((0, 0)) == (255, 255, 255)
    assert img.getpixel((5, 1)) == (0, 0, 255)


def test_jpeg_exif_orientation_is_applied():
    image = Image.new("RGB", (20, 10), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 10, 10))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    img = _decode(encode(image, "JPEG", exif=exif, quality=95))
    assert img.size == (10, 20)
    assert img.getpixel((5, 2))[0] > 200 and img.getpixel((5, 17))[0] < 50  # left became top


def test_cmyk_jpeg_becomes_rgb():
    img = _decode(encode(Image.new("CMYK", (4, 4), (0, 255, 255, 0)), "JPEG", quality=95))
    r, g, b = img.getpixel((1, 1))
    assert img.mode == "RGB" and r > 230 and g < 25 and b < 25


def test_16_bit_and_float_greyscale_are_scaled_not_clipped():
    levels = np.array([[0, 32768, 65535]], np.uint16)
    img = _decode(encode(Image.fromarray(levels), "PNG"))
    assert [img.getpixel((x, 0)) for x in range(3)] == [(0, 0, 0), (128, 128, 128), (255,) * 3]
    as_float = image_mod.to_rgb(Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32)), (0, 0, 0))
    assert [as_float.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_bombs_are_refused_from_the_header_before_decoding(monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(Image.Image, "load", never)
    for side in (12_000, 100_000):  # under and over Pillow's own bomb threshold
        bomb = png_bomb(side, side)
        assert len(bomb) < 100
        with pytest.raises(InvalidRequestError) as info:
            decode_image(bomb, "messages[0].content[0].image_url", LIMITS)
        assert info.value.code == "image_too_large"
        assert f"limit of {LIMITS.max_pixels}" in info.value.message or (
            f"limit is {LIMITS.max_pixels}" in info.value.message
        )
        assert info.value.param == "messages[0].content[0].image_url"


def test_images_over_the_pixel_limit_are_refused_with_the_limit():
    raw = encode(Image.new("RGB", (11, 10)), "PNG")
    with pytest.raises(InvalidRequestError, match="limit of 100 pixels"):
        decode_image(raw, "p", ImageLimits(max_pixels=100))
    assert decode_image(raw, "p", ImageLimits(max_pixels=110)).image.size == (11, 10)


@pytest.mark.parametrize(
    "url,code,needle",
    [
        ("data:image/png;base64", "invalid_image_url", "malformed"),
        ("data:image/png,rawbytes", "invalid_image_url", "base64"),
        ("data:text/plain;base64,aGVsbG8=", "invalid_image_url", "text/plain"),
        ("data:image/png;base64,", "invalid_image_url", "empty"),
        ("data:image/png;base64,iVBO!!!!", "invalid_image_url", "base64"),
        ("data:image/png;base64,iVBORw0KGgo", "invalid_image_url", "base64"),  # bad padding
        ("data:image/png;base64,iVBO Rw==", "invalid_image_url", "base64"),
    ],
)
def test_bad_data_urls_are_refused_naming_the_part(url, code, needle):
    with pytest.raises(InvalidRequestError) as info:
        parse_data_url(url, "image", "messages[1].content[0].image_url", 2**20)
    assert info.value.param == "messages[1].content[0].image_url"
    assert info.value.code == code and needle in info.value.message


def test_oversized_data_url_is_refused_with_the_limit():
    with pytest.raises(InvalidRequestError, match="limit of 0.0009") as info:
        parse_data_url(data_url(b"x" * 2000, "image/png"), "image", "p", 1000)
    assert info.value.code == "image_too_large"


def test_truncated_and_non_image_bytes_are_refused():
    raw = SAMPLES["png-rgba"][0]
    with pytest.raises(InvalidRequestError, match="could not be decoded|not a supported"):
        _decode(raw[: len(raw) // 2])
    with pytest.raises(InvalidRequestError, match="not a supported image") as info:
        _decode(b"hello world, not an image")
    assert info.value.code == "invalid_image"
    tiff = encode(Image.new("RGB", (2, 2)), "TIFF")
    with pytest.raises(InvalidRequestError, match="not a supported image"):
        _decode(tiff)


def _image_message(*urls: str, text: str = "What is this?") -> list[dict]:
    parts = [{"type": "text", "text": text}]
    parts += [{"type": "image_url", "image_url": {"url": u, "detail": "low"}} for u in urls]
    return [{"role": "system", "content": "sys"}, {"role": "user", "content": parts}]


@pytest.mark.anyio
async def test_images_reach_the_engine_as_rgb_in_order(client, engine):
    urls = [data_url(*SAMPLES[n]) for n in ("png-rgba", "gif-palette", "jpeg", "webp", "bmp")]
    r = await client.post(URL, json=chat_body(messages=_image_message(*urls)))
    assert r.status_code == 200, r.text
    user = engine.last.messages[1]
    assert user.text == "What is this?"
    assert [im.image.size for im in user.images] == [(8, 4), (6, 2), (16, 8), (5, 7), (4, 3)]
    assert all(im.image.mode == "RGB" for im in user.images)
    assert user.images[0].image.getpixel((7, 0)) == (255, 255, 255)


@pytest.mark.anyio
async def test_the_background_colour_setting_reaches_the_pixels(engine):
    import httpx

    settings = Settings(model=MODEL_ID, rgba_background_color=(0, 0, 255))
    app = create_app(settings, engine)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        url = data_url(*SAMPLES["png-rgba"])
        r = await c.post(URL, json=chat_body(messages=_image_message(url)))
    assert r.status_code == 200, r.text
    (img,) = engine.last.messages[1].images
    assert img.image.getpixel((7, 0)) == (0, 0, 255) and img.image.getpixel((0, 0)) == (255, 0, 0)


@pytest.mark.anyio
async def test_images_are_decoded_off_the_event_loop(client, engine, monkeypatch):
    from mlx_server.api.media import resolver

    threads = []
    original = resolver.decode_image

    def spy(raw, param, limits):
        threads.append(threading.current_thread())
        return original(raw, param, limits)

    monkeypatch.setattr(resolver, "decode_image", spy)
    url = data_url(*SAMPLES["jpeg"])
    r = await client.post(URL, json=chat_body(messages=_image_message(url, url)))
    assert r.status_code == 200
    assert len(threads) == 2 and threading.main_thread() not in threads


@pytest.mark.anyio
@pytest.mark.parametrize(
    "url,status,code",
    [
        ("data:image/png;base64,%%%", 400, "invalid_image_url"),
        ("data:image/png;base64,aGVsbG8gd29ybGQ=", 400, "invalid_image"),
        (
            "data:image/png;base64," + data_url(png_bomb(), "x").split(",")[1],
            400,
            "image_too_large",
        ),
        ("ftp://example.com/a.png", 400, "invalid_image_url"),
        ("/etc/passwd", 403, "local_media_forbidden"),
        ("file:///etc/passwd", 403, "local_media_forbidden"),
    ],
)
async def test_bad_images_are_4xx_naming_the_part_and_the_server_keeps_serving(
    client, engine, url, status, code
):
    good = data_url(*SAMPLES["jpeg"])
    r = await client.post(URL, json=chat_body(messages=_image_message(good, url)))
    err = assert_envelope(r, status, param="messages[1].content[2].image_url", code=code)
    if status == 403:
        assert err["type"] == "permission_error" and "--allowed-local-media-path" in err["message"]
    assert engine.requests == []
    r = await client.post(URL, json=chat_body(messages=_image_message(good)))
    assert r.status_code == 200
