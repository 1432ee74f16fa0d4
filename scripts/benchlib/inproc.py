"""In-process baselines on the very prompt our server would build from a request body.

`engine_prompt` turns an OpenAI body into the GenerationRequest and token ids our server
uses (same validation, template, image processing). `time_mlx_vlm` feeds those ids to
`mlx_vlm.stream_generate`; `time_engine` drives our engine's runner without HTTP. Both
return the client-side `StreamTiming`, stamped when each token reaches Python.
"""

from __future__ import annotations

import time
from typing import Any

from .client import StreamTiming, per_token_cpu_ms


def load(model_dir: str, dtype: str = "auto") -> Any:
    """The model exactly as our server loads it (same `--dtype` choice and cast)."""
    from mlx_server.engine.loader import load_model

    return load_model(model_dir, dtype=dtype)


def engine_request(lm: Any, body: dict[str, Any]) -> Any:
    """The GenerationRequest our server builds from an OpenAI chat body."""
    import asyncio

    from mlx_server.api.media import MediaResolver
    from mlx_server.api.protocol import ChatCompletionRequest
    from mlx_server.api.requests import plan_request, to_generation_request
    from mlx_server.config import Settings

    settings = Settings(model=str(lm.path), served_model_name=body.get("model"))
    body = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
    request = ChatCompletionRequest.model_validate(body)
    plan = plan_request(request, settings, request_id="bench")

    async def resolve() -> dict:
        resolver = MediaResolver.from_settings(settings)
        try:
            return await resolver.resolve(plan.media, plan.fps) if plan.media else {}
        finally:
            await resolver.aclose()

    return to_generation_request(request, plan, asyncio.run(resolve()))


def engine_prompt(lm: Any, body: dict[str, Any]) -> tuple[Any, Any]:
    """(GenerationRequest, PromptInputs): the request and the token ids our server uses."""
    from mlx_server.engine.prompt import build_prompt

    req = engine_request(lm, body)
    return req, build_prompt(lm.processor, lm.family, req.messages, req.tools)


def _timing(
    name: str,
    t0: float,
    stamps: list[float],
    cpu: list[float],
    prompt_tokens: int,
    text: str,
    ids: list[int],
) -> StreamTiming:
    """Token arrival times (and this process's CPU seconds at each) -> StreamTiming."""
    n = len(stamps)
    decode = (n - 1) / (stamps[-1] - stamps[0]) if n > 1 and stamps[-1] > stamps[0] else None
    return StreamTiming(
        name=name,
        ok=n > 0,
        error=None if n else "no tokens",
        ttft_s=stamps[0] - t0 if n else None,
        decode_tok_s=decode,
        decode_cpu_ms=per_token_cpu_ms(cpu[0], cpu[-1], n) if n else None,
        total_s=(stamps[-1] if n else time.perf_counter()) - t0,
        prompt_tokens=prompt_tokens,
        completion_tokens=n,
        token_chunks=n,
        finish_reason="length",
        text=text,
        token_ids=tuple(ids),
    )


def time_mlx_vlm(
    lm: Any,
    body: dict[str, Any],
    *,
    kv_bits: int | None = 8,
    kv_group_size: int = 64,
    prefill_step: int = 256,
    name: str = "mlx-vlm stream_generate",
) -> StreamTiming:
    """`mlx_vlm.stream_generate` on our prompt's token ids, greedy, with an 8-bit KV cache
    quantized from token 0 and the request's logit_bias. The clock starts before prompt
    building (template, tokenising, image processing), as it does for a server request."""
    import mlx.core as mx
    from mlx_vlm import stream_generate

    t0 = time.perf_counter()
    req, prompt = engine_prompt(lm, body)
    inputs = dict(prompt.model_inputs)
    kv = {"kv_bits": kv_bits, "kv_group_size": kv_group_size, "quantized_kv_start": 0}
    stamps: list[float] = []
    cpu: list[float] = []
    ids: list[int] = []
    for result in stream_generate(
        lm.model,
        lm.processor,
        "",
        input_ids=mx.array([prompt.token_ids]),
        pixel_values=inputs.pop("pixel_values", None),
        mask=None,
        max_tokens=req.sampling.max_tokens,
        temperature=0.0,
        logit_bias=dict(req.sampling.logit_bias) or None,
        prefill_step_size=prefill_step,
        **(kv if kv_bits else {}),
        **inputs,
    ):
        if result.finish_reason is not None:  # the closing summary, not another token
            break
        stamps.append(time.perf_counter())
        cpu.append(time.process_time())
        ids.append(int(result.token))
    # Our server's text for these ids (mlx-vlm's own detokenizer drops incomplete UTF-8).
    text = lm.tokenizer.decode(ids, skip_special_tokens=False)
    return _timing(name, t0, stamps, cpu, len(prompt.token_ids), text, ids)


def time_engine(
    lm: Any,
    body: dict[str, Any],
    *,
    kv_bits: int | None = 8,
    kv_group_size: int = 64,
    prefill_step: int = 256,
    name: str = "mlx_server engine (no HTTP)",
) -> StreamTiming:
    """Our engine's runner stepped in this thread, no worker thread and no HTTP: the
    difference to the server is the serving path, the difference to mlx-vlm the engine."""
    from mlx_server.engine.runner import MLXRunner
    from mlx_server.engine.types import TokenEvent

    runner = MLXRunner(lm, kv_bits=kv_bits, kv_group_size=kv_group_size, prefill_step=prefill_step)
    t0 = time.perf_counter()
    seq, _ = runner.start(engine_request(lm, body))
    stamps: list[float] = []
    cpu: list[float] = []
    pieces: list[str] = []
    ids: list[int] = []
    try:
        while not seq.finished:
            for ev in runner.step([seq])[seq]:
                if isinstance(ev, TokenEvent):
                    stamps.append(time.perf_counter())
                    cpu.append(time.process_time())
                    pieces.append(ev.text)
                    ids.extend(ev.token_ids)
    finally:
        seq.close(cancelled=not seq.finished)
    return _timing(name, t0, stamps, cpu, seq.prompt_len, "".join(pieces), ids)
