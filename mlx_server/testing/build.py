"""Build tiny random-weight checkpoints, and cache them across test runs and processes."""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import tempfile
from importlib import metadata, resources
from pathlib import Path
from typing import Any

from . import families, gemma3, qwen_vl, weights

ARCHS = ("gemma3", "qwen2_5_vl", "qwen2_vl")
SIZES = ("tiny", "bench")
DEFAULT_CACHE_ROOT = Path("~/.cache/mlx_server/tiny-models")
# mlx-vlm's converter re-saves these through transformers 5, which drops hub fields
# (added_tokens_decoder, add_bos_token) and leaks loader state ("is_local"); the hub-style
# originals from the source directory replace them.
_HUB_FILES = (
    "chat_template.jinja",
    "chat_template.json",
    "preprocessor_config.json",
    "processor_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "video_preprocessor_config.json",
)
# Libraries whose version changes what a build writes.
_BUILD_DEPENDENCIES = ("mlx", "mlx-vlm", "tokenizers", "transformers", "numpy")


def _check(arch: str, size: str) -> None:
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {', '.join(ARCHS)}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {', '.join(SIZES)}")


def _write_json(path: Path, data: Any) -> None:
    path.write_text(
        json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8"
    )


def _write_source(arch: str, size: str, seed: int, src: Path) -> None:
    """A bf16 checkpoint laid out like the original hub repository."""
    dims = families.DIMS[(arch, size)]
    if arch == "gemma3":
        tok, files = gemma3.hub_files(dims)
    else:
        tok, files = qwen_vl.hub_files(arch, dims)
    for name, data in files.items():
        _write_json(src / name, data)
    tok.tokenizer.save(str(src / "tokenizer.json"))

    model = weights.build_model(files["config.json"])
    weights.randomize(model, seed)
    skip: tuple[str, ...] = ()
    if arch == "gemma3":
        weights.gemma_norms(model)
        # Gemma ties its output head to the embedding: hub checkpoints carry no lm_head and
        # mlx-vlm's sanitize copies the embedding into it.
        skip = ("language_model.lm_head.weight",)
    weights.save_source_weights(model, src, skip)


def build_tiny_model(arch: str, out_dir: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    """Build a random-weight 4-bit checkpoint of `arch` at `size` into `out_dir`.

    The directory loads with `mlx_vlm.load` like an mlx-community hub checkpoint: hub-style
    config, locally trained tokenizer with the family's special tokens and chat template,
    processor configs, and weights quantized (4 bits, group 64) by `mlx_vlm.convert` with the
    vision tower left in bf16. Same arguments give byte-identical files. `out_dir` must not
    exist or be empty. Returns the directory.
    """
    _check(arch, size)
    out = Path(out_dir).expanduser()
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty")
    with tempfile.TemporaryDirectory(prefix="mlx-server-tiny-src-") as tmp:
        src = Path(tmp)
        _write_source(arch, size, seed, src)
        weights.quantize_checkpoint(src, out)
        for name in _HUB_FILES:
            (out / name).unlink(missing_ok=True)
            if (src / name).exists():
                shutil.copyfile(src / name, out / name)
    return out


def builder_version() -> str:
    """A hash of this package's code and data plus the versions of the libraries it drives."""
    digest = hashlib.sha256()
    package = resources.files(__package__)
    names = sorted(p.name for p in package.iterdir() if p.name.endswith((".py", ".txt"))) + sorted(
        f"templates/{p.name}" for p in package.joinpath("templates").iterdir()
    )
    for name in names:
        digest.update(name.encode())
        digest.update(package.joinpath(name).read_bytes())
    for dist in _BUILD_DEPENDENCIES:
        digest.update(f"{dist}=={metadata.version(dist)}".encode())
    return digest.hexdigest()[:16]


def cached_tiny_model(arch: str, size: str = "tiny", root: str | Path | None = None) -> Path:
    """The checkpoint `build_tiny_model(arch, size=size)` would make, built once and reused.

    Lives in `root` (default `~/.cache/mlx_server/tiny-models`) under a name that includes
    `builder_version()`, so any change to the builder makes a fresh one. Builds go to a
    temporary directory renamed into place, under a lock file, so concurrent processes and
    interrupted builds never see a partial checkpoint.
    """
    _check(arch, size)
    base = Path(root if root is not None else DEFAULT_CACHE_ROOT).expanduser()
    base.mkdir(parents=True, exist_ok=True)
    final = base / f"{arch}-{size}-{builder_version()}"
    if final.is_dir():
        return final
    with open(base / f".{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if final.is_dir():  # another process finished it while we waited
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=base))
        try:
            build_tiny_model(arch, tmp, size=size)
            tmp.rename(final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return final
