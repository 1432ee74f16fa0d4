"""Section `overhead` (issue 2): our server's decode speed against in-process mlx-vlm.

Same bench-size Qwen2.5-VL, same compute dtype, same prompt token ids, greedy, EOS
suppressed so every run makes exactly max_tokens, 8-bit KV cache from token 0 and the same
prefill chunk on both sides. Systems are run one after another in a rotating order within
each repeat, and the overhead is the median of the per-repeat paired ratios.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import inproc, prompts
from .client import RequestSpec, StreamTiming, get_json, stream_chat
from .context import Context, SectionResult
from .harness import SUMMARY_HEADERS, BenchError, check, measure, summarize_timings, summary_row
from .models import describe, float32_copy
from .procs import apc_env, free_port, mlx_vlm_cmd, ours_cmd
from .report import stat, table

ARCH = "qwen2_5_vl"
PREFILL_STEP = 256
KV_BITS = 8
SERVER, ENGINE, MLX_VLM = (
    "mlx_server (HTTP, streamed)",
    "mlx_server engine (no HTTP)",
    "mlx-vlm stream_generate",
)
VLM_SERVER = "mlx-vlm server (float32 copy)"


@dataclass(frozen=True)
class Config:
    repeats: int
    prompt_tokens: int
    max_tokens: int
    variants: tuple[str, ...]


FULL = Config(repeats=3, prompt_tokens=240, max_tokens=128, variants=("text", "image"))
QUICK = Config(repeats=1, prompt_tokens=96, max_tokens=64, variants=("text",))


def make_spec(lm: Any, variant: str, tag: str, prompt_tokens: int, max_tokens: int) -> RequestSpec:
    """A greedy request of about `prompt_tokens` user tokens (+ one 224x224 image for
    `image`) that cannot stop before `max_tokens`."""
    text = prompts.text_for_tokens(lm.tokenizer, prompt_tokens, tag)
    png = prompts.image_png(tag) if variant == "image" else None
    return RequestSpec(
        name=variant,
        messages=[prompts.user_message(text, png)],
        max_tokens=max_tokens,
        extra={"logit_bias": prompts.no_eos_bias(lm.eos_token_ids)},
    )


def _systems(
    ctx: Context, lm: Any, server_v1: str
) -> dict[str, Callable[[RequestSpec], StreamTiming]]:
    kv = {"kv_bits": KV_BITS, "prefill_step": PREFILL_STEP}
    timeout = ctx.request_timeout_s
    return {
        SERVER: lambda spec: stream_chat(server_v1, spec, "bench", timeout_s=timeout),
        ENGINE: lambda spec: inproc.time_engine(lm, spec.body("bench"), **kv),
        MLX_VLM: lambda spec: inproc.time_mlx_vlm(lm, spec.body("bench"), **kv),
    }


def _start_ours(ctx: Context, lm: Any):
    dtype = str(lm.dtype).replace("mlx.core.", "")
    extra = ("--dtype", dtype, "--kv-bits", str(KV_BITS), "--prefill-step-size", str(PREFILL_STEP))
    server = ctx.pool.start(ours_cmd(lm.path, free_port(), *extra), "mlx_server", ctx.work_dir)
    health = get_json(server.base_url + "/health")
    if health.get("dtype") not in (None, dtype):
        raise BenchError(f"server runs {health.get('dtype')}, the baseline {dtype}")
    return server


def _paired(results: dict[str, list[StreamTiming]], a: str, b: str) -> list[float]:
    return [
        x.decode_tok_s / y.decode_tok_s
        for x, y in zip(results[a], results[b])
        if x.decode_tok_s and y.decode_tok_s
    ]


def _vlm_server(ctx: Context, lm: Any, specs: list[RequestSpec], warm: list[RequestSpec]):
    """mlx-vlm's own server on a float32 copy, same KV settings, for context."""
    f32 = float32_copy(lm.path)
    extra = ("--kv-bits", str(KV_BITS), "--quantized-kv-start", "0")
    extra += ("--prefill-step-size", str(PREFILL_STEP), "--max-tokens", "4096")
    env = apc_env(False, ctx.work_dir / "mlx-vlm-cache")
    server = ctx.pool.start(mlx_vlm_cmd(f32, free_port(), *extra), "mlx-vlm", ctx.work_dir, env=env)
    try:
        runs = measure(
            server.v1, specs, model=str(f32), warmup=warm, timeout_s=ctx.request_timeout_s
        )
    finally:
        ctx.pool.stop(server)
    return runs[0].timings


