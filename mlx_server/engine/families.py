"""What differs between model families at run time, behind one small interface per family."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from .qwen_video import merge_features, video_positions


@dataclass
class Embedded:
    """A prompt ready for the language model: embeddings plus, for M-RoPE models, the
    (3, 1, L) position ids and the offset between positions and cache length."""

    embeds: mx.array  # (1, L, H)
    positions: mx.array | None = None
    rope_delta: int = 0


class Family:
    """Gemma-style: positions come from the cache offset; nothing extra to pass."""

    def embed(self, model: nn.Module, token_ids: list[int], inputs: dict[str, Any]) -> Embedded:
        ids = mx.array([token_ids])
        pixel_values = inputs.get("pixel_values")
        extra = {k: v for k, v in inputs.items() if k != "pixel_values"}
        out = model.get_input_embeddings(ids, pixel_values, mask=mx.ones(ids.shape), **extra)
        return Embedded(embeds=out.inputs_embeds)

    def forward(
        self,
        model: nn.Module,
        cache: list[Any],
        emb: Embedded,
        start: int,
        end: int,
    ) -> mx.array:
        """Run prompt positions [start, end) through the language model; returns logits."""
        lm = model.language_model
        return lm(None, inputs_embeds=emb.embeds[:, start:end], cache=cache).logits

    def decode(
        self, model: nn.Module, cache: list[Any], tokens: mx.array, offset: int, rope_delta: int = 0
    ) -> mx.array:
        """New token(s) at cache position `offset`; returns (1, n, V) logits."""
        return model.language_model(tokens.reshape(1, -1), cache=cache).logits


class QwenFamily(Family):
    """Qwen2-VL / 2.5-VL: multimodal RoPE needs explicit (3, B, L) position ids."""

    def embed(self, model: nn.Module, token_ids: list[int], inputs: dict[str, Any]) -> Embedded:
        ids = mx.array([token_ids])
        if "pixel_values_videos" in inputs:  # mlx-vlm's path handles images or videos, not both
            positions, delta = video_positions(model, token_ids, inputs)
            embeds = merge_features(model, ids, inputs)
            return Embedded(embeds=embeds, positions=positions, rope_delta=delta)
        pixel_values = inputs.get("pixel_values")
        extra = {k: v for k, v in inputs.items() if k != "pixel_values"}
        out = model.get_input_embeddings(ids, pixel_values, **extra)
        pos = out.position_ids
        if pos is None or pos.ndim == 2:
            pos = mx.broadcast_to(mx.arange(len(token_ids))[None, None, :], (3, 1, len(token_ids)))
        delta = out.rope_deltas
        delta = int(delta.reshape(-1)[0].item()) if delta is not None else 0
        return Embedded(embeds=out.inputs_embeds, positions=pos, rope_delta=delta)

    def forward(self, model, cache, emb, start, end):
        lm = model.language_model
        ids = mx.zeros((1, end - start), dtype=mx.int32)  # shape only; embeddings are given
        return lm(
            ids,
            inputs_embeds=emb.embeds[:, start:end],
            cache=cache,
            position_ids=emb.positions[:, :, start:end],
        ).logits

    def decode(self, model, cache, tokens, offset, rope_delta: int = 0):
        n = tokens.size
        pos = mx.arange(offset, offset + n) + rope_delta
        pos = mx.broadcast_to(pos[None, None, :], (3, 1, n))
        return model.language_model(tokens.reshape(1, -1), cache=cache, position_ids=pos).logits


FAMILY_IMPLS: dict[str, Family] = {
    "gemma3": Family(),
    "qwen2_vl": QwenFamily(),
    "qwen2_5_vl": QwenFamily(),
}
