"""Request fields for tool calling and structured output -> the engine's frozen values.

`tools`, `tool_choice` and `parallel_tool_calls` become ToolSpecs plus a tool choice the
engine enforces by constrained decoding; `response_format` becomes an engine Constraint.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlx_server.engine.constraint_spec import check_json_schema, constraint_for_response_format
from mlx_server.engine.errors import InvalidRequestError
from mlx_server.engine.types import Constraint, ToolChoice, ToolSpec

from .protocol import ChatCompletionRequest, NamedToolChoice


@dataclass(frozen=True)
class ToolFields:
    tools: tuple[ToolSpec, ...] = ()
    choice: ToolChoice = "auto"
    name: str | None = None
    parallel: bool = True
    constraint: Constraint | None = None


def _tool_specs(body: ChatCompletionRequest) -> tuple[ToolSpec, ...]:
    specs, seen = [], set()
    for i, tool in enumerate(body.tools or []):
        fn = tool.function
        if fn.name in seen:
            raise InvalidRequestError(
                f"two tools are named {fn.name!r}; tool names must be unique",
                param=f"tools[{i}].function.name",
            )
        seen.add(fn.name)
        params = (
            fn.parameters if fn.parameters is not None else {"type": "object", "properties": {}}
        )
        if params.get("type", "object") != "object":
            raise InvalidRequestError(
                "function parameters must be a JSON schema of type object",
                param=f"tools[{i}].function.parameters",
            )
        specs.append(ToolSpec(name=fn.name, description=fn.description or "", parameters=params))
    return tuple(specs)


def _choice(
    body: ChatCompletionRequest, tools: tuple[ToolSpec, ...]
) -> tuple[ToolChoice, str | None]:
    choice = body.tool_choice
    if choice is None:
        return "auto", None
    if not tools:
        raise InvalidRequestError("tool_choice needs a non-empty `tools` list", param="tool_choice")
    if isinstance(choice, NamedToolChoice):
        name = choice.function.name
        if name not in {t.name for t in tools}:
            raise InvalidRequestError(
                f"tool_choice names {name[:64]!r}, which is not among `tools`",
                param="tool_choice.function.name",
            )
        return "function", name
    return choice, None


def tool_fields(body: ChatCompletionRequest) -> ToolFields:
    """Validate and translate the tool and response-format fields (400s name the field)."""
    tools = _tool_specs(body)
    choice, name = _choice(body, tools)
    constraint = constraint_for_response_format(body.response_format)
    forced = choice in ("required", "function")
    if forced:
        if constraint is not None:
            raise InvalidRequestError(
                "tool_choice that forces a call cannot be combined with a JSON response_format",
                param="response_format",
            )
        for i, tool in enumerate(tools):
            if name is None or tool.name == name:
                check_json_schema(tool.parameters, param=f"tools[{i}].function.parameters")
    return ToolFields(
        tools=() if choice == "none" else tools,
        choice=choice,
        name=name,
        parallel=True if body.parallel_tool_calls is None else body.parallel_tool_calls,
        constraint=constraint,
    )
