"""Load test: N concurrent clients for T seconds against a loopback server, then a report.

    python scripts/loadtest.py --tiny gemma3 --clients 8 --duration 20
    python scripts/loadtest.py --model ~/models/gemma-3-4b-it-4bit --clients 32 --duration 120
    python scripts/loadtest.py --base-url http://127.0.0.1:8000 --pid 1234 --model-id my-model

Each client loops over a weighted mix of request kinds (`--mix stream=4,plain=3,...`):
streamed and non-streamed chat, an image, JSON mode, tool calls, a client that disconnects
mid-request, and deliberately bad requests. JSON mode and tool calls (`auto` and `required`)
must succeed like any other request.
The report: requests by kind and outcome, errors by status, p50/p95 latency, the server's RSS
at start, after warm-up and at the end. It exits 1 on any 5xx, hung request, unexpected
status, or an unhealthy server afterwards. Loopback only, and bounded: it stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import ipaddress
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import httpx

ROOT = Path(__file__).resolve().parents[1]  # run from a checkout: mlx_server need not be installed
KINDS = ("stream", "plain", "image", "json_mode", "tools", "disconnect", "bad")
DEFAULT_MIX = "stream=4,plain=3,image=1,json_mode=1,tools=1,disconnect=1,bad=1"
MAX_CLIENTS, MAX_DURATION_S = 256, 3600
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
BAD_BODIES = [
    b'{"model": "x", "messages": [',
    b'{"model": "M", "messages": [{"role": "wizard", "content": "hi"}]}',
    b'{"model": "M", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}',
    b'{"model": "M", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
    b'{"model": "M", "messages": [{"role": "tool", "content": "42"}]}',
]


@dataclass
class Report:
    outcomes: Counter = field(default_factory=Counter)  # (kind, outcome)
    statuses: Counter = field(default_factory=Counter)  # (kind, status) of errors
    latencies: list[float] = field(default_factory=list)
    rss_kib: dict[str, int] = field(default_factory=dict)
    cache_kib: dict[str, int] = field(default_factory=dict)  # prompt + vision caches, by design
    healthy_after: bool = False

    def count(self, outcome: str) -> int:
        return sum(n for (_, o), n in self.outcomes.items() if o == outcome)

    @property
    def server_errors(self) -> int:
        return sum(n for (_, status), n in self.statuses.items() if status >= 500)

    def percentile(self, q: float) -> float:
        data = sorted(self.latencies)
        return data[min(len(data) - 1, int(q * len(data)))] if data else float("nan")

    @property
    def passed(self) -> bool:
        bad = ("hung", "unexpected", "transport_error")
        return self.healthy_after and self.server_errors == 0 and not any(map(self.count, bad))

    def text(self) -> str:
        lines = [f"requests: {sum(self.outcomes.values())}"]
        for (kind, outcome), n in sorted(self.outcomes.items()):
            lines.append(f"  {kind:<11} {outcome:<16} {n}")
        lines.append(
            "error statuses: "
            + (
                ", ".join(
                    f"{kind} {status}: {n}" for (kind, status), n in sorted(self.statuses.items())
                )
                or "none"
            )
        )
        lines.append(
            f"latency of completed requests: p50 {self.percentile(0.5):.3f} s, "
            f"p95 {self.percentile(0.95):.3f} s (n={len(self.latencies)})"
        )
        rss = self.rss_kib
        if rss:
            lines.append(
                "server RSS: " + ", ".join(f"{k} {v / 1024:.1f} MiB" for k, v in rss.items())
            )
            if rss.get("after warm-up") and rss.get("end"):
                base = rss["after warm-up"]
                growth = 100 * (rss["end"] - base) / base
                lines.append(f"RSS growth after warm-up: {growth:+.1f}%")
                caches = self.cache_kib
                if "after warm-up" in caches and "end" in caches:
                    grown = caches["end"] - caches["after warm-up"]
                    net = 100 * (rss["end"] - base - grown) / base
                    lines.append(
                        f"of which the prompt and vision caches (bounded by their budgets): "
                        f"{grown / 1024:+.1f} MiB; RSS growth beyond the caches: {net:+.1f}%"
                    )
        lines.append(
            f"healthy after: {self.healthy_after}; verdict: {'PASS' if self.passed else 'FAIL'}"
        )
        return "\n".join(lines)


async def cache_kib(client: httpx.AsyncClient) -> int | None:
    """KiB held by the server's prompt and vision caches, from /health (None if unknown)."""
    try:
        stats = (await client.get("/health")).json()
    except (httpx.HTTPError, ValueError):
        return None
    parts = [stats.get(k) or {} for k in ("prompt_cache", "vision_cache")]
    return sum(int(p.get("bytes", 0)) for p in parts) // 1024


