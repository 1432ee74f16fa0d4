"""Section `overhead` (issue 2): our server's decode speed against in-process mlx-vlm.

Same bench-size Qwen2.5-VL, same compute dtype, same prompt token ids, greedy, EOS
suppressed so every run makes exactly max_tokens, 8-bit KV cache from token 0 and the same
prefill chunk on both sides. Within each repeat the systems run one after another in a
rotating order; overheads are medians of per-repeat paired ratios, of wall-clock decode
speed (what a user sees) and of CPU time per token (what the serving path costs; much less
disturbed by other work on a shared machine).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from . import inproc, prompts
from .client import RequestSpec, StreamTiming, get_json, process_cpu_probe, stream_chat
from .context import Context, SectionResult
from .harness import SUMMARY_HEADERS, BenchError, check, measure, summarize_timings, summary_row
from .models import describe, float32_copy
from .procs import Server, apc_env, free_port, mlx_vlm_cmd, ours_cmd
from .report import load_average, stat, table

ARCH = "qwen2_5_vl"
PREFILL_STEP = 256
KV_BITS = 8
SERVER = "mlx_server (HTTP, streamed)"
ENGINE = "mlx_server engine (no HTTP)"
MLX_VLM = "mlx-vlm stream_generate"
VLM_SERVER = "mlx-vlm server (float32 copy)"
System = Callable[[RequestSpec], StreamTiming]


@dataclass(frozen=True)
class Config:
    """Sizes of one overhead run (full or --quick)."""

    repeats: int
    max_tokens: int
    prompt_tokens: dict[str, int]  # user text tokens per variant ("image" adds one image)
    engine_variants: tuple[str, ...]  # where the no-HTTP engine row is measured too

    @property
    def variants(self) -> tuple[str, ...]:
        return tuple(self.prompt_tokens)


FULL = Config(3, 128, {"text": 192, "image": 64}, ("text",))
QUICK = Config(1, 64, {"text": 96}, ("text",))


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


def _systems(ctx: Context, lm: Any, server: Server) -> dict[str, System]:
    kv = {"kv_bits": KV_BITS, "prefill_step": PREFILL_STEP}
    timeout = ctx.request_timeout_s
    probe = process_cpu_probe(server.proc.pid)
    return {
        SERVER: lambda s: stream_chat(server.v1, s, "bench", timeout_s=timeout, cpu_probe=probe),
        ENGINE: lambda s: inproc.time_engine(lm, s.body("bench"), **kv),
        MLX_VLM: lambda s: inproc.time_mlx_vlm(lm, s.body("bench"), **kv),
    }


def _start_ours(ctx: Context, lm: Any) -> Server:
    dtype = str(lm.dtype).replace("mlx.core.", "")
    extra = ("--dtype", dtype, "--kv-bits", str(KV_BITS), "--prefill-step-size", str(PREFILL_STEP))
    server = ctx.pool.start(ours_cmd(lm.path, free_port(), *extra), "mlx_server", ctx.work_dir)
    health = get_json(server.base_url + "/health")
    if health.get("dtype") not in (None, dtype):
        raise BenchError(f"server runs {health.get('dtype')}, the baseline {dtype}")
    return server


def _vlm_server(ctx: Context, lm: Any, specs: list[RequestSpec], warm: list[RequestSpec]):
    """mlx-vlm's own server on a float32 copy, same KV settings, for context."""
    f32 = float32_copy(lm.path)
    extra = ("--kv-bits", str(KV_BITS), "--quantized-kv-start", "0")
    extra += ("--prefill-step-size", str(PREFILL_STEP), "--max-tokens", "4096")
    env = apc_env(False, ctx.work_dir / "mlx-vlm-cache")
    server = ctx.pool.start(mlx_vlm_cmd(f32, free_port(), *extra), "mlx-vlm", ctx.work_dir, env=env)
    try:
        runs = measure(
            server.v1,
            specs,
            model=str(f32),
            warmup=warm,
            timeout_s=ctx.request_timeout_s,
            cpu_probe=process_cpu_probe(server.proc.pid),
        )
    finally:
        ctx.pool.stop(server)
    return runs[0].timings


def _interleaved(ctx: Context, cfg: Config, lm: Any, systems: dict[str, System]) -> dict:
    """{variant: {system: [timing per repeat]}}, systems in a rotating order per repeat."""
    results: dict[str, dict[str, list[StreamTiming]]] = {}
    for variant in cfg.variants:
        names = [n for n in systems if n != ENGINE or variant in cfg.engine_variants]
        results[variant] = {n: [] for n in names}
    for rep in range(cfg.repeats):
        for variant, by_system in results.items():
            n_tok = cfg.prompt_tokens[variant]
            spec = make_spec(lm, variant, f"r{rep}", n_tok, cfg.max_tokens)
            names = list(by_system)
            for name in names[rep % len(names) :] + names[: rep % len(names)]:
                t = systems[name](spec)
                check([t], name)
                ctx.say(
                    f"  {variant} #{rep + 1} {name}: TTFT {t.ttft_s:.2f} s, "
                    f"{t.decode_tok_s:.2f} tok/s, {t.decode_cpu_ms or 0:.1f} CPU ms/tok"
                )
                by_system[name].append(t)
    return results


