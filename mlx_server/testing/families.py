"""Sizes of the tiny checkpoints and what the family modules share.

Constraints from mlx-vlm 0.7.10: head_dim a multiple of 64 (8-bit KV cache groups), quantized
input sizes divisible by 64, Qwen's mrope_section summing to head_dim / 2, Gemma's
mm_tokens_per_image a square whose side divides image_size / patch_size.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any

from .tokenizer import TrainedTokenizer


@dataclass(frozen=True)
class Dims:
    """Sizes of one checkpoint: language model, vision tower, images."""

    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    context: int
    vocab: int
    vision_hidden: int
    vision_layers: int
    vision_intermediate: int
    vision_heads: int
    # Gemma: square input side in pixels. Qwen: max_pixels of the resized image.
    image: int
    # Gemma only: image tokens per image, sliding-window geometry, vision patch side.
    mm_tokens: int = 0
    sliding_window: int = 0
    sliding_pattern: int = 0
    patch: int = 14


# tiny: ~0.3M-parameter language models that load in milliseconds; a 64x64 image becomes
# 16 (Gemma) or 4 (Qwen) tokens. bench: ~47M-parameter language models (12 layers) and
# 8-layer vision towers, a 224x224 image is 64 tokens.
DIMS: dict[tuple[str, str], Dims] = {
    ("gemma3", "tiny"): Dims(128, 2, 256, 2, 1, 64, 8192, 2048, 64, 2, 128, 2, 64, 16, 128, 2, 8),
    ("gemma3", "bench"): Dims(
        512, 12, 2048, 4, 2, 128, 32768, 2048, 256, 8, 1024, 4, 224, 64, 512, 6, 14
    ),
    ("qwen2_5_vl", "tiny"): Dims(128, 2, 256, 2, 1, 64, 32768, 2048, 64, 2, 128, 2, 12544),
    ("qwen2_5_vl", "bench"): Dims(512, 12, 2048, 8, 2, 64, 32768, 2048, 256, 8, 1024, 4, 50176),
    ("qwen2_vl", "tiny"): Dims(128, 2, 256, 2, 1, 64, 32768, 2048, 64, 2, 256, 2, 12544),
    ("qwen2_vl", "bench"): Dims(512, 12, 2048, 8, 2, 64, 32768, 2048, 256, 8, 1024, 4, 50176),
}


def chat_template(arch: str) -> str:
    """The family's published chat template, verbatim.

    Gemma 3: the chat_template.json of google/gemma-3-4b-it, as quoted in public code (an older
    revision without the string-system branch is in transformers' Gemma 3 processor tests).
    Qwen2-VL and Qwen2.5-VL share one template, the chat_template.json of
    Qwen/Qwen2-VL-7B-Instruct and Qwen/Qwen2.5-VL-7B-Instruct; it has no tool support
    upstream, so tools are rendered elsewhere.
    """
    name = "gemma3.jinja" if arch == "gemma3" else "qwen2_vl.jinja"
    return resources.files(__package__).joinpath("templates", name).read_text(encoding="utf-8")


def added_tokens_decoder(tok: TrainedTokenizer) -> dict[str, dict[str, Any]]:
    """The `added_tokens_decoder` block of a hub tokenizer_config.json."""
    return {
        str(i): {
            "content": t.content,
            "lstrip": t.lstrip,
            "normalized": t.normalized,
            "rstrip": t.rstrip,
            "single_word": t.single_word,
            "special": t.special,
        }
        for i, t in sorted(tok.tokenizer.get_added_tokens_decoder().items())
    }
