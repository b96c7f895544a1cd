use super::*;
use crate::api::ROUTES;
use serde_json::Value;
use std::collections::BTreeSet;

fn parse(text: &str) -> Value {
    serde_json::from_str(text).expect("the document is JSON")
}

const HTTP_METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// The OpenAPI `paths` are exactly the router's templates, each with
/// exactly the methods the router serves (and names in `Allow`).
#[test]
fn openapi_paths_are_the_routers_routes() {
    let doc = parse(OPENAPI_JSON);
    let paths = doc["paths"].as_object().expect("paths");
    let documented: BTreeSet<&str> = paths.keys().map(String::as_str).collect();
    let routed: BTreeSet<&str> = ROUTES.iter().map(|(t, _)| *t).collect();
    assert_eq!(documented, routed, "OpenAPI paths vs the router's ROUTES");
    for (template, methods) in ROUTES {
        let item = paths[*template].as_object().expect("path item");
        let documented: BTreeSet<String> = item
            .keys()
            .filter(|k| HTTP_METHODS.contains(&k.as_str()))
            .map(|k| k.to_ascii_uppercase())
            .collect();
        let served: BTreeSet<String> = methods.iter().map(|m| (*m).to_owned()).collect();
        assert_eq!(documented, served, "methods of {template}");
    }
}

/// Every operation documents the answers every request may get, and the
/// guarded ones the auth and Origin refusals.
#[test]
fn openapi_operations_document_the_shared_errors() {
    let doc = parse(OPENAPI_JSON);
    for (template, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            let responses = op["responses"].as_object().expect("responses");
            for status in ["400", "408", "413", "431", "501", "503"] {
                assert!(
                    responses.contains_key(status),
                    "{method} {template}: no {status}"
                );
            }
            let public = op.get("security") == Some(&Value::Array(Vec::new()));
            let upgrade = template.starts_with("/api/ws/");
            assert_eq!(
                responses.contains_key("401"),
                !public && !upgrade,
                "{method} {template}: 401 (the upgrade answers 4001 instead)"
            );
            assert_eq!(
                responses.contains_key("403"),
                !public,
                "{method} {template}: 403"
            );
            assert!(op["operationId"].is_string(), "{method} {template}");
        }
    }
}

/// Every `"$ref"` in `doc` points at something in it.
fn assert_refs_resolve(doc: &Value) {
    fn walk(v: &Value, root: &Value, n: &mut usize) {
        match v {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get("$ref") {
                    let pointer = r.strip_prefix('#').expect("a local $ref");
                    assert!(root.pointer(pointer).is_some(), "{r} resolves to nothing");
                    *n += 1;
                }
                map.values().for_each(|v| walk(v, root, n));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, root, n)),
            _ => {}
        }
    }
    let mut n = 0;
    walk(doc, doc, &mut n);
    assert!(n > 10, "{n} refs");
}

#[test]
fn documents_carry_the_crate_version_and_resolve() {
    let openapi = parse(OPENAPI_JSON);
    assert_eq!(openapi["openapi"], "3.1.0");
    assert_eq!(
        openapi["info"]["version"],
        env!("CARGO_PKG_VERSION"),
        "bump info.version in src/docs/openapi.json with the crate"
    );
    assert_refs_resolve(&openapi);
    let asyncapi = parse(ASYNCAPI_JSON);
    assert_eq!(asyncapi["asyncapi"], "3.0.0");
    assert_eq!(
        asyncapi["info"]["version"],
        env!("CARGO_PKG_VERSION"),
        "bump info.version in src/docs/asyncapi.json with the crate"
    );
    assert_refs_resolve(&asyncapi);
}

