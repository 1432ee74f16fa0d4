"""Video files -> frames sampled at a requested rate, with OpenCV (its wheels bundle FFmpeg,
so no system ffmpeg is needed). CPU-bound: call it off the event loop."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from mlx_server.engine.types import ImageInput, VideoPart

from .errors import invalid


@dataclass(frozen=True)
class VideoLimits:
    max_frames: int = 32
    max_pixels: int = 64 * 2**20  # per frame
    max_source_frames: int = 100_000  # frames a sampler may have to walk through


def sample_indices(
    count: int, native_fps: float, fps: float, max_frames: int
) -> tuple[list[int], float]:
    """Frame indices at `fps` frames per second of video time (0, 1/fps, 2/fps, ...), spread
    evenly over the whole video instead when that would be more than `max_frames`; and the
    rate actually sampled (never above the video's own)."""
    duration = count / native_fps
    wanted = max(1, math.ceil(duration * fps - 1e-9))
    if wanted > max_frames:
        times = np.linspace(0.0, duration, max_frames, endpoint=False)
        rate = max_frames / duration
    else:
        times = np.arange(wanted) / fps
        rate = fps
    indices = np.minimum(np.floor(times * native_fps + 0.5).astype(np.int64), count - 1)
    return sorted(set(indices.tolist())), min(rate, native_fps)


def _open(path: str, param: str) -> cv2.VideoCapture:
    cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG)  # FFmpeg only: never an image-sequence reader
    if not cap.isOpened():
        cap.release()
        raise invalid("the data is not a video this server can decode", param, "invalid_video")
    return cap


def _facts(cap: cv2.VideoCapture, param: str, limits: VideoLimits) -> tuple[int, float]:
    native = cap.get(cv2.CAP_PROP_FPS)
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    if not (native > 0 and math.isfinite(native)):
        raise invalid("the video has no frame rate", param, "invalid_video")
    if count <= 0:
        raise invalid("the video has no frames (or does not say how many)", param, "invalid_video")
    if width * height > limits.max_pixels:
        raise invalid(
            f"the video's frames are {width}x{height} pixels, above this server's limit of "
            f"{limits.max_pixels} pixels per frame",
            param,
            "video_too_large",
        )
    if count > limits.max_source_frames:
        raise invalid(
            f"the video has {count} frames, above this server's limit of "
            f"{limits.max_source_frames}",
            param,
            "video_too_large",
        )
    return count, native


def _read(cap: cv2.VideoCapture, indices: list[int]) -> list[ImageInput]:
    """Decode forward through the stream (seeking is unreliable across codecs), keeping the
    wanted frames."""
    frames: list[ImageInput] = []
    wanted = iter(indices)
    target = next(wanted, None)
    i = 0
    while target is not None and cap.grab():
        if i == target:
            ok, bgr = cap.retrieve()
            if ok:
                frames.append(ImageInput.from_pil(Image.fromarray(bgr[:, :, ::-1].copy())))
            target = next(wanted, None)
        i += 1
    return frames


def decode_video_file(path: str, fps: float, param: str, limits: VideoLimits) -> VideoPart:
    """The frames of the video at `path`, sampled at `fps` (at most `limits.max_frames`).

    The part's fps is the rate actually sampled, which the model's temporal positions follow. Raises InvalidRequestError naming `param`.
    """
    cap = _open(path, param)
    try:
        count, native = _facts(cap, param, limits)
        indices, rate = sample_indices(count, native, fps, limits.max_frames)
        frames = _read(cap, indices)
    finally:
        cap.release()
    if not frames:
        raise invalid("no frame of the video could be decoded", param, "invalid_video")
    return VideoPart(frames=tuple(frames), fps=rate)


@contextmanager
def _spooled(raw: bytes) -> Iterator[str]:
    # OpenCV's FFmpeg reader wants a path; the file lives only as long as the decode.
    fd, path = tempfile.mkstemp(prefix="mlx-server-video-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        yield path
    finally:
        os.unlink(path)


def decode_video_bytes(raw: bytes, fps: float, param: str, limits: VideoLimits) -> VideoPart:
    """Like `decode_video_file`, for a video held in memory (data: URLs, http downloads)."""
    with _spooled(raw) as path:
        return decode_video_file(path, fps, param, limits)
