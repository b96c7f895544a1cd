//! The WebSocket endpoint against the real binary, with tungstenite as the
//! client: broadcast, ops, auth, handshake rejections, limits, shutdown.

mod common;
use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use tungstenite::Message;

fn message(content: &str) -> Value {
    json!({"op": "message", "data": {"content": content}})
}

#[test]
fn two_clients_get_the_same_stream_and_other_sessions_get_nothing() {
    let s = Server::start(&[]);
    let mut a = s.ws("/api/ws/room");
    let mut b = s.ws("/api/ws/room");
    let mut other = s.ws("/api/ws/elsewhere");
    // `other` proves its subscription is live by finishing a turn of its own.
    send_json(&mut other, message("mine"));
    assert_eq!(until_done(&mut other).len(), 2);

    send_json(&mut a, message("hello big world"));
    let fa = until_done(&mut a);
    let fb = until_done(&mut b);
    assert_eq!(fa, fb, "both clients see the same events in the same order");
    assert_eq!(
        fa,
        [
            json!({"op": "token", "data": {"content": "hello "}, "seq": 1}),
            json!({"op": "token", "data": {"content": "big "}, "seq": 2}),
            json!({"op": "token", "data": {"content": "world"}, "seq": 3}),
            json!({"op": "done", "data": {"content": "hello big world"}, "seq": 4}),
        ]
    );

    // The other session saw nothing of it: its next frame is its own turn.
    send_json(&mut other, message("again"));
    let fo = until_done(&mut other);
    assert_eq!(
        fo[0],
        json!({"op": "token", "data": {"content": "again"}, "seq": 3})
    );

    // The session exists and holds the turn.
    let h = s.get("/api/sessions/room/history").json();
    assert_eq!(h["messages"].as_array().unwrap().len(), 2);
}

#[test]
fn rest_chat_streams_to_websocket_clients_done_included() {
    let s = Server::start(&[]);
    let mut a = s.ws("/api/ws/shared");
    // Make sure the subscription is registered before the REST turn.
    send_json(&mut a, json!({"op": "nope"}));
    assert_eq!(
        next_json(&mut a),
        json!({"op": "error", "data": {"message": "Unknown op: nope"}})
    );
    let r = s.post(
        "/api/chat",
        r#"{"content":"from rest","session_id":"shared"}"#,
    );
    assert_eq!(
        r.json(),
        json!({"session_id": "shared", "content": "from rest"})
    );
    let frames = until_done(&mut a);
    assert_eq!(frames.len(), 3);
    assert_eq!(
        frames[2],
        json!({"op": "done", "data": {"content": "from rest"}, "seq": 3})
    );
}

#[test]
fn op_errors_go_to_the_sender_only() {
    let s = Server::start(&[]);
    let mut a = s.ws("/api/ws/ops");
    let mut b = s.ws("/api/ws/ops");
    let cases = [
        (message(""), json!({"message": "Empty message"})),
        (
            json!({"op": "message", "data": {}}),
            json!({"message": "Empty message"}),
        ),
        (
            json!({"op": "message", "data": {"content": null}}),
            json!({"message": "Invalid message format"}),
        ),
        (
            json!({"op": "message", "data": {"content": 7}}),
            json!({"message": "Invalid message format"}),
        ),
        (json!({"op": "fly"}), json!({"message": "Unknown op: fly"})),
        (
            json!({"data": {}}),
            json!({"message": "Invalid message format"}),
        ),
        (json!([1, 2]), json!({"message": "Invalid message format"})),
        (
            json!({"op": "cancel"}),
            json!({"code": "not_running", "message": "No turn is running"}),
        ),
    ];
    for (frame, data) in cases {
        send_json(&mut a, frame.clone());
        assert_eq!(
            next_json(&mut a),
            json!({"op": "error", "data": data}),
            "{frame}"
        );
    }
    a.send(Message::text("not json")).unwrap();
    assert_eq!(
        next_json(&mut a)["data"]["message"],
        "Invalid message format"
    );
    a.send(Message::binary(vec![1u8, 2, 3])).unwrap();
    assert_eq!(
        next_json(&mut a)["data"]["message"],
        "Invalid message format"
    );

    // approve is broadcast, with a seq; b's first frame is that broadcast,
    // so none of a's errors reached b.
    send_json(&mut a, json!({"op": "approve", "data": {}}));
    let expected = json!({"op": "error", "data": {"code": "approval_unsupported",
        "message": "Deferred approvals are not supported in server mode yet."}, "seq": 1});
    assert_eq!(next_json(&mut a), expected);
    assert_eq!(next_json(&mut b), expected);
}

