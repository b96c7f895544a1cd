//! The real pydantic-ai agent behind the server: `examples/pydantic_ai_agent.py`
//! served by the adapter (`python/`, `python -m autopoiesis_worker`) as a
//! worker and as an exec agent, with pydantic-ai's `FunctionModel` as the
//! model (offline, no key). A turn that calls an ordinary tool, a turn
//! that asks for approval, the decision and the resumed turn, and the
//! history holding pydantic-ai's own messages, which the next turn gives
//! back to the agent.
//!
//! The adapter runs from the virtual environment `target/venv`, which
//! `python/run-tests.sh --install-only` makes (quickly, when it exists).

mod common;
use common::*;

use serde_json::{json, Value};
use std::process::Command;

/// The venv's Python with the adapter installed (once per test run: the
/// tests of this file run in parallel, and one pip at a time may install).
fn python() -> String {
    static INSTALLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let root = env!("CARGO_MANIFEST_DIR");
    let installed = INSTALLED.get_or_init(|| {
        Command::new("bash")
            .arg(format!("{root}/python/run-tests.sh"))
            .arg("--install-only")
            .status()
            .expect("run python/run-tests.sh")
            .success()
    });
    assert!(installed, "installing the adapter into target/venv failed");
    format!("{root}/target/venv/bin/python")
}

fn agent_cmd(mode: &str) -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let exec = if mode == "exec" { " --exec" } else { "" };
    // The example is imported from the repository root.
    format!(
        "cd '{root}' && '{}' -m autopoiesis_worker{exec} examples.pydantic_ai_agent:agent",
        python()
    )
}

fn history(s: &Server, id: &str) -> Vec<Value> {
    s.get(&format!("/api/sessions/{id}/history")).json()["messages"]
        .as_array()
        .unwrap()
        .clone()
}

fn chat(s: &Server, id: &str, content: &str) -> HttpResponse {
    s.post(
        &format!("/api/sessions/{id}/chat"),
        &json!({ "content": content }).to_string(),
    )
}

fn a_pydantic_ai_agent_round_trip(mode: &str) {
    let s = Server::start(&["--agent", mode, "--agent-cmd", &agent_cmd(mode)]);
    let mut ws = s.ws("/api/ws/p1");

    // An ordinary tool: thinking, the call, its result, the answer.
    let listed = chat(&s, "p1", "which files are there?");
    assert_eq!(
        listed.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&listed.body)
    );
    assert_eq!(
        listed.json()["content"],
        "The store holds: draft.md, notes.txt, old.log."
    );
    let frames = until_op(&mut ws, "done");
    let ops: Vec<&str> = frames.iter().map(|f| f["op"].as_str().unwrap()).collect();
    assert!(ops.starts_with(&["thinking", "thinking"]), "{ops:?}");
    assert!(
        ops.contains(&"thinking_done")
            && ops.contains(&"tool_call")
            && ops.contains(&"tool_result"),
        "{ops:?}"
    );
    let call = frames.iter().find(|f| f["op"] == "tool_call").unwrap();
    assert_eq!(call["data"]["name"], "list_files");
    // The history is pydantic-ai's own: its model name, usage, the
    // thinking part, the tool return, in its own shapes.
    let h = history(&s, "p1");
    let kinds: Vec<&str> = h.iter().map(|m| m["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["request", "response", "request", "response"],
        "{h:#?}"
    );
    assert_eq!(h[1]["model_name"], "scripted-example");
    assert!(h[1]["usage"].is_object(), "{}", h[1]);
    assert_eq!(h[1]["parts"][0]["part_kind"], "thinking");
    assert_eq!(h[2]["parts"][0]["part_kind"], "tool-return");
    assert_eq!(
        h[0]["instructions"],
        "You manage a small file store. List files when asked; delete one only when asked to."
    );

    // A tool that needs approval: the turn ends asking.
    let asked = chat(&s, "p1", "please delete old.log");
    assert_eq!(asked.status, 409);
    let detail = &asked.json()["detail"];
    assert_eq!(detail["code"], "approval_required");
    let calls = detail["tool_calls"].as_array().unwrap().clone();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["name"], "delete_file");
    assert_eq!(calls[0]["args"], json!({"name": "old.log"}));
    let id = calls[0]["tool_call_id"].as_str().unwrap().to_owned();
    let event = until_op(&mut ws, "approval_required").pop().unwrap();
    assert_eq!(event["data"]["tool_calls"][0]["tool_call_id"], id.as_str());
    assert_eq!(
        history(&s, "p1").len(),
        6,
        "the request and the response with the call"
    );

    // Approved: the tool runs and the agent says so; pydantic-ai got its
    // own history back (the call it made) with the decision.
    let decided = s.post(
        "/api/sessions/p1/approvals",
        &json!({"approvals": {&id: true}}).to_string(),
    );
    assert_eq!(
        decided.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&decided.body)
    );
    assert_eq!(decided.json()["content"], "Deleted old.log.");
    let frames = until_op(&mut ws, "done");
    assert_eq!(frames[0]["op"], "approval_resolved");
    let result = frames.iter().find(|f| f["op"] == "tool_result").unwrap();
    assert_eq!(result["data"]["status"], "success");

    // Denied with a message: the tool does not run; the model is told why.
    let asked = chat(&s, "p1", "delete notes.txt");
    let id = asked.json()["detail"]["tool_calls"][0]["tool_call_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let denied = s.post(
        "/api/sessions/p1/approvals",
        &json!({"approvals": {&id: {"approved": false, "message": "keep my notes"}}}).to_string(),
    );
    assert_eq!(denied.json()["content"], "I left it alone (keep my notes).");
    // The example's store lives in its process: a worker keeps it across
    // turns, an exec agent starts afresh each turn.
    let listed = chat(&s, "p1", "list the files");
    let store = match mode {
        "worker" => "draft.md, notes.txt",
        _ => "draft.md, notes.txt, old.log",
    };
    assert_eq!(
        listed.json()["content"],
        format!("The store holds: {store}."),
        "{mode}"
    );
    let list = s.get("/api/sessions").json();
    assert_eq!(list[0]["message_count"], history(&s, "p1").len());
}

