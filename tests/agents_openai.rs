//! The `openai` agent against the real binary: each test runs a small fake
//! OpenAI-compatible server on a loopback port (one scripted behaviour per
//! accepted connection), points `--openai-base-url` at it, and checks what
//! the upstream received and what the clients of the session see.

mod common;
use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};
use tungstenite::Message;

// ---------------------------------------------------------------------------
// The fake upstream
// ---------------------------------------------------------------------------

/// One request as the fake upstream received it.
#[derive(Clone, Debug)]
struct Captured {
    request_line: String,
    headers: Vec<(String, String)>,
    body: Value,
}

impl Captured {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The parts of the body the contract fixes.
    fn essentials(&self) -> Value {
        json!({
            "model": self.body["model"],
            "stream": self.body["stream"],
            "messages": self.body["messages"],
        })
    }
}

/// What the fake upstream does on one accepted connection, after it has
/// read (and reported) the request.
type Behaviour = Box<dyn FnOnce(&mut TcpStream) + Send>;

struct FakeUpstream {
    port: u16,
    requests: mpsc::Receiver<Captured>,
    thread: Option<JoinHandle<()>>,
}

impl FakeUpstream {
    /// Serves `behaviours.len()` connections, in order, one behaviour each.
    fn start(behaviours: Vec<Behaviour>) -> FakeUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake upstream");
        let port = listener.local_addr().unwrap().port();
        let (tx, requests) = mpsc::channel();
        let thread = thread::spawn(move || {
            for behaviour in behaviours {
                let (mut conn, _) = listener.accept().expect("upstream: accept");
                conn.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                conn.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
                conn.set_nodelay(true).unwrap();
                let req = read_request(&mut conn);
                // The test may have stopped listening: that is its failure to report.
                let _ = tx.send(req);
                behaviour(&mut conn);
            }
        });
        FakeUpstream {
            port,
            requests,
            thread: Some(thread),
        }
    }

    fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    /// The next request the upstream received (bounded wait).
    fn next_request(&mut self) -> Captured {
        match self.requests.recv_timeout(IO_TIMEOUT) {
            Ok(r) => r,
            Err(e) => {
                // A panic in the upstream thread disconnects the channel:
                // surface it rather than a bare "disconnected".
                if let Some(t) = self.thread.take().filter(|t| t.is_finished()) {
                    if let Err(p) = t.join() {
                        std::panic::resume_unwind(p);
                    }
                }
                panic!("the fake upstream received no request: {e}")
            }
        }
    }

    /// Waits for the upstream thread (every behaviour has run; each of them
    /// bounds its own waits) and re-raises its panic, if any.
    fn finish(mut self) {
        if let Some(t) = self.thread.take() {
            if let Err(p) = t.join() {
                std::panic::resume_unwind(p);
            }
        }
    }
}

fn read_request(conn: &mut TcpStream) -> Captured {
    let mut r = NoEintr(conn);
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = r.read(&mut byte).expect("upstream: read the request head");
        assert_eq!(
            n,
            1,
            "upstream: EOF inside the request head {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
        assert!(head.len() < 64 * 1024, "upstream: request head too long");
    }
    let (request_line, headers) = split_head(&head);
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse().expect("numeric Content-Length"))
        .expect("the request has a Content-Length");
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)
        .expect("upstream: read the request body");
    let body = serde_json::from_slice(&body).expect("the request body is JSON");
    Captured {
        request_line,
        headers,
        body,
    }
}

// ---------------------------------------------------------------------------
// Building responses
// ---------------------------------------------------------------------------

/// One SSE event carrying `chunk` as its data, `\n` line endings.
fn sse(chunk: Value) -> String {
    format!("data: {chunk}\n\n")
}

/// A `chat.completion.chunk` with one choice holding `delta`.
fn delta(delta: Value) -> Value {
    json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": null}],
    })
}

fn content(text: &str) -> String {
    sse(delta(json!({"content": text})))
}

const DONE: &str = "data: [DONE]\n\n";

/// A 200 event-stream head announcing chunked framing.
const CHUNKED_HEAD: &str = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
                            Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n";

