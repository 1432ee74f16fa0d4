"""The one consumer of an engine job: engine events in, output pieces out.

Streaming writes the pieces as SSE chunks; non-streaming collects them (`collect`), so both
modes share this path. Engine text passes through a splitter before it becomes output:
`PassthroughSplitter`, or with tools the family's ToolStreamSplitter, which turns tool-call
markup into ToolCallDelta and holds back partial markers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from mlx_server.engine.errors import EngineError
from mlx_server.engine.types import (
    EngineEvent,
    PrefillProgress,
    PromptReady,
    TokenEvent,
    TokenLogprob,
    Usage,
)
from mlx_server.tools import ContentDelta, ToolCallDelta

SplitEvent = ContentDelta | ToolCallDelta


class TextSplitter(Protocol):
    """Separates engine text into content and tool calls, holding back partial markers."""

    def feed(self, text: str) -> list[SplitEvent]: ...

    def finish(self) -> list[SplitEvent]: ...


class PassthroughSplitter:
    """Everything is content."""

    def feed(self, text: str) -> list[SplitEvent]:
        return [ContentDelta(text)] if text else []

    def finish(self) -> list[SplitEvent]:
        return []


@dataclass(frozen=True)
class Keepalive:
    """Nothing to say yet (e.g. prefill progress); streaming writes an SSE comment."""

    text: str


@dataclass(frozen=True)
class Delta:
    """New output: content and/or tool-call pieces, with the logprobs of the tokens behind them."""

    events: tuple[SplitEvent, ...]
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class Held:
    """Tokens were generated but their text is held back (a tool call still being written):
    nothing to send yet, but timing (time to first token, decode rate) counts them."""

    tokens: int


@dataclass(frozen=True)
class Finish:
    reason: str
    usage: Usage


Piece = Keepalive | Delta | Held | Finish


async def output_pieces(
    first: EngineEvent, events: AsyncIterator[EngineEvent], splitter: TextSplitter
) -> AsyncIterator[Piece]:
    """Turn a job's events (`first` already taken from `events`) into pieces, ending in Finish.

    Raises EngineError when the job ends without a finish reason or with "error"/"cancelled".
    """
    prompt = PromptReady(prompt_tokens=0, cached_tokens=0)
    completion_tokens = 0
    tool_calls = False
    event: EngineEvent | None = first
    while event is not None:
        if isinstance(event, PromptReady):
            prompt = event
        elif isinstance(event, PrefillProgress):
            yield Keepalive(f"prefill {event.done}/{event.total}")
        elif isinstance(event, TokenEvent):
            out = splitter.feed(event.text) if event.text else []
            if event.finish_reason is not None:
                out += splitter.finish()
            tool_calls = tool_calls or any(isinstance(e, ToolCallDelta) for e in out)
            completion_tokens += len(event.token_ids)
            if out or event.logprobs:
                yield Delta(tuple(out), event.logprobs)
            elif event.token_ids:
                yield Held(len(event.token_ids))
            if event.finish_reason is not None:
                usage = event.usage or Usage(
                    prompt.prompt_tokens, completion_tokens, prompt.cached_tokens
                )
                yield Finish(_finish_reason(event.finish_reason, tool_calls), usage)
                return
        event = await anext(events, None)
    raise EngineError("the engine ended the request without finishing it", code="incomplete")


def _finish_reason(reason: str, tool_calls: bool) -> str:
    if reason == "error":
        raise EngineError("generation failed", code="generation_failed")
    if reason == "cancelled":
        raise EngineError("the request was cancelled by the server", code="cancelled")
    return "tool_calls" if tool_calls and reason == "stop" else reason


@dataclass
class ToolCallParts:
    id: str | None = None
    name: str | None = None
    arguments: list[str] = field(default_factory=list)


@dataclass
class Collected:
    """A whole answer gathered from its pieces (the non-streamed response)."""

    content: list[str] = field(default_factory=list)
    tool_calls: dict[int, ToolCallParts] = field(default_factory=dict)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish: Finish | None = None

    def add(self, piece: Piece) -> None:
        if isinstance(piece, Finish):
            self.finish = piece
        elif isinstance(piece, Delta):
            self.logprobs.extend(piece.logprobs)
            for ev in piece.events:
                if isinstance(ev, ContentDelta):
                    self.content.append(ev.text)
                else:
                    call = self.tool_calls.setdefault(ev.index, ToolCallParts())
                    call.id = call.id or ev.id
                    call.name = call.name or ev.name
                    call.arguments.append(ev.arguments)


async def collect(pieces: AsyncIterator[Piece]) -> Collected:
    """Gather every piece: non-streaming is streaming, collected."""
    out = Collected()
    async for piece in pieces:
        out.add(piece)
    if out.finish is None:  # output_pieces always ends in Finish or raises
        raise EngineError("the engine ended the request without finishing it", code="incomplete")
    return out