#[test]
fn the_example_agent_as_a_worker() {
    a_pydantic_ai_agent_round_trip("worker");
}

#[test]
fn the_example_agent_as_an_exec_program() {
    a_pydantic_ai_agent_round_trip("exec");
}

/// The adapter's test agents (`python/tests/scripted.py`: pydantic-ai
/// `FunctionModel`s scripted by the prompt) behind the server.
fn scripted_cmd(mode: &str) -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let exec = if mode == "exec" { " --exec" } else { "" };
    format!(
        "cd '{root}/python/tests' && '{}' -m autopoiesis_worker{exec} scripted:agent",
        python()
    )
}

/// The stored history validates with pydantic-ai's own
/// `ModelMessagesTypeAdapter` (and dumps back to the same JSON); returns
/// how many messages it holds.
fn validated_history(s: &Server, id: &str) -> usize {
    use std::io::Write;
    let body = s.get(&format!("/api/sessions/{id}/history")).body;
    let check = "import json, sys\n\
        from pydantic_ai.messages import ModelMessagesTypeAdapter as A\n\
        stored = json.load(sys.stdin)['messages']\n\
        again = A.dump_python(A.validate_python(stored), mode='json')\n\
        assert len(again) == len(stored), (len(again), len(stored))\n\
        print(len(stored))\n";
    let mut child = Command::new(python())
        .args(["-c", check])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python");
    child.stdin.take().unwrap().write_all(&body).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "pydantic-ai refuses the history of {id}: {}",
        String::from_utf8_lossy(&body)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn scripted_round_trip(mode: &str) {
    let dir = temp_dir(&format!("pydantic-{mode}"));
    let data = dir.to_string_lossy().into_owned();
    let cmd = scripted_cmd(mode);
    let args = ["--agent", mode, "--agent-cmd", &cmd, "--data-dir", &data];
    let mut s = Server::start(&args);
    let reply = |s: &Server, id: &str, content: &str| {
        let r = chat(s, id, content);
        (r.status, r.json())
    };

    // Text, thinking, a tool call and its return, an exception.
    let mut ws = s.ws("/api/ws/t1");
    assert_eq!(reply(&s, "t1", "text").1["content"], "Hello, world");
    assert_eq!(reply(&s, "t1", "think").1["content"], "Thought it through.");
    let frames = until_op(&mut ws, "done");
    let frames = [frames, until_op(&mut ws, "done")].concat();
    let ops: Vec<&str> = frames.iter().map(|f| f["op"].as_str().unwrap()).collect();
    assert!(
        ops.contains(&"thinking") && ops.contains(&"thinking_done"),
        "{ops:?}"
    );
    assert_eq!(reply(&s, "t1", "add 2 3").1["content"], "The sum is 5.");
    let frames = until_op(&mut ws, "done");
    let result = frames.iter().find(|f| f["op"] == "tool_result").unwrap();
    assert_eq!(
        result["data"],
        json!({"tool_call_id": "call-add", "status": "success", "details": 5})
    );
    let (status, body) = reply(&s, "t1", "boom");
    assert_eq!(status, 503);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("RuntimeError: kaboom"),
        "{body}"
    );
    // The history round trip: the model is given exactly what is stored.
    let stored = validated_history(&s, "t1");
    assert_eq!(
        reply(&s, "t1", "count").1["content"],
        format!("{} messages", stored + 1),
        "the stored history and the new request"
    );
    assert_eq!(
        reply(&s, "t1", "history").1["content"],
        "seen: text | think | add 2 3 | boom | count | history"
    );
    let h = s.get("/api/sessions/t1/history").json();
    let thinking = h["messages"][3]["parts"][0].clone();
    assert_eq!(thinking["part_kind"], "thinking", "{h}");

    // Approval asked on one device, approved from the second.
    let mut phone = s.ws("/api/ws/a1");
    let mut laptop = s.ws("/api/ws/a1");
    send_json(
        &mut phone,
        json!({"op": "message", "data": {"content": "delete a.txt"}}),
    );
    for ws in [&mut phone, &mut laptop] {
        let asked = until_op(ws, "approval_required").pop().unwrap();
        assert_eq!(asked["data"]["tool_calls"][0]["tool_call_id"], "call-del");
    }
    send_json(
        &mut laptop,
        json!({"op": "approve", "data": {"approvals": {"call-del": true}}}),
    );
    for ws in [&mut phone, &mut laptop] {
        let frames = until_op(ws, "done");
        assert_eq!(frames[0]["op"], "approval_resolved");
        assert_eq!(
            frames.last().unwrap()["data"]["content"],
            "Done: deleted a.txt"
        );
    }
    validated_history(&s, "a1");

    // Denied with a message, over REST.
    assert_eq!(reply(&s, "d1", "delete b.txt").0, 409);
    let denied = s.post(
        "/api/sessions/d1/approvals",
        r#"{"approvals":{"call-del":{"approved":false,"message":"keep b"}}}"#,
    );
    assert_eq!(denied.json()["content"], "Denied: keep b");
    validated_history(&s, "d1");

    // Cancel: the turn ends, the agent serves on.
    let mut ws = s.ws("/api/ws/c1");
    send_json(
        &mut ws,
        json!({"op": "message", "data": {"content": "hang"}}),
    );
    assert_eq!(next_json(&mut ws)["data"]["content"], "waiting");
    send_json(&mut ws, json!({"op": "cancel"}));
    assert_eq!(
        until_op(&mut ws, "error").pop().unwrap()["data"]["code"],
        "cancelled"
    );
    assert_eq!(reply(&s, "c1", "text").1["content"], "Hello, world");
    validated_history(&s, "c1");

    // A restart with an approval pending: decided after it.
    assert_eq!(reply(&s, "r1", "delete c.txt").0, 409);
    s.terminate();
    let s = Server::start(&args);
    let pending = s.get("/api/sessions/r1/approvals").json();
    assert_eq!(pending["tool_calls"][0]["name"], "delete_file");
    let approved = s.post(
        "/api/sessions/r1/approvals",
        r#"{"approvals":{"call-del":true}}"#,
    );
    assert_eq!(approved.json()["content"], "Done: deleted c.txt");
    validated_history(&s, "r1");
    validated_history(&s, "t1");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn the_adapters_scripted_agents_behind_the_server_as_a_worker() {
    scripted_round_trip("worker");
}

#[test]
fn the_adapters_scripted_agents_behind_the_server_as_exec() {
    scripted_round_trip("exec");
}

#[test]
fn eight_sessions_at_once_on_one_worker() {
    let cmd = scripted_cmd("worker");
    let s = std::sync::Arc::new(Server::start(&["--agent", "worker", "--agent-cmd", &cmd]));
    // `wait-peer` finishes only once `peer` has run in the same process:
    // the two turns overlap, on one worker.
    let waiting = {
        let s = s.clone();
        std::thread::spawn(move || chat(&s, "p0", "wait-peer").json())
    };
    let mut others: Vec<_> = (1..8)
        .map(|i| {
            let s = s.clone();
            std::thread::spawn(move || chat(&s, &format!("p{i}"), "text").json())
        })
        .collect();
    let peer = chat(&s, "p8", "peer").json();
    assert_eq!(peer["content"], "peer here");
    assert_eq!(waiting.join().unwrap()["content"], "A-started A-done");
    for t in others.drain(..) {
        assert_eq!(t.join().unwrap()["content"], "Hello, world");
    }
    for i in 0..9 {
        validated_history(&s, &format!("p{i}"));
    }
}