/// `body` as chunked encoding, cut at every position of `cuts` (sorted,
/// inside the body), with the terminating chunk and an empty trailer.
/// Chunk sizes alternate between lower- and upper-case hex, and the second
/// chunk carries an extension, as HTTP/1.1 allows.
fn chunked_at(body: &[u8], cuts: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, &end) in cuts.iter().chain(std::iter::once(&body.len())).enumerate() {
        if end <= start {
            continue;
        }
        let size = end - start;
        let line = match i % 3 {
            0 => format!("{size:x}\r\n"),
            1 if i == 1 => format!("{size:X};note=odd\r\n"),
            _ => format!("{size:X}\r\n"),
        };
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(&body[start..end]);
        out.extend_from_slice(b"\r\n");
        start = end;
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// Positions cutting `len` bytes into pieces whose sizes cycle through `sizes`.
fn cycle_cuts(len: usize, sizes: &[usize]) -> Vec<usize> {
    let mut cuts = Vec::new();
    let mut at = 0;
    for size in sizes.iter().cycle() {
        at += size;
        if at >= len {
            break;
        }
        cuts.push(at);
    }
    cuts
}

/// `chunked_at` with all the body in one chunk.
fn chunked(body: &str) -> Vec<u8> {
    chunked_at(body.as_bytes(), &[])
}

/// The chunked framing after the body's last byte.
const CHUNKED_END: &[u8] = b"\r\n0\r\n\r\n";

/// Writes a chunked response (`bytes`) 1 to 7 bytes at a time with a flush
/// after each, and a tiny pause now and then so that some pieces travel as
/// separate TCP segments (never a synchronisation: the test is correct with
/// or without them). Once the body's last byte (the end of `[DONE]`) is out,
/// the server may hang up: writing the rest of the framing may then fail.
fn write_dribbled(conn: &mut TcpStream, bytes: &[u8]) {
    const SIZES: [usize; 8] = [3, 1, 7, 2, 5, 4, 6, 1];
    assert!(bytes.ends_with(CHUNKED_END));
    let body_end = bytes.len() - CHUNKED_END.len();
    let mut at = 0;
    for (i, size) in SIZES.iter().cycle().enumerate() {
        if at >= bytes.len() {
            break;
        }
        let end = (at + size).min(bytes.len());
        if let Err(e) = conn.write_all(&bytes[at..end]) {
            assert!(at >= body_end, "upstream: write at byte {at}: {e}");
            return;
        }
        conn.flush().unwrap();
        at = end;
        if i % 5 == 0 {
            thread::sleep(Duration::from_micros(300));
        }
    }
}

/// Writes the whole response at once, then closes.
fn respond(bytes: impl Into<Vec<u8>>) -> Behaviour {
    let bytes = bytes.into();
    Box::new(move |conn| {
        conn.write_all(&bytes)
            .expect("upstream: write the response")
    })
}

/// As `respond`, but the server may have hung up first (it stops reading
/// once it has seen enough to fail the turn).
fn respond_best_effort(bytes: impl Into<Vec<u8>>) -> Behaviour {
    let bytes = bytes.into();
    Box::new(move |conn| {
        let _ = conn.write_all(&bytes);
    })
}

/// A well-behaved streamed answer: `tokens` as content deltas, chunked.
fn answer(tokens: &[&str]) -> Behaviour {
    let mut body: String = tokens.iter().map(|t| content(t)).collect();
    body.push_str(DONE);
    let mut bytes = CHUNKED_HEAD.as_bytes().to_vec();
    bytes.extend(chunked(&body));
    respond(bytes)
}

/// Sends `bytes`, then keeps the connection open, sending nothing, until
/// the server closes it (or IO_TIMEOUT passes); reports on `seen` whether
/// it saw the close, and how long after the last byte it sent.
fn send_then_hold(bytes: Vec<u8>, seen: mpsc::Sender<Result<Duration, String>>) -> Behaviour {
    Box::new(move |conn| {
        conn.write_all(&bytes).expect("upstream: write");
        let sent_at = Instant::now();
        let mut buf = [0u8; 256];
        let outcome = match NoEintr(conn).read(&mut buf) {
            Ok(0) => Ok(sent_at.elapsed()),
            Ok(n) => Err(format!(
                "the server sent {n} more bytes: {:?}",
                String::from_utf8_lossy(&buf[..n])
            )),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(sent_at.elapsed()),
            Err(e) => Err(format!("the connection stayed open: {e}")),
        };
        let _ = seen.send(outcome);
    })
}

// ---------------------------------------------------------------------------
// Talking to the server
// ---------------------------------------------------------------------------

fn start_server(up: &FakeUpstream, model: &str, extra: &[&str], env: &[(&str, &str)]) -> Server {
    let base = up.base_url();
    let mut args = vec![
        "--agent",
        "openai",
        "--openai-base-url",
        base.as_str(),
        "--model",
        model,
    ];
    args.extend_from_slice(extra);
    // No key unless the test gives one (an empty key counts as none), so the
    // environment running the tests cannot leak into the requests.
    let mut all_env = vec![("OPENAI_API_KEY", "")];
    all_env.extend_from_slice(env);
    Server::start_with_env(&args, &all_env)
}

/// A WebSocket client of `session`, its subscription known to be live
/// (one round trip after the handshake).
fn subscribe(s: &Server, session: &str) -> Ws {
    let mut ws = s.ws(&format!("/api/ws/{session}"));
    send_json(&mut ws, json!({"op": "ping?"}));
    assert_eq!(
        next_json(&mut ws),
        json!({"op": "error", "data": {"message": "Unknown op: ping?"}})
    );
    ws
}

fn chat(s: &Server, session: &str, text: &str) -> HttpResponse {
    s.post(
        "/api/chat",
        &json!({"content": text, "session_id": session}).to_string(),
    )
}

fn message(text: &str) -> Value {
    json!({"op": "message", "data": {"content": text}})
}

fn history(s: &Server, session: &str) -> Vec<Value> {
    let h = s.get(&format!("/api/sessions/{session}/history"));
    assert_eq!(h.status, 200);
    h.json()["messages"].as_array().unwrap().clone()
}

/// Frames until (and including) the first `error`.
fn until_error(ws: &mut Ws) -> Vec<Value> {
    let mut frames = Vec::new();
    loop {
        let f = next_json(ws);
        let end = f["op"] == "error";
        frames.push(f);
        if end {
            return frames;
        }
        assert!(frames.len() < 1000, "no error frame: {frames:?}");
    }
}

fn assert_seq_from(frames: &[Value], first: u64) {
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(f["seq"], first + i as u64, "seq of frame {i}: {frames:#?}");
    }
}

fn detail(r: &HttpResponse) -> String {
    r.json()["detail"]
        .as_str()
        .unwrap_or_else(|| panic!("detail is not a string: {r:?}"))
        .to_owned()
}

// ---------------------------------------------------------------------------
// 1. A streamed answer, cut everywhere
// ---------------------------------------------------------------------------

