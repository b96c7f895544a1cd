//! `POST /api/ag-ui` against the real binary, each stream judged by the
//! AG-UI project's own validator (`ag-ui-validate`, installed into
//! `target/venv`): the echo agent, a worker with reasoning and a tool
//! call, an error, a slow stream (not buffered), an interrupt and its
//! resume, a refused resume, a cancel from a second device, the errors
//! before a stream, and the validator against the live endpoint.

mod common;
use common::*;

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::process::{Command, Stdio};

/// `ag-ui-validate` from the venv (installed on first use, once: the
/// tests of this file run in parallel).
fn validator() -> String {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    let root = env!("CARGO_MANIFEST_DIR");
    let bin = format!("{root}/target/venv/bin/ag-ui-validate");
    INSTALLED.call_once(|| install_validator(root, &bin));
    bin
}

fn install_validator(root: &str, bin: &str) {
    if !std::path::Path::new(bin).exists() {
        let status = Command::new("bash")
            .arg(format!("{root}/python/run-tests.sh"))
            .arg("--install-only")
            .status()
            .expect("make target/venv");
        assert!(status.success());
        let status = Command::new(format!("{root}/target/venv/bin/python"))
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .arg("ag-ui-validate[transport]==0.4.0")
            .status()
            .expect("pip install ag-ui-validate");
        assert!(status.success(), "installing ag-ui-validate failed");
    }
}