/// The AsyncAPI messages are the ops the server takes and sends: each
/// client example parses as the op it documents, and each server message
/// is one the contract names.
#[test]
fn asyncapi_messages_are_the_wire_ops() {
    use crate::ws::{parse_client_op, ClientOp};
    let doc = parse(ASYNCAPI_JSON);
    let channel = &doc["channels"]["session"];
    assert_eq!(channel["address"], "/api/ws/{session_id}");
    assert_eq!(
        doc["channels"]["events"]["address"],
        "/api/sessions/{session_id}/events"
    );
    let messages = doc["components"]["messages"].as_object().expect("messages");
    let name_of = |key: &str| {
        let m = &channel["messages"][key]["$ref"];
        let name = m.as_str().expect("a $ref").rsplit('/').next().unwrap_or("");
        messages[name].clone()
    };
    for (op, want) in [
        ("message", ClientOp::Message("hello big world".into())),
        (
            "approve",
            ClientOp::Approve(Some(serde_json::json!({
                "call_1": true,
                "call_2": {"approved": false, "message": "Not that file."}
            }))),
        ),
        ("cancel", ClientOp::Cancel),
    ] {
        let m = name_of(op);
        assert_eq!(m["name"], op);
        let example = m["examples"][0]["payload"].to_string();
        assert_eq!(parse_client_op(&example), want, "{example}");
    }
    let mut sent = BTreeSet::new();
    let mut received = BTreeSet::new();
    for op in doc["operations"].as_object().expect("operations").values() {
        if op["channel"]["$ref"] != "#/channels/session" {
            continue;
        }
        for m in op["messages"].as_array().expect("messages") {
            let key = m["$ref"].as_str().expect("ref").rsplit('/').next();
            let key = key.unwrap_or("").to_owned();
            match op["action"].as_str() {
                Some("send") => sent.insert(key),
                Some("receive") => received.insert(key),
                other => panic!("action {other:?}"),
            };
        }
    }
    let set = |s: &[&str]| s.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<_>>();
    assert_eq!(received, set(&["message", "approve", "cancel"]));
    assert_eq!(
        sent,
        set(&[
            "token",
            "thinking",
            "thinking_done",
            "tool_call",
            "tool_result",
            "done",
            "approval_required",
            "approval_resolved",
            "error",
            "resync"
        ])
    );
    // Every example's `op` is its message's name.
    for (key, m) in messages {
        for ex in m["examples"].as_array().expect("examples") {
            assert_eq!(ex["payload"]["op"], m["name"], "{key}");
        }
    }
    let codes = &messages["Error"]["payload"]["properties"]["data"]["properties"]["code"]["enum"];
    for code in [
        "busy",
        "cancelled",
        "not_running",
        "approval_unsupported",
        "approval_pending",
        "approval_mismatch",
    ] {
        assert!(
            codes.as_array().expect("enum").iter().any(|c| c == code),
            "{code}"
        );
    }
}

#[test]
fn the_docs_page_is_small_self_contained_and_allowed_by_its_policy() {
    assert!(DOCS_HTML.len() <= 20 * 1024, "{} bytes", DOCS_HTML.len());
    for needle in ["http://", "https://", "//cdn", "<link", " src=", " style="] {
        assert!(!DOCS_HTML.contains(needle), "page contains {needle:?}");
    }
    // No inline event handler attribute (` onclick=` and the like).
    for (i, _) in DOCS_HTML.match_indices(" on") {
        let rest = &DOCS_HTML[i + 3..];
        let name_len = rest.bytes().take_while(u8::is_ascii_lowercase).count();
        assert!(
            !rest[name_len..].starts_with('='),
            "inline handler at byte {i}"
        );
    }
    for needle in ["eval(", "innerHTML", "javascript:"] {
        assert!(!DOCS_HTML.contains(needle), "page contains {needle:?}");
    }
    assert_eq!(DOCS_HTML.matches("<script").count(), 1);
    assert_eq!(DOCS_HTML.matches("<script>").count(), 1);
    assert_eq!(DOCS_HTML.matches("<style").count(), 1);
    assert_eq!(DOCS_HTML.matches("<style>").count(), 1);
    assert!(DOCS_HTML.contains("load(\"/openapi.json\")"));
    assert!(DOCS_HTML.contains("load(\"/asyncapi.json\")"));
    let response = page();
    let csp = response
        .headers
        .iter()
        .find(|(n, _)| *n == "content-security-policy")
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    assert!(csp.starts_with("default-src 'none';"), "{csp}");
    assert!(csp.contains("script-src 'sha256-"), "{csp}");
    assert!(csp.contains("style-src 'sha256-"), "{csp}");
    assert!(csp.contains("connect-src 'self'"), "{csp}");
}

