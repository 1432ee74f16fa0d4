"""Summaries and plain-text tables for benchmark results, and the machine they ran on."""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any


@dataclass(frozen=True)
class Stat:
    """Median of repeated measurements with their spread (min..max)."""

    median: float
    lo: float
    hi: float
    n: int

    @property
    def spread_pct(self) -> float:
        """(max - min) / median, in percent: how noisy the repeats were."""
        return 100.0 * (self.hi - self.lo) / self.median if self.median else 0.0

    def to_json(self) -> dict[str, float]:
        return {"median": self.median, "min": self.lo, "max": self.hi, "n": self.n}


def stat(values: Sequence[float | None]) -> Stat | None:
    """Stat of the values that are present; None when there are none."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return Stat(statistics.median(vals), min(vals), max(vals), len(vals))


def fmt_stat(s: Stat | None, digits: int = 2, spread: bool = True) -> str:
    """`12.34 (±3%)` or `12.34` or `-`."""
    if s is None:
        return "-"
    text = f"{s.median:.{digits}f}"
    if spread and s.n > 1:
        text += f" (±{s.spread_pct / 2:.0f}%)"
    return text


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "") -> str:
    """A left-aligned text table; cells are str()-ed, None shows as '-'."""
    cells = [[("-" if c is None else str(c)) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))

    def line(items: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(items, widths)).rstrip()

    out = [title] if title else []
    out += [line(headers), line(["-" * w for w in widths])]
    out += [line(row) for row in cells]
    return "\n".join(out)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for row in f:
                if row.startswith("model name"):
                    return row.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for row in f:
                if row.startswith("MemTotal:"):
                    return int(row.split()[1]) / 2**20
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return None


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict[str, Any]:
    """CPU, cores, RAM, OS, Python and the MLX stack, plus which MLX backend is live."""
    import mlx.core as mx

    backend = "metal" if mx.metal.is_available() else "cpu"
    if backend == "cpu" and getattr(mx, "cuda", None) is not None and mx.cuda.is_available():
        backend = "cuda"
    ram = _ram_gib()
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": None if ram is None else round(ram, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "mlx": _version("mlx"),
        "mlx_vlm": _version("mlx-vlm"),
        "transformers": _version("transformers"),
        "backend": backend,
        "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def load_average() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def format_machine(info: dict[str, Any]) -> str:
    """One paragraph for the top of a report."""
    load = info.get("load_avg")
    load_txt = "" if not load else f", load avg {load[0]:.2f}"
    return (
        f"machine: {info['cpu']}, {info['cores']} cores, {info['ram_gib']} GiB RAM, "
        f"{info['os']}{load_txt}\n"
        f"software: python {info['python']}, mlx {info['mlx']} ({info['backend']} backend), "
        f"mlx-vlm {info['mlx_vlm']}, transformers {info['transformers']}"
    )
