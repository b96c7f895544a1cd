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

/// The venv's Python with the adapter installed.
fn python() -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let status = Command::new("bash")
        .arg(format!("{root}/python/run-tests.sh"))
        .arg("--install-only")
        .status()
        .expect("run python/run-tests.sh");
    assert!(
        status.success(),
        "installing the adapter into target/venv failed"
    );
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
