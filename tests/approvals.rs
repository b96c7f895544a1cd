//! Tool approvals and the agent's own messages against the real binary:
//! an exec agent and a worker that ask a person to approve tool calls, the
//! decision over REST and over the WebSocket reaching every device, the
//! resumed turn, refusals, pending calls across a crash, and histories
//! stored as the agent gave them.

mod common;
use common::*;

use serde_json::{json, Value};

/// Writes `body` to an executable file in a fresh temp dir; returns its path.
fn script(name: &str, body: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!(
        "autopoiesis-approvals-{}-{name}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.to_string_lossy().into_owned()
}

/// The turn logic both agents share. A prompt with "delete" asks for
/// approval of two calls; a resumed turn runs the approved ones (with
/// `override_args` when given), reports the denied ones, and says what it
/// was given; "own" answers with its own `messages`; anything else thinks,
/// then echoes.
const TURN_LOGIC: &str = r#"
import json

CALLS = [
    {"tool_call_id": "c1", "name": "delete_file", "args": {"path": "a.txt"}},
    {"tool_call_id": "c2", "name": "delete_file", "args": {"path": "b.txt"}},
]

def turn(req, emit):
    approvals = req.get("approvals")
    if approvals is not None and approvals.get("c1") == {"approved": True, "message": "hang"}:
        emit({"op": "token", "data": {"content": "Working on it"}})
        import time
        time.sleep(60)
    elif approvals is not None:
        last = req["history"][-1]
        calls = {p["tool_call_id"]: p for p in last["parts"] if p["part_kind"] == "tool-call"}
        said = []
        for cid, decision in sorted(approvals.items()):
            if decision is True or (isinstance(decision, dict) and decision.get("approved")):
                args = calls[cid]["args"]
                if isinstance(decision, dict) and decision.get("override_args"):
                    args = decision["override_args"]
                emit({"op": "tool_result", "data": {"tool_call_id": cid, "status": "success", "details": "deleted " + args["path"]}})
                said.append("deleted " + args["path"])
            else:
                why = decision.get("message", "denied") if isinstance(decision, dict) else "denied"
                emit({"op": "tool_result", "data": {"tool_call_id": cid, "status": "denied", "details": why}})
                said.append("kept " + calls[cid]["args"]["path"] + " (" + why + ")")
        text = "prompt=%s; %s." % (json.dumps(req["prompt"]), ", ".join(said))
        emit({"op": "token", "data": {"content": text}})
        emit({"op": "done", "data": {"content": text}})
    elif "delete" in req["prompt"]:
        emit({"op": "token", "data": {"content": "Let me check. "}})
        emit({"op": "approval_required", "data": {"tool_calls": CALLS}})
    elif "own" in req["prompt"]:
        messages = [
            {"parts": [{"part_kind": "user-prompt", "content": req["prompt"], "timestamp": "2026-12-05T00:00:00Z"}], "kind": "request", "instructions": None},
            {"kind": "response", "parts": [{"part_kind": "thinking", "content": "hm", "signature": "sig-1", "provider_name": "x"}, {"part_kind": "text", "content": "mine"}],
             "usage": {"input_tokens": 7, "output_tokens": 1}, "model_name": "scripted", "timestamp": "2026-12-05T00:00:01Z", "provider_details": {"finish_reason": "stop"}},
        ]
        emit({"op": "token", "data": {"content": "mine"}})
        emit({"op": "done", "data": {"content": "mine", "messages": messages}})
    else:
        emit({"op": "thinking", "data": {"content": "thinking about "}})
        emit({"op": "thinking", "data": {"content": "it"}})
        emit({"op": "thinking_done", "data": {}})
        emit({"op": "token", "data": {"content": req["prompt"]}})
        emit({"op": "done", "data": {}})
"#;

fn exec_agent() -> String {
    let body = format!(
        "#!/usr/bin/env python3\nimport json, sys\n{TURN_LOGIC}\n\
         turn(json.loads(sys.stdin.readline()), lambda e: print(json.dumps(e), flush=True))\n"
    );
    script("exec_agent.py", &body)
}

/// The exec agent keeping its sessions in `dir`.
fn durable_exec_args(dir: &std::path::Path) -> Vec<String> {
    let data = dir.to_string_lossy().into_owned();
    [
        "--agent",
        "exec",
        "--agent-cmd",
        &exec_agent(),
        "--data-dir",
        &data,
    ]
    .map(str::to_owned)
    .to_vec()
}

fn worker_agent() -> String {
    let body = format!(
        "#!/usr/bin/env python3\nimport json, sys\n{TURN_LOGIC}\n\
         for line in sys.stdin:\n    \
             req = json.loads(line)\n    \
             if req[\"type\"] != \"turn\":\n        continue\n    \
             def emit(e, t=req[\"turn\"]):\n        \
                 e[\"turn\"] = t\n        \
                 print(json.dumps(e), flush=True)\n    \
             turn(req, emit)\n"
    );
    script("worker_agent.py", &body)
}

fn history(s: &Server, session: &str) -> Vec<Value> {
    s.get(&format!("/api/sessions/{session}/history")).json()["messages"]
        .as_array()
        .unwrap()
        .clone()
}

fn metric(s: &Server, line_start: &str) -> f64 {
    let text = s.get("/metrics").body;
    let text = String::from_utf8_lossy(&text).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[test]
fn an_exec_agent_asks_every_device_sees_it_and_a_decision_over_rest_resumes_the_turn() {
    let s = Server::start(&["--agent", "exec", "--agent-cmd", &exec_agent()]);
    let mut phone = s.ws("/api/ws/a1");
    let mut laptop = s.ws("/api/ws/a1");
    let asked = s.post(
        "/api/sessions/a1/chat",
        r#"{"content":"delete the old files"}"#,
    );
    assert_eq!(asked.status, 409);
    assert_eq!(
        asked.json(),
        json!({"detail": {"code": "approval_required", "message": "The agent asks for approval of tool calls.",
               "tool_calls": [{"tool_call_id": "c1", "name": "delete_file", "args": {"path": "a.txt"}},
                              {"tool_call_id": "c2", "name": "delete_file", "args": {"path": "b.txt"}}]}})
    );
    for ws in [&mut phone, &mut laptop] {
        let frames = until_op(ws, "approval_required");
        let event = frames.last().unwrap();
        assert_eq!(event["data"]["tool_calls"][1]["tool_call_id"], "c2");
        assert_eq!(event["seq"], 2, "after the token");
    }
    let pending = s.get("/api/sessions/a1/approvals");
    assert_eq!(pending.status, 200);
    assert_eq!(pending.json()["tool_calls"].as_array().unwrap().len(), 2);
    // The history holds the turn: the request, and the text with the calls.
    let h = history(&s, "a1");
    assert_eq!(h.len(), 2);
    let parts: Vec<&str> = h[1]["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["part_kind"].as_str().unwrap())
        .collect();
    assert_eq!(parts, ["text", "tool-call", "tool-call"]);

    // While pending, a new message waits: REST 409, WebSocket this client only.
    let refused = s.post("/api/sessions/a1/chat", r#"{"content":"hello?"}"#);
    assert_eq!(refused.status, 409);
    assert_eq!(refused.json()["detail"]["code"], "approval_pending");
    send_json(
        &mut phone,
        json!({"op": "message", "data": {"content": "hello?"}}),
    );
    let e = next_json(&mut phone);
    assert_eq!(e["data"]["code"], "approval_pending");
    assert!(e.get("seq").is_none());
    // Decisions that do not answer exactly the pending calls change nothing.
    let mismatch = s.post(
        "/api/sessions/a1/approvals",
        r#"{"approvals":{"c1":true,"c3":true}}"#,
    );
    assert_eq!(mismatch.status, 422);
    let why = mismatch.json()["detail"].as_str().unwrap().to_owned();
    assert!(why.contains("c2") && why.contains("c3"), "{why}");
    assert_eq!(
        s.post("/api/sessions/a1/approvals", r#"{"approvals":[]}"#)
            .status,
        422
    );

    let decided = s.post(
        "/api/sessions/a1/approvals",
        r#"{"approvals":{"c1":{"approved":true,"override_args":{"path":"a.bak"}},"c2":{"approved":false,"message":"keep it"}}}"#,
    );
    assert_eq!(decided.status, 200);
    let reply = "prompt=null; deleted a.bak, kept b.txt (keep it).";
    assert_eq!(
        decided.json(),
        json!({"session_id": "a1", "content": reply})
    );
    for ws in [&mut phone, &mut laptop] {
        let frames = until_done(ws);
        let ops: Vec<&str> = frames.iter().map(|f| f["op"].as_str().unwrap()).collect();
        assert_eq!(
            ops,
            [
                "approval_resolved",
                "tool_result",
                "tool_result",
                "token",
                "done"
            ]
        );
        assert_eq!(frames[0]["data"]["approvals"]["c2"]["message"], "keep it");
        assert_eq!(frames[2]["data"]["status"], "denied");
        let seqs: Vec<u64> = frames.iter().map(|f| f["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, [3, 4, 5, 6, 7]);
    }
    // The resumed turn added no user request: the returns, then the answer.
    let h = history(&s, "a1");
    assert_eq!(h.len(), 4);
    assert_eq!(h[2]["kind"], "request");
    assert_eq!(h[2]["parts"][0]["part_kind"], "tool-return");
    assert_eq!(h[2]["parts"][0]["tool_name"], "delete_file");
    assert_eq!(h[3]["parts"][0]["content"], reply);
    let info = s.get("/api/sessions").json();
    assert_eq!(info[0]["message_count"], 4);
    assert_eq!(
        s.get("/api/sessions/a1/approvals").json()["tool_calls"],
        json!([])
    );
    let again = s.post("/api/sessions/a1/approvals", r#"{"approvals":{"c1":true}}"#);
    assert_eq!(again.status, 409);
    assert_eq!(again.json()["detail"]["code"], "no_pending_approval");
    assert_eq!(
        metric(&s, "autopoiesis_turns_total{outcome=\"approval_required\"}"),
        1.0
    );
    assert_eq!(metric(&s, "autopoiesis_turns_total{outcome=\"done\"}"), 1.0);
}

#[test]
fn a_worker_is_resumed_from_the_websocket_and_every_device_follows() {
    let s = Server::start(&["--agent", "worker", "--agent-cmd", &worker_agent()]);
    let mut phone = s.ws("/api/ws/w1");
    let mut laptop = s.ws("/api/ws/w1");
    send_json(
        &mut phone,
        json!({"op": "message", "data": {"content": "delete them"}}),
    );
    for ws in [&mut phone, &mut laptop] {
        until_op(ws, "approval_required");
    }
    // A refused decision is told to its sender only.
    send_json(
        &mut laptop,
        json!({"op": "approve", "data": {"approvals": {"c1": true}}}),
    );
    let e = next_json(&mut laptop);
    assert_eq!(e["data"]["code"], "approval_mismatch");
    send_json(
        &mut laptop,
        json!({"op": "approve", "data": {"approvals": {"c1": "sure"}}}),
    );
    assert_eq!(
        next_json(&mut laptop)["data"]["message"],
        "Invalid message format"
    );
    // Any device may decide.
    send_json(
        &mut laptop,
        json!({"op": "approve", "data": {"approvals": {"c1": true, "c2": false}}}),
    );
    for ws in [&mut phone, &mut laptop] {
        let frames = until_done(ws);
        assert_eq!(frames[0]["op"], "approval_resolved", "{frames:?}");
        assert_eq!(
            frames.last().unwrap()["data"]["content"],
            "prompt=null; deleted a.txt, kept b.txt (denied)."
        );
    }
    assert_eq!(history(&s, "w1").len(), 4);
    // With nothing pending, `approve` keeps the original's broadcast reply.
    send_json(&mut phone, json!({"op": "approve", "data": {}}));
    for ws in [&mut phone, &mut laptop] {
        let e = next_json(ws);
        assert_eq!(e["data"]["code"], "approval_unsupported");
        assert!(e["seq"].is_u64());
    }
}

#[test]
fn turns_queued_behind_one_that_asks_are_dropped_with_approval_pending() {
    let s = Server::start(&["--agent", "exec", "--agent-cmd", &exec_agent()]);
    let mut ws = s.ws("/api/ws/q1");
    // Sent together: the second is queued behind the first, which asks.
    let frames = [
        json!({"op": "message", "data": {"content": "delete stuff"}}),
        json!({"op": "message", "data": {"content": "and then this"}}),
    ];
    for f in frames {
        send_json(&mut ws, f);
    }
    let mut saw = Vec::new();
    while saw
        .iter()
        .filter(|(op, _): &&(String, Value)| op == "approval_required" || op == "error")
        .count()
        < 2
    {
        let f = next_json(&mut ws);
        saw.push((f["op"].as_str().unwrap().to_owned(), f));
    }
    let error = saw
        .iter()
        .find(|(op, _)| op == "error")
        .map(|(_, f)| f.clone())
        .unwrap();
    assert_eq!(error["data"]["code"], "approval_pending");
    assert!(error.get("seq").is_none());
    assert_eq!(history(&s, "q1").len(), 2, "the queued turn never ran");
}

#[test]
fn pending_approvals_survive_a_crash_and_are_decided_after_it() {
    let dir = temp_dir("approvals-crash");
    let args = durable_exec_args(&dir);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let s = Server::start(&args);
    let asked = s.post("/api/sessions/c1/chat", r#"{"content":"delete"}"#);
    assert_eq!(asked.status, 409, "answered once the journal has it");
    signal(&s.child, libc::SIGKILL);
    drop(s);
    let s = Server::start(&args);
    let pending = s.get("/api/sessions/c1/approvals").json();
    assert_eq!(pending["tool_calls"].as_array().unwrap().len(), 2);
    assert_eq!(
        s.post("/api/sessions/c1/chat", r#"{"content":"hi"}"#)
            .status,
        409
    );
    let mut ws = s.ws("/api/ws/c1?since=0");
    // Events are not kept across a restart: the client is told to
    // refetch (the history, and the approvals above).
    assert_eq!(next_json(&mut ws)["op"], "resync");
    send_json(
        &mut ws,
        json!({"op": "approve", "data": {"approvals": {"c1": true, "c2": true}}}),
    );
    let frames = until_done(&mut ws);
    assert_eq!(
        frames.last().unwrap()["data"]["content"],
        "prompt=null; deleted a.txt, deleted b.txt."
    );
    let mut s = s;
    s.terminate();
    let s = Server::start(&args);
    assert_eq!(
        s.get("/api/sessions/c1/approvals").json()["tool_calls"],
        json!([])
    );
    assert_eq!(history(&s, "c1").len(), 4);
    // Deleting a session drops its approvals with it.
    s.post("/api/sessions/c2/chat", r#"{"content":"delete"}"#);
    assert_eq!(
        s.request("DELETE", "/api/sessions/c2", None, &[]).status,
        204
    );
    assert_eq!(s.get("/api/sessions/c2/approvals").status, 404);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_crash_during_the_resumed_turn_leaves_the_calls_pending_again() {
    let dir = temp_dir("approvals-resume-crash");
    let args = durable_exec_args(&dir);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let s = Server::start(&args);
    assert_eq!(
        s.post("/api/sessions/r1/chat", r#"{"content":"delete"}"#)
            .status,
        409
    );
    let mut ws = s.ws("/api/ws/r1");
    // A decision the agent works on for a long time.
    send_json(
        &mut ws,
        json!({"op": "approve", "data": {"approvals": {"c1": {"approved": true, "message": "hang"}, "c2": true}}}),
    );
    assert_eq!(next_json(&mut ws)["op"], "approval_resolved");
    assert_eq!(next_json(&mut ws)["data"]["content"], "Working on it");
    assert_eq!(
        s.get("/api/sessions/r1/approvals").json()["tool_calls"],
        json!([])
    );
    signal(&s.child, libc::SIGKILL);
    drop(s);
    // The resumed turn never ended: its calls are still pending (a history
    // ending in calls nobody answered would stop a pydantic-ai agent), and
    // can be decided again.
    let s = Server::start(&args);
    let pending = s.get("/api/sessions/r1/approvals").json();
    assert_eq!(
        pending["tool_calls"].as_array().unwrap().len(),
        2,
        "{pending}"
    );
    let decided = s.post(
        "/api/sessions/r1/approvals",
        r#"{"approvals":{"c1":true,"c2":false}}"#,
    );
    assert_eq!(
        decided.json()["content"],
        "prompt=null; deleted a.txt, kept b.txt (denied)."
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn the_agents_own_messages_are_the_history_verbatim_and_thinking_is_kept_without_them() {
    for agent in [exec_agent(), worker_agent()] {
        let kind = if agent.ends_with("exec_agent.py") {
            "exec"
        } else {
            "worker"
        };
        let s = Server::start(&["--agent", kind, "--agent-cmd", &agent]);
        let mut ws = s.ws("/api/ws/m1");
        let own = s.post("/api/sessions/m1/chat", r#"{"content":"your own words"}"#);
        assert_eq!(own.json()["content"], "mine");
        let frames = until_done(&mut ws);
        assert!(
            frames.iter().all(|f| f["data"].get("messages").is_none()),
            "never broadcast"
        );
        let raw = String::from_utf8(s.get("/api/sessions/m1/history").body).unwrap();
        // Every field, in the agent's order, and nothing the server recorded.
        assert!(raw.contains(r#"{"parts": [{"part_kind": "user-prompt", "content": "your own words", "timestamp": "2026-12-05T00:00:00Z"}], "kind": "request", "instructions": null}"#), "{kind}: {raw}");
        assert!(
            raw.contains(r#""signature": "sig-1""#)
                && raw.contains(r#""usage": {"input_tokens": 7"#),
            "{raw}"
        );
        assert_eq!(history(&s, "m1").len(), 2, "{kind}");
        // Without messages, a thinking run is stored as a thinking part.
        s.post("/api/sessions/m1/chat", r#"{"content":"plain"}"#);
        let h = history(&s, "m1");
        assert_eq!(h.len(), 4);
        assert_eq!(
            h[3]["parts"],
            json!([{"part_kind": "thinking", "content": "thinking about it"}, {"part_kind": "text", "content": "plain"}])
        );
        assert_eq!(s.get("/api/sessions").json()[0]["message_count"], 4);
    }
}

#[test]
fn a_malformed_end_of_turn_fails_the_turn() {
    let agent = script(
        "bad_messages.sh",
        "#!/bin/sh\nread line\nprintf '{\"op\":\"done\",\"data\":{\"messages\":[{\"kind\":\"reply\",\"parts\":[]}]}}\\n'\n",
    );
    let s = Server::start(&["--agent", "exec", "--agent-cmd", &agent]);
    let r = s.post("/api/chat", r#"{"content":"x","session_id":"b1"}"#);
    assert_eq!(r.status, 503);
    let why = r.json()["detail"].as_str().unwrap().to_owned();
    assert!(why.contains("messages[0]"), "{why}");
    // What the server recorded is kept: the request and an empty response.
    assert_eq!(history(&s, "b1").len(), 2);
}
