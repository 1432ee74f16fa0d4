"""`data:` URLs: the declared media type and the strictly validated base64 payload."""

from __future__ import annotations

import base64
import binascii

from .errors import invalid, mib

IMAGE_TYPES = frozenset(
    {
        "image/png",
        "image/jpeg",
        "image/jpg",
        "image/webp",
        "image/gif",
        "image/bmp",
        "image/x-ms-bmp",
    }
)
VIDEO_PREFIX = "video/"


def _type_ok(kind: str, media_type: str) -> bool:
    if kind == "image":
        return media_type in IMAGE_TYPES
    return media_type.startswith(VIDEO_PREFIX) or media_type == "application/octet-stream"


def parse_data_url(url: str, kind: str, param: str, max_bytes: int) -> bytes:
    """The decoded payload of a base64 `data:` URL for an image or a video.

    Raises InvalidRequestError (code `invalid_{kind}_url`) for a malformed URL, a media type
    that is not an image (or video), bad base64, an empty or an oversized payload.
    """
    code = f"invalid_{kind}_url"
    header, sep, data = url[5:].partition(",")
    if not sep:
        raise invalid("malformed data: URL (no comma before the data)", param, code)
    media_type, *params = header.split(";")
    media_type = media_type.strip().lower()
    if "base64" not in (p.strip().lower() for p in params):
        raise invalid(
            f"the data: URL must be base64-encoded (data:{kind}/...;base64,...)", param, code
        )
    if not _type_ok(kind, media_type):
        supported = (
            "image/png, image/jpeg, image/webp, image/gif, image/bmp"
            if kind == "image"
            else "video/* (mp4, webm, avi, mov, ...)"
        )
        raise invalid(
            f"unsupported {kind} type {media_type or '(none)'!r}; supported: {supported}",
            param,
            code,
        )
    if len(data) > max_bytes * 4 // 3 + 4:
        raise invalid(
            f"the {kind} is larger than this server's limit of {mib(max_bytes)}",
            param,
            f"{kind}_too_large",
        )
    try:
        raw = base64.b64decode(data.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise invalid(f"the {kind} data is not valid base64", param, code) from None
    if not raw:
        raise invalid(f"the {kind} data is empty", param, code)
    return raw
