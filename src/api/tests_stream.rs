//! The routes of "Beyond: what users expect around the API": the chat
//! page, session-routed chat, Server-Sent Events, Bearer auth.

use super::tests::{app, call, chat, req, with_origin, REST};
use super::*;
use crate::sink::Recorder;
use serde_json::Value;

/// Runs a routed chat to completion; returns the deferred (or immediate)
/// response.
fn routed_chat(a: &mut App, id: &str, body: &str) -> (u16, Value) {
    let mut sink = Recorder::default();
    let now = Instant::now();
    let path = format!("/api/sessions/{id}/chat");
    match a.handle_http(req("POST", &path, body, None), REST, now, &mut sink) {
        HttpOutcome::Pending => {}
        HttpOutcome::Respond(r) => return (r.status, serde_json::from_slice(&r.body).unwrap()),
        other => panic!("{other:?}"),
    }
    while a.run_turns(now, &mut sink).is_some() {}
    let (_, r) = sink.responses.pop().expect("a deferred response");
    (r.status, serde_json::from_slice(&r.body).unwrap())
}

fn open_stream(a: &mut App, target: &str, last_event_id: Option<&str>) -> HttpOutcome {
    let mut r = req("GET", target, "", None);
    r.head.last_event_id = last_event_id.map(str::to_owned);
    a.handle_http(r, REST, Instant::now(), &mut Recorder::default())
}

