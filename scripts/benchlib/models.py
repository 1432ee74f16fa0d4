"""The bench-size checkpoints, and float32 copies of them for mlx-vlm's server.

mlx-vlm runs a checkpoint in its stored dtype (bf16 here); on MLX's CPU backend a 4-bit
matmul with bf16 activations is ~10x slower than with float32, so comparing its server with
ours (which picks float32 on CPU) is only fair against a float32 copy: same 4-bit weights,
scales/biases/norms/vision tower cast to float32.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any


def bench_model(arch: str, root: Path | None = None) -> Path:
    """The cached bench-size checkpoint of `arch` (built on first use, in seconds)."""
    from mlx_server.testing import cached_tiny_model

    return cached_tiny_model(arch, "bench", root=root)


def float32_copy(model_dir: Path) -> Path:
    """`<model_dir>-f32`: the same checkpoint with every floating tensor stored as float32.

    Built once under a lock and renamed into place; the quantized weights are untouched."""
    final = model_dir.with_name(model_dir.name + "-f32")
    if final.is_dir():
        return final
    with open(model_dir.parent / f".{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if final.is_dir():
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=model_dir.parent))
        try:
            _write_float32(model_dir, tmp)
            tmp.rename(final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return final


def _write_float32(src: Path, out: Path) -> None:
    import mlx.core as mx
    from mlx_vlm import load
    from mlx_vlm.utils import save_weights

    from mlx_server.engine.loader import cast_floating

    model, _ = load(str(src))
    cast_floating(model, mx.float32)
    save_weights(out, model)
    for f in src.iterdir():
        if f.is_file() and not f.name.startswith("model") and not f.name.endswith(".safetensors"):
            shutil.copyfile(f, out / f.name)
    config = json.loads((src / "config.json").read_text())
    config["torch_dtype"] = "float32"
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def stored_dtypes(model_dir: Path) -> dict[str, int]:
    """How many tensors of each dtype the checkpoint stores (to state what was compared)."""
    import mlx.core as mx

    counts: dict[str, int] = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        for arr in mx.load(str(f)).values():
            key = str(arr.dtype).replace("mlx.core.", "")
            counts[key] = counts.get(key, 0) + 1
    return counts


def describe(lm: Any) -> dict[str, Any]:
    """Parameter count (language model and total), quantization and compute dtype."""
    from mlx.utils import tree_flatten

    quant = lm.config.get("quantization") or lm.config.get("quantization_config") or {}
    per_word = 32 // int(quant.get("bits", 4))

    def count(module: Any) -> float:
        # Packed weights hold 32/bits values per uint32; quantization scales and biases
        # are bookkeeping, not parameters.
        total = 0
        for name, v in tree_flatten(module.parameters()):
            if str(v.dtype) == "mlx.core.uint32":
                total += v.size * per_word
            elif not name.endswith((".scales", ".biases")):
                total += v.size
        return total / 1e6

    return {
        "family": lm.family,
        "dtype": str(lm.dtype).replace("mlx.core.", ""),
        "params_m": round(count(lm.model), 1),
        "lm_params_m": round(count(lm.model.language_model), 1),
        "quantization": {k: quant.get(k) for k in ("bits", "group_size") if k in quant},
        "vocab": lm.vocab_size,
        "path": str(lm.path),
    }
