"""Tool-call formats: pure text in, ToolCall out. Imports nothing else from the package.

`format_for(family)` picks a family's `ToolFormat` from the `FORMATS` table; a
`ToolStreamSplitter` (or `split_all`) separates answer text from the calls in model output.
"""

from __future__ import annotations

from . import gemma3, qwen
from .base import (
    CallLike,
    ContentDelta,
    Event,
    ParsedCall,
    ToolCall,
    ToolCallDelta,
    ToolDef,
    ToolFormat,
    ToolLike,
    ToolResult,
    new_call_id,
)
from .splitter import ToolStreamSplitter, split_all

# Model family (as the engine's ModelInfo.family names it) -> its tool-call convention.
FORMATS: dict[str, ToolFormat] = {
    "gemma3": gemma3.FORMAT,
    "qwen2_vl": qwen.FORMAT,
    "qwen2_5_vl": qwen.FORMAT,
}


def format_for(family: str) -> ToolFormat:
    """The tool format of a model family; ValueError for a family without one."""
    try:
        return FORMATS[family]
    except KeyError:
        raise ValueError(f"no tool-call format for model family {family!r}") from None


__all__ = [
    "FORMATS",
    "CallLike",
    "ContentDelta",
    "Event",
    "ParsedCall",
    "ToolCall",
    "ToolCallDelta",
    "ToolDef",
    "ToolFormat",
    "ToolLike",
    "ToolResult",
    "ToolStreamSplitter",
    "format_for",
    "new_call_id",
    "split_all",
]
