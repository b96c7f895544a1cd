//! HTTP/1.1 protocol behaviour over real sockets against the real binary:
//! keep-alive, pipelining, chunked bodies, protocol rejections, timeouts,
//! the connection cap, `Expect: 100-continue` and half-closed clients.

mod common;
use common::*;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

/// Asserts that the next read on `s` is the end of the stream (EOF or a
/// reset), with no byte before it. Bounded by the socket's read timeout.
fn assert_eof(s: &mut TcpStream, what: &str) {
    let mut buf = [0u8; 256];
    match NoEintr(s).read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Ok(n) => panic!(
            "{what}: expected EOF, got {n} more bytes: {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) => panic!("{what}: expected EOF, got error {e} (timeout means the server kept the connection open)"),
    }
}

/// Asserts that the next read on `s` returns nothing yet (the read timeout
/// elapses): the connection is open and the server has not answered.
fn assert_still_open(s: &mut TcpStream, wait: Duration) {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 64];
    match NoEintr(s).read(&mut buf) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        Ok(0) => panic!("the server closed a connection that should stay open"),
        Ok(n) => panic!("unexpected bytes: {:?}", String::from_utf8_lossy(&buf[..n])),
        Err(e) => panic!("unexpected error: {e}"),
    }
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
}

fn body_text(r: &HttpResponse) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

