"""One turn of a pydantic-ai agent, as the events `autopoiesis serve` reads.

`parse_turn` reads what the server sends for a turn (the exec request line, or
a worker's `turn` line); `run_turn` runs the agent with
`Agent.run_stream_events` and hands each event to `emit(op, data)`:

- text (a text part's initial content and its deltas) -> `token {"content"}`
- thinking (a thinking part's initial content and its deltas) -> `thinking
  {"content"}`; the end of a thinking part -> `thinking_done {}`
- a function tool call -> `tool_call {"tool_call_id", "name", "details": args}`
- its result -> `tool_result {"tool_call_id", "status", "details": content}`,
  status `success`, `denied` (approval refused) or `error` (anything else:
  a retry asked of the model, a failure)
- the end -> `done {"content": output, "messages": new messages}`, or, when
  tools wait for a person, `approval_required {"tool_calls": [...],
  "messages": [...]}`; an exception -> `error {"message": "Type: text"}`.

`messages` is pydantic-ai's own JSON of the run's new messages, which the
server stores verbatim as the turn's history.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pydantic_core
from pydantic_ai import (
    AgentRunResultEvent,
    DeferredToolRequests,
    DeferredToolResults,
    FunctionToolCallEvent,
    FunctionToolResultEvent,
    PartDeltaEvent,
    PartEndEvent,
    PartStartEvent,
    TextPart,
    TextPartDelta,
    ThinkingPart,
    ThinkingPartDelta,
    ToolApproved,
    ToolDenied,
)
from pydantic_ai.agent import AbstractAgent
from pydantic_ai.messages import ModelMessage, ModelMessagesTypeAdapter

Emit = Callable[[str, dict[str, Any]], None]
"""Where a turn's events go: `emit(op, data)`."""

Decision = bool | ToolApproved | ToolDenied


@dataclass
class Turn:
    """What the server asks of one turn."""

    session_id: str
    prompt: str | None
    """`None` for a turn resumed after approvals."""
    history: list[ModelMessage]
    approvals: dict[str, Decision] | None
    """The person's decisions, by tool call id, for a resumed turn."""


def parse_decision(tool_call_id: str, value: Any) -> Decision:
    """A DECISION (`true`, `false`, or `{"approved", "message"?, "override_args"?}`) as pydantic-ai's."""
    if isinstance(value, bool):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("approved"), bool):
        if value["approved"]:
            override = value.get("override_args")
            if override is None:
                return ToolApproved()
            if not isinstance(override, Mapping):
                raise ValueError(f"approvals[{tool_call_id!r}].override_args is not an object")
            return ToolApproved(override_args=dict(override))
        message = value.get("message")
        if message is None:
            return ToolDenied()
        if not isinstance(message, str):
            raise ValueError(f"approvals[{tool_call_id!r}].message is not a string")
        return ToolDenied(message)
    raise ValueError(f"approvals[{tool_call_id!r}] is not true, false or {{\"approved\": bool, ...}}")


def parse_turn(request: Mapping[str, Any]) -> Turn:
    """Reads a turn request; `ValueError` says what is wrong with it."""
    prompt = request.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise ValueError('"prompt" is neither a string nor null')
    raw_history = request.get("history", [])
    if not isinstance(raw_history, list):
        raise ValueError('"history" is not an array')
    try:
        history = ModelMessagesTypeAdapter.validate_python(raw_history)
    except pydantic_core.ValidationError as e:
        raise ValueError(f'"history" is not pydantic-ai messages: {e}') from None
    approvals: dict[str, Decision] | None = None
    raw_approvals = request.get("approvals")
    if raw_approvals is not None:
        if not isinstance(raw_approvals, Mapping):
            raise ValueError('"approvals" is not an object')
        approvals = {str(k): parse_decision(str(k), v) for k, v in raw_approvals.items()}
    return Turn(
        session_id=str(request.get("session_id", "")),
        prompt=prompt,
        history=history,
        approvals=approvals,
    )


def jsonable(value: Any) -> Any:
    """Any value (a tool's return, a structured output) as plain JSON data."""
    return pydantic_core.to_jsonable_python(value, serialize_unknown=True, bytes_mode="base64")


def _no_constant(name: str) -> Any:
    """`NaN` and the infinities are no JSON: such arguments stay a string."""
    raise ValueError(name)


def tool_args(args: str | Mapping[str, Any] | None) -> Any:
    """A call's arguments as an object when they are one (a model's JSON string parsed), else as given."""
    if isinstance(args, str):
        try:
            parsed = json.loads(args, parse_constant=_no_constant) if args.strip() else {}
        except ValueError:
            return args
        return parsed if isinstance(parsed, dict) else args
    return jsonable(args) if args is not None else {}


