"""What a request asks for, before anything is fetched: one `MediaRef` per image or video part,
and the limits media handling works under (built once from Settings)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from mlx_server.config import Settings

from .errors import invalid
from .image import ImageLimits
from .video import VideoLimits

Kind = Literal["image", "video"]
Source = Literal["data", "http", "file"]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")


@dataclass(frozen=True)
class MediaRef:
    """One image or video part: where it is (`part`, e.g. `messages[1].content[0]`), its
    URL (None: reuse what `uuid` names) and its optional client-chosen id."""

    part: str
    kind: Kind
    url: str | None
    uuid: str | None = None

    @property
    def param(self) -> str:
        """The field errors name: `messages[1].content[0].image_url`."""
        return f"{self.part}.{self.kind}_url"


def source_of(ref: MediaRef) -> Source:
    """data:, http(s):// or a local file (file:// or a plain path); other schemes are a 400."""
    url = ref.url or ""
    head = url[:8].lower()
    if head.startswith("data:"):
        return "data"
    if head.startswith(("http://", "https://")):
        return "http"
    match = _SCHEME.match(url)
    if match and match.group(1).lower() != "file":
        raise invalid(
            f"unsupported URL scheme {match.group(1)[:20]!r}; use a data:, http(s)://, "
            "or file:// URL (or a local path)",
            ref.param,
            f"invalid_{ref.kind}_url",
        )
    return "file"


@dataclass(frozen=True)
class MediaLimits:
    """Everything media handling needs from Settings."""

    max_bytes: int = 32 * 2**20  # per media item, fetched, inline or read from disk
    image: ImageLimits = ImageLimits()
    video: VideoLimits = VideoLimits()
    max_images: int = 64
    max_videos: int = 4
    local_root: str | None = None
    default_fps: float = 2.0

    @classmethod
    def from_settings(cls, settings: Settings) -> MediaLimits:
        return cls(
            max_bytes=settings.max_media_mb * 2**20,
            image=ImageLimits(
                max_pixels=settings.max_image_pixels,
                background=settings.rgba_background_color,
            ),
            video=VideoLimits(
                max_frames=settings.max_video_frames, max_pixels=settings.max_image_pixels
            ),
            max_images=settings.max_images_per_prompt,
            max_videos=settings.max_videos_per_prompt,
            local_root=settings.allowed_local_media_path,
        )
