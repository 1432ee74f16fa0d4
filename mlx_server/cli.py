"""Command line: `mlx-server serve ...` and `mlx-server tiny-model ...`."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace

from .config import Settings, settings_from_env


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
        prompt_cache=args.prompt_cache,
        prompt_cache_bytes=args.prompt_cache_bytes,
        max_tokens_cap=args.max_tokens_cap,
        log_level=args.log_level,
    )
    if kv_bits is not None:
        settings = replace(settings, kv_bits=kv_bits or None)
    return settings


def serve(settings: Settings) -> int:
    import uvicorn

    from .api.app import create_app

    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    print(f"mlx-server: loading {settings.model} ...", flush=True)
    app = create_app(settings)
    print(f"mlx-server: serving at http://{settings.host}:{settings.port}/v1", flush=True)
    uvicorn.run(
        app, host=settings.host, port=settings.port, log_level=settings.log_level, access_log=False
    )
    return 0


def tiny_model(args: argparse.Namespace) -> int:
    from .testing import build_tiny_model

    out = build_tiny_model(args.arch, args.out, size=args.size, seed=args.seed)
    print(out)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mlx-server")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    _tiny_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "tiny-model":
        return tiny_model(args)
    return serve(build_settings(args))


if __name__ == "__main__":
    sys.exit(main())
