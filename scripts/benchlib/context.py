"""What every benchmark section gets (`Context`) and gives back (`SectionResult`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .procs import ProcessPool


@dataclass
class SectionResult:
    """A section's report: text for the terminal, data for --json."""

    name: str
    status: str  # ok | skipped | failed
    text: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class Context:
    """Run-wide settings and shared state. Sections start servers through `pool` (stopped
    when the run ends, whatever happens) and load models through `loaded` (once per run)."""

    quick: bool
    work_dir: Path  # temp dir for logs and caches of this run
    pool: ProcessPool
    models_root: Path | None = None
    dtype: str = "auto"
    request_timeout_s: float = 300.0
    say: Callable[[str], None] = print
    _loaded: dict[str, Any] = field(default_factory=dict)

    def model_dir(self, arch: str) -> Path:
        """The bench-size checkpoint of `arch` (gemma3, qwen2_5_vl, qwen2_vl)."""
        from .models import bench_model

        return bench_model(arch, self.models_root)

    def loaded(self, arch: str) -> Any:
        """The bench checkpoint loaded in this process exactly as our server loads it."""
        if arch not in self._loaded:
            from .inproc import load

            self._loaded[arch] = load(str(self.model_dir(arch)), self.dtype)
        return self._loaded[arch]
