"""Request body -> checked plan -> the engine's frozen `GenerationRequest`.

Field policies (honoured / refused / ignored) come from the table in `fields.py`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mlx_server.config import Settings
from mlx_server.engine.errors import InvalidRequestError, ModelNotFoundError
from mlx_server.engine.types import GenerationRequest, MediaPart, SamplingParams

from .fields import FIELD_POLICIES, Policy
from .media.options import parse_mm_processor_kwargs
from .media.refs import MediaRef
from .messages import convert_messages, media_refs
from .protocol import ChatCompletionRequest
from .tooling import ToolFields, tool_fields

log = logging.getLogger("mlx_server.api")

MAX_STOP = 4
MAX_STOP_CHARS = 256
LOGIT_BIAS_RANGE = (-100.0, 100.0)


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