#[test]
fn chunked_stream_split_at_odd_positions_reaches_ws_rest_and_history() {
    // The SSE body: a role-only delta, reasoning in both spellings, a
    // keep-alive comment, content with a multi-byte character, CRLF line
    // endings in places, a finish chunk, [DONE].
    let body = [
        sse(delta(json!({"role": "assistant", "content": ""}))),
        sse(delta(json!({"reasoning_content": "Let me think"}))).replace("\n\n", "\r\n\r\n"),
        sse(delta(json!({"reasoning": " about it."}))),
        ": keep-alive\r\n\r\n".to_owned(),
        // `event:` and `id:` fields are ignored; the data follows them.
        format!("event: completion\nid: 7\n{}", content("Hello")),
        // One event's data over two `data:` lines (joined by "\n").
        "data: {\"choices\":[{\"index\":0,\r\ndata: \"delta\":{\"content\":\", wörld\"}}]}\r\n\n"
            .to_owned(),
        ": keep-alive\n\n".to_owned(),
        // `data:` without the optional space.
        format!(
            "data:{}\n\n",
            json!({"choices": [{"index": 0, "delta": {"content": "!"}, "finish_reason": "stop"}]})
        ),
        DONE.to_owned(),
    ]
    .concat();
    // Chunk boundaries at odd positions, plus one inside the "ö" (a UTF-8
    // pair) and one between a "\r" and its "\n".
    let mut cuts = cycle_cuts(body.len(), &[13, 1, 29, 7, 64, 3, 17]);
    cuts.push(body.find('ö').unwrap() + 1);
    cuts.push(body.find("\r\n").unwrap() + 1);
    cuts.sort_unstable();
    cuts.dedup();
    let mut wire = CHUNKED_HEAD.as_bytes().to_vec();
    wire.extend(chunked_at(body.as_bytes(), &cuts));

    let behaviour: Behaviour = Box::new(move |conn| write_dribbled(conn, &wire));
    let mut up = FakeUpstream::start(vec![behaviour]);
    let s = start_server(&up, "test-model", &[], &[("OPENAI_API_KEY", "sk-test-123")]);
    let mut ws = subscribe(&s, "odd");

    let r = chat(&s, "odd", "Say hello");
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.json(),
        json!({"session_id": "odd", "content": "Hello, wörld!"})
    );

    let req = up.next_request();
    assert_eq!(req.request_line, "POST /v1/chat/completions HTTP/1.1");
    assert_eq!(req.header("authorization"), Some("Bearer sk-test-123"));
    assert_eq!(req.header("host"), Some(&*format!("127.0.0.1:{}", up.port)));
    assert!(req
        .header("content-type")
        .is_some_and(|v| v.starts_with("application/json")));
    assert_eq!(
        req.essentials(),
        json!({"model": "test-model", "stream": true,
               "messages": [{"role": "user", "content": "Say hello"}]})
    );

    let frames = until_done(&mut ws);
    assert_eq!(
        frames,
        [
            json!({"op": "thinking", "data": {"content": "Let me think"}, "seq": 1}),
            json!({"op": "thinking", "data": {"content": " about it."}, "seq": 2}),
            json!({"op": "thinking_done", "data": {}, "seq": 3}),
            json!({"op": "token", "data": {"content": "Hello"}, "seq": 4}),
            json!({"op": "token", "data": {"content": ", wörld"}, "seq": 5}),
            json!({"op": "token", "data": {"content": "!"}, "seq": 6}),
            json!({"op": "done", "data": {"content": "Hello, wörld!"}, "seq": 7}),
        ]
    );

    let h = history(&s, "odd");
    assert_eq!(h.len(), 2, "{h:#?}");
    assert_eq!(h[0]["kind"], "request");
    assert_eq!(h[0]["parts"][0]["part_kind"], "user-prompt");
    assert_eq!(h[0]["parts"][0]["content"], "Say hello");
    assert_eq!(h[1]["kind"], "response");
    assert_eq!(h[1]["model_name"], "test-model");
    // The reasoning is kept as a thinking part (the contract's rule for a
    // turn without the agent's own `messages`); the next request to the
    // upstream sends only text.
    assert_eq!(
        h[1]["parts"],
        json!([{"part_kind": "thinking", "content": "Let me think about it."}, {"part_kind": "text", "content": "Hello, wörld!"}])
    );
    up.finish();
}

// ---------------------------------------------------------------------------
// 2. History and system prompt on the next turn; sized and until-EOF bodies
// ---------------------------------------------------------------------------

#[test]
fn second_turn_sends_system_prompt_and_history() {
    const SYSTEM: &str = "You are terse. Quote \"exactly\".\nTwo lines.";
    // Turn 1: a Content-Length body.
    let body1 = [
        content("Two plus two"),
        content(" is four."),
        DONE.to_owned(),
    ]
    .concat();
    let sized = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: {}\r\n\r\n{body1}",
        body1.len()
    );
    // Turn 2: no length, no chunking: the body runs to EOF, and its last
    // line ("data: [DONE]", no newline) is only complete at EOF.
    let until_eof = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n{}data: [DONE]",
        content("Eight.")
    );
    let mut up = FakeUpstream::start(vec![respond(sized), respond(until_eof)]);
    // A trailing slash on the base URL is not doubled.
    let base = format!("{}/", up.base_url());
    let s = Server::start_with_env(
        &[
            "--agent",
            "openai",
            "--openai-base-url",
            &base,
            "--model",
            "m2",
            "--system-prompt",
            SYSTEM,
        ],
        &[("OPENAI_API_KEY", "")],
    );

    let mut ws = subscribe(&s, "two");
    send_json(&mut ws, message("What is 2+2?"));
    let first = until_done(&mut ws);
    assert_eq!(
        first,
        [
            json!({"op": "token", "data": {"content": "Two plus two"}, "seq": 1}),
            json!({"op": "token", "data": {"content": " is four."}, "seq": 2}),
            json!({"op": "done", "data": {"content": "Two plus two is four."}, "seq": 3}),
        ]
    );
    let req1 = up.next_request();
    assert_eq!(req1.request_line, "POST /v1/chat/completions HTTP/1.1");
    assert_eq!(req1.header("authorization"), None, "no key, no header");
    assert_eq!(
        req1.essentials(),
        json!({"model": "m2", "stream": true, "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "What is 2+2?"},
        ]})
    );

    let r = chat(&s, "two", "And doubled?");
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["content"], "Eight.");
    let req2 = up.next_request();
    assert_eq!(
        req2.essentials(),
        json!({"model": "m2", "stream": true, "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "Two plus two is four."},
            {"role": "user", "content": "And doubled?"},
        ]})
    );
    // The REST turn streamed to the WebSocket client, seq going on.
    let second = until_done(&mut ws);
    assert_eq!(
        second,
        [
            json!({"op": "token", "data": {"content": "Eight."}, "seq": 4}),
            json!({"op": "done", "data": {"content": "Eight."}, "seq": 5}),
        ]
    );
    let h = history(&s, "two");
    assert_eq!(h.len(), 4);
    assert_eq!(h[3]["parts"][0]["content"], "Eight.");
    assert_eq!(h[3]["model_name"], "m2");
    up.finish();
}

// ---------------------------------------------------------------------------
// 3. Tool calls
// ---------------------------------------------------------------------------

