"""Media cached under client-chosen ids (vLLM's `uuid` on a content part): a bounded LRU.

A client that sends the same image many times sends it once with a uuid, then only the uuid
(`"image_url": null`); the server keeps the decoded image, not the bytes.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from mlx_server.engine.types import ImagePart, MediaPart, VideoPart


def media_bytes(part: MediaPart) -> int:
    """Memory a decoded image or video holds (RGB, one byte per channel)."""
    images = [part.image] if isinstance(part, ImagePart) else list(part.frames)
    return sum(im.image.width * im.image.height * 3 for im in images)


class MediaCache:
    """uuid -> decoded media, least recently used first out; bounded by count and bytes."""

    def __init__(self, max_bytes: int, max_entries: int):
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self._items: OrderedDict[str, tuple[MediaPart, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0 and self.max_entries > 0

    def get(self, uuid: str) -> MediaPart | None:
        with self._lock:
            item = self._items.get(uuid)
            if item is None:
                return None
            self._items.move_to_end(uuid)
            return item[0]

    def put(self, uuid: str, part: MediaPart) -> bool:
        """Cache `part` under `uuid` (replacing what was there); False when it cannot fit."""
        size = media_bytes(part)
        if not self.enabled or size > self.max_bytes:
            return False
        with self._lock:
            old = self._items.pop(uuid, None)
            if old is not None:
                self._bytes -= old[1]
            self._items[uuid] = (part, size)
            self._bytes += size
            while self._bytes > self.max_bytes or len(self._items) > self.max_entries:
                _, (_, freed) = self._items.popitem(last=False)
                self._bytes -= freed
        return True

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"entries": len(self._items), "bytes": self._bytes}


def kind_of(part: MediaPart) -> str:
    return "video" if isinstance(part, VideoPart) else "image"
