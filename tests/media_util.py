"""Helpers for the media tests: encoded images, data URLs, a tiny video file, a PNG bomb."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from pathlib import Path

from PIL import Image


def encode(image: Image.Image, fmt: str, **save) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **save)
    return buf.getvalue()


def data_url(raw: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(raw).decode()


def png_url(color=(200, 30, 30), size=(64, 64)) -> str:
    return data_url(encode(Image.new("RGB", size, color), "PNG"), "image/png")


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid-looking PNG of a few dozen bytes whose header claims width x height pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def write_video(
    path: Path, seconds: float = 3.0, fps: float = 10.0, size=(64, 48), fourcc: str = "mp4v"
) -> Path:
    """A small video whose frame i is a flat colour with red = 8 * i (frames are tellable)."""
    import cv2
    import numpy as np

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
    assert writer.isOpened(), f"cannot write {path} with {fourcc}"
    for i in range(round(seconds * fps)):
        frame = np.zeros((size[1], size[0], 3), np.uint8)
        frame[:, :, 2] = min(255, 8 * i)  # BGR: red channel
        writer.write(frame)
    writer.release()
    return path
