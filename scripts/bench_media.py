"""Cost of a repeated image: resent as base64 bytes every time vs sent once and then named
by its uuid (`"image_url": null, "uuid": ...`).

    python scripts/bench_media.py                       # starts a server on a tiny checkpoint
    python scripts/bench_media.py --size bench          # ... on a bench-size checkpoint
    python scripts/bench_media.py --url http://127.0.0.1:8000 --model ID   # a running server
    python scripts/bench_media.py --quick --json        # fewer requests; JSON as the last line

`measure_uuid_vs_bytes(base_url, model)` times whole requests against a server;
`measure_resolve()` times only the API's media step in-process (parse, decode, hash vs a cache
hit), which is what a uuid saves until vision features are cached too. The tiny checkpoint is
the default so that model time does not bury that difference. Only the server given (or
started here, on 127.0.0.1) is contacted.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def photo_like_jpeg(side: int = 1024, seed: int = 0) -> bytes:
    """A side x side (1 MP at 1024) JPEG with gradients and noise, so it compresses like a
    photo rather than like a flat colour."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side] / side
    base = np.stack([x, y, (x + y) / 2], axis=-1) * 200
    pixels = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _body(model: str, part: dict) -> dict:
    content = [part, {"type": "text", "text": "Describe the image."}]
    return {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 1,
        "temperature": 0,
    }


def _time(client: httpx.Client, url: str, body: dict) -> float:
    raw = json.dumps(body).encode()
    start = time.perf_counter()
    r = client.post(url, content=raw, headers={"content-type": "application/json"})
    elapsed = time.perf_counter() - start
    r.raise_for_status()
    return elapsed


def _summary(times: list[float]) -> dict[str, float]:
    return {
        "median_ms": round(statistics.median(times) * 1e3, 1),
        "mean_ms": round(statistics.fmean(times) * 1e3, 1),
        "min_ms": round(min(times) * 1e3, 1),
    }


def measure_uuid_vs_bytes(
    base_url: str, model: str, n: int = 10, side: int = 1024, timeout: float = 300.0
) -> dict[str, Any]:
    """Time `n` requests carrying a side x side JPEG as a base64 data URL, and `n` naming the
    same image by uuid after sending it once; plus `n` text-only requests as the floor.

    Each request generates one token, so the figures are request handling + prefill. The
    difference between the first two is what sending the bytes again costs (upload, base64,
    JPEG decode, hashing); the vision tower and prefill run in both."""
    jpeg = photo_like_jpeg(side)
    data_url = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()
    uuid = f"bench-{uuidlib.uuid4().hex}"
    url = base_url.rstrip("/") + "/v1/chat/completions"
    by_bytes = _body(model, {"type": "image_url", "image_url": {"url": data_url}})
    define = _body(model, {"type": "image_url", "image_url": {"url": data_url}, "uuid": uuid})
    by_uuid = _body(model, {"type": "image_url", "image_url": None, "uuid": uuid})
    text_only = _body(model, {"type": "text", "text": "No image."})
    with httpx.Client(timeout=timeout, trust_env=False) as client:
        _time(client, url, by_bytes)  # warm-up (first-request compilation)
        _time(client, url, define)
        t_bytes, t_uuid, t_text = [], [], []
        for _ in range(n):  # interleaved, so drift in machine load hits all three alike
            t_bytes.append(_time(client, url, by_bytes))
            t_uuid.append(_time(client, url, by_uuid))
            t_text.append(_time(client, url, text_only))
    bytes_s, uuid_s = _summary(t_bytes), _summary(t_uuid)
    return {
        "image": f"{side}x{side} jpeg, {len(jpeg) / 1024:.0f} KiB, "
        f"{len(data_url) / 1024:.0f} KiB as a data URL",
        "requests_each": n,
        "as_bytes": bytes_s,
        "by_uuid": uuid_s,
        "text_only": _summary(t_text),
        "saved_per_request_ms": round(bytes_s["median_ms"] - uuid_s["median_ms"], 1),
        "request_body_bytes": {
            "as_bytes": len(json.dumps(by_bytes)),
            "by_uuid": len(json.dumps(by_uuid)),
        },
    }


def measure_resolve(n: int = 20, side: int = 1024) -> dict[str, Any]:
    """The API's media step alone, in-process: a base64 data URL parsed, decoded and hashed,
    vs the same image found in the uuid cache."""
    import asyncio

    sys.path.insert(0, str(ROOT))
    from mlx_server.api.media import MediaResolver
    from mlx_server.api.media.refs import MediaRef
    from mlx_server.config import Settings

    jpeg = photo_like_jpeg(side)
    data_url = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()
    resolver = MediaResolver.from_settings(Settings())
    sent = (MediaRef("messages[0].content[0]", "image", data_url, "img"),)
    named = (MediaRef("messages[0].content[0]", "image", None, "img"),)

    async def timed(refs: tuple) -> list[float]:
        out = []
        for _ in range(n):
            start = time.perf_counter()
            await resolver.resolve(refs, 2.0)
            out.append(time.perf_counter() - start)
        return out

    async def run() -> tuple[list[float], list[float]]:
        try:
            return await timed(sent), await timed(named)
        finally:
            await resolver.aclose()

    t_bytes, t_uuid = asyncio.run(run())
    return {"as_bytes": _summary(t_bytes), "by_uuid": _summary(t_uuid)}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_local_server(
    arch: str, size: str, models_root: Path | None, log: Path
) -> tuple[Any, str, str]:
    """Our server on the `size` (tiny / bench) `arch` checkpoint, on 127.0.0.1;
    (process, url, model id)."""
    sys.path.insert(0, str(ROOT))
    from mlx_server.testing import cached_tiny_model

    model_dir = cached_tiny_model(arch, size, root=models_root)
    port, model = _free_port(), f"{size}-{arch}"
    cmd = [sys.executable, "-m", "mlx_server", "serve", "--model", str(model_dir)]
    cmd += ["--port", str(port), "--served-model-name", model, "--log-level", "warning"]
    with log.open("w") as out:  # the child keeps its own handle
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=1, trust_env=False).status_code == 200:
                return proc, url, model
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError("server did not become healthy")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", help="a running server (default: start one here)")
    p.add_argument("--model", help="its model id (with --url)")
    p.add_argument("--arch", default="qwen2_5_vl", choices=["qwen2_5_vl", "qwen2_vl", "gemma3"])
    p.add_argument("--size", default="tiny", choices=["tiny", "bench"], help="checkpoint size")
    p.add_argument("--models-root", type=Path, help="where test checkpoints are cached")
    p.add_argument("--requests", type=int, default=10, help="requests of each kind")
    p.add_argument("--side", type=int, default=1024, help="image side in pixels (1024: 1 MP)")
    p.add_argument("--quick", action="store_true", help="3 requests of each kind")
    p.add_argument("--json", action="store_true", help="print the figures as JSON, last")
    args = p.parse_args(argv)
    n = 3 if args.quick else args.requests
    proc = None
    try:
        if args.url:
            if not args.model:
                p.error("--url needs --model")
            url, model = args.url, args.model
        else:
            log = Path(tempfile.mkdtemp(prefix="bench-media-")) / "server.log"
            proc, url, model = start_local_server(args.arch, args.size, args.models_root, log)
        figures = measure_uuid_vs_bytes(url, model, n=n, side=args.side)
        figures["server"] = "given" if args.url else f"{args.size} {args.arch}"
        figures["api_media_step"] = measure_resolve(n=2 * n, side=args.side)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    for key, value in figures.items():
        print(f"{key}: {value}")
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
