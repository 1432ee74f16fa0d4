"""The command line: `tiny-model` builds a loadable checkpoint; settings come from the
environment with flags on top."""

from __future__ import annotations

import json
import subprocess
import sys

from mlx_server.cli import _serve_parser, build_settings
from mlx_server.config import settings_from_env


def test_tiny_model_command_builds_a_checkpoint(tmp_path):
    out = tmp_path / "tiny"
    done = subprocess.run(
        [sys.executable, "-m", "mlx_server", "tiny-model", "--arch", "qwen2_vl", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out)
    assert json.loads((out / "config.json").read_text())["model_type"] == "qwen2_vl"


def parse(argv, env=None):
    import argparse

    parser = argparse.ArgumentParser()
    _serve_parser(parser.add_subparsers(dest="command"))
    return build_settings(parser.parse_args(["serve", *argv]), settings_from_env(env or {}))


def test_flags_override_environment_and_defaults_are_safe():
    s = parse([], {})
    assert s.host == "127.0.0.1" and s.kv_bits == 8 and s.prompt_cache and s.api_key is None
    env = {"MLX_SERVER_PORT": "9001", "MLX_SERVER_PROMPT_CACHE_BYTES": "1048576"}
    s = parse(["--kv-bits", "0", "--no-prompt-cache", "--max-concurrency", "3"], env)
    assert (s.port, s.prompt_cache_bytes, s.kv_bits, s.prompt_cache) == (9001, 1048576, None, False)
    assert s.max_concurrency == 3
    assert parse(["--port", "7000"], env).port == 7000


def test_list_and_colour_variables():
    s = settings_from_env(
        {
            "MLX_SERVER_CORS_ORIGINS": "http://a, http://b",
            "MLX_SERVER_RGBA_BACKGROUND_COLOR": "#000000",
        }
    )
    assert s.cors_origins == ("http://a", "http://b")
    assert s.rgba_background_color == (0, 0, 0)