#[test]
fn tool_call_deltas_accumulate_into_tool_call_events() {
    let call = |index: u64, f: Value, id: Option<&str>| {
        let mut c = json!({"index": index, "type": "function", "function": f});
        if let Some(id) = id {
            c["id"] = json!(id);
        }
        c
    };
    let body = [
        // id + name first (two calls, interleaved), arguments after.
        sse(delta(
            json!({"role": "assistant", "content": null, "tool_calls": [
                call(0, json!({"name": "read_file", "arguments": ""}), Some("call_a")),
            ]}),
        )),
        sse(delta(json!({"tool_calls": [
            call(1, json!({"name": "list_dir"}), Some("call_b")),
        ]}))),
        sse(delta(json!({"tool_calls": [
            call(0, json!({"arguments": "{\"path\": \"src/"}), None),
        ]}))),
        sse(delta(json!({"tool_calls": [
            call(1, json!({"arguments": "{\"dir\":\".\"}"}), None),
            call(0, json!({"arguments": "main.rs\"}"}), None),
        ]}))),
        sse(json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})),
        DONE.to_owned(),
    ]
    .concat();
    // Every SSE event in its own chunk, the whole response dribbled.
    let cuts: Vec<usize> = body.match_indices("\n\n").map(|(i, _)| i + 2).collect();
    let mut wire = CHUNKED_HEAD.as_bytes().to_vec();
    wire.extend(chunked_at(body.as_bytes(), &cuts));
    let behaviour: Behaviour = Box::new(move |conn| write_dribbled(conn, &wire));
    let mut up = FakeUpstream::start(vec![behaviour]);
    let s = start_server(&up, "tools", &[], &[]);

    let mut ws = subscribe(&s, "tools");
    send_json(&mut ws, message("look around"));
    let frames = until_done(&mut ws);
    assert_eq!(
        frames,
        [
            json!({"op": "tool_call", "seq": 1, "data": {
                "tool_call_id": "call_a", "name": "read_file", "details": {"path": "src/main.rs"}}}),
            json!({"op": "tool_call", "seq": 2, "data": {
                "tool_call_id": "call_b", "name": "list_dir", "details": {"dir": "."}}}),
            json!({"op": "done", "data": {"content": ""}, "seq": 3}),
        ]
    );
    assert_eq!(
        up.next_request().body["messages"][0]["content"],
        "look around"
    );

    let h = history(&s, "tools");
    assert_eq!(h.len(), 2, "{h:#?}");
    let parts = h[1]["parts"].as_array().unwrap();
    assert_eq!(parts.len(), 2, "{parts:#?}");
    assert_eq!(parts[0]["part_kind"], "tool-call");
    assert_eq!(parts[0]["tool_name"], "read_file");
    assert_eq!(parts[0]["tool_call_id"], "call_a");
    assert_eq!(parts[0]["args"], json!({"path": "src/main.rs"}));
    assert_eq!(parts[1]["tool_call_id"], "call_b");
    up.finish();
}

// ---------------------------------------------------------------------------
// 4. An upstream error status
// ---------------------------------------------------------------------------

#[test]
fn upstream_404_is_a_503_with_the_upstreams_message() {
    let err = r#"{"error":{"message":"model 'x' not found","type":"invalid_request_error","code":"model_not_found"}}"#;
    let not_found = format!(
        "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{err}",
        err.len()
    );
    // A 500 whose plain-text body comes chunked.
    let mut server_error =
        b"HTTP/1.1 500 Internal Server Error\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    server_error.extend(chunked_at(b"overloaded, try later", &[4, 11]));
    let mut up = FakeUpstream::start(vec![respond(not_found), respond(server_error)]);
    let s = start_server(&up, "x", &[], &[]);
    let mut ws = subscribe(&s, "e404");

    let r = chat(&s, "e404", "hi");
    assert_eq!(r.status, 503, "{:?}", String::from_utf8_lossy(&r.body));
    let why = detail(&r);
    assert!(
        why.contains("upstream returned 404") && why.contains("model 'x' not found"),
        "{why}"
    );
    assert_eq!(up.next_request().body["model"], "x");
    assert_eq!(
        next_json(&mut ws),
        json!({"op": "error", "data": {"message": why}, "seq": 1})
    );

    let r = chat(&s, "e404", "again");
    assert_eq!(r.status, 503);
    assert_eq!(detail(&r), "upstream returned 500: overloaded, try later");
    up.next_request();
    let f = next_json(&mut ws);
    assert_eq!(
        (&f["op"], &f["data"]["message"], &f["seq"]),
        (
            &json!("error"),
            &json!("upstream returned 500: overloaded, try later"),
            &json!(2)
        )
    );
    up.finish();
}

// ---------------------------------------------------------------------------
// 5. A stalled upstream, then a good one
// ---------------------------------------------------------------------------

#[test]
fn stalled_upstream_times_out_and_the_session_recovers() {
    let (seen_tx, seen) = mpsc::channel();
    let mut partial = CHUNKED_HEAD.as_bytes().to_vec();
    let first = content("partial");
    partial.extend(format!("{:x}\r\n{first}\r\n", first.len()).as_bytes());
    let mut up = FakeUpstream::start(vec![
        send_then_hold(partial, seen_tx),
        answer(&["back ", "again"]),
    ]);
    let s = start_server(&up, "slow", &["--upstream-timeout", "1"], &[]);
    let mut ws = subscribe(&s, "stall");

    let started = Instant::now();
    let r = chat(&s, "stall", "are you there?");
    let took = started.elapsed();
    assert_eq!(r.status, 503, "{:?}", String::from_utf8_lossy(&r.body));
    let why = detail(&r);
    assert!(why.contains("sent nothing"), "{why}");
    assert!(
        took >= Duration::from_millis(900),
        "timed out after only {took:?}"
    );
    up.next_request();
    let frames = until_error(&mut ws);
    assert_eq!(
        frames,
        [
            json!({"op": "token", "data": {"content": "partial"}, "seq": 1}),
            json!({"op": "error", "data": {"message": why}, "seq": 2}),
        ]
    );
    // The server hung up on the stalled upstream.
    let outcome = seen.recv_timeout(IO_TIMEOUT).expect("the upstream reports");
    assert!(outcome.is_ok(), "{outcome:?}");

    // The session goes on with the next turn.
    let r = chat(&s, "stall", "now?");
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["content"], "back again");
    let req = up.next_request();
    let messages = req.body["messages"].as_array().unwrap().clone();
    assert_eq!(
        messages.last().unwrap(),
        &json!({"role": "user", "content": "now?"})
    );
    let frames = until_done(&mut ws);
    assert_seq_from(&frames, 3);
    assert_eq!(frames.last().unwrap()["data"]["content"], "back again");
    up.finish();
}

