"""Time streamed chat completions against any OpenAI-compatible server.

    spec = RequestSpec("text", messages=[{"role": "user", "content": "hi"}], max_tokens=64)
    run = run_requests("http://127.0.0.1:8000/v1", [spec] * 8, model="m", concurrency=8)
    run.timings[0].ttft_s, run.timings[0].decode_tok_s, run.aggregate_tok_s

The hot loop only stamps and stores raw lines; JSON is parsed after the stream ends
(`timing_from_lines`), so the client spends as little CPU as possible while the server it
measures shares the machine with it. With a `cpu_probe` (e.g. `process_cpu_probe(pid)` of the
server) each line is also stamped with that process's CPU seconds, which gives the CPU time
per decoded token: far less disturbed than wall time when other work shares the cores.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass(frozen=True)
class RequestSpec:
    """One streamed chat request. `extra` holds any other body fields (temperature, seed,
    logit_bias, response_format, tools...); `delay_s` waits before sending (to let a request
    arrive while others are running)."""

    name: str
    messages: list[dict[str, Any]]
    max_tokens: int = 128
    extra: dict[str, Any] = field(default_factory=dict)
    delay_s: float = 0.0

    def body(self, model: str) -> dict[str, Any]:
        """The JSON body: greedy unless `extra` says otherwise, streamed with usage."""
        return {
            "model": model,
            "messages": self.messages,
            "max_tokens": self.max_tokens,
            "temperature": 0.0,
            **self.extra,
            "stream": True,
            "stream_options": {"include_usage": True},
        }


@dataclass(frozen=True)
class StreamTiming:
    """What one streamed response looked like from the client.

    ttft_s: request sent -> first chunk carrying content or a tool call.
    decode_tok_s: (completion_tokens - 1) / (last token's chunk - first token's chunk).
    decode_cpu_ms: CPU milliseconds the probed process spent per token over the same span.
    """

    name: str
    ok: bool
    error: str | None = None
    ttft_s: float | None = None
    decode_tok_s: float | None = None
    decode_cpu_ms: float | None = None
    total_s: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    token_chunks: int = 0
    finish_reason: str | None = None
    text: str = ""
    comments: int = 0
    token_ids: tuple[int, ...] = ()  # in-process systems only (SSE carries text)


@dataclass(frozen=True)
class RunResult:
    """Timings of a set of requests and the wall time from first send to last byte."""

    timings: list[StreamTiming]
    wall_s: float

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.timings)

    @property
    def aggregate_tok_s(self) -> float:
        """Generated tokens of all requests per second of wall time."""
        tokens = sum(t.completion_tokens for t in self.timings)
        return tokens / self.wall_s if self.wall_s > 0 else 0.0


def _chunk_fields(chunk: dict[str, Any]) -> tuple[str, bool, str | None]:
    """(content text, carries a token, finish_reason) of one chat.completion.chunk."""
    text, token, finish = "", False, None
    for choice in chunk.get("choices") or []:
        delta = choice.get("delta") or {}
        piece = delta.get("content") or ""
        text += piece
        token = token or bool(piece) or bool(delta.get("tool_calls"))
        finish = choice.get("finish_reason") or finish
    return text, token, finish


CpuProbe = Callable[[], float]


def process_cpu_probe(pid: int) -> CpuProbe | None:
    """CPU seconds (user + system, all threads) of process `pid` from /proc; None where
    there is no /proc (macOS), so callers simply get no CPU figures there."""
    path = f"/proc/{pid}/stat"
    if not os.path.exists(path):
        return None
    tick = os.sysconf("SC_CLK_TCK")

    def probe() -> float:
        with open(path) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick  # utime, stime

    return probe


def per_token_cpu_ms(cpu_first: float | None, cpu_last: float | None, n: int) -> float | None:
    """CPU milliseconds per decode step between the first and the n-th token."""
    if cpu_first is None or cpu_last is None or n < 2:
        return None
    return 1000.0 * (cpu_last - cpu_first) / (n - 1)


@dataclass
class _Scan:
    """What a pass over one response's SSE lines found."""

    first: float | None = None  # arrival of the first token chunk
    last: float | None = None  # arrival of the last token or finish chunk
    cpu_first: float | None = None
    cpu_last: float | None = None
    texts: list[str] = field(default_factory=list)
    usage: dict[str, Any] = field(default_factory=dict)
    finish: str | None = None
    error: str | None = None
    chunks: int = 0
    comments: int = 0
    done: bool = False

    def feed(self, stamp: float, line: str, cpu: float | None) -> None:
        if line.startswith(":"):
            self.comments += 1
            return
        if not line.startswith("data:"):
            return
        payload = line[5:].strip()
        if payload == "[DONE]":
            self.done = True
            return
        chunk = json.loads(payload)
        if "error" in chunk:
            self.error = str(chunk["error"].get("message", chunk["error"]))
            return
        text, token, fin = _chunk_fields(chunk)
        self.texts.append(text)
        if token:
            self.chunks += 1
            if self.first is None:
                self.first, self.cpu_first = stamp, cpu
        if token or fin:
            self.last, self.cpu_last = stamp, cpu
        self.finish = fin or self.finish
        self.usage = chunk.get("usage") or self.usage


