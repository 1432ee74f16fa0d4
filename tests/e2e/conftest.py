"""End-to-end fixtures: tiny random-weight checkpoints served by the real server process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

FAMILIES = ["gemma3", "qwen2_5_vl"]
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    family: str
    model_dir: Path
    base_url: str
    model_id: str
    proc: subprocess.Popen
    log_path: Path

    @property
    def v1(self) -> str:
        return self.base_url + "/v1"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(model_dir: Path, log_path: Path, *extra: str, family: str = "") -> Server:
    port = free_port()
    cmd = [sys.executable, "-m", "mlx_server", "serve", "--model", str(model_dir)]
    cmd += ["--port", str(port), "--served-model-name", f"tiny-{family}", *extra]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = open(log_path, "w")  # noqa: SIM115 - the server writes to it until the fixture ends
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early:\n{log_path.read_text()}")
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return Server(family, model_dir, base, f"tiny-{family}", proc, log_path)
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not become healthy:\n{log_path.read_text()}")


def stop_server(server: Server) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.proc.kill()


@pytest.fixture(scope="session")
def tiny_models(request) -> dict[str, Path]:
    from mlx_server.testing import cached_tiny_model

    root = Path(request.config.cache.mkdir("tiny-models"))
    return {f: cached_tiny_model(f, "tiny", root=root) for f in FAMILIES}


@pytest.fixture(scope="session", params=FAMILIES)
def server(request, tiny_models, tmp_path_factory) -> Iterator[Server]:
    family = request.param
    log_path = tmp_path_factory.mktemp("logs") / f"server-{family}.log"
    srv = start_server(tiny_models[family], log_path, family=family)
    yield srv
    stop_server(srv)
