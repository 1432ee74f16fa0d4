"""All the media of one request, fetched and decoded: `MediaRef`s in, engine parts out.

Limits are checked first (counts, unknown uuids) so a request that will be refused fetches
nothing. Items load concurrently; decoding runs in the thread pool, off the event loop.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.concurrency import run_in_threadpool

from mlx_server.config import Settings
from mlx_server.engine.types import ImagePart, MediaPart

from .cache import MediaCache, kind_of
from .dataurl import parse_data_url
from .errors import invalid
from .fetch import HttpFetcher
from .image import decode_image
from .localfile import check_size, local_path, read_local
from .refs import MediaLimits, MediaRef, source_of
from .video import decode_video_bytes, decode_video_file

log = logging.getLogger("mlx_server.api")

MAX_PARALLEL = 4  # media items of one request fetched / decoded at once


class MediaResolver:
    """Owned by the app (`app.state.media`): limits, the http fetcher and the uuid cache."""

    def __init__(self, limits: MediaLimits, fetcher: HttpFetcher, cache: MediaCache):
        self.limits = limits
        self.fetcher = fetcher
        self.cache = cache

    @classmethod
    def from_settings(cls, settings: Settings) -> MediaResolver:
        fetcher = HttpFetcher(
            timeout=settings.media_fetch_timeout,
            allow_private=settings.allow_private_media_urls,
        )
        cache = MediaCache(settings.media_cache_mb * 2**20, settings.media_cache_entries)
        return cls(MediaLimits.from_settings(settings), fetcher, cache)

    async def aclose(self) -> None:
        await self.fetcher.aclose()

    async def resolve(self, refs: tuple[MediaRef, ...], fps: float) -> dict[str, MediaPart]:
        """part path -> decoded ImagePart / VideoPart for every ref; raises the first
        failure (a 400 or 403 naming the part)."""
        self._check_counts(refs)
        defined = {r.uuid for r in refs if r.uuid is not None and r.url is not None}
        out: dict[str, MediaPart] = {}
        for ref in refs:
            if ref.url is None and ref.uuid not in defined:
                out[ref.part] = self._cached(ref)
        todo = [r for r in refs if r.url is not None]
        loaded = await self._load_all(todo, fps)
        by_uuid: dict[str, MediaPart] = {}
        for ref, part in zip(todo, loaded):
            out[ref.part] = part
            if ref.uuid is not None:
                by_uuid[ref.uuid] = part
                if not self.cache.put(ref.uuid, part):
                    log.info("media %r not cached (cache off or item too large)", ref.uuid[:64])
        for ref in refs:
            if ref.url is None and ref.uuid in by_uuid:
                out[ref.part] = self._same_kind(ref, by_uuid[ref.uuid])
        return out

    def _check_counts(self, refs: tuple[MediaRef, ...]) -> None:
        limits = {"image": self.limits.max_images, "video": self.limits.max_videos}
        seen = {"image": 0, "video": 0}
        for ref in refs:
            seen[ref.kind] += 1
            if seen[ref.kind] > limits[ref.kind]:
                total = sum(r.kind == ref.kind for r in refs)
                raise invalid(
                    f"the request has {total} {ref.kind}s; this server accepts at most "
                    f"{limits[ref.kind]} per request (--limit-mm-per-prompt)",
                    ref.param,
                    f"too_many_{ref.kind}s",
                )

    def _cached(self, ref: MediaRef) -> MediaPart:
        part = self.cache.get(ref.uuid) if ref.uuid is not None else None
        if part is None:
            hint = "" if self.cache.enabled else " (this server's media cache is off)"
            raise invalid(
                f"unknown media uuid {str(ref.uuid)[:80]!r}{hint}: send the {ref.kind} "
                "with this uuid first, or send its URL again",
                f"{ref.part}.uuid",
                "unknown_media_uuid",
            )
        return self._same_kind(ref, part)

    @staticmethod
    def _same_kind(ref: MediaRef, part: MediaPart) -> MediaPart:
        if kind_of(part) != ref.kind:
            raise invalid(
                f"media uuid {str(ref.uuid)[:80]!r} names a {kind_of(part)}, not a {ref.kind}",
                f"{ref.part}.uuid",
                "unknown_media_uuid",
            )
        return part

    async def _load_all(self, refs: list[MediaRef], fps: float) -> list[MediaPart]:
        gate = asyncio.Semaphore(MAX_PARALLEL)

        async def one(ref: MediaRef) -> MediaPart:
            async with gate:
                return await self._load(ref, fps)

        tasks = [asyncio.ensure_future(one(r)) for r in refs]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:  # one failure fails the request: stop fetching the rest
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def _load(self, ref: MediaRef, fps: float) -> MediaPart:
        source = source_of(ref)
        if source == "http":
            raw = await self.fetcher.fetch(ref.url, ref.param, self.limits.max_bytes)
            return await run_in_threadpool(self._decode, ref, raw, fps)
        return await run_in_threadpool(self._load_sync, ref, source, fps)

    def _load_sync(self, ref: MediaRef, source: str, fps: float) -> MediaPart:
        if source == "data":
            raw = parse_data_url(ref.url, ref.kind, ref.param, self.limits.max_bytes)
            return self._decode(ref, raw, fps)
        path = local_path(ref.url, self.limits.local_root, ref.kind, ref.param)
        if ref.kind == "video":  # decoded from the checked path, never copied into memory
            check_size(path, ref.kind, ref.param, self.limits.max_bytes)
            return decode_video_file(path, fps, ref.param, self.limits.video)
        return self._decode(ref, read_local(path, ref.kind, ref.param, self.limits.max_bytes), fps)

    def _decode(self, ref: MediaRef, raw: bytes, fps: float) -> MediaPart:
        if ref.kind == "image":
            return ImagePart(decode_image(raw, ref.param, self.limits.image))
        return decode_video_bytes(raw, fps, ref.param, self.limits.video)