def run(ctx: Context) -> SectionResult:
    """Warm every system up, measure them interleaved, then mlx-vlm's server for context."""
    cfg = QUICK if ctx.quick else FULL
    load_before = load_average()
    lm = ctx.loaded(ARCH)
    model = describe(lm)
    server = _start_ours(ctx, lm)
    systems = _systems(ctx, lm, server)
    warm = [make_spec(lm, v, "warm", 16, 8) for v in cfg.variants]
    for name, fn in systems.items():
        ctx.say(f"  warm-up: {name}")
        check([fn(spec) for spec in warm], f"warm-up of {name}")
    results = _interleaved(ctx, cfg, lm, systems)
    ctx.pool.stop(server)
    vlm_specs = [
        make_spec(lm, v, "vlm", cfg.prompt_tokens[v], cfg.max_tokens) for v in cfg.variants
    ]
    try:
        for t in _vlm_server(ctx, lm, vlm_specs, warm):
            results[t.name][VLM_SERVER] = [t]
    except (BenchError, RuntimeError) as exc:  # context only: report and carry on
        ctx.say(f"  mlx-vlm server failed: {exc}")
    lines = [
        f"model: bench-size {model['family']}, {model['params_m']} M params "
        f"({model['lm_params_m']} M language model), {model['quantization']}, compute dtype "
        f"{model['dtype']}, KV {KV_BITS}-bit from token 0, prefill step {PREFILL_STEP}",
        f"requests: greedy, {cfg.max_tokens} new tokens (EOS suppressed), {cfg.repeats} "
        f"repeat(s); user text tokens {cfg.prompt_tokens} (image: + one 224x224 image)",
        f"1-minute load average before/after: {load_before} / {load_average()} "
        "(above ~1 on 2 cores, other work disturbs wall-clock figures; CPU ms/tok much less)",
    ]
    data: dict[str, Any] = {
        "model": model,
        "config": cfg.__dict__,
        "load_avg": [load_before, load_average()],
        "variants": {},
    }
    for variant, by_system in results.items():
        text, data["variants"][variant] = _variant_report(variant, by_system)
        lines += ["", text]
    return SectionResult("overhead", "ok", "\n".join(lines), data)


COMPARISONS = (
    (SERVER, MLX_VLM, "server vs mlx-vlm"),
    (ENGINE, MLX_VLM, "engine vs mlx-vlm"),
    (SERVER, ENGINE, "HTTP path vs engine"),
)


HOW = {"wall": "paired wall", "best": "best run", "cpu": "CPU/token"}


def paired_overheads(by_system: dict[str, list[StreamTiming]], a: str, b: str) -> dict:
    """Overhead of system `a` against `b` in %, three ways: `wall`, 1 - the median of the
    per-repeat ratios of decode tok/s; `best`, 1 - the ratio of each side's fastest repeat
    (other work only ever slows a run down, so the best run is the least disturbed); `cpu`,
    the same median over CPU ms per token. Figures a run lacks are skipped."""
    if a not in by_system or b not in by_system:
        return {}
    pairs = list(zip(by_system[a], by_system[b]))
    wall = [x.decode_tok_s / y.decode_tok_s for x, y in pairs if x.decode_tok_s and y.decode_tok_s]
    cpu = [
        y.decode_cpu_ms / x.decode_cpu_ms for x, y in pairs if x.decode_cpu_ms and y.decode_cpu_ms
    ]
    best_a = max((t.decode_tok_s or 0.0 for t in by_system[a]), default=0.0)
    best_b = max((t.decode_tok_s or 0.0 for t in by_system[b]), default=0.0)
    best = [best_a / best_b] if best_a and best_b else []
    out = {}
    for key, ratios in (("wall", wall), ("best", best), ("cpu", cpu)):
        s = stat(ratios)
        if s is not None:
            out[key] = {"overhead_pct": 100 * (1 - s.median), "ratios": ratios}
    return out


def _variant_report(variant: str, by_system: dict[str, list[StreamTiming]]):
    """(text, data) of one variant: the table, paired overheads and output agreement."""
    rows, data = [], {}
    for name, timings in by_system.items():
        s = summarize_timings(variant, timings)
        rows.append(summary_row(name, s))
        data[name] = s.to_json()
    lines = [table(SUMMARY_HEADERS, rows, title=f"[{variant}]")]
    for a, b, label in COMPARISONS:
        found = paired_overheads(by_system, a, b)
        data[label] = found
        parts = [
            f"{HOW[k]} {v['overhead_pct']:+.1f}% ({', '.join(f'{r:.3f}' for r in v['ratios'])})"
            for k, v in found.items()
        ]
        if parts:
            lines.append(f"overhead, {label}: " + "; ".join(parts))
    lines.append("output vs mlx-vlm stream_generate: " + _agreement(by_system))
    return "\n".join(lines), data


def _common_prefix(a: Sequence, b: Sequence) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _agreement(by_system: dict[str, list[StreamTiming]]) -> str:
    """How far the first repeat's output of ours matches mlx-vlm's: token ids for the engine,
    text (mlx-vlm's ids decoded by our tokenizer) for the server. Greedy picks can flip on
    near-tied logits of a random-weight model; mlx-vlm's server renders its own prompt, so
    it is left out."""
    ref = by_system[MLX_VLM][0]
    out = []
    if by_system.get(ENGINE):
        ids = by_system[ENGINE][0].token_ids
        same = ids == ref.token_ids
        k = _common_prefix(ids, ref.token_ids)
        out.append(
            f"engine token ids {'identical' if same else f'same first {k}'} of {len(ref.token_ids)}"
        )
    text = by_system[SERVER][0].text
    same = text == ref.text
    k = _common_prefix(text, ref.text)
    out.append(f"server text {'identical' if same else f'same first {k}'} of {len(ref.text)} chars")
    return "; ".join(out)