// ---------------------------------------------------------------------------
// 6. Nobody listening
// ---------------------------------------------------------------------------

#[test]
fn connection_refused_is_a_503_saying_so() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let base = format!("http://127.0.0.1:{port}/v1");
    let s = Server::start(&[
        "--agent",
        "openai",
        "--openai-base-url",
        &base,
        "--model",
        "m",
    ]);
    let mut ws = subscribe(&s, "refused");
    let r = chat(&s, "refused", "hello?");
    assert_eq!(r.status, 503, "{:?}", String::from_utf8_lossy(&r.body));
    let why = detail(&r);
    assert!(why.contains("cannot reach the upstream"), "{why}");
    assert_eq!(
        next_json(&mut ws),
        json!({"op": "error", "data": {"message": why}, "seq": 1})
    );
    // Still refused next time, and still answered.
    let r = chat(&s, "refused", "hello again?");
    assert_eq!(r.status, 503);
    assert!(detail(&r).contains("cannot reach the upstream"));
}

// ---------------------------------------------------------------------------
// 7. A malformed stream
// ---------------------------------------------------------------------------

#[test]
fn malformed_stream_chunk_is_a_503() {
    let mut bad = CHUNKED_HEAD.as_bytes().to_vec();
    bad.extend(chunked(
        &[content("fine so far"), "data: {nope\n\n".into()].concat(),
    ));
    // An upstream error object inside the stream also ends the turn.
    let mut in_band = CHUNKED_HEAD.as_bytes().to_vec();
    in_band.extend(chunked(&sse(
        json!({"error": {"message": "overloaded", "type": "server_error"}}),
    )));
    // Broken chunk framing.
    let broken = format!("{CHUNKED_HEAD}zz\r\n{}\r\n", content("x")).into_bytes();
    let mut up = FakeUpstream::start(vec![
        respond_best_effort(bad),
        respond_best_effort(in_band),
        respond_best_effort(broken),
    ]);
    let s = start_server(&up, "m", &[], &[]);
    let mut ws = subscribe(&s, "bad");

    let r = chat(&s, "bad", "one");
    assert_eq!(r.status, 503, "{:?}", String::from_utf8_lossy(&r.body));
    let why = detail(&r);
    assert!(why.contains("malformed"), "{why}");
    up.next_request();
    assert_eq!(
        until_error(&mut ws),
        [
            json!({"op": "token", "data": {"content": "fine so far"}, "seq": 1}),
            json!({"op": "error", "data": {"message": why}, "seq": 2}),
        ]
    );

    let r = chat(&s, "bad", "two");
    assert_eq!(r.status, 503);
    assert_eq!(detail(&r), "upstream error: overloaded");
    up.next_request();

    let r = chat(&s, "bad", "three");
    assert_eq!(r.status, 503);
    assert!(detail(&r).contains("malformed chunked"), "{}", detail(&r));
    up.next_request();
    up.finish();
}

// ---------------------------------------------------------------------------
// 8. A stream that ends without [DONE]
// ---------------------------------------------------------------------------

#[test]
fn stream_ending_without_done_is_a_503() {
    // Until-EOF framing: the body ends cleanly but [DONE] never came.
    let eof = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n{}",
        content("half")
    );
    // Chunked framing cut off before the last chunk.
    let mut cut = CHUNKED_HEAD.as_bytes().to_vec();
    let c = content("half");
    cut.extend(format!("{:x}\r\n{c}\r\n", c.len()).as_bytes());
    // Sized framing whose body ends without [DONE].
    let body = content("half");
    let sized = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut up = FakeUpstream::start(vec![respond(eof), respond(cut), respond(sized)]);
    let s = start_server(&up, "m", &[], &[]);
    let mut ws = subscribe(&s, "short");

    for (turn, expect) in [
        ("a", "upstream stream ended without [DONE]"),
        ("b", "upstream closed the connection mid-stream"),
        ("c", "upstream stream ended without [DONE]"),
    ] {
        let r = chat(&s, "short", turn);
        assert_eq!(r.status, 503, "turn {turn}: {:?}", r);
        assert_eq!(detail(&r), expect, "turn {turn}");
        up.next_request();
        let frames = until_error(&mut ws);
        assert_eq!(frames.len(), 2, "{frames:?}");
        assert_eq!(frames[0]["data"]["content"], "half");
        assert_eq!(frames[1]["data"]["message"], expect);
    }
    up.finish();
}

// ---------------------------------------------------------------------------
// 9. Cancel
// ---------------------------------------------------------------------------

#[test]
fn cancel_closes_the_upstream_and_keeps_the_streamed_tokens() {
    let (seen_tx, seen) = mpsc::channel();
    let mut two_tokens = CHUNKED_HEAD.as_bytes().to_vec();
    two_tokens.extend(chunked_at(
        [content("Once upon"), content(" a time")]
            .concat()
            .as_bytes(),
        &[20],
    ));
    // Not the terminating chunk: the stream stays open.
    two_tokens.truncate(two_tokens.len() - b"0\r\n\r\n".len());
    let mut up = FakeUpstream::start(vec![
        send_then_hold(two_tokens, seen_tx),
        answer(&["The end."]),
    ]);
    let s = start_server(&up, "story", &[], &[]);
    let mut ws = subscribe(&s, "tale");
    let mut other = subscribe(&s, "tale");

    thread::scope(|scope| {
        // A REST caller waits on the turn; the WebSocket client cancels it.
        let rest = scope.spawn(|| chat(&s, "tale", "Tell me a story"));
        let mut frames = Vec::new();
        while frames.len() < 2 {
            frames.push(next_json(&mut ws));
        }
        assert_eq!(
            frames,
            [
                json!({"op": "token", "data": {"content": "Once upon"}, "seq": 1}),
                json!({"op": "token", "data": {"content": " a time"}, "seq": 2}),
            ]
        );
        send_json(&mut ws, json!({"op": "cancel"}));
        let cancelled = next_json(&mut ws);
        assert_eq!(cancelled["op"], "error");
        assert_eq!(cancelled["data"]["code"], "cancelled");
        assert_eq!(cancelled["seq"], 3);
        // Broadcast: the other client sees the same three events.
        let mut seen_by_other = Vec::new();
        while seen_by_other.len() < 3 {
            seen_by_other.push(next_json(&mut other));
        }
        assert_eq!(seen_by_other[..2], frames[..]);
        assert_eq!(seen_by_other[2], cancelled);

        let r = rest.join().expect("the REST caller");
        assert_eq!(r.status, 409, "{:?}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["detail"]["code"], "cancelled");
    });
    up.next_request();

    // The server closed its upstream connection.
    let outcome = seen.recv_timeout(IO_TIMEOUT).expect("the upstream reports");
    assert!(outcome.is_ok(), "{outcome:?}");

    let h = history(&s, "tale");
    assert_eq!(h.len(), 2, "{h:#?}");
    assert_eq!(h[0]["parts"][0]["content"], "Tell me a story");
    assert_eq!(
        h[1]["parts"],
        json!([{"part_kind": "text", "content": "Once upon a time"}])
    );

    // Nothing runs any more; the next turn carries the partial reply.
    send_json(&mut ws, json!({"op": "cancel"}));
    let f = next_json(&mut ws);
    assert_eq!(f["data"]["code"], "not_running", "{f}");
    assert!(f.get("seq").is_none());
    let r = chat(&s, "tale", "Go on");
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["content"], "The end.");
    assert_eq!(
        up.next_request().body["messages"],
        json!([
            {"role": "user", "content": "Tell me a story"},
            {"role": "assistant", "content": "Once upon a time"},
            {"role": "user", "content": "Go on"},
        ])
    );
    up.finish();
}

