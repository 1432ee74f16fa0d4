"""Engine fixtures: the project's tiny random-weight checkpoints, loaded in-process."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_dirs(request) -> dict[str, Path]:
    from mlx_server.testing import cached_tiny_model

    root = Path(request.config.cache.mkdir("tiny-models"))
    return {
        a: cached_tiny_model(a, "tiny", root=root) for a in ("gemma3", "qwen2_5_vl", "qwen2_vl")
    }


@pytest.fixture(scope="session")
def loaded(tiny_dirs):
    from mlx_server.engine.loader import load_model

    cache: dict = {}

    def get(family: str):
        if family not in cache:
            cache[family] = load_model(str(tiny_dirs[family]))
        return cache[family]

    return get
