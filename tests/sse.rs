//! Server-Sent Events (`GET /api/sessions/{id}/events`) and the
//! session-routed chat (`POST /api/sessions/{id}/chat`), against the real
//! binary over real sockets: framing, the same bytes as the WebSocket
//! frames, resume with `Last-Event-ID` and `?since=`, `resync`, keep-alive
//! comments, a reader that never reads, auth and origin, and the end of a
//! stream (delete, shutdown).

mod common;
use common::*;

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Instant;
use tungstenite::Message;

/// One SSE block: its `id:`, `event:` and `data:` fields, or a comment.
#[derive(Debug, PartialEq, Eq)]
struct Block {
    id: Option<u64>,
    event: Option<String>,
    data: Option<String>,
    comment: Option<String>,
}

/// An event-stream client over a blocking socket.
struct Sse {
    reader: BufReader<TcpStream>,
    status: u16,
    headers: Vec<(String, String)>,
}

impl Sse {
    fn open(s: &Server, path: &str, headers: &[(&str, &str)]) -> Sse {
        let mut c = s.connect();
        c.write_all(&raw_request("GET", path, None, headers))
            .unwrap();
        let mut reader = BufReader::new(c);
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut line = Vec::new();
            let n = read_line(&mut reader, &mut line);
            assert!(
                n > 0,
                "EOF in the head: {:?}",
                String::from_utf8_lossy(&head)
            );
            head.extend_from_slice(&line);
        }
        let (status_line, headers) = split_head(&head);
        let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
        Sse {
            reader,
            status,
            headers,
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The next block (event or comment); None at the end of the stream.
    fn next_block(&mut self) -> Option<Block> {
        let mut block = Block {
            id: None,
            event: None,
            data: None,
            comment: None,
        };
        let mut any = false;
        loop {
            let mut line = Vec::new();
            if read_line(&mut self.reader, &mut line) == 0 {
                assert!(!any, "the stream ended inside an event");
                return None;
            }
            let line = String::from_utf8(line).expect("UTF-8 stream");
            let line = line.strip_suffix('\n').expect("a whole line");
            if line.is_empty() {
                if any {
                    return Some(block);
                }
                continue;
            }
            any = true;
            if let Some(c) = line.strip_prefix(':') {
                block.comment = Some(c.trim().to_owned());
            } else if let Some(v) = line.strip_prefix("id: ") {
                block.id = Some(v.parse().expect("numeric id"));
            } else if let Some(v) = line.strip_prefix("event: ") {
                block.event = Some(v.to_owned());
            } else if let Some(v) = line.strip_prefix("data: ") {
                assert!(block.data.is_none(), "one data line per event");
                block.data = Some(v.to_owned());
            } else {
                panic!("unexpected line {line:?}");
            }
        }
    }

    /// The next event, skipping comments; panics at the end of the stream.
    fn next_event(&mut self) -> Block {
        loop {
            let b = self.next_block().expect("an event");
            if b.comment.is_none() {
                return b;
            }
        }
    }

    /// Events up to and including the next `done`.
    fn until_done(&mut self) -> Vec<Block> {
        let mut out = Vec::new();
        loop {
            let b = self.next_event();
            let done = b.event.as_deref() == Some("done");
            out.push(b);
            if done {
                return out;
            }
        }
    }

    /// True when the server ends the stream (EOF or reset) before `limit`
    /// more blocks.
    fn ends_within(&mut self, limit: usize) -> bool {
        for _ in 0..limit {
            let mut line = Vec::new();
            if read_line(&mut self.reader, &mut line) == 0 {
                return true;
            }
        }
        false
    }
}

/// `read_until(b'\n')`, retried on EINTR; a reset counts as the end.
fn read_line(r: &mut BufReader<TcpStream>, out: &mut Vec<u8>) -> usize {
    loop {
        match r.read_until(b'\n', out) {
            Ok(n) => return n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return 0,
            Err(e) => panic!("reading the stream: {e}"),
        }
    }
}

fn data_json(b: &Block) -> Value {
    serde_json::from_str(b.data.as_deref().expect("data")).expect("JSON data")
}

/// Sends a routed chat on a new connection without waiting for its answer.
fn start_chat(s: &Server, id: &str, content: &str) -> TcpStream {
    let mut c = s.connect();
    send_routed_chat(&mut c, id, content);
    c
}

fn create(s: &Server, id: &str) {
    let r = s.post(&format!("/api/sessions/{id}/chat"), r#"{"content":"hi"}"#);
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
}

#[test]
fn routed_chat_over_the_wire() {
    let s = Server::start(&[]);
    let r = s.post(
        "/api/sessions/room-7/chat",
        r#"{"content":"hello big world"}"#,
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        json!({"session_id": "room-7", "content": "hello big world"})
    );
    let history = s.get("/api/sessions/room-7/history").json();
    assert_eq!(history["messages"].as_array().unwrap().len(), 2);
    // The same errors as POST /api/chat.
    let r = s.post("/api/sessions/room-7/chat", r#"{"content": null}"#);
    assert_eq!(r.status, 422);
    assert_eq!(r.json()["detail"][0]["type"], "string_type");
    assert_eq!(
        s.post("/api/sessions/../chat", r#"{"content":"x"}"#).status,
        400
    );
    let r = s.get("/api/sessions/room-7/chat");
    assert_eq!((r.status, r.header("allow")), (405, Some("POST")));
    let r = s.post("/api/chat", r#"{"content":"x","session_id":".."}"#);
    assert_eq!(r.status, 400);
}

#[test]
fn streams_events_live_with_the_websocket_bytes() {
    let s = Server::start(&["--echo-delay-ms", "5"]);
    create(&s, "live");
    let mut sse = Sse::open(&s, "/api/sessions/live/events", &[]);
    assert_eq!(sse.status, 200);
    assert_eq!(sse.header("content-type"), Some("text/event-stream"));
    assert_eq!(sse.header("cache-control"), Some("no-cache"));
    assert_eq!(sse.header("x-accel-buffering"), Some("no"));
    let mut ws = s.ws("/api/ws/live");

    let mut chat = start_chat(&s, "live", "one two three");
    let events = sse.until_done();
    let frames = until_done_texts(&mut ws);
    assert_eq!(events.len(), 4);
    assert_eq!(frames.len(), 4);
    for (e, f) in events.iter().zip(&frames) {
        // `data` is exactly the WebSocket frame's text.
        assert_eq!(e.data.as_deref(), Some(f.as_str()));
        let v = data_json(e);
        assert_eq!(e.id, v["seq"].as_u64());
        assert_eq!(e.event.as_deref(), v["op"].as_str());
    }
    // The first turn ("hi") used seq 1..=2.
    let ids: Vec<u64> = events.iter().map(|e| e.id.unwrap()).collect();
    assert_eq!(ids, [3, 4, 5, 6]);
    let tokens: String = events[..3]
        .iter()
        .map(|e| data_json(e)["data"]["content"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(tokens, "one two three");
    let r = read_response(&mut chat).unwrap();
    assert_eq!(r.json()["content"], "one two three");
}

fn until_done_texts(ws: &mut Ws) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        match read_frame(ws).expect("a frame") {
            Message::Text(t) => {
                let done = t.as_str().contains(r#""op":"done""#);
                out.push(t.as_str().to_owned());
                if done {
                    return out;
                }
            }
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn resumes_after_a_dropped_connection_with_no_gap_and_no_duplicate() {
    let s = Server::start(&["--echo-delay-ms", "10"]);
    create(&s, "r");
    let words: Vec<String> = (0..40).map(|i| format!("w{i}")).collect();
    let message = words.join(" ");

    for resume in ["last-event-id", "since"] {
        let mut first = Sse::open(&s, "/api/sessions/r/events", &[]);
        let mut chat = start_chat(&s, "r", &message);
        let mut seen: Vec<Block> = (0..5).map(|_| first.next_event()).collect();
        let last = seen.last().unwrap().id.unwrap();
        drop(first); // the connection drops mid-reply; the turn goes on
        let mut again = match resume {
            "last-event-id" => Sse::open(
                &s,
                "/api/sessions/r/events",
                &[("Last-Event-ID", &last.to_string())],
            ),
            _ => Sse::open(&s, &format!("/api/sessions/r/events?since={last}"), &[]),
        };
        seen.extend(again.until_done());
        let ids: Vec<u64> = seen.iter().map(|e| e.id.unwrap()).collect();
        let first_id = ids[0];
        assert_eq!(
            ids,
            (first_id..first_id + ids.len() as u64).collect::<Vec<_>>(),
            "{resume}: consecutive ids, no gap, no duplicate"
        );
        let streamed: String = seen[..seen.len() - 1]
            .iter()
            .map(|e| data_json(e)["data"]["content"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(streamed, message, "{resume}");
        assert_eq!(read_response(&mut chat).unwrap().status, 200);
    }
}

#[test]
fn resync_when_the_events_are_gone_or_never_were() {
    let s = Server::start(&["--retain-events", "2"]);
    create(&s, "gone"); // seq 1, 2
    assert_eq!(
        s.post("/api/sessions/gone/chat", r#"{"content":"a b c"}"#)
            .status,
        200
    ); // seq 3..=6; only 5 and 6 are retained
    for since in ["1", "99"] {
        let mut sse = Sse::open(&s, &format!("/api/sessions/gone/events?since={since}"), &[]);
        let b = sse.next_event();
        assert_eq!(b.id, None, "resync carries no id");
        assert_eq!(b.event.as_deref(), Some("resync"));
        assert_eq!(
            data_json(&b),
            json!({"op": "resync", "data": {"since": since.parse::<u64>().unwrap()}})
        );
        // Live events follow.
        let mut chat = start_chat(&s, "gone", "x");
        let next = sse.next_event();
        assert_eq!(next.event.as_deref(), Some("token"));
        read_response(&mut chat).unwrap();
    }
    // Retained: replayed, then live.
    let mut sse = Sse::open(&s, "/api/sessions/gone/events?since=9", &[]);
    let b = sse.next_event();
    assert_eq!((b.id, b.event.as_deref()), (Some(10), Some("done")));
}

#[test]
fn keep_alive_comments_while_idle() {
    let s = Server::start(&["--ws-ping-interval", "1"]);
    create(&s, "quiet");
    let mut sse = Sse::open(&s, "/api/sessions/quiet/events", &[]);
    let b = sse.next_block().expect("a keep-alive");
    assert_eq!(b.comment.as_deref(), Some("keep-alive"));
    assert_eq!((b.id, b.event, b.data), (None, None, None));
}

#[test]
fn a_reader_that_never_reads_is_disconnected_and_others_get_everything() {
    let s = Server::start(&[]);
    create(&s, "flood");
    let stuck = s.connect();
    let mut stuck_writer = stuck.try_clone().unwrap();
    stuck_writer
        .write_all(&raw_request("GET", "/api/sessions/flood/events", None, &[]))
        .unwrap();
    let mut reader = Sse::open(&s, "/api/sessions/flood/events", &[]);
    // Both streams are subscribed once the reader sees this turn.
    let mut chat = start_chat(&s, "flood", "ready");
    reader.until_done();
    read_response(&mut chat).unwrap();

    // Two turns of 1 MiB of short words: about 26 MB of events each, far
    // more than the kernel buffers between the server and the stuck client.
    let words = "ab ".repeat(349_000);
    for _ in 0..2 {
        let mut chat = start_chat(&s, "flood", &words);
        let events = reader.until_done();
        assert_eq!(events.len(), 349_001, "the reading client got every token");
        assert_eq!(read_response(&mut chat).unwrap().status, 200);
    }
    // The stuck reader was cut off: its stream ends without the `done` of
    // either flood turn (only the first turn's).
    let mut stuck_reader = BufReader::new(stuck);
    let (mut events, mut dones) = (0, 0);
    let mut line = Vec::new();
    while read_line(&mut stuck_reader, &mut line) > 0 {
        events += usize::from(line.starts_with(b"event: "));
        dones += usize::from(line.starts_with(b"event: done"));
        line.clear();
    }
    eprintln!("the stuck reader got {events} events before it was cut off");
    assert_eq!(dones, 1, "the stuck reader was not cut off");
}

#[test]
fn unknown_sessions_auth_and_origin() {
    let s = Server::start(&[]);
    let sse = Sse::open(&s, "/api/sessions/nobody/events", &[]);
    assert_eq!(sse.status, 404);
    assert_eq!(
        s.get("/api/sessions").json(),
        json!([]),
        "it does not create"
    );
    create(&s, "x");
    let cross = Sse::open(
        &s,
        "/api/sessions/x/events",
        &[("Origin", "http://evil.example")],
    );
    assert_eq!(cross.status, 403);
    let bad = Sse::open(&s, "/api/sessions/x/events?since=-1", &[]);
    assert_eq!(bad.status, 400);
    let bad = Sse::open(&s, "/api/sessions/x/events", &[("Last-Event-ID", "abc")]);
    assert_eq!(bad.status, 400);

    let keyed = Server::start_with_env(&[], &[("AUTOPOIESIS_API_KEY", "k3y")]);
    let r = keyed.request(
        "POST",
        "/api/sessions/y/chat",
        Some(r#"{"content":"hi"}"#),
        &[("Authorization", "Bearer k3y")],
    );
    assert_eq!(r.status, 200);
    assert_eq!(Sse::open(&keyed, "/api/sessions/y/events", &[]).status, 401);
    let wrong = Sse::open(
        &keyed,
        "/api/sessions/y/events",
        &[("Authorization", "Bearer nope")],
    );
    assert_eq!(wrong.status, 401);
    for header in [("Authorization", "Bearer k3y"), ("X-API-Key", "k3y")] {
        let ok = Sse::open(&keyed, "/api/sessions/y/events?since=0", &[header]);
        assert_eq!(ok.status, 200, "{header:?}");
    }
}

#[test]
fn a_stream_ends_when_its_session_is_deleted_or_the_server_stops() {
    let mut s = Server::start(&[]);
    create(&s, "doomed");
    create(&s, "kept");
    let mut doomed = Sse::open(&s, "/api/sessions/doomed/events", &[]);
    let mut kept = Sse::open(&s, "/api/sessions/kept/events", &[]);
    let r = s.request("DELETE", "/api/sessions/doomed", None, &[]);
    assert_eq!(r.status, 204);
    assert!(doomed.ends_within(1), "the deleted session's stream ends");
    let started = Instant::now();
    let status = s.terminate();
    assert!(status.success(), "{status:?}");
    assert!(kept.ends_within(1), "shutdown ends the stream");
    assert!(started.elapsed() < IO_TIMEOUT);
}

#[test]
fn an_event_stream_costs_no_more_than_an_idle_websocket() {
    // 2n client sockets in this process: under the default 1024 files.
    let n = 400;
    let s = Server::start(&[]);
    let pid = s.child.id();
    create(&s, "m");
    // Warm up both kinds once, so allocator growth is not counted.
    let warm_sse = Sse::open(&s, "/api/sessions/m/events", &[]);
    let warm_ws = s.ws("/api/ws/m");
    let base = rss_kib(pid);
    let mut streams: Vec<Sse> = (0..n)
        .map(|_| Sse::open(&s, "/api/sessions/m/events", &[]))
        .collect();
    let with_sse = rss_kib(pid);
    let mut sockets: Vec<Ws> = (0..n).map(|_| s.ws("/api/ws/m")).collect();
    let with_ws = rss_kib(pid);
    let per_sse = (with_sse.saturating_sub(base)) * 1024 / n as u64;
    let per_ws = (with_ws.saturating_sub(with_sse)) * 1024 / n as u64;
    eprintln!("{n} clients: {per_sse} B per event stream, {per_ws} B per idle WebSocket");
    assert!(
        per_sse <= per_ws,
        "an event stream holds {per_sse} B, an idle WebSocket {per_ws} B"
    );
    // Every one of them is subscribed: a turn reaches the last of each kind.
    assert_eq!(
        s.post("/api/sessions/m/chat", r#"{"content":"all"}"#)
            .status,
        200
    );
    let last = streams.last_mut().unwrap().until_done();
    assert_eq!(data_json(last.last().unwrap())["data"]["content"], "all");
    let last = until_done_texts(sockets.last_mut().unwrap());
    assert!(last.last().unwrap().contains(r#""content":"all""#));
    drop((warm_sse, warm_ws));
}

#[test]
fn a_client_that_writes_on_its_stream_is_closed() {
    let s = Server::start(&[]);
    create(&s, "talk");
    let mut talker = Sse::open(&s, "/api/sessions/talk/events", &[]);
    assert_eq!(talker.status, 200);
    let mut writer = talker.reader.get_ref().try_clone().unwrap();
    // A stream client has nothing to say; past 64 KiB the server hangs up.
    let junk = vec![b'x'; 16 * 1024];
    let mut sent = 0;
    while sent < 1024 * 1024 {
        if writer.write_all(&junk).is_err() {
            break; // already closed
        }
        sent += junk.len();
    }
    assert!(talker.ends_within(8), "the stream was not closed");
    // The others are served all along.
    assert_eq!(s.get("/api/health").status, 200);
    let mut quiet = Sse::open(&s, "/api/sessions/talk/events", &[]);
    let mut chat = start_chat(&s, "talk", "still here");
    assert_eq!(quiet.until_done().len(), 3);
    read_response(&mut chat).unwrap();
}
