//! Sessions survive restarts: SIGKILL and restart on the same data
//! directory, a crash mid-turn, torn and corrupt journals, resume by `seq`,
//! graceful shutdown with a running turn, disk trouble.

mod common;
use common::*;

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

fn serve_in(dir: &Path, extra: &[&str]) -> Server {
    let dir = dir.to_str().unwrap();
    let mut args = vec!["--data-dir", dir];
    args.extend_from_slice(extra);
    Server::start(&args)
}

fn kill9(s: &mut Server) {
    signal(&s.child, libc::SIGKILL);
    let _ = s.child.wait();
}

fn history(s: &Server, id: &str) -> Vec<Value> {
    s.get(&format!("/api/sessions/{id}/history")).json()["messages"]
        .as_array()
        .unwrap()
        .clone()
}

fn turn(ws: &mut Ws, text: &str) -> Vec<Value> {
    send_json(ws, json!({"op": "message", "data": {"content": text}}));
    until_done(ws)
}

/// Runs the binary to completion (it must exit by itself): status, stderr.
fn run_to_exit(args: &[&str]) -> (std::process::ExitStatus, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_autopoiesis"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Starts the server with stderr captured; returns it once listening, and
/// the stderr text so far is read after it is killed.
fn start_capturing(dir: &Path) -> (std::process::Child, u16) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_autopoiesis"));
    cmd.args(["serve", "--port", "0", "--data-dir", dir.to_str().unwrap()]);
    spawn_listening(cmd.stderr(Stdio::piped()))
}

