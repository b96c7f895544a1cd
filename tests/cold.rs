//! Cold histories against the real binary: a session idle for
//! `--history-idle` keeps only its directory entry, and its history is
//! read back from the journal by a helper thread when something needs it.
//! Nothing lost, nothing wrong: the same history as when hot, through
//! kill -9 during reads and during a compaction, many first touches at
//! once, a delete while the read is under way, and a corrupt record (an
//! error for that session only).

mod common;
use common::*;

use serde_json::{json, Value};
use std::io::Write;
use std::path::Path;
use std::time::Instant;

fn serve(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
    let mut args = vec!["--data-dir", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    Server::start_with_env(&args, env)
}

fn kill9(s: &mut Server) {
    signal(&s.child, libc::SIGKILL);
    let _ = s.child.wait();
}

/// One sample of `/metrics`: `name` with its labels as written, e.g.
/// `autopoiesis_history_loads_total{outcome="ok"}`.
fn metric(s: &Server, name: &str) -> f64 {
    let text = s.get("/metrics").text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

/// Waits (bounded) until `metric` reads `want`.
fn until_metric(s: &Server, name: &str, want: f64) {
    until_metric_is(s, name, &format!("{want}"), |got| got == want);
}

/// Waits (bounded) until `metric` satisfies `ok` (`what` says how).
fn until_metric_is(s: &Server, name: &str, what: &str, ok: impl Fn(f64) -> bool) {
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let got = metric(s, name);
        if ok(got) {
            return;
        }
        assert!(Instant::now() < deadline, "{name} stayed {got}, not {what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

const RESIDENT: &str = "autopoiesis_sessions_resident";
const LOADS_OK: &str = "autopoiesis_history_loads_total{outcome=\"ok\"}";
const LOADS_FAILED: &str = "autopoiesis_history_loads_total{outcome=\"error\"}";
const IN_FLIGHT: &str = "autopoiesis_history_loads_in_flight";

fn chat(s: &Server, id: &str, content: &str) -> Value {
    let r = s.post(
        &format!("/api/sessions/{id}/chat"),
        &json!({ "content": content }).to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn history_body(s: &Server, id: &str) -> (u16, String) {
    let r = s.get(&format!("/api/sessions/{id}/history"));
    (r.status, r.text())
}

/// `id`'s entry in the listing.
fn info(s: &Server, id: &str) -> Value {
    let list = s.get("/api/sessions").json();
    list.as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("no {id} in {list}"))
}

/// Sends `GET .../history` on a connection of its own and returns it
/// unanswered (the read is under way).
fn history_in_flight(s: &Server, id: &str) -> std::net::TcpStream {
    let mut c = s.connect();
    write!(
        c,
        "GET /api/sessions/{id}/history HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    c
}

#[test]
fn an_idle_history_leaves_ram_and_reads_back_identical() {
    let dir = temp_dir("cold-identical");
    let s = serve(&dir, &["--history-idle", "1", "--retain-idle", "1"], &[]);
    for i in 0..3 {
        chat(&s, "c", &format!("turn {i} of the conversation"));
    }
    let mut ws = s.ws("/api/ws/c");
    send_json(
        &mut ws,
        json!({"op": "message", "data": {"content": "over ws"}}),
    );
    let events = until_done(&mut ws);
    let seq = events.last().unwrap()["seq"].as_u64().unwrap();
    drop(ws);
    let hot = history_body(&s, "c");
    assert_eq!(hot.0, 200);
    let listed = info(&s, "c");
    assert_eq!(listed["message_count"], 8);

    // No client, no turn, idle: only the directory entry stays.
    until_metric(&s, RESIDENT, 0.0);
    assert_eq!(metric(&s, LOADS_OK), 0.0);
    assert_eq!(info(&s, "c"), listed);
    assert_eq!(history_body(&s, "c"), hot, "read back from the journal");
    assert_eq!(metric(&s, LOADS_OK), 1.0);
    assert_eq!(metric(&s, RESIDENT), 1.0);

    // Cold again; a client that attaches starts the read at once, and
    // its new turn numbers on from where the session was.
    until_metric(&s, RESIDENT, 0.0);
    let mut ws = s.ws(&format!("/api/ws/c?since={seq}"));
    until_metric(&s, LOADS_OK, 2.0);
    send_json(
        &mut ws,
        json!({"op": "message", "data": {"content": "later"}}),
    );
    let later = until_done(&mut ws);
    assert_eq!(later[0]["seq"].as_u64().unwrap(), seq + 1);
    let (status, body) = history_body(&s, "c");
    assert_eq!(status, 200);
    let messages: Value = serde_json::from_str(&body).unwrap();
    let hot: Value = serde_json::from_str(&hot.1).unwrap();
    let all = messages["messages"].as_array().unwrap();
    assert_eq!(all.len(), 10);
    assert_eq!(all[..8], hot["messages"].as_array().unwrap()[..]);
}

/// An agent that answers with how many history messages it was given and
/// the first one's prompt.
const HISTORY_AGENT: &str = r#"#!/usr/bin/env python3
import json, sys
req = json.loads(sys.stdin.readline())
h = req["history"]
first = h[0]["parts"][0]["content"] if h else "-"
print(json.dumps({"op": "done", "data": {"content": "history=%d first=%s" % (len(h), first)}}), flush=True)
"#;

#[test]
fn an_agent_is_given_a_cold_history_read_back() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir("cold-agent");
    let agent = dir.join("agent.py");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(&agent, HISTORY_AGENT).unwrap();
    std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).unwrap();
    let args = [
        "--history-idle",
        "1",
        "--retain-idle",
        "1",
        "--agent",
        "exec",
        "--agent-cmd",
        agent.to_str().unwrap(),
    ];
    let s = serve(&dir, &args, &[]);
    assert_eq!(chat(&s, "a", "hello")["content"], "history=0 first=-");
    assert_eq!(chat(&s, "a", "again")["content"], "history=2 first=hello");
    until_metric(&s, RESIDENT, 0.0);
    // The turn waits for the read, then the agent gets all of it.
    assert_eq!(chat(&s, "a", "third")["content"], "history=4 first=hello");
    assert_eq!(metric(&s, LOADS_OK), 1.0);
}

#[test]
fn a_corrupt_record_is_an_error_for_that_session_only() {
    let dir = temp_dir("cold-corrupt");
    let s = serve(&dir, &["--history-idle", "1", "--retain-idle", "1"], &[]);
    chat(&s, "a", "first words");
    chat(&s, "a", "marker-to-corrupt");
    chat(&s, "b", "other session");
    let b = history_body(&s, "b");
    until_metric(&s, RESIDENT, 0.0);
    // Flip one byte inside the record holding the marker.
    let journal = dir.join("journal");
    let bytes = std::fs::read(&journal).unwrap();
    let at = bytes
        .windows(17)
        .rposition(|w| w == b"marker-to-corrupt")
        .unwrap();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&journal)
        .unwrap();
    use std::io::{Seek, SeekFrom};
    f.seek(SeekFrom::Start(at as u64)).unwrap();
    f.write_all(b"n").unwrap();
    drop(f);

    let (status, body) = history_body(&s, "a");
    assert_eq!(status, 500, "{body}");
    assert!(
        body.contains("could not be read from the journal"),
        "{body}"
    );
    assert!(body.contains("corrupt record"), "{body}");
    assert_eq!(metric(&s, LOADS_FAILED), 1.0);
    // Never a partial history; other sessions and the server go on.
    assert_eq!(history_body(&s, "b"), b);
    assert_eq!(s.get("/api/health").status, 200);
    assert_eq!(info(&s, "a")["message_count"], 4);
}

#[test]
fn kill_9_during_a_cold_read_loses_nothing() {
    let dir = temp_dir("cold-kill-read");
    let mut s = serve(&dir, &[], &[]);
    for i in 0..4 {
        chat(&s, "k", &format!("turn {i}"));
    }
    let hot = history_body(&s, "k");
    assert!(s.terminate().success());
    // After a restart every history is cold; reads take 5 s here.
    let mut s = serve(&dir, &[], &[("AUTOPOIESIS_TEST_READ_DELAY_MS", "5000")]);
    let _pending = history_in_flight(&s, "k");
    until_metric(&s, IN_FLIGHT, 1.0);
    kill9(&mut s);
    let s = serve(&dir, &[], &[]);
    assert_eq!(history_body(&s, "k"), hot);
}

#[test]
fn a_compaction_reads_cold_sessions_back_and_a_kill_9_during_it_loses_nothing() {
    let dir = temp_dir("cold-compact");
    let s = serve(&dir, &[], &[]);
    let big = "z".repeat(100_000);
    for i in 0..10 {
        chat(&s, &format!("live{i}"), &format!("{i} {big}"));
    }
    for _ in 0..30 {
        chat(&s, "gone", &big);
    }
    let hot: Vec<_> = (0..10)
        .map(|i| history_body(&s, &format!("live{i}")))
        .collect();
    drop(s);
    let journal = dir.join("journal");
    let full = std::fs::metadata(&journal).unwrap().len();

    // Restarted, all cold, reads slow: the compaction waits on them, and
    // is killed while it does.
    let mut s = serve(&dir, &[], &[("AUTOPOIESIS_TEST_READ_DELAY_MS", "300")]);
    assert_eq!(
        s.request("DELETE", "/api/sessions/gone", None, &[]).status,
        204
    );
    until_metric_is(&s, IN_FLIGHT, "> 0", |n| n > 0.0);
    assert!(
        dir.join("journal.compact").exists(),
        "reads for the compaction"
    );
    kill9(&mut s);

    // Restarted again: everything there; this time the compaction ends.
    let s = serve(&dir, &["--history-idle", "1"], &[]);
    let deadline = Instant::now() + IO_TIMEOUT * 3;
    while std::fs::metadata(&journal).unwrap().len() >= full / 2 {
        assert!(Instant::now() < deadline, "never compacted");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // Copied, then let go again; read back from the new file.
    until_metric(&s, RESIDENT, 0.0);
    for (i, want) in hot.iter().enumerate() {
        assert_eq!(&history_body(&s, &format!("live{i}")), want, "live{i}");
    }
    assert_eq!(history_body(&s, "gone").0, 404);
    // And after a restart on the compacted journal.
    drop(s);
    let s = serve(&dir, &[], &[]);
    for (i, want) in hot.iter().enumerate() {
        assert_eq!(&history_body(&s, &format!("live{i}")), want, "live{i}");
    }
}

#[test]
fn many_first_touches_of_cold_sessions_at_once_each_read_once() {
    let dir = temp_dir("cold-touches");
    let s = serve(&dir, &[], &[]);
    let ids: Vec<String> = (0..20).map(|i| format!("t{i}")).collect();
    for id in &ids {
        chat(&s, id, &format!("hello from {id}"));
        chat(&s, id, "and more");
    }
    let hot: Vec<_> = ids.iter().map(|id| history_body(&s, id)).collect();
    drop(s);
    let s = serve(&dir, &[], &[("AUTOPOIESIS_TEST_READ_DELAY_MS", "20")]);
    std::thread::scope(|scope| {
        for t in 0..8 {
            let (s, ids, hot) = (&s, &ids, &hot);
            scope.spawn(move || {
                for k in 0..ids.len() {
                    let i = (k * 7 + t * 3) % ids.len();
                    assert_eq!(history_body(s, &ids[i]), hot[i], "{}", ids[i]);
                }
            });
        }
    });
    assert_eq!(
        metric(&s, LOADS_OK),
        ids.len() as f64,
        "one read per session"
    );
}

#[test]
fn a_cold_session_deleted_while_its_read_is_under_way() {
    let dir = temp_dir("cold-delete");
    let s = serve(&dir, &[], &[]);
    chat(&s, "d", "soon gone");
    drop(s);
    let s = serve(&dir, &[], &[("AUTOPOIESIS_TEST_READ_DELAY_MS", "1000")]);
    let mut pending = history_in_flight(&s, "d");
    until_metric(&s, IN_FLIGHT, 1.0);
    assert_eq!(
        s.request("DELETE", "/api/sessions/d", None, &[]).status,
        204
    );
    pending.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let r = read_response(&mut pending).expect("an answer");
    assert_eq!(r.status, 404);
    // The id is free for a new session, with nothing of the old one.
    chat(&s, "d", "new");
    let (_, body) = history_body(&s, "d");
    let h: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(h["messages"].as_array().unwrap().len(), 2);
    assert!(!body.contains("soon gone"));
}
