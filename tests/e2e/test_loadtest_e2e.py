"""A short run of scripts/loadtest.py against the real server on the tiny Gemma 3: mixed
streamed, non-streamed, image, JSON-mode, tool, disconnecting and bad requests from several
clients at once. Zero 5xx, zero hung requests, and a healthy server afterwards."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path

import pytest

from mlx_server.testing.server import start_server, stop_server

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _loadtest():
    spec = importlib.util.spec_from_file_location("loadtest", ROOT / "scripts" / "loadtest.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["loadtest"] = module  # dataclasses look their module up while defining
    spec.loader.exec_module(module)
    return module


def test_short_mixed_load(tiny_models, tmp_path):
    loadtest = _loadtest()
    server = start_server(tiny_models["gemma3"], tmp_path / "server.log", family="gemma3")
    try:
        report = asyncio.run(
            loadtest.run_load(
                server.base_url,
                server.model_id,
                clients=4,
                duration=8,
                mix=loadtest.parse_mix(loadtest.DEFAULT_MIX),
                max_tokens=16,
                timeout=60,
                pid=server.proc.pid,
            )
        )
    finally:
        stop_server(server)
    print(report.text())
    assert report.server_errors == 0 and report.count("hung") == 0, report.text()
    assert report.count("unexpected") == 0 and report.count("transport_error") == 0
    assert report.healthy_after and report.passed
    assert report.count("ok") >= 20 and report.count("disconnected") >= 1
    assert server.proc.returncode == 0
    assert "Traceback" not in server.log()
