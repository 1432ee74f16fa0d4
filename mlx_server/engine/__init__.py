"""The MLX inference engine: knows MLX, never HTTP."""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import Settings
    from .service import MLXEngine


def load_engine(settings: Settings) -> MLXEngine:
    """Load the model named in `settings` and return a started engine (imports MLX lazily).

    The import and the loading run on a thread of their own that releases its MLX streams
    when done (mlx_vlm makes arrays on import), so the caller's thread, such as an event
    loop's executor thread, is left holding none; see runner.release_streams.
    """
    result: list[MLXEngine] = []
    errors: list[BaseException] = []

    def load() -> None:
        try:
            from .service import load_engine as _load

            result.append(_load(settings))
        except BaseException as exc:  # re-raised on the caller's thread
            errors.append(exc)
        finally:
            with contextlib.suppress(ImportError):
                from .runner import release_streams

                release_streams()

    thread = threading.Thread(target=load, name="mlx-loader")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]