// ---------------------------------------------------------------------------
// Two sessions at once
// ---------------------------------------------------------------------------

#[test]
fn two_sessions_stream_from_the_upstream_at_the_same_time() {
    // This upstream answers neither request before it has both: it can only
    // finish if the server runs the two sessions' turns concurrently.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let upstream = thread::spawn(move || {
        let mut conns: Vec<(TcpStream, Captured)> = (0..2)
            .map(|_| {
                let (mut c, _) = listener.accept().expect("accept");
                c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                c.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
                let req = read_request(&mut c);
                (c, req)
            })
            .collect();
        // Interleave: a head and a token to each, then the rest, in reverse.
        for (c, req) in &mut conns {
            let prompt = req.body["messages"][0]["content"]
                .as_str()
                .unwrap()
                .to_owned();
            let mut bytes = CHUNKED_HEAD.as_bytes().to_vec();
            let t = content(&format!("re: {prompt}"));
            bytes.extend(format!("{:x}\r\n{t}\r\n", t.len()).as_bytes());
            c.write_all(&bytes).unwrap();
        }
        for (c, _) in conns.iter_mut().rev() {
            let rest = [content("."), DONE.to_owned()].concat();
            c.write_all(format!("{:x}\r\n{rest}\r\n0\r\n\r\n", rest.len()).as_bytes())
                .unwrap();
        }
        conns.len()
    });
    let base = format!("http://127.0.0.1:{port}/v1");
    let s = Server::start(&[
        "--agent",
        "openai",
        "--openai-base-url",
        &base,
        "--model",
        "m",
    ]);
    let (a, b) = thread::scope(|scope| {
        let a = scope.spawn(|| chat(&s, "left", "alpha"));
        let b = scope.spawn(|| chat(&s, "right", "beta"));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_eq!((a.status, b.status), (200, 200));
    assert_eq!(a.json()["content"], "re: alpha.");
    assert_eq!(b.json()["content"], "re: beta.");
    assert_eq!(upstream.join().expect("upstream thread"), 2);
}

// ---------------------------------------------------------------------------
// A transcript to quote
// ---------------------------------------------------------------------------

#[test]
fn transcript_of_a_websocket_session() {
    let body = [
        sse(delta(
            json!({"role": "assistant", "reasoning_content": "The user wants a file listing."}),
        )),
        sse(delta(json!({"content": "Let me look."}))),
        sse(delta(
            json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
            "function": {"name": "list_dir", "arguments": ""}}]}),
        )),
        sse(delta(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"path\":\".\"}"}}]}),
        )),
        sse(json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})),
        DONE.to_owned(),
    ]
    .concat();
    let cuts = cycle_cuts(body.len(), &[37, 5, 91]);
    let mut wire = CHUNKED_HEAD.as_bytes().to_vec();
    wire.extend(chunked_at(body.as_bytes(), &cuts));
    let behaviour: Behaviour = Box::new(move |conn| write_dribbled(conn, &wire));
    let mut up = FakeUpstream::start(vec![behaviour, answer(&["Hi", " there", "!"])]);
    let s = start_server(
        &up,
        "qwen3:8b",
        &["--system-prompt", "You are a helpful agent."],
        &[],
    );

    eprintln!("--- transcript: WebSocket /api/ws/demo, --agent openai, fake upstream ---");
    let mut ws = s.ws("/api/ws/demo");
    let mut received = Vec::new();
    for prompt in ["What is in this directory?", "Say hi"] {
        // Written by hand so the transcript shows the keys in wire order.
        let sent = format!(
            r#"{{"op":"message","data":{{"content":{}}}}}"#,
            json!(prompt)
        );
        eprintln!("client → server  {sent}");
        ws.send(Message::text(sent)).expect("send");
        let req = up.next_request();
        eprintln!(
            "   server → upstream  {}  {}",
            req.request_line,
            req.essentials()
        );
        loop {
            let frame = match read_frame(&mut ws).expect("a frame") {
                Message::Text(t) => t.as_str().to_owned(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected frame {other:?}"),
            };
            eprintln!("server → client  {frame}");
            let v: Value = serde_json::from_str(&frame).unwrap();
            let done = v["op"] == "done";
            received.push(v);
            if done {
                break;
            }
        }
    }
    let h = history(&s, "demo");
    eprintln!("GET /api/sessions/demo/history → messages:");
    for m in &h {
        eprintln!("   {m}");
    }
    eprintln!("--- end of transcript ---");

    let ops: Vec<&str> = received.iter().map(|f| f["op"].as_str().unwrap()).collect();
    assert_eq!(
        ops,
        [
            "thinking",
            "thinking_done",
            "token",
            "tool_call",
            "done",
            "token",
            "token",
            "token",
            "done"
        ]
    );
    assert_seq_from(&received, 1);
    assert_eq!(
        received[3]["data"],
        json!({"tool_call_id": "call_1", "name": "list_dir", "details": {"path": "."}})
    );
    assert_eq!(received[4]["data"]["content"], "Let me look.");
    assert_eq!(received[8]["data"]["content"], "Hi there!");
    assert_eq!(h.len(), 4);
    assert!(h
        .iter()
        .skip(1)
        .step_by(2)
        .all(|m| m["model_name"] == "qwen3:8b"));
    up.finish();
}

