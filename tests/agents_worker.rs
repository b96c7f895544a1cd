//! The long-lived `worker` agent against the real binary, with a small
//! Python worker written into a temp dir. The worker logs what it receives
//! (and when a turn starts, with how many are in flight) to a file the
//! tests read; tests wait on that file, on responses and on frames, never
//! on fixed sleeps.

mod common;
use common::*;

use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A test worker. Each log line starts with its pid. Prompts are commands:
/// - `wait N`: returns once N turns have been in flight at once (or after
///   20 s);
/// - `gate PATH`: returns once PATH exists (or on cancel);
/// - `hang`: returns only when cancelled, then prints late lines for it;
/// - `crash`: a line on stderr, then exit 3;
/// - `garbage`: a line on stderr, then a line that is not JSON, then hangs;
/// - `stray`: lines for turns it was never given, then answers;
/// - `flood N SIZE`: N tokens of SIZE bytes;
/// - anything else: the words upper-cased as tokens.
///
/// Every answer's `done` content says `pid=P per=K`: its pid and how many
/// turns of the session were in flight (K must always be 1).
const WORKER: &str = include_str!("common/worker.py");

struct Worker {
    dir: PathBuf,
    log: PathBuf,
    cmd: String,
}

impl Worker {
    fn new(name: &str) -> Worker {
        let dir = temp_dir(name);
        let script = dir.join("worker.py");
        std::fs::write(&script, WORKER).unwrap();
        Worker {
            log: dir.join("log"),
            cmd: format!("python3 {}", script.display()),
            dir,
        }
    }

    fn server(&self, extra: &[&str]) -> Server {
        self.server_env(extra, &[])
    }

    fn server_env(&self, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut args = vec!["--agent", "worker", "--agent-cmd", &self.cmd];
        args.extend_from_slice(extra);
        let log = self.log.to_string_lossy().into_owned();
        let mut env = env.to_vec();
        env.push(("WORKER_LOG", &log));
        Server::start_with_env(&args, &env)
    }

    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Waits for a log line containing `needle`; returns it.
    fn wait_for(&self, needle: &str) -> String {
        self.wait_for_count(needle, 1).pop().unwrap()
    }

