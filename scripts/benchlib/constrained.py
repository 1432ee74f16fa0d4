"""Section `constrained` (issues 3 and 4): what constrained decoding costs through the server.

On the bench-size Qwen2.5-VL, one server, the same image + question, 8-bit KV, greedy:
free decoding, `response_format` json_schema (a typical 8-field annotation schema), the same
schema as a tool's parameters with `tool_choice="auto"` (free decoding, same prompt as the
next) and with `tool_choice="required"` (a forced call). Within each repeat they run in a
rotating order, each with its own tag (no cache serves one from another). Reported: decode
tok/s as the server measures it (its /metrics histograms, per request; the client sees a
tool call only once it is complete), json_schema / free (target >= 0.85x), required / auto
(target: overhead < 15%), and the one-time grammar compile cost, also from /metrics
(`mlx_server_engine_constraints_compile_seconds`).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

import httpx

from . import prompts
from .client import RequestSpec, StreamTiming, stream_chat
from .context import Context, SectionResult
from .harness import BenchError, check, run_requests, summarize_timings
from .procs import Server, free_port, ours_cmd
from .report import fmt_stat, stat, table

ARCH = "qwen2_5_vl"
JSON_TARGET = 0.85
TOOL_TARGET = 0.15
QUESTION = "Annotate this picture: caption, category, objects and where the main one is."


def annotation_schema() -> dict[str, Any]:
    """The annotation schema scripts/bench_constraints.py times in isolation."""
    from bench_constraints import SCHEMA  # scripts/ is on sys.path (bench.py puts it there)

    return SCHEMA


@dataclass(frozen=True)
class Config:
    repeats: int
    max_tokens: int


FULL = Config(3, 128)
QUICK = Config(1, 48)


def variants(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Body fields that make each variant; everything else is the same."""
    tool = {
        "type": "function",
        "function": {
            "name": "annotate",
            "description": "Record an annotation",
            "parameters": schema,
        },
    }
    return {
        "free": {},
        "json_schema": {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "annotation", "schema": schema, "strict": True},
            }
        },
        "tools, tool_choice=auto": {"tools": [tool], "tool_choice": "auto"},
        "tool_choice=required": {"tools": [tool], "tool_choice": "required"},
    }


def make_spec(lm: Any, name: str, extra: dict[str, Any], tag: str, max_tokens: int) -> RequestSpec:
    """The image + question; free decoding cannot stop early (EOS suppressed), constrained
    decoding stops when the grammar completes."""
    msg = prompts.user_message(f"{tag}. {QUESTION}", prompts.image_png(tag))
    free = name in ("free", "tools, tool_choice=auto")
    bias = {"logit_bias": prompts.no_eos_bias(lm.eos_token_ids)} if free else {}
    return RequestSpec(name, [msg], max_tokens, {**bias, **extra})


def server_metrics(base_url: str) -> dict[str, float]:
    """The server's unlabelled /metrics samples, by name."""
    text = httpx.get(base_url + "/metrics", timeout=10).text
    return {
        m.group(1): float(m.group(2))
        for m in re.finditer(r"^(mlx_server_\w+) ([0-9.eE+-]+)$", text, re.M)
    }


DECODE = "mlx_server_decode_tokens_per_second"
TTFT = "mlx_server_time_to_first_token_seconds"
COMPILE = "mlx_server_engine_constraints_compile_seconds"
MISSES = "mlx_server_engine_constraints_misses"


def server_timing(base_url: str, before: dict[str, float]) -> tuple[float | None, float, dict]:
    """(decode tok/s, TTFT s) the server measured for the one request finished since
    `before` (each per-request histogram's sum grows by exactly that request's figure), and
    the new samples. The server times tokens as the engine yields them, before tool-call
    parsing, so this also works for tool calls, whose deltas the client only sees at the end."""
    after = server_metrics(base_url)
    for _ in range(20):  # the request is counted just after its last byte is sent
        if after.get(TTFT + "_count", 0) > before.get(TTFT + "_count", 0):
            break
        time.sleep(0.1)
        after = server_metrics(base_url)
    else:
        raise BenchError("the server's /metrics did not count the request")

    def grew(name: str) -> float | None:
        n = after.get(name + "_count", 0) - before.get(name + "_count", 0)
        return after[name + "_sum"] - before.get(name + "_sum", 0.0) if n == 1 else None

    return grew(DECODE), grew(TTFT) or 0.0, after


def parses(t: StreamTiming) -> bool:
    """Does a json_schema answer that finished on its own parse as JSON?"""
    try:
        json.loads(t.text)
    except ValueError:
        return False
    return True


Rates = dict[str, list[float | None]]


