"""Qwen2-VL / Qwen2.5-VL prompts with videos: vision features merged per kind, M-RoPE positions.

mlx-vlm's `get_input_embeddings` runs the vision tower on either the images or the videos of a
prompt, never both, and its `get_rope_index` leaves out Qwen2.5-VL's time scaling (a temporal
patch spans `temporal_patch_size / fps` seconds, at `tokens_per_second` positions a second).
Both are done here, following transformers' Qwen2.5-VL `get_rope_index`.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .media_spans import token_runs


def merge_features(model: nn.Module, ids: mx.array, inputs: dict[str, Any]) -> mx.array:
    """Token embeddings with each image's and each video's vision features in its placeholders."""
    cfg = model.config
    embeds = model.language_model.model.embed_tokens(ids)
    dtype = model.vision_tower.patch_embed.proj.weight.dtype
    kinds = (
        ("pixel_values", "image_grid_thw", cfg.image_token_id),
        ("pixel_values_videos", "video_grid_thw", cfg.video_token_id),
    )
    for pixels_key, grid_key, token_id in kinds:
        pixels = inputs.get(pixels_key)
        if pixels is None:
            continue
        feats = model.vision_tower(
            pixels.astype(dtype), inputs[grid_key], output_hidden_states=False
        )
        mask = ids[0] == token_id
        index = mx.maximum(mx.cumsum(mask.astype(mx.int32)) - 1, 0)
        embeds = mx.where(mask[None, :, None], feats[index][None], embeds)
    return embeds


def _time_scale(model: nn.Module, seconds_per_grid: float) -> float:
    """RoPE temporal positions per temporal patch: Qwen2-VL counts patches, Qwen2.5-VL seconds."""
    per_second = getattr(model.config.vision_config, "tokens_per_second", None)
    if model.config.model_type == "qwen2_5_vl" and per_second:
        return seconds_per_grid * per_second
    return 1.0


def mrope_positions(
    token_ids: list[int],
    grids: list[tuple[int, int, int, int, float]],
    merge: int,
) -> tuple[np.ndarray, int]:
    """(3, L) position ids and the rope delta for a prompt whose media placeholder runs start at
    the given token indices. `grids`: (start, t, h, w, time_scale) per media item in order."""
    chunks: list[np.ndarray] = []
    st = nxt = 0
    for start, t, h, w, scale in grids:
        text_len = start - st
        chunks.append(np.broadcast_to(np.arange(text_len) + nxt, (3, text_len)))
        gh, gw = h // merge, w // merge
        t_idx = np.repeat((np.arange(t) * scale).astype(np.int64), gh * gw)
        h_idx = np.tile(np.repeat(np.arange(gh), gw), t)
        w_idx = np.tile(np.arange(gw), t * gh)
        block = np.stack([t_idx, h_idx, w_idx]) + text_len + nxt
        chunks.append(block)
        nxt = int(block.max()) + 1
        st = start + t * gh * gw
    tail = len(token_ids) - st
    chunks.append(np.broadcast_to(np.arange(tail) + nxt, (3, tail)))
    positions = np.concatenate(chunks, axis=1)
    return positions, int(positions.max()) + 1 - len(token_ids)


def video_positions(
    model: nn.Module, token_ids: list[int], inputs: dict[str, Any]
) -> tuple[mx.array, int]:
    """(3, 1, L) M-RoPE position ids and rope delta for a prompt with images and videos."""
    cfg = model.config
    image_grids = iter(np.array(inputs.get("image_grid_thw", np.zeros((0, 3)))).tolist())
    video_grids = iter(np.array(inputs["video_grid_thw"]).tolist())
    seconds = iter(np.array(inputs["second_per_grid_ts"]).tolist())
    runs = token_runs(token_ids, {cfg.image_token_id, cfg.video_token_id})
    grids = []
    for start, _, token in runs:
        if token == cfg.image_token_id:
            t, h, w = next(image_grids)
            grids.append((start, t, h, w, 0.0))
        else:
            t, h, w = next(video_grids)
            grids.append((start, t, h, w, _time_scale(model, next(seconds))))
    merge = cfg.vision_config.spatial_merge_size
    positions, delta = mrope_positions(token_ids, grids, merge)
    return mx.array(positions[:, None, :].astype(np.int32)), delta
