"""Media inputs: images and videos from data: URLs, http(s) URLs and allowed local files.

Knows HTTP, never MLX: everything here ends as the engine's frozen `ImagePart` / `VideoPart`.
`MediaResolver` (one per app, on `app.state.media`) is the entry point.
"""

from __future__ import annotations

from .cache import MediaCache
from .fetch import HttpFetcher
from .image import ImageLimits, decode_image
from .refs import MediaLimits, MediaRef
from .resolver import MediaResolver
from .video import VideoLimits, decode_video_bytes, decode_video_file

__all__ = [
    "HttpFetcher",
    "ImageLimits",
    "MediaCache",
    "MediaLimits",
    "MediaRef",
    "MediaResolver",
    "VideoLimits",
    "decode_image",
    "decode_video_bytes",
    "decode_video_file",
]
