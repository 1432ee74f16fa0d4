"""End-to-end fixtures: tiny random-weight checkpoints served by the real server process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mlx_server.testing.server import ServerProcess, start_server, stop_server

FAMILIES = ["gemma3", "qwen2_5_vl"]


@pytest.fixture(scope="session")
def tiny_models(request) -> dict[str, Path]:
    from mlx_server.testing import cached_tiny_model

    root = Path(request.config.cache.mkdir("tiny-models"))
    return {f: cached_tiny_model(f, "tiny", root=root) for f in FAMILIES}


@pytest.fixture(scope="session", params=FAMILIES)
def server(request, tiny_models, tmp_path_factory) -> Iterator[ServerProcess]:
    family = request.param
    log_path = tmp_path_factory.mktemp("logs") / f"server-{family}.log"
    srv = start_server(tiny_models[family], log_path, family=family)
    yield srv
    stop_server(srv)
