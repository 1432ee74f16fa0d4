"""Start and stop the real server as a child process on a free loopback port (tests, demos)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
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


def start_server(
    model_dir: Path, log_path: Path, *extra: str, family: str = "", timeout: float = 120
) -> ServerProcess:
    """`python -m mlx_server serve` on 127.0.0.1; returns once /health answers 200."""
    port = free_port()
    model_id = f"tiny-{family}" if family else Path(model_dir).name
    cmd = [sys.executable, "-m", "mlx_server", "serve", "--model", str(model_dir)]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--served-model-name", model_id, *extra]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early:\n{Path(log_path).read_text()}")
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return ServerProcess(family, Path(model_dir), base, model_id, proc, Path(log_path))
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not become healthy:\n{Path(log_path).read_text()}")


def stop_server(server: ServerProcess, timeout: float = 30) -> int:
    """SIGTERM, then SIGKILL if it does not exit in time; returns the exit code."""
    server.proc.terminate()
    try:
        return server.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        return server.proc.wait()
