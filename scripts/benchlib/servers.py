"""Section `servers` (not in the default set): one short request through each server as a
user would start it.

Our server (`--dtype auto`: float32 on CPU), mlx-vlm's server on a float32 copy (the fair
comparison) and on the checkpoint as shipped (bf16: ~10x slower on MLX's CPU backend, which
is why the request is short and why this section is opt-in). Each server runs alone:
started, warmed up, measured with `harness.measure`, stopped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import prompts
from .client import RequestSpec, process_cpu_probe
from .context import Context, SectionResult
from .harness import SUMMARY_HEADERS, BenchError, measure, summarize, summary_row
from .models import float32_copy
from .procs import Server, apc_env, free_port, mlx_vlm_cmd, ours_cmd
from .report import table

ARCH = "qwen2_5_vl"
KV = ("--kv-bits", "8")


def _specs(lm: Any, tag: str, n: int, max_tokens: int) -> list[RequestSpec]:
    text = prompts.text_for_tokens(lm.tokenizer, n, tag)
    bias = {"logit_bias": prompts.no_eos_bias(lm.eos_token_ids)}
    return [RequestSpec("short text", [prompts.user_message(text)], max_tokens, bias)]


PROMPT_TOKENS, MAX_TOKENS = 24, 24


def _starters(ctx: Context, lm: Any) -> list[tuple[str, str, Callable[[], Server]]]:
    """(label, model id to send, start function) per server."""
    env = apc_env(False, ctx.work_dir / "mlx-vlm-cache")
    vlm_kv = (*KV, "--quantized-kv-start", "0", "--max-tokens", "4096")

    def ours() -> Server:
        cmd = ours_cmd(lm.path, free_port(), "--dtype", "auto", *KV)
        return ctx.pool.start(cmd, "servers-ours", ctx.work_dir)

    def vlm(path: str, label: str) -> Callable[[], Server]:
        def start() -> Server:
            cmd = mlx_vlm_cmd(path, free_port(), *vlm_kv)
            return ctx.pool.start(cmd, label, ctx.work_dir, env=env)

        return start

    f32 = str(float32_copy(lm.path))
    return [
        ("mlx_server (dtype auto)", "bench", ours),
        ("mlx-vlm server, float32 copy", f32, vlm(f32, "servers-vlm-f32")),
        ("mlx-vlm server, as shipped (bf16)", str(lm.path), vlm(str(lm.path), "servers-vlm-bf16")),
    ]


def run(ctx: Context) -> SectionResult:
    """Start, warm up, measure and stop each server in turn."""
    lm = ctx.loaded(ARCH)
    warm = _specs(lm, "warm", 4, 2)
    rows, data = [], {}
    for label, model_id, start in _starters(ctx, lm):
        ctx.say(f"  {label}")
        server = start()
        try:
            runs = measure(
                server.v1,
                _specs(lm, "servers", PROMPT_TOKENS, MAX_TOKENS),
                model=model_id,
                warmup=warm,
                timeout_s=ctx.request_timeout_s,
                cpu_probe=process_cpu_probe(server.proc.pid),
            )
        except BenchError as exc:
            rows.append([label, "failed", str(exc)[:60], "", "", ""])
            continue
        finally:
            ctx.pool.stop(server)
        for s in summarize(runs).values():
            rows.append(summary_row(label, s))
            data[label] = s.to_json()
    text = (
        f"one request: ~{PROMPT_TOKENS} user tokens, {MAX_TOKENS} new tokens, greedy, "
        "8-bit KV from token 0, each server alone\n" + table(SUMMARY_HEADERS, rows)
    )
    return SectionResult("servers", "ok", text, data)
