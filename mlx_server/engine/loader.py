"""Local directory or hub id -> LoadedModel (model, processor, tokenizer, facts we need)."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_map

from .errors import ModelNotFoundError

log = logging.getLogger("mlx_server.engine")

FAMILIES = {"gemma3": "gemma3", "qwen2_vl": "qwen2_vl", "qwen2_5_vl": "qwen2_5_vl"}
DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}
HUB_PATTERNS = ["*.json", "*.safetensors", "*.py", "*.model", "*.tiktoken", "*.txt", "*.jinja"]


@dataclass
class LoadedModel:
    model: nn.Module
    processor: Any
    tokenizer: Any
    config: dict
    path: Path
    family: str
    dtype: mx.Dtype
    eos_token_ids: tuple[int, ...]
    context_length: int
    vocab_size: int


def resolve_model_path(model: str, offline: bool = False) -> Path:
    """A local directory as is; otherwise a hub id through the Hugging Face cache."""
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} is not a model directory (no config.json)")
        return path
    if model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise ModelNotFoundError(f"model not found: {model!r} is neither a directory nor a hub id")
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(repo_id=model, allow_patterns=HUB_PATTERNS, local_files_only=offline)
        )
    except Exception as exc:  # hub errors come in many classes; one clear line is the point
        hint = " (HF_HUB_OFFLINE is set and it is not in the local cache)" if offline else ""
        raise ModelNotFoundError(
            f"could not get model {model!r}{hint}: {type(exc).__name__}: {exc}".splitlines()[0]
        ) from exc


def _backend() -> str:
    if mx.metal.is_available():
        return "metal"
    try:
        if mx.cuda.is_available():
            return "cuda"
    except AttributeError:
        pass
    return "cpu"


def _time_matvec(layer: nn.Module, dtype: mx.Dtype, in_dims: int, reps: int = 8) -> float:
    """Best-of-`reps` seconds for one matvec through `layer` with `dtype` activations."""
    x = mx.random.normal((1, in_dims)).astype(dtype)
    probe = nn.QuantizedLinear(
        in_dims, layer.weight.shape[0], bias=False, group_size=layer.group_size, bits=layer.bits
    )
    probe.weight = layer.weight
    probe.scales = layer.scales.astype(dtype)
    probe.biases = None if layer.biases is None else layer.biases.astype(dtype)
    mx.eval(probe(x))  # warm-up pays the kernel compile
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        mx.eval(probe(x))
        best = min(best, time.perf_counter() - start)
    return best


# Keep the backend's usual choice unless the other dtype measures clearly faster: on a busy
# machine, or with a tiny model, a single timing is noise.
MARGIN = 1.25


def choose_dtype(model: nn.Module, requested: str) -> mx.Dtype:
    """The compute dtype: as requested, or for `auto` the fastest for a 4-bit matvec on this
    backend, measured on the model's own largest quantized layer (CPU: f32 is ~10x bf16)."""
    if requested != "auto":
        return DTYPES[requested]
    usual = mx.float32 if _backend() == "cpu" else mx.bfloat16
    other = mx.bfloat16 if usual == mx.float32 else mx.float32
    layers = [m for _, m in model.named_modules() if isinstance(m, nn.QuantizedLinear)]
    if not layers:
        return usual
    layer = max(layers, key=lambda m: m.weight.size)
    in_dims = layer.weight.shape[1] * 32 // layer.bits
    t_usual = _time_matvec(layer, usual, in_dims)
    t_other = _time_matvec(layer, other, in_dims)
    best = other if t_other * MARGIN < t_usual else usual
    log.info(
        "dtype auto on %s: %s %.3f ms, %s %.3f ms per matvec -> %s",
        _backend(),
        usual,
        t_usual * 1e3,
        other,
        t_other * 1e3,
        best,
    )
    return best


def cast_floating(model: nn.Module, dtype: mx.Dtype) -> None:
    """Cast every floating parameter (scales, biases, norms, vision tower) to `dtype`."""

    def cast(x: Any) -> Any:
        if isinstance(x, mx.array) and mx.issubdtype(x.dtype, mx.floating) and x.dtype != dtype:
            return x.astype(dtype)
        return x

    model.update(tree_map(cast, model.parameters()))
    mx.eval(model.parameters())


def _eos_ids(config: dict, tokenizer: Any, path: Path) -> tuple[int, ...]:
    ids: list[int] = []
    gen_path = path / "generation_config.json"
    sources = [config.get("eos_token_id"), config.get("text_config", {}).get("eos_token_id")]
    if gen_path.is_file():
        sources.insert(0, json.loads(gen_path.read_text()).get("eos_token_id"))
    for src in sources:
        for i in src if isinstance(src, list) else [src]:
            if isinstance(i, int) and i not in ids:
                ids.append(i)
    for tok in ("<end_of_turn>", "<|im_end|>"):
        tid = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid not in ids:
            ids.append(tid)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return tuple(ids)


def _context_length(config: dict) -> int:
    text = config.get("text_config", {})
    for key in ("max_position_embeddings", "max_sequence_length"):
        for src in (text, config):
            if isinstance(src.get(key), int):
                return src[key]
    return 8192


def load_model(model: str, dtype: str = "auto", offline: bool = False) -> LoadedModel:
    """Load through mlx_vlm.load, then pick and apply the compute dtype."""
    from mlx_vlm import load as vlm_load

    path = resolve_model_path(model, offline)
    config = json.loads((path / "config.json").read_text())
    family = FAMILIES.get(config.get("model_type", ""))
    if family is None:
        raise ModelNotFoundError(
            f"unsupported model_type {config.get('model_type')!r}: expected one of {sorted(FAMILIES)}"
        )
    started = time.perf_counter()
    vlm_model, processor = vlm_load(str(path))
    chosen = choose_dtype(vlm_model, dtype)
    cast_floating(vlm_model, chosen)
    tokenizer = getattr(processor, "tokenizer", processor)
    emb = vlm_model.language_model.model.embed_tokens
    vocab = emb.weight.shape[0]
    log.info(
        "loaded %s (%s, %s, %.1f M params) in %.2f s",
        path,
        family,
        chosen,
        sum(v.size for _, v in tree_flatten(vlm_model.parameters())) / 1e6,
        time.perf_counter() - started,
    )
    return LoadedModel(
        model=vlm_model,
        processor=processor,
        tokenizer=tokenizer,
        config=config,
        path=path,
        family=family,
        dtype=chosen,
        eos_token_ids=_eos_ids(config, tokenizer, path),
        context_length=_context_length(config),
        vocab_size=vocab,
    )
