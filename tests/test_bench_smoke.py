"""Smoke test of scripts/bench.py's pure helpers (no model, no server, well under a second).

The benchmark itself is never run by the test suite: its timings are too noisy to assert on."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))

from benchlib import client, harness, hooks, prompts, report  # noqa: E402


def _chunk(content=None, finish=None, usage=None, choices=True) -> str:
    body = {"object": "chat.completion.chunk", "choices": []}
    if choices:
        delta = {} if content is None else {"content": content}
        body["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish}]
    if usage is not None:
        body["usage"] = usage
    return "data: " + json.dumps(body)


def canned_stream() -> list[tuple[float, str]]:
    """Role chunk at 0.5 s, a prefill comment, 5 tokens from 2.0 s every 0.25 s, usage."""
    lines = [(0.5, _chunk(content="")), (0.6, ": prefill 10/20"), (0.6, "")]
    for i, piece in enumerate(["He", "llo", "", " wor", "ld"]):
        lines.append((2.0 + 0.25 * i, _chunk(content=piece)))
    lines.append((3.0, _chunk(finish="length")))
    usage = {
        "prompt_tokens": 20,
        "completion_tokens": 6,
        "prompt_tokens_details": {"cached_tokens": 4},
    }
    lines += [(3.01, _chunk(usage=usage, choices=False)), (3.02, "data: [DONE]")]
    return lines


def test_timing_from_canned_stream():
    t = client.timing_from_lines("x", 0.0, canned_stream())
    assert t.ok and t.error is None
    assert t.ttft_s == pytest.approx(2.0)  # the empty role chunk is not a token
    # 6 tokens (one decoded to no text); first at 2.0 s, the last one is the finish at 3.0 s
    assert t.decode_tok_s == pytest.approx(5 / 1.0)
    assert (t.prompt_tokens, t.completion_tokens, t.cached_tokens) == (20, 6, 4)
    assert t.token_chunks == 4 and t.comments == 1
    assert t.text == "Hello world" and t.finish_reason == "length"
    assert t.total_s == pytest.approx(3.02)


def test_timing_reports_errors_and_truncation():
    err = '{"error": {"message": "boom", "type": "server_error"}}'
    t = client.timing_from_lines("x", 0.0, [(1.0, _chunk(content="a")), (1.1, "data: " + err)])
    assert not t.ok and "boom" in t.error
    cut = client.timing_from_lines("x", 0.0, canned_stream()[:-1])
    assert not cut.ok and "[DONE]" in cut.error
    assert not client.timing_from_lines("x", 0.0, [(0.1, "data: [DONE]")]).ok


def test_request_body_defaults_and_overrides():
    spec = client.RequestSpec("a", [{"role": "user", "content": "hi"}], 7, {"temperature": 0.5})
    body = spec.body("m")
    assert body["model"] == "m" and body["max_tokens"] == 7 and body["temperature"] == 0.5
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


def test_stats_tables_and_summaries():
    s = report.stat([3.0, None, 1.0, 2.0])
    assert (s.median, s.lo, s.hi, s.n) == (2.0, 1.0, 3.0, 3)
    assert report.fmt_stat(s) == "2.00 (±50%)" and report.fmt_stat(None) == "-"
    text = report.table(["a", "bb"], [["xxx", None], [1, 2.5]], title="T")
    assert text.splitlines() == ["T", "a    bb", "---  ---", "xxx  -", "1    2.5"]
    timing = client.timing_from_lines("req", 0.0, canned_stream())
    run = client.RunResult([timing, timing], wall_s=4.0)
    assert run.aggregate_tok_s == pytest.approx(3.0)
    summary = harness.summarize([run])["req"]
    assert summary.n == 2 and summary.prompt_tok_s == pytest.approx(10.0)
    assert harness.summary_row("sys", summary)[:3] == ["sys", "req", "20"]


def test_prompt_helpers_are_deterministic():
    assert prompts.filler(30, "a") == prompts.filler(30, "a") != prompts.filler(30, "b")
    assert prompts.no_eos_bias((5, 7)) == {"5": -100.0, "7": -100.0}
    msg = prompts.user_message("hi", b"\x89PNG")
    assert msg["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")


def test_hook_flags_follow_the_script(tmp_path):
    script = tmp_path / "bench_x.py"
    script.write_text('p.add_argument("--quick")\np.add_argument("--json")\n')
    cmd = hooks.hook_command(script, quick=True, models_root=tmp_path)
    assert cmd[1:] == [str(script), "--quick", "--json"]
    assert hooks.flatten_lines({"a": {"b": 1}, "c": 2}) == ["a.b: 1", "c: 2"]


def test_paired_overheads_by_wall_and_cpu():
    from benchlib import overhead

    def t(tok_s, cpu_ms):
        return client.StreamTiming("v", ok=True, decode_tok_s=tok_s, decode_cpu_ms=cpu_ms)

    runs = {
        overhead.SERVER: [t(9.0, 55.0), t(19.0, 50.0), t(10.0, None)],
        overhead.MLX_VLM: [t(10.0, 50.0), t(20.0, 50.0), t(10.0, 50.0)],
    }
    found = overhead.paired_overheads(runs, overhead.SERVER, overhead.MLX_VLM)
    assert found["wall"]["ratios"] == pytest.approx([0.9, 0.95, 1.0])
    assert found["wall"]["overhead_pct"] == pytest.approx(5.0)
    assert found["cpu"]["ratios"] == pytest.approx([50 / 55, 1.0])
    assert found["best"]["overhead_pct"] == pytest.approx(5.0)  # 19 vs 20
    assert overhead.paired_overheads(runs, overhead.ENGINE, overhead.MLX_VLM) == {}


def test_cpu_probe_reads_this_process():
    import os

    probe = client.process_cpu_probe(os.getpid())
    if probe is None:
        pytest.skip("no /proc on this platform")
    assert probe() > 0
    assert client.per_token_cpu_ms(1.0, 2.0, 11) == pytest.approx(100.0)
    assert client.per_token_cpu_ms(None, 2.0, 11) is None


def test_timing_uses_probed_cpu_of_first_and_last_token():
    # the probed process spent 0.1 s of CPU per line; tokens span lines 3..8 (6 tokens)
    lines = [(t, line, 0.1 * i) for i, (t, line) in enumerate(canned_stream())]
    t = client.timing_from_lines("x", 0.0, lines)
    assert t.decode_cpu_ms == pytest.approx(1000 * 0.5 / 5)


def test_section_helpers_prefix_concurrency_constrained():
    from benchlib import concurrency, constrained, prefix

    first = [{"role": "system", "content": "s"}, {"role": "user", "content": "long"}]
    turn2 = prefix.second_turn(first, "answer")
    assert turn2[:2] == first and turn2[2] == {"role": "assistant", "content": "answer"}
    assert turn2[3]["role"] == "user"
    t = client.StreamTiming
    assert prefix.Turns(t("a", True, ttft_s=10.0), t("b", True, ttft_s=0.5)).ratio == 0.05

    longs = [t(f"l{i}", True, ttft_s=1.0 + i, total_s=30.0) for i in range(7)]
    idle = [t("i", True, ttft_s=s) for s in (1.0, 0.8, 1.2)]
    lat = concurrency.Latency(idle, t("late", True, ttft_s=1.5), longs, delay_s=10.0)
    assert lat.idle_ttft == 1.0 and lat.ratio == 1.5 and lat.all_decoding
    early = concurrency.Latency(idle, lat.loaded, longs, delay_s=5.0)  # l4..l6 not yet decoding
    assert not early.all_decoding

    rates = {"free": [20.0, 10.0, None], "json_schema": [18.0, 10.0, 5.0]}
    assert constrained.paired_ratio(rates, "json_schema") == pytest.approx(0.95)
    names = set(constrained.variants({"type": "object"}))
    assert names == {"free", "json_schema", "tools, tool_choice=auto", "tool_choice=required"}
