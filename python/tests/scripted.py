"""Agents driven by pydantic-ai's own `FunctionModel`, scripted by the prompt, for the adapter's tests.

The last user prompt picks what the model does:

- `text`: streams "Hello", ", ", "world".
- `think`: streams a thinking part ("Let me ", "think."), then text "Thought it through.".
- `add A B`: calls the tool `add` (id `call-add`), then answers "The sum is N.".
- `retry`: calls `flaky`, which asks for a retry; answers "Gave up." after it.
- `delete PATH`: calls `delete_file` (requires approval, id `call-del`); after the
  person's decision answers with the tool's return ("Done: ..." or "Denied: ...").
- `history`: answers with the user prompts it was given, in order ("seen: a | b").
- `count`: answers with how many messages it was given ("5 messages").
- `boom`: the model raises `RuntimeError("kaboom")`.
- `hang`: streams "waiting", then waits forever (to be cancelled).
- `wait-peer`: streams "A-started", then waits until a `peer` turn has run in
  the same process; `peer` answers "peer here" and releases it.

Besides `agent`: `structured` answers a `City` through its output tool, and
`own_deferred` lists `DeferredToolRequests` in its own output types.

- `nan`: calls `measure`, which returns NaN (no JSON number), then answers
  with what it got.

Tools log each run to the file `$TOOL_LOG` (when set), one JSON line each;
`add` also prints to stdout, and so does this module as it is imported:
the adapter must keep both off the protocol.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

from pydantic_ai import Agent, DeferredToolRequests, ModelRetry, Tool
from pydantic_ai.messages import ModelMessage, ModelRequest, ToolReturnPart, UserPromptPart
from pydantic_ai.models.function import AgentInfo, DeltaThinkingCalls, DeltaThinkingPart, DeltaToolCall, DeltaToolCalls, FunctionModel

peer_arrived = asyncio.Event()

print("scripted agents imported")  # must not reach the protocol's stdout


def _log_tool(name: str, **args: object) -> None:
    path = os.environ.get("TOOL_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"tool": name, "args": args}) + "\n")


def _prompts(messages: list[ModelMessage]) -> list[str]:
    return [
        part.content
        for m in messages
        if isinstance(m, ModelRequest)
        for part in m.parts
        if isinstance(part, UserPromptPart) and isinstance(part.content, str)
    ]


def _call(name: str, args: dict[str, object], call_id: str) -> DeltaToolCalls:
    return {0: DeltaToolCall(name=name, json_args=json.dumps(args), tool_call_id=call_id)}


async def script(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str | DeltaToolCalls | DeltaThinkingCalls]:
    last = messages[-1]
    returns = [p for p in last.parts if isinstance(p, ToolReturnPart)] if isinstance(last, ModelRequest) else []
    if returns:
        ret = returns[0]
        if ret.tool_name == "add":
            yield f"The sum is {ret.content}."
        elif ret.tool_name == "flaky":
            yield "Gave up."
        elif ret.tool_name == "measure":
            yield f"Measured {ret.content}."
        elif ret.outcome == "denied":
            yield f"Denied: {ret.content}"
        else:
            yield f"Done: {ret.content}"
        return
    words = (_prompts(messages) or [""])[-1].split()
    command = words[0] if words else ""
    if command == "text":
        for chunk in ("Hello", ", ", "world"):
            yield chunk
    elif command == "think":
        yield {0: DeltaThinkingPart(content="Let me ")}
        yield {0: DeltaThinkingPart(content="think.")}
        yield "Thought it through."
    elif command == "add":
        yield _call("add", {"a": int(words[1]), "b": int(words[2])}, "call-add")
    elif command == "retry":
        yield _call("flaky", {}, "call-flaky")
    elif command == "nan":
        yield _call("measure", {}, "call-nan")
    elif command == "delete":
        yield _call("delete_file", {"path": words[1]}, "call-del")
    elif command == "history":
        yield "seen: " + " | ".join(_prompts(messages))
    elif command == "count":
        yield f"{len(messages)} messages"
    elif command == "boom":
        raise RuntimeError("kaboom")
    elif command == "hang":
        yield "waiting"
        await asyncio.Event().wait()
    elif command == "wait-peer":
        yield "A-started"
        await peer_arrived.wait()
        yield " A-done"
    elif command == "peer":
        peer_arrived.set()
        yield "peer here"
    else:
        yield f"unknown command {command!r}"


agent = Agent(FunctionModel(stream_function=script, model_name="scripted"), name="scripted")


@agent.tool_plain
def add(a: int, b: int) -> int:
    """Adds two numbers."""
    _log_tool("add", a=a, b=b)
    print(f"adding {a} and {b}")  # must not reach the protocol's stdout
    return a + b


@agent.tool_plain
def flaky() -> str:
    """Always asks the model to try again."""
    _log_tool("flaky")
    raise ModelRetry("try again later")


@agent.tool_plain
def measure() -> float:
    """A reading that is not a number."""
    return float("nan")


@agent.tool_plain(requires_approval=True)
def delete_file(path: str) -> str:
    """Deletes a file (pretend), once a person approves."""
    _log_tool("delete_file", path=path)
    return f"deleted {path}"


not_an_agent = 42


@dataclass
class City:
    name: str
    population: int


async def structured_script(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[DeltaToolCalls]:
    """Answers through the output tool: a `City`."""
    yield {0: DeltaToolCall(name=info.output_tools[0].name, json_args='{"name": "Paris", "population": 2102650}')}


structured = Agent(FunctionModel(stream_function=structured_script, model_name="structured"), output_type=City)
"""An agent whose output is structured: `done` carries it as JSON text."""

own_deferred = Agent(
    FunctionModel(stream_function=script, model_name="own-deferred"),
    output_type=[str, DeferredToolRequests],
    tools=[Tool(delete_file, requires_approval=True)],
)
"""An agent that lists DeferredToolRequests itself: the adapter adds nothing."""
