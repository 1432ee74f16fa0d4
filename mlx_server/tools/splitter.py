"""Separates answer text from tool-call blocks as text streams in.

One path for both modes: non-streamed results (`split_all`) are the streamed events collected.

Content is the reply with its parsed tool blocks removed, then trimmed at both ends: leading
whitespace is dropped, trailing whitespace is held back and dropped at the end, whitespace
between pieces of text is kept (so "Let me check.\n<block>\nDone." gives
"Let me check.\n\nDone."). A reply made only of calls therefore has content None. Blocks that
do not parse are content, verbatim. With `enabled=False` nothing is trimmed or parsed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from .base import (
    ContentDelta,
    Event,
    ParsedCall,
    ToolCall,
    ToolCallDelta,
    ToolFormat,
    ToolLike,
    dump_arguments,
    new_call_id,
)

log = logging.getLogger("mlx_server.tools")


def _held_prefix(text: str, marker: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `marker`."""
    for size in range(min(len(text), len(marker) - 1), 0, -1):
        if text.endswith(marker[:size]):
            return size
    return 0


class ToolStreamSplitter:
    """Feeds model text in, gets `ContentDelta` / `ToolCallDelta` events out.

    `enabled=False` (tool_choice "none") passes everything through as content.
    """

    def __init__(
        self,
        fmt: ToolFormat,
        tools: Sequence[ToolLike],
        id_factory: Callable[[], str] | None = None,
        enabled: bool = True,
    ) -> None:
        self._fmt = fmt
        self._tools = list(tools)
        self._names = {t.name for t in tools}
        self._new_id = id_factory or new_call_id
        self._enabled = enabled
        self._buf = ""  # outside a block: text not yet released; inside: the block body
        self._inside = False
        self._search_from = 0  # inside a block: where to look for the end marker next
        self._pending_ws = ""  # trailing whitespace of released text, held back
        self._started = False  # whether any content was released (leading space is dropped)
        self._content: list[str] = []
        self._calls: list[ToolCall] = []
        self._finished = False

    @property
    def tool_calls(self) -> list[ToolCall]:
        """Every call emitted so far, in order."""
        return list(self._calls)

    @property
    def content(self) -> str | None:
        """All content emitted so far, or None when there was none (OpenAI's null)."""
        text = "".join(self._content)
        return text or None

    @property
    def has_calls(self) -> bool:
        """Whether any call was made (finish_reason "tool_calls")."""
        return bool(self._calls)

    def feed(self, text: str) -> list[Event]:
        """Consume more model text; return the events it completes."""
        if self._finished:
            raise RuntimeError("feed() after finish()")
        events: list[Event] = []
        if not self._enabled:
            self._emit_raw(text, events)
            return events
        self._buf += text
        while self._step(events):
            pass
        return events

    def finish(self) -> list[Event]:
        """End of the model's text: flush held-back text, settle an unterminated block."""
        if self._finished:
            return []
        self._finished = True
        events: list[Event] = []
        if self._inside:
            body = self._buf
            # A model stopped by EOS mid closing marker still made a complete call.
            cut = _held_prefix(body, self._fmt.end)
            parsed = self._parse(body[: len(body) - cut])
            if parsed is None:
                self._malformed(self._fmt.start + body, events)
            else:
                self._emit_calls(parsed, events)
        else:
            self._emit_text(self._buf, events)
        self._buf = ""
        return events

    def _step(self, events: list[Event]) -> bool:
        """Advance over the buffer once; True when a marker was consumed."""
        start, end = self._fmt.start, self._fmt.end
        if not self._inside:
            at = self._buf.find(start)
            if at < 0:
                keep = _held_prefix(self._buf, start)
                self._emit_text(self._buf[: len(self._buf) - keep], events)
                self._buf = self._buf[len(self._buf) - keep :]
                return False
            self._emit_text(self._buf[:at], events)
            self._buf = self._buf[at + len(start) :]
            self._inside, self._search_from = True, 0
            return True
        at = self._buf.find(end, self._search_from)
        if at < 0:
            self._search_from = max(0, len(self._buf) - len(end) + 1)
            return False
        body = self._buf[:at]
        parsed = self._parse(body)
        if parsed is None and self._fmt.in_string(body):
            self._search_from = at + 1  # the marker is inside a string argument
            return True
        self._buf = self._buf[at + len(end) :]
        self._inside = False
        if parsed is None:
            self._malformed(start + body + end, events)
        else:
            self._emit_calls(parsed, events)
        return True

    def _parse(self, body: str) -> list[ParsedCall] | None:
        try:
            return self._fmt.parse(body, self._tools)
        except (ValueError, TypeError, RecursionError, MemoryError):
            # Parsers return None for malformed text; this guards against their blind spots.
            log.exception("tool parser %s failed on a block", self._fmt.family)
            return None

    def _malformed(self, raw: str, events: list[Event]) -> None:
        log.warning("unparseable %s tool block kept as content: %.200r", self._fmt.family, raw)
        self._emit_text(raw, events)

    def _emit_calls(self, parsed: list[ParsedCall], events: list[Event]) -> None:
        for name, arguments in parsed:
            if name not in self._names:
                log.warning("model called unknown function %r; returned as is", name)
            call = ToolCall(id=self._new_id(), name=name, arguments=dump_arguments(arguments))
            index = len(self._calls)
            self._calls.append(call)
            events.append(ToolCallDelta(index=index, id=call.id, name=call.name, arguments=""))
            if call.arguments:
                events.append(ToolCallDelta(index, None, None, call.arguments))

    def _emit_text(self, text: str, events: list[Event]) -> None:
        """Release answer text, trimming the content's leading and trailing whitespace."""
        if not self._started:
            text = text.lstrip()
            if not text:
                return
            self._started = True
        text = self._pending_ws + text
        body = text.rstrip()
        self._pending_ws = text[len(body) :]
        self._emit_raw(body, events)

    def _emit_raw(self, text: str, events: list[Event]) -> None:
        if text:
            self._content.append(text)
            events.append(ContentDelta(text))


def split_all(
    fmt: ToolFormat,
    tools: Sequence[ToolLike],
    text: str,
    id_factory: Callable[[], str] | None = None,
    enabled: bool = True,
) -> tuple[str | None, list[ToolCall]]:
    """Non-streamed split of a whole reply: (content or None, calls). Same path as streaming."""
    splitter = ToolStreamSplitter(fmt, tools, id_factory=id_factory, enabled=enabled)
    splitter.feed(text)
    splitter.finish()
    return splitter.content, splitter.tool_calls
