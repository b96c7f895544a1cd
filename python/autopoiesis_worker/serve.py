"""The two ways `autopoiesis serve` runs an agent program: `worker` and `exec`.

worker: one long-lived process. Each stdin line is `{"type": "turn", "turn": T,
"session_id", "prompt", "history", "approvals"?}` or `{"type": "cancel", "turn":
T}`; every turn runs as its own asyncio task, and each event goes out as one
stdout line `{"turn": T, "op": ..., "data": ...}`. A cancelled turn's task is
cancelled and nothing more is written for it. At the end of stdin, the turns
in flight are finished and the process exits.

exec: one turn. stdin holds one request line `{"session_id", "prompt",
"history", "approvals"?}`; stdout gets the turn's events, one per line.

stdout is the protocol channel: the program writes only whole JSON lines there,
flushed, and anything else (an agent's `print`) is sent to stderr instead.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import sys
import threading
from typing import IO, Any

import pydantic_core
from pydantic_ai.agent import AbstractAgent

from .turn import Turn, error_message, parse_turn, run_turn


class LoadError(Exception):
    """`MODULE:ATTR` does not name an agent."""


def load_agent(spec: str) -> AbstractAgent[Any, Any]:
    """Imports `MODULE:ATTR` (the current directory on `sys.path`) and returns that agent."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise LoadError(f"expected MODULE:ATTR (e.g. my_agent:agent), got {spec!r}")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as e:
        raise LoadError(f"cannot import module {module_name!r}: {error_message(e)}") from e
    for name in attr.split("."):
        try:
            obj = getattr(obj, name)
        except AttributeError:
            raise LoadError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not isinstance(obj, AbstractAgent):
        raise LoadError(f"{spec} is a {type(obj).__name__}, not a pydantic-ai Agent")
    return obj


def protocol_stdout() -> IO[bytes]:
    """Takes stdout for the protocol alone: returns it, and points fd 1 and `sys.stdout` at stderr."""
    sys.stdout.flush()
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


class LineWriter:
    """Writes whole JSON lines to the protocol channel, one at a time."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self._lock = threading.Lock()

    def write(self, obj: dict[str, Any]) -> None:
        # pydantic-core writes NaN and infinities as null: `json.dumps`
        # would write `NaN`, which is no JSON, and the server would take the
        # whole worker for broken.
        line = pydantic_core.to_json(obj, inf_nan_mode="null") + b"\n"
        with self._lock:
            view = memoryview(line)
            while view:  # an unbuffered write may take part of the line
                written = self._out.write(view)
                view = view[written or 0 :]
            self._out.flush()


def log(text: str) -> None:
    """A line for the server's log (our stderr)."""
    print(f"autopoiesis_worker: {text}", file=sys.stderr, flush=True)


# --- exec -------------------------------------------------------------------


async def exec_turn(agent: AbstractAgent[Any, Any], stdin: IO[bytes], writer: LineWriter) -> int:
    """Runs the turn of the first line of `stdin` (the server then closes it); returns the exit status."""

    def emit(op: str, data: dict[str, Any]) -> None:
        writer.write({"op": op, "data": data})

    raw = stdin.readline()
    try:
        request = json.loads(raw)
        if not isinstance(request, dict):
            raise ValueError("the request is not a JSON object")
        turn = parse_turn(request)
    except ValueError as e:
        emit("error", {"message": f"bad request: {e}"})
        return 2
    await run_turn(agent, turn, emit)
    return 0


# --- worker -----------------------------------------------------------------


class Worker:
    """Serves turns from stdin lines, each as an asyncio task."""

    def __init__(self, agent: AbstractAgent[Any, Any], writer: LineWriter) -> None:
        self.agent = agent
        self.writer = writer
        self.tasks: dict[int, asyncio.Task[None]] = {}

    def handle_line(self, line: bytes) -> None:
        """One stdin line: starts or cancels a turn; a bad line is logged and skipped."""
        if not line.strip():
            return
        try:
            msg = json.loads(line)
        except ValueError as e:
            log(f"ignoring a line that is not JSON ({e})")
            return
        kind = msg.get("type") if isinstance(msg, dict) else None
        turn_id = msg.get("turn") if isinstance(msg, dict) else None
        if not isinstance(turn_id, int) or isinstance(turn_id, bool):
            log(f"ignoring a line without a numeric turn: {line[:200]!r}")
            return
        if kind == "cancel":
            task = self.tasks.pop(turn_id, None)
            if task is not None:
                task.cancel()
        elif kind == "turn":
            if turn_id in self.tasks:
                log(f"ignoring turn {turn_id}: already in flight")
                return
            task = asyncio.get_running_loop().create_task(self._turn(turn_id, msg))
            self.tasks[turn_id] = task
        else:
            log(f"ignoring a line of unknown type {kind!r}")

    async def _turn(self, turn_id: int, msg: dict[str, Any]) -> None:
        def emit(op: str, data: dict[str, Any]) -> None:
            if self.tasks.get(turn_id) is task:  # not after a cancel
                self.writer.write({"turn": turn_id, "op": op, "data": data})

        task = asyncio.current_task()
        try:
            try:
                turn: Turn = parse_turn(msg)
            except ValueError as e:
                emit("error", {"message": f"bad turn: {e}"})
                return
            await run_turn(self.agent, turn, emit)
        except asyncio.CancelledError:
            pass
        finally:
            if self.tasks.get(turn_id) is task:
                del self.tasks[turn_id]

    async def serve(self, stdin: IO[bytes]) -> None:
        """Reads stdin (in a thread, so any kind of stdin works) until its end, then waits for the turns in flight."""
        loop = asyncio.get_running_loop()
        lines: asyncio.Queue[bytes | None] = asyncio.Queue()

        def read() -> None:
            for line in stdin:
                loop.call_soon_threadsafe(lines.put_nowait, line)
            loop.call_soon_threadsafe(lines.put_nowait, None)

        threading.Thread(target=read, name="stdin", daemon=True).start()
        while (line := await lines.get()) is not None:
            self.handle_line(line)
        if self.tasks:
            await asyncio.gather(*self.tasks.values(), return_exceptions=True)
