"""One frozen Settings object. This module is the only place that reads os.environ."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from typing import Any

DEFAULT_MODEL = "mlx-community/gemma-3-4b-it-4bit"
ENV_PREFIX = "MLX_SERVER_"


@dataclass(frozen=True)
class Settings:
    model: str = DEFAULT_MODEL
    served_model_name: str | None = None  # id reported by /v1/models; defaults to `model`
    host: str = "127.0.0.1"
    port: int = 8000
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    kv_bits: int | None = 8  # None keeps the KV cache in the compute dtype
    kv_group_size: int = 64
    prefill_step_size: int = 256
    max_queue: int = 64
    max_concurrency: int = 8  # sequences decoded together in one batch
    prompt_cache: bool = True  # multi-entry KV prefix reuse across requests
    prompt_cache_bytes: int | None = None  # None: a share of physical memory
    max_tokens_cap: int | None = None  # refuse max_tokens above this (None: context length)
    log_level: str = "info"
    hf_offline: bool = False
    # Media inputs (api/media/): sources, limits, the uuid cache.
    allowed_local_media_path: str | None = None  # local files only under this directory
    allow_private_media_urls: bool = False  # let URLs reach loopback / private addresses
    media_fetch_timeout: float = 5.0  # seconds per http(s) fetch, redirects included
    max_media_mb: int = 32  # bytes of one image or video (inline, fetched or a file)
    max_image_pixels: int = 64 * 2**20  # decoded pixels per image or video frame
    max_images_per_prompt: int = 64
    max_videos_per_prompt: int = 4
    max_video_frames: int = 32  # frames sampled from one video
    rgba_background_color: tuple[int, int, int] = (255, 255, 255)  # under transparency
    media_cache_mb: int = 512  # decoded media kept by uuid (0: off)
    media_cache_entries: int = 1024
    # Security and limits (api/security.py, api/limits.py, api/server.py; README: Security and operations).
    api_key: str | None = field(default=None, repr=False)  # never printed with the settings
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call the API; none by default
    max_body_bytes: int = 64 * 1024 * 1024  # room for one 32 MiB image, base64-encoded
    max_json_depth: int = 64
    max_messages: int = 4096
    header_timeout: float = 10.0  # seconds to send a request's line and headers
    body_timeout: float = 60.0  # seconds to send its body, counted from the headers
    max_connections: int = 512  # open connections before uvicorn answers 503
    shutdown_grace: float = 10.0  # seconds running streams get to finish on SIGTERM/SIGINT

    @property
    def model_id(self) -> str:
        return self.served_model_name or self.model

    def with_overrides(self, **overrides: Any) -> Settings:
        """A copy with the given non-None values replaced."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


def parse_rgb(raw: str) -> tuple[int, int, int]:
    """`255,255,255`, `[255, 255, 255]` (vLLM's form) or `#ffffff` -> an RGB triple."""
    text = raw.strip()
    if text.startswith("#") and len(text) == 7:
        return tuple(int(text[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]
    values = [v.strip() for v in text.strip("[]()").split(",")]
    if len(values) != 3 or not all(v.isdigit() and int(v) <= 255 for v in values):
        raise ValueError(f"not an RGB colour: {raw!r} (expected e.g. 255,255,255 or #ffffff)")
    return tuple(int(v) for v in values)  # type: ignore[return-value]


def _coerce(name: str, raw: str, default: Any) -> Any:
    if isinstance(default, tuple):
        return parse_rgb(raw) if name == "rgba_background_color" else split_list(raw)
    if isinstance(default, bool):
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if isinstance(default, int):
        return int(raw)
    if isinstance(default, float):
        return float(raw)
    return raw


def split_list(raw: str) -> tuple[str, ...]:
    """`"a, b,,c"` -> `("a", "b", "c")`: the shape of list-valued flags and variables."""
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def settings_from_env(environ: dict[str, str] | None = None) -> Settings:
    """Settings from MLX_SERVER_* variables (plus HF_HUB_OFFLINE), over the defaults."""
    env = dict(os.environ if environ is None else environ)
    base = Settings()
    values: dict[str, Any] = {}
    for f in fields(Settings):
        raw = env.get(ENV_PREFIX + f.name.upper())
        if raw is not None and raw != "":
            default = getattr(base, f.name)
            if default is None:  # optional fields: coerce by the annotation ("int | None")
                kind = str(f.type).split("|")[0].strip()
                default = {"int": 0, "float": 0.0}.get(kind, "")
            values[f.name] = _coerce(f.name, raw, default)
    if env.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        values["hf_offline"] = True
    return replace(base, **values)
