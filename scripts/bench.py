"""Benchmarks of mlx_server on its bench-size checkpoints, with mlx-vlm as the reference.

    python scripts/bench.py                         # every default section, ~1 hour on 2 CPU cores
    python scripts/bench.py --quick                 # smaller runs, ~25 minutes there
    python scripts/bench.py --sections prefix,constrained --json out.json

Sections (default: all but servers): overhead (server decode speed vs in-process
mlx_vlm.stream_generate, issue 2), prefix (turn-2 vs turn-1 time to first token of a long
conversation, issue 5), concurrency (8 requests at once vs one after another, and a short
request's TTFT under load, issue 6), constrained (json_schema and forced tool calls vs free
decoding, grammar compile cost, issues 3-4), media and constraints (scripts/bench_media.py
and scripts/bench_constraints.py), and on request servers (one short request through ours
and mlx-vlm's servers, including mlx-vlm on the bf16 checkpoint as shipped). Only 127.0.0.1
is used; every server this starts is stopped when it ends, also on Ctrl-C or an error.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from benchlib import concurrency, constrained, hooks, overhead, prefix, servers  # noqa: E402
from benchlib.context import Context, SectionResult  # noqa: E402
from benchlib.procs import ProcessPool  # noqa: E402
from benchlib.report import format_machine, machine_info  # noqa: E402

SECTIONS: dict[str, Callable[[Context], SectionResult]] = {
    "overhead": overhead.run,
    "servers": servers.run,
    "prefix": prefix.run,
    "concurrency": concurrency.run,
    "constrained": constrained.run,
    "media": lambda ctx: hooks.run_hook(ctx, "media", 150 if ctx.quick else 600),
    "constraints": lambda ctx: hooks.run_hook(ctx, "constraints", 150 if ctx.quick else 600),
}
DEFAULT = ("overhead", "prefix", "concurrency", "constrained", "media", "constraints")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options; `--sections` becomes a checked list of names."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--sections", default=",".join(DEFAULT), help="comma-separated: " + ", ".join(SECTIONS)
    )
    p.add_argument("--quick", action="store_true", help="fewer repeats and tokens")
    p.add_argument("--json", type=Path, help="also write all figures to this JSON file")
    p.add_argument("--models-root", type=Path, help="where bench checkpoints are cached")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--request-timeout", type=float, default=300.0, help="seconds per request")
    p.add_argument("--keep-logs", action="store_true", help="keep server logs (path printed)")
    args = p.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        p.error(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    return args


def _on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_sections(ctx: Context, names: list[str]) -> list[SectionResult]:
    """Run each section; a failing section is reported and the next one still runs."""
    results = []
    for name in names:
        ctx.say(f"\n== {name}")
        start = time.perf_counter()
        try:
            res = SECTIONS[name](ctx)
        except Exception as exc:
            res = SectionResult(name, "failed", f"{type(exc).__name__}: {exc}")
            ctx.say(traceback.format_exc(limit=6))
        res.seconds = time.perf_counter() - start
        ctx.say(f"-- {name}: {res.status} in {res.seconds:.0f} s\n{res.text}")
        results.append(res)
    return results


def main(argv: list[str] | None = None) -> int:
    """Run the chosen sections; exit 1 if any failed, 130 when interrupted."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    info = machine_info()
    print(format_machine(info), flush=True)
    work = Path(tempfile.mkdtemp(prefix="mlx-server-bench-"))
    started = time.perf_counter()
    try:
        with ProcessPool() as pool:
            ctx = Context(
                quick=args.quick,
                work_dir=work,
                pool=pool,
                models_root=args.models_root,
                dtype=args.dtype,
                request_timeout_s=args.request_timeout,
                say=lambda s: print(s, flush=True),
            )
            results = run_sections(ctx, args.sections)
    except KeyboardInterrupt:
        print("\ninterrupted; servers stopped", file=sys.stderr)
        return 130
    finally:
        if args.keep_logs:
            print(f"logs: {work}")
        else:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    total = time.perf_counter() - started
    print(
        f"\nall sections done in {total:.0f} s: "
        + ", ".join(f"{r.name} {r.status}" for r in results)
    )
    if args.json:
        doc = {
            "machine": info,
            "quick": args.quick,
            "seconds": total,
            "sections": {
                r.name: {"status": r.status, "seconds": r.seconds, "text": r.text, "data": r.data}
                for r in results
            },
        }
        args.json.write_text(json.dumps(doc, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")
    return 1 if any(r.status == "failed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
