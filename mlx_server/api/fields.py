"""The request-field policy table: every field of `ChatCompletionRequest` is honoured, refused
with a 400 that names it, or ignored with a log line. Supporting a refused feature starts by
flipping its row to HONOURED. `render_policy_table()` writes the table as markdown
(api/FIELDS.md and the README; `scripts/sync_fields_table.py` rewrites both, tests compare).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any


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
