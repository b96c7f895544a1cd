use super::*;
use crate::http::{Head, Request};
use crate::sink::Recorder;
use serde_json::Value;

pub(super) const REST: ConnId = ConnId { slot: 9, serial: 9 };

pub(super) fn app(key: Option<&str>) -> App {
    let config = Config {
        api_key: key.map(str::to_owned),
        ..Config::default()
    };
    App::new(config, Instant::now())
}

pub(super) fn req(method: &str, target: &str, body: &str, key: Option<&str>) -> Request {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
        None => (target.to_owned(), None),
    };
    Request {
        head: Head {
            method: method.into(),
            path,
            query,
            minor_version: 1,
            keep_alive: true,
            api_key: key.map(|k| k.as_bytes().to_vec()),
            ..Head::default()
        },
        body: body.as_bytes().to_vec(),
    }
}

pub(super) fn call(
    app: &mut App,
    method: &str,
    target: &str,
    body: &str,
    key: Option<&str>,
) -> (u16, Value, Response) {
    let mut sink = Recorder::default();
    match app.handle_http(
        req(method, target, body, key),
        REST,
        Instant::now(),
        &mut sink,
    ) {
        HttpOutcome::Respond(r) => {
            let full = r.full_body();
            let v = if full.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&full).unwrap()
            };
            (r.status, v, r)
        }
        other => panic!("expected a response, got {other:?}"),
    }
}

/// Runs a chat request to completion and returns the deferred response.
pub(super) fn chat(app: &mut App, body: &str, key: Option<&str>) -> (u16, Value) {
    let mut sink = Recorder::default();
    let now = Instant::now();
    match app.handle_http(req("POST", "/api/chat", body, key), REST, now, &mut sink) {
        HttpOutcome::Pending => {}
        HttpOutcome::Respond(r) => return (r.status, serde_json::from_slice(&r.body).unwrap()),
        other => panic!("{other:?}"),
    }
    while app.run_turns(now, &mut sink).is_some() {}
    let (to, r) = sink.responses.pop().expect("a deferred response");
    assert_eq!(to, REST);
    (r.status, serde_json::from_slice(&r.body).unwrap())
}

#[test]
fn health_never_needs_the_key() {
    let mut a = app(Some("k"));
    let (status, body, _) = call(&mut a, "GET", "/api/health", "", None);
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")})
    );
}

#[test]
fn unknown_paths_are_404_with_or_without_key() {
    let mut a = app(Some("k"));
    for path in [
        "//",
        "/index.html",
        "/api",
        "/api/",
        "/api/nope",
        "/api/sessions/x/y",
        "/api/sessions//history",
        "/api/health/",
    ] {
        let (status, body, _) = call(&mut a, "GET", path, "", None);
        assert_eq!(
            (status, body),
            (404, json!({"detail": "Not Found"})),
            "{path}"
        );
    }
}

#[test]
fn wrong_method_is_405_with_allow() {
    let mut a = app(None);
    for (method, path, allow) in [
        ("DELETE", "/api/health", "GET"),
        ("PUT", "/api/sessions", "GET, POST"),
        ("GET", "/api/sessions/x", "DELETE"),
        ("POST", "/api/sessions/x/history", "GET"),
        ("GET", "/api/chat", "POST"),
    ] {
        let (status, body, r) = call(&mut a, method, path, "", None);
        assert_eq!(
            (status, body),
            (405, json!({"detail": "Method Not Allowed"}))
        );
        assert!(
            r.headers.contains(&("allow", allow.to_string())),
            "{method} {path}: {:?}",
            r.headers
        );
    }
}

#[test]
fn key_is_checked_before_404_and_422() {
    let mut a = app(Some("s3cret"));
    let unauthorized = json!({"detail": "Invalid or missing API key"});
    for (method, path, body) in [
        ("GET", "/api/sessions", ""),
        ("POST", "/api/sessions", ""),
        ("GET", "/api/sessions/unknown/history", ""),
        ("DELETE", "/api/sessions/unknown", ""),
        ("POST", "/api/chat", "not json"),
        ("GET", "/api/sessions/bad%20id/history", ""),
    ] {
        for key in [None, Some("wrong"), Some("s3cre"), Some("s3cret!")] {
            let (status, b, _) = call(&mut a, method, path, body, key);
            assert_eq!(
                (status, b),
                (401, unauthorized.clone()),
                "{method} {path} {key:?}"
            );
        }
    }
    let (status, _, _) = call(
        &mut a,
        "GET",
        "/api/sessions/unknown/history",
        "",
        Some("s3cret"),
    );
    assert_eq!(status, 404);
    let (status, _, _) = call(&mut a, "POST", "/api/chat", "", Some("s3cret"));
    assert_eq!(status, 422);
}