    /// Waits until `n` log lines contain `needle`; returns them.
    fn wait_for_count(&self, needle: &str, n: usize) -> Vec<String> {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            let found: Vec<String> = self
                .lines()
                .into_iter()
                .filter(|l| l.contains(needle))
                .collect();
            if found.len() >= n {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "no {n} log lines with {needle:?}:\n{}",
                self.lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn gate(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    fn open(&self, gate: &str) {
        std::fs::write(gate, b"").unwrap();
    }
}

fn chat(s: &Server, session: &str, content: &str) -> HttpResponse {
    s.post(
        "/api/chat",
        &json!({"content": content, "session_id": session}).to_string(),
    )
}

/// The `pid=P` of a reply.
fn pid_of(content: &str) -> u32 {
    content
        .split_whitespace()
        .find_map(|w| w.strip_prefix("pid="))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {content:?}"))
}

fn ok_reply(r: &HttpResponse) -> String {
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["content"].as_str().unwrap().to_owned()
}

fn detail(r: &HttpResponse) -> String {
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    r.json()["detail"].as_str().unwrap().to_owned()
}

/// The turn id in a worker's `got` line.
fn turn_in(line: &str) -> u64 {
    let json = &line[line.find('{').unwrap()..];
    serde_json::from_str::<Value>(json).unwrap()["turn"]
        .as_u64()
        .unwrap()
}

/// Processes whose process group is `pgid`.
fn group_members(pgid: u32) -> Vec<u32> {
    processes()
        .into_iter()
        .filter(|p| p.3 == pgid)
        .map(|p| p.0)
        .collect()
}

fn eventually_gone(pgid: u32) {
    until_empty(&format!("process group {pgid}"), || group_members(pgid));
}

fn pgid_of(up_line: &str) -> u32 {
    up_line
        .split("pgid=")
        .nth(1)
        .and_then(|p| p.trim().parse().ok())
        .unwrap()
}

#[test]
fn one_worker_process_serves_many_turns() {
    let w = Worker::new("many");
    let s = w.server(&[]);
    let mut ws = s.ws("/api/ws/one");
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
    assert_eq!(tokens, ["HELLO ", "BIG ", "WORLD "]);
    let pid = pid_of(frames.last().unwrap()["data"]["content"].as_str().unwrap());
    for i in 0..6 {
        let reply = ok_reply(&chat(&s, &format!("s{}", i % 3), "again"));
        assert_eq!(pid_of(&reply), pid, "turn {i} on another process");
    }
    assert_eq!(w.lines().iter().filter(|l| l.contains(" up ")).count(), 1);
    // The history goes with each turn, and it is stored as exec's is.
    w.wait_for(" one inflight=1 history=0");
    ok_reply(&chat(&s, "one", "second"));
    w.wait_for(" one inflight=1 history=2");
    let h = s.get("/api/sessions/one/history").json();
    assert_eq!(h["messages"][1]["model_name"], "worker");
    assert_eq!(h["messages"].as_array().unwrap().len(), 4);
}

#[test]
fn turns_of_different_sessions_are_in_flight_at_once() {
    let w = Worker::new("together");
    let s = w.server(&[]);
    let replies: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let s = &s;
                scope.spawn(move || ok_reply(&chat(s, &format!("c{i}"), "wait 4")))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in &replies {
        assert!(r.ends_with("together=True"), "{r}");
    }
}

#[test]
fn the_concurrency_bound_holds_turns_back() {
    let w = Worker::new("bound");
    let s = w.server(&["--worker-concurrency", "2"]);
    let gate = w.gate("open");
    let replies: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..3)
            .map(|i| {
                let (s, gate) = (&s, &gate);
                scope.spawn(move || ok_reply(&chat(s, &format!("b{i}"), &format!("gate {gate}"))))
            })
            .collect();
        // Two start; the third waits until one of them ends.
        w.wait_for_count(" start ", 2);
        w.open(&gate);
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in &replies {
        assert!(r.ends_with("peak=1") || r.ends_with("peak=2"), "{r}");
    }
    for line in w.wait_for_count(" start ", 3) {
        assert!(!line.contains("inflight=3"), "{line}");
    }
}

#[test]
fn a_sessions_turns_run_one_at_a_time_in_order() {
    let w = Worker::new("order");
    let s = w.server(&[]);
    let mut ws = s.ws("/api/ws/ord");
    let gate = w.gate("go");
    send_json(
        &mut ws,
        json!({"op": "message", "data": {"content": format!("gate {gate}")}}),
    );
    for text in ["two", "three"] {
        send_json(&mut ws, json!({"op": "message", "data": {"content": text}}));
    }
    w.wait_for(" start ");
    w.open(&gate);
    let mut dones = Vec::new();
    while dones.len() < 3 {
        let f = next_json(&mut ws);
        if f["op"] == "done" {
            dones.push(f["data"]["content"].as_str().unwrap().to_owned());
        }
    }
    for d in &dones {
        assert!(d.contains("per=1"), "two turns of a session at once: {d}");
    }
    let got: Vec<u64> = w
        .lines()
        .iter()
        .filter(|l| l.contains(" got "))
        .map(|l| turn_in(l))
        .collect();
    assert_eq!(got.len(), 3);
    assert!(got.windows(2).all(|p| p[0] < p[1]), "{got:?}");
    let h = s.get("/api/sessions/ord/history").json();
    let prompts: Vec<&str> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["kind"] == "request")
        .map(|m| m["parts"][0]["content"].as_str().unwrap())
        .collect();
    assert_eq!(prompts[1..], ["two", "three"]);
}

#[test]
fn cancel_reaches_the_worker_with_the_turn_id_and_late_lines_are_ignored() {
    let w = Worker::new("cancel");
    let s = w.server(&[]);
    let mut ws = s.ws("/api/ws/can");
    send_json(
        &mut ws,
        json!({"op": "message", "data": {"content": "hang"}}),
    );
    let turn = turn_in(&w.wait_for("\"prompt\":\"hang\""));
    send_json(&mut ws, json!({"op": "cancel"}));
    let f = next_json(&mut ws);
    assert_eq!(f["op"], "error");
    assert_eq!(f["data"]["code"], "cancelled");
    w.wait_for(&format!("got {{\"type\":\"cancel\",\"turn\":{turn}}}"));
    // The worker answers the cancelled turn anyway ("late", "too late"):
    // ignored. The next turn's frames are the only ones that follow.
    send_json(
        &mut ws,
        json!({"op": "message", "data": {"content": "next"}}),
    );
    let frames = until_done(&mut ws);
    let texts: Vec<&str> = frames
        .iter()
        .map(|f| f["data"]["content"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(texts[0], "NEXT ", "{frames:?}");
    assert!(!texts.iter().any(|t| t.contains("late")), "{frames:?}");
    // Deleting a session cancels its turn at the worker too.
    send_json(
        &mut ws,
        json!({"op": "message", "data": {"content": "hang"}}),
    );
    let lines = w.wait_for_count("\"prompt\":\"hang\"", 2);
    let second = turn_in(&lines[1]);
    assert_eq!(
        s.request("DELETE", "/api/sessions/can", None, &[]).status,
        204
    );
    w.wait_for(&format!("got {{\"type\":\"cancel\",\"turn\":{second}}}"));
}

#[test]
fn a_crash_fails_only_that_workers_turns_and_it_restarts() {
    let w = Worker::new("crash");
    let s = w.server(&["--workers", "2"]);
    let gate = w.gate("open");
    let mut x = s.ws("/api/ws/x");
    let mut y = s.ws("/api/ws/y");
    // x → worker 0, y → worker 1 (fewest turns), z → worker 0 again.
    let send = |ws: &mut Ws, text: &str| {
        send_json(ws, json!({"op": "message", "data": {"content": text}}));
    };
    send(&mut x, &format!("gate {gate}"));
    w.wait_for_count(" start ", 1);
    send(&mut y, &format!("gate {gate}"));
    w.wait_for_count(" start ", 2);
    let r = chat(&s, "z", "crash");
    let why = detail(&r);
    assert!(
        why.starts_with("worker 0 (pid ")
            && why.ends_with("exited with status 3; its last stderr line: dying on purpose"),
        "{why}"
    );
    // x was in flight on the same worker: same reason, as an error event.
    let f = next_json(&mut x);
    assert_eq!(f["op"], "error");
    assert_eq!(f["data"]["message"], json!(why));
    // y, on the other worker, still finishes.
    w.open(&gate);
    let y_done = until_done(&mut y);
    let y_pid = pid_of(y_done.last().unwrap()["data"]["content"].as_str().unwrap());
    // Worker 0 is back: x's next turn works, on a new process.
    let up = w.wait_for_count(" up ", 3);
    send(&mut x, "again");
    let frames = until_done(&mut x);
    let x_pid = pid_of(frames.last().unwrap()["data"]["content"].as_str().unwrap());
    assert_ne!(x_pid, y_pid);
    assert!(up[2].starts_with(&format!("{x_pid} ")), "{up:?}");
}

#[test]
fn a_line_that_is_not_an_event_kills_and_restarts_the_worker() {
    let w = Worker::new("garbage");
    let s = w.server(&[]);
    let first = pid_of(&ok_reply(&chat(&s, "g", "hi")));
    let pgid = pgid_of(&w.wait_for(" up "));
    let why = detail(&chat(&s, "g", "garbage"));
    assert!(
        why.starts_with("worker 0 (pid ")
            && why.contains("printed a line that is not an event")
            && why.contains("this is not json")
            && why.ends_with("its last stderr line: about to misbehave"),
        "{why}"
    );
    // The hanging process was killed, group and all.
    eventually_gone(pgid);
    let second = pid_of(&ok_reply(&chat(&s, "g", "hi")));
    assert_ne!(first, second);
}

#[test]
fn lines_for_turns_not_in_flight_are_ignored() {
    let w = Worker::new("stray");
    let s = w.server(&[]);
    let first = pid_of(&ok_reply(&chat(&s, "st", "hi")));
    let reply = ok_reply(&chat(&s, "st", "stray"));
    assert_eq!(pid_of(&reply), first, "not restarted");
    let h = s.get("/api/sessions/st/history").json();
    let text = h["messages"][3]["parts"][0]["content"].as_str().unwrap();
    assert!(
        !text.contains("not mine") && !text.contains("long ago"),
        "{text}"
    );
}

#[test]
fn two_workers_spread_sessions_and_keep_each_on_one_process() {
    let w = Worker::new("spread");
    let s = w.server(&["--workers", "2"]);
    w.wait_for_count(" up ", 2);
    let gate = w.gate("open");
    // While a's turn is in flight on one worker, b goes to the other.
    let (a_pid, b_pid) = std::thread::scope(|scope| {
        let a = scope.spawn(|| pid_of(&ok_reply(&chat(&s, "a", &format!("gate {gate}")))));
        w.wait_for(" start ");
        let b = pid_of(&ok_reply(&chat(&s, "b", "hi")));
        w.open(&gate);
        (a.join().unwrap(), b)
    });
    assert_ne!(a_pid, b_pid);
    for _ in 0..3 {
        assert_eq!(pid_of(&ok_reply(&chat(&s, "a", "more"))), a_pid);
        assert_eq!(pid_of(&ok_reply(&chat(&s, "b", "more"))), b_pid);
    }
}

#[test]
fn a_turn_past_the_timeout_fails_and_the_worker_is_told() {
    let w = Worker::new("timeout");
    let s = w.server(&["--turn-timeout", "1"]);
    w.wait_for(" up ");
    let first = pid_of(&ok_reply(&chat(&s, "t", "hi")));
    let why = detail(&chat(&s, "t", "hang"));
    assert!(why.contains("timed out after 1 s"), "{why}");
    let turn = turn_in(&w.wait_for("\"prompt\":\"hang\""));
    w.wait_for(&format!("got {{\"type\":\"cancel\",\"turn\":{turn}}}"));
    // The worker stays: a timeout is the turn's, not the worker's.
    assert_eq!(pid_of(&ok_reply(&chat(&s, "t", "hi"))), first);
}

#[test]
fn a_worker_that_cannot_start_fails_turns_and_the_server_stays_up() {
    let s = Server::start(&[
        "--agent",
        "worker",
        "--agent-cmd",
        "/definitely/not/a/worker",
    ]);
    assert_eq!(s.get("/api/health").status, 200);
    for _ in 0..2 {
        let why = detail(&chat(&s, "n", "hi"));
        assert!(
            why.starts_with("worker 0 (pid ") && why.contains("127") && why.contains("not found"),
            "{why}"
        );
    }
}

#[test]
fn shutdown_cancels_closes_stdin_then_kills_and_leaves_nothing() {
    let w = Worker::new("shutdown");
    let mut s = w.server_env(
        &["--shutdown-grace", "1"],
        &[("STUBBORN", "1"), ("GRANDCHILD", "1")],
    );
    let pgid = pgid_of(&w.wait_for(" up "));
    w.wait_for(" grandchild ");
    let mut ws = s.ws("/api/ws/bye");
    send_json(
        &mut ws,
        json!({"op": "message", "data": {"content": "hang"}}),
    );
    let turn = turn_in(&w.wait_for("\"prompt\":\"hang\""));
    signal(&s.child, libc::SIGTERM);
    // After the grace period: the turn is cancelled at the worker, the
    // client closed with 1001, the worker's stdin closed.
    let f = next_json(&mut ws);
    assert_eq!(f["data"]["code"], "cancelled");
    assert_eq!(close_code(&mut ws), 1001);
    w.wait_for(&format!("got {{\"type\":\"cancel\",\"turn\":{turn}}}"));
    w.wait_for(" eof");
    // This worker ignores EOF: it is killed, with its child (which init
    // reaps), and the server exits after it.
    assert!(s.child.wait().unwrap().success());
    eventually_gone(pgid);
}

#[test]
fn a_worker_that_exits_on_eof_lets_the_server_exit_at_once() {
    let w = Worker::new("eof");
    let mut s = w.server(&[]);
    let pgid = pgid_of(&w.wait_for(" up "));
    assert!(s.terminate().success());
    w.wait_for(" eof");
    eventually_gone(pgid);
}

#[test]
fn a_turn_over_the_output_bound_fails_and_is_cancelled() {
    let w = Worker::new("flood");
    let s = w.server(&[]);
    // 17 tokens of 1 MiB: past the 16 MiB bound.
    let why = detail(&chat(&s, "f", "flood 17 1048576"));
    assert!(why.contains("output passed 16777216 bytes"), "{why}");
    let turn = turn_in(&w.wait_for("\"prompt\":\"flood"));
    w.wait_for(&format!("got {{\"type\":\"cancel\",\"turn\":{turn}}}"));
}

#[test]
fn a_slow_client_pauses_the_worker_then_is_closed() {
    let w = Worker::new("slow");
    let s = w.server(&["--max-ws-output-bytes", "65536"]);
    let mut ws = slow_reader(&s, "/api/ws/sl");
    // 12 MB of tokens: more than the socket buffers and the output bound
    // hold. Without the pause the client would be cut at its output bound
    // ("Output buffer full"); with it, the worker waits, and the client is
    // closed only after holding it back for 5 s.
    let r = chat(&s, "sl", "flood 1500 8192");
    assert!(ok_reply(&r).ends_with("flooded"));
    let reason = loop {
        match read_frame(&mut ws) {
            Ok(tungstenite::Message::Close(Some(frame))) => {
                assert_eq!(u16::from(frame.code), 1008);
                break frame.reason.to_string();
            }
            Ok(_) => continue,
            Err(e) => panic!("no close frame: {e}"),
        }
    };
    assert_eq!(reason, "Client too slow");
}

/// A WebSocket client with a tiny receive buffer (so the server's output
/// backs up quickly) that reads nothing until asked.
fn slow_reader(s: &Server, path: &str) -> Ws {
    use std::os::fd::FromRawFd;
    // SAFETY: a plain socket, its options and connect, on our own fd.
    let stream = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let size: libc::c_int = 4096;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &size as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: s.port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes([127, 0, 0, 1]),
            },
            sin_zero: [0; 8],
        };
        let r = libc::connect(
            fd,
            &addr as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        assert_eq!(r, 0);
        std::net::TcpStream::from_raw_fd(fd)
    };
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let url = format!("ws://{}{}", s.addr(), path);
    tungstenite::client::client(url, stream).unwrap().0
}

/// The "complete worker" of docs/agents.md, taken from the doc itself.
fn readme_worker() -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/agents.md")).unwrap();
    let section = &readme[readme
        .find("A complete worker")
        .expect("the worker of docs/agents.md")..];
    let start = section.find("```python\n").unwrap() + "```python\n".len();
    let end = start + section[start..].find("```").unwrap();
    section[start..end].to_owned()
}

#[test]
fn the_readme_worker_works() {
    let dir = temp_dir("readme");
    let path = dir.join("worker.py");
    std::fs::write(&path, readme_worker()).unwrap();
    let cmd = format!("python3 {}", path.display());
    let s = Server::start(&["--agent", "worker", "--agent-cmd", &cmd]);
    let mut ws = s.ws("/api/ws/r");
    send_json(
        &mut ws,
        json!({"op": "message", "data": {"content": "hello big world"}}),
    );
    let frames = until_done(&mut ws);
    let texts: Vec<&str> = frames
        .iter()
        .map(|f| f["data"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["HELLO ", "BIG ", "WORLD ", "HELLO BIG WORLD"]);
    assert_eq!(ok_reply(&chat(&s, "r2", "again")), "AGAIN");
}
