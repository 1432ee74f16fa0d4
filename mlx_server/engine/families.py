"""What differs between model families at run time, behind one small interface per family."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from .prompt import PromptInputs
from .qwen_video import merge_features, video_positions
from .types import VideoPart


@dataclass
class Embedded:
    """A prompt ready for the language model: embeddings plus, for M-RoPE models, the
    (3, 1, L) position ids and the offset between positions and cache length."""

    embeds: mx.array  # (1, L, H)
    positions: mx.array | None = None
    rope_delta: int = 0


@dataclass(frozen=True)
class MediaItem:
    """One image of a prompt: its token span, a key (equal keys => equal vision features)
    and the processor outputs for this item alone."""

    start: int
    end: int
    key: str
    inputs: dict[str, mx.array]


def _has_video(prompt: PromptInputs) -> bool:
    return any(isinstance(m, VideoPart) for m in prompt.media)


class Family:
    """Gemma-style: positions come from the cache offset; fixed-size images."""

    def media_items(self, prompt: PromptInputs) -> list[MediaItem]:
        """Per-image items for the vision-feature cache; none when the prompt has a video
        (its frames are encoded together with the prompt's images, uncached)."""
        if _has_video(prompt):
            return []
        pv = prompt.model_inputs.get("pixel_values")
        return [
            MediaItem(s, e, f"{h}:{tuple(pv.shape[1:])}", {"pixel_values": pv[i : i + 1]})
            for i, (s, e, h) in enumerate(prompt.image_spans)
        ]

    def item_features(self, model: nn.Module, item: MediaItem) -> mx.array:
        """The projected vision features of one item, as the language model consumes them."""
        dtype = model.multi_modal_projector.mm_input_projection_weight.dtype
        pv = item.inputs["pixel_values"].transpose(0, 2, 3, 1).astype(dtype)
        hidden, _, _ = model.vision_tower(pv, output_hidden_states=True)
        return model.multi_modal_projector(hidden)

    def placeholder_features(self, model: nn.Module, item: MediaItem) -> mx.array:
        """Zeros shaped like `item_features` (for media inside an already cached prefix)."""
        dtype = model.multi_modal_projector.mm_input_projection_weight.dtype
        hidden = model.config.text_config.hidden_size
        return mx.zeros((1, item.end - item.start, hidden), dtype=dtype)

    def _features_kwargs(self, features: list[mx.array] | None) -> dict[str, Any]:
        if not features:
            return {}
        return {"cached_image_features": mx.concatenate(features, axis=0)}

    def embed(
        self,
        model: nn.Module,
        token_ids: list[int],
        inputs: dict[str, Any],
        features: list[mx.array] | None = None,
    ) -> Embedded:
        ids = mx.array([token_ids])
        pixel_values = inputs.get("pixel_values")
        extra = {k: v for k, v in inputs.items() if k != "pixel_values"}
        extra.update(self._features_kwargs(features))
        out = model.get_input_embeddings(ids, pixel_values, mask=mx.ones(ids.shape), **extra)
        return Embedded(embeds=out.inputs_embeds)

    def forward(
        self, model: nn.Module, cache: list[Any], emb: Embedded, start: int, end: int
    ) -> mx.array:
        """Run prompt positions [start, end) through the language model; returns logits."""
        lm = model.language_model
        return lm(None, inputs_embeds=emb.embeds[:, start:end], cache=cache).logits

    def decode(
        self, model: nn.Module, cache: list[Any], tokens: mx.array, offset: int, rope_delta: int = 0
    ) -> mx.array:
        """New token(s) at cache position `offset`; returns (1, n, V) logits."""
        return model.language_model(tokens.reshape(1, -1), cache=cache).logits

    def decode_batch(
        self,
        model: nn.Module,
        cache: list[Any],
        tokens: mx.array,
        offsets: list[int],
        rope_deltas: list[int],
    ) -> mx.array:
        """One token per row with batched caches (positions follow each row's offset)."""
        return model.language_model(tokens.reshape(-1, 1), cache=cache).logits


class QwenFamily(Family):
    """Qwen2-VL / 2.5-VL: dynamic-resolution images; multimodal RoPE needs explicit
    (3, B, L) position ids."""

    def media_items(self, prompt: PromptInputs) -> list[MediaItem]:
        if _has_video(prompt):
            return []
        pv = prompt.model_inputs.get("pixel_values")
        grid = prompt.model_inputs.get("image_grid_thw")
        items, row = [], 0
        for i, (s, e, h) in enumerate(prompt.image_spans):
            thw = tuple(int(x) for x in grid[i].tolist())
            rows = thw[0] * thw[1] * thw[2]
            inputs = {"pixel_values": pv[row : row + rows], "image_grid_thw": grid[i : i + 1]}
            items.append(MediaItem(s, e, f"{h}:{thw}", inputs))
            row += rows
        return items

    def item_features(self, model: nn.Module, item: MediaItem) -> mx.array:
        dtype = model.vision_tower.patch_embed.proj.weight.dtype
        pv = item.inputs["pixel_values"].astype(dtype)
        return model.vision_tower(pv, item.inputs["image_grid_thw"], output_hidden_states=False)

    def placeholder_features(self, model: nn.Module, item: MediaItem) -> mx.array:
        dtype = model.vision_tower.patch_embed.proj.weight.dtype
        hidden = model.config.text_config.hidden_size
        return mx.zeros((item.end - item.start, hidden), dtype=dtype)

    def embed(self, model, token_ids, inputs, features=None):
        ids = mx.array([token_ids])
        if "pixel_values_videos" in inputs:  # mlx-vlm's path handles images or videos, not both
            positions, delta = video_positions(model, token_ids, inputs)
            embeds = merge_features(model, ids, inputs)
            return Embedded(embeds=embeds, positions=positions, rope_delta=delta)
        pixel_values = inputs.get("pixel_values")
        extra = {k: v for k, v in inputs.items() if k != "pixel_values"}
        extra.update(self._features_kwargs(features))
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

    def decode_batch(self, model, cache, tokens, offsets, rope_deltas):
        pos = mx.array([o + d for o, d in zip(offsets, rope_deltas)])
        pos = mx.broadcast_to(pos[None, :, None], (3, len(offsets), 1))
        return model.language_model(tokens.reshape(-1, 1), cache=cache, position_ids=pos).logits

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