#[test]
fn cancel_and_busy() {
    // A slow echo (one token per 5 ms), so the cancel surely finds the turn running.
    let s = Server::start(&["--max-queued-turns", "1", "--echo-delay-ms", "5"]);
    let mut a = s.ws("/api/ws/c");
    let long = "word ".repeat(2_000);
    // Three messages in one go: one runs, one queues, the third is refused.
    for text in [long.as_str(), "queued", "refused"] {
        send_json(&mut a, message(text));
    }
    send_json(&mut a, json!({"op": "cancel"}));
    let mut tokens = String::new();
    let mut busy = 0;
    let mut cancelled = 0;
    let mut last_seq = 0;
    while cancelled < 2 {
        let f = next_json(&mut a);
        if let Some(seq) = f["seq"].as_u64() {
            assert_eq!(seq, last_seq + 1, "seq has no gap");
            last_seq = seq;
        }
        match (f["op"].as_str().unwrap(), f["data"]["code"].as_str()) {
            ("token", _) => tokens.push_str(f["data"]["content"].as_str().unwrap()),
            ("error", Some("busy")) => busy += 1,
            ("error", Some("cancelled")) => cancelled += 1,
            other => panic!("unexpected {other:?}: {f}"),
        }
    }
    assert_eq!(busy, 1);
    assert!(long.starts_with(&tokens));
    assert!(
        tokens.len() < long.len(),
        "the cancel stopped the turn early"
    );
    // The history keeps the request and exactly the tokens streamed.
    let h = s.get("/api/sessions/c/history").json();
    let msgs = h["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 2, "the queued turn never ran");
    assert_eq!(msgs[0]["parts"][0]["content"], json!(long));
    assert_eq!(msgs[1]["parts"][0]["content"], json!(tokens));
    // The session is usable afterwards.
    send_json(&mut a, message("after"));
    let frames = until_done(&mut a);
    assert_eq!(frames.last().unwrap()["data"]["content"], "after");
}

#[test]
fn auth_by_header_by_subprotocol_and_4001_without() {
    let s = Server::start_with_env(&[], &[("AUTOPOIESIS_API_KEY", "k3y")]);
    let mut ws = s.ws_with("/api/ws/a", &[("X-API-Key", "k3y")]).unwrap();
    send_json(&mut ws, message("ok"));
    assert_eq!(until_done(&mut ws).len(), 2);

    // Browsers: the key as a subprotocol, which the server selects.
    use tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{}/api/ws/a", s.addr())
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "chat, autopoiesis.key.k3y".parse().unwrap(),
    );
    let (mut ws, resp) = tungstenite::client::client(req, s.connect()).unwrap();
    assert_eq!(
        resp.headers()["sec-websocket-protocol"],
        "autopoiesis.key.k3y"
    );
    send_json(&mut ws, message("ok"));
    assert_eq!(until_done(&mut ws).len(), 2);

    for headers in [
        &[][..],
        &[("X-API-Key", "nope")],
        &[("Sec-WebSocket-Protocol", "autopoiesis.key.nope")],
    ] {
        let mut ws = s.ws_with("/api/ws/a", headers).unwrap();
        match read_frame(&mut ws) {
            Ok(Message::Close(Some(frame))) => {
                assert_eq!(u16::from(frame.code), 4001);
                assert_eq!(frame.reason.as_str(), "Unauthorized");
            }
            other => panic!("expected close 4001, got {other:?}"),
        }
    }
    // Never from the query string.
    let mut ws = s.ws_with("/api/ws/a?api_key=k3y&key=k3y", &[]).unwrap();
    assert_eq!(close_code(&mut ws), 4001);
}

