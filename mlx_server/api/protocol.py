"""Pydantic models in OpenAI's shapes: the chat request, the response, stream chunks.

Requests are validated strictly (no "1" for 1, no NaN or Infinity) so a client mistake is a
400 naming the field. Range checks that pydantic can state live here as `Field` constraints;
rules that span fields live in `requests.py`, next to the field-policy table.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer

_STRICT = ConfigDict(strict=True, allow_inf_nan=False)

# ---------------------------------------------------------------- request


class ImageURL(BaseModel):
    model_config = _STRICT
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class VideoURL(BaseModel):
    model_config = _STRICT
    url: str


class ContentPart(BaseModel):
    """One part of a message's content. Unknown part types are kept so they can be refused
    by name (`messages[i].content[j].type`) instead of failing as a shapeless union.

    `uuid` (vLLM's convention) names the part's media for reuse: a later part may carry the
    same uuid with `"image_url": null` (or `"video_url": null`)."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="allow")
    type: str
    text: str | None = None
    image_url: ImageURL | None = None
    video_url: VideoURL | None = None
    uuid: str | None = Field(None, min_length=1, max_length=256)


class FunctionCall(BaseModel):
    model_config = _STRICT
    name: str
    arguments: str


class ToolCallIn(BaseModel):
    model_config = _STRICT
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    model_config = _STRICT
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None


class FunctionDef(BaseModel):
    model_config = _STRICT
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDefIn(BaseModel):
    model_config = _STRICT
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(BaseModel):
    model_config = _STRICT
    name: str


class NamedToolChoice(BaseModel):
    model_config = _STRICT
    type: Literal["function"]
    function: NamedFunction


class StreamOptions(BaseModel):
    model_config = _STRICT
    include_usage: bool = False


_SEED_MIN, _SEED_MAX = -(2**63), 2**64 - 1


class ChatCompletionRequest(BaseModel):
    """`POST /v1/chat/completions` body. Unknown fields land in `model_extra` (logged, ignored).

    Every field here has a row in `requests.FIELD_POLICIES`.
    """

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="allow")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, gt=0)
    max_completion_tokens: int | None = Field(None, gt=0)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    seed: int | None = Field(None, ge=_SEED_MIN, le=_SEED_MAX)
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    logit_bias: dict[str, Any] | None = None  # values checked in requests.py, naming the key
    mm_processor_kwargs: dict[str, Any] | None = None  # keys and values checked in requests.py
    # Refused unless they mean "off" (see requests.FIELD_POLICIES).
    n: int | None = Field(None, ge=1)
    tools: list[ToolDefIn] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    functions: Any = None
    function_call: Any = None
    response_format: dict[str, Any] | None = None
    chat_template_kwargs: Any = None
    audio: Any = None
    modalities: list[str] | None = None
    # Ignored with a log line; typed Any so that a quirky value never fails a request.
    user: Any = None
    metadata: Any = None
    store: Any = None
    service_tier: Any = None
    prediction: Any = None
    reasoning_effort: Any = None


# ---------------------------------------------------------------- response


class _OmitNone(BaseModel):
    """Drops the fields named in `_omit_none` when they are None (OpenAI leaves them out)."""

    _omit_none: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _drop_none(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        return {k: v for k, v in data.items() if v is not None or k not in self._omit_none}


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class UsageOut(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = PromptTokensDetails()


class TopLogprobOut(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprobOut(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprobOut] = []


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprobOut] | None = None
    refusal: None = None


class FunctionOut(_OmitNone):
    _omit_none = frozenset({"name", "arguments"})
    name: str | None = None
    arguments: str | None = None


class ToolCallOut(_OmitNone):
    _omit_none = frozenset({"index", "id", "type"})
    index: int | None = None  # streamed deltas only
    id: str | None = None
    type: Literal["function"] | None = "function"
    function: FunctionOut


class ResponseMessage(_OmitNone):
    _omit_none = frozenset({"tool_calls"})
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCallOut] | None = None


class Choice(BaseModel):
    index: int = 0
    message: ResponseMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str


class ChatCompletion(_OmitNone):
    _omit_none = frozenset({"system_fingerprint"})
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: UsageOut
    system_fingerprint: str | None = None


class Delta(_OmitNone):
    _omit_none = frozenset({"role", "content", "tool_calls"})
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallOut] | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(_OmitNone):
    _omit_none = frozenset({"usage", "system_fingerprint"})
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: UsageOut | None = None
    system_fingerprint: str | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "mlx_server"
    context_length: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