def _measure(ctx: Context, cfg: Config, lm: Any, server: Server) -> tuple[dict, dict, dict]:
    """Timings and server-measured decode rates per variant (one per repeat), and the
    compile seconds of each constrained variant's grammar (compiled on first use)."""
    schema = annotation_schema()
    by_variant: dict[str, list[StreamTiming]] = {name: [] for name in variants(schema)}
    server_rates: Rates = {name: [] for name in by_variant}
    server_ttft: Rates = {name: [] for name in by_variant}
    compile_s: dict[str, float] = {}
    names = list(by_variant)
    for rep in range(cfg.repeats):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            spec = make_spec(lm, name, variants(schema)[name], f"c{rep}-{name}", cfg.max_tokens)
            before = server_metrics(server.base_url)
            t = stream_chat(server.v1, spec, "bench", timeout_s=ctx.request_timeout_s)
            check([t], name)
            rate, ttft, after = server_timing(server.base_url, before)
            if after.get(MISSES, 0) > before.get(MISSES, 0):
                compile_s[name] = after[COMPILE] - before[COMPILE]
            ctx.say(
                f"    {name} #{rep + 1}: {t.completion_tokens} tokens ({t.finish_reason}), "
                f"server {rate or 0:.2f} tok/s, client {t.decode_tok_s or 0:.2f} tok/s"
            )
            by_variant[name].append(t)
            server_rates[name].append(rate)
            server_ttft[name].append(ttft)
    return by_variant, {"decode": server_rates, "ttft": server_ttft}, compile_s


def paired_ratio(rates: Rates, name: str, base: str = "free") -> float | None:
    """Median over repeats of (variant's decode rate / the base's, same repeat)."""
    pairs = zip(rates[name], rates[base], strict=True)
    s = stat([a / b for a, b in pairs if a and b])
    return None if s is None else s.median


HEADERS = ("request", "prompt tok", "new tok", "finish", "TTFT s", "decode tok/s")


def _row(name: str, timings: list[StreamTiming], server: dict[str, Rates]) -> list[str]:
    s = summarize_timings(name, timings)
    return [
        name,
        str(s.prompt_tokens),
        str(s.completion_tokens),
        ",".join(sorted({t.finish_reason or "-" for t in timings})),
        fmt_stat(stat(server["ttft"][name])),
        fmt_stat(stat(server["decode"][name])),
    ]


def run(ctx: Context) -> SectionResult:
    cfg = QUICK if ctx.quick else FULL
    lm = ctx.loaded(ARCH)
    cmd = ours_cmd(lm.path, free_port(), "--dtype", "auto", "--kv-bits", "8")
    server = ctx.pool.start(cmd, "constrained-ours", ctx.work_dir)
    try:
        warm = [RequestSpec("warm", [prompts.user_message("hi", prompts.image_png("warm"))], 4)]
        check(run_requests(server.v1, warm, model="bench").timings, "warm-up")
        by_variant, server_figures, compile_s = _measure(ctx, cfg, lm, server)
    finally:
        ctx.pool.stop(server)
    rates = server_figures["decode"]
    json_ratio = paired_ratio(rates, "json_schema")
    tool_ratio = paired_ratio(rates, "tool_choice=required", "tools, tool_choice=auto")
    finished = [t for t in by_variant["json_schema"] if t.finish_reason == "stop"]
    n_parse = sum(parses(t) for t in finished)
    data = {
        "json_schema_over_free": json_ratio,
        "tool_required_over_auto": tool_ratio,
        "compile_s": compile_s,
        "json_answers_finished": len(finished),
        "json_answers_finished_parsing": n_parse,
        "server": server_figures,
        "summaries": {n: summarize_timings(n, ts).to_json() for n, ts in by_variant.items()},
    }
    lines = [
        f"one 224x224 image + a short question, up to {cfg.max_tokens} new tokens, greedy, "
        f"{cfg.repeats} repeat(s) in rotating order; free decoding has EOS suppressed; TTFT and "
        "decode tok/s as the server measures them (a tool call reaches the client only when whole); "
        "the two tools variants share the tools prompt, so the second of them gets it from the "
        "prefix cache",
        table(HEADERS, [_row(n, ts, server_figures) for n, ts in by_variant.items()]),
        _verdict("json_schema decode speed / free", json_ratio, JSON_TARGET),
        _verdict(
            "tool_choice=required decode speed / tool_choice=auto (same prompt)",
            tool_ratio,
            1 - TOOL_TARGET,
        ),
        "grammar compile, once per schema (server /metrics): "
        + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in compile_s.items()),
        f"json_schema answers that finished: {len(finished)}, of which parse: {n_parse}",
    ]
    return SectionResult("constrained", "ok", "\n".join(lines), data)


def _verdict(what: str, ratio: float | None, floor: float) -> str:
    if ratio is None:
        return f"{what}: no figure"
    return (
        f"{what}: {ratio:.3f}x (target >= {floor:.2f}x: {'met' if ratio >= floor else 'NOT met'})"
    )