fn raw_upgrade(s: &Server, path: &str, extra: &str) -> HttpResponse {
    let mut c = s.connect();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{extra}\r\n"
    );
    c.write_all(req.as_bytes()).unwrap();
    read_response(&mut c).unwrap()
}

#[test]
fn handshake_rejections() {
    let s = Server::start(&[]);
    let good_key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let r = raw_upgrade(
        &s,
        "/api/ws/x",
        &format!("{good_key}Sec-WebSocket-Version: 13\r\n"),
    );
    assert_eq!(r.status, 101);
    assert_eq!(
        r.header("sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    let r = raw_upgrade(&s, "/api/ws/x", "Sec-WebSocket-Version: 13\r\n");
    assert_eq!(r.status, 400);
    let r = raw_upgrade(
        &s,
        "/api/ws/x",
        "Sec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\n",
    );
    assert_eq!(r.status, 400);
    let r = raw_upgrade(
        &s,
        "/api/ws/x",
        &format!("{good_key}Sec-WebSocket-Version: 8\r\n"),
    );
    assert_eq!(r.status, 426);
    assert_eq!(r.header("sec-websocket-version"), Some("13"));
    let r = raw_upgrade(
        &s,
        "/api/ws/bad%20id",
        &format!("{good_key}Sec-WebSocket-Version: 13\r\n"),
    );
    assert_eq!(
        (r.status, r.json()),
        (400, json!({"detail": "Invalid session id"}))
    );
    let r = raw_upgrade(
        &s,
        "/api/ws/x?since=-1",
        &format!("{good_key}Sec-WebSocket-Version: 13\r\n"),
    );
    assert_eq!(r.status, 400);
    // A plain GET is not a WebSocket route, as in FastAPI.
    assert_eq!(s.get("/api/ws/x").status, 404);
}

#[test]
fn websocket_creates_its_session_and_survives_rest_delete() {
    let s = Server::start(&[]);
    let mut a = s.ws("/api/ws/phoenix");
    // The first reply proves the upgrade was processed.
    send_json(&mut a, json!({"op": "ping?"}));
    next_json(&mut a);
    let list = s.get("/api/sessions").json();
    assert_eq!(list[0]["id"], "phoenix");
    assert_eq!(
        s.request("DELETE", "/api/sessions/phoenix", None, &[])
            .status,
        204
    );
    send_json(&mut a, message("back again"));
    let frames = until_done(&mut a);
    assert_eq!(frames.last().unwrap()["data"]["content"], "back again");
    assert_eq!(
        s.get("/api/sessions/phoenix/history").json()["messages"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn oversized_message_closes_1009_and_bad_utf8_closes_1007() {
    let s = Server::start(&["--max-ws-message-bytes", "1024"]);
    let mut a = s.ws("/api/ws/big");
    a.send(Message::text("x".repeat(2000))).unwrap();
    assert_eq!(close_code(&mut a), 1009);

    // tungstenite's client refuses to send invalid UTF-8, so write the
    // masked frame by hand after a handshake.
    let mut c = raw_ws(&s, "/api/ws/utf");
    let mask = [1u8, 2, 3, 4];
    let payload = [0xffu8, 0xfe];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    c.write_all(&frame).unwrap();
    let mut head = [0u8; 4];
    c.read_exact(&mut head).unwrap();
    assert_eq!(head[0], 0x88, "a close frame");
    assert_eq!(u16::from_be_bytes([head[2], head[3]]), 1007);
}

#[test]
fn a_client_that_never_reads_is_closed_at_the_output_bound() {
    let s = Server::start(&["--max-ws-output-bytes", "65536"]);
    let mut reader = s.ws("/api/ws/flood");
    let stuck = s.ws("/api/ws/flood"); // never reads
                                       // Each message is a big turn; together far more than the socket buffers
                                       // and the 64 KiB bound hold.
    let mut total_tokens = 0;
    for _ in 0..8 {
        send_json(&mut reader, message(&"ab ".repeat(100_000)));
        let frames = until_done(&mut reader);
        total_tokens += frames.len() - 1;
    }
    assert_eq!(total_tokens, 800_000, "the reading client got every token");
    // The stuck client was closed: its socket ends once we drain it, long
    // before the 32 MB it would have had to read.
    let mut tcp = stuck.into_inner();
    let mut buf = vec![0u8; 1 << 16];
    let mut last = Vec::new();
    let mut received = 0usize;
    loop {
        match NoEintr(&mut tcp).read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                received += n;
                last.extend_from_slice(&buf[..n]);
                if last.len() > 64 {
                    last.drain(..last.len() - 64);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("stuck client was never closed: {e}"),
        }
    }
    assert!(received < 16 << 20, "the stuck client got {received} bytes");
    // If the close frame got onto the wire, it is the last frame and says
    // 1008. (A client that has read nothing for longer than the server's
    // 2 s linger is dropped without it: on a loaded machine the eight turns
    // above can take that long.)
    let close_at = |reason: &str| last.len().checked_sub(2 + reason.len() + 2);
    let ends_with_close = [("Output buffer full", 20u8), ("Client too slow", 17u8)]
        .iter()
        .any(|(reason, len)| {
            close_at(reason).is_some_and(|i| last[i..].starts_with(&[0x88, *len, 0x03, 0xF0]))
        });
    let any_close = last.windows(2).any(|w| w[0] == 0x88 && w[1] < 126);
    assert!(
        ends_with_close || !any_close,
        "a close frame other than 1008 at the end: {last:?}"
    );
}

#[test]
fn silent_clients_are_pinged() {
    let s = Server::start(&["--ws-ping-interval", "1", "--ws-idle-timeout", "30"]);
    let mut a = s.ws("/api/ws/p");
    // The client is silent, so the first frame it gets is the server's ping.
    let first = read_frame(&mut a).expect("a frame");
    assert!(
        matches!(first, Message::Ping(_)),
        "expected a ping, got {first:?}"
    );
}

#[test]
fn silent_clients_are_closed_after_the_idle_timeout() {
    let s = Server::start(&["--ws-ping-interval", "1", "--ws-idle-timeout", "2"]);
    let a = s.ws("/api/ws/p");
    // Read raw bytes so tungstenite's client does not answer the ping.
    let mut tcp = a.into_inner();
    let mut all = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        match NoEintr(&mut tcp).read(&mut buf) {
            Ok(0) => break,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) => panic!("not closed: {e}"),
        }
    }
    // The close with 1001 comes last. Before it, a ping (unless a loaded
    // machine delayed the timer past both deadlines at once).
    let close = [&[0x88u8, 14, 0x03, 0xE9][..], b"Idle timeout"].concat();
    assert!(all.ends_with(&close), "ends with close 1001: {all:?}");
    let before = &all[..all.len() - close.len()];
    assert!(
        before.is_empty() || before == [0x89, 0],
        "only a ping before it: {before:?}"
    );
}

#[test]
fn shutdown_closes_websockets_with_1001_and_exits_0() {
    let mut s = Server::start(&[]);
    let mut a = s.ws("/api/ws/bye");
    send_json(&mut a, json!({"op": "x"}));
    next_json(&mut a);
    signal(&s.child, libc::SIGTERM);
    assert_eq!(close_code(&mut a), 1001);
    drop(a);
    let status = s.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn a_large_echo_to_many_clients_does_not_freeze_the_server() {
    let s = Server::start(&[]);
    let clients: Vec<Ws> = (0..20).map(|_| s.ws("/api/ws/wide")).collect();
    let mut sender = s.ws("/api/ws/wide");
    let words = 50_000;
    send_json(&mut sender, message(&"w ".repeat(words)));
    // While the turn streams, the server still answers other requests.
    assert_eq!(s.get("/api/health").status, 200);
    let handles: Vec<_> = clients
        .into_iter()
        .map(|mut ws| std::thread::spawn(move || until_done(&mut ws).len()))
        .collect();
    assert_eq!(until_done(&mut sender).len(), words + 1);
    for h in handles {
        assert_eq!(h.join().unwrap(), words + 1);
    }
}
