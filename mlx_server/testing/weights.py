"""Random weights from mlx-vlm's own model classes, quantized by mlx-vlm's own converter."""

from __future__ import annotations

import contextlib
import copy
import io
import math
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten
from mlx_vlm.convert import convert
from mlx_vlm.utils import get_model_and_args, update_module_configs

Q_BITS = 4
Q_GROUP_SIZE = 64


def build_model(config: dict[str, Any]) -> nn.Module:
    """Instantiate the mlx-vlm model class for a hub-style config, as `mlx_vlm.load` does."""
    config = copy.deepcopy(config)
    arch, _ = get_model_and_args(config)
    config.setdefault("text_config", {})
    config.setdefault("vision_config", {})
    model_config = arch.ModelConfig.from_dict(config)
    model_config = update_module_configs(model_config, arch, config, ["text", "vision"])
    return arch.Model(model_config)


def _init_value(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray | None:
    """A fresh value for one parameter, or None to keep the class's own initial value."""
    leaf = name.rsplit(".", 1)[-1]
    if len(shape) >= 2:
        # The Gemma projector is stored (in, out) and applied with an einsum.
        fan_in = shape[0] if leaf == "mm_input_projection_weight" else math.prod(shape[1:])
        # 1/sqrt(fan_in) keeps activations near unit scale through every layer, so bf16
        # logits stay finite and differ from token to token (a tied head gives std ~1).
        return rng.standard_normal(shape, dtype=np.float32) / math.sqrt(fan_in)
    if leaf == "bias":
        return rng.standard_normal(shape, dtype=np.float32) * 0.02
    return None


def randomize(model: nn.Module, seed: int) -> None:
    """Give every matrix and bias a seeded random value and make everything bf16.

    numpy's PCG64 generator makes the values identical on every platform.
    """
    rng = np.random.default_rng(seed)
    updated = []
    for name, value in tree_flatten(model.parameters()):
        fresh = _init_value(name, tuple(value.shape), rng)
        if fresh is not None:
            updated.append((name, mx.array(fresh).astype(mx.bfloat16)))
        else:
            updated.append((name, value.astype(mx.bfloat16)))
    model.update(tree_unflatten(updated))
    mx.eval(model.parameters())


def gemma_norms(model: nn.Module) -> None:
    """Set Gemma's (1 + weight) RMSNorm scales: 1 everywhere, 3 after attention and MLP.

    Zero weights are the reference initialisation. The larger post-block scale makes the
    blocks outweigh the input embedding in the residual stream; otherwise the tied output
    head's best match is the input token itself and greedy decoding repeats the last token.
    """
    from mlx_vlm.models.gemma3.language import RMSNorm

    for name, module in model.named_modules():
        if isinstance(module, RMSNorm):
            post_block = name.endswith(("post_attention_layernorm", "post_feedforward_layernorm"))
            module.weight = mx.full(module.weight.shape, 2.0 if post_block else 0.0, mx.bfloat16)


def save_source_weights(model: nn.Module, out: Path, skip: tuple[str, ...] = ()) -> None:
    """Write bf16 weights as one safetensors file, the layout `mlx_vlm.convert` reads."""
    weights = {k: v for k, v in tree_flatten(model.parameters()) if k not in skip}
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})


def quantize_checkpoint(src: Path, dst: Path) -> None:
    """Run mlx-vlm's converter: bf16 source -> 4-bit, group 64, vision tower left unquantized.

    The source is a local directory, so nothing touches the network.
    """
    with contextlib.redirect_stdout(io.StringIO()):
        convert(
            str(src),
            str(dst),
            quantize=True,
            q_bits=Q_BITS,
            q_group_size=Q_GROUP_SIZE,
            dtype="bfloat16",
        )
