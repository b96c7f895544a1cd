"""The worker protocol (`python -m autopoiesis_worker MODULE:ATTR`), against the real pydantic-ai."""

from __future__ import annotations

from pathlib import Path

from harness import WorkerProc, assert_round_trip, ops, tool_runs


def test_streamed_text_ends_with_done_and_pydantic_ai_messages(worker: WorkerProc) -> None:
    worker.turn(1, "text")
    events = worker.until_end(1)
    assert ops(events) == [
        ("token", {"content": "Hello"}),
        ("token", {"content": ", "}),
        ("token", {"content": "world"}),
        ("done", {"content": "Hello, world"}),
    ]
    assert all(e["turn"] == 1 for e in events)
    messages = events[-1]["data"]["messages"]
    assert_round_trip(messages)
    assert [m["kind"] for m in messages] == ["request", "response"]
    assert messages[0]["parts"][0] == {**messages[0]["parts"][0], "part_kind": "user-prompt", "content": "text"}
    assert messages[1]["model_name"] == "scripted"
    assert messages[1]["parts"][0]["content"] == "Hello, world"
    assert worker.close() == 0


def test_thinking_streams_and_ends_before_the_text(worker: WorkerProc) -> None:
    worker.turn(1, "think")
    events = worker.until_end(1)
    assert ops(events) == [
        ("thinking", {"content": "Let me "}),
        ("thinking", {"content": "think."}),
        ("thinking_done", {}),
        ("token", {"content": "Thought it through."}),
        ("done", {"content": "Thought it through."}),
    ]
    messages = events[-1]["data"]["messages"]
    assert_round_trip(messages)
    kinds = [p["part_kind"] for p in messages[1]["parts"]]
    assert kinds == ["thinking", "text"]
    assert messages[1]["parts"][0]["content"] == "Let me think."


def test_a_tool_call_and_its_result(worker: WorkerProc, tool_log: Path) -> None:
    worker.turn(1, "add 2 3")
    events = worker.until_end(1)
    assert ops(events) == [
        ("tool_call", {"tool_call_id": "call-add", "name": "add", "details": {"a": 2, "b": 3}}),
        ("tool_result", {"tool_call_id": "call-add", "status": "success", "details": 5}),
        ("token", {"content": "The sum is 5."}),
        ("done", {"content": "The sum is 5."}),
    ]
    messages = events[-1]["data"]["messages"]
    assert_round_trip(messages)
    parts = [(m["kind"], [p["part_kind"] for p in m["parts"]]) for m in messages]
    assert parts == [
        ("request", ["user-prompt"]),
        ("response", ["tool-call"]),
        ("request", ["tool-return"]),
        ("response", ["text"]),
    ]
    assert tool_runs(tool_log) == [{"tool": "add", "args": {"a": 2, "b": 3}}]
    assert worker.close() == 0
    assert "adding 2 and 3" in worker.stderr()  # the tool's print went to stderr, not the protocol


def test_a_retry_asked_by_a_tool_is_an_error_result(worker: WorkerProc) -> None:
    worker.turn(1, "retry")
    events = worker.until_end(1)
    assert ops(events) == [
        ("tool_call", {"tool_call_id": "call-flaky", "name": "flaky", "details": {}}),
        ("tool_result", {"tool_call_id": "call-flaky", "status": "error", "details": "try again later"}),
        ("token", {"content": "Gave up."}),
        ("done", {"content": "Gave up."}),
    ]


def test_an_exception_ends_the_turn_with_error_naming_it(worker: WorkerProc) -> None:
    worker.turn(1, "boom")
    assert ops(worker.until_end(1)) == [("error", {"message": "RuntimeError: kaboom"})]
    worker.turn(2, "text")  # the worker goes on
    assert worker.until_end(2)[-1]["data"]["content"] == "Hello, world"