def result_status(part: Any) -> str:
    """`success`, `denied` or `error` for a tool's result part."""
    if getattr(part, "part_kind", None) == "retry-prompt":
        return "error"
    outcome = getattr(part, "outcome", "success")
    if outcome in ("success", "denied"):
        return outcome
    return "error"


def output_text(output: Any) -> str:
    """The run's output as the `content` string of `done`."""
    if isinstance(output, str):
        return output
    return pydantic_core.to_json(output, serialize_unknown=True).decode()


def messages_json(messages: Sequence[ModelMessage]) -> list[Any]:
    """Messages in pydantic-ai's own JSON, as the server stores them."""
    dumped: list[Any] = ModelMessagesTypeAdapter.dump_python(list(messages), mode="json")
    return dumped


def error_message(exc: BaseException) -> str:
    """`<ExceptionType>: <text>` (or just the type when the text is empty)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def output_types(agent: AbstractAgent[Any, Any]) -> list[Any] | None:
    """The agent's output types plus `DeferredToolRequests`, or `None` when the agent's own do already (or must be kept)."""
    own = getattr(agent, "output_type", str)
    types = list(own) if isinstance(own, Sequence) and not isinstance(own, str) else [own]
    if DeferredToolRequests in types:
        return None
    if getattr(agent, "_output_validators", None):
        # pydantic-ai refuses a run `output_type` on an agent with output
        # validators: such an agent must list DeferredToolRequests itself.
        return None
    return [*types, DeferredToolRequests]


async def run_turn(agent: AbstractAgent[Any, Any], turn: Turn, emit: Emit) -> None:
    """Runs one turn, emitting its events and exactly one ending (`done`, `approval_required` or `error`).

    Cancelling the task that runs it (`asyncio.CancelledError`) emits nothing more.
    """
    try:
        await _run(agent, turn, emit)
    except Exception as e:  # an agent's failure ends the turn, never the worker
        emit("error", {"message": error_message(e)})


async def _run(agent: AbstractAgent[Any, Any], turn: Turn, emit: Emit) -> None:
    kwargs: dict[str, Any] = {"message_history": turn.history}
    if turn.approvals is not None:
        kwargs["deferred_tool_results"] = DeferredToolResults(approvals=dict(turn.approvals))
    if (types := output_types(agent)) is not None:
        kwargs["output_type"] = types
    result = None
    async with agent.run_stream_events(turn.prompt, **kwargs) as events:
        async for event in events:
            if isinstance(event, PartStartEvent):
                if isinstance(event.part, TextPart) and event.part.content:
                    emit("token", {"content": event.part.content})
                elif isinstance(event.part, ThinkingPart) and event.part.content:
                    emit("thinking", {"content": event.part.content})
            elif isinstance(event, PartDeltaEvent):
                delta = event.delta
                if isinstance(delta, TextPartDelta) and delta.content_delta:
                    emit("token", {"content": delta.content_delta})
                elif isinstance(delta, ThinkingPartDelta) and delta.content_delta:
                    emit("thinking", {"content": delta.content_delta})
            elif isinstance(event, PartEndEvent):
                if isinstance(event.part, ThinkingPart):
                    emit("thinking_done", {})
            elif isinstance(event, FunctionToolCallEvent):
                emit(
                    "tool_call",
                    {
                        "tool_call_id": event.part.tool_call_id,
                        "name": event.part.tool_name,
                        "details": tool_args(event.part.args),
                    },
                )
            elif isinstance(event, FunctionToolResultEvent):
                emit(
                    "tool_result",
                    {
                        "tool_call_id": event.part.tool_call_id,
                        "status": result_status(event.part),
                        "details": jsonable(event.part.content),
                    },
                )
            elif isinstance(event, AgentRunResultEvent):
                result = event.result
    if result is None:  # pragma: no cover - pydantic-ai always ends with the result
        raise RuntimeError("the run ended without a result")
    messages = messages_json(result.new_messages())
    output = result.output
    if isinstance(output, DeferredToolRequests):
        if output.calls:
            names = ", ".join(sorted({c.tool_name for c in output.calls}))
            raise RuntimeError(f"external deferred tool calls are not supported by the server: {names}")
        tool_calls = [
            {"tool_call_id": c.tool_call_id, "name": c.tool_name, "args": tool_args(c.args)}
            for c in output.approvals
        ]
        emit("approval_required", {"tool_calls": tool_calls, "messages": messages})
    else:
        emit("done", {"content": output_text(output), "messages": messages})