def rss_kib(pid: int | None) -> int | None:
    """Resident memory of `pid` in KiB (Linux /proc, else `ps`)."""
    if pid is None:
        return None
    status = Path(f"/proc/{pid}/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    out = subprocess.run(["ps", "-o", "rss=", "-p", str(pid)], capture_output=True, text=True)
    return int(out.stdout.strip()) if out.stdout.strip() else None


def parse_mix(text: str) -> dict[str, float]:
    mix = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        kind, _, weight = item.partition("=")
        if kind not in KINDS:
            raise SystemExit(f"unknown request kind {kind!r}; known: {', '.join(KINDS)}")
        mix[kind] = float(weight or 1)
    return mix


def _image_url(rng: random.Random) -> str:
    from PIL import Image

    buf = io.BytesIO()
    color = tuple(rng.randrange(256) for _ in range(3))
    Image.new("RGB", (rng.choice([32, 64, 96]),) * 2, color).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def build_body(kind: str, model: str, rng: random.Random, max_tokens: int) -> dict:
    text = rng.choice(["Say something.", "Tell a story.", "What is 2+2?", "Describe a cat."])
    content: object = text
    body: dict = {"model": model, "max_tokens": rng.randint(1, max_tokens)}
    if kind == "image":
        content = [
            {"type": "image_url", "image_url": {"url": _image_url(rng)}},
            {"type": "text", "text": text},
        ]
    elif kind == "json_mode":
        body["response_format"] = {"type": "json_object"}
        content = text + " Answer in JSON."
    elif kind == "tools":
        body["tools"] = TOOLS
        body["tool_choice"] = rng.choice(["auto", "required"])
    body["messages"] = [{"role": "user", "content": content}]
    body["stream"] = kind in ("stream", "disconnect") or rng.random() < 0.3
    return body


async def one_request(
    client: httpx.AsyncClient,
    kind: str,
    model: str,
    rng: random.Random,
    args: argparse.Namespace,
    report: Report,
) -> None:
    url = "/v1/chat/completions"
    started = time.perf_counter()
    try:
        if kind == "bad":
            raw = rng.choice(BAD_BODIES).replace(b'"M"', json.dumps(model).encode())
            r = await client.post(url, content=raw, headers={"content-type": "application/json"})
            outcome = "expected_4xx" if 400 <= r.status_code < 500 else "unexpected"
            report.statuses[(kind, r.status_code)] += 1
        elif kind == "disconnect":
            async with client.stream(
                "POST", url, json=build_body(kind, model, rng, args.max_tokens)
            ) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: {"):
                        break  # leave mid-stream: the server must cancel and carry on
            outcome = "disconnected"
        else:
            body = build_body(kind, model, rng, args.max_tokens)
            async with client.stream("POST", url, json=body) as r:
                data = await r.aread()
            if r.status_code == 200:
                done = not body["stream"] or data.rstrip().endswith(b"data: [DONE]")
                outcome = "ok" if done else "unexpected"
                report.latencies.append(time.perf_counter() - started)
            else:
                report.statuses[(kind, r.status_code)] += 1
                outcome = "busy" if r.status_code == 429 else "unexpected"
    except httpx.TimeoutException:
        outcome = "hung"
    except httpx.TransportError:
        outcome = "transport_error"
    report.outcomes[(kind, outcome)] += 1


def _auth(api_key: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {api_key}"} if api_key else {}


async def run_load(
    base_url: str,
    model: str,
    *,
    clients: int,
    duration: float,
    mix: dict[str, float],
    max_tokens: int = 24,
    timeout: float = 120.0,
    pid: int | None = None,
    max_requests: int | None = None,
    seed: int = 0,
    api_key: str | None = None,
) -> Report:
    """Drive the server and return the report (callable from tests)."""
    check_loopback(base_url)
    clients, duration = min(clients, MAX_CLIENTS), min(duration, MAX_DURATION_S)
    report = Report()
    probe = httpx.AsyncClient(base_url=base_url, timeout=10, headers=_auth(api_key))

    async def sample(label: str) -> None:
        if (value := rss_kib(pid)) is not None:
            report.rss_kib[label] = value
        if (cached := await cache_kib(probe)) is not None:
            report.cache_kib[label] = cached

    await sample("start")
    args = argparse.Namespace(max_tokens=max_tokens)
    kinds, weights = list(mix), list(mix.values())
    deadline = time.monotonic() + duration
    warm_until = time.monotonic() + min(30.0, duration / 5)  # allocator pools, first compiles
    sent = 0

    async def client_loop(i: int) -> None:
        nonlocal sent
        rng = random.Random(seed * 1000 + i)
        limits = httpx.Limits(max_connections=1)
        async with httpx.AsyncClient(
            base_url=base_url, timeout=timeout, limits=limits, headers=_auth(api_key)
        ) as client:
            while time.monotonic() < deadline and (max_requests is None or sent < max_requests):
                sent += 1
                await one_request(client, rng.choices(kinds, weights)[0], model, rng, args, report)

    async def warm_up_rss() -> None:
        await asyncio.sleep(max(0.0, warm_until - time.monotonic()))
        await sample("after warm-up")

    await asyncio.gather(warm_up_rss(), *(client_loop(i) for i in range(clients)))
    await sample("end")
    await probe.aclose()
    try:
        r = httpx.get(base_url + "/health", timeout=10)
        report.healthy_after = r.status_code == 200 and r.json().get("status") == "ok"
    except httpx.HTTPError:
        report.healthy_after = False
    return report


def check_loopback(base_url: str) -> None:
    host = urlparse(base_url).hostname or ""
    try:
        loop = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loop = False
    if not loop:
        raise SystemExit(f"refusing to load-test {host!r}: loopback addresses only")


def start_server(model_dir: Path, extra: list[str]) -> tuple[subprocess.Popen, str]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "mlx_server",
        "serve",
        "--model",
        str(model_dir),
        "--port",
        str(port),
        *extra,
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("the server did not become healthy")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--base-url", help="a running server (loopback only)")
    src.add_argument("--model", type=Path, help="start a server on this model directory")
    src.add_argument(
        "--tiny", choices=["gemma3", "qwen2_5_vl", "qwen2_vl"], help="start one on a tiny model"
    )
    p.add_argument("--size", default="tiny", choices=["tiny", "bench"], help="tiny model size")
    p.add_argument("--pid", type=int, help="server process id, for RSS (with --base-url)")
    p.add_argument("--model-id", help="model id to request (default: the server's first)")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--duration", type=float, default=20.0, help="seconds")
    p.add_argument("--max-requests", type=int, help="stop after this many requests")
    p.add_argument("--max-tokens", type=int, default=24, help="upper bound per request")
    p.add_argument("--mix", default=DEFAULT_MIX, help=f"weights per kind (default {DEFAULT_MIX})")
    p.add_argument(
        "--server-arg", action="append", default=[], help="extra `serve` flag (repeatable)"
    )
    p.add_argument("--json", type=Path, help="also write the report as JSON here")
    p.add_argument(
        "--api-key",
        default=os.environ.get("MLX_SERVER_API_KEY"),
        help="bearer key for a keyed server (default: $MLX_SERVER_API_KEY)",
    )
    args = p.parse_args(argv)

    proc = None
    base, pid = args.base_url, args.pid
    if base is None:
        model_dir = args.model
        if args.tiny:
            sys.path.insert(0, str(ROOT))
            from mlx_server.testing import cached_tiny_model

            model_dir = cached_tiny_model(args.tiny, args.size)  # ~/.cache/mlx_server
        proc, base = start_server(model_dir, args.server_arg)
        pid = proc.pid
    try:
        auth = {"authorization": f"Bearer {args.api_key}"} if args.api_key else {}
        models = httpx.get(base + "/v1/models", headers=auth).json()
        model = args.model_id or models["data"][0]["id"]
        report = asyncio.run(
            run_load(
                base,
                model,
                clients=args.clients,
                duration=args.duration,
                mix=parse_mix(args.mix),
                max_tokens=args.max_tokens,
                pid=pid,
                max_requests=args.max_requests,
                api_key=args.api_key,
            )
        )
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(60)
    print(f"{args.clients} clients x {args.duration:g} s against {base} ({model})")
    print(report.text())
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "outcomes": {f"{k}/{o}": n for (k, o), n in report.outcomes.items()},
                    "error_statuses": {f"{k}/{s}": n for (k, s), n in report.statuses.items()},
                    "p50_s": report.percentile(0.5),
                    "p95_s": report.percentile(0.95),
                    "rss_kib": report.rss_kib,
                    "cache_kib": report.cache_kib,
                    "healthy_after": report.healthy_after,
                    "passed": report.passed,
                },
                indent=2,
            )
        )
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
