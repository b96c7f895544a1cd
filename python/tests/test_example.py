"""The example agent (examples/pydantic_ai_agent.py) runs offline as a worker from the repository root."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from harness import HERE, TIMEOUT, assert_round_trip

ROOT = HERE.parent.parent


def test_the_example_lists_asks_and_resumes() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "autopoiesis_worker", "examples.pydantic_ai_agent:agent"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT, text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    history: list[Any] = []

    def turn(t: int, prompt: str | None, **extra: Any) -> dict[str, Any]:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps({"type": "turn", "turn": t, "session_id": "ex", "prompt": prompt, "history": history, **extra}) + "\n")
        proc.stdin.flush()
        while True:
            event = json.loads(proc.stdout.readline())
            assert event["turn"] == t
            if event["op"] in ("done", "error", "approval_required"):
                assert event["op"] != "error", event
                history.extend(event["data"]["messages"])
                data: dict[str, Any] = event["data"]
                return data

    try:
        assert turn(1, "which files are there?")["content"] == "The store holds: draft.md, notes.txt, old.log."
        asked = turn(2, "delete old.log")
        [call] = asked["tool_calls"]
        assert (call["name"], call["args"]) == ("delete_file", {"name": "old.log"})
        assert turn(3, None, approvals={call["tool_call_id"]: True})["content"] == "Deleted old.log."
        [call] = turn(4, "delete notes.txt")["tool_calls"]
        denied = turn(5, None, approvals={call["tool_call_id"]: {"approved": False, "message": "keep my notes"}})
        assert denied["content"] == "I left it alone (keep my notes)."
        assert turn(6, "list the files")["content"] == "The store holds: draft.md, notes.txt."
        assert_round_trip(history)
        proc.stdin.close()
        assert proc.wait(timeout=TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
