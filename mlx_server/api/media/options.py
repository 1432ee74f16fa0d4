"""`mm_processor_kwargs` (vLLM's request field, also sent through the openai client's
`extra_body`): the video sampling rate for the API, image-resizing bounds for the engine."""

from __future__ import annotations

from typing import Any

from mlx_server.engine.errors import InvalidRequestError

MM_KWARGS = ("fps", "min_pixels", "max_pixels")
DEFAULT_FPS = 2.0
MAX_FPS = 60.0
_PARAM = "mm_processor_kwargs"


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _pixels(given: dict[str, Any], max_image_pixels: int) -> dict[str, int]:
    pixels = {k: given[k] for k in ("min_pixels", "max_pixels") if k in given}
    for key, value in pixels.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise InvalidRequestError(f"{_PARAM}.{key} must be a positive integer", param=_PARAM)
        if value > max_image_pixels:
            raise InvalidRequestError(
                f"{_PARAM}.{key} is {value}, above this server's limit of "
                f"{max_image_pixels} pixels per image",
                param=_PARAM,
            )
    if pixels.get("min_pixels", 0) > pixels.get("max_pixels", max_image_pixels):
        raise InvalidRequestError(f"{_PARAM}.min_pixels is above max_pixels", param=_PARAM)
    return pixels


def parse_mm_processor_kwargs(
    given: dict[str, Any] | None, max_image_pixels: int
) -> tuple[float, tuple[tuple[str, Any], ...]]:
    """(video fps, sorted image-processor overrides). Unknown keys and bad values are 400s
    naming `mm_processor_kwargs`; whether the model can honour the overrides is the engine's
    call (Gemma 3 cannot)."""
    given = given or {}
    unknown = sorted(k for k in given if k not in MM_KWARGS)
    if unknown:
        raise InvalidRequestError(
            f"{_PARAM} has unsupported keys {', '.join(k[:40] for k in unknown)}; "
            f"supported: {', '.join(MM_KWARGS)}",
            param=_PARAM,
            code="unsupported_parameter",
        )
    fps = given.get("fps", DEFAULT_FPS)
    if not _number(fps) or not 0 < fps <= MAX_FPS:
        raise InvalidRequestError(
            f"{_PARAM}.fps must be a number above 0 and at most {MAX_FPS:g}", param=_PARAM
        )
    return float(fps), tuple(sorted(_pixels(given, max_image_pixels).items()))
