"""The request-field policy table and the one function that builds a `GenerationRequest`.

Every field of `ChatCompletionRequest` has a row in FIELD_POLICIES: honoured, refused with a 400
that names it, or ignored with a log line. Supporting a refused feature starts by flipping its
row to HONOURED. `render_policy_table()` writes the table as markdown (api/FIELDS.md, the README).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from mlx_server.config import Settings
from mlx_server.engine.errors import InvalidRequestError, ModelNotFoundError
from mlx_server.engine.types import GenerationRequest, MediaPart, SamplingParams

from .media.options import parse_mm_processor_kwargs
from .media.refs import MediaRef
from .messages import convert_messages, media_refs
from .protocol import ChatCompletionRequest
from .tooling import ToolFields, tool_fields

log = logging.getLogger("mlx_server.api")

MAX_STOP = 4
MAX_STOP_CHARS = 256
LOGIT_BIAS_RANGE = (-100.0, 100.0)


class Policy(str, Enum):
    HONOURED = "honoured"
    REFUSED = "refused"
    IGNORED = "ignored"


def _never(value: Any) -> bool:
    return False


@dataclass(frozen=True)
class FieldPolicy:
    """One request field: what the server does with it. `accepts` (refused fields only)
    lets through the values that ask for nothing unsupported, such as `n: 1`."""

    name: str
    policy: Policy
    note: str
    accepts: Callable[[Any], bool] = _never


HONOURED, REFUSED, IGNORED = Policy.HONOURED, Policy.REFUSED, Policy.IGNORED

FIELD_POLICIES: tuple[FieldPolicy, ...] = (
    FieldPolicy("model", HONOURED, "must equal the served model id, else 404 `model_not_found`"),
    FieldPolicy(
        "messages",
        HONOURED,
        "roles system, developer (as system), user, assistant (with `tool_calls`), tool (with "
        "`tool_call_id`); content a string or `text` / `image_url` / `video_url` parts; media "
        "in user messages only, as base64 `data:` URLs, http(s) URLs (public addresses unless "
        "`--allow-private-media-urls`) or local files (only under `--allowed-local-media-path`);"
        " images png, jpeg, webp, gif (first frame), bmp; `detail` is ignored; a part's `uuid` "
        "caches its media, and a later part with the same `uuid` and a null `image_url` / "
        "`video_url` reuses it (unknown uuid: 400)",
    ),
    FieldPolicy(
        "max_completion_tokens",
        HONOURED,
        "> 0 and at most the server's `max_tokens_cap`; default: the cap, else the context left",
    ),
    FieldPolicy(
        "max_tokens",
        HONOURED,
        "deprecated alias of `max_completion_tokens`; both given and different: 400",
    ),
    FieldPolicy("temperature", HONOURED, "0 to 2 (0 is greedy); default 1"),
    FieldPolicy("top_p", HONOURED, "greater than 0, at most 1; default 1"),
    FieldPolicy("top_k", HONOURED, ">= 0 (0: off)"),
    FieldPolicy("min_p", HONOURED, "0 to 1 (0: off)"),
    FieldPolicy("repetition_penalty", HONOURED, "> 0 (1: off)"),
    FieldPolicy("presence_penalty", HONOURED, "-2 to 2"),
    FieldPolicy("frequency_penalty", HONOURED, "-2 to 2"),
    FieldPolicy("seed", HONOURED, "an integer; the same seed and request give the same output"),
    FieldPolicy(
        "stop", HONOURED, "a string or up to 4 strings of 1 to 256 characters; never emitted"
    ),
    FieldPolicy("stream", HONOURED, "server-sent events, ending with `data: [DONE]`"),
    FieldPolicy(
        "stream_options", HONOURED, "`include_usage`: a last chunk with `usage` and `choices: []`"
    ),
    FieldPolicy("logprobs", HONOURED, "token log probabilities in `choices[].logprobs.content`"),
    FieldPolicy("top_logprobs", HONOURED, "0 to 20; needs `logprobs: true`"),
    FieldPolicy("logit_bias", HONOURED, "token-id keys, values -100 to 100"),
    FieldPolicy(
        "mm_processor_kwargs",
        HONOURED,
        "`fps`: video frames sampled per second of video (default 2, at most 60, up to "
        "`--max-video-frames`); `min_pixels` / `max_pixels`: Qwen image resizing bounds "
        "(refused for Gemma 3, whose image size is fixed); other keys: 400",
    ),
    FieldPolicy("n", REFUSED, "one choice per request (`n: 1`)", accepts=lambda v: v == 1),
    FieldPolicy(
        "tools",
        HONOURED,
        "functions (name, description, JSON-schema parameters) offered in the model's own "
        "tool format (Gemma 3 ```tool_code```, Qwen `<tool_call>`); calls come back as `tool_calls`",
    ),
    FieldPolicy(
        "tool_choice",
        HONOURED,
        "`auto`, `none` (tools not offered, nothing parsed), `required` or a named function: "
        "the last two are enforced by constrained decoding, arguments valid against the schema",
    ),
    FieldPolicy(
        "parallel_tool_calls", HONOURED, "false: a forced call is exactly one call; default true"
    ),
    FieldPolicy("functions", REFUSED, "deprecated by OpenAI; use `tools`"),
    FieldPolicy("function_call", REFUSED, "deprecated by OpenAI; use `tool_choice`"),
    FieldPolicy(
        "response_format",
        HONOURED,
        "`text`, `json_object` or `json_schema`, enforced by constrained decoding; an "
        "unsupported or invalid schema is a 400 naming the problem",
    ),
    FieldPolicy(
        "chat_template_kwargs", REFUSED, "clients never override the chat template's controls"
    ),
    FieldPolicy("audio", REFUSED, "audio output is not supported"),
    FieldPolicy("modalities", REFUSED, 'only `["text"]`', accepts=lambda v: v == ["text"]),
    FieldPolicy("user", IGNORED, "logged by name, never by value"),
    FieldPolicy("metadata", IGNORED, "logged by name"),
    FieldPolicy("store", IGNORED, "nothing is stored"),
    FieldPolicy("service_tier", IGNORED, "one tier"),
    FieldPolicy("prediction", IGNORED, "no speculative decoding from predicted outputs"),
    FieldPolicy("reasoning_effort", IGNORED, "no reasoning controls"),
)

POLICY_BY_NAME = {p.name: p for p in FIELD_POLICIES}
UNKNOWN_FIELD_NOTE = "any other field: ignored, its name (never its value) logged"


def render_policy_table() -> str:
    """FIELD_POLICIES as a markdown table (mirrored in api/FIELDS.md and the README)."""
    rows = ["| Field | Policy | Notes |", "|---|---|---|"]
    rows += [f"| `{p.name}` | {p.policy.value} | {p.note} |" for p in FIELD_POLICIES]
    rows.append(f"| *(other)* | ignored | {UNKNOWN_FIELD_NOTE} |")
    return "\n".join(rows) + "\n"


def _apply_policies(body: ChatCompletionRequest, request_id: str) -> None:
    for policy in FIELD_POLICIES:
        name = policy.name
        value = getattr(body, name)
        if name not in body.model_fields_set or value is None:
            continue
        if policy.policy is Policy.REFUSED and not policy.accepts(value):
            raise InvalidRequestError(
                f"`{name}` is not supported by this server: {policy.note}",
                param=name,
                code="unsupported_parameter",
            )
        if policy.policy is Policy.IGNORED:
            log.info("%s: ignoring field %r", request_id, name)
    for name in body.model_extra or {}:
        log.info("%s: ignoring unknown field %r", request_id, name[:64])


def _check_model(body: ChatCompletionRequest, settings: Settings) -> None:
    if body.model != settings.model_id:
        raise ModelNotFoundError(
            f"The model {body.model[:200]!r} does not exist; this server serves "
            f"{settings.model_id!r}",
            param="model",
        )


def _max_tokens(body: ChatCompletionRequest, settings: Settings) -> int | None:
    given = {
        k: v
        for k, v in (
            ("max_completion_tokens", body.max_completion_tokens),
            ("max_tokens", body.max_tokens),
        )
        if v is not None
    }
    if len(set(given.values())) > 1:
        raise InvalidRequestError(
            "max_tokens and max_completion_tokens differ; send only max_completion_tokens",
            param="max_tokens",
        )
    if not given:
        return settings.max_tokens_cap
    name, value = next(iter(given.items()))
    cap = settings.max_tokens_cap
    if cap is not None and value > cap:
        raise InvalidRequestError(
            f"{name} is {value}, above this server's limit of {cap}", param=name
        )
    return value


def _stop(stop: str | list[str] | None) -> tuple[str, ...]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOP:
        raise InvalidRequestError(
            f"stop takes at most {MAX_STOP} strings, got {len(stops)}", param="stop"
        )
    for s in stops:
        if not s or len(s) > MAX_STOP_CHARS:
            raise InvalidRequestError(
                f"each stop string must have 1 to {MAX_STOP_CHARS} characters", param="stop"
            )
    return tuple(stops)


def _logit_bias(bias: dict[str, Any] | None) -> tuple[tuple[int, float], ...]:
    out = []
    low, high = LOGIT_BIAS_RANGE
    for key, value in (bias or {}).items():
        if not (key.isascii() and key.isdigit()):
            raise InvalidRequestError(
                f"logit_bias keys must be token ids (non-negative integers), got {key[:40]!r}",
                param="logit_bias",
            )
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not low <= value <= high:  # NaN fails the range test too
            raise InvalidRequestError(
                f"logit_bias[{key!r}] must be a number between -100 and 100",
                param="logit_bias",
            )
        out.append((int(key), float(value)))
    return tuple(sorted(out))


def _sampling(body: ChatCompletionRequest, settings: Settings) -> SamplingParams:
    if body.top_logprobs is not None and body.top_logprobs > 0 and not body.logprobs:
        raise InvalidRequestError("top_logprobs needs logprobs: true", param="top_logprobs")
    defaults = SamplingParams()

    def pick(value: Any, default: Any) -> Any:
        return default if value is None else value

    return SamplingParams(
        temperature=pick(body.temperature, defaults.temperature),
        top_p=pick(body.top_p, defaults.top_p),
        top_k=pick(body.top_k, defaults.top_k),
        min_p=pick(body.min_p, defaults.min_p),
        repetition_penalty=pick(body.repetition_penalty, defaults.repetition_penalty),
        presence_penalty=pick(body.presence_penalty, defaults.presence_penalty),
        frequency_penalty=pick(body.frequency_penalty, defaults.frequency_penalty),
        seed=body.seed,
        max_tokens=_max_tokens(body, settings),
        stop=_stop(body.stop),
        logit_bias=_logit_bias(body.logit_bias),
        logprobs=bool(body.logprobs),
        top_logprobs=pick(body.top_logprobs, 0) if body.logprobs else 0,
    )


@dataclass(frozen=True)
class RequestPlan:
    """What a request asks for, checked, before any media is fetched."""

    request_id: str
    sampling: SamplingParams
    media: tuple[MediaRef, ...] = ()
    fps: float = 2.0
    mm_processor_kwargs: tuple[tuple[str, Any], ...] = ()
    tools: ToolFields = ToolFields()


def plan_request(
    body: ChatCompletionRequest, settings: Settings, *, request_id: str
) -> RequestPlan:
    """Apply the field policies and check everything that needs no media: model, sampling,
    `mm_processor_kwargs`, and the shape, role and count-free checks of every media part.

    Raises InvalidRequestError (400) or ModelNotFoundError (404), each naming the field."""
    _check_model(body, settings)
    _apply_policies(body, request_id)
    sampling = _sampling(body, settings)
    fps, mm_kwargs = parse_mm_processor_kwargs(body.mm_processor_kwargs, settings.max_image_pixels)
    refs = media_refs(body.messages)
    return RequestPlan(request_id, sampling, refs, fps, mm_kwargs, tool_fields(body))


def to_generation_request(
    body: ChatCompletionRequest,
    plan: RequestPlan,
    media: Mapping[str, MediaPart] | None = None,
) -> GenerationRequest:
    """The engine's frozen request: the plan plus the messages with their decoded media
    (`media`: part path -> ImagePart / VideoPart, from the media resolver). Pure."""
    return GenerationRequest(
        request_id=plan.request_id,
        messages=convert_messages(body.messages, media),
        sampling=plan.sampling,
        mm_processor_kwargs=plan.mm_processor_kwargs,
        tools=plan.tools.tools,
        constraint=plan.tools.constraint,
        tool_choice=plan.tools.choice,
        tool_name=plan.tools.name,
        parallel_tool_calls=plan.tools.parallel,
    )
