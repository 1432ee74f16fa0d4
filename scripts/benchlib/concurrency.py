"""Section `concurrency` (issue 6): many requests at once vs one after another.

On the bench-size Qwen2.5-VL, for our server (`--max-concurrency 8`) and mlx-vlm's server
(float32 copy, `--max-num-seqs 8`, APC off), both with the 8-bit KV cache:

- throughput: 8 requests, each with its own image and 128 new tokens (EOS suppressed), sent
  one after another and then all at once; aggregate generated tokens/s, concurrent/sequential
  (target >= 2.5x). Every request has its own tag, so no cache serves one run from another.
- latency under load: time to first token of a short request on the idle server, and of the
  same-sized request arriving while 7 long ones are decoding (target < 2x). The late request
  is sent after a delay sized from the idle TTFT; whether all 7 were really decoding when it
  arrived is checked from their timings and reported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import prompts
from .client import RequestSpec, RunResult, StreamTiming
from .context import Context, SectionResult
from .harness import BenchError, check, run_requests
from .models import float32_copy
from .procs import Server, apc_env, free_port, mlx_vlm_cmd, ours_cmd
from .report import stat, table

ARCH = "qwen2_5_vl"
N = 8
THROUGHPUT_TARGET = 2.5
LATENCY_TARGET = 2.0
KV = ("--kv-bits", "8")


@dataclass(frozen=True)
class Config:
    user_tokens: int  # text tokens per request (plus one 224x224 image in the throughput runs)
    max_tokens: int  # new tokens per throughput request and per long request
    short_tokens: int  # new tokens of the short request
    idle_repeats: int


FULL = Config(32, 128, 8, 3)
QUICK = Config(16, 32, 4, 1)


def spec(lm: Any, name: str, tag: str, cfg: Config, *, image: bool, max_tokens: int) -> RequestSpec:
    """A greedy request that cannot stop before `max_tokens`."""
    text = prompts.text_for_tokens(lm.tokenizer, cfg.user_tokens, tag)
    png = prompts.image_png(tag) if image else None
    bias = {"logit_bias": prompts.no_eos_bias(lm.eos_token_ids)}
    return RequestSpec(name, [prompts.user_message(text, png)], max_tokens, bias)


def throughput(url: str, model: str, lm: Any, cfg: Config, label: str, timeout_s: float) -> dict:
    """The same kind of 8 requests, sequential and then concurrent (fresh tags for each)."""
    out = {}
    for mode, conc in (("sequential", 1), ("concurrent", N)):
        specs = [
            spec(
                lm, f"r{i}", f"conc-{label}-{mode}-{i}", cfg, image=True, max_tokens=cfg.max_tokens
            )
            for i in range(N)
        ]
        run = run_requests(url, specs, model=model, concurrency=conc, timeout_s=timeout_s)
        check(run.timings, f"{label} {mode}")
        out[mode] = run
    return out


@dataclass(frozen=True)
class Latency:
    idle: list[StreamTiming]
    loaded: StreamTiming
    long: list[StreamTiming]
    delay_s: float

    @property
    def idle_ttft(self) -> float:
        return stat([t.ttft_s for t in self.idle]).median

    @property
    def ratio(self) -> float:
        return (self.loaded.ttft_s or 0.0) / self.idle_ttft

    @property
    def all_decoding(self) -> bool:
        """Had every long request produced its first token, and none finished, when the short
        one was sent? (Times are relative to the common start of the concurrent batch.)"""
        sent = self.delay_s
        return all(t.ttft_s is not None and t.ttft_s < sent < t.total_s for t in self.long)


def latency(url: str, model: str, lm: Any, cfg: Config, label: str, timeout_s: float) -> Latency:
    """Idle TTFT of a short request, then the same-sized request sent while 7 long ones decode."""

    def short(tag: str, delay: float = 0.0) -> RequestSpec:
        s = spec(lm, "short", tag, cfg, image=False, max_tokens=cfg.short_tokens)
        return RequestSpec(s.name, s.messages, s.max_tokens, s.extra, delay_s=delay)

    idle = [
        run_requests(url, [short(f"idle-{label}-{i}")], model=model, timeout_s=timeout_s).timings[0]
        for i in range(cfg.idle_repeats)
    ]
    check(idle, f"{label} idle short request")
    idle_ttft = stat([t.ttft_s for t in idle]).median
    # The 7 prompts are prefilled before (or between) decode steps; give them time to all be
    # decoding: 7 prefills at the idle rate, plus half again, plus a second.
    delay = 1.5 * (N - 1) * idle_ttft + 1.0
    longs = [
        spec(lm, f"long{i}", f"long-{label}-{i}", cfg, image=False, max_tokens=cfg.max_tokens)
        for i in range(N - 1)
    ]
    run = run_requests(
        url,
        [*longs, short(f"late-{label}", delay)],
        model=model,
        concurrency=N,
        timeout_s=timeout_s,
    )
    check(run.timings, f"{label} loaded")
    return Latency(idle, run.timings[-1], run.timings[:-1], delay)


Starter = Callable[[Context, Any], tuple[Server, str]]


def _ours(ctx: Context, lm: Any) -> tuple[Server, str]:
    cmd = ours_cmd(lm.path, free_port(), "--dtype", "auto", *KV, "--max-concurrency", str(N))
    return ctx.pool.start(cmd, "concurrency-ours", ctx.work_dir), "bench"


def _vlm(ctx: Context, lm: Any) -> tuple[Server, str]:
    f32 = str(float32_copy(lm.path))
    flags = (*KV, "--quantized-kv-start", "0", "--max-tokens", "4096", "--max-num-seqs", str(N))
    env = apc_env(False, ctx.work_dir / "apc-concurrency")
    return ctx.pool.start(
        mlx_vlm_cmd(f32, free_port(), *flags), "concurrency-vlm", ctx.work_dir, env=env
    ), f32


SYSTEMS: dict[str, Starter] = {
    "mlx_server": _ours,
    "mlx-vlm server (--max-num-seqs 8)": _vlm,
}


def _warm_up(url: str, model: str, timeout_s: float) -> None:
    """Compile the kernels: one request with an image, then two at once (batched shapes)."""
    warm = [
        RequestSpec(f"w{i}", [prompts.user_message("hello", prompts.image_png(f"warm{i}"))], 4)
        for i in range(2)
    ]
    check(run_requests(url, warm[:1], model=model, timeout_s=timeout_s).timings, "warm-up")
    check(
        run_requests(url, warm, model=model, concurrency=2, timeout_s=timeout_s).timings, "warm-up"
    )


def measure_system(ctx: Context, cfg: Config, label: str) -> tuple[dict[str, RunResult], Latency]:
    lm = ctx.loaded(ARCH)
    server, model = SYSTEMS[label](ctx, lm)
    try:
        _warm_up(server.v1, model, ctx.request_timeout_s)
        runs = throughput(server.v1, model, lm, cfg, label, ctx.request_timeout_s)
        for mode, r in runs.items():
            ctx.say(f"    {label}: {mode} {r.aggregate_tok_s:.2f} tok/s in {r.wall_s:.1f} s")
        lat = latency(server.v1, model, lm, cfg, label, ctx.request_timeout_s)
        ctx.say(
            f"    {label}: short TTFT idle {lat.idle_ttft:.2f} s, under load "
            f"{lat.loaded.ttft_s:.2f} s ({lat.ratio:.2f}x; 7 decoding: {lat.all_decoding})"
        )
        return runs, lat
    finally:
        ctx.pool.stop(server)


HEADERS = (
    "system",
    "sequential tok/s",
    "concurrent tok/s",
    "speed-up",
    "mean TTFT conc. s",
    "short TTFT idle s",
    "short TTFT loaded s",
    "loaded/idle",
    "7 decoding",
)


def run(ctx: Context) -> SectionResult:
    cfg = QUICK if ctx.quick else FULL
    rows, data, failures = [], {}, []
    for label in SYSTEMS:
        ctx.say(f"  {label}")
        try:
            runs, lat = measure_system(ctx, cfg, label)
        except (BenchError, RuntimeError) as exc:
            failures.append(f"{label}: {exc}")
            rows.append([label, "failed", str(exc)[:60], *[""] * 6])
            continue
        seq, conc = runs["sequential"].aggregate_tok_s, runs["concurrent"].aggregate_tok_s
        mean_ttft = sum(t.ttft_s or 0 for t in runs["concurrent"].timings) / N
        rows.append(
            [
                label,
                f"{seq:.2f}",
                f"{conc:.2f}",
                f"{conc / seq:.2f}x",
                f"{mean_ttft:.1f}",
                f"{lat.idle_ttft:.2f}",
                f"{lat.loaded.ttft_s:.2f}",
                f"{lat.ratio:.2f}x",
                "yes" if lat.all_decoding else "no",
            ]
        )
        data[label] = {
            "sequential_tok_s": seq,
            "concurrent_tok_s": conc,
            "speedup": conc / seq,
            "sequential_wall_s": runs["sequential"].wall_s,
            "concurrent_wall_s": runs["concurrent"].wall_s,
            "short_ttft_idle_s": lat.idle_ttft,
            "short_ttft_loaded_s": lat.loaded.ttft_s,
            "loaded_over_idle": lat.ratio,
            "all_seven_decoding": lat.all_decoding,
            "late_request_delay_s": lat.delay_s,
            "short_prompt_tokens": lat.loaded.prompt_tokens,
        }
    head = (
        f"{N} requests, each ~{cfg.user_tokens} text tokens + its own 224x224 image, "
        f"{cfg.max_tokens} new tokens, greedy, 8-bit KV; short request: ~{cfg.user_tokens} "
        f"text tokens, {cfg.short_tokens} new tokens, alone vs arriving while {N - 1} long "
        f"({cfg.max_tokens}-token) requests decode. Targets: speed-up >= {THROUGHPUT_TARGET}x, "
        f"loaded/idle < {LATENCY_TARGET}x"
    )
    ours = data.get("mlx_server")
    verdict = []
    if ours:
        verdict.append(
            f"mlx_server speed-up {ours['speedup']:.2f}x "
            f"({'met' if ours['speedup'] >= THROUGHPUT_TARGET else 'NOT met'}); "
            f"short TTFT loaded/idle {ours['loaded_over_idle']:.2f}x "
            f"({'met' if ours['loaded_over_idle'] < LATENCY_TARGET else 'NOT met'})"
        )
    text = "\n".join([head, table(HEADERS, rows), *verdict, *failures])
    return SectionResult("concurrency", "failed" if failures else "ok", text, data)
