"""Section `prefix` (issue 5): time to first token of turn 2 vs turn 1 of a long conversation.

An IDE-assistant-like conversation on each bench-size family (Qwen2.5-VL, Gemma 3): a system
prompt and a ~2000-token user turn (optionally with an image), then turn 2 = turn 1, the
assistant's answer and a short new question. Turn 2 shares turn 1's whole prompt as a prefix,
so with prefix reuse its TTFT collapses to the cost of the new tokens. Measured on our server
and on mlx-vlm's server (float32 copy, same 8-bit KV cache) with its automatic prefix cache
(APC) on and off. Each server runs alone; every conversation has its own tag, so nothing is
served from an earlier conversation's cache. Target: warm/cold TTFT <= 0.15 for ours.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import prompts
from .client import RequestSpec, StreamTiming, stream_chat
from .context import Context, SectionResult
from .harness import BenchError, check, run_requests
from .models import float32_copy
from .procs import Server, apc_env, free_port, mlx_vlm_cmd, ours_cmd
from .report import table

ARCHS = ("qwen2_5_vl", "gemma3")
TARGET = 0.15
SYSTEM = (
    "You are a careful coding assistant inside an editor. Answer briefly, cite the file you "
    "mean, and never invent functions that are not in the files you were shown."
)
QUESTION = "Now say in one short line which object was picked first."
KV = ("--kv-bits", "8")
VLM_KV = (*KV, "--quantized-kv-start", "0", "--max-tokens", "4096")


@dataclass(frozen=True)
class Config:
    prompt_tokens: int  # user tokens of turn 1
    answer_tokens: int  # tokens the assistant generates per turn


FULL = Config(2000, 16)
QUICK = Config(300, 8)


@dataclass(frozen=True)
class Turns:
    """Both turns of one conversation as the client saw them."""

    first: StreamTiming
    second: StreamTiming

    @property
    def ratio(self) -> float | None:
        if not (self.first.ttft_s and self.second.ttft_s):
            return None
        return self.second.ttft_s / self.first.ttft_s


def first_turn(lm: Any, cfg: Config, tag: str, image: bool) -> list[dict[str, Any]]:
    """System prompt + a long user turn (the image first, when asked)."""
    text = prompts.text_for_tokens(lm.tokenizer, cfg.prompt_tokens, tag)
    png = prompts.image_png(tag) if image else None
    return [{"role": "system", "content": SYSTEM}, prompts.user_message(text, png)]


def second_turn(messages: list[dict[str, Any]], answer: str) -> list[dict[str, Any]]:
    """Turn 1, the assistant's answer to it, and a short new question."""
    return [*messages, {"role": "assistant", "content": answer}, prompts.user_message(QUESTION)]


def conversation(
    url: str, model: str, lm: Any, cfg: Config, tag: str, image: bool, timeout_s: float
) -> Turns:
    """Send turn 1, then turn 2 built from turn 1's streamed answer."""
    bias = {"logit_bias": prompts.no_eos_bias(lm.eos_token_ids)}
    msgs = first_turn(lm, cfg, tag, image)
    t1 = stream_chat(
        url, RequestSpec("turn 1", msgs, cfg.answer_tokens, bias), model, timeout_s=timeout_s
    )
    check([t1], f"{url} turn 1")
    spec2 = RequestSpec("turn 2", second_turn(msgs, t1.text), cfg.answer_tokens, bias)
    t2 = stream_chat(url, spec2, model, timeout_s=timeout_s)
    check([t2], f"{url} turn 2")
    return Turns(t1, t2)


Starter = Callable[[Context, Any, str], tuple[Server, str]]


def _ours(ctx: Context, lm: Any, arch: str) -> tuple[Server, str]:
    cmd = ours_cmd(lm.path, free_port(), "--dtype", "auto", *KV)
    return ctx.pool.start(cmd, f"prefix-ours-{arch}", ctx.work_dir), "bench"


def _vlm(apc: bool) -> Starter:
    def start(ctx: Context, lm: Any, arch: str) -> tuple[Server, str]:
        f32 = str(float32_copy(lm.path))
        env = apc_env(apc, ctx.work_dir / f"apc-{arch}")
        name = f"prefix-vlm-{'apc' if apc else 'noapc'}-{arch}"
        return ctx.pool.start(
            mlx_vlm_cmd(f32, free_port(), *VLM_KV), name, ctx.work_dir, env=env
        ), f32

    return start


