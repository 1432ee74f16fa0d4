"""Command line: `mlx-server serve ...` and `mlx-server tiny-model ...`."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace

from .config import Settings, settings_from_env, split_list


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
    p.add_argument("--max-tokens-cap", type=int, help="refuse max_tokens above this")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    _security_flags(p)


def _security_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("security and limits (docs/security.md)")
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
        max_tokens_cap=args.max_tokens_cap,
        log_level=args.log_level,
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
