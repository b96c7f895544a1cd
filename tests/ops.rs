//! Operating the server: `/metrics` counters that move by exactly what
//! happened, the access log and JSON logs (and what they never contain),
//! systemd readiness over `NOTIFY_SOCKET`, socket activation through
//! Debian's `systemd-socket-activate`, and 405 on the WebSocket path.

mod common;
use common::*;

use serde_json::json;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use tungstenite::Message;

/// The samples of a scrape: `name{labels}` → value.
fn scrape(s: &Server, headers: &[(&str, &str)]) -> HashMap<String, f64> {
    let r = s.request("GET", "/metrics", None, headers);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = String::from_utf8(r.body).expect("UTF-8 exposition");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').expect("sample line");
            (name.to_owned(), value.parse().expect("numeric value"))
        })
        .collect()
}

fn delta(before: &HashMap<String, f64>, after: &HashMap<String, f64>, key: &str) -> f64 {
    after.get(key).copied().unwrap_or(0.0) - before.get(key).copied().unwrap_or(0.0)
}

#[test]
fn metrics_move_by_exactly_what_happened() {
    let s = Server::start(&["--echo-delay-ms", "20"]);
    let before = scrape(&s, &[]);
    for family in [
        "autopoiesis_build_info{version=\"0.1.0\"}",
        "autopoiesis_sessions",
        "autopoiesis_turns_running",
        "autopoiesis_turns_queued",
        "autopoiesis_turn_duration_seconds_count",
        "autopoiesis_tokens_total",
        "autopoiesis_websocket_messages_received_total",
        "autopoiesis_journal_bytes",
        "autopoiesis_journal_fsync_seconds_count",
        "autopoiesis_loop_iteration_seconds_count",
        "autopoiesis_loop_iteration_max_seconds",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        assert!(before.contains_key(family), "missing {family}");
    }
    assert!(before["process_resident_memory_bytes"] > 100_000.0);

    // One REST turn of three tokens: done + 1, tokens + 3, one 200.
    let r = s.post("/api/sessions/m1/chat", r#"{"content":"one two three"}"#);
    assert_eq!(r.status, 200);
    let after = scrape(&s, &[]);
    let d = |k: &str| delta(&before, &after, k);
    assert_eq!(d("autopoiesis_turns_total{outcome=\"done\"}"), 1.0);
    assert_eq!(d("autopoiesis_turns_total{outcome=\"error\"}"), 0.0);
    assert_eq!(d("autopoiesis_tokens_total"), 3.0);
    assert_eq!(d("autopoiesis_sessions"), 1.0);
    assert_eq!(d("autopoiesis_turn_duration_seconds_count"), 1.0);
    assert_eq!(
        d("autopoiesis_http_requests_total{route=\"/api/sessions/{id}/chat\",status=\"200\"}"),
        1.0
    );
    // The first scrape is counted once it has been answered.
    assert_eq!(
        d("autopoiesis_http_requests_total{route=\"/metrics\",status=\"200\"}"),
        1.0
    );

    // Two WebSocket clients and one event stream watch a cancelled turn.
    let before = scrape(&s, &[]);
    let mut a = s.ws("/api/ws/m2");
    let mut b = s.ws("/api/ws/m2");
    let mut sse = s.connect();
    sse.write_all(&raw_request("GET", "/api/sessions/m2/events", None, &[]))
        .unwrap();
    let mut sse = BufReader::new(sse);
    let mut line = String::new();
    while line != "\r\n" {
        line.clear();
        sse.read_line(&mut line).unwrap();
    }
    let during = scrape(&s, &[]);
    assert_eq!(during["autopoiesis_connections{kind=\"websocket\"}"], 2.0);
    assert_eq!(during["autopoiesis_connections{kind=\"sse\"}"], 1.0);
    let words = "w ".repeat(200);
    send_json(&mut a, json!({"op": "message", "data": {"content": words}}));
    assert_eq!(next_json(&mut a)["op"], "token");
    let running = scrape(&s, &[]);
    assert_eq!(running["autopoiesis_turns_running"], 1.0);
    send_json(
        &mut a,
        json!({"op": "message", "data": {"content": "queued"}}),
    );
    send_json(&mut a, json!({"op": "cancel"}));
    // Wait until both turns are reported cancelled to a client.
    let mut cancelled = 0;
    while cancelled < 2 {
        let f = next_json(&mut b);
        if f["op"] == "error" && f["data"]["code"] == "cancelled" {
            cancelled += 1;
        }
    }
    let after = scrape(&s, &[]);
    let d = |k: &str| delta(&before, &after, k);
    assert_eq!(d("autopoiesis_turns_total{outcome=\"cancelled\"}"), 2.0);
    assert_eq!(after["autopoiesis_turns_running"], 0.0);
    assert_eq!(after["autopoiesis_turns_queued"], 0.0);
    assert_eq!(d("autopoiesis_websocket_messages_received_total"), 3.0);
    // Every broadcast event went to three clients: two WebSockets, one stream.
    let events = d("autopoiesis_tokens_total") + 2.0; // tokens + two `cancelled`
    assert_eq!(
        d("autopoiesis_events_sent_total{transport=\"websocket\"}"),
        2.0 * events
    );
    assert_eq!(
        d("autopoiesis_events_sent_total{transport=\"sse\"}"),
        events
    );
    assert_eq!(
        d("autopoiesis_http_requests_total{route=\"/api/ws/{id}\",status=\"101\"}"),
        2.0
    );
    assert_eq!(
        d("autopoiesis_http_requests_total{route=\"/api/sessions/{id}/events\",status=\"200\"}"),
        1.0
    );

    // A message over the limit closes its client: too_big + 1.
    let before = scrape(&s, &[]);
    let big = "x".repeat(2 * 1024 * 1024);
    let _ = a.send(Message::text(big));
    assert_eq!(close_code(&mut a), 1009);
    let after = scrape(&s, &[]);
    assert_eq!(
        delta(
            &before,
            &after,
            "autopoiesis_clients_closed_total{reason=\"too_big\"}"
        ),
        1.0
    );
    assert_eq!(
        delta(
            &before,
            &after,
            "autopoiesis_http_requests_total{route=\"other\",status=\"404\"}"
        ),
        0.0
    );
    assert_eq!(s.get("/nope").status, 404);
    let last = scrape(&s, &[]);
    assert_eq!(
        delta(
            &after,
            &last,
            "autopoiesis_http_requests_total{route=\"other\",status=\"404\"}"
        ),
        1.0
    );
}

#[test]
fn metrics_need_the_key_unless_public() {
    let env = [("AUTOPOIESIS_API_KEY", "m3tr1cs")];
    let s = Server::start_with_env(&[], &env);
    assert_eq!(s.get("/metrics").status, 401);
    scrape(&s, &[("Authorization", "Bearer m3tr1cs")]);
    scrape(&s, &[("X-API-Key", "m3tr1cs")]);
    let public = Server::start_with_env(&["--metrics-public"], &env);
    scrape(&public, &[]);
    assert_eq!(public.get("/api/sessions").status, 401);
    let r = s.request("POST", "/metrics", None, &[]);
    assert_eq!((r.status, r.header("allow")), (405, Some("GET")));
}

#[test]
fn the_journal_reports_its_size_and_fsyncs() {
    let dir = temp_dir("ops-journal");
    let s = Server::start(&["--data-dir", dir.to_str().unwrap()]);
    assert_eq!(
        s.post("/api/chat", r#"{"content":"persist me"}"#).status,
        200
    );
    let m = scrape(&s, &[]);
    let size = std::fs::metadata(dir.join("journal")).unwrap().len() as f64;
    assert_eq!(m["autopoiesis_journal_bytes"], size);
    assert!(m["autopoiesis_journal_fsync_seconds_count"] >= 1.0);
}

/// Starts the server with stderr captured; returns it and the stderr reader.
fn start_logging(args: &[&str], env: &[(&str, &str)]) -> (std::process::Child, u16) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_autopoiesis"));
    cmd.args(["serve", "--port", "0", "--in-memory"])
        .args(args)
        .env_remove("AUTOPOIESIS_API_KEY")
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    spawn_listening(&mut cmd)
}

/// SIGTERM, then everything the server wrote on stderr; it must exit 0.
fn stop_and_read_log(child: &mut std::process::Child) -> String {
    signal(child, libc::SIGTERM);
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(child.wait().unwrap().success());
    log
}

fn get_raw(port: u16, request: &str) -> u16 {
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    c.write_all(request.as_bytes()).unwrap();
    read_response(&mut c).expect("a response").status
}

#[test]
fn access_log_lines_never_hold_the_key_a_query_or_a_body() {
    let key = "k3y-that-must-not-leak";
    let (mut child, port) = start_logging(&["--access-log"], &[("AUTOPOIESIS_API_KEY", key)]);
    let body = r#"{"content":"secret body text"}"#;
    let chat = format!(
        "POST /api/sessions/a1/chat?token=query-secret HTTP/1.1\r\nHost: t\r\nX-API-Key: {key}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    assert_eq!(get_raw(port, &chat), 200);
    let bearer = format!(
        "GET /api/sessions HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(get_raw(port, &bearer), 200);
    assert_eq!(
        get_raw(
            port,
            "GET /api/sessions HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        ),
        401
    );
    assert_eq!(get_raw(port, "BREW / HTTP/1.1\r\nHost: t\r\n\r\n"), 405);
    let log = stop_and_read_log(&mut child);
    let access: Vec<&str> = log.lines().filter(|l| l.contains(" access ")).collect();
    assert_eq!(access.len(), 4, "{log}");
    assert!(
        access[0].contains(" POST /api/sessions/a1/chat 200 "),
        "{}",
        access[0]
    );
    assert!(access[0].starts_with("autopoiesis: access 127.0.0.1:"));
    assert!(access[0].ends_with("us"));
    assert!(access[1].contains(" GET /api/sessions 200 "));
    assert!(access[2].contains(" GET /api/sessions 401 "));
    assert!(access[3].contains(" BREW / 405 "));
    for leak in [key, "query-secret", "token=", "secret body text"] {
        assert!(!log.contains(leak), "the log holds {leak:?}:\n{log}");
    }
}

#[test]
fn json_log_format_makes_every_line_an_object() {
    let (mut child, port) = start_logging(&["--access-log", "--log-format", "json"], &[]);
    assert_eq!(
        get_raw(
            port,
            "GET /api/health?x=1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        ),
        200
    );
    let log = stop_and_read_log(&mut child);
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    assert!(lines.len() >= 3, "{log}");
    for l in &lines {
        assert!(l["ts"].as_str().unwrap().ends_with('Z'));
        assert!(l["level"].is_string() && l["msg"].is_string());
    }
    let access = lines
        .iter()
        .find(|l| l["msg"] == "access")
        .expect("an access line");
    assert_eq!(access["method"], "GET");
    assert_eq!(access["path"], "/api/health");
    assert_eq!(access["status"], 200);
    assert!(access["bytes"].as_u64().unwrap() > 0);
    assert!(access["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(lines.iter().any(|l| l["msg"] == "shutting down"));
}

#[test]
fn systemd_readiness_and_stopping_over_notify_socket() {
    let dir = temp_dir("notify");
    let path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let (child, port) = start_logging(&[], &[("NOTIFY_SOCKET", path.to_str().unwrap())]);
    let mut buf = [0u8; 64];
    let n = sock.recv(&mut buf).expect("READY=1");
    assert_eq!(&buf[..n], b"READY=1");
    // Ready means serving.
    assert_eq!(
        get_raw(
            port,
            "GET /api/health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        ),
        200
    );
    signal(&child, libc::SIGTERM);
    let n = sock.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
    let mut child = child;
    assert!(child.wait().unwrap().success());
}

#[test]
fn socket_activation_serves_the_passed_socket() {
    let activate = "/usr/bin/systemd-socket-activate";
    assert!(
        std::path::Path::new(activate).exists(),
        "{activate} is missing (Debian package systemd)"
    );
    // A free port, released for systemd-socket-activate to bind.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = Command::new(activate)
        .args(["-l", &format!("127.0.0.1:{port}")])
        .arg(env!("CARGO_BIN_EXE_autopoiesis"))
        // --port 1 would fail to bind as non-root: proof it is not bound.
        .args(["serve", "--in-memory", "--port", "1"])
        .env_remove("AUTOPOIESIS_API_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start systemd-socket-activate");
    // It prints "Listening on …" once bound; then the first connection
    // starts the server with the socket as fd 3.
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("Listening on") {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "activator exited");
    }
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    c.write_all(b"GET /api/health HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let r = read_response(&mut c).expect("a response");
    assert_eq!(r.status, 200);
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut listening = String::new();
    out.read_line(&mut listening).unwrap();
    assert_eq!(
        listening.trim(),
        format!("listening on http://127.0.0.1:{port}")
    );
    // A second connection is served by the same process.
    let mut c2 = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c2.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    c2.write_all(b"GET /api/health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut c2).unwrap().status, 200);
    signal(&child, libc::SIGTERM);
    assert!(child.wait().unwrap().success());
}

#[test]
fn wrong_method_on_the_websocket_path_is_405() {
    let s = Server::start(&[]);
    for method in ["POST", "DELETE", "PUT"] {
        let r = s.request(method, "/api/ws/abc", None, &[]);
        assert_eq!(
            (r.status, r.json(), r.header("allow")),
            (405, json!({"detail": "Method Not Allowed"}), Some("GET")),
            "{method}"
        );
    }
    // A plain GET without Upgrade stays 404, as in FastAPI.
    assert_eq!(s.get("/api/ws/abc").status, 404);
}
