//! Every REST endpoint and error of the contract, against the real binary,
//! with auth off and on.

mod common;
use common::*;
use serde_json::json;

#[test]
fn health() {
    let s = Server::start(&[]);
    let r = s.get("/api/health");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.json(),
        json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")})
    );
}

#[test]
fn sessions_create_list_history_delete() {
    let s = Server::start(&[]);
    let a = s.request("POST", "/api/sessions", Some("{\"ignored\": true"), &[]);
    assert_eq!(a.status, 201);
    let a = a.json();
    let id = a["id"].as_str().unwrap().to_owned();
    assert!(
        id.len() == 32
            && id
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    assert_eq!(a["message_count"], 0);
    let created = a["created_at"].as_str().unwrap();
    // 2026-02-16T09:30:12.123456Z
    assert_eq!(created.len(), 27);
    assert_eq!(&created[10..11], "T");
    assert_eq!(&created[19..20], ".");
    assert!(created.ends_with('Z'));

    let b = s.post("/api/sessions", "").json();
    let list = s.get("/api/sessions");
    assert_eq!(list.status, 200);
    assert_eq!(list.json(), json!([a, b]), "creation order");

    let h = s.get(&format!("/api/sessions/{id}/history"));
    assert_eq!(
        (h.status, h.json()),
        (200, json!({"session_id": id, "messages": []}))
    );

    let d = s.request("DELETE", &format!("/api/sessions/{id}"), None, &[]);
    assert_eq!(d.status, 204);
    assert!(d.body.is_empty());
    let d = s.request("DELETE", &format!("/api/sessions/{id}"), None, &[]);
    assert_eq!(
        (d.status, d.json()),
        (404, json!({"detail": "Session not found"}))
    );
    let h = s.get(&format!("/api/sessions/{id}/history"));
    assert_eq!(
        (h.status, h.json()),
        (404, json!({"detail": "Session not found"}))
    );
    assert_eq!(s.get("/api/sessions").json(), json!([b]));
}

#[test]
fn chat_turns_and_history() {
    let s = Server::start(&[]);
    let r = s.post("/api/chat", r#"{"content":"hello big world"}"#);
    assert_eq!(r.status, 200);
    let body = r.json();
    assert_eq!(body["content"], "hello big world");
    let id = body["session_id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 32);
    // Exactly the two fields, in the original's order.
    assert!(String::from_utf8_lossy(&r.body).starts_with(r#"{"session_id":"#));

    let r = s.post(
        "/api/chat",
        &json!({"content": "second", "session_id": id}).to_string(),
    );
    assert_eq!(r.json(), json!({"session_id": id, "content": "second"}));
    for none in [json!(null), json!("")] {
        let r = s
            .post(
                "/api/chat",
                &json!({"content": "x", "session_id": none}).to_string(),
            )
            .json();
        assert_ne!(r["session_id"], json!(id));
        assert_eq!(r["session_id"].as_str().unwrap().len(), 32);
    }
    let r = s
        .post(
            "/api/chat",
            r#"{"content":"mine","session_id":"my-session.1"}"#,
        )
        .json();
    assert_eq!(r["session_id"], "my-session.1");

    let h = s.get(&format!("/api/sessions/{id}/history")).json();
    let msgs = h["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 4);
    assert_eq!(msgs[0]["kind"], "request");
    assert_eq!(
        msgs[0]["parts"][0],
        json!({"part_kind": "user-prompt", "content": "hello big world", "timestamp": msgs[0]["parts"][0]["timestamp"]})
    );
    assert_eq!(msgs[1]["kind"], "response");
    assert_eq!(
        msgs[1]["parts"],
        json!([{"part_kind": "text", "content": "hello big world"}])
    );
    assert_eq!(msgs[1]["model_name"], "echo");
    assert!(msgs[1]["timestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(msgs[3]["parts"][0]["content"], "second");

    let list = s.get("/api/sessions").json();
    let info = list
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == json!(id))
        .unwrap();
    assert_eq!(info["message_count"], 4);
}

#[test]
fn chat_validation_errors() {
    let s = Server::start(&[]);
    let r = s.post("/api/chat", "");
    assert_eq!(r.status, 422);
    assert_eq!(
        r.json(),
        json!({"detail": [{"type": "missing", "loc": ["body"], "msg": "Field required", "input": null}]})
    );
    let r = s.post("/api/chat", r#"{"content": 42}"#);
    assert_eq!(r.status, 422);
    assert_eq!(
        r.json(),
        json!({"detail": [{"type": "string_type", "loc": ["body", "content"], "msg": "Input should be a valid string", "input": 42}]})
    );
    let r = s.post("/api/chat", r#"{"session_id": "x"}"#);
    assert_eq!(r.status, 422);
    assert_eq!(r.json()["detail"][0]["loc"], json!(["body", "content"]));
    let r = s.post("/api/chat", "{not json");
    assert_eq!(r.status, 422);
    assert_eq!(r.json()["detail"][0]["type"], "json_invalid");
    // Parsed as JSON whatever the Content-Type says.
    let r = s.request(
        "POST",
        "/api/chat",
        Some(r#"{"content":"typed"}"#),
        &[("Content-Type", "text/plain")],
    );
    assert_eq!(
        (r.status, r.json()["content"].clone()),
        (200, json!("typed"))
    );
    let r = s.post("/api/chat", r#"{"content":"x","session_id":"bad id!"}"#);
    assert_eq!(
        (r.status, r.json()),
        (400, json!({"detail": "Invalid session id"}))
    );
}

#[test]
fn not_found_method_not_allowed_and_invalid_ids() {
    let s = Server::start(&[]);
    for path in [
        "/index.html",
        "/api",
        "/api/unknown",
        "/api/sessions/x/y/z",
        "/docs/",
        "/openapi.yaml",
        "/api/openapi.json",
    ] {
        let r = s.get(path);
        assert_eq!(
            (r.status, r.json()),
            (404, json!({"detail": "Not Found"})),
            "{path}"
        );
    }
    for (method, path, allow) in [
        ("POST", "/api/health", "GET"),
        ("DELETE", "/api/sessions", "GET, POST"),
        ("GET", "/api/sessions/abc", "DELETE"),
        ("DELETE", "/api/sessions/abc/history", "GET"),
        ("GET", "/api/chat", "POST"),
        ("GET", "/api/sessions/abc/chat", "POST"),
        ("DELETE", "/api/sessions/abc/events", "GET"),
        ("POST", "/", "GET"),
        ("POST", "/openapi.json", "GET"),
        ("DELETE", "/asyncapi.json", "GET"),
        ("PUT", "/docs", "GET"),
    ] {
        let r = s.request(method, path, None, &[]);
        assert_eq!(
            (r.status, r.json()),
            (405, json!({"detail": "Method Not Allowed"})),
            "{method} {path}"
        );
        assert_eq!(r.header("allow"), Some(allow));
    }
    let long = "a".repeat(129);
    for path in [
        "/api/sessions/a%20b/history".to_string(),
        format!("/api/sessions/{long}/history"),
    ] {
        let r = s.get(&path);
        assert_eq!(
            (r.status, r.json()),
            (400, json!({"detail": "Invalid session id"}))
        );
    }
    let r = s.request("DELETE", "/api/sessions/%24x", None, &[]);
    assert_eq!(r.status, 400);
}

#[test]
fn auth_on() {
    let s = Server::start_with_env(&[], &[("AUTOPOIESIS_API_KEY", "s3cret")]);
    let unauthorized = json!({"detail": "Invalid or missing API key"});
    // Health stays open.
    assert_eq!(s.get("/api/health").status, 200);
    // 401 comes before 404 (unknown session), 422 (bad body) and 400 (bad id).
    for (method, path, body) in [
        ("POST", "/api/sessions", None),
        ("GET", "/api/sessions", None),
        ("GET", "/api/sessions/nope/history", None),
        ("DELETE", "/api/sessions/nope", None),
        ("POST", "/api/chat", Some("garbage")),
        ("GET", "/api/sessions/bad%20id/history", None),
    ] {
        for headers in [
            &[][..],
            &[("X-API-Key", "wrong")],
            &[("X-API-Key", "s3cre")],
            &[("x-api-key", "S3CRET")],
        ] {
            let r = s.request(method, path, body, headers);
            assert_eq!(
                (r.status, r.json()),
                (401, unauthorized.clone()),
                "{method} {path} {headers:?}"
            );
            assert!(!String::from_utf8_lossy(&r.body).contains("s3cret"));
        }
    }
    // An unknown path is 404 with or without the key.
    assert_eq!(s.get("/api/nope").status, 404);
    assert_eq!(
        s.request("GET", "/api/nope", None, &[("X-API-Key", "s3cret")])
            .status,
        404
    );
    // With the key everything works; the header name is case-insensitive.
    let key = [("x-api-key", "s3cret")];
    let created = s.request("POST", "/api/sessions", None, &key);
    assert_eq!(created.status, 201);
    let id = created.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(s.request("GET", "/api/sessions", None, &key).status, 200);
    assert_eq!(
        s.request("GET", "/api/sessions/nope/history", None, &key)
            .status,
        404
    );
    assert_eq!(
        s.request("POST", "/api/chat", Some("garbage"), &key).status,
        422
    );
    let r = s.request(
        "POST",
        "/api/chat",
        Some(&json!({"content": "hi", "session_id": id}).to_string()),
        &key,
    );
    assert_eq!(r.json(), json!({"session_id": id, "content": "hi"}));
    assert_eq!(
        s.request("GET", &format!("/api/sessions/{id}/history"), None, &key)
            .status,
        200
    );
    assert_eq!(
        s.request("DELETE", &format!("/api/sessions/{id}"), None, &key)
            .status,
        204
    );
    // Never from the query string.
    assert_eq!(
        s.get("/api/sessions?api_key=s3cret&x_api_key=s3cret&key=s3cret")
            .status,
        401
    );
}

#[test]
fn documents_are_public() {
    // Auth on, and a foreign Origin: the documents still need neither.
    let s = Server::start_with_env(&[], &[("AUTOPOIESIS_API_KEY", "s3cret")]);
    for (path, content_type) in [
        ("/openapi.json", "application/json"),
        ("/asyncapi.json", "application/json"),
        ("/docs", "text/html; charset=utf-8"),
    ] {
        let r = s.request("GET", path, None, &[("Origin", "http://elsewhere.example")]);
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), Some(content_type), "{path}");
    }
    let doc = s.get("/openapi.json").json();
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(doc["paths"]["/api/sessions/{id}/history"]["get"].is_object());
    let doc = s.get("/asyncapi.json").json();
    assert_eq!(doc["asyncapi"], "3.0.0");
    let page = s.get("/docs");
    let csp = page.header("content-security-policy").unwrap();
    assert!(csp.starts_with("default-src 'none';"), "{csp}");
    assert!(String::from_utf8_lossy(&page.body).contains("/openapi.json"));
}

#[test]
fn empty_api_key_env_means_auth_off() {
    let s = Server::start_with_env(&[], &[("AUTOPOIESIS_API_KEY", "")]);
    assert_eq!(s.get("/api/sessions").status, 200);
}

#[test]
fn session_cap_is_503() {
    let s = Server::start(&["--max-sessions", "2"]);
    assert_eq!(s.post("/api/sessions", "").status, 201);
    assert_eq!(s.post("/api/chat", r#"{"content":"x"}"#).status, 200);
    let r = s.post("/api/sessions", "");
    assert_eq!(
        (r.status, r.json()),
        (503, json!({"detail": "Too many sessions"}))
    );
    assert_eq!(s.post("/api/chat", r#"{"content":"x"}"#).status, 503);
}

#[test]
fn stale_sessions_are_swept() {
    let s = Server::start(&["--session-ttl", "1"]);
    let id = s.post("/api/sessions", "").json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Bounded wait for the sweep (every TTL second); no fixed sleep decides the result.
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    loop {
        // Listing does not count as activity on a session (reading its history would).
        if s.get("/api/sessions").json() == json!([]) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "session never swept");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(s.get(&format!("/api/sessions/{id}/history")).status, 404);
}

/// A response bigger than what one loop iteration writes to a socket
/// (256 KiB) goes out over several iterations, whole and in order: on a
/// kept-alive connection (the next answer follows it) and on one that
/// closes after it.
#[test]
fn a_big_history_arrives_whole_over_several_iterations() {
    use std::io::Write;
    let s = Server::start(&[]);
    let word = "word ".repeat(150_000); // 750 KB per message
    let mut c = s.connect();
    for _ in 0..2 {
        send_routed_chat(&mut c, "big", &word);
        assert_eq!(read_response(&mut c).unwrap().status, 200);
    }
    // Kept alive: the history, then a health check on the same connection.
    c.write_all(&raw_request("GET", "/api/sessions/big/history", None, &[]))
        .unwrap();
    c.write_all(&raw_request("GET", "/api/health", None, &[]))
        .unwrap();
    let h = read_response(&mut c).unwrap();
    assert_eq!(h.status, 200);
    assert!(h.body.len() > 3_000_000, "{}", h.body.len());
    let messages = h.json()["messages"].as_array().unwrap().clone();
    assert_eq!(messages.len(), 4);
    assert_eq!(messages[3]["parts"][0]["content"], word.as_str());
    assert_eq!(read_response(&mut c).unwrap().status, 200);
    // Closed after it: everything before the EOF.
    assert_eq!(body_before_close(&s, "big"), h.body);
}

/// A history of many short messages is produced a slice at a time as the
/// socket takes it: whole, in order, with a pipelined request after it
/// answered only after it, and on a connection that closes after it.
#[test]
fn a_history_of_many_short_messages_arrives_whole_and_in_order() {
    use std::io::Write;
    let s = Server::start(&[]);
    let mut c = s.connect();
    // 400 turns of ~1 KB: ~900 KB of history in 800 messages.
    let turns = 400;
    let content = |i: usize| format!("turn {i} {}", "word ".repeat(200));
    for batch in (0..turns).collect::<Vec<_>>().chunks(50) {
        for &i in batch {
            send_routed_chat(&mut c, "many", &content(i));
        }
        for _ in batch {
            assert_eq!(read_response(&mut c).unwrap().status, 200);
        }
    }
    // Twice, and a health check, written at once.
    let mut req = raw_request("GET", "/api/sessions/many/history", None, &[]);
    req.extend(raw_request("GET", "/api/health", None, &[]));
    req.extend(raw_request("GET", "/api/sessions/many/history", None, &[]));
    c.write_all(&req).unwrap();
    let h = read_response(&mut c).unwrap();
    assert_eq!(h.status, 200);
    assert!(h.body.len() > 800_000, "{}", h.body.len());
    let v = h.json();
    assert_eq!(v["session_id"], "many");
    let messages = v["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2 * turns);
    for (i, pair) in messages.chunks(2).enumerate() {
        assert_eq!(pair[0]["parts"][0]["content"], content(i).as_str());
    }
    assert_eq!(read_response(&mut c).unwrap().json()["status"], "ok");
    assert_eq!(read_response(&mut c).unwrap().body, h.body);
    // Closed after it: everything before the EOF.
    assert_eq!(body_before_close(&s, "many"), h.body);
}

/// Session `id`'s history body read on a connection the server closes
/// after it (`Connection: close`): all that arrived before the EOF.
fn body_before_close(s: &Server, id: &str) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut c = s.connect();
    let path = format!("/api/sessions/{id}/history");
    c.write_all(&raw_request("GET", &path, None, &[("Connection", "close")]))
        .unwrap();
    let mut all = Vec::new();
    c.read_to_end(&mut all).unwrap();
    let body_at = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    all.split_off(body_at)
}
