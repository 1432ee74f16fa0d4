"""Local media files: only under the directory given with --allowed-local-media-path.

The path is resolved with realpath (symlinks and `..` followed) before the containment check,
so a link inside the directory that points out of it, or a `../` trick, is refused.
"""

from __future__ import annotations

import os
import stat
from urllib.parse import unquote, urlsplit

from .errors import forbidden, invalid, mib


def _path_of(spec: str, param: str) -> str:
    if spec[:5].lower() != "file:":
        return spec
    parts = urlsplit(spec)
    if parts.netloc not in ("", "localhost"):
        raise invalid(
            f"file: URLs must name a local file (file:///path), not host {parts.netloc[:80]!r}",
            param,
            "invalid_media_url",
        )
    return unquote(parts.path)


def local_path(spec: str, root: str | None, kind: str, param: str) -> str:
    """The real path of a `file://` URL or a plain path (relative ones are taken relative to
    `root`). Raises a 403 when local files are off or the file is outside `root`, and a 400
    when it does not exist or is not a regular file."""
    if root is None:
        raise forbidden(
            f"local {kind} files are not allowed on this server (start it with "
            "--allowed-local-media-path DIR to allow files under DIR)",
            param,
            "local_media_forbidden",
        )
    path = _path_of(spec, param)
    if not path or "\x00" in path:
        raise invalid(f"invalid local {kind} path", param, "invalid_media_url")
    base = os.path.realpath(root)
    real = os.path.realpath(os.path.join(base, path))  # an absolute path replaces base
    if os.path.commonpath([real, base]) != base:
        raise forbidden(
            f"the {kind} file {spec[:200]!r} is outside the directory this server may read "
            "media from",
            param,
            "local_media_forbidden",
        )
    if not os.path.isfile(real):
        raise invalid(f"no such {kind} file: {spec[:200]!r}", param, "media_not_found")
    return real


def _check_info(info: os.stat_result, kind: str, param: str, max_bytes: int) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise invalid(f"the {kind} path is not a regular file", param, "media_not_found")
    if info.st_size > max_bytes:
        raise invalid(
            f"the {kind} file is larger than this server's limit of {mib(max_bytes)}",
            param,
            f"{kind}_too_large",
        )


def check_size(path: str, kind: str, param: str, max_bytes: int) -> None:
    """A 400 unless `path` is a regular file of at most `max_bytes`."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise invalid(
            f"cannot read the {kind} file: {exc.strerror}", param, "media_not_found"
        ) from None
    _check_info(info, kind, param, max_bytes)


def read_local(path: str, kind: str, param: str, max_bytes: int) -> bytes:
    """The bytes of a file `local_path` returned, at most `max_bytes` of them."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise invalid(
            f"cannot read the {kind} file: {exc.strerror}", param, "media_not_found"
        ) from None
    with os.fdopen(fd, "rb") as f:
        _check_info(os.fstat(f.fileno()), kind, param, max_bytes)
        return f.read(max_bytes + 1)[:max_bytes]
