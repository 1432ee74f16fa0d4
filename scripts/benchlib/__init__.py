"""Building blocks of scripts/bench.py. Import with `scripts/` on sys.path: `import benchlib`.

Measuring a server (client.py, harness.py)
    RequestSpec(name, messages, max_tokens=128, extra={}, delay_s=0.0)
        .body(model) -> dict            greedy, stream=True, include_usage; `extra` overrides
    stream_chat(base_url, spec, model, *, timeout_s=300) -> StreamTiming
    run_requests(base_url, specs, *, model, concurrency=1, timeout_s=300) -> RunResult
        RunResult.timings (spec order), .wall_s, .aggregate_tok_s, .ok
    StreamTiming: name, ok, error, ttft_s, decode_tok_s, total_s, prompt_tokens,
        completion_tokens, cached_tokens, token_chunks, finish_reason, text, comments
    timing_from_lines(name, sent_at, [(t, sse_line), ...]) -> StreamTiming   (pure)
    measure(base_url, specs, *, model, repeats=1, concurrency=1, warmup=(), timeout_s=300,
            allow_errors=False) -> list[RunResult]                 one per repeat
    summarize(runs) -> {spec name: SpecSummary(ttft_s, decode_tok_s: Stat, prompt_tok_s, ...)}
    aggregate(runs) -> Stat of generated tokens/s per repeat
    summary_row(system, SpecSummary) -> row for table(SUMMARY_HEADERS, rows)

    decode tok/s = (completion_tokens - 1) / (last token chunk - first token chunk);
    TTFT = request sent -> first chunk with content or a tool call.

Recipes for later sections
    prefix cache, turn 2 vs turn 1: send spec 1, append its `timing.text` as the assistant
        message plus a new user turn, send spec 2; compare ttft_s and read cached_tokens.
    concurrency: run_requests(url, specs_8, model=m, concurrency=8).aggregate_tok_s against
        run_requests(url, specs_8, model=m).aggregate_tok_s (sequential); a late short request
        is a spec with delay_s set, sent in the same concurrent batch.
    constrained vs free decode: two specs differing only in extra={"response_format": ...}.

Servers (procs.py): ProcessPool().start(cmd, name, log_dir, env=None) -> Server(.v1, .base_url);
    ours_cmd(model_dir, port, *flags), mlx_vlm_cmd(model_dir, port, *flags), free_port(),
    apc_env(enabled, cache_home) -> env for mlx-vlm's prefix cache (APC_ENABLED).
Models (models.py): bench_model(arch, root), float32_copy(model_dir), describe(lm).
In-process baselines (inproc.py): load(dir, dtype), time_mlx_vlm(lm, body, ...),
    time_engine(lm, body, ...), engine_prompt(lm, body) -> (GenerationRequest, PromptInputs).
Prompts (prompts.py): text_for_tokens(tokenizer, n, tag), image_png(tag), user_message(text,
    png), no_eos_bias(eos_ids).
Reports (report.py): stat(values) -> Stat(median, lo, hi, n), fmt_stat, table, machine_info.
A section is `run(ctx: Context) -> SectionResult`, registered in bench.py's SECTIONS.
"""
