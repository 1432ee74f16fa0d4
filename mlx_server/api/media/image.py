"""Image bytes -> an RGB `ImageInput`: size checked from the header, EXIF orientation applied,
transparency flattened on the background colour, CMYK / 16-bit / float modes made 8-bit RGB.

CPU-bound: call it off the event loop.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mlx_server.engine.errors import InvalidRequestError
from mlx_server.engine.types import ImageInput

from .errors import invalid

# JPEG covers camera MPO files too (Pillow's JPEG opener returns them as MPO images).
PIL_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_INT_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})


@dataclass(frozen=True)
class ImageLimits:
    max_pixels: int = 64 * 2**20
    background: tuple[int, int, int] = (255, 255, 255)


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit and 32-bit integer greyscale scaled to 0..255, float greyscale from 0..1 (or
    clipped when it is already 0..255): Pillow's own convert() would just clip."""
    arr = np.asarray(image)
    if image.mode == "F":
        top = float(np.nanmax(arr)) if arr.size else 0.0
        scaled = np.nan_to_num(arr) * (255.0 if top <= 1.0 else 1.0)
    elif image.mode.startswith("I;16") or arr.max(initial=0) > 255:
        scaled = arr.astype(np.float64) / 257.0
    else:
        scaled = arr
    return Image.fromarray(np.clip(scaled, 0, 255).round().astype(np.uint8), "L")


def to_rgb(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Any Pillow mode as RGB; transparent pixels composited onto `background`."""
    if image.mode in _INT_MODES or image.mode == "F":
        image = _to_8bit(image)
    transparent = image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info)
    if not transparent:
        return image if image.mode == "RGB" else image.convert("RGB")
    rgba = image.convert("RGBA")
    canvas = Image.new("RGB", rgba.size, background)
    canvas.paste(rgba, mask=rgba.getchannel("A"))
    return canvas


def _too_large(width: int, height: int, limits: ImageLimits, param: str):
    return invalid(
        f"the image is {width}x{height} = {width * height} pixels, above this server's limit "
        f"of {limits.max_pixels} pixels per image",
        param,
        "image_too_large",
    )


def decode_image(raw: bytes, param: str, limits: ImageLimits) -> ImageInput:
    """Decode png, jpeg, webp, gif (first frame) or bmp bytes into an RGB `ImageInput`.

    The pixel count is checked from the header before any pixel is decoded, so a small file
    that claims huge dimensions (a decompression bomb) costs nothing. Raises
    InvalidRequestError naming `param` for anything that is not a supported image.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw), formats=PIL_FORMATS)
        if image.width * image.height > limits.max_pixels:
            raise _too_large(image.width, image.height, limits, param)
        image.seek(0)  # gif / animated webp: the first frame
        image.load()
        image = ImageOps.exif_transpose(image) or image
        return ImageInput.from_pil(to_rgb(image, limits.background))
    except InvalidRequestError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own header check, for giant claims
        raise invalid(
            f"the image is too large ({exc}); this server's limit is {limits.max_pixels} "
            "pixels per image",
            param,
            "image_too_large",
        ) from None
    except UnidentifiedImageError:
        raise invalid(
            "the data is not a supported image (png, jpeg, webp, gif or bmp)",
            param,
            "invalid_image",
        ) from None
    except Exception as exc:  # corrupt files make Pillow's plugins raise all sorts of errors
        raise invalid(f"the image could not be decoded ({exc})", param, "invalid_image") from None
