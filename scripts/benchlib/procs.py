"""Start and stop the servers a benchmark talks to: ours and mlx-vlm's, on loopback only.

    with ProcessPool() as pool:
        ours = pool.start(ours_cmd(model_dir, port), "ours", log_dir)
        vlm = pool.start(mlx_vlm_cmd(f32_dir, port2), "mlx-vlm", log_dir, env=apc_env(True, tmp))

Every server runs in its own session (Ctrl-C reaches only this script, which then stops
them) and is terminated, then killed, when the pool closes, on success, error or interrupt.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def ours_cmd(model_dir: Path, port: int, *extra: str) -> list[str]:
    """`python -m mlx_server serve` on loopback with the bench settings."""
    base = [sys.executable, "-m", "mlx_server", "serve", "--model", str(model_dir)]
    return base + ["--host", HOST, "--port", str(port), "--served-model-name", "bench", *extra]


def mlx_vlm_cmd(model_dir: Path, port: int, *extra: str) -> list[str]:
    """mlx-vlm's own server with the model preloaded."""
    base = [sys.executable, "-m", "mlx_vlm.server", "--model", str(model_dir)]
    return base + ["--host", HOST, "--port", str(port), *extra]


def apc_env(enabled: bool, cache_home: Path) -> dict[str, str]:
    """mlx-vlm's automatic prefix cache switch (env `APC_ENABLED`, read in its
    server/runtime_config.py), kept in memory and away from the user's ~/.cache."""
    return {
        "APC_ENABLED": "1" if enabled else "0",
        "APC_DISK_ENABLED": "0",
        "MLX_VLM_CACHE_HOME": str(cache_home),
    }


@dataclass
class Server:
    """A started server: its loopback URL, process and log file."""

    name: str
    base_url: str  # http://127.0.0.1:PORT
    proc: subprocess.Popen
    log_path: Path

    @property
    def v1(self) -> str:
        return self.base_url + "/v1"

    def log_tail(self, n: int = 20) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])


class ProcessPool:
    """Owns the server processes a run starts; closing it stops every one of them."""

    def __init__(self) -> None:
        self._servers: list[Server] = []

    def __enter__(self) -> ProcessPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(
        self,
        cmd: list[str],
        name: str,
        log_dir: Path,
        *,
        env: dict[str, str] | None = None,
        ready_timeout_s: float = 180.0,
    ) -> Server:
        """Launch `cmd` (which must serve on the --port it names) and wait for GET /health."""
        port = int(cmd[cmd.index("--port") + 1])
        log_path = log_dir / f"{name}.log"
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                env=full_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        server = Server(name, f"http://{HOST}:{port}", proc, log_path)
        self._servers.append(server)
        wait_ready(server, ready_timeout_s)
        return server

    def stop(self, server: Server, grace_s: float = 15.0) -> None:
        """SIGTERM, then SIGKILL after `grace_s`; only ever the process this pool started."""
        if server in self._servers:
            self._servers.remove(server)
        if server.proc.poll() is not None:
            return
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.proc.wait(timeout=5)

    def close(self) -> None:
        for server in list(reversed(self._servers)):
            self.stop(server)


def wait_ready(server: Server, timeout_s: float) -> None:
    """Poll /health until it answers 200; raise with the log tail if the server dies or stalls."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited early:\n{server.log_tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(server.base_url + "/health", timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise RuntimeError(f"{server.name} not ready after {timeout_s:.0f} s:\n{server.log_tail()}")