#[test]
fn sigkill_and_restart_keeps_history_message_count_and_seq() {
    let dir = temp_dir("kill9");
    let mut s = serve_in(&dir, &[]);
    let mut ws = s.ws("/api/ws/keep");
    turn(&mut ws, "first turn");
    let frames = turn(&mut ws, "second turn here");
    let last_seq = frames.last().unwrap()["seq"].as_u64().unwrap();
    let r = s.post(
        "/api/chat",
        r#"{"content":"from rest","session_id":"keep"}"#,
    );
    assert_eq!(r.status, 200);
    let last_seq = last_seq + 3; // the REST turn's token, token, done reached ws too
    let other = s.post("/api/sessions", "").json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let before = s.get("/api/sessions").json();
    let hist_before = history(&s, "keep");
    drop(ws);
    kill9(&mut s);

    let s = serve_in(&dir, &[]);
    assert_eq!(
        s.get("/api/sessions").json(),
        before,
        "same sessions, order, created_at, message_count"
    );
    assert_eq!(history(&s, "keep"), hist_before);
    assert_eq!(history(&s, &other), Vec::<Value>::new());
    assert_eq!(before[0]["message_count"], 6);
    // seq goes on, never reused.
    let mut ws = s.ws("/api/ws/keep");
    let frames = turn(&mut ws, "after the crash");
    let first = frames[0]["seq"].as_u64().unwrap();
    assert!(
        first > last_seq,
        "seq {first} reused (last before the crash {last_seq})"
    );
    let seqs: Vec<u64> = frames.iter().map(|f| f["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (first..first + seqs.len() as u64).collect::<Vec<_>>());
}

#[test]
fn a_clean_restart_continues_seq_exactly() {
    let dir = temp_dir("clean");
    let mut s = serve_in(&dir, &[]);
    let mut ws = s.ws("/api/ws/c");
    let last = turn(&mut ws, "one two").last().unwrap()["seq"]
        .as_u64()
        .unwrap();
    drop(ws);
    assert!(s.terminate().success());
    let s = serve_in(&dir, &[]);
    let mut ws = s.ws("/api/ws/c");
    assert_eq!(turn(&mut ws, "three")[0]["seq"].as_u64().unwrap(), last + 1);
}

#[test]
fn a_crash_mid_turn_keeps_the_prompt_and_the_session_usable() {
    let dir = temp_dir("midturn");
    let agent = dir.join("slow.sh");
    std::fs::write(
        &agent,
        "#!/bin/sh\ncat >/dev/null\nprintf '{\"op\":\"token\",\"data\":{\"content\":\"partial \"}}\\n'\nsleep 60\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = dir.join("data");
    let mut s = serve_in(
        &data,
        &["--agent", "exec", "--agent-cmd", agent.to_str().unwrap()],
    );
    let mut ws = s.ws("/api/ws/m");
    send_json(
        &mut ws,
        json!({"op": "message", "data": {"content": "remember me"}}),
    );
    assert_eq!(next_json(&mut ws)["data"]["content"], "partial ");
    drop(ws);
    kill9(&mut s);

    let s = serve_in(&data, &[]);
    let h = history(&s, "m");
    assert_eq!(
        h.len(),
        1,
        "the request was saved when the turn started: {h:?}"
    );
    assert_eq!(h[0]["parts"][0]["content"], "remember me");
    let r = s.post("/api/chat", r#"{"content":"still here","session_id":"m"}"#);
    assert_eq!(r.json()["content"], "still here");
    assert_eq!(history(&s, "m").len(), 3);
}

#[test]
fn a_torn_last_record_is_dropped_with_a_warning() {
    let dir = temp_dir("torn");
    let mut s = serve_in(&dir, &[]);
    assert_eq!(
        s.post("/api/chat", r#"{"content":"kept","session_id":"t"}"#)
            .status,
        200
    );
    kill9(&mut s);
    let journal = dir.join("journal");
    let good = std::fs::metadata(&journal).unwrap().len();
    // Half a record: a header announcing 100 bytes, and 7 of them.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&journal)
        .unwrap();
    f.write_all(&[
        100, 0, 0, 0, 1, 2, 3, 4, b'{', b'"', b't', b'"', b':', b'"', b'm',
    ])
    .unwrap();
    drop(f);

    let (mut child, port) = start_capturing(&dir);
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    c.write_all(&raw_request("GET", "/api/sessions/t/history", None, &[]))
        .unwrap();
    let r = read_response(&mut c).unwrap();
    assert_eq!(r.json()["messages"].as_array().unwrap().len(), 2);
    let _ = child.kill();
    let _ = child.wait();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        err.contains(&format!("dropping a torn record at byte offset {good}")),
        "{err}"
    );
    assert_eq!(
        std::fs::metadata(&journal).unwrap().len(),
        good,
        "the torn tail is cut off"
    );
}

#[test]
fn a_corrupt_record_in_the_middle_refuses_start_and_says_how_to_recover() {
    let dir = temp_dir("corrupt");
    let mut s = serve_in(&dir, &[]);
    for i in 0..3 {
        assert_eq!(
            s.post(
                "/api/chat",
                &json!({"content": format!("turn {i}"), "session_id": "x"}).to_string()
            )
            .status,
            200
        );
    }
    kill9(&mut s);
    let journal = dir.join("journal");
    let mut bytes = std::fs::read(&journal).unwrap();
    // Flip a byte inside the first record's payload.
    bytes[12] ^= 0x20;
    std::fs::write(&journal, &bytes).unwrap();
    let (status, err) = run_to_exit(&["serve", "--port", "0", "--data-dir", dir.to_str().unwrap()]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("corrupt at byte offset 0"), "{err}");
    assert!(
        err.contains(&journal.display().to_string()),
        "names the file: {err}"
    );
    assert!(err.contains("truncate"), "says how to recover: {err}");
}

#[test]
fn a_second_server_on_the_same_directory_is_refused() {
    let dir = temp_dir("lock");
    let _s = serve_in(&dir, &[]);
    let (status, err) = run_to_exit(&["serve", "--port", "0", "--data-dir", dir.to_str().unwrap()]);
    assert_eq!(status.code(), Some(1));
    assert!(err.contains("another autopoiesis server"), "{err}");
}

#[test]
fn an_unusable_data_directory_is_a_clear_error() {
    let (status, err) = run_to_exit(&["serve", "--port", "0", "--data-dir", "/dev/null/sessions"]);
    assert_eq!(status.code(), Some(1));
    assert!(err.contains("/dev/null/sessions"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn resume_with_since_replays_from_the_middle_or_asks_to_resync() {
    let dir = temp_dir("resume");
    let s = serve_in(&dir, &["--retain-events", "6"]);
    let mut ws = s.ws("/api/ws/r");
    let all: Vec<Value> = [turn(&mut ws, "a b"), turn(&mut ws, "c d")].concat();
    assert_eq!(all.len(), 6);
    let seqs: Vec<u64> = all.iter().map(|f| f["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);

    // From 0: everything, then live events, no gap, no duplicate.
    let mut from0 = s.ws("/api/ws/r?since=0");
    let replayed: Vec<Value> = (0..6).map(|_| next_json(&mut from0)).collect();
    assert_eq!(replayed, all);
    // From the middle.
    let mut from4 = s.ws("/api/ws/r?since=4");
    assert_eq!(next_json(&mut from4), all[4]);
    assert_eq!(next_json(&mut from4), all[5]);
    // At the latest: nothing replayed; the next frame is live.
    let mut latest = s.ws("/api/ws/r?since=6");
    let live = turn(&mut ws, "e");
    assert_eq!(next_json(&mut latest), live[0]);
    assert_eq!(next_json(&mut from0), live[0]);
    assert_eq!(next_json(&mut from4), live[0]);
    // Too old: 6 retained events are now seq 3..8; since=1 lacks seq 2.
    let mut old = s.ws("/api/ws/r?since=1");
    assert_eq!(
        next_json(&mut old),
        json!({"op": "resync", "data": {"since": 1}})
    );
    let live = turn(&mut ws, "f");
    assert_eq!(next_json(&mut old), live[0]);
    // Above the latest `seq`: the client saw another incarnation of the
    // session (recreated, moved, in memory only): resync, then live.
    let latest = live.last().unwrap()["seq"].as_u64().unwrap();
    let mut ahead = s.ws(&format!("/api/ws/r?since={}", latest + 1));
    assert_eq!(
        next_json(&mut ahead),
        json!({"op": "resync", "data": {"since": latest + 1}})
    );
    let live = turn(&mut ws, "g");
    assert_eq!(next_json(&mut ahead), live[0]);
}

#[test]
fn an_in_memory_session_recreated_elsewhere_tells_the_client_to_resync() {
    // The client followed the session up to seq 3 on a server that kept it
    // in memory only; after a restart the same id starts again at seq 1.
    let s = Server::start(&[]);
    let mut ws = s.ws("/api/ws/m");
    assert_eq!(turn(&mut ws, "a b").len(), 3);
    drop(ws);
    drop(s);
    let s = Server::start(&[]);
    let mut ws = s.ws("/api/ws/m?since=3");
    assert_eq!(
        next_json(&mut ws),
        json!({"op": "resync", "data": {"since": 3}})
    );
    assert_eq!(turn(&mut ws, "z")[0]["seq"], 1);
}

#[test]
fn after_a_restart_an_old_since_gets_resync() {
    let dir = temp_dir("resync");
    let mut s = serve_in(&dir, &[]);
    let mut ws = s.ws("/api/ws/r");
    turn(&mut ws, "a b c");
    drop(ws);
    kill9(&mut s);
    let s = serve_in(&dir, &[]);
    let mut ws = s.ws("/api/ws/r?since=2");
    assert_eq!(
        next_json(&mut ws),
        json!({"op": "resync", "data": {"since": 2}})
    );
}

#[test]
fn shutdown_lets_a_running_turn_finish_then_closes_1001() {
    let dir = temp_dir("drain");
    let mut s = serve_in(&dir, &["--echo-delay-ms", "20"]);
    let mut ws = s.ws("/api/ws/d");
    let words = "w ".repeat(30);
    send_json(
        &mut ws,
        json!({"op": "message", "data": {"content": words}}),
    );
    assert_eq!(next_json(&mut ws)["op"], "token");
    signal(&s.child, libc::SIGTERM);
    // The turn completes within the grace period, then the close comes.
    let mut last = next_json(&mut ws);
    while last["op"] == "token" {
        last = next_json(&mut ws);
    }
    assert_eq!(last["op"], "done");
    assert_eq!(close_code(&mut ws), 1001);
    drop(ws);
    assert!(s.child.wait().unwrap().success());
    let s = serve_in(&dir, &[]);
    assert_eq!(history(&s, "d").len(), 2);
}

#[test]
fn shutdown_cancels_a_turn_that_outlasts_the_grace_and_journals_it() {
    let dir = temp_dir("grace");
    let mut s = serve_in(&dir, &["--echo-delay-ms", "50", "--shutdown-grace", "1"]);
    let mut ws = s.ws("/api/ws/g");
    send_json(
        &mut ws,
        json!({"op": "message", "data": {"content": "w ".repeat(200)}}),
    );
    assert_eq!(next_json(&mut ws)["op"], "token");
    signal(&s.child, libc::SIGTERM);
    let mut streamed = String::from("w ");
    loop {
        let f = next_json(&mut ws);
        if f["op"] == "token" {
            streamed.push_str(f["data"]["content"].as_str().unwrap());
            continue;
        }
        assert_eq!(f["data"]["code"], "cancelled", "{f}");
        break;
    }
    assert_eq!(close_code(&mut ws), 1001);
    drop(ws);
    assert!(s.child.wait().unwrap().success());
    let s = serve_in(&dir, &[]);
    let h = history(&s, "g");
    assert_eq!(h.len(), 2);
    assert_eq!(h[1]["parts"][0]["content"], json!(streamed));
}

#[test]
fn a_journal_write_failure_is_a_503_and_the_server_stays_up() {
    let dir = temp_dir("full");
    // The file size limit stands in for a full disk: appends past it fail
    // (EFBIG) the way they would with ENOSPC.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_autopoiesis"));
    cmd.args(["serve", "--port", "0", "--data-dir", dir.to_str().unwrap()]);
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit and signal are async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 4096,
                rlim_max: 4096,
            };
            libc::setrlimit(libc::RLIMIT_FSIZE, &lim);
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    let (mut child, port) = spawn_listening(cmd.stderr(Stdio::null()));
    let request = |method: &str, path: &str, body: Option<&str>| {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        c.write_all(&raw_request(method, path, body, &[])).unwrap();
        read_response(&mut c).unwrap()
    };
    let mut saved = 0;
    let failure = loop {
        let r = request(
            "POST",
            "/api/chat",
            Some(&json!({"content": "x".repeat(300), "session_id": "s"}).to_string()),
        );
        if r.status != 200 {
            break r;
        }
        saved += 1;
        assert!(saved < 100, "the journal never filled up");
    };
    assert_eq!(failure.status, 503);
    let detail = failure.json()["detail"].as_str().unwrap().to_owned();
    assert!(
        detail.contains("journal") && detail.contains("byte offset"),
        "{detail}"
    );
    // Still up; what was saved is still there; later writes are refused too.
    assert_eq!(request("GET", "/api/health", None).status, 200);
    let h = request("GET", "/api/sessions/s/history", None).json();
    assert_eq!(h["messages"].as_array().unwrap().len(), 2 * saved);
    assert_eq!(
        request(
            "POST",
            "/api/chat",
            Some(r#"{"content":"y","session_id":"s"}"#)
        )
        .status,
        503
    );
    // Nor is a new session announced that could not be saved.
    let r = request("POST", "/api/sessions", None);
    assert_eq!(r.status, 503);
    assert!(r.json()["detail"]
        .as_str()
        .unwrap()
        .contains("could not be saved"));
    assert_eq!(
        request("GET", "/api/sessions", None)
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let _ = child.kill();
    let _ = child.wait();
    // The journal holds whole records only: a restart reads it all.
    let s = serve_in(&dir, &[]);
    assert_eq!(history(&s, "s").len(), 2 * saved);
}

#[test]
fn the_journal_is_compacted_when_dead_records_outweigh_live_ones() {
    let dir = temp_dir("compact");
    let mut s = serve_in(&dir, &[]);
    let big = "x".repeat(100_000);
    for _ in 0..8 {
        let r = s.post(
            "/api/chat",
            &json!({"content": big, "session_id": "gone"}).to_string(),
        );
        assert_eq!(r.status, 200);
    }
    assert_eq!(
        s.post("/api/chat", r#"{"content":"small","session_id":"kept"}"#)
            .status,
        200
    );
    let journal = dir.join("journal");
    let full = std::fs::metadata(&journal).unwrap().len();
    assert!(full > 1_600_000, "{full}");
    assert_eq!(
        s.request("DELETE", "/api/sessions/gone", None, &[]).status,
        204
    );
    // The server compacts on a timer tick (once a second): wait, bounded.
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    while std::fs::metadata(&journal).unwrap().len() > 10_000 {
        assert!(std::time::Instant::now() < deadline, "never compacted");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // It keeps serving and appending to the new file.
    assert_eq!(
        s.post("/api/chat", r#"{"content":"after","session_id":"kept"}"#)
            .status,
        200
    );
    let before = s.get("/api/sessions").json();
    kill9(&mut s);
    let s = serve_in(&dir, &[]);
    assert_eq!(s.get("/api/sessions").json(), before);
    assert_eq!(history(&s, "kept").len(), 4);
    assert_eq!(s.get("/api/sessions/gone/history").status, 404);
}

/// A server whose journal fsyncs take `ms` (a test-only delay in the sync
/// helper: a slow disk).
fn serve_slow_disk(dir: &Path, ms: &str) -> Server {
    let dir = dir.to_str().unwrap();
    Server::start_with_env(
        &["--data-dir", dir, "--fsync", "batch"],
        &[("AUTOPOIESIS_TEST_SYNC_DELAY_MS", ms)],
    )
}

#[test]
fn a_slow_disk_holds_acknowledgements_not_the_loop() {
    let dir = temp_dir("slow-disk");
    let s = serve_slow_disk(&dir, "2000");
    // Another session, already known to the journal.
    let mut other = s.ws("/api/ws/other");
    turn(&mut other, "warm up");

    // A chat whose answer must wait for the disk.
    let mut chat = s.connect();
    send_routed_chat(&mut chat, "slow", "wait for the disk");
    // Meanwhile the loop serves everyone else: a health check, and the
    // other session's tokens as they stream. (A turn long enough to take
    // more than one loop iteration: the last iteration's tokens go out
    // with the `done`, which waits for the disk.)
    assert_eq!(s.get("/api/health").status, 200);
    let long = "w ".repeat(400);
    send_json(
        &mut other,
        json!({"op": "message", "data": {"content": long}}),
    );
    assert_eq!(next_json(&mut other)["op"], "token");
    assert_eq!(s.get("/api/sessions").status, 200);
    // ...and the chat's 200 has not left yet.
    chat.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let early = chat.read(&mut byte);
    assert!(
        matches!(&early, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the chat was answered before its record was durable: {early:?}"
    );
    chat.set_nonblocking(false).unwrap();
    let r = read_response(&mut chat).expect("the chat's answer");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["content"], "wait for the disk");
    // The other turn's `done` came once its record was durable too.
    let rest = until_done(&mut other);
    assert_eq!(rest.last().unwrap()["data"]["content"], long.as_str());
}

#[test]
fn a_turn_that_ends_in_one_iteration_goes_out_whole_once_durable() {
    let dir = temp_dir("one-write");
    let s = serve_slow_disk(&dir, "1500");
    let mut ws = s.ws("/api/ws/one");
    send_json(
        &mut ws,
        json!({"op": "message", "data": {"content": "a b c"}}),
    );
    // Its tokens were queued in the iteration that queued its `done`:
    // nothing is written before the record is durable...
    ws.get_mut().set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let early = ws.get_mut().read(&mut byte);
    assert!(
        matches!(&early, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "output left before the turn's record was durable: {early:?}"
    );
    ws.get_mut().set_nonblocking(false).unwrap();
    // ...then all of it, in order.
    let frames = until_done(&mut ws);
    let ops: Vec<&str> = frames.iter().map(|f| f["op"].as_str().unwrap()).collect();
    assert_eq!(ops, ["token", "token", "token", "done"]);
    let seqs: Vec<u64> = frames.iter().map(|f| f["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
}

#[test]
fn after_a_failed_sync_later_answers_are_not_held_forever() {
    let dir = temp_dir("sync-fails");
    let d = dir.to_str().unwrap();
    // Every sync fails (a disk gone bad).
    let s = Server::start_with_env(
        &["--data-dir", d, "--fsync", "batch"],
        &[("AUTOPOIESIS_TEST_SYNC_FAIL_AFTER", "0")],
    );
    // This chat's records are written, but their sync fails: its answer
    // must not claim they are saved, so its connection is cut off.
    let mut c = s.connect();
    send_routed_chat(&mut c, "lost", "not saved");
    assert!(
        read_response(&mut c).is_none_or(|r| r.status != 200),
        "a chat was answered 200 although its sync failed"
    );
    // From then on nothing is accepted, and the refusals arrive: they do
    // not wait for a sync that will never come.
    for id in ["lost", "later"] {
        let mut c = s.connect();
        send_routed_chat(&mut c, id, "refused");
        let r = read_response(&mut c).expect("an answer to the next chat");
        assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    }
    let r = s.post("/api/sessions", "");
    assert_eq!(r.status, 503);
    assert_eq!(s.get("/api/health").status, 200);
}

#[test]
fn kill_9_with_syncs_in_flight_loses_no_acknowledged_turn() {
    let dir = temp_dir("inflight");
    let mut s = serve_slow_disk(&dir, "150");
    let mut c = s.connect();
    let mut acknowledged = Vec::new();
    for i in 0..6 {
        let id = format!("k{i}");
        send_routed_chat(&mut c, &id, &format!("turn {i}"));
        if i == 5 {
            // Its records are written, its sync is under way: kill now.
            break;
        }
        assert_eq!(read_response(&mut c).unwrap().status, 200);
        acknowledged.push(id);
    }
    kill9(&mut s);
    let s = serve_in(&dir, &[]);
    for id in &acknowledged {
        assert_eq!(history(&s, id).len(), 2, "acknowledged turn of {id} lost");
    }
}

#[test]
fn a_compaction_keeps_what_was_written_while_it_ran() {
    let dir = temp_dir("compact-live");
    let mut s = serve_in(&dir, &[]);
    let big = "y".repeat(100_000);
    // About 4 MB live in 20 sessions, copied 256 KiB per loop iteration,
    // and 6 MB dead in one session about to be deleted.
    for i in 0..20 {
        let body = json!({ "content": big }).to_string();
        assert_eq!(
            s.post(&format!("/api/sessions/live{i}/chat"), &body).status,
            200
        );
    }
    for _ in 0..30 {
        let body = json!({ "content": big }).to_string();
        assert_eq!(s.post("/api/sessions/gone/chat", &body).status, 200);
    }
    assert!(s.terminate().success());
    // From here syncs take 300 ms and the compaction's switch 300 ms more:
    // turns keep arriving while it copies and while it switches.
    let mut s = serve_slow_disk(&dir, "300");
    let journal = dir.join("journal");
    let full = std::fs::metadata(&journal).unwrap().len();
    assert_eq!(
        s.request("DELETE", "/api/sessions/gone", None, &[]).status,
        204
    );
    // While it compacts: turns on sessions copied early, late and new.
    let mut acknowledged = Vec::new();
    let mut n = 0;
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    while std::fs::metadata(&journal).unwrap().len() >= full {
        assert!(std::time::Instant::now() < deadline, "never compacted");
        let id = match n % 3 {
            0 => "live0".to_owned(),
            1 => "live19".to_owned(),
            _ => format!("new{n}"),
        };
        let body = json!({ "content": format!("during {n}") }).to_string();
        assert_eq!(
            s.post(&format!("/api/sessions/{id}/chat"), &body).status,
            200
        );
        acknowledged.push((id, format!("during {n}")));
        n += 1;
    }
    assert!(n > 0, "no turn ran while it compacted");
    // And after it.
    assert_eq!(
        s.post("/api/sessions/live5/chat", r#"{"content":"after"}"#)
            .status,
        200
    );
    kill9(&mut s);
    let s = serve_in(&dir, &[]);
    assert_eq!(s.get("/api/sessions/gone/history").status, 404);
    for (id, content) in &acknowledged {
        let h = history(&s, id);
        let found = h
            .iter()
            .any(|m| m["parts"][0]["content"] == content.as_str());
        assert!(found, "{id}: {content} lost in the compaction");
    }
    assert_eq!(history(&s, "live5").len(), 4);
    assert_eq!(history(&s, "live12").len(), 2);
    assert!(std::fs::metadata(&journal).unwrap().len() < full);
}

/// `--retain-idle`: once a session has had no client that long, its
/// retained events go; a later resume from before them gets `resync`, and
/// one that saw everything just goes on live.
#[test]
fn retained_events_go_after_retain_idle_without_a_client_and_a_resume_resyncs() {
    let s = Server::start(&["--retain-idle", "1"]);
    let mut ws = s.ws("/api/ws/idle");
    let all = turn(&mut ws, "a b");
    assert_eq!(all.len(), 3);
    // While a client is attached the events stay (a resume replays them).
    let mut again = s.ws("/api/ws/idle?since=1");
    assert_eq!(next_json(&mut again), all[1]);
    drop(again);
    drop(ws);
    // Wait for the sweep to report the drop (an event, not a fixed sleep).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let metrics = String::from_utf8_lossy(&s.get("/metrics").body).into_owned();
        let dropped = metrics
            .lines()
            .find_map(|l| l.strip_prefix("autopoiesis_retained_dropped_total "))
            .map(|v| v.trim().parse::<f64>().unwrap());
        if dropped.is_some_and(|n| n >= 1.0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never dropped:\n{metrics}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let mut old = s.ws("/api/ws/idle?since=1");
    assert_eq!(
        next_json(&mut old),
        json!({"op": "resync", "data": {"since": 1}})
    );
    // Up to date: nothing to replay, nothing to resync; numbering goes on.
    let mut latest = s.ws("/api/ws/idle?since=3");
    let live = turn(&mut old, "c");
    assert_eq!(live[0]["seq"], 4);
    assert_eq!(next_json(&mut latest), live[0]);
}