fn is_close(r: &HttpResponse) -> bool {
    r.header("connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("close"))
}

fn assert_health(r: &HttpResponse) {
    assert_eq!(r.status, 200, "health: {}", body_text(r));
    assert_eq!(r.json()["status"], "ok");
    assert_eq!(r.json()["version"], env!("CARGO_PKG_VERSION"));
}

fn chat_body(content: &str) -> String {
    serde_json::json!({ "content": content }).to_string()
}

/// Encodes `body` as chunks of at most `size` bytes, each with `ext` after
/// the size, then the last chunk and `trailers` (full lines with CRLF).
fn chunked(body: &str, size: usize, ext: &str, trailers: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in body.as_bytes().chunks(size) {
        out.extend_from_slice(format!("{:x}{ext}\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("0{ext}\r\n{trailers}\r\n").as_bytes());
    out
}

const CHUNKED_CHAT_HEAD: &[u8] =
    b"POST /api/chat HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n";

fn assert_chat_echo(r: &HttpResponse, content: &str) {
    assert_eq!(r.status, 200, "chat: {}", body_text(r));
    let v = r.json();
    assert_eq!(v["content"], content, "{v}");
    assert!(
        v["session_id"].as_str().is_some_and(|s| !s.is_empty()),
        "{v}"
    );
}

// ---------------------------------------------------------------- keep-alive

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    let server = Server::start(&[]);
    let mut s = server.connect();
    for i in 0..5 {
        s.write_all(&raw_request("GET", "/api/health", None, &[]))
            .unwrap();
        let r = read_response(&mut s).unwrap_or_else(|| panic!("response {i}"));
        assert_health(&r);
        assert!(!is_close(&r), "HTTP/1.1 keep-alive response {i} says close");
    }
    let content = "on the same connection";
    s.write_all(&raw_request(
        "POST",
        "/api/chat",
        Some(&chat_body(content)),
        &[],
    ))
    .unwrap();
    assert_chat_echo(&read_response(&mut s).expect("chat response"), content);
    s.write_all(&raw_request("GET", "/nope", None, &[]))
        .unwrap();
    let r = read_response(&mut s).expect("404 response");
    assert_eq!(r.status, 404);
    assert_eq!(r.json(), serde_json::json!({"detail": "Not Found"}));
    // Still open after an error response.
    s.write_all(&raw_request("GET", "/api/health", None, &[]))
        .unwrap();
    assert_health(&read_response(&mut s).expect("health after 404"));
}

#[test]
fn http10_without_keep_alive_closes_after_the_response() {
    let server = Server::start(&[]);
    let mut s = server.connect();
    s.write_all(b"GET /api/health HTTP/1.0\r\nHost: test\r\n\r\n")
        .unwrap();
    let r = read_response(&mut s).expect("a response");
    assert_health(&r);
    assert!(
        is_close(&r),
        "HTTP/1.0 response lacks connection: close: {:?}",
        r.headers
    );
    assert_eof(&mut s, "after an HTTP/1.0 response");
}

#[test]
fn http10_with_keep_alive_stays_open() {
    let server = Server::start(&[]);
    let mut s = server.connect();
    for i in 0..3 {
        s.write_all(b"GET /api/health HTTP/1.0\r\nHost: test\r\nConnection: keep-alive\r\n\r\n")
            .unwrap();
        let r = read_response(&mut s).unwrap_or_else(|| panic!("response {i}"));
        assert_health(&r);
        assert!(!is_close(&r), "HTTP/1.0 keep-alive response {i} says close");
    }
}

#[test]
fn connection_close_on_http11_is_honoured() {
    let server = Server::start(&[]);
    let mut s = server.connect();
    s.write_all(&raw_request(
        "GET",
        "/api/health",
        None,
        &[("Connection", "close")],
    ))
    .unwrap();
    let r = read_response(&mut s).expect("a response");
    assert_health(&r);
    assert!(
        is_close(&r),
        "response lacks connection: close: {:?}",
        r.headers
    );
    assert_eof(&mut s, "after Connection: close");
}

#[test]
fn connection_close_on_a_deferred_chat_response_is_honoured() {
    let server = Server::start(&[]);
    let mut s = server.connect();
    let content = "last words";
    s.write_all(&raw_request(
        "POST",
        "/api/chat",
        Some(&chat_body(content)),
        &[("Connection", "close")],
    ))
    .unwrap();
    let r = read_response(&mut s).expect("a response");
    assert_chat_echo(&r, content);
    assert!(
        is_close(&r),
        "response lacks connection: close: {:?}",
        r.headers
    );
    assert_eof(&mut s, "after Connection: close");
}

// ---------------------------------------------------------------- pipelining

#[test]
fn pipelined_requests_are_answered_in_order() {
    let server = Server::start(&[]);
    let mut s = server.connect();
    let content = "pipelined hello";
    let mut all = raw_request("GET", "/api/health", None, &[]);
    all.extend(raw_request(
        "POST",
        "/api/chat",
        Some(&chat_body(content)),
        &[],
    ));
    all.extend(raw_request("GET", "/api/sessions", None, &[]));
    all.extend(raw_request("GET", "/api/health", None, &[]));
    s.write_all(&all).unwrap();

    assert_health(&read_response(&mut s).expect("first response"));
    let chat = read_response(&mut s).expect("second response");
    assert_chat_echo(&chat, content);
    let session_id = chat.json()["session_id"].as_str().unwrap().to_owned();
    let list = read_response(&mut s).expect("third response");
    assert_eq!(list.status, 200, "{}", body_text(&list));
    let sessions = list.json();
    let sessions = sessions.as_array().expect("a JSON array of sessions");
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(sessions[0]["id"], session_id.as_str());
    assert_eq!(sessions[0]["message_count"], 2);
    assert_health(&read_response(&mut s).expect("fourth response"));
    // And the connection is still usable.
    s.write_all(&raw_request("GET", "/api/health", None, &[]))
        .unwrap();
    assert_health(&read_response(&mut s).expect("after the pipeline"));
}

#[test]
fn pipelined_chunked_and_sized_bodies_keep_their_boundaries() {
    let server = Server::start(&[]);
    let mut s = server.connect();
    let mut all = CHUNKED_CHAT_HEAD.to_vec();
    all.extend(chunked(&chat_body("first"), 5, "", ""));
    all.extend(raw_request(
        "POST",
        "/api/chat",
        Some(&chat_body("second")),
        &[],
    ));
    all.extend(CHUNKED_CHAT_HEAD);
    all.extend(chunked(&chat_body("third"), 7, ";x=y", "X-Trailer: 1\r\n"));
    s.write_all(&all).unwrap();
    for content in ["first", "second", "third"] {
        assert_chat_echo(&read_response(&mut s).expect("a response"), content);
    }
}

// ------------------------------------------------------------ chunked bodies

#[test]
fn chunked_chat_body_is_decoded() {
    let server = Server::start(&[]);
    let content = "hello chunked world";
    let mut s = server.connect();
    let mut req = CHUNKED_CHAT_HEAD.to_vec();
    req.extend(chunked(&chat_body(content), 6, "", ""));
    s.write_all(&req).unwrap();
    assert_chat_echo(&read_response(&mut s).expect("a response"), content);
}

#[test]
fn chunked_chat_body_with_extensions_and_trailers() {
    let server = Server::start(&[]);
    let content = "with extensions and trailers";
    let mut s = server.connect();
    let mut req = CHUNKED_CHAT_HEAD.to_vec();
    req.extend(chunked(
        &chat_body(content),
        9,
        ";name=value;flag",
        "X-Checksum: abc\r\nX-Other: 2\r\n",
    ));
    s.write_all(&req).unwrap();
    assert_chat_echo(&read_response(&mut s).expect("a response"), content);
    // The trailers were consumed: the connection goes on.
    s.write_all(&raw_request("GET", "/api/health", None, &[]))
        .unwrap();
    assert_health(&read_response(&mut s).expect("health after the chunked request"));
}

#[test]
fn chunked_chat_body_split_across_writes() {
    let server = Server::start(&[]);
    let content = "split across many writes";
    let mut s = server.connect();
    s.set_nodelay(true).unwrap();
    let mut req = CHUNKED_CHAT_HEAD.to_vec();
    req.extend(chunked(&chat_body(content), 4, ";e=1", "X-T: 1\r\n"));
    // Odd-sized pieces cut through sizes, data and CRLFs alike.
    for piece in req.chunks(5) {
        s.write_all(piece).unwrap();
        s.flush().unwrap();
    }
    assert_chat_echo(&read_response(&mut s).expect("a response"), content);
}

#[test]
fn sized_body_split_across_writes() {
    let server = Server::start(&[]);
    let content = "content-length body in pieces";
    let mut s = server.connect();
    s.set_nodelay(true).unwrap();
    let req = raw_request("POST", "/api/chat", Some(&chat_body(content)), &[]);
    for piece in req.chunks(3) {
        s.write_all(piece).unwrap();
        s.flush().unwrap();
    }
    assert_chat_echo(&read_response(&mut s).expect("a response"), content);
}

// ------------------------------------------------------ protocol rejections

const REJECT_FLAGS: &[&str] = &["--max-head-bytes", "1024", "--max-body-bytes", "64"];

/// Sends `bytes` on a new connection; expects a `{"detail": ...}` rejection
/// with `connection: close`, then EOF. Returns the status.
fn rejection(server: &Server, bytes: &[u8]) -> u16 {
    let mut s = server.connect();
    s.write_all(bytes).unwrap();
    let what = String::from_utf8_lossy(&bytes[..bytes.len().min(80)]).into_owned();
    let r = read_response(&mut s).unwrap_or_else(|| panic!("no response to {what:?}"));
    assert!(
        is_close(&r),
        "rejection of {what:?} lacks connection: close: {:?}",
        r.headers
    );
    assert_eq!(
        r.header("content-type"),
        Some("application/json"),
        "{what:?}"
    );
    assert!(
        r.json()["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "rejection of {what:?} has no detail: {}",
        body_text(&r)
    );
    assert_eof(&mut s, &format!("after rejecting {what:?}"));
    r.status
}

#[test]
fn both_content_length_and_transfer_encoding_is_400() {
    let server = Server::start(REJECT_FLAGS);
    let req = b"POST /api/chat HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    assert_eq!(rejection(&server, req), 400);
    let req = b"POST /api/chat HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n";
    assert_eq!(rejection(&server, req), 400);
    assert_health(&server.get("/api/health"));
}

#[test]
fn two_content_length_headers_are_400_even_when_equal() {
    let server = Server::start(REJECT_FLAGS);
    let equal =
        b"POST /api/chat HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}";
    assert_eq!(rejection(&server, equal), 400);
    let differ =
        b"POST /api/chat HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{} ";
    assert_eq!(rejection(&server, differ), 400);
}

#[test]
fn invalid_content_length_is_400() {
    let server = Server::start(REJECT_FLAGS);
    for value in [
        "abc",
        "+2",
        "-1",
        "2,2",
        "1 1",
        "0x10",
        "99999999999999999999999",
    ] {
        let req =
            format!("POST /api/chat HTTP/1.1\r\nHost: t\r\nContent-Length: {value}\r\n\r\n{{}}");
        assert_eq!(
            rejection(&server, req.as_bytes()),
            400,
            "Content-Length: {value}"
        );
    }
}

#[test]
fn bad_chunk_size_is_400() {
    let server = Server::start(REJECT_FLAGS);
    for body in [
        &b"zz\r\nhello\r\n0\r\n\r\n"[..],
        b"-5\r\nhello\r\n0\r\n\r\n",
        b"\r\n0\r\n\r\n",
    ] {
        let mut req = CHUNKED_CHAT_HEAD.to_vec();
        req.extend_from_slice(body);
        assert_eq!(
            rejection(&server, &req),
            400,
            "{:?}",
            String::from_utf8_lossy(body)
        );
    }
    // Chunk data not followed by CRLF.
    let mut req = CHUNKED_CHAT_HEAD.to_vec();
    req.extend_from_slice(b"2\r\n{}XX0\r\n\r\n");
    assert_eq!(rejection(&server, &req), 400);
}

#[test]
fn malformed_request_line_or_headers_is_400() {
    let server = Server::start(REJECT_FLAGS);
    for req in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET  /api/health HTTP/1.1\r\n\r\n",
        b"GET /api/health HTTP/2.0\r\n\r\n",
        b"GET /api/health\r\n\r\n",
        b"GET api/health HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /api/health HTTP/1.1\r\nBad Name: x\r\n\r\n",
        b"GET /api/health HTTP/1.1\r\nNoColon\r\n\r\n",
        b"GET /api/health HTTP/1.1\r\nX: a\x00b\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    ] {
        assert_eq!(
            rejection(&server, req),
            400,
            "{:?}",
            String::from_utf8_lossy(req)
        );
    }
    // The server is fine afterwards.
    assert_health(&server.get("/api/health"));
}

#[test]
fn head_over_the_limit_is_431() {
    let server = Server::start(REJECT_FLAGS);
    // Complete head over the limit.
    let big = "a".repeat(2000);
    let req = format!("GET /api/health HTTP/1.1\r\nHost: t\r\nX-Big: {big}\r\n\r\n");
    assert_eq!(rejection(&server, req.as_bytes()), 431);
    // A head that never ends and passes the limit.
    let req = format!("GET /api/health HTTP/1.1\r\nX-Big: {big}");
    assert_eq!(rejection(&server, req.as_bytes()), 431);
    // Under the limit is fine.
    let ok = "a".repeat(500);
    let r = server.request("GET", "/api/health", None, &[("X-Ok", &ok)]);
    assert_health(&r);
}

#[test]
fn body_over_the_limit_by_content_length_is_413() {
    let server = Server::start(REJECT_FLAGS);
    // Declared: rejected from the head alone, no body sent.
    let req = b"POST /api/chat HTTP/1.1\r\nHost: t\r\nContent-Length: 65\r\n\r\n";
    assert_eq!(rejection(&server, req), 413);
    let req = b"POST /api/chat HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000000\r\n\r\n";
    assert_eq!(rejection(&server, req), 413);
    // At the limit is accepted (and parsed as a chat body).
    let content = "x".repeat(64 - chat_body("").len());
    let body = chat_body(&content);
    assert_eq!(body.len(), 64);
    assert_chat_echo(&server.post("/api/chat", &body), &content);
}

#[test]
fn body_over_the_limit_by_chunks_is_413() {
    let server = Server::start(REJECT_FLAGS);
    let mut req = CHUNKED_CHAT_HEAD.to_vec();
    for _ in 0..3 {
        req.extend_from_slice(b"20\r\n");
        req.extend_from_slice(&[b'x'; 32]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(rejection(&server, &req), 413);
    // One huge declared chunk.
    let mut req = CHUNKED_CHAT_HEAD.to_vec();
    req.extend_from_slice(b"ffffffff\r\n");
    assert_eq!(rejection(&server, &req), 413);
}

#[test]
fn unsupported_transfer_encoding_is_501() {
    let server = Server::start(REJECT_FLAGS);
    for te in ["gzip", "gzip, chunked", "identity"] {
        let req = format!("POST /api/chat HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: {te}\r\n\r\n");
        assert_eq!(
            rejection(&server, req.as_bytes()),
            501,
            "Transfer-Encoding: {te}"
        );
    }
}

#[test]
fn transfer_encoding_in_http10_is_400() {
    let server = Server::start(REJECT_FLAGS);
    let req = b"POST /api/chat HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    assert_eq!(rejection(&server, req), 400);
}

#[test]
fn a_rejection_after_a_served_request_closes_the_connection() {
    let server = Server::start(REJECT_FLAGS);
    let mut s = server.connect();
    let mut all = raw_request("GET", "/api/health", None, &[]);
    all.extend_from_slice(
        b"POST /api/chat HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
    );
    all.extend(raw_request("GET", "/api/health", None, &[]));
    s.write_all(&all).unwrap();
    assert_health(&read_response(&mut s).expect("first response"));
    let r = read_response(&mut s).expect("the rejection");
    assert_eq!(r.status, 400);
    assert!(is_close(&r));
    // The request pipelined after the rejected one is not answered.
    assert_eof(&mut s, "after the rejection");
}

// ------------------------------------------------------------------ timeouts

#[test]
fn header_timeout_answers_408_and_does_not_block_others() {
    let server = Server::start(&["--header-timeout", "1"]);
    let mut slow = server.connect();
    slow.write_all(b"GET /api/health HTTP/1.1\r\nHost: te")
        .unwrap();

    // While the slow client is pending, others are served normally.
    for _ in 0..3 {
        assert_health(&server.get("/api/health"));
    }
    let content = "not blocked";
    assert_chat_echo(&server.post("/api/chat", &chat_body(content)), content);

    // The slow client gets 408 (within the read timeout) and then EOF.
    let started = Instant::now();
    let r = read_response(&mut slow).expect("a 408 for the slow client");
    assert_eq!(r.status, 408, "{}", body_text(&r));
    assert_eq!(r.json(), serde_json::json!({"detail": "Request Timeout"}));
    assert!(is_close(&r));
    assert_eof(&mut slow, "after the 408");
    assert!(started.elapsed() < IO_TIMEOUT);
}

#[test]
fn header_timeout_applies_to_a_silent_new_connection() {
    let server = Server::start(&["--header-timeout", "1"]);
    let mut silent = server.connect();
    let r = read_response(&mut silent).expect("a 408 for the silent client");
    assert_eq!(r.status, 408);
    assert!(is_close(&r));
    assert_eof(&mut silent, "after the 408");
    assert_health(&server.get("/api/health"));
}

#[test]
fn header_timeout_counts_from_the_first_byte_of_a_later_request() {
    // A connection that sent a full request, then half of the next one.
    let server = Server::start(&["--header-timeout", "1", "--keepalive-timeout", "60"]);
    let mut s = server.connect();
    s.write_all(&raw_request("GET", "/api/health", None, &[]))
        .unwrap();
    assert_health(&read_response(&mut s).expect("first response"));
    s.write_all(b"GET /api/health HTTP/1.1\r\n").unwrap();
    let r = read_response(&mut s).expect("a 408 for the stalled second request");
    assert_eq!(r.status, 408);
    assert_eof(&mut s, "after the 408");
}

#[test]
fn idle_keep_alive_connection_is_closed_silently() {
    let server = Server::start(&["--keepalive-timeout", "1"]);
    let mut s = server.connect();
    s.write_all(&raw_request("GET", "/api/health", None, &[]))
        .unwrap();
    let r = read_response(&mut s).expect("a response");
    assert_health(&r);
    assert!(!is_close(&r));
    // No 408, no bytes at all: just EOF, within the read timeout.
    let started = Instant::now();
    assert_eof(&mut s, "idle keep-alive connection");
    assert!(started.elapsed() < IO_TIMEOUT);
    assert_health(&server.get("/api/health"));
}

// ----------------------------------------------------------- connection cap

/// A new connection that did one request, so the server surely accepted it.
fn accepted_connection(server: &Server) -> TcpStream {
    let mut s = server.connect();
    s.write_all(&raw_request("GET", "/api/health", None, &[]))
        .unwrap();
    let r = read_response(&mut s).expect("a response on an accepted connection");
    assert_health(&r);
    s
}

#[test]
fn connections_over_the_cap_get_503_and_are_closed() {
    let server = Server::start(&["--max-connections", "2"]);
    let first = accepted_connection(&server);
    let mut second = accepted_connection(&server);

    let mut third = server.connect();
    // Best effort: a 503 if it arrives; otherwise read_response saw EOF or
    // a reset before any byte, i.e. the connection was closed.
    if let Some(r) = read_response(&mut third) {
        assert_eq!(r.status, 503, "{}", body_text(&r));
        assert_eq!(
            r.json(),
            serde_json::json!({"detail": "Too many connections"})
        );
        assert!(is_close(&r));
        assert_eof(&mut third, "after the 503");
    }
    drop(third);

    // The two held connections still work.
    second
        .write_all(&raw_request("GET", "/api/health", None, &[]))
        .unwrap();
    assert_health(&read_response(&mut second).expect("held connection still served"));

    // Close one; once the server noticed, a new connection is served.
    drop(first);
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let mut s = server.connect();
        // Written before the reply is read: a refused connection may answer
        // with a reset instead of the 503, which counts as refused too.
        let _ = s.write_all(&raw_request("GET", "/api/health", None, &[]));
        let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read_response(&mut s)));
        match got {
            Ok(Some(r)) if r.status == 200 => {
                assert_health(&r);
                break;
            }
            Ok(Some(r)) => assert_eq!(r.status, 503, "{}", body_text(&r)),
            Ok(None) | Err(_) => {}
        }
        assert!(
            Instant::now() < deadline,
            "no connection served after closing one ({attempts} attempts)"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ------------------------------------------------------ 100-continue, EOF

#[test]
fn expect_100_continue_gets_continue_before_the_body() {
    let server = Server::start(&[]);
    let mut s = server.connect();
    let content = "after continue";
    let body = chat_body(content);
    let head = format!(
        "POST /api/chat HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    let expected = b"HTTP/1.1 100 Continue\r\n\r\n";
    let mut interim = vec![0u8; expected.len()];
    s.read_exact(&mut interim)
        .expect("the interim 100 Continue");
    assert_eq!(interim, expected, "{:?}", String::from_utf8_lossy(&interim));
    s.write_all(body.as_bytes()).unwrap();
    assert_chat_echo(&read_response(&mut s).expect("the final response"), content);
    // Keep-alive goes on.
    s.write_all(&raw_request("GET", "/api/health", None, &[]))
        .unwrap();
    assert_health(&read_response(&mut s).expect("health after the 100-continue request"));
}

#[test]
fn expect_100_continue_with_chunked_body() {
    let server = Server::start(&[]);
    let mut s = server.connect();
    let content = "chunked after continue";
    s.write_all(b"POST /api/chat HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    let expected = b"HTTP/1.1 100 Continue\r\n\r\n";
    let mut interim = vec![0u8; expected.len()];
    s.read_exact(&mut interim)
        .expect("the interim 100 Continue");
    assert_eq!(interim, expected);
    s.write_all(&chunked(&chat_body(content), 8, "", ""))
        .unwrap();
    assert_chat_echo(&read_response(&mut s).expect("the final response"), content);
}

#[test]
fn expect_100_continue_with_too_large_body_is_413_without_continue() {
    let server = Server::start(REJECT_FLAGS);
    let req = b"POST /api/chat HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 100\r\n\r\n";
    assert_eq!(rejection(&server, req), 413);
}

#[test]
fn short_body_then_client_shutdown_is_closed_cleanly() {
    let server = Server::start(&[]);
    let mut s = server.connect();
    s.write_all(b"POST /api/chat HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{\"content\":")
        .unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    // Whatever the server says (nothing, or an error), it ends the connection.
    if let Some(r) = read_response(&mut s) {
        assert!(
            (400..500).contains(&r.status),
            "{} {}",
            r.status,
            body_text(&r)
        );
        assert_eof(&mut s, "after the answer to a truncated body");
    }
    // The server is alive and serves a new connection.
    assert_health(&server.get("/api/health"));
    let content = "still alive";
    assert_chat_echo(&server.post("/api/chat", &chat_body(content)), content);
}

#[test]
fn short_chunked_body_then_client_shutdown_is_closed_cleanly() {
    let server = Server::start(&[]);
    let mut s = server.connect();
    let mut req = CHUNKED_CHAT_HEAD.to_vec();
    req.extend_from_slice(b"20\r\n{\"content\":");
    s.write_all(&req).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    if let Some(r) = read_response(&mut s) {
        assert!(
            (400..500).contains(&r.status),
            "{} {}",
            r.status,
            body_text(&r)
        );
        assert_eof(&mut s, "after the answer to a truncated body");
    }
    assert_health(&server.get("/api/health"));
}

#[test]
fn half_close_after_a_full_request_still_gets_the_response() {
    let server = Server::start(&[]);
    let mut s = server.connect();
    s.write_all(&raw_request("GET", "/api/health", None, &[]))
        .unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert_health(&read_response(&mut s).expect("the response after half-close"));
    assert_eof(&mut s, "after the response to a half-closed client");
}

#[test]
fn half_close_after_a_chat_request_still_gets_the_deferred_response() {
    let server = Server::start(&[]);
    let mut s = server.connect();
    let content = "reply to a half-closed client";
    s.write_all(&raw_request(
        "POST",
        "/api/chat",
        Some(&chat_body(content)),
        &[],
    ))
    .unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert_chat_echo(
        &read_response(&mut s).expect("the deferred response"),
        content,
    );
    assert_eof(&mut s, "after the deferred response");
}

#[test]
fn half_close_after_pipelined_requests_answers_them_all() {
    let server = Server::start(&[]);
    let mut s = server.connect();
    let mut all = raw_request("GET", "/api/health", None, &[]);
    all.extend(raw_request(
        "POST",
        "/api/chat",
        Some(&chat_body("one")),
        &[],
    ));
    all.extend(raw_request(
        "POST",
        "/api/chat",
        Some(&chat_body("two")),
        &[],
    ));
    s.write_all(&all).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert_health(&read_response(&mut s).expect("first"));
    assert_chat_echo(&read_response(&mut s).expect("second"), "one");
    assert_chat_echo(&read_response(&mut s).expect("third"), "two");
    assert_eof(&mut s, "after all pipelined responses");
}

#[test]
fn an_open_idle_connection_is_not_closed_early() {
    // Guard for the timeout tests: with the defaults, an idle keep-alive
    // connection stays open for (much) more than a short while.
    let server = Server::start(&[]);
    let mut s = server.connect();
    s.write_all(&raw_request("GET", "/api/health", None, &[]))
        .unwrap();
    assert_health(&read_response(&mut s).expect("a response"));
    assert_still_open(&mut s, Duration::from_millis(1500));
    s.write_all(&raw_request("GET", "/api/health", None, &[]))
        .unwrap();
    assert_health(&read_response(&mut s).expect("a response after idling"));
}
