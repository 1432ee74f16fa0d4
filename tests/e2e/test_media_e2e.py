"""Media inputs through the real server on tiny Gemma 3 and Qwen2.5-VL checkpoints.

Sources (data:, http on a loopback test server, local files), refusals (private addresses with
no connection made, paths out of the allowed directory, bombs, limits, bodies), videos at two
fps values on both families, uuid reuse. Random weights: these assert statuses and token counts.
"""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from PIL import Image

from mlx_server.testing.server import ServerProcess as Server
from mlx_server.testing.server import free_port, start_server, stop_server
from tests.media_util import data_url, encode, png_bomb, write_video

pytestmark = pytest.mark.e2e

RED_PNG = encode(Image.new("RGB", (64, 64), (220, 20, 20)), "PNG")


class MediaHandler(http.server.BaseHTTPRequestHandler):
    """Serves the test media; every request is recorded in `server.hits`."""

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        self.server.hits.append(self.path)
        routes = self.server.routes
        if self.path == "/slow.png":
            time.sleep(2.5)
        if self.path == "/loop":
            self.send_response(302)
            self.send_header("Location", "/red.png")
            self.end_headers()
            return
        if self.path not in routes:
            self.send_error(404)
            return
        body, mime = routes[self.path]
        self.send_response(200)
        self.send_header("Content-Type", mime)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def media_files(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("media")
    allowed = root / "allowed"
    allowed.mkdir()
    (allowed / "red.png").write_bytes(RED_PNG)
    write_video(allowed / "clip.mp4", seconds=3.0, fps=10.0)
    (root / "secret.png").write_bytes(RED_PNG)
    (allowed / "escape.png").symlink_to(root / "secret.png")
    return root


@pytest.fixture(scope="module")
def web(media_files) -> Iterator[http.server.ThreadingHTTPServer]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), MediaHandler)
    srv.daemon_threads = True
    srv.hits = []
    srv.routes = {
        "/red.png": (RED_PNG, "image/png"),
        "/slow.png": (RED_PNG, "image/png"),
        "/page.html": (b"<html>not an image</html>", "text/html"),
        "/clip.mp4": ((media_files / "allowed" / "clip.mp4").read_bytes(), "video/mp4"),
    }
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def base(srv) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}"


@pytest.fixture(scope="module")
def open_server(tiny_models, media_files, tmp_path_factory) -> Iterator[Server]:
    """Qwen2.5-VL with private URLs and a local directory allowed, and small limits."""
    log = tmp_path_factory.mktemp("logs") / "media-server.log"
    srv = start_server(
        tiny_models["qwen2_5_vl"],
        log,
        "--allow-private-media-urls",
        "--allowed-local-media-path",
        str(media_files / "allowed"),
        "--media-fetch-timeout",
        "1",
        "--max-image-pixels",
        "1000000",
        "--limit-mm-per-prompt",
        '{"image": 4, "video": 1}',
        "--max-body-bytes",
        str(2**20),
        "--max-video-frames",
        "8",
        family="qwen2_5_vl",
    )
    yield srv
    stop_server(srv)


def chat(server: Server, *parts: dict, **extra) -> httpx.Response:
    content = [{"type": "text", "text": "Describe."}, *parts]
    body = {
        "model": server.model_id,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 2,
        "temperature": 0,
        **extra,
    }
    return httpx.post(server.v1 + "/chat/completions", json=body, timeout=60)


def image(url: str | None, **part) -> dict:
    return {"type": "image_url", "image_url": None if url is None else {"url": url}, **part}


def video(url: str) -> dict:
    return {"type": "video_url", "video_url": {"url": url}}


def tokens(r: httpx.Response) -> int:
    assert r.status_code == 200, r.text
    return r.json()["usage"]["prompt_tokens"]


