"""`data:` image URLs -> RGB `ImageInput`. CPU-bound: call it off the event loop.

Only base64 `data:` URLs of png, jpeg, webp and gif (first frame) are accepted. Transparent
images are flattened on white, JPEG EXIF orientation is applied, and every refusal is an
InvalidRequestError whose `param` names the message and part (`messages[1].content[0].image_url`).
"""

from __future__ import annotations

import base64
import binascii
import io

from PIL import Image, ImageOps, UnidentifiedImageError

from mlx_server.engine.errors import InvalidRequestError
from mlx_server.engine.types import ImageInput

# Declared mime type -> accepted; the bytes may be any of the PIL formats below.
MIME_TYPES = frozenset({"image/png", "image/jpeg", "image/jpg", "image/webp", "image/gif"})
PIL_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
MAX_IMAGE_BYTES = 32 * 1024 * 1024
MAX_IMAGE_PIXELS = 64 * 1024 * 1024  # checked from the header, before any pixel is decoded

_LATER_SCHEMES = ("http://", "https://", "file:")


def _refuse(message: str, param: str, code: str = "invalid_image_url") -> InvalidRequestError:
    return InvalidRequestError(message, param=param, code=code)


def _payload(url: str, param: str) -> bytes:
    """The decoded bytes of a base64 image data URL, strictly validated."""
    if url[:8].lower().startswith(_LATER_SCHEMES):
        scheme = url.split(":", 1)[0].lower()
        raise _refuse(
            f"{scheme} image URLs are not supported yet; send the image inline as a "
            "base64 data: URL (data:image/png;base64,...)",
            param,
            code="unsupported_image_url",
        )
    if not url[:5].lower() == "data:":
        raise _refuse("image_url.url must be a base64 data: URL (data:image/png;base64,...)", param)
    header, sep, data = url[5:].partition(",")
    if not sep:
        raise _refuse("malformed data: URL (no comma before the data)", param)
    media_type, *params = header.split(";")
    media_type = media_type.strip().lower()
    if "base64" not in (p.strip().lower() for p in params):
        raise _refuse("the data: URL must be base64-encoded (data:image/png;base64,...)", param)
    if media_type not in MIME_TYPES:
        raise _refuse(
            f"unsupported image type {media_type or '(none)'!r}; "
            "supported: image/png, image/jpeg, image/webp, image/gif",
            param,
        )
    if len(data) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise _refuse(f"image is larger than {MAX_IMAGE_BYTES // (1024 * 1024)} MiB", param)
    try:
        raw = base64.b64decode(data.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise _refuse("the image data is not valid base64", param) from None
    if not raw:
        raise _refuse("the image data is empty", param)
    return raw


def _flatten(image: Image.Image) -> Image.Image:
    """RGB, with any transparency composited onto white."""
    transparent = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    )
    if not transparent:
        return image if image.mode == "RGB" else image.convert("RGB")
    rgba = image.convert("RGBA")
    background = Image.new("RGB", rgba.size, (255, 255, 255))
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


def decode_image_url(url: str, param: str) -> ImageInput:
    """Decode a base64 `data:` image URL into an RGB `ImageInput`.

    Raises InvalidRequestError (with `param`) for other URL schemes, bad base64, unsupported
    types and bytes that are not a supported image.
    """
    raw = _payload(url, param)
    try:
        image = Image.open(io.BytesIO(raw), formats=PIL_FORMATS)
        if image.width * image.height > MAX_IMAGE_PIXELS:
            raise _refuse(
                f"image is too large ({image.width}x{image.height} pixels)", param, "invalid_image"
            )
        image.seek(0)  # gif / animated webp: the first frame
        image.load()
        image = ImageOps.exif_transpose(image) or image
        return ImageInput.from_pil(_flatten(image))
    except Image.DecompressionBombError:
        raise _refuse("image is too large", param, "invalid_image") from None
    except UnidentifiedImageError:
        raise _refuse(
            "the data is not a supported image (png, jpeg, webp or gif)", param, "invalid_image"
        ) from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise _refuse(f"the image could not be decoded ({exc})", param, "invalid_image") from None