def _interleaved(ctx: Context, cfg: Config, lm: Any, systems: dict[str, Callable]) -> dict:
    """{variant: {system: [timing per repeat]}}, systems in a rotating order per repeat."""
    results = {v: {name: [] for name in systems} for v in cfg.variants}
    names = list(systems)
    for rep in range(cfg.repeats):
        for variant in cfg.variants:
            spec = make_spec(lm, variant, f"r{rep}", cfg.prompt_tokens, cfg.max_tokens)
            for name in names[rep % len(names) :] + names[: rep % len(names)]:
                t = systems[name](spec)
                check([t], name)
                ctx.say(
                    f"  {variant} #{rep + 1} {name}: TTFT {t.ttft_s:.2f} s, "
                    f"{t.decode_tok_s:.2f} tok/s"
                )
                results[variant][name].append(t)
    return results


def run(ctx: Context) -> SectionResult:
    """Warm every system up, measure them interleaved, then mlx-vlm's server for context."""
    cfg = QUICK if ctx.quick else FULL
    lm = ctx.loaded(ARCH)
    model = describe(lm)
    server = _start_ours(ctx, lm)
    systems = _systems(ctx, lm, server.v1)
    warm = [make_spec(lm, v, "warm", 16, 8) for v in cfg.variants]
    for name, fn in systems.items():
        ctx.say(f"  warm-up: {name}")
        check([fn(spec) for spec in warm], f"warm-up of {name}")
    results = _interleaved(ctx, cfg, lm, systems)
    ctx.pool.stop(server)
    vlm_specs = [make_spec(lm, v, "vlm", cfg.prompt_tokens, cfg.max_tokens) for v in cfg.variants]
    try:
        for t in _vlm_server(ctx, lm, vlm_specs, warm):
            results[t.name][VLM_SERVER] = [t]
    except (BenchError, RuntimeError) as exc:  # context only: report and carry on
        ctx.say(f"  mlx-vlm server failed: {exc}")
    lines = [
        f"model: bench-size {model['family']}, {model['params_m']} M params "
        f"({model['lm_params_m']} M language model), {model['quantization']}, compute dtype "
        f"{model['dtype']}, KV {KV_BITS}-bit from token 0, prefill step {PREFILL_STEP}",
        f"requests: ~{cfg.prompt_tokens} user tokens of text (image variant: +1 224x224 "
        f"image), greedy, {cfg.max_tokens} new tokens (EOS suppressed), "
        f"{cfg.repeats} repeat(s)",
    ]
    data: dict[str, Any] = {"model": model, "config": cfg.__dict__, "variants": {}}
    for variant, by_system in results.items():
        text, data["variants"][variant] = _variant_report(variant, by_system)
        lines += ["", text]
    return SectionResult("overhead", "ok", "\n".join(lines), data)


COMPARISONS = (
    (SERVER, MLX_VLM, "server overhead vs mlx-vlm"),
    (ENGINE, MLX_VLM, "engine overhead vs mlx-vlm"),
    (SERVER, ENGINE, "HTTP path overhead vs engine"),
)


def _variant_report(variant: str, by_system: dict[str, list[StreamTiming]]):
    """(text, data) of one variant: the table, paired overheads and output agreement."""
    rows, data = [], {}
    for name, timings in by_system.items():
        s = summarize_timings(variant, timings)
        rows.append(summary_row(name, s))
        data[name] = {**s.to_json(), "runs": [t.decode_tok_s for t in timings]}
    lines = [table(SUMMARY_HEADERS, rows, title=f"[{variant}]")]
    for a, b, label in COMPARISONS:
        ratios = _paired(by_system, a, b)
        r = stat(ratios)
        if r is None:
            continue
        pct = 100 * (1 - r.median)
        each = ", ".join(f"{x:.3f}" for x in ratios)
        lines.append(f"{label}: {pct:+.1f}% of decode speed (speed ratios per repeat: {each})")
        data[label + " %"] = pct
    lines.append("greedy text vs mlx-vlm stream_generate: " + _agreement(by_system))
    return "\n".join(lines), data


def _agreement(by_system: dict[str, list[StreamTiming]]) -> str:
    """Where each system's first-repeat text departs from mlx-vlm's (near-tied logits of a
    random-weight model can flip a greedy pick when the KV cache was quantized differently)."""
    ref = by_system[MLX_VLM][0].text
    out = []
    for name, timings in by_system.items():
        if name == MLX_VLM or not timings:
            continue
        text = timings[0].text
        if text == ref:
            out.append(f"{name}: identical")
            continue
        n = next((i for i, (a, b) in enumerate(zip(text, ref)) if a != b), min(len(text), len(ref)))
        out.append(f"{name}: same first {n} of {len(ref)} chars")
    if by_system[SERVER] and by_system[ENGINE]:
        same = by_system[SERVER][0].text == by_system[ENGINE][0].text
        out.append(f"server vs engine: {'identical' if same else 'DIFFERENT'}")
    return "; ".join(out)