def test_history_in_is_what_the_model_sees(worker: WorkerProc) -> None:
    worker.turn(1, "text")
    first = worker.until_end(1)[-1]["data"]["messages"]
    worker.turn(2, "history", first)
    done = worker.until_end(2)[-1]
    assert done["data"]["content"] == "seen: text | history"
    second = done["data"]["messages"]
    assert_round_trip(first + second)
    assert [m["kind"] for m in second] == ["request", "response"]  # only what this turn added


def test_the_servers_minimal_history_is_accepted(worker: WorkerProc) -> None:
    t = "2026-01-01T00:00:00Z"
    history = [  # as the server records a turn of an agent that sends no messages
        {"kind": "request", "parts": [{"content": "hi", "part_kind": "user-prompt", "timestamp": t}]},
        {
            "kind": "response",
            "model_name": "echo",
            "timestamp": t,
            "parts": [
                {"content": "hmm", "part_kind": "thinking"},
                {"args": {"a": 1}, "part_kind": "tool-call", "tool_call_id": "c1", "tool_name": "add"},
            ],
        },
        {"kind": "request", "parts": [{"content": 2, "part_kind": "tool-return", "timestamp": t, "tool_call_id": "c1", "tool_name": "add"}]},
        {"kind": "response", "parts": [{"content": "two", "part_kind": "text"}], "model_name": "echo", "timestamp": t},
    ]
    worker.turn(1, "history", history)
    done = worker.until_end(1)[-1]
    assert done["data"]["content"] == "seen: hi | history"
    assert_round_trip(done["data"]["messages"])


def test_a_history_that_is_not_pydantic_ai_messages_fails_only_that_turn(worker: WorkerProc) -> None:
    worker.turn(1, "text", [{"kind": "nonsense"}])
    [error] = worker.until_end(1)
    assert error["op"] == "error"
    assert error["data"]["message"].startswith('bad turn: "history" is not pydantic-ai messages')
    worker.send_raw(b"this is not json\n")
    worker.send({"type": "mystery", "turn": 5})
    worker.turn(2, "text")
    assert worker.until_end(2)[-1]["op"] == "done"


def test_approval_required_then_approved(worker: WorkerProc, tool_log: Path) -> None:
    worker.turn(1, "delete /tmp/a")
    events = worker.until_end(1)
    assert ops(events) == [
        ("tool_call", {"tool_call_id": "call-del", "name": "delete_file", "details": {"path": "/tmp/a"}}),
        ("approval_required", {"tool_calls": [{"tool_call_id": "call-del", "name": "delete_file", "args": {"path": "/tmp/a"}}]}),
    ]
    asked = events[-1]["data"]["messages"]
    assert_round_trip(asked)
    assert asked[-1]["kind"] == "response" and asked[-1]["parts"][-1]["part_kind"] == "tool-call"
    assert tool_runs(tool_log) == []  # nothing ran before the decision

    worker.turn(2, None, asked, approvals={"call-del": True})
    events = worker.until_end(2)
    assert ops(events)[1:] == [
        ("tool_result", {"tool_call_id": "call-del", "status": "success", "details": "deleted /tmp/a"}),
        ("token", {"content": "Done: deleted /tmp/a"}),
        ("done", {"content": "Done: deleted /tmp/a"}),
    ]
    resumed = events[-1]["data"]["messages"]
    assert_round_trip(asked + resumed)
    assert [(m["kind"], [p["part_kind"] for p in m["parts"]]) for m in resumed] == [
        ("request", ["tool-return"]),
        ("response", ["text"]),
    ]
    assert tool_runs(tool_log) == [{"tool": "delete_file", "args": {"path": "/tmp/a"}}]


def test_denied_with_a_message_the_tool_does_not_run(worker: WorkerProc, tool_log: Path) -> None:
    worker.turn(1, "delete /tmp/b")
    asked = worker.until_end(1)[-1]["data"]["messages"]
    worker.turn(2, None, asked, approvals={"call-del": {"approved": False, "message": "not that file"}})
    events = worker.until_end(2)
    assert ops(events)[1:] == [
        ("tool_result", {"tool_call_id": "call-del", "status": "denied", "details": "not that file"}),
        ("token", {"content": "Denied: not that file"}),
        ("done", {"content": "Denied: not that file"}),
    ]
    resumed = events[-1]["data"]["messages"]
    assert_round_trip(resumed)
    assert resumed[0]["parts"][0]["outcome"] == "denied"
    assert tool_runs(tool_log) == []