// ---------------------------------------------------------------------------
// Queued turns, delete mid-turn, keep-alives, a large request
// ---------------------------------------------------------------------------

#[test]
fn queued_turns_run_in_order_each_with_the_history_before_it() {
    let (go_tx, go) = mpsc::channel::<()>();
    let first: Behaviour = Box::new(move |conn| {
        let t = content("first reply");
        conn.write_all(format!("{CHUNKED_HEAD}{:x}\r\n{t}\r\n", t.len()).as_bytes())
            .unwrap();
        // Finish only when the test says the other turns are queued.
        go.recv_timeout(IO_TIMEOUT).expect("the test's go-ahead");
        conn.write_all(&chunked(DONE)).unwrap();
    });
    let mut bad = CHUNKED_HEAD.as_bytes().to_vec();
    bad.extend(chunked("data: {nope\n\n"));
    let mut up = FakeUpstream::start(vec![
        first,
        respond_best_effort(bad),
        answer(&["third reply"]),
    ]);
    let s = start_server(&up, "m", &[], &[]);
    let mut ws = subscribe(&s, "queue");

    send_json(&mut ws, message("A"));
    assert_eq!(next_json(&mut ws)["data"]["content"], "first reply");
    send_json(&mut ws, message("B"));
    send_json(&mut ws, message("C"));
    // The server handles a client's frames in order: once this is answered,
    // B and C are queued behind A.
    send_json(&mut ws, json!({"op": "sync?"}));
    assert_eq!(next_json(&mut ws)["data"]["message"], "Unknown op: sync?");
    assert_eq!(
        up.next_request().body["messages"],
        json!([{"role": "user", "content": "A"}])
    );
    go_tx.send(()).unwrap();

    assert_eq!(
        next_json(&mut ws),
        json!({"op": "done", "data": {"content": "first reply"}, "seq": 2})
    );
    // B ran after A, with A in its history, and failed.
    assert_eq!(
        up.next_request().body["messages"],
        json!([
            {"role": "user", "content": "A"},
            {"role": "assistant", "content": "first reply"},
            {"role": "user", "content": "B"},
        ])
    );
    let f = next_json(&mut ws);
    assert_eq!((&f["op"], &f["seq"]), (&json!("error"), &json!(3)), "{f}");
    assert!(f["data"]["message"].as_str().unwrap().contains("malformed"));
    // C still ran after the failure.
    let frames = until_done(&mut ws);
    assert_eq!(
        frames,
        [
            json!({"op": "token", "data": {"content": "third reply"}, "seq": 4}),
            json!({"op": "done", "data": {"content": "third reply"}, "seq": 5}),
        ]
    );
    let c = up.next_request().body["messages"].clone();
    let c = c.as_array().unwrap();
    assert_eq!(
        c[..2],
        [
            json!({"role": "user", "content": "A"}),
            json!({"role": "assistant", "content": "first reply"}),
        ]
    );
    assert!(
        c.contains(&json!({"role": "user", "content": "B"})),
        "{c:?}"
    );
    assert_eq!(c.last().unwrap(), &json!({"role": "user", "content": "C"}));
    up.finish();
}

#[test]
fn deleting_the_session_mid_turn_closes_the_upstream() {
    let (seen_tx, seen) = mpsc::channel();
    let t = content("started");
    let head_and_token = format!("{CHUNKED_HEAD}{:x}\r\n{t}\r\n", t.len()).into_bytes();
    let mut up = FakeUpstream::start(vec![send_then_hold(head_and_token, seen_tx)]);
    let s = start_server(&up, "m", &[], &[]);
    let mut ws = subscribe(&s, "doomed");
    thread::scope(|scope| {
        let rest = scope.spawn(|| chat(&s, "doomed", "long job"));
        assert_eq!(next_json(&mut ws)["data"]["content"], "started");
        let d = s.request("DELETE", "/api/sessions/doomed", None, &[]);
        assert_eq!(d.status, 204);
        let r = rest.join().unwrap();
        assert_eq!(r.status, 409, "{:?}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["detail"]["code"], "cancelled");
    });
    up.next_request();
    let outcome = seen.recv_timeout(IO_TIMEOUT).expect("the upstream reports");
    assert!(outcome.is_ok(), "{outcome:?}");
    up.finish();
}

#[test]
fn keep_alive_comments_keep_a_slow_upstream_within_its_timeout() {
    // Silent for at most 250 ms at a time, slow for 3 s in all, against a
    // 2 s silence limit: the pauses pace the upstream, they synchronise
    // nothing.
    let slow: Behaviour = Box::new(|conn| {
        conn.write_all(CHUNKED_HEAD.as_bytes()).unwrap();
        for _ in 0..12 {
            conn.write_all(b"e\r\n: keep-alive\n\n\r\n").unwrap();
            thread::sleep(Duration::from_millis(250));
        }
        let rest = [content("worth the wait"), DONE.to_owned()].concat();
        conn.write_all(&chunked(&rest)).unwrap();
    });
    let mut up = FakeUpstream::start(vec![slow]);
    let s = start_server(&up, "m", &["--upstream-timeout", "2"], &[]);
    let started = Instant::now();
    let r = chat(&s, "patient", "take your time");
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["content"], "worth the wait");
    assert!(started.elapsed() >= Duration::from_secs(3));
    up.next_request();
    up.finish();
}