#[test]
fn routed_chat_is_chat_with_the_path_id() {
    let mut a = app(None);
    assert_eq!(
        routed_chat(&mut a, "room-1", r#"{"content":"hello big world"}"#),
        (
            200,
            json!({"session_id": "room-1", "content": "hello big world"})
        )
    );
    // The path wins over a body `session_id`; the same session goes on.
    let (status, body) = routed_chat(
        &mut a,
        "room-1",
        r#"{"content":"again","session_id":"elsewhere"}"#,
    );
    assert_eq!((status, &body["session_id"]), (200, &json!("room-1")));
    assert!(a.sessions.get("elsewhere").is_none());
    assert_eq!(a.sessions.get("room-1").unwrap().message_count(), 4);
    // The same result through POST /api/chat with the id in the body.
    let (status, body) = chat(&mut a, r#"{"content":"x","session_id":"room-1"}"#, None);
    assert_eq!((status, &body["session_id"]), (200, &json!("room-1")));
}

#[test]
fn routed_chat_errors_are_chats() {
    let mut a = app(None);
    let (status, body) = routed_chat(&mut a, "s", r#"{"content": 5}"#);
    assert_eq!(status, 422);
    assert_eq!(body["detail"][0]["loc"], json!(["body", "content"]));
    let (status, _) = routed_chat(&mut a, "s", "");
    assert_eq!(status, 422);
    for bad in ["..", ".", "a%20b"] {
        assert_eq!(
            routed_chat(&mut a, bad, r#"{"content":"x"}"#),
            (400, json!({"detail": "Invalid session id"})),
            "{bad}"
        );
    }
    let (status, _, r) = call(&mut a, "GET", "/api/sessions/s/chat", "", None);
    assert_eq!(status, 405);
    assert!(r.headers.contains(&("allow", "POST".to_string())));
    // The key comes first.
    let mut keyed = app(Some("k"));
    let (status, _, _) = call(&mut keyed, "POST", "/api/sessions/s/chat", "{", None);
    assert_eq!(status, 401);
}

#[test]
fn event_stream_checks_before_it_opens() {
    let mut a = app(None);
    let not_found = |o: HttpOutcome| match o {
        HttpOutcome::Respond(r) => (r.status, serde_json::from_slice::<Value>(&r.body).unwrap()),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        not_found(open_stream(&mut a, "/api/sessions/nope/events", None)),
        (404, json!({"detail": "Session not found"}))
    );
    assert!(a.sessions.get("nope").is_none(), "a stream does not create");
    a.sessions.get_or_create("s", Instant::now()).unwrap();
    assert_eq!(
        open_stream(&mut a, "/api/sessions/s/events", None),
        HttpOutcome::EventStream(EventStream {
            session_id: "s".into(),
            since: None
        })
    );
    assert_eq!(
        open_stream(&mut a, "/api/sessions/s/events?since=3", None),
        HttpOutcome::EventStream(EventStream {
            session_id: "s".into(),
            since: Some(3)
        })
    );
    // Last-Event-ID (an EventSource reconnecting) wins over the query.
    assert_eq!(
        open_stream(&mut a, "/api/sessions/s/events?since=3", Some("7")),
        HttpOutcome::EventStream(EventStream {
            session_id: "s".into(),
            since: Some(7)
        })
    );
    for (target, last) in [
        ("/api/sessions/s/events?since=-1", None),
        ("/api/sessions/s/events?since=x", None),
        ("/api/sessions/s/events", Some("")),
        ("/api/sessions/s/events", Some("1.5")),
        ("/api/sessions/s/events", Some("99999999999999999999999")),
    ] {
        let (status, _) = not_found(open_stream(&mut a, target, last));
        assert_eq!(status, 400, "{target} {last:?}");
    }
    assert_eq!(
        not_found(open_stream(&mut a, "/api/sessions/../events", None)).0,
        400
    );
    let (status, _, r) = call(&mut a, "POST", "/api/sessions/s/events", "", None);
    assert_eq!(status, 405);
    assert!(r.headers.contains(&("allow", "GET".to_string())));
}

#[test]
fn event_stream_auth_and_origin_are_rests() {
    let mut keyed = app(Some("k"));
    keyed.sessions.get_or_create("s", Instant::now()).unwrap();
    let (status, _, _) = call(&mut keyed, "GET", "/api/sessions/s/events", "", None);
    assert_eq!(status, 401);
    let mut r = req("GET", "/api/sessions/s/events", "", None);
    r.head.bearer = Some(b"k".to_vec());
    let outcome = keyed.handle_http(r, REST, Instant::now(), &mut Recorder::default());
    assert!(
        matches!(outcome, HttpOutcome::EventStream(_)),
        "{outcome:?}"
    );

    let mut open = app(None);
    open.sessions.get_or_create("s", Instant::now()).unwrap();
    let r = with_origin(
        req("GET", "/api/sessions/s/events", "", None),
        "http://evil.example",
        "127.0.0.1:8420",
    );
    match open.handle_http(r, REST, Instant::now(), &mut Recorder::default()) {
        HttpOutcome::Respond(r) => assert_eq!(r.status, 403),
        other => panic!("{other:?}"),
    }
}

#[test]
fn bearer_is_accepted_wherever_the_key_is() {
    let mut a = app(Some("s3cret"));
    let mut r = req("GET", "/api/sessions", "", None);
    r.head.bearer = Some(b"s3cret".to_vec());
    match a.handle_http(r, REST, Instant::now(), &mut Recorder::default()) {
        HttpOutcome::Respond(r) => assert_eq!(r.status, 200),
        other => panic!("{other:?}"),
    }
    let mut r = req("GET", "/api/sessions", "", None);
    r.head.bearer = Some(b"wrong".to_vec());
    match a.handle_http(r, REST, Instant::now(), &mut Recorder::default()) {
        HttpOutcome::Respond(r) => assert_eq!(r.status, 401),
        other => panic!("{other:?}"),
    }
}

#[test]
fn stream_replays_after_since_or_resyncs() {
    let mut a = app(None);
    let now = Instant::now();
    let mut sink = Recorder::default();
    let (status, _) = routed_chat(&mut a, "s", r#"{"content":"a b"}"#);
    assert_eq!(status, 200); // seq 1..=3: "a ", "b", done
    let c = ConnId { slot: 1, serial: 1 };
    a.subscribed(c, "s", Some(1), now, &mut sink);
    let texts = sink.texts_to(c);
    assert_eq!(texts.len(), 2);
    assert!(texts[0].contains(r#""seq":2"#) && texts[1].contains(r#""seq":3"#));
    // Above the latest seq: the client saw another incarnation.
    let d = ConnId { slot: 2, serial: 2 };
    a.subscribed(d, "s", Some(9), now, &mut sink);
    assert_eq!(sink.texts_to(d), [r#"{"op":"resync","data":{"since":9}}"#]);
    // Equal to the latest: nothing to replay.
    let e = ConnId { slot: 3, serial: 3 };
    a.subscribed(e, "s", Some(3), now, &mut sink);
    assert!(sink.texts_to(e).is_empty());
    // Subscribed: the next event reaches all three.
    routed_chat(&mut a, "s", r#"{"content":"z"}"#);
    assert_eq!(a.sessions.subscribers("s").len(), 3);
}

#[test]
fn deleting_a_session_ends_its_streams() {
    let mut a = app(None);
    let now = Instant::now();
    a.sessions.get_or_create("s", now).unwrap();
    let c = ConnId { slot: 1, serial: 1 };
    a.subscribed(c, "s", None, now, &mut Recorder::default());
    let mut sink = Recorder::default();
    let r = req("DELETE", "/api/sessions/s", "", None);
    match a.handle_http(r, REST, now, &mut sink) {
        HttpOutcome::Respond(r) => assert_eq!(r.status, 204),
        other => panic!("{other:?}"),
    }
    assert_eq!(sink.gone, [c]);
}

#[test]
fn the_page_is_public_html_with_a_policy() {
    let mut a = app(Some("k"));
    let (status, _, r) = call_raw(&mut a, "GET", "/");
    assert_eq!(status, 200);
    assert_eq!(r.content_type, crate::http::response::HTML);
    assert!(r.body.starts_with(b"<!doctype html>"));
    let csp = r
        .headers
        .iter()
        .find(|(n, _)| *n == "content-security-policy")
        .map(|(_, v)| v.as_str())
        .unwrap();
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    let (status, _, r) = call_raw(&mut a, "POST", "/");
    assert_eq!(status, 405);
    assert!(r.headers.contains(&("allow", "GET".to_string())));
}

/// `call` for a body that is not JSON.
fn call_raw(a: &mut App, method: &str, target: &str) -> (u16, (), Response) {
    match a.handle_http(
        req(method, target, "", None),
        REST,
        Instant::now(),
        &mut Recorder::default(),
    ) {
        HttpOutcome::Respond(r) => (r.status, (), r),
        other => panic!("{other:?}"),
    }
}

fn sharded() -> App {
    let config = Config {
        id_from_header: Some("X-Request-Id".into()),
        ..Config::default()
    };
    App::new(config, Instant::now())
}

fn with_hint(mut r: Request, hint: &str) -> Request {
    r.head.id_hint = Some(hint.into());
    r
}

fn respond(a: &mut App, r: Request) -> (u16, Value) {
    let mut sink = Recorder::default();
    let now = Instant::now();
    match a.handle_http(r, REST, now, &mut sink) {
        HttpOutcome::Respond(r) => (r.status, serde_json::from_slice(&r.body).unwrap()),
        HttpOutcome::Pending => {
            while a.run_turns(now, &mut sink).is_some() {}
            let (_, r) = sink.responses.pop().expect("a deferred response");
            (r.status, serde_json::from_slice(&r.body).unwrap())
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn id_from_header_names_new_sessions() {
    let mut a = sharded();
    let hint = "0123456789abcdef0123456789abcdef";
    let (status, info) = respond(
        &mut a,
        with_hint(req("POST", "/api/sessions", "", None), hint),
    );
    assert_eq!((status, &info["id"]), (201, &json!(hint)));
    // In use: a random id instead, never the same session twice.
    let (status, info) = respond(
        &mut a,
        with_hint(req("POST", "/api/sessions", "", None), hint),
    );
    assert_eq!(status, 201);
    assert_ne!(info["id"], json!(hint));
    // Not a valid id: a random one.
    let (_, info) = respond(
        &mut a,
        with_hint(req("POST", "/api/sessions", "", None), ".."),
    );
    assert_eq!(info["id"].as_str().unwrap().len(), 32);
    // A chat without a session id takes the hint too.
    let r = with_hint(
        req("POST", "/api/chat", r#"{"content":"hi"}"#, None),
        "req-7",
    );
    assert_eq!(
        respond(&mut a, r),
        (200, json!({"session_id": "req-7", "content": "hi"}))
    );
}

#[test]
fn id_from_header_refuses_to_fork_a_session_named_in_a_body() {
    let mut a = sharded();
    let (status, body) = respond(
        &mut a,
        req(
            "POST",
            "/api/chat",
            r#"{"content":"x","session_id":"elsewhere"}"#,
            None,
        ),
    );
    assert_eq!(status, 421);
    assert_eq!(
        body,
        json!({"detail": "Session not on this instance: use POST /api/sessions/{id}/chat"})
    );
    assert!(a.sessions.get("elsewhere").is_none());
    // The routed form creates it; then the body form finds it here.
    assert_eq!(
        routed_chat(&mut a, "elsewhere", r#"{"content":"x"}"#).0,
        200
    );
    let (status, _) = respond(
        &mut a,
        req(
            "POST",
            "/api/chat",
            r#"{"content":"y","session_id":"elsewhere"}"#,
            None,
        ),
    );
    assert_eq!(status, 200);
}

#[test]
fn without_the_flag_the_header_is_ignored() {
    let mut a = app(None);
    let r = with_hint(req("POST", "/api/sessions", "", None), "chosen");
    let (status, info) = respond(&mut a, r);
    assert_eq!(status, 201);
    assert_ne!(info["id"], json!("chosen"));
    let r = req(
        "POST",
        "/api/chat",
        r#"{"content":"x","session_id":"new-one"}"#,
        None,
    );
    assert_eq!(
        respond(&mut a, r).0,
        200,
        "compat: an unknown id is created"
    );
}
