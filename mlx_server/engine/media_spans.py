"""Where each image or video sits in the token ids: (start, end, content hash) per media item.

The prefix cache keys prompts by token ids plus these spans, because every image expands to
the same placeholder ids whatever its pixels. One span per media item in prompt order; a video
that a family renders as a run of images (Gemma 3) is still one span, from its first frame's
first placeholder to its last frame's last, hashed over its frames and fps.
"""

from __future__ import annotations

from typing import Any

from .errors import InvalidRequestError
from .types import ImageInput, VideoPart

# The family's placeholder tokens as its processor expands them.
IMAGE_TOKENS = {
    "gemma3": "<image_soft_token>",
    "qwen2_vl": "<|image_pad|>",
    "qwen2_5_vl": "<|image_pad|>",
}
# Families with video tokens; the others get a video's frames as consecutive images.
VIDEO_TOKENS = {
    "qwen2_vl": "<|video_pad|>",
    "qwen2_5_vl": "<|video_pad|>",
}


def token_runs(token_ids: list[int], wanted: set[int]) -> list[tuple[int, int, int]]:
    """(start, end, token) of each maximal run of one of the `wanted` token ids."""
    runs: list[tuple[int, int, int]] = []
    start = None
    for i, tok in enumerate([*token_ids, -1]):
        if start is not None and tok != token_ids[start]:
            runs.append((start, i, token_ids[start]))
            start = None
        if start is None and tok in wanted:
            start = i
    return runs


def _expected_runs(item: ImageInput | VideoPart, image_id: int, video_id: int | None) -> list:
    if isinstance(item, ImageInput):
        return [image_id]
    if video_id is not None:
        return [video_id]
    return [image_id] * len(item.frames)


def media_spans(
    token_ids: list[int], family: str, tokenizer: Any, media: tuple[ImageInput | VideoPart, ...]
) -> tuple[tuple[int, int, str], ...]:
    """(start, end, sha256) per media item, matched in order to the placeholder runs.

    Raises InvalidRequestError when the runs do not match the media (a template that dropped
    or duplicated a placeholder would otherwise feed the wrong pixels to the wrong tokens).
    """
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKENS[family])
    video_id = (
        tokenizer.convert_tokens_to_ids(VIDEO_TOKENS[family]) if family in VIDEO_TOKENS else None
    )
    runs = token_runs(token_ids, {image_id} | ({video_id} if video_id is not None else set()))
    expected = [_expected_runs(item, image_id, video_id) for item in media]
    if [tok for _, _, tok in runs] != [tok for kinds in expected for tok in kinds]:
        raise InvalidRequestError(
            f"the prompt has {len(runs)} image/video placeholder runs for {len(media)} media items"
        )
    spans = []
    at = 0
    for item, kinds in zip(media, expected):
        first, last = runs[at], runs[at + len(kinds) - 1]
        at += len(kinds)
        spans.append((first[0], last[1], item.sha256))
    return tuple(spans)