#[test]
fn documents_are_served_as_written() {
    let r = openapi();
    assert_eq!((r.status, r.content_type), (200, JSON));
    assert_eq!(r.body, OPENAPI_JSON.as_bytes());
    let r = asyncapi();
    assert_eq!((r.status, r.content_type), (200, JSON));
    assert_eq!(r.body, ASYNCAPI_JSON.as_bytes());
    let r = page();
    assert_eq!((r.status, r.content_type), (200, HTML));
}

/// `docs/api.md`, the hand-written reference, names a heading for each
/// route (`` `GET /api/health` ``), WebSocket client op (``op `message` ``)
/// and server event (``event `token` ``).
const API_MD: &str = include_str!("../../docs/api.md");

/// The entries (`METHOD /path`, `op NAME`, `event NAME`) of api.md's headings.
fn api_md_entries() -> BTreeSet<String> {
    let mut entries = BTreeSet::new();
    for line in API_MD.lines() {
        let Some(text) = line.strip_prefix('#') else {
            continue;
        };
        let text = text.trim_start_matches('#').trim();
        let code = |rest: &str| -> Option<String> {
            let inner = rest.strip_prefix('`')?.strip_suffix('`')?;
            (!inner.contains('`')).then(|| inner.to_owned())
        };
        if let Some(name) = text.strip_prefix("op ").and_then(code) {
            entries.insert(format!("op {name}"));
        } else if let Some(name) = text.strip_prefix("event ").and_then(code) {
            entries.insert(format!("event {name}"));
        } else if let Some(route) = code(text) {
            let (method, path) = route.split_once(' ').unwrap_or(("", ""));
            let is_method = !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase());
            if is_method && path.starts_with('/') {
                entries.insert(route);
            }
        }
    }
    entries
}

/// The same entries from the served documents: every OpenAPI operation,
/// and every AsyncAPI message the server receives (ops) or sends (events).
fn document_entries() -> BTreeSet<String> {
    let mut entries = BTreeSet::new();
    let openapi = parse(OPENAPI_JSON);
    for (template, item) in openapi["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            if HTTP_METHODS.contains(&method.as_str()) {
                entries.insert(format!("{} {template}", method.to_ascii_uppercase()));
            }
        }
    }
    let asyncapi = parse(ASYNCAPI_JSON);
    fn resolve<'a>(doc: &'a Value, mut v: &'a Value) -> &'a Value {
        while let Some(r) = v["$ref"].as_str() {
            v = doc
                .pointer(r.trim_start_matches('#'))
                .expect("a $ref that resolves");
        }
        v
    }
    for op in asyncapi["operations"]
        .as_object()
        .expect("operations")
        .values()
    {
        let kind = match op["action"].as_str() {
            Some("receive") => "op",
            Some("send") => "event",
            other => panic!("action {other:?}"),
        };
        for m in op["messages"].as_array().expect("messages") {
            let name = resolve(&asyncapi, m)["name"]
                .as_str()
                .expect("a name")
                .to_owned();
            entries.insert(format!("{kind} {name}"));
        }
    }
    entries
}

/// Every route and op of /openapi.json and /asyncapi.json has its heading
/// in docs/api.md, and every such heading is in the documents.
#[test]
fn api_md_names_exactly_the_documents_routes_ops_and_events() {
    let documented = document_entries();
    assert!(documented.contains("GET /api/health"));
    assert!(documented.contains("op message"));
    assert!(documented.contains("event token"));
    let written = api_md_entries();
    let missing: Vec<_> = documented.difference(&written).collect();
    let extra: Vec<_> = written.difference(&documented).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "docs/api.md headings vs the documents: missing {missing:?}, not in the documents {extra:?}"
    );
}
