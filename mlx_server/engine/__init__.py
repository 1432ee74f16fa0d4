"""The MLX inference engine: knows MLX, never HTTP."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import Settings
    from .service import MLXEngine


def load_engine(settings: Settings) -> MLXEngine:
    """Load the model named in `settings` and return a started engine (imports MLX lazily)."""
    from .service import load_engine as _load

    return _load(settings)
