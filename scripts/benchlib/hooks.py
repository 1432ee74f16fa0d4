"""Sections contributed as separate scripts (`scripts/bench_<name>.py`), run as subprocesses.

A hook script is run as `python scripts/bench_<name>.py`, plus `--quick`, `--models-root DIR`
and `--json` when its source mentions those flags, with a time limit. A JSON object printed
last becomes the section's data (and its text, one `key: value` line per figure); otherwise
the output itself is the text. A missing script is skipped, not failed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from .context import Context, SectionResult
from .procs import ROOT

HOOKS = {"media": "bench_media.py", "constraints": "bench_constraints.py"}


def hook_command(script: Path, quick: bool, models_root: Path | None) -> list[str]:
    """The command line for a hook script, with only the flags it declares."""
    source = script.read_text(errors="replace")
    cmd = [sys.executable, str(script)]
    if quick and '"--quick"' in source:
        cmd.append("--quick")
    if models_root is not None and '"--models-root"' in source:
        cmd += ["--models-root", str(models_root)]
    if '"--json"' in source:
        cmd.append("--json")
    return cmd


def _last_json(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def run_hook(ctx: Context, name: str, limit_s: float) -> SectionResult:
    """Run `scripts/bench_<name>.py` if present; a non-zero exit or timeout is `failed`."""
    script = ROOT / "scripts" / HOOKS[name]
    if not script.is_file():
        return SectionResult(name, "skipped", f"skipped: scripts/{script.name} does not exist")
    cmd = hook_command(script, ctx.quick, ctx.models_root)
    ctx.say(f"  running {' '.join(cmd[1:])} (limit {limit_s:.0f} s)")
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,  # so its whole group (servers it starts) can be stopped
    )
    try:
        out, _ = proc.communicate(timeout=limit_s)
    except subprocess.TimeoutExpired:
        _stop_group(proc)
        out, _ = proc.communicate()
        return SectionResult(name, "failed", f"timed out after {limit_s:.0f} s\n{out[-3000:]}")
    except BaseException:
        _stop_group(proc)
        raise
    data = _last_json(out)
    if proc.returncode != 0:
        return SectionResult(name, "failed", f"exit {proc.returncode}\n{out[-3000:]}")
    text = "\n".join(flatten_lines(data)) if data else out.strip()
    return SectionResult(name, "ok", text, {"command": cmd[1:], "output": data or out})


def flatten_lines(data: dict, prefix: str = "") -> list[str]:
    """`a.b: value` lines for a nested JSON object."""
    lines = []
    for key, value in data.items():
        if isinstance(value, dict):
            lines += flatten_lines(value, f"{prefix}{key}.")
        else:
            lines.append(f"{prefix}{key}: {value}")
    return lines


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the hook's process group, SIGKILL if it lingers (only the group we started)."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
