"""Engine side of media: videos in prompts, one span per media item, M-RoPE positions, and the
image-processor overrides, on the tiny random-weight checkpoints loaded in-process."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from PIL import Image

from mlx_server.engine.errors import InvalidRequestError
from mlx_server.engine.families import FAMILY_IMPLS
from mlx_server.engine.media_spans import token_runs
from mlx_server.engine.prompt import build_prompt, render
from mlx_server.engine.qwen_video import mrope_positions, video_positions
from mlx_server.engine.types import ImageInput, ImagePart, Message, TextPart, VideoPart


@pytest.fixture(scope="module")
def loaded(request):
    from mlx_server.engine.loader import load_model
    from mlx_server.testing import cached_tiny_model

    root = Path(request.config.cache.mkdir("tiny-models"))
    cache: dict = {}

    def get(family: str):
        if family not in cache:
            cache[family] = load_model(str(cached_tiny_model(family, "tiny", root=root)))
        return cache[family]

    return get


def img(color, size=(64, 48)) -> ImageInput:
    return ImageInput.from_pil(Image.new("RGB", size, color))


IMG, IMG2 = img((10, 20, 30)), img((200, 100, 0))
VIDEO = VideoPart(tuple(img((20 * i, 0, 0)) for i in range(5)), fps=2.0)


def mixed() -> tuple[Message, ...]:
    parts = (TextPart("look"), ImagePart(IMG), VIDEO, TextPart("and"), ImagePart(IMG2))
    return (Message("user", parts),)


def test_token_runs_split_adjacent_runs_of_different_tokens():
    ids = [1, 7, 7, 2, 7, 8, 8, 3, 8]
    assert token_runs(ids, {7, 8}) == [(1, 3, 7), (4, 5, 7), (5, 7, 8), (8, 9, 8)]


def test_video_part_hash_covers_frames_and_fps():
    same = VideoPart(VIDEO.frames, 2.0)
    assert same.sha256 == VIDEO.sha256 and same == VIDEO
    assert VideoPart(VIDEO.frames, 1.0).sha256 != VIDEO.sha256
    assert VideoPart(VIDEO.frames[:-1], 2.0).sha256 != VIDEO.sha256


def test_render_templates(loaded):
    text, media = render(loaded("qwen2_5_vl").tokenizer, "qwen2_5_vl", mixed())
    assert "look<|vision_start|><|image_pad|><|vision_end|><|vision_start|><|video_pad|>" in text
    assert media == (IMG, VIDEO, IMG2)
    text, media = render(loaded("gemma3").tokenizer, "gemma3", mixed())
    assert text.count("<start_of_image>") == 2 + len(VIDEO.frames)
    assert media == (IMG, VIDEO, IMG2)


@pytest.mark.parametrize("family", ["gemma3", "qwen2_5_vl"])
def test_one_span_per_media_item_in_prompt_order(loaded, family):
    lm = loaded(family)
    p = build_prompt(lm.processor, family, mixed())
    assert [h for _, _, h in p.image_spans] == [IMG.sha256, VIDEO.sha256, IMG2.sha256]
    (s1, e1, _), (s2, e2, _), (s3, e3, _) = p.image_spans
    assert 0 < s1 < e1 < s2 < e2 < s3 < e3 < len(p.token_ids)
    image_id = p.token_ids[s1]
    assert set(p.token_ids[s1:e1]) == {image_id} == set(p.token_ids[s3:e3])
    if family == "gemma3":  # the video is its frames as images: five runs inside one span
        runs = token_runs(p.token_ids[s2:e2], {image_id})
        assert len(runs) == len(VIDEO.frames) and p.token_ids[s2] == image_id
        assert len(p.images) == 2 + len(VIDEO.frames)
    else:
        video_id = lm.tokenizer.convert_tokens_to_ids("<|video_pad|>")
        assert set(p.token_ids[s2:e2]) == {video_id}
        assert {"pixel_values_videos", "video_grid_thw", "second_per_grid_ts"} <= set(
            p.model_inputs
        )
        grid = p.model_inputs["video_grid_thw"].tolist()[0]
        assert e2 - s2 == grid[0] * grid[1] * grid[2] // 4
        assert p.model_inputs["second_per_grid_ts"].tolist() == [1.0]  # 2 frames at 2 fps


def test_qwen_positions_match_mlx_vlm_without_time_scaling(loaded):
    lm = loaded("qwen2_5_vl")
    p = build_prompt(lm.processor, "qwen2_5_vl", mixed())
    ids = mx.array([p.token_ids])
    inputs = p.model_inputs
    ref, ref_delta = lm.model.language_model.get_rope_index(
        ids, inputs["image_grid_thw"], inputs["video_grid_thw"]
    )
    # 0.5 s per temporal patch at 2 positions a second: one position per patch, as mlx-vlm has.
    unscaled = {**inputs, "second_per_grid_ts": mx.array([0.5])}
    mine, delta = video_positions(lm.model, p.token_ids, unscaled)
    assert mx.array_equal(mine, ref.astype(mx.int32)) and delta == ref_delta.item()


def test_qwen25_video_time_positions_follow_fps():
    # One text token, a 3x(2x2 merged to 1x1) video at 3 s per patch * 2 positions a second.
    positions, delta = mrope_positions([0, 9, 9, 9, 0], [(1, 3, 2, 2, 6.0)], merge=2)
    assert positions[0].tolist() == [0, 1, 7, 13, 14]
    assert positions[1].tolist() == positions[2].tolist() == [0, 1, 1, 1, 14]
    assert delta == 15 - 5


def test_mixed_image_and_video_prompt_embeds_and_runs(loaded):
    lm = loaded("qwen2_5_vl")
    p = build_prompt(lm.processor, "qwen2_5_vl", mixed())
    emb = FAMILY_IMPLS["qwen2_5_vl"].embed(lm.model, p.token_ids, p.model_inputs)
    assert emb.embeds.shape[:2] == (1, len(p.token_ids))
    assert emb.positions.shape == (3, 1, len(p.token_ids))
    text_only = lm.model.language_model.model.embed_tokens(mx.array([p.token_ids]))
    for s, e, _ in p.image_spans:  # vision features replaced every placeholder
        changed = np.abs(np.array(emb.embeds[0, s:e] - text_only[0, s:e])).sum(axis=-1)
        assert (changed > 0).all()
    assert mx.array_equal(emb.embeds[0, : p.image_spans[0][0]], text_only[0, : p.image_spans[0][0]])


def test_qwen_honours_pixel_limits_and_gemma_refuses_them(loaded):
    lm = loaded("qwen2_5_vl")
    msgs = (Message("user", (ImagePart(img((1, 2, 3), (112, 112))),)),)
    default = build_prompt(lm.processor, "qwen2_5_vl", msgs)
    small = build_prompt(lm.processor, "qwen2_5_vl", msgs, (), (("max_pixels", 56 * 56),))
    big = build_prompt(lm.processor, "qwen2_5_vl", msgs, (), (("min_pixels", 224 * 224),))
    sizes = [p.image_spans[0][1] - p.image_spans[0][0] for p in (small, default, big)]
    assert sizes == [4, 16, 64]
    gemma = loaded("gemma3")
    with pytest.raises(InvalidRequestError) as err:
        build_prompt(gemma.processor, "gemma3", msgs, (), (("max_pixels", 3136),))
    assert err.value.param == "mm_processor_kwargs" and "max_pixels" in err.value.message


def test_media_the_processor_cannot_handle_is_a_400(loaded):
    lm = loaded("qwen2_5_vl")
    tiny = VideoPart(tuple(img((i, 0, 0), (8, 8)) for i in range(2)), fps=2.0)  # < one patch
    with pytest.raises(InvalidRequestError, match="processor cannot handle"):
        build_prompt(lm.processor, "qwen2_5_vl", (Message("user", (tiny,)),))


def test_qwen2_vl_counts_temporal_patches_whatever_the_fps(loaded):
    lm = loaded("qwen2_vl")
    p = build_prompt(lm.processor, "qwen2_vl", mixed())
    inputs = p.model_inputs
    ref, ref_delta = lm.model.language_model.get_rope_index(
        mx.array([p.token_ids]), inputs["image_grid_thw"], inputs["video_grid_thw"]
    )
    mine, delta = video_positions(lm.model, p.token_ids, inputs)  # 1 s per patch at 2 fps
    assert mx.array_equal(mine, ref.astype(mx.int32)) and delta == ref_delta.item()