#[test]
fn a_request_larger_than_the_socket_buffers_is_written_in_full() {
    let (len_tx, len) = mpsc::channel();
    // The request is read as it arrives; the answer names what was received.
    let measure: Behaviour = Box::new(move |conn| {
        let n = len.recv_timeout(IO_TIMEOUT).expect("the prompt length");
        let t = content(&format!("got {n} chars"));
        conn.write_all(
            format!(
                "{CHUNKED_HEAD}{}",
                String::from_utf8(chunked(&(t + DONE))).unwrap()
            )
            .as_bytes(),
        )
        .unwrap();
    });
    let mut up = FakeUpstream::start(vec![measure]);
    let s = start_server(&up, "m", &["--max-body-bytes", "16777216"], &[]);
    let prompt: String = (0..6_000_000u32)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    thread::scope(|scope| {
        let rest = scope.spawn(|| chat(&s, "big", &prompt));
        let req = up.next_request();
        let got = req.body["messages"][0]["content"].as_str().unwrap();
        assert!(
            got == prompt,
            "the prompt arrived altered ({} chars)",
            got.len()
        );
        len_tx.send(got.len()).unwrap();
        let r = rest.join().unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["content"], "got 6000000 chars");
    });
    up.finish();
}

// ---------------------------------------------------------------------------
// Connections that end early or late
// ---------------------------------------------------------------------------

/// Makes the close of `conn` send a RST instead of a FIN.
fn reset_on_close(conn: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on an open socket we own, with a valid pointer and
    // length; SO_LINGER 0 makes its close send a RST.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(conn),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER");
}

#[test]
fn upstream_hanging_up_without_answering_is_a_503() {
    // After reading the request: a clean close, then a reset.
    let close: Behaviour = Box::new(|_conn| {});
    let reset: Behaviour = Box::new(|conn| reset_on_close(conn));
    let mut up = FakeUpstream::start(vec![close, reset, answer(&["fine"])]);
    let s = start_server(&up, "m", &[], &[]);

    let r = chat(&s, "hangup", "one");
    assert_eq!(r.status, 503, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        detail(&r),
        "upstream closed the connection before answering"
    );
    up.next_request();

    let r = chat(&s, "hangup", "two");
    assert_eq!(r.status, 503, "{:?}", String::from_utf8_lossy(&r.body));
    assert!(!detail(&r).is_empty());
    up.next_request();

    let r = chat(&s, "hangup", "three");
    assert_eq!(
        (r.status, r.json()["content"].clone()),
        (200, json!("fine"))
    );
    up.next_request();
    up.finish();
}

#[test]
fn upstream_reset_mid_stream_is_not_reported_as_unreachable() {
    // The upstream answers, streams a token, then its connection is reset
    // (a crashed or restarted model server). It was reached: the reason
    // must not say it could not be.
    let (go_tx, go) = mpsc::channel::<()>();
    let crash: Behaviour = Box::new(move |conn| {
        let t = content("partial");
        conn.write_all(format!("{CHUNKED_HEAD}{:x}\r\n{t}\r\n", t.len()).as_bytes())
            .unwrap();
        go.recv_timeout(IO_TIMEOUT).expect("the test's go-ahead");
        reset_on_close(conn);
    });
    let mut up = FakeUpstream::start(vec![crash, answer(&["recovered"])]);
    let s = start_server(&up, "m", &[], &[]);
    let mut ws = subscribe(&s, "crash");
    thread::scope(|scope| {
        let rest = scope.spawn(|| chat(&s, "crash", "go"));
        assert_eq!(
            next_json(&mut ws),
            json!({"op": "token", "data": {"content": "partial"}, "seq": 1})
        );
        go_tx.send(()).unwrap();
        let r = rest.join().unwrap();
        assert_eq!(r.status, 503, "{:?}", String::from_utf8_lossy(&r.body));
        let why = detail(&r);
        let f = next_json(&mut ws);
        assert_eq!(
            f,
            json!({"op": "error", "data": {"message": why}, "seq": 2})
        );
        assert!(
            !why.contains("cannot reach"),
            "a reset after a streamed token is reported as {why:?}"
        );
    });
    up.next_request();
    let r = chat(&s, "crash", "again");
    assert_eq!(r.status, 200);
    up.next_request();
    up.finish();
}

#[test]
fn done_ends_the_turn_though_the_upstream_keeps_the_connection_open() {
    // The upstream ignores `Connection: close`: after [DONE] it sends
    // nothing more, not even the last chunk, and does not close.
    let (seen_tx, seen) = mpsc::channel();
    let body = [content("kept"), content(" open"), DONE.to_owned()].concat();
    let mut wire = CHUNKED_HEAD.as_bytes().to_vec();
    wire.extend(chunked(&body));
    wire.truncate(wire.len() - b"0\r\n\r\n".len());
    let mut up = FakeUpstream::start(vec![send_then_hold(wire, seen_tx)]);
    // A silence limit far beyond the wait below: only [DONE] can end it.
    let s = start_server(&up, "m", &["--upstream-timeout", "600"], &[]);
    let r = chat(&s, "open", "hi");
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["content"], "kept open");
    up.next_request();
    let outcome = seen.recv_timeout(IO_TIMEOUT).expect("the upstream reports");
    assert!(outcome.is_ok(), "the server should hang up: {outcome:?}");
    up.finish();
}

#[test]
fn queued_turns_behind_a_failed_connect_start_without_delay() {
    // A TCP connect to the broadcast address fails inside connect(2)
    // itself (ENETUNREACH), not later on the socket: the path where the
    // turn fails before any readiness event. Each queued turn must then
    // start at once, as it does after an asynchronous failure.
    let s = Server::start(&[
        "--agent",
        "openai",
        "--openai-base-url",
        "http://255.255.255.255:80/v1",
        "--model",
        "m",
    ]);
    let mut ws = subscribe(&s, "unreachable");
    // One running turn and the eight the queue holds by default.
    for i in 0..9 {
        send_json(&mut ws, message(&format!("turn {i}")));
    }
    let mut at = Vec::new();
    let started = Instant::now();
    for i in 0..9u64 {
        let f = next_json(&mut ws);
        at.push(started.elapsed());
        assert_eq!(f["op"], "error", "{f}");
        assert_eq!(f["seq"], i + 1);
        let why = f["data"]["message"].as_str().unwrap();
        assert!(why.contains("cannot reach the upstream"), "{why}");
    }
    // Nine failures that need no network take milliseconds; a queue that
    // only moves on the server's 1 s housekeeping tick takes seconds.
    assert!(
        at[8] < Duration::from_millis(2500),
        "nine unreachable turns took {:?} (error times: {at:?})",
        at[8]
    );
}
