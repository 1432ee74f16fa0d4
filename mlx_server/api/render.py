"""Output pieces -> OpenAI response objects: stream chunks, or one collected completion."""

from __future__ import annotations

from dataclasses import dataclass

from mlx_server.engine.types import TokenLogprob, Usage

from .output import Collected, ContentDelta, Delta, Finish, SplitEvent, ToolCallDelta
from .protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    FunctionOut,
    PromptTokensDetails,
    ResponseMessage,
    TokenLogprobOut,
    ToolCallOut,
    TopLogprobOut,
    UsageOut,
)
from .protocol import Delta as DeltaOut


@dataclass(frozen=True)
class CompletionMeta:
    """What every chunk (or the one response) of a completion repeats."""

    id: str
    created: int
    model: str
    logprobs: bool = False
    include_usage: bool = False


def usage_out(usage: Usage) -> UsageOut:
    return UsageOut(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=usage.cached_tokens),
    )


def _utf8(token: str) -> list[int]:
    return list(token.encode("utf-8", errors="replace"))


def logprobs_out(logprobs: list[TokenLogprob] | tuple[TokenLogprob, ...]) -> ChoiceLogprobs:
    return ChoiceLogprobs(
        content=[
            TokenLogprobOut(
                token=lp.token,
                logprob=lp.logprob,
                bytes=_utf8(lp.token),
                top_logprobs=[
                    TopLogprobOut(token=t.token, logprob=t.logprob, bytes=_utf8(t.token))
                    for t in lp.top
                ],
            )
            for lp in logprobs
        ]
    )


def _stream_tool_calls(events: tuple[SplitEvent, ...]) -> list[ToolCallOut] | None:
    calls = [
        ToolCallOut(
            index=e.index,
            id=e.id,
            type="function" if e.id is not None else None,
            function=FunctionOut(name=e.name, arguments=e.arguments),
        )
        for e in events
        if isinstance(e, ToolCallDelta)
    ]
    return calls or None


def _chunk(meta: CompletionMeta, choice: ChunkChoice) -> ChatCompletionChunk:
    return ChatCompletionChunk(id=meta.id, created=meta.created, model=meta.model, choices=[choice])


def role_chunk(meta: CompletionMeta) -> ChatCompletionChunk:
    """The first chunk: the assistant role and empty content."""
    return _chunk(meta, ChunkChoice(delta=DeltaOut(role="assistant", content="")))


def delta_chunk(meta: CompletionMeta, piece: Delta) -> ChatCompletionChunk:
    """New content and/or tool-call fragments (and their logprobs when asked for)."""
    text = "".join(e.text for e in piece.events if isinstance(e, ContentDelta))
    tool_calls = _stream_tool_calls(piece.events)
    content = text if text or tool_calls is None else None
    logprobs = logprobs_out(piece.logprobs) if meta.logprobs else None
    delta = DeltaOut(content=content, tool_calls=tool_calls)
    return _chunk(meta, ChunkChoice(delta=delta, logprobs=logprobs))


def finish_chunk(meta: CompletionMeta, finish: Finish) -> ChatCompletionChunk:
    """The last choice chunk: an empty delta and the finish_reason."""
    return _chunk(meta, ChunkChoice(delta=DeltaOut(), finish_reason=finish.reason))


def usage_chunk(meta: CompletionMeta, usage: Usage) -> ChatCompletionChunk:
    """`stream_options.include_usage`: usage, with no choices."""
    return ChatCompletionChunk(
        id=meta.id, created=meta.created, model=meta.model, choices=[], usage=usage_out(usage)
    )


def completion(meta: CompletionMeta, collected: Collected) -> ChatCompletion:
    """The non-streamed response: every piece of the stream, gathered into one message."""
    assert collected.finish is not None
    tool_calls = [
        ToolCallOut(id=c.id, function=FunctionOut(name=c.name, arguments="".join(c.arguments)))
        for _, c in sorted(collected.tool_calls.items())
    ]
    text = "".join(collected.content)
    message = ResponseMessage(
        content=None if tool_calls and not text else text, tool_calls=tool_calls or None
    )
    choice = Choice(
        message=message,
        logprobs=logprobs_out(collected.logprobs) if meta.logprobs else None,
        finish_reason=collected.finish.reason,
    )
    return ChatCompletion(
        id=meta.id,
        created=meta.created,
        model=meta.model,
        choices=[choice],
        usage=usage_out(collected.finish.usage),
    )
