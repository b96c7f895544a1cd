"""A pydantic-ai agent to serve with `autopoiesis serve`: one ordinary tool, one that needs approval.

Run it from the repository root (after `pip install ./python`):

    autopoiesis serve --agent worker \
        --agent-cmd 'python -m autopoiesis_worker examples.pydantic_ai_agent:agent'

The agent keeps a pretend file store in memory. `list_files` runs at once;
`delete_file` waits for a person: the turn ends with `approval_required`, the
page shows Approve / Deny, and the decision resumes the turn.

By default the model is a scripted pydantic-ai `FunctionModel`, so the example
runs offline with no key: it thinks a moment, lists the files when asked about
them, asks to delete a file when the prompt says "delete NAME", and otherwise
answers in a sentence. Set AUTOPOIESIS_EXAMPLE_MODEL to use a real model, e.g.
AUTOPOIESIS_EXAMPLE_MODEL=openai:gpt-4o-mini with OPENAI_API_KEY set (and
`pip install 'pydantic-ai-slim[openai]'`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncIterator

from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelRequest, ToolReturnPart, UserPromptPart
from pydantic_ai.models import Model
from pydantic_ai.models.function import AgentInfo, DeltaThinkingCalls, DeltaThinkingPart, DeltaToolCall, DeltaToolCalls, FunctionModel

FILES: dict[str, str] = {
    "notes.txt": "Buy milk.",
    "draft.md": "# A draft",
    "old.log": "nothing to see",
}


async def scripted(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str | DeltaToolCalls | DeltaThinkingCalls]:
    """The offline model: streams thinking, text and tool calls, picked by the last message."""
    last = messages[-1]
    returns = [p for p in last.parts if isinstance(p, ToolReturnPart)] if isinstance(last, ModelRequest) else []
    for ret in returns:  # a tool has answered: say what happened
        if ret.tool_name == "list_files":
            names = ret.content if isinstance(ret.content, list) else [ret.content]
            yield "The store holds: " + ", ".join(map(str, names)) + "."
        elif ret.outcome == "denied":
            yield f"I left it alone ({ret.content})."
        else:
            yield f"{ret.content}."
        return
    prompt = next(
        (p.content for p in reversed(last.parts) if isinstance(p, UserPromptPart) and isinstance(p.content, str)),
        "",
    ) if isinstance(last, ModelRequest) else ""
    yield {0: DeltaThinkingPart(content="The user said: ")}
    yield {0: DeltaThinkingPart(content=prompt[:80])}
    if match := re.search(r"\bdelete\s+(\S+)", prompt, re.IGNORECASE):
        yield {1: DeltaToolCall(name="delete_file", json_args=json.dumps({"name": match[1]}))}
    elif re.search(r"\b(files?|list|ls)\b", prompt, re.IGNORECASE):
        yield {1: DeltaToolCall(name="list_files", json_args="{}")}
    else:
        words = f"You said: {prompt}. Ask me to list the files, or to delete one.".split(" ")
        for i, word in enumerate(words):
            yield word if i == 0 else " " + word


def model() -> Model | str:
    """A real model when AUTOPOIESIS_EXAMPLE_MODEL names one, else the scripted one."""
    return os.environ.get("AUTOPOIESIS_EXAMPLE_MODEL") or FunctionModel(stream_function=scripted, model_name="scripted-example")


agent = Agent(
    model(),
    name="files",
    instructions="You manage a small file store. List files when asked; delete one only when asked to.",
)


@agent.tool_plain
def list_files() -> list[str]:
    """Lists the files in the store."""
    return sorted(FILES)


@agent.tool_plain(requires_approval=True)
def delete_file(name: str) -> str:
    """Deletes a file from the store (a person approves each call first)."""
    if FILES.pop(name, None) is None:
        return f"There is no {name}"
    return f"Deleted {name}"
