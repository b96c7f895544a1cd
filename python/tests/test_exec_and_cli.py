"""The exec protocol (`--exec MODULE:ATTR`), `--help`, and agents that cannot be loaded."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from harness import HERE, TIMEOUT, assert_round_trip, command, ops, run_exec, tool_runs


def test_exec_streams_a_turn_and_exits_0() -> None:
    events, status, _ = run_exec({"session_id": "s", "prompt": "add 4 5", "history": []})
    assert status == 0
    assert ops(events) == [
        ("tool_call", {"tool_call_id": "call-add", "name": "add", "details": {"a": 4, "b": 5}}),
        ("tool_result", {"tool_call_id": "call-add", "status": "success", "details": 9}),
        ("token", {"content": "The sum is 9."}),
        ("done", {"content": "The sum is 9."}),
    ]
    assert all(set(e) == {"op", "data"} for e in events)  # no "turn" in exec
    assert_round_trip(events[-1]["data"]["messages"])


def test_exec_history_round_trip() -> None:
    first, _, _ = run_exec({"session_id": "s", "prompt": "think", "history": []})
    history = first[-1]["data"]["messages"]
    events, status, _ = run_exec({"session_id": "s", "prompt": "history", "history": history})
    assert status == 0
    assert events[-1]["data"]["content"] == "seen: think | history"
    assert_round_trip(history + events[-1]["data"]["messages"])


@pytest.mark.parametrize(
    ("decision", "result", "ran"),
    [
        (True, ("success", "deleted /tmp/x"), [{"path": "/tmp/x"}]),
        ({"approved": True}, ("success", "deleted /tmp/x"), [{"path": "/tmp/x"}]),
        ({"approved": False, "message": "keep it"}, ("denied", "keep it"), []),
        ({"approved": True, "override_args": {"path": "/tmp/y"}}, ("success", "deleted /tmp/y"), [{"path": "/tmp/y"}]),
    ],
)
def test_exec_approval_round_trip(decision: object, result: tuple[str, str], ran: list[dict[str, str]], tool_log: Path) -> None:
    events, status, _ = run_exec({"session_id": "s", "prompt": "delete /tmp/x", "history": []}, tool_log=tool_log)
    assert status == 0
    assert ops(events)[-1] == (
        "approval_required",
        {"tool_calls": [{"tool_call_id": "call-del", "name": "delete_file", "args": {"path": "/tmp/x"}}]},
    )
    asked = events[-1]["data"]["messages"]
    request = {"session_id": "s", "prompt": None, "history": asked, "approvals": {"call-del": decision}}
    events, status, _ = run_exec(request, tool_log=tool_log)
    assert status == 0
    [tool_result] = [e["data"] for e in events if e["op"] == "tool_result"]
    assert (tool_result["status"], tool_result["details"]) == result
    assert events[-1]["op"] == "done"
    assert_round_trip(asked + events[-1]["data"]["messages"])
    assert [r["args"] for r in tool_runs(tool_log)] == ran


def test_exec_exception_is_an_error_event() -> None:
    events, status, _ = run_exec({"session_id": "s", "prompt": "boom", "history": []})
    assert status == 0
    assert events == [{"op": "error", "data": {"message": "RuntimeError: kaboom"}}]


def test_exec_bad_request_is_an_error_event_and_exit_2() -> None:
    events, status, _ = run_exec(b"not json\n")
    assert status == 2
    [error] = events
    assert error["op"] == "error" and error["data"]["message"].startswith("bad request: ")
    events, status, _ = run_exec({"session_id": "s", "prompt": 3, "history": []})
    assert status == 2 and '"prompt" is neither a string nor null' in events[0]["data"]["message"]


def test_help_explains_both_modes() -> None:
    p = subprocess.run(command("--help"), capture_output=True, text=True, timeout=TIMEOUT)
    assert p.returncode == 0
    for words in ("python -m autopoiesis_worker MODULE:ATTR", "--exec MODULE:ATTR", "approval_required", '"type":"cancel"'):
        assert words in p.stdout


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_module:agent", "cannot import module 'no_such_module': ModuleNotFoundError"),
        ("scripted:missing", "module 'scripted' has no attribute 'missing'"),
        ("scripted:not_an_agent", "scripted:not_an_agent is a int, not a pydantic-ai Agent"),
        ("scripted", "expected MODULE:ATTR"),
    ],
)
@pytest.mark.parametrize("mode", [[], ["--exec"]])
def test_a_bad_module_attr_is_a_clear_error(spec: str, message: str, mode: list[str]) -> None:
    p = subprocess.run(command(*mode, spec), input=b"", capture_output=True, text=False, cwd=HERE, timeout=TIMEOUT)
    assert p.returncode == 2
    assert p.stdout == b""
    assert message in p.stderr.decode()


def test_a_structured_output_is_done_as_json_text() -> None:
    events, status, _ = run_exec({"session_id": "s", "prompt": "which city?", "history": []}, spec="scripted:structured")
    assert status == 0
    assert events[-1]["op"] == "done"
    assert json.loads(events[-1]["data"]["content"]) == {"name": "Paris", "population": 2102650}
    assert_round_trip(events[-1]["data"]["messages"])


def test_an_agent_that_lists_deferred_tool_requests_itself(tool_log: Path) -> None:
    events, _, _ = run_exec({"session_id": "s", "prompt": "delete /tmp/z", "history": []}, spec="scripted:own_deferred", tool_log=tool_log)
    assert events[-1]["op"] == "approval_required"
    request = {"session_id": "s", "prompt": None, "history": events[-1]["data"]["messages"], "approvals": {"call-del": True}}
    events, _, _ = run_exec(request, spec="scripted:own_deferred", tool_log=tool_log)
    assert events[-1]["data"]["content"] == "Done: deleted /tmp/z"
    assert [r["args"] for r in tool_runs(tool_log)] == [{"path": "/tmp/z"}]
