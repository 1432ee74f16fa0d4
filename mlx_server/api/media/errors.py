"""The failures media handling reports, each naming the part in `param`.

Most are 400s (InvalidRequestError). Refusals of *where* media comes from (a private address,
a path outside the allowed directory) are 403s: the request is well formed but not allowed.
"""

from __future__ import annotations

from mlx_server.engine.errors import InvalidRequestError

from ..errors import ApiError


def invalid(message: str, param: str, code: str) -> InvalidRequestError:
    """A 400 naming the part."""
    return InvalidRequestError(message, param=param, code=code)


def forbidden(message: str, param: str, code: str) -> ApiError:
    """A 403 naming the part: the media's source is not allowed on this server."""
    return ApiError(403, message, type="permission_error", param=param, code=code)


def show_url(url: str, limit: int = 120) -> str:
    """A URL for an error message: data payloads and very long URLs cut short."""
    if url[:5].lower() == "data:":
        return url[: min(limit, url.find(",") + 1 or limit)] + "..."
    return url if len(url) <= limit else url[:limit] + "..."


def mib(n: int) -> str:
    """A byte count in MiB for messages: 33554432 -> '32 MiB'."""
    return f"{n / 2**20:g} MiB"