def error(r: httpx.Response, status: int, param: str, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param, err
    if code is not None:
        assert err["code"] == code, err
    return err


P1 = "messages[0].content[1].image_url"


# ---------------------------------------------------------------- default server, both families


def test_data_url_formats(server):
    img = Image.new("RGB", (64, 64), (10, 120, 240))
    formats = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP", "gif": "GIF", "bmp": "BMP"}
    counts = {
        mime: tokens(chat(server, image(data_url(encode(img, fmt), f"image/{mime}"))))
        for mime, fmt in formats.items()
    }
    assert len(set(counts.values())) == 1, counts  # same size, same placeholder count
    cmyk = encode(Image.new("CMYK", (64, 64), (0, 255, 0, 0)), "JPEG")
    assert tokens(chat(server, image(data_url(cmyk, "image/jpeg")))) == counts["png"]
    rgba = encode(Image.new("RGBA", (64, 64), (0, 0, 0, 0)), "PNG")
    assert tokens(chat(server, image(data_url(rgba, "image/png")))) == counts["png"]


def test_private_urls_are_refused_without_a_connection(server, web):
    before = len(web.hits)
    for host in ("127.0.0.1", "localhost", "[::ffff:127.0.0.1]"):
        port = web.server_address[1]
        r = chat(server, image(f"http://{host}:{port}/red.png"))
        err = error(r, 403, P1, "private_media_url")
        assert "loopback" in err["message"] and err["type"] == "permission_error"
    assert len(web.hits) == before  # nothing reached the test server
    r = chat(server, image("file:///etc/hostname"))
    error(r, 403, P1, "local_media_forbidden")


def test_broken_and_non_image_payloads(server):
    error(chat(server, image("data:image/png;base64,@@@")), 400, P1, "invalid_image_url")
    not_png = data_url(b"this is not an image at all", "image/png")
    error(chat(server, image(not_png)), 400, P1, "invalid_image")
    error(chat(server, image(data_url(png_bomb(), "image/png"))), 400, P1, "image_too_large")


def test_uuid_reuse_with_a_null_payload(server):
    uuid = f"red-{server.family}"
    sent = tokens(chat(server, image(data_url(RED_PNG, "image/png"), uuid=uuid)))
    assert tokens(chat(server, image(None, uuid=uuid))) == sent
    err = error(chat(server, image(None, uuid="never-sent")), 400, "messages[0].content[1].uuid")
    assert err["code"] == "unknown_media_uuid"


@pytest.fixture(scope="module")
def clip_url(media_files) -> str:
    return data_url((media_files / "allowed" / "clip.mp4").read_bytes(), "video/mp4")


def test_video_at_two_fps_values(server, clip_url):
    one = chat(server, video(clip_url), mm_processor_kwargs={"fps": 1})
    four = chat(server, video(clip_url), mm_processor_kwargs={"fps": 4})
    assert tokens(one) != tokens(four)
    assert one.json()["choices"][0]["finish_reason"] in ("stop", "length")
    if server.family == "gemma3":  # frames are consecutive images: 3 vs 12 of them
        red = image(data_url(RED_PNG, "image/png"))
        per_image = tokens(chat(server, red, red)) - tokens(chat(server, red))
        assert tokens(four) - tokens(one) == 9 * per_image
    frames = [image(data_url(encode(Image.new("RGB", (64, 48), (8 * i, 0, 0)), "PNG"), "image/png"))
              for i in range(3)]  # fmt: skip
    assert tokens(chat(server, *frames)) > tokens(chat(server))  # frames as images still work


def test_mm_processor_kwargs_through_the_openai_client(server):
    client = openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0, timeout=60)
    big = data_url(encode(Image.new("RGB", (112, 112), (1, 2, 3)), "PNG"), "image/png")
    messages = [{"role": "user", "content": [image(big), {"type": "text", "text": "Hi"}]}]

    def ask(**extra_body):
        return client.chat.completions.create(
            model=server.model_id, messages=messages, max_tokens=2, extra_body=extra_body
        )

    if server.family == "gemma3":
        with pytest.raises(openai.BadRequestError) as info:
            ask(mm_processor_kwargs={"max_pixels": 3136})
        assert info.value.body["param"] == "mm_processor_kwargs"
        return
    small = ask(mm_processor_kwargs={"max_pixels": 56 * 56}).usage.prompt_tokens
    default = ask().usage.prompt_tokens
    assert default - small == 16 - 4  # 112x112 -> 4x4 merged patches; capped at 2x2


# ---------------------------------------------------------------- the open server (Qwen2.5-VL)


def test_http_urls(open_server, web):
    inline = tokens(chat(open_server, image(data_url(RED_PNG, "image/png"))))
    assert tokens(chat(open_server, image(base(web) + "/red.png"))) == inline
    assert tokens(chat(open_server, image(base(web) + "/loop"))) == inline  # redirect followed
    assert "/red.png" in web.hits and "/loop" in web.hits
    cases = {
        "/missing.png": "HTTP 404",
        "/page.html": "not a supported image",
        "/slow.png": "timed out after 1 s",
    }
    for path, needle in cases.items():
        err = error(chat(open_server, image(base(web) + path)), 400, P1)
        assert needle in err["message"], err
        if path != "/page.html":
            assert base(web) + path in err["message"]
    refused = f"http://127.0.0.1:{free_port()}/red.png"
    err = error(chat(open_server, image(refused)), 400, P1, "media_fetch_failed")
    assert "could not connect" in err["message"]
    assert tokens(chat(open_server, video(base(web) + "/clip.mp4"))) > tokens(chat(open_server))


def test_local_files(open_server, media_files):
    allowed = media_files / "allowed"
    inline = tokens(chat(open_server, image(data_url(RED_PNG, "image/png"))))
    for spec in ("red.png", str(allowed / "red.png"), f"file://{allowed}/red.png"):
        assert tokens(chat(open_server, image(spec))) == inline
    for spec in ("escape.png", "../secret.png", f"file://{allowed}/../secret.png"):
        error(chat(open_server, image(spec)), 403, P1, "local_media_forbidden")
    error(chat(open_server, image("missing.png")), 400, P1, "media_not_found")

    def clip(fps: float) -> int:
        return tokens(chat(open_server, video("clip.mp4"), mm_processor_kwargs={"fps": fps}))

    # 30 frames at 10 fps are capped at --max-video-frames 8: the same as asking for 8.
    assert clip(10) == clip(8 / 3) != clip(1)


def test_limits(open_server):
    big = encode(Image.new("RGB", (1200, 1000)), "PNG")
    err = error(chat(open_server, image(data_url(big, "image/png"))), 400, P1, "image_too_large")
    assert "1000000" in err["message"]
    five = [image(data_url(RED_PNG, "image/png")) for _ in range(5)]
    err = error(
        chat(open_server, *five), 400, "messages[0].content[5].image_url", "too_many_images"
    )
    assert "at most 4" in err["message"]
    huge = image("data:image/png;base64," + "A" * (1 << 20))
    r = chat(open_server, huge)
    assert r.status_code == 413 and "1 MiB" in r.json()["error"]["message"]
    assert tokens(chat(open_server, image(data_url(RED_PNG, "image/png")))) > 0