#[test]
fn key_comparison() {
    assert!(key_matches(b"abc", b"abc"));
    assert!(!key_matches(b"abd", b"abc"));
    assert!(!key_matches(b"ab", b"abc"));
    assert!(!key_matches(b"abcd", b"abc"));
    assert!(!key_matches(b"", b"abc"));
}

#[test]
fn session_lifecycle() {
    let mut a = app(None);
    let (status, info, _) = call(&mut a, "POST", "/api/sessions", "ignored {", None);
    assert_eq!(status, 201);
    let id = info["id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 32);
    assert_eq!(info["message_count"], 0);
    let created = info["created_at"].as_str().unwrap();
    assert!(created.ends_with('Z') && created.len() == 27, "{created}");

    let (status, list, _) = call(&mut a, "GET", "/api/sessions", "", None);
    assert_eq!((status, list), (200, json!([info])));

    let (status, history, _) = call(
        &mut a,
        "GET",
        &format!("/api/sessions/{id}/history"),
        "",
        None,
    );
    assert_eq!(
        (status, history),
        (200, json!({"session_id": id, "messages": []}))
    );

    let (status, body, r) = call(&mut a, "DELETE", &format!("/api/sessions/{id}"), "", None);
    assert_eq!((status, body), (204, Value::Null));
    assert!(r.body.is_empty());
    let (status, body, _) = call(&mut a, "DELETE", &format!("/api/sessions/{id}"), "", None);
    assert_eq!(
        (status, body),
        (404, json!({"detail": "Session not found"}))
    );
    let (status, _, _) = call(
        &mut a,
        "GET",
        &format!("/api/sessions/{id}/history"),
        "",
        None,
    );
    assert_eq!(status, 404);
}

#[test]
fn invalid_session_ids_are_400() {
    let mut a = app(None);
    let long = "a".repeat(129);
    for path in [
        "/api/sessions/bad%20id/history".to_string(),
        "/api/sessions/%C3%A9".to_string(),
        format!("/api/sessions/{long}"),
        "/api/sessions/a%3Fb".to_string(),
    ] {
        let method = if path.ends_with("history") {
            "GET"
        } else {
            "DELETE"
        };
        let (status, body, _) = call(&mut a, method, &path, "", None);
        assert_eq!(
            (status, body),
            (400, json!({"detail": "Invalid session id"})),
            "{path}"
        );
    }
    // The path is decoded before routing, as Starlette does: %2F is a slash.
    assert_eq!(
        call(&mut a, "GET", "/api/sessions/a%2Fb/history", "", None).0,
        404
    );
    // Percent-encoded valid characters decode to a valid id.
    let (status, _, _) = call(&mut a, "GET", "/api/sessions/%41bc/history", "", None);
    assert_eq!(status, 404);
    let (status, body) = chat(&mut a, r#"{"content":"x","session_id":"no way"}"#, None);
    assert_eq!(
        (status, body),
        (400, json!({"detail": "Invalid session id"}))
    );
}

#[test]
fn chat_runs_a_turn_and_keeps_history() {
    let mut a = app(None);
    let (status, body) = chat(&mut a, r#"{"content":"hello big world"}"#, None);
    assert_eq!(status, 200);
    let id = body["session_id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 32);
    assert_eq!(body["content"], "hello big world");

    // null and "" also mean "new session"; an unknown id is created under that id.
    for sid in ["null", r#""""#] {
        let (_, b) = chat(
            &mut a,
            &format!(r#"{{"content":"x","session_id":{sid}}}"#),
            None,
        );
        assert_ne!(b["session_id"], json!(id));
    }
    let (_, b) = chat(&mut a, r#"{"content":"again","session_id":"mine"}"#, None);
    assert_eq!(b["session_id"], "mine");
    let (_, b) = chat(
        &mut a,
        &format!(r#"{{"content":"second","session_id":"{id}"}}"#),
        None,
    );
    assert_eq!(b["content"], "second");

    let (_, history, _) = call(
        &mut a,
        "GET",
        &format!("/api/sessions/{id}/history"),
        "",
        None,
    );
    let msgs = history["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 4);
    assert_eq!(msgs[2]["parts"][0]["content"], "second");
    let (_, list, _) = call(&mut a, "GET", "/api/sessions", "", None);
    assert_eq!(list.as_array().unwrap().len(), 4);
    assert_eq!(list[0]["message_count"], 4);
}

#[test]
fn chat_body_validation_is_fastapis() {
    let mut a = app(None);
    let cases = [
        (
            "",
            json!([{"type": "missing", "loc": ["body"], "msg": "Field required", "input": null}]),
        ),
        (
            "[1]",
            json!([{"type": "model_attributes_type", "loc": ["body"],
            "msg": "Input should be a valid dictionary or object to extract fields from", "input": [1]}]),
        ),
        (
            "{}",
            json!([{"type": "missing", "loc": ["body", "content"], "msg": "Field required", "input": {}}]),
        ),
        (
            r#"{"content":5}"#,
            json!([{"type": "string_type", "loc": ["body", "content"],
            "msg": "Input should be a valid string", "input": 5}]),
        ),
        (
            r#"{"content":null,"session_id":7}"#,
            json!([
            {"type": "string_type", "loc": ["body", "content"], "msg": "Input should be a valid string", "input": null},
            {"type": "string_type", "loc": ["body", "session_id"], "msg": "Input should be a valid string", "input": 7}]),
        ),
    ];
    for (body, detail) in cases {
        let (status, b) = chat(&mut a, body, None);
        assert_eq!((status, b), (422, json!({ "detail": detail })), "{body}");
    }
    let (status, b) = chat(&mut a, "{\"content\": ", None);
    assert_eq!(status, 422);
    assert_eq!(b["detail"][0]["type"], "json_invalid");
    assert_eq!(b["detail"][0]["loc"], json!(["body", 12]));
}

#[test]
fn busy_past_the_queue_limit() {
    let mut a = App::new(
        Config {
            limits: crate::config::Limits {
                max_queued_turns: 1,
                ..Default::default()
            },
            ..Config::default()
        },
        Instant::now(),
    );
    let mut sink = Recorder::default();
    let body = r#"{"content":"x","session_id":"s"}"#;
    for expect_pending in [true, true, false] {
        let out = a.handle_http(
            req("POST", "/api/chat", body, None),
            REST,
            Instant::now(),
            &mut sink,
        );
        match out {
            HttpOutcome::Pending => assert!(expect_pending),
            HttpOutcome::Respond(r) => {
                assert!(!expect_pending);
                assert_eq!(r.status, 429);
                let v: Value = serde_json::from_slice(&r.body).unwrap();
                assert_eq!(v["detail"]["code"], "busy");
            }
            other => panic!("{other:?}"),
        }
    }
}

fn ws_head(target: &str, key: Option<&str>, protocols: &[&str]) -> Request {
    let mut r = req("GET", target, "", key);
    r.head.upgrade_websocket = true;
    r.head.ws_key = Some("dGhlIHNhbXBsZSBub25jZQ==".into());
    r.head.ws_version = Some("13".into());
    r.head.ws_protocols = protocols.iter().map(|p| p.to_string()).collect();
    r
}

fn upgrade(a: &mut App, r: Request) -> Result<Upgrade, Response> {
    match a.handle_http(r, REST, Instant::now(), &mut Recorder::default()) {
        HttpOutcome::Upgrade(u) => Ok(u),
        HttpOutcome::Respond(r) => Err(r),
        other => panic!("{other:?}"),
    }
}

#[test]
fn websocket_upgrade_rules() {
    let mut a = app(Some("k"));
    // Plain GET on the WebSocket path is no route.
    assert_eq!(call(&mut a, "GET", "/api/ws/s", "", Some("k")).0, 404);
    // Header key, subprotocol key (selected), no key (4001 after the upgrade).
    let u = upgrade(&mut a, ws_head("/api/ws/s", Some("k"), &[])).unwrap();
    assert!(u.authorized);
    assert!(!String::from_utf8_lossy(&u.response).contains("sec-websocket-protocol"));
    let u = upgrade(
        &mut a,
        ws_head("/api/ws/s", None, &["x", "autopoiesis.key.k"]),
    )
    .unwrap();
    assert!(u.authorized);
    assert!(String::from_utf8_lossy(&u.response)
        .contains("sec-websocket-protocol: autopoiesis.key.k\r\n"));
    let u = upgrade(
        &mut a,
        ws_head("/api/ws/s", None, &["autopoiesis.key.nope"]),
    )
    .unwrap();
    assert!(!u.authorized);
    // Never from the query string.
    let u = upgrade(&mut a, ws_head("/api/ws/s?api_key=k&key=k", None, &[])).unwrap();
    assert!(!u.authorized);
    // Bad id, bad since → 400 before the upgrade.
    assert_eq!(
        upgrade(&mut a, ws_head("/api/ws/a%20b", Some("k"), &[]))
            .unwrap_err()
            .status,
        400
    );
    for since in ["-1", "x", "", "1.5"] {
        let r = ws_head(&format!("/api/ws/s?since={since}"), Some("k"), &[]);
        assert_eq!(upgrade(&mut a, r).unwrap_err().status, 400, "since={since}");
    }
    assert!(upgrade(&mut a, ws_head("/api/ws/s?since=0", Some("k"), &[])).is_ok());
    // The session exists once a client connects.
    assert!(a.sessions.get("s").is_some());
    // A browser that offers its key protocol needs it selected even when
    // the key was not needed (no auth) or came in a header.
    let u = upgrade(
        &mut a,
        ws_head("/api/ws/s", Some("k"), &["autopoiesis.key.old"]),
    )
    .unwrap();
    assert!(u.authorized);
    assert!(String::from_utf8_lossy(&u.response)
        .contains("sec-websocket-protocol: autopoiesis.key.old\r\n"));
    let mut open = app(None);
    let u = upgrade(
        &mut open,
        ws_head("/api/ws/s", None, &["chat", "autopoiesis.key.stale"]),
    )
    .unwrap();
    assert!(u.authorized);
    assert!(String::from_utf8_lossy(&u.response)
        .contains("sec-websocket-protocol: autopoiesis.key.stale\r\n"));
    let u = upgrade(&mut open, ws_head("/api/ws/s", None, &["chat"])).unwrap();
    assert!(!String::from_utf8_lossy(&u.response).contains("sec-websocket-protocol"));
}

#[test]
fn websocket_ops() {
    let mut a = app(None);
    let now = Instant::now();
    let (c1, c2) = (ConnId { slot: 1, serial: 1 }, ConnId { slot: 2, serial: 2 });
    a.sessions.get_or_create("s", now).unwrap();
    a.subscribed(c1, "s", None, now, &mut Recorder::default());
    a.subscribed(c2, "s", None, now, &mut Recorder::default());
    let mut sink = Recorder::default();
    for text in [
        r#"{"op":"message","data":{"content":""}}"#,
        r#"{"op":"message","data":{"content":null}}"#,
        "garbage",
        r#"{"op":"dance"}"#,
        r#"{"op":"cancel"}"#,
    ] {
        a.ws_text(c1, "s", text, now, &mut sink);
    }
    a.ws_binary(c1, "s", b"\x01", &mut sink);
    assert_eq!(
        sink.texts_to(c1),
        [
            r#"{"op":"error","data":{"message":"Empty message"}}"#,
            r#"{"op":"error","data":{"message":"Invalid message format"}}"#,
            r#"{"op":"error","data":{"message":"Invalid message format"}}"#,
            r#"{"op":"error","data":{"message":"Unknown op: dance"}}"#,
            r#"{"op":"error","data":{"code":"not_running","message":"No turn is running"}}"#,
            r#"{"op":"error","data":{"message":"Invalid message format"}}"#,
        ]
    );
    assert!(
        sink.texts_to(c2).is_empty(),
        "replies go to the sender only"
    );

    a.ws_text(c2, "s", r#"{"op":"approve","data":{}}"#, now, &mut sink);
    let expected = r#"{"op":"error","data":{"code":"approval_unsupported","message":"Deferred approvals are not supported in server mode yet."},"seq":1}"#;
    assert_eq!(sink.texts_to(c1).last().unwrap(), expected);
    assert_eq!(sink.texts_to(c2), [expected]);

    // A message streams to both; after a REST delete the next message recreates the session.
    a.ws_text(
        c1,
        "s",
        r#"{"op":"message","data":{"content":"hi there"}}"#,
        now,
        &mut sink,
    );
    while a.run_turns(now, &mut sink).is_some() {}
    assert_eq!(sink.texts_to(c2).len(), 4);
    assert_eq!(call(&mut a, "DELETE", "/api/sessions/s", "", None).0, 204);
    a.ws_text(
        c1,
        "s",
        r#"{"op":"message","data":{"content":"back"}}"#,
        now,
        &mut sink,
    );
    while a.run_turns(now, &mut sink).is_some() {}
    assert_eq!(a.sessions.get("s").unwrap().message_count(), 2);
    assert!(sink.texts_to(c2).last().unwrap().contains(r#""done""#));

    a.unsubscribed(c2, "s", now);
    assert_eq!(a.sessions.subscribers("s"), &[c1]);
}

#[test]
fn deleting_a_session_cancels_its_rest_turn() {
    let mut a = app(None);
    let mut sink = Recorder::default();
    let now = Instant::now();
    let long = "w ".repeat(2000);
    let body = json!({"content": long, "session_id": "s"}).to_string();
    assert_eq!(
        a.handle_http(req("POST", "/api/chat", &body, None), REST, now, &mut sink),
        HttpOutcome::Pending
    );
    a.run_turns(now, &mut sink);
    let out = a.handle_http(
        req("DELETE", "/api/sessions/s", "", None),
        ConnId { slot: 0, serial: 0 },
        now,
        &mut sink,
    );
    assert!(matches!(out, HttpOutcome::Respond(r) if r.status == 204));
    assert_eq!(sink.responses.len(), 1);
    assert_eq!(sink.responses[0].1.status, 409);
    assert_eq!(a.run_turns(now, &mut sink), None);
}

#[test]
fn since_parameter() {
    assert_eq!(since_param("since=5"), Some(Ok(5)));
    assert_eq!(since_param("a=1&since=0"), Some(Ok(0)));
    assert_eq!(since_param("a=1"), None);
    assert_eq!(since_param("since"), Some(Err(())));
    assert_eq!(since_param("since=99999999999999999999999"), Some(Err(())));
}

#[test]
fn sweep_runs_on_its_interval() {
    let t0 = Instant::now();
    let mut a = App::new(
        Config {
            limits: crate::config::Limits {
                session_ttl: Some(Duration::from_secs(60)),
                ..Default::default()
            },
            ..Config::default()
        },
        t0,
    );
    assert_eq!(a.next_sweep(), t0 + Duration::from_secs(60));
    a.sessions.get_or_create("s", t0).unwrap();
    assert_eq!(a.sweep(t0 + Duration::from_secs(30)), 0);
    assert_eq!(a.sweep(t0 + Duration::from_secs(61)), 1);
}

pub(super) fn with_origin(mut r: Request, origin: &str, host: &str) -> Request {
    r.head.origin = Some(origin.into());
    r.head.host = Some(host.into());
    r
}

#[test]
fn origin_policy_without_a_key() {
    let config = Config {
        allowed_origins: vec!["http://ui.example:5173".into()],
        ..Config::default()
    };
    let mut a = App::new(config, Instant::now());
    let mut sink = Recorder::default();
    let now = Instant::now();
    let status =
        |a: &mut App, r: Request, sink: &mut Recorder| match a.handle_http(r, REST, now, sink) {
            HttpOutcome::Respond(r) => r.status,
            HttpOutcome::Upgrade(_) => 101,
            HttpOutcome::Pending | HttpOutcome::EventStream(_) | HttpOutcome::Run(_) => 0,
        };
    let host = "127.0.0.1:8420";
    // Same origin, listed origin, no origin: allowed.
    for origin in ["http://127.0.0.1:8420", "http://ui.example:5173"] {
        assert_eq!(
            status(
                &mut a,
                with_origin(req("GET", "/api/sessions", "", None), origin, host),
                &mut sink
            ),
            200
        );
        assert_eq!(
            status(
                &mut a,
                with_origin(ws_head("/api/ws/s", None, &[]), origin, host),
                &mut sink
            ),
            101
        );
    }
    assert_eq!(
        status(&mut a, req("GET", "/api/sessions", "", None), &mut sink),
        200
    );
    // Another site: 403, for REST (a text/plain POST needs no preflight) and WebSocket.
    for origin in ["http://evil.example", "null", "http://127.0.0.1:9999"] {
        let r = with_origin(
            req("POST", "/api/chat", r#"{"content":"x"}"#, None),
            origin,
            host,
        );
        assert_eq!(status(&mut a, r, &mut sink), 403, "{origin}");
        let r = with_origin(ws_head("/api/ws/s", None, &[]), origin, host);
        assert_eq!(status(&mut a, r, &mut sink), 403, "{origin}");
    }
    // Health stays open.
    let r = with_origin(
        req("GET", "/api/health", "", None),
        "http://evil.example",
        host,
    );
    assert_eq!(status(&mut a, r, &mut sink), 200);

    // '*' allows any; a key makes the origin irrelevant.
    let mut any = App::new(
        Config {
            allowed_origins: vec!["*".into()],
            ..Config::default()
        },
        now,
    );
    let r = with_origin(
        req("GET", "/api/sessions", "", None),
        "http://evil.example",
        host,
    );
    assert_eq!(status(&mut any, r, &mut sink), 200);
    let mut keyed = app(Some("k"));
    let r = with_origin(
        req("GET", "/api/sessions", "", Some("k")),
        "http://evil.example",
        host,
    );
    assert_eq!(status(&mut keyed, r, &mut sink), 200);
}
