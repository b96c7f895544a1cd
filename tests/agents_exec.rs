//! The `exec` agent against the real binary: small agent programs that
//! answer, fail, hang, print garbage, stop early, ask for approval, call
//! tools; plus queueing, busy and cancel, and no child left behind.

mod common;
use common::*;

use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Writes `body` to an executable file in a fresh temp dir; returns its path.
fn script(name: &str, body: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let dir =
        std::env::temp_dir().join(format!("autopoiesis-agents-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.to_string_lossy().into_owned()
}

/// The example agent of docs/agents.md, plus a history count: upper-cases the prompt word by word, and
/// first reports how many history messages it was given.
const UPPER: &str = r#"#!/usr/bin/env python3
import json, sys
req = json.loads(sys.stdin.readline())
print(json.dumps({"op": "token", "data": {"content": "history=%d " % len(req["history"])}}), flush=True)
words = req["prompt"].upper().split()
for w in words:
    print(json.dumps({"op": "token", "data": {"content": w + " "}}), flush=True)
print(json.dumps({"op": "done", "data": {"content": "history=%d " % len(req["history"]) + " ".join(w + " " for w in words).replace("  ", " ")}}), flush=True)
"#;

fn exec_server(cmd: &str, extra: &[&str]) -> Server {
    let mut args = vec!["--agent", "exec", "--agent-cmd", cmd];
    args.extend_from_slice(extra);
    Server::start(&args)
}

fn chat(s: &Server, session: &str, content: &str) -> HttpResponse {
    s.post(
        "/api/chat",
        &json!({"content": content, "session_id": session}).to_string(),
    )
}

fn history(s: &Server, session: &str) -> Vec<Value> {
    s.get(&format!("/api/sessions/{session}/history")).json()["messages"]
        .as_array()
        .unwrap()
        .clone()
}

/// Children of `pid`, zombies included: (pid, state).
fn children(pid: u32) -> Vec<(u32, char)> {
    processes()
        .into_iter()
        .filter(|p| p.2 == pid)
        .map(|p| (p.0, p.1))
        .collect()
}

fn eventually_no_children(pid: u32) {
    until_empty(&format!("children of {pid}"), || children(pid));
}

#[test]
fn an_agent_streams_tokens_and_done_and_gets_the_history() {
    let s = exec_server(&script("upper.py", UPPER), &[]);
    let mut ws = s.ws("/api/ws/up");
    send_json(
        &mut ws,
        json!({"op": "message", "data": {"content": "hello big world"}}),
    );
    let frames = until_done(&mut ws);
    let tokens: Vec<&str> = frames
        .iter()
        .filter(|f| f["op"] == "token")
        .map(|f| f["data"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(tokens, ["history=0 ", "HELLO ", "BIG ", "WORLD "]);
    let seqs: Vec<u64> = frames.iter().map(|f| f["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    // REST on the same session: the agent now gets the first turn as history.
    let r = chat(&s, "up", "again");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["content"], "history=2 AGAIN ");
    // The WebSocket client sees the REST turn too.
    let frames = until_done(&mut ws);
    assert_eq!(
        frames.last().unwrap()["data"]["content"],
        "history=2 AGAIN "
    );
    let h = history(&s, "up");
    assert_eq!(h.len(), 4);
    assert_eq!(h[1]["parts"][0]["content"], "history=0 HELLO BIG WORLD ");
    assert_eq!(h[1]["model_name"], "exec");
    eventually_no_children(s.child.id());
}

#[test]
fn failures_end_the_turn_with_a_reason_and_rest_503() {
    for (name, body, expect) in [
        ("fail.sh", "#!/bin/sh\necho oops >&2\nexit 3\n", "agent exited with status 3 before done: oops"),
        ("garbage.sh", "#!/bin/sh\ncat >/dev/null\necho not json\nsleep 30\n", "not an event"),
        ("early.sh", "#!/bin/sh\nprintf '{\"op\":\"token\",\"data\":{\"content\":\"part\"}}\\n'\n", "before done"),
        ("says_error.sh", "#!/bin/sh\nprintf '{\"op\":\"error\",\"data\":{\"message\":\"model overloaded\"}}\\n'\n", "model overloaded"),
    ] {
        let s = exec_server(&script(name, body), &[]);
        let mut ws = s.ws("/api/ws/f");
        let r = chat(&s, "f", "hi there");
        assert_eq!(r.status, 503, "{name}");
        let detail = r.json()["detail"].as_str().unwrap().to_owned();
        assert!(detail.contains(expect), "{name}: {detail}");
        // The WebSocket client got the same reason as an error event.
        let mut last = next_json(&mut ws);
        while last["op"] != "error" {
            last = next_json(&mut ws);
        }
        assert_eq!(last["data"]["message"], json!(detail));
        // The history keeps the prompt and what was streamed.
        let h = history(&s, "f");
        assert_eq!(h[0]["parts"][0]["content"], "hi there", "{name}");
        if name == "early.sh" {
            assert_eq!(h[1]["parts"][0]["content"], "part");
        }
        // The session is still usable, and no child is left.
        assert_eq!(chat(&s, "f", "again").status, 503);
        eventually_no_children(s.child.id());
    }
}

#[test]
fn a_program_that_cannot_start() {
    let s = exec_server("/definitely/not/a/program --flag", &[]);
    let r = chat(&s, "x", "hi");
    assert_eq!(r.status, 503);
    let detail = r.json()["detail"].as_str().unwrap().to_owned();
    assert!(
        detail.contains("127") && detail.contains("not found"),
        "{detail}"
    );
}

#[test]
fn a_hanging_agent_is_killed_at_the_turn_timeout() {
    let s = exec_server(
        &script("hang.sh", "#!/bin/sh\nsleep 60\n"),
        &["--turn-timeout", "1"],
    );
    let r = chat(&s, "h", "hi");
    assert_eq!(r.status, 503);
    assert!(r.json()["detail"]
        .as_str()
        .unwrap()
        .contains("timed out after 1 s"));
    eventually_no_children(s.child.id());
}

#[test]
fn approval_requests_are_refused_and_the_agent_stopped() {
    let body = "#!/bin/sh\nprintf '{\"op\":\"approval_required\",\"data\":{\"tool\":\"rm\"}}\\n'\nsleep 60\n";
    let s = exec_server(&script("approve.sh", body), &[]);
    let mut ws = s.ws("/api/ws/a");
    let r = chat(&s, "a", "delete everything");
    assert_eq!(r.status, 409);
    assert_eq!(
        r.json(),
        json!({"detail": {"code": "approval_unsupported", "message": "Deferred approvals are not supported in server mode yet."}})
    );
    let f = next_json(&mut ws);
    assert_eq!(f["data"]["code"], "approval_unsupported");
    assert!(f["seq"].is_u64());
    eventually_no_children(s.child.id());
}

#[test]
fn tool_calls_are_broadcast_and_stored_as_pydantic_ai_parts() {
    let body = r#"#!/bin/sh
cat >/dev/null
printf '%s\n' '{"op":"token","data":{"content":"Looking. "}}'
printf '%s\n' '{"op":"tool_call","data":{"tool_call_id":"c1","name":"ls","details":{"path":"."}}}'
printf '%s\n' '{"op":"tool_result","data":{"tool_call_id":"c1","status":"success","details":"a.txt"}}'
printf '%s\n' '{"op":"thinking","data":{"content":"hmm"}}'
printf '%s\n' '{"op":"thinking_done","data":{}}'
printf '%s\n' '{"op":"token","data":{"content":"Found a.txt"}}'
printf '%s\n' '{"op":"done","data":{"content":"Looking. Found a.txt"}}'
"#;
    let s = exec_server(&script("tools.sh", body), &[]);
    let mut ws = s.ws("/api/ws/t");
    send_json(
        &mut ws,
        json!({"op": "message", "data": {"content": "what is here?"}}),
    );
    let frames = until_done(&mut ws);
    let ops: Vec<&str> = frames.iter().map(|f| f["op"].as_str().unwrap()).collect();
    assert_eq!(
        ops,
        [
            "token",
            "tool_call",
            "tool_result",
            "thinking",
            "thinking_done",
            "token",
            "done"
        ]
    );
    assert_eq!(
        frames[1]["data"],
        json!({"tool_call_id": "c1", "name": "ls", "details": {"path": "."}})
    );
    assert_eq!(
        frames[2]["data"],
        json!({"tool_call_id": "c1", "status": "success", "details": "a.txt"})
    );
    let h = history(&s, "t");
    let kinds: Vec<&str> = h.iter().map(|m| m["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["request", "response", "request", "response"]);
    assert_eq!(
        h[1]["parts"][1],
        json!({"part_kind": "tool-call", "tool_name": "ls", "args": {"path": "."}, "tool_call_id": "c1"})
    );
    assert_eq!(h[2]["parts"][0]["part_kind"], "tool-return");
    assert_eq!(h[2]["parts"][0]["tool_name"], "ls");
    // The thinking run is kept as a part of the response it began.
    assert_eq!(
        h[3]["parts"],
        json!([{"part_kind": "thinking", "content": "hmm"}, {"part_kind": "text", "content": "Found a.txt"}])
    );
    let list = s.get("/api/sessions").json();
    assert_eq!(list[0]["message_count"], 4);
}

/// Emits one token every 50 ms, 200 times.
const SLOW: &str = r#"#!/bin/sh
cat >/dev/null
i=0
while [ $i -lt 200 ]; do
  printf '{"op":"token","data":{"content":"t%d "}}\n' $i
  i=$((i+1))
  sleep 0.05
done
printf '{"op":"done","data":{}}\n'
"#;

#[test]
fn cancel_kills_the_agent_and_keeps_what_streamed() {
    let s = exec_server(&script("slow.sh", SLOW), &[]);
    let mut ws = s.ws("/api/ws/c");
    send_json(&mut ws, json!({"op": "message", "data": {"content": "go"}}));
    let mut streamed = String::new();
    // Wait for two tokens, then cancel.
    for _ in 0..2 {
        let f = next_json(&mut ws);
        assert_eq!(f["op"], "token");
        streamed.push_str(f["data"]["content"].as_str().unwrap());
    }
    send_json(&mut ws, json!({"op": "cancel"}));
    loop {
        let f = next_json(&mut ws);
        if f["op"] == "token" {
            streamed.push_str(f["data"]["content"].as_str().unwrap());
            continue;
        }
        assert_eq!(f["data"]["code"], "cancelled");
        break;
    }
    let h = history(&s, "c");
    assert_eq!(h.len(), 2);
    assert_eq!(h[1]["parts"][0]["content"], json!(streamed));
    eventually_no_children(s.child.id());
    // Nothing is running now.
    send_json(&mut ws, json!({"op": "cancel"}));
    assert_eq!(next_json(&mut ws)["data"]["code"], "not_running");
}

#[test]
fn turns_queue_per_session_and_busy_past_the_limit() {
    let s = exec_server(&script("slow.sh", SLOW), &["--max-queued-turns", "1"]);
    let mut ws = s.ws("/api/ws/q");
    for text in ["first", "second", "third"] {
        send_json(&mut ws, json!({"op": "message", "data": {"content": text}}));
    }
    // The third is refused at once (to the sender only, no seq).
    loop {
        let f = next_json(&mut ws);
        if f["op"] == "error" {
            assert_eq!(f["data"]["code"], "busy");
            assert!(f.get("seq").is_none());
            break;
        }
    }
    // REST gets 429 while the queue is full.
    let r = chat(&s, "q", "rest");
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["detail"]["code"], "busy");
    // Cancel ends the running turn and the queued one, each with an error.
    send_json(&mut ws, json!({"op": "cancel"}));
    let mut cancelled = 0;
    while cancelled < 2 {
        let f = next_json(&mut ws);
        if f["data"]["code"] == "cancelled" {
            cancelled += 1;
        }
    }
    eventually_no_children(s.child.id());
}

#[test]
fn a_client_that_disconnects_does_not_cancel_its_turn() {
    let body = "#!/bin/sh\ncat >/dev/null\nsleep 0.3\nprintf '{\"op\":\"done\",\"data\":{\"content\":\"finished anyway\"}}\\n'\n";
    let s = exec_server(&script("later.sh", body), &[]);
    let mut ws = s.ws("/api/ws/d");
    send_json(&mut ws, json!({"op": "message", "data": {"content": "go"}}));
    drop(ws);
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let h = history(&s, "d");
        if h.len() == 2 {
            assert_eq!(h[1]["parts"][0]["content"], "finished anyway");
            break;
        }
        assert!(Instant::now() < deadline, "the turn never finished");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn deleting_a_session_cancels_its_turn_and_kills_the_agent() {
    let s = exec_server(&script("slow.sh", SLOW), &[]);
    let mut ws = s.ws("/api/ws/del");
    send_json(&mut ws, json!({"op": "message", "data": {"content": "go"}}));
    assert_eq!(next_json(&mut ws)["op"], "token");
    assert_eq!(
        s.request("DELETE", "/api/sessions/del", None, &[]).status,
        204
    );
    loop {
        let f = next_json(&mut ws);
        if f["op"] == "error" {
            assert_eq!(f["data"]["code"], "cancelled");
            break;
        }
    }
    eventually_no_children(s.child.id());
}

#[test]
fn shutdown_kills_running_agents() {
    let mut s = exec_server(&script("slow.sh", SLOW), &[]);
    let mut ws = s.ws("/api/ws/bye");
    send_json(&mut ws, json!({"op": "message", "data": {"content": "go"}}));
    assert_eq!(next_json(&mut ws)["op"], "token");
    let pid = s.child.id();
    let kids: Vec<u32> = children(pid).into_iter().map(|(p, _)| p).collect();
    assert!(!kids.is_empty());
    signal(&s.child, libc::SIGTERM);
    assert_eq!(close_code(&mut ws), 1001);
    drop(ws);
    assert!(s.child.wait().unwrap().success());
    for k in kids {
        assert!(
            !std::path::Path::new(&format!("/proc/{k}")).exists(),
            "agent {k} outlived the server"
        );
    }
}

#[test]
fn echo_delay_streams_slowly_and_can_be_cancelled_over_rest_wait() {
    let s = Server::start(&["--echo-delay-ms", "20"]);
    let mut ws = s.ws("/api/ws/e");
    let addr = s.addr();
    let waiter = std::thread::spawn(move || {
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let body = json!({"content": "w ".repeat(500), "session_id": "e"}).to_string();
        std::io::Write::write_all(&mut c, &raw_request("POST", "/api/chat", Some(&body), &[]))
            .unwrap();
        read_response(&mut c).unwrap()
    });
    // Tokens arrive one by one; cancel after the third.
    for _ in 0..3 {
        assert_eq!(next_json(&mut ws)["op"], "token");
    }
    send_json(&mut ws, json!({"op": "cancel"}));
    let r = waiter.join().unwrap();
    assert_eq!(r.status, 409);
    assert_eq!(r.json()["detail"]["code"], "cancelled");
}

#[test]
fn an_agent_that_writes_past_the_output_bound_is_stopped() {
    // 17 MB of token lines, past the 16 MiB bound, and never a `done`.
    let body = "#!/bin/sh\ncat >/dev/null\nyes '{\"op\":\"token\",\"data\":{\"content\":\"x\"}}' | head -c 17000000\nsleep 60\n";
    let s = exec_server(&script("flood.sh", body), &[]);
    let r = chat(&s, "o", "go");
    assert_eq!(r.status, 503);
    let detail = r.json()["detail"].as_str().unwrap().to_owned();
    assert!(detail.contains("output passed 16777216 bytes"), "{detail}");
    eventually_no_children(s.child.id());
}
