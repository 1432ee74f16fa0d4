"""Measure any OpenAI-compatible server with a list of request specs, and summarise.

    runs = measure(server.v1, specs, model="bench", repeats=3, warmup=[short_spec])
    by_name = summarize(runs)            # {spec.name: SpecSummary(ttft, decode, ...)}
    agg = aggregate(runs)                # Stat of generated tokens/s over all requests

Warm-up requests run first and are not timed (MLX compiles kernels on first use). Each
repeat sends all specs, one after another or `concurrency` at a time; a failed request
raises `BenchError` with the server's reason unless `allow_errors` is set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .client import CpuProbe, RequestSpec, RunResult, StreamTiming, run_requests
from .report import Stat, fmt_stat, stat


class BenchError(RuntimeError):
    """A request that had to succeed did not."""


@dataclass(frozen=True)
class SpecSummary:
    """Repeats of one request spec: medians with spread, and the token counts seen."""

    name: str
    ttft_s: Stat | None
    decode_tok_s: Stat | None
    decode_cpu_ms: Stat | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: Stat | None
    n_ok: int
    n: int

    @property
    def prompt_tok_s(self) -> float | None:
        """Prompt tokens over the median time to first token (includes vision and HTTP)."""
        if self.ttft_s is None or not self.ttft_s.median:
            return None
        return self.prompt_tokens / self.ttft_s.median

    def to_json(self) -> dict[str, Any]:
        def j(s: Stat | None) -> dict[str, float] | None:
            return None if s is None else s.to_json()

        return {
            "ttft_s": j(self.ttft_s),
            "decode_tok_s": j(self.decode_tok_s),
            "decode_cpu_ms": j(self.decode_cpu_ms),
            "prompt_tok_s": self.prompt_tok_s,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": j(self.cached_tokens),
            "ok": self.n_ok,
            "n": self.n,
        }


def check(timings: Sequence[StreamTiming], what: str) -> None:
    """Raise BenchError naming the first failed request."""
    for t in timings:
        if not t.ok:
            raise BenchError(f"{what}: request {t.name!r} failed: {t.error}")


def measure(
    base_url: str,
    specs: Sequence[RequestSpec],
    *,
    model: str,
    repeats: int = 1,
    concurrency: int = 1,
    warmup: Sequence[RequestSpec] = (),
    timeout_s: float = 300.0,
    allow_errors: bool = False,
    cpu_probe: CpuProbe | None = None,
) -> list[RunResult]:
    """Warm up, then send `specs` `repeats` times; one RunResult per repeat. `cpu_probe`
    (`client.process_cpu_probe(server.proc.pid)`) adds CPU ms per decoded token."""
    if warmup:
        check(
            run_requests(base_url, warmup, model=model, timeout_s=timeout_s).timings,
            f"warm-up of {base_url}",
        )
    runs = []
    for _ in range(repeats):
        run = run_requests(
            base_url,
            specs,
            model=model,
            concurrency=concurrency,
            timeout_s=timeout_s,
            cpu_probe=cpu_probe,
        )
        if not allow_errors:
            check(run.timings, base_url)
        runs.append(run)
    return runs


def summarize_timings(name: str, timings: Sequence[StreamTiming]) -> SpecSummary:
    """SpecSummary of the repeats of one spec."""
    ok = [t for t in timings if t.ok]
    return SpecSummary(
        name=name,
        ttft_s=stat([t.ttft_s for t in ok]),
        decode_tok_s=stat([t.decode_tok_s for t in ok]),
        decode_cpu_ms=stat([t.decode_cpu_ms for t in ok]),
        prompt_tokens=max((t.prompt_tokens for t in ok), default=0),
        completion_tokens=max((t.completion_tokens for t in ok), default=0),
        cached_tokens=stat([float(t.cached_tokens) for t in ok]),
        n_ok=len(ok),
        n=len(timings),
    )


def summarize(runs: Sequence[RunResult]) -> dict[str, SpecSummary]:
    """Per spec name, over all repeats (specs sharing a name are pooled)."""
    grouped: dict[str, list[StreamTiming]] = {}
    for run in runs:
        for t in run.timings:
            grouped.setdefault(t.name, []).append(t)
    return {name: summarize_timings(name, ts) for name, ts in grouped.items()}


def aggregate(runs: Sequence[RunResult]) -> Stat | None:
    """Generated tokens per wall-clock second of each repeat, as a Stat."""
    return stat([r.aggregate_tok_s for r in runs])


SUMMARY_HEADERS = (
    "system",
    "request",
    "prompt tok",
    "TTFT s",
    "prompt tok/s",
    "decode tok/s",
    "CPU ms/tok",
)


def summary_row(system: str, s: SpecSummary) -> list[str]:
    """One table row in SUMMARY_HEADERS order."""
    pps = s.prompt_tok_s
    return [
        system,
        s.name,
        str(s.prompt_tokens),
        fmt_stat(s.ttft_s),
        "-" if pps is None else f"{pps:.1f}",
        fmt_stat(s.decode_tok_s),
        fmt_stat(s.decode_cpu_ms, digits=1),
    ]
