"""The test harness: runs the adapter as a real subprocess and speaks its protocols over pipes."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from pydantic_ai.messages import ModelMessagesTypeAdapter

HERE = Path(__file__).resolve().parent
TIMEOUT = 30.0
ENDINGS = ("done", "error", "approval_required")


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def strict_json(line: str | bytes) -> Any:
    """A protocol line, parsed as the server parses it (no NaN or Infinity)."""
    return json.loads(line, parse_constant=_not_json)


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "autopoiesis_worker", *args]


def env(tool_log: Path | None = None) -> dict[str, str]:
    e = dict(os.environ)
    e.pop("TOOL_LOG", None)
    if tool_log is not None:
        e["TOOL_LOG"] = str(tool_log)
    return e


def assert_round_trip(messages: list[Any]) -> None:
    """`messages` are pydantic-ai's JSON: they validate, and dump back to the same objects."""
    assert messages, "no messages"
    assert all(m["kind"] in ("request", "response") and isinstance(m["parts"], list) for m in messages)
    parsed = ModelMessagesTypeAdapter.validate_python(messages)
    assert ModelMessagesTypeAdapter.dump_python(parsed, mode="json") == messages


def run_exec(request: dict[str, Any] | bytes, spec: str = "scripted:agent", tool_log: Path | None = None) -> tuple[list[dict[str, Any]], int, str]:
    """One exec turn: its events, exit status and stderr."""
    data = request if isinstance(request, bytes) else (json.dumps(request) + "\n").encode()
    p = subprocess.run(command("--exec", spec), input=data, capture_output=True, cwd=HERE, env=env(tool_log), timeout=TIMEOUT)
    events = [strict_json(line) for line in p.stdout.splitlines()]
    return events, p.returncode, p.stderr.decode()


class WorkerProc:
    """A running worker: send lines, read its events (every stdout line must be one JSON object)."""

    def __init__(self, spec: str = "scripted:agent", tool_log: Path | None = None) -> None:
        self.proc = subprocess.Popen(
            command(spec), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=HERE, env=env(tool_log)
        )
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self.pending: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.put(strict_json(raw))  # a partial or stray line fails here
        self.lines.put(None)

    def send(self, obj: dict[str, Any]) -> None:
        self.send_raw(json.dumps(obj).encode() + b"\n")

    def send_raw(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def turn(self, turn: int, prompt: str | None, history: list[Any] | None = None, **extra: Any) -> None:
        self.send({"type": "turn", "turn": turn, "session_id": f"s{turn}", "prompt": prompt, "history": history or [], **extra})

    def next_event(self, turn: int) -> dict[str, Any]:
        """The next event of `turn` (others' events are kept for later)."""
        for i, kept in enumerate(self.pending):
            if kept["turn"] == turn:
                return self.pending.pop(i)
        while True:
            line = self.lines.get(timeout=TIMEOUT)
            assert line is not None, "the worker closed its stdout"
            event = line
            self.seen.append(event)
            assert isinstance(event.get("turn"), int) and isinstance(event.get("op"), str), event
            if event["turn"] == turn:
                return event
            self.pending.append(event)

    def until_end(self, turn: int) -> list[dict[str, Any]]:
        """Events of `turn` up to and including its ending."""
        events = []
        while True:
            events.append(self.next_event(turn))
            if events[-1]["op"] in ENDINGS:
                return events

    def close(self) -> int:
        """Closes stdin, reads to the end of stdout, and returns the exit status."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        while (event := self.lines.get(timeout=TIMEOUT)) is not None:
            self.seen.append(event)
        return self.proc.wait(timeout=TIMEOUT)

    def stderr(self) -> str:
        assert self.proc.stderr is not None
        return self.proc.stderr.read().decode()


def tool_runs(tool_log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in tool_log.read_text().splitlines()] if tool_log.exists() else []


def ops(events: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    """(op, data without messages) pairs, for comparing whole event sequences."""
    return [(e["op"], {k: v for k, v in e["data"].items() if k != "messages"}) for e in events]