def timing_from_lines(name: str, sent_at: float, lines: Sequence[tuple]) -> StreamTiming:
    """Build a StreamTiming from (arrival time, SSE line[, probed CPU seconds]) tuples."""
    scan = _Scan()
    for stamp, line, *cpu in lines:
        scan.feed(stamp, line, cpu[0] if cpu else None)
    first, last, usage, error = scan.first, scan.last, scan.usage, scan.error
    end = lines[-1][0] if lines else sent_at
    completion = int(usage.get("completion_tokens") or scan.chunks)
    details = usage.get("prompt_tokens_details") or {}
    decode = None
    if first is not None and last is not None and last > first and completion > 1:
        decode = (completion - 1) / (last - first)
    if error is None and not scan.done:
        error = "stream ended without [DONE]"
    return StreamTiming(
        name=name,
        ok=error is None and first is not None,
        error=error or (None if first is not None else "no tokens"),
        ttft_s=None if first is None else first - sent_at,
        decode_tok_s=decode,
        decode_cpu_ms=per_token_cpu_ms(scan.cpu_first, scan.cpu_last, completion),
        total_s=end - sent_at,
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=completion,
        cached_tokens=int(details.get("cached_tokens") or 0),
        token_chunks=scan.chunks,
        finish_reason=scan.finish,
        text="".join(scan.texts),
        comments=scan.comments,
    )


def stream_chat(
    base_url: str,
    spec: RequestSpec,
    model: str,
    *,
    timeout_s: float = 300.0,
    cpu_probe: CpuProbe | None = None,
) -> StreamTiming:
    """Send one streamed request to `base_url` (ending in /v1) and time it.

    Never raises for server trouble: a refused connection, an HTTP error or a stream that
    outlives `timeout_s` comes back as `ok=False` with the reason in `error`."""
    if spec.delay_s > 0:
        time.sleep(spec.delay_s)
    lines: list[tuple] = []
    sent = time.perf_counter()
    deadline = sent + timeout_s
    try:
        timeout = httpx.Timeout(timeout_s, connect=10.0)
        with httpx.Client(timeout=timeout) as http:
            url = base_url.rstrip("/") + "/chat/completions"
            with http.stream("POST", url, json=spec.body(model)) as resp:
                if resp.status_code != 200:
                    resp.read()
                    msg = f"HTTP {resp.status_code}: {resp.text[:300]}"
                    return StreamTiming(spec.name, ok=False, error=msg)
                for line in resp.iter_lines():
                    now = time.perf_counter()
                    if cpu_probe is not None and line.startswith("data:"):
                        lines.append((now, line, cpu_probe()))
                    else:
                        lines.append((now, line))
                    if now > deadline:
                        return StreamTiming(spec.name, ok=False, error=f"over {timeout_s:.0f} s")
    except httpx.HTTPError as exc:
        return StreamTiming(spec.name, ok=False, error=f"{type(exc).__name__}: {exc}")
    return timing_from_lines(spec.name, sent, lines)


def run_requests(
    base_url: str,
    specs: Sequence[RequestSpec],
    *,
    model: str,
    concurrency: int = 1,
    timeout_s: float = 300.0,
    cpu_probe: CpuProbe | None = None,
) -> RunResult:
    """Send `specs`, at most `concurrency` in flight (1 = one after another), and time each.

    With concurrency > 1 all workers start together (a barrier), so `wall_s` covers the
    batch from the first send; results keep the order of `specs`."""
    if concurrency <= 1:
        start = time.perf_counter()
        out = [
            stream_chat(base_url, s, model, timeout_s=timeout_s, cpu_probe=cpu_probe) for s in specs
        ]
        return RunResult(out, time.perf_counter() - start)
    workers = min(concurrency, len(specs))
    barrier = threading.Barrier(workers + 1)
    started = threading.local()

    def one(spec: RequestSpec) -> StreamTiming:
        if not getattr(started, "done", False):
            started.done = True
            barrier.wait(timeout=30)
        return stream_chat(base_url, spec, model, timeout_s=timeout_s, cpu_probe=cpu_probe)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(one, s) for s in specs]
        barrier.wait(timeout=30)
        start = time.perf_counter()
        out = [f.result(timeout=timeout_s + 60) for f in futures]
    return RunResult(out, time.perf_counter() - start)


def get_json(url: str, timeout_s: float = 5.0) -> dict[str, Any]:
    """GET a JSON document (health, model list)."""
    resp = httpx.get(url, timeout=timeout_s)
    resp.raise_for_status()
    return resp.json()
