"""Command line: `mlx-server serve ...` and `mlx-server tiny-model ...`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace

from .config import Settings, parse_rgb, settings_from_env, split_list


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a model over the OpenAI-compatible HTTP API")
    p.add_argument("--model", help="local model directory or Hugging Face hub id")
    p.add_argument("--served-model-name", help="model id reported by /v1/models")
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000)")
    p.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="compute dtype; auto measures what is fastest on this backend",
    )
    p.add_argument("--kv-bits", type=int, choices=[0, 4, 8], help="KV cache bits (0 = off)")
    p.add_argument("--prefill-step-size", type=int, help="prompt tokens per prefill chunk")
    p.add_argument("--max-queue", type=int, help="requests that may wait before 429s")
    p.add_argument(
        "--max-concurrency", type=int, help="sequences decoded together in one batch (default 8)"
    )
    p.add_argument(
        "--no-prompt-cache",
        dest="prompt_cache",
        action="store_false",
        default=None,
        help="turn off KV prefix reuse across requests",
    )
    p.add_argument(
        "--prompt-cache-bytes", type=int, help="byte budget of the prefix cache (default: RAM/5)"
    )
    p.add_argument("--max-tokens-cap", type=int, help="refuse max_tokens above this")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    _media_flags(p)
    _security_flags(p)


def _media_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("media inputs")
    g.add_argument(
        "--allowed-local-media-path",
        metavar="DIR",
        help="allow image/video parts to name local files under DIR (off by default)",
    )
    g.add_argument(
        "--allow-private-media-urls",
        action="store_true",
        default=None,
        help="let media URLs reach loopback, private and other non-public addresses",
    )
    g.add_argument("--media-fetch-timeout", type=float, metavar="S", help="per fetch (default 5)")
    g.add_argument("--max-media-mb", type=int, help="bytes of one image or video (default 32)")
    g.add_argument("--max-image-pixels", type=int, help="decoded pixels per image or frame")
    g.add_argument(
        "--limit-mm-per-prompt",
        type=parse_mm_limits,
        metavar="LIMITS",
        help='images (and videos) per request: 16, or vLLM\'s \'{"image": 16, "video": 2}\'',
    )
    g.add_argument("--max-video-frames", type=int, help="frames sampled per video (default 32)")
    g.add_argument(
        "--rgba-background-color",
        type=parse_rgb,
        metavar="R,G,B",
        help="colour under transparent pixels (default 255,255,255)",
    )
    g.add_argument("--media-cache-size", type=int, metavar="MIB", help="uuid media cache (0: off)")
    g.add_argument("--media-cache-entries", type=int, help="uuid media cache entries")


def parse_mm_limits(raw: str) -> dict[str, int]:
    """`16` (images) or vLLM's JSON `{"image": 16, "video": 2}` -> {"image": 16, ...}."""
    text = raw.strip()
    if text.isdigit():
        return {"image": int(text)}
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    ok = isinstance(value, dict) and value and set(value) <= {"image", "video"}
    if not ok or not all(isinstance(v, int) and v >= 0 for v in value.values()):
        raise argparse.ArgumentTypeError(
            f'expected a count or {{"image": N, "video": M}}, got {raw!r}'
        )
    return value


def _security_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("security and limits (README: Security and operations)")
    g.add_argument(
        "--api-key",
        help="require `Authorization: Bearer KEY` on /v1/* and /metrics "
        "(prefer MLX_SERVER_API_KEY: flags show up in `ps`)",
    )
    g.add_argument(
        "--cors-origins",
        type=split_list,
        help="comma-separated browser origins allowed to call the API (default: none)",
    )
    g.add_argument("--max-body-bytes", type=int, help="largest request body (default 64 MiB)")
    g.add_argument("--max-json-depth", type=int, help="deepest JSON nesting (default 64)")
    g.add_argument("--max-messages", type=int, help="most messages per request (default 4096)")
    g.add_argument("--header-timeout", type=float, help="seconds to send headers (default 10)")
    g.add_argument("--body-timeout", type=float, help="seconds to send the body (default 60)")
    g.add_argument("--max-connections", type=int, help="open connections before 503 (512)")
    g.add_argument(
        "--shutdown-grace",
        type=float,
        help="seconds running requests get to finish on SIGTERM/SIGINT (default 10)",
    )


def _tiny_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tiny-model", help="build a tiny random-weight test checkpoint")
    p.add_argument("--arch", required=True, choices=["gemma3", "qwen2_5_vl", "qwen2_vl"])
    p.add_argument("--size", default="tiny", choices=["tiny", "bench"])
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=0)


def build_settings(args: argparse.Namespace, base: Settings | None = None) -> Settings:
    """Environment first, then command-line flags on top."""
    base = base or settings_from_env()
    kv_bits = args.kv_bits
    settings = base.with_overrides(
        model=args.model,
        served_model_name=args.served_model_name,
        host=args.host,
        port=args.port,
        dtype=args.dtype,
        prefill_step_size=args.prefill_step_size,
        max_queue=args.max_queue,
        max_concurrency=args.max_concurrency,
        prompt_cache=args.prompt_cache,
        prompt_cache_bytes=args.prompt_cache_bytes,
        max_tokens_cap=args.max_tokens_cap,
        log_level=args.log_level,
        allowed_local_media_path=args.allowed_local_media_path,
        allow_private_media_urls=args.allow_private_media_urls,
        media_fetch_timeout=args.media_fetch_timeout,
        max_media_mb=args.max_media_mb,
        max_image_pixels=args.max_image_pixels,
        max_video_frames=args.max_video_frames,
        rgba_background_color=args.rgba_background_color,
        media_cache_mb=args.media_cache_size,
        media_cache_entries=args.media_cache_entries,
        api_key=args.api_key,
        cors_origins=args.cors_origins,
        max_body_bytes=args.max_body_bytes,
        max_json_depth=args.max_json_depth,
        max_messages=args.max_messages,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        max_connections=args.max_connections,
        shutdown_grace=args.shutdown_grace,
    )
    limits = args.limit_mm_per_prompt or {}
    settings = settings.with_overrides(
        max_images_per_prompt=limits.get("image"), max_videos_per_prompt=limits.get("video")
    )
    if kv_bits is not None:
        settings = replace(settings, kv_bits=kv_bits or None)
    return settings


def serve(settings: Settings) -> int:
    from .api.app import create_app
    from .api.security import warn_if_exposed
    from .api.server import run_server

    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    warn_if_exposed(settings)
    print(f"mlx-server: loading {settings.model} ...", flush=True)
    app = create_app(settings)
    print(f"mlx-server: serving at http://{settings.host}:{settings.port}/v1", flush=True)
    return run_server(app, settings)


def tiny_model(args: argparse.Namespace) -> int:
    from .testing import build_tiny_model

    out = build_tiny_model(args.arch, args.out, size=args.size, seed=args.seed)
    print(out)
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlx-server")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    _tiny_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if args.command == "tiny-model":
        return tiny_model(args)
    return serve(build_settings(args))


if __name__ == "__main__":
    sys.exit(main())