def test_plain_false_denies_with_pydantic_ais_message(worker: WorkerProc, tool_log: Path) -> None:
    worker.turn(1, "delete /tmp/c")
    asked = worker.until_end(1)[-1]["data"]["messages"]
    worker.turn(2, None, asked, approvals={"call-del": False})
    assert worker.until_end(2)[-1]["data"]["content"] == "Denied: The tool call was denied."
    assert tool_runs(tool_log) == []


def test_approved_with_override_args_runs_with_them(worker: WorkerProc, tool_log: Path) -> None:
    worker.turn(1, "delete /tmp/d")
    asked = worker.until_end(1)[-1]["data"]["messages"]
    worker.turn(2, None, asked, approvals={"call-del": {"approved": True, "override_args": {"path": "/tmp/safe"}}})
    events = worker.until_end(2)
    assert events[-1]["data"]["content"] == "Done: deleted /tmp/safe"
    assert tool_runs(tool_log) == [{"tool": "delete_file", "args": {"path": "/tmp/safe"}}]


def test_a_malformed_decision_is_an_error(worker: WorkerProc, tool_log: Path) -> None:
    worker.turn(1, "delete /tmp/e")
    asked = worker.until_end(1)[-1]["data"]["messages"]
    worker.turn(2, None, asked, approvals={"call-del": "yes"})
    [error] = worker.until_end(2)
    assert error["op"] == "error" and "approvals['call-del']" in error["data"]["message"]
    assert tool_runs(tool_log) == []


def test_two_turns_in_flight_at_once(worker: WorkerProc) -> None:
    worker.turn(1, "wait-peer")
    assert worker.next_event(1)["data"] == {"content": "A-started"}
    worker.turn(2, "peer")  # turn 1 waits for this one: they must run concurrently
    assert worker.until_end(2)[-1]["data"]["content"] == "peer here"
    assert worker.until_end(1)[-1]["data"]["content"] == "A-started A-done"


def test_eight_turns_interleave_and_all_complete(worker: WorkerProc) -> None:
    for t in range(1, 9):
        worker.turn(t, "add 1 2" if t % 2 else "think")
    for t in range(1, 9):
        done = worker.until_end(t)[-1]
        assert done["op"] == "done"
        assert done["data"]["content"] == ("The sum is 3." if t % 2 else "Thought it through.")
    assert worker.close() == 0


def test_cancel_stops_a_hanging_turn_and_nothing_more_is_written(worker: WorkerProc) -> None:
    worker.turn(1, "hang")
    assert worker.next_event(1)["data"] == {"content": "waiting"}
    worker.turn(2, "wait-peer")
    assert worker.next_event(2)["data"] == {"content": "A-started"}
    worker.send({"type": "cancel", "turn": 1})
    worker.turn(3, "peer")
    assert worker.until_end(3)[-1]["op"] == "done"
    assert worker.until_end(2)[-1]["data"]["content"] == "A-started A-done"
    worker.send({"type": "cancel", "turn": 99})  # unknown: ignored
    assert worker.close() == 0  # exits at the end of stdin, the cancelled turn gone
    assert [e for e in worker.seen if e["turn"] == 1] == [{"turn": 1, "op": "token", "data": {"content": "waiting"}}]


def test_a_tool_returning_nan_is_sent_as_null_and_the_worker_lives_on(worker: WorkerProc) -> None:
    worker.turn(1, "nan")
    events = worker.until_end(1)
    result = next(data for op, data in ops(events) if op == "tool_result")
    assert result == {"tool_call_id": "call-nan", "status": "success", "details": None}
    assert events[-1]["op"] == "done"
    # Every line was JSON (the harness parses each), and the worker serves on.
    worker.turn(2, "text")
    assert worker.until_end(2)[-1]["op"] == "done"