/// Runs the validator on `args` (and `stdin`); returns its JSON report.
/// Fails the test on any finding at error or warning level.
fn validate(args: &[&str], stdin: &[u8]) -> Value {
    let mut child = Command::new(validator())
        .args(args)
        .args(["--json", "--fail-on", "warning"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run ag-ui-validate");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "report not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    assert_eq!(
        out.status.code(),
        Some(0),
        "ag-ui-validate found problems: {report:#}"
    );
    report
}

/// The rule ids the report found (any level).
fn findings(report: &Value) -> Vec<String> {
    let list = report["diagnostics"]
        .as_array()
        .or(report["findings"].as_array());
    list.map(|l| {
        l.iter()
            .filter_map(|d| {
                d["ruleId"]
                    .as_str()
                    .or(d["rule"].as_str())
                    .map(str::to_owned)
            })
            .collect()
    })
    .unwrap_or_default()
}

/// A run's whole response: status, headers, and the body to the close.
fn run(s: &Server, body: &Value) -> (HttpResponse, Vec<u8>) {
    let mut c = s.connect();
    c.write_all(&raw_request(
        "POST",
        "/api/ag-ui",
        Some(&body.to_string()),
        &[],
    ))
    .unwrap();
    let head = read_response(&mut c).expect("a response");
    let mut rest = Vec::new();
    if head.status == 200 {
        NoEintr(&mut c)
            .read_to_end(&mut rest)
            .expect("the stream to its end");
    }
    (head, rest)
}

/// The events of a stream body (`data:` frames; comments skipped).
fn events(body: &[u8]) -> Vec<Value> {
    let text = std::str::from_utf8(body).expect("UTF-8 stream");
    text.split("\n\n")
        .filter_map(|frame| frame.strip_prefix("data: "))
        .map(|data| serde_json::from_str(data).expect("an event is JSON"))
        .collect()
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

fn input(thread: &str, run: &str, prompt: &str) -> Value {
    json!({"threadId": thread, "runId": run, "state": {}, "tools": [], "context": [], "forwardedProps": {},
           "messages": [{"id": format!("{run}-u"), "role": "user", "content": prompt}]})
}

/// A run that answers the thread's interrupts (`resume`), with no message.
fn resume_input(thread: &str, run: &str, resume: Value) -> Value {
    let mut body = input(thread, run, "");
    body["messages"] = json!([]);
    body["resume"] = resume;
    body
}

/// A worker that thinks, calls a tool, fails, asks for approval, or hangs
/// until cancelled, by its prompt; a resumed turn reports the decisions.
const WORKER: &str = r#"#!/usr/bin/env python3
import json, sys, threading
def emit(t, op, data):
    print(json.dumps({"turn": t, "op": op, "data": data}), flush=True)
hanging = {}
def turn(req):
    t, prompt = req["turn"], req.get("prompt")
    if req.get("approvals") is not None:
        for cid, d in sorted(req["approvals"].items()):
            ok = d is True or (isinstance(d, dict) and d.get("approved"))
            args = d.get("override_args") if isinstance(d, dict) and d.get("override_args") else None
            emit(t, "tool_result", {"tool_call_id": cid, "status": "success" if ok else "denied",
                                    "details": ("ran with %s" % json.dumps(args)) if args else ("ran" if ok else d.get("message", "denied"))})
        emit(t, "token", {"content": "Resumed."})
        emit(t, "done", {})
    elif prompt == "tools":
        emit(t, "thinking", {"content": "I should look."})
        emit(t, "thinking_done", {})
        emit(t, "token", {"content": "Looking. "})
        emit(t, "tool_call", {"tool_call_id": "c1", "name": "ls", "details": {"path": "."}})
        emit(t, "tool_result", {"tool_call_id": "c1", "status": "success", "details": ["a.txt", "b.txt"]})
        emit(t, "token", {"content": "Two files."})
        emit(t, "done", {"content": "Looking. Two files."})
    elif prompt == "fail":
        emit(t, "token", {"content": "Trying"})
        emit(t, "error", {"message": "the model is down"})
    elif prompt == "delete":
        emit(t, "token", {"content": "I need your approval."})
        emit(t, "approval_required", {"tool_calls": [
            {"tool_call_id": "d1", "name": "delete_file", "args": {"path": "a.txt"}},
            {"tool_call_id": "d2", "name": "delete_file", "args": {"path": "b.txt"}}]})
    elif prompt == "hang":
        emit(t, "token", {"content": "Working"})
        ev = threading.Event(); hanging[t] = ev; ev.wait(60)
    else:
        emit(t, "token", {"content": prompt})
        emit(t, "done", {})
for line in sys.stdin:
    req = json.loads(line)
    if req["type"] == "turn":
        threading.Thread(target=turn, args=(req,), daemon=True).start()
    elif req["type"] == "cancel" and req["turn"] in hanging:
        hanging[req["turn"]].set()
"#;

fn worker_server(extra: &[&str]) -> Server {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("autopoiesis-agui-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("worker.py");
    std::fs::write(&path, WORKER).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = path.to_string_lossy().into_owned();
    let mut args = vec!["--agent", "worker", "--agent-cmd", &path];
    args.extend_from_slice(extra);
    Server::start(&args)
}

#[test]
fn an_echo_run_streams_text_to_the_client_and_every_device() {
    let s = Server::start(&[]);
    let mut ws = s.ws("/api/ws/thread-1");
    let (head, body) = run(&s, &input("thread-1", "run-1", "hello big world"));
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-type"), Some("text/event-stream"));
    assert_eq!(head.header("cache-control"), Some("no-cache"));
    assert_eq!(head.header("x-accel-buffering"), Some("no"));
    let ev = events(&body);
    assert_eq!(
        types(&ev),
        [
            "RUN_STARTED",
            "TEXT_MESSAGE_START",
            "TEXT_MESSAGE_CONTENT",
            "TEXT_MESSAGE_CONTENT",
            "TEXT_MESSAGE_CONTENT",
            "TEXT_MESSAGE_END",
            "RUN_FINISHED"
        ]
    );
    assert_eq!(
        (ev[0]["threadId"].as_str(), ev[0]["runId"].as_str()),
        (Some("thread-1"), Some("run-1"))
    );
    let deltas: Vec<&str> = ev.iter().filter_map(|e| e["delta"].as_str()).collect();
    assert_eq!(deltas.concat(), "hello big world");
    assert_eq!(ev.last().unwrap()["outcome"], json!({"type": "success"}));
    validate(&["-"], &body);
    // The same turn reached the thread's WebSocket client, with `seq`.
    let frames = until_done(&mut ws);
    assert_eq!(frames.last().unwrap()["data"]["content"], "hello big world");
    assert!(frames.iter().all(|f| f["seq"].is_u64()));
    // The server's history is authoritative: a client that sends the whole
    // conversation adds one turn, not the conversation again.
    let mut next = input("thread-1", "run-2", "again");
    next["messages"] = json!([
        {"id": "a", "role": "user", "content": "hello big world"},
        {"id": "b", "role": "assistant", "content": "hello big world"},
        {"id": "c", "role": "user", "content": [{"type": "text", "text": "again"}]},
    ]);
    let (_, body) = run(&s, &next);
    assert_eq!(types(&events(&body)).last(), Some(&"RUN_FINISHED"));
    let h = s.get("/api/sessions/thread-1/history").json();
    assert_eq!(h["messages"].as_array().unwrap().len(), 4);
    let metrics = String::from_utf8(s.get("/metrics").body).unwrap();
    assert!(
        metrics.contains("autopoiesis_turns_total{outcome=\"done\"} 2"),
        "{metrics}"
    );
}

#[test]
fn reasoning_tool_calls_and_errors_from_a_worker() {
    let s = worker_server(&[]);
    let (_, body) = run(&s, &input("w1", "r1", "tools"));
    let ev = events(&body);
    assert_eq!(
        types(&ev),
        [
            "RUN_STARTED",
            "REASONING_START",
            "REASONING_MESSAGE_START",
            "REASONING_MESSAGE_CONTENT",
            "REASONING_MESSAGE_END",
            "REASONING_END",
            "TEXT_MESSAGE_START",
            "TEXT_MESSAGE_CONTENT",
            "TEXT_MESSAGE_END",
            "TOOL_CALL_START",
            "TOOL_CALL_ARGS",
            "TOOL_CALL_END",
            "TOOL_CALL_RESULT",
            "TEXT_MESSAGE_START",
            "TEXT_MESSAGE_CONTENT",
            "TEXT_MESSAGE_END",
            "RUN_FINISHED",
        ]
    );
    assert_eq!(ev[9]["toolCallName"], "ls");
    assert_eq!(ev[10]["delta"], r#"{"path":"."}"#);
    assert_eq!(ev[12]["content"], r#"["a.txt","b.txt"]"#);
    assert_eq!(ev[12]["toolCallId"], "c1");
    validate(
        &["-", "--features", "backend-tool-rendering,agentic-chat"],
        &body,
    );

    let (_, body) = run(&s, &input("w1", "r2", "fail"));
    let ev = events(&body);
    assert_eq!(
        types(&ev),
        [
            "RUN_STARTED",
            "TEXT_MESSAGE_START",
            "TEXT_MESSAGE_CONTENT",
            "TEXT_MESSAGE_END",
            "RUN_ERROR"
        ]
    );
    assert_eq!(ev[4]["message"], "the model is down");
    validate(&["-"], &body);
}

#[test]
fn an_interrupt_then_its_resume() {
    let s = worker_server(&[]);
    let mut ws = s.ws("/api/ws/h1");
    let (_, body) = run(&s, &input("h1", "r1", "delete"));
    let ev = events(&body);
    assert_eq!(
        types(&ev),
        [
            "RUN_STARTED",
            "TEXT_MESSAGE_START",
            "TEXT_MESSAGE_CONTENT",
            "TEXT_MESSAGE_END",
            "TOOL_CALL_START",
            "TOOL_CALL_ARGS",
            "TOOL_CALL_END",
            "TOOL_CALL_START",
            "TOOL_CALL_ARGS",
            "TOOL_CALL_END",
            "RUN_FINISHED",
        ]
    );
    let outcome = &ev.last().unwrap()["outcome"];
    assert_eq!(outcome["type"], "interrupt");
    assert_eq!(
        outcome["interrupts"][0],
        json!({"id": "int-d1", "reason": "tool_call", "toolCallId": "d1",
               "message": "Approve delete_file({\"path\":\"a.txt\"})?",
               "responseSchema": {"type": "object", "required": ["approved"],
                   "properties": {"approved": {"type": "boolean"}, "editedArgs": {"type": "object"}, "reason": {"type": "string"}}}})
    );
    validate(&["-"], &body);
    let approvals = s.get("/api/sessions/h1/approvals").json();
    assert_eq!(approvals["tool_calls"].as_array().unwrap().len(), 2);
    // The thread's WebSocket saw the request for approval.
    until_op(&mut ws, "approval_required");

    // A new message waits for a decision (JSON, before any stream).
    let (head, _) = run(&s, &input("h1", "r2", "something else"));
    assert_eq!(head.status, 409);
    // A resume that does not answer both, or whose payload does not match
    // the schema, is a run that fails and changes nothing.
    for resume in [
        json!([{"interruptId": "int-d1", "status": "resolved", "payload": {"approved": true}}]),
        json!([{"interruptId": "int-d1", "status": "resolved", "payload": {"approved": "yes"}},
               {"interruptId": "int-d2", "status": "cancelled"}]),
    ] {
        let refused = resume_input("h1", "r3", resume);
        let (head, body) = run(&s, &refused);
        assert_eq!(head.status, 200);
        let ev = events(&body);
        assert_eq!(types(&ev), ["RUN_STARTED", "RUN_ERROR"]);
        assert_eq!(ev[1]["code"], "approval_mismatch");
        validate(&["-"], &body);
        assert_eq!(
            s.get("/api/sessions/h1/approvals").json()["tool_calls"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
    }

    let resume = resume_input(
        "h1",
        "r4",
        json!([
        {"interruptId": "int-d1", "status": "resolved", "payload": {"approved": true, "editedArgs": {"path": "a.bak"}}},
        {"interruptId": "int-d2", "status": "resolved", "payload": {"approved": false, "reason": "keep b"}},
        ]),
    );
    let (head, body) = run(&s, &resume);
    assert_eq!(head.status, 200);
    let ev = events(&body);
    assert_eq!(
        types(&ev),
        [
            "RUN_STARTED",
            "TOOL_CALL_START",
            "TOOL_CALL_ARGS",
            "TOOL_CALL_END",
            "TOOL_CALL_RESULT",
            "TOOL_CALL_START",
            "TOOL_CALL_ARGS",
            "TOOL_CALL_END",
            "TOOL_CALL_RESULT",
            "TEXT_MESSAGE_START",
            "TEXT_MESSAGE_CONTENT",
            "TEXT_MESSAGE_END",
            "RUN_FINISHED",
        ]
    );
    assert_eq!(ev[4]["content"], r#"ran with {"path": "a.bak"}"#);
    assert_eq!(ev[8]["content"], "keep b");
    assert_eq!(ev.last().unwrap()["outcome"], json!({"type": "success"}));
    validate(&["-"], &body);
    assert_eq!(
        s.get("/api/sessions/h1/approvals").json()["tool_calls"],
        json!([])
    );
    // Every device saw the decision and the resumed turn.
    let frames = until_done(&mut ws);
    assert_eq!(frames[0]["op"], "approval_resolved");
    // A resume on a thread that does not exist fails, and creates nothing.
    let ghost = resume_input(
        "ghost",
        "r5",
        json!([{"interruptId": "int-d1", "status": "cancelled"}]),
    );
    let (_, body) = run(&s, &ghost);
    let ev = events(&body);
    assert_eq!(types(&ev), ["RUN_STARTED", "RUN_ERROR"]);
    assert_eq!(ev[1]["code"], "no_pending_approval");
    assert_eq!(s.get("/api/sessions/ghost/approvals").status, 404);
}

#[test]
fn a_cancel_from_another_device_ends_the_run_cancelled() {
    let s = worker_server(&[]);
    let mut ws = s.ws("/api/ws/c1");
    let mut c = s.connect();
    c.write_all(&raw_request(
        "POST",
        "/api/ag-ui",
        Some(&input("c1", "r1", "hang").to_string()),
        &[],
    ))
    .unwrap();
    assert_eq!(read_response(&mut c).unwrap().status, 200);
    // The turn is running once the other device sees its first token.
    assert_eq!(next_json(&mut ws)["op"], "token");
    send_json(&mut ws, json!({"op": "cancel"}));
    let mut body = Vec::new();
    NoEintr(&mut c).read_to_end(&mut body).unwrap();
    let ev = events(&body);
    assert_eq!(
        types(&ev),
        [
            "RUN_STARTED",
            "TEXT_MESSAGE_START",
            "TEXT_MESSAGE_CONTENT",
            "TEXT_MESSAGE_END",
            "RUN_FINISHED"
        ]
    );
    assert_eq!(ev.last().unwrap()["outcome"], json!({"type": "cancelled"}));
    validate(&["-"], &body);
}

#[test]
fn errors_before_the_stream_are_json() {
    let s = Server::start(&["--max-queued-turns", "0", "--echo-delay-ms", "200"]);
    let post = |body: &str| s.post("/api/ag-ui", body);
    let r = post("not json");
    assert_eq!(r.status, 422);
    assert_eq!(r.json()["detail"][0]["type"], "json_invalid");
    let r = post(r#"{"runId":"r","messages":[]}"#);
    assert_eq!(
        (r.status, r.json()["detail"][0]["loc"].clone()),
        (422, json!(["body", "threadId"]))
    );
    let r = post(
        r#"{"threadId":"t","runId":"r","messages":[{"id":"1","role":"assistant","content":"hi"}]}"#,
    );
    assert_eq!(r.status, 422, "no user message last");
    let r = post(&input("bad id", "r", "hi").to_string());
    assert_eq!(
        (r.status, r.json()),
        (400, json!({"detail": "Invalid session id"}))
    );
    assert_eq!(s.request("GET", "/api/ag-ui", None, &[]).status, 405);
    let r = s.request(
        "POST",
        "/api/ag-ui",
        Some(&input("t", "r", "hi").to_string()),
        &[("Origin", "http://evil.example")],
    );
    assert_eq!(r.status, 403);
    // The queue is full (a slow turn runs, no room for another).
    let mut first = s.connect();
    first
        .write_all(&raw_request(
            "POST",
            "/api/ag-ui",
            Some(&input("q", "r1", "a b c").to_string()),
            &[],
        ))
        .unwrap();
    assert_eq!(read_response(&mut first).unwrap().status, 200);
    let r = post(&input("q", "r2", "more").to_string());
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["detail"]["code"], "busy");

    let keyed = Server::start_with_env(&[], &[("AUTOPOIESIS_API_KEY", "k")]);
    let r = keyed.post("/api/ag-ui", &input("t", "r", "hi").to_string());
    assert_eq!(r.status, 401);
    let r = keyed.request(
        "POST",
        "/api/ag-ui",
        Some(&input("t", "r", "hi").to_string()),
        &[("Authorization", "Bearer k")],
    );
    assert_eq!(r.status, 200);
}

#[test]
fn the_validator_against_the_live_endpoint_finds_a_streamed_run() {
    // Tokens 20 ms apart: the response must arrive as it happens, not
    // buffered (the validator reports a body that came in one chunk).
    let s = Server::start(&["--echo-delay-ms", "20"]);
    let url = format!("http://127.0.0.1:{}/api/ag-ui", s.port);
    let report = validate(&[&url], b"");
    let found = findings(&report);
    assert!(
        !found.iter().any(|r| r == "AGUI507"),
        "buffered: {report:#}"
    );
    // And with the default echo agent, no delay.
    let s = Server::start(&[]);
    validate(&[&format!("http://127.0.0.1:{}/api/ag-ui", s.port)], b"");
}

#[test]
fn a_run_that_waits_gets_keep_alive_comments() {
    // One echo token every 10 s, a keep-alive every second: the comment
    // comes while the run waits for its second token.
    let s = Server::start(&["--echo-delay-ms", "10000", "--ws-ping-interval", "1"]);
    let mut ws = s.ws("/api/ws/k1");
    let mut c = s.connect();
    c.write_all(&raw_request(
        "POST",
        "/api/ag-ui",
        Some(&input("k1", "r1", "slow words here").to_string()),
        &[],
    ))
    .unwrap();
    assert_eq!(read_response(&mut c).unwrap().status, 200);
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(": keep-alive\n\n") {
        let n = NoEintr(&mut c).read(&mut buf).expect("the stream");
        assert!(
            n > 0,
            "the stream ended first: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    // Cancelled from the thread's WebSocket: the run ends, and the whole
    // stream, comments and all, is what the validator accepts.
    send_json(&mut ws, json!({"op": "cancel"}));
    NoEintr(&mut c).read_to_end(&mut seen).unwrap();
    let body = seen;
    assert_eq!(
        events(&body).last().unwrap()["outcome"],
        json!({"type": "cancelled"})
    );
    validate(&["-"], &body);
}