SYSTEMS: dict[str, Starter] = {
    "mlx_server": _ours,
    "mlx-vlm server, APC on": _vlm(True),
    "mlx-vlm server, APC off": _vlm(False),
}


def _warm_up(url: str, model: str, lm: Any, timeout_s: float) -> None:
    """One short request with an image: compiles the kernels both turns will use."""
    spec = RequestSpec("warm-up", [prompts.user_message("hello", prompts.image_png("warm"))], 2)
    check(run_requests(url, [spec], model=model, timeout_s=timeout_s).timings, "warm-up")


def measure_system(ctx: Context, cfg: Config, arch: str, label: str) -> dict[str, Turns]:
    """Start one server, warm it up, run the text and the image conversation, stop it."""
    lm = ctx.loaded(arch)
    server, model = SYSTEMS[label](ctx, lm, arch)
    try:
        _warm_up(server.v1, model, lm, ctx.request_timeout_s)
        out = {}
        for variant in ("text", "image"):
            tag = f"prefix-{arch}-{label}-{variant}"
            turns = conversation(
                server.v1, model, lm, cfg, tag, variant == "image", ctx.request_timeout_s
            )
            out[variant] = turns
            ctx.say(f"    {label:<24} {variant:<5} " + _line(turns))
        return out
    finally:
        ctx.pool.stop(server)


def _line(t: Turns) -> str:
    r = t.ratio
    return (
        f"turn 1 {t.first.prompt_tokens} tok TTFT {t.first.ttft_s:.2f} s; "
        f"turn 2 {t.second.prompt_tokens} tok ({t.second.cached_tokens} cached) "
        f"TTFT {t.second.ttft_s:.2f} s; ratio {'-' if r is None else f'{r:.3f}'}"
    )


HEADERS = (
    "model",
    "system",
    "turn 1",
    "turn-1 tok",
    "TTFT 1 s",
    "turn-2 tok",
    "cached",
    "TTFT 2 s",
    "warm/cold",
)


def run(ctx: Context) -> SectionResult:
    """Every family x system x {text, image}; report ratios and whether ours meets the target."""
    cfg = QUICK if ctx.quick else FULL
    rows, data, ours_ratios, failures = [], {}, [], []
    for arch in ARCHS:
        for label in SYSTEMS:
            ctx.say(f"  {arch}: {label}")
            try:
                results = measure_system(ctx, cfg, arch, label)
            except (BenchError, RuntimeError) as exc:
                failures.append(f"{arch} / {label}: {exc}")
                rows.append([arch, label, "failed", str(exc)[:60], "", "", "", "", ""])
                continue
            for variant, t in results.items():
                rows.append(_row(arch, label, variant, t))
                data.setdefault(arch, {}).setdefault(label, {})[variant] = _json(t)
                if label == "mlx_server":
                    ours_ratios.append(t.ratio)
    met = bool(ours_ratios) and all(r is not None and r <= TARGET for r in ours_ratios)
    worst = max((r for r in ours_ratios if r is not None), default=None)
    verdict = (
        f"mlx_server worst warm/cold {worst:.3f} (target <= {TARGET}): {'met' if met else 'NOT met'}"
        if worst is not None
        else "no mlx_server figures"
    )
    head = (
        f"~{cfg.prompt_tokens}-token user turn (+ system prompt; + one 224x224 image for 'image'),"
        f" {cfg.answer_tokens} new tokens per turn, greedy, 8-bit KV; turn 2 = turn 1 + answer +"
        " a short question"
    )
    data["target"] = {"max_ratio": TARGET, "worst_ours": worst, "met": met}
    text = "\n".join([head, table(HEADERS, rows), verdict, *failures])
    return SectionResult("prefix", "failed" if failures else "ok", text, data)


def _row(arch: str, label: str, variant: str, t: Turns) -> list[str]:
    r = t.ratio
    return [
        arch,
        label,
        variant,
        str(t.first.prompt_tokens),
        f"{t.first.ttft_s:.2f}",
        str(t.second.prompt_tokens),
        str(t.second.cached_tokens),
        f"{t.second.ttft_s:.2f}",
        "-" if r is None else f"{r:.3f}",
    ]


def _json(t: Turns) -> dict[str, Any]:
    return {
        "turn1": {"prompt_tokens": t.first.prompt_tokens, "ttft_s": t.first.ttft_s},
        "turn2": {
            "prompt_tokens": t.second.prompt_tokens,
            "cached_tokens": t.second.cached_tokens,
            "ttft_s": t.second.ttft_s,
        },
        "ratio": t.ratio,
    }
