//! The approval routes and the `approve` op, over an agent that asks.

use super::tests::{call, req, REST};
use super::*;
use crate::agent::AgentEvent;
use crate::approvals::PendingCall;
use crate::config::AgentChoice;
use crate::sink::Recorder;
use serde_json::Value;

const WS: ConnId = ConnId { slot: 1, serial: 1 };
const OTHER: ConnId = ConnId { slot: 2, serial: 2 };

fn agent_app() -> App {
    let mut config = Config::default();
    config.agent.choice = AgentChoice::Exec;
    App::new(config, Instant::now())
}

fn calls() -> Vec<PendingCall> {
    ["c1", "c2"]
        .iter()
        .map(|id| PendingCall {
            tool_call_id: (*id).into(),
            name: "delete_file".into(),
            args: json!({"path": id}),
        })
        .collect()
}

/// Session `s` with two WebSocket clients and a turn that ended asking for
/// approval of [`calls`].
fn asked(app: &mut App, sink: &mut Recorder) {
    let now = Instant::now();
    app.subscribed(WS, "s", None, now, sink);
    app.subscribed(OTHER, "s", None, now, sink);
    app.ws_text(
        WS,
        "s",
        r#"{"op":"message","data":{"content":"clean up"}}"#,
        now,
        sink,
    );
    app.run_turns(now, sink);
    let job = sink.agents_started.pop().expect("the agent started");
    let ask = AgentEvent::ApprovalRequired {
        calls: Some(calls()),
        messages: None,
    };
    app.agent_events("s", job.turn, vec![ask], now, sink);
}

fn last_json(sink: &Recorder, to: ConnId) -> Value {
    serde_json::from_str(&sink.texts_to(to).pop().expect("a frame")).unwrap()
}

#[test]
fn listing_pending_approvals() {
    let mut a = agent_app();
    let (status, _, _) = call(&mut a, "GET", "/api/sessions/nope/approvals", "", None);
    assert_eq!(status, 404);
    let mut sink = Recorder::default();
    asked(&mut a, &mut sink);
    let (status, body, _) = call(&mut a, "GET", "/api/sessions/s/approvals", "", None);
    assert_eq!(status, 200);
    assert_eq!(body, json!({"session_id": "s", "tool_calls": calls()}));
    let mut keyed = agent_app();
    keyed.config.api_key = Some("k".into());
    let (status, _, _) = call(&mut keyed, "GET", "/api/sessions/s/approvals", "", None);
    assert_eq!(status, 401, "the key first");
    let mut fresh = agent_app();
    let (status, _, _) = call(&mut fresh, "POST", "/api/sessions", "", None);
    assert_eq!(status, 201);
    let (_, list, _) = call(&mut fresh, "GET", "/api/sessions", "", None);
    let id = list[0]["id"].as_str().unwrap().to_owned();
    let (status, body, _) = call(
        &mut fresh,
        "GET",
        &format!("/api/sessions/{id}/approvals"),
        "",
        None,
    );
    assert_eq!((status, body["tool_calls"].clone()), (200, json!([])));
}

#[test]
fn the_agent_asking_reaches_every_client_and_new_messages_wait() {
    let mut a = agent_app();
    let mut sink = Recorder::default();
    asked(&mut a, &mut sink);
    for c in [WS, OTHER] {
        let event = last_json(&sink, c);
        assert_eq!(event["op"], "approval_required");
        assert_eq!(event["data"]["tool_calls"], json!(calls()));
        assert!(event["seq"].is_u64());
    }
    let now = Instant::now();
    a.ws_text(
        OTHER,
        "s",
        r#"{"op":"message","data":{"content":"hi"}}"#,
        now,
        &mut sink,
    );
    let refused = last_json(&sink, OTHER);
    assert_eq!(refused["data"]["code"], "approval_pending");
    assert_eq!(refused["data"]["tool_calls"], json!(calls()));
    assert!(refused.get("seq").is_none());
    let (status, body, _) = call(
        &mut a,
        "POST",
        "/api/sessions/s/chat",
        r#"{"content":"hi"}"#,
        None,
    );
    assert_eq!(
        (status, body["detail"]["code"].clone()),
        (409, json!("approval_pending"))
    );
    // `cancel` leaves them alone.
    a.ws_text(WS, "s", r#"{"op":"cancel"}"#, now, &mut sink);
    assert_eq!(last_json(&sink, WS)["data"]["code"], "not_running");
    assert_eq!(a.pending_calls("s").len(), 2);
}

#[test]
fn deciding_over_rest_resumes_the_turn_and_answers_when_it_ends() {
    let mut a = agent_app();
    let mut sink = Recorder::default();
    asked(&mut a, &mut sink);
    let now = Instant::now();
    let body = r#"{"approvals":{"c1":true,"c2":{"approved":false,"message":"not that one"}}}"#;
    let out = a.handle_http(
        req("POST", "/api/sessions/s/approvals", body, None),
        REST,
        now,
        &mut sink,
    );
    assert!(matches!(out, HttpOutcome::Pending), "{out:?}");
    for c in [WS, OTHER] {
        let event = last_json(&sink, c);
        assert_eq!(event["op"], "approval_resolved");
        assert_eq!(event["data"]["approvals"]["c2"]["message"], "not that one");
    }
    assert!(a.pending_calls("s").is_empty());
    a.run_turns(now, &mut sink);
    let job = sink.agents_started.pop().expect("the resumed turn started");
    let decisions: Value = serde_json::from_str(job.approvals.as_deref().unwrap()).unwrap();
    assert_eq!(decisions["c1"], true);
    let events = vec![
        AgentEvent::ToolResult {
            id: "c1".into(),
            status: "success".into(),
            details: json!("deleted"),
        },
        AgentEvent::Token("Deleted c1.".into()),
        AgentEvent::done(None),
    ];
    a.agent_events("s", job.turn, events, now, &mut sink);
    let (to, r) = sink.responses.pop().unwrap();
    assert_eq!((to, r.status), (REST, 200));
    let reply: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(reply, json!({"session_id": "s", "content": "Deleted c1."}));
}

#[test]
fn refused_decisions_change_nothing() {
    let mut a = agent_app();
    let mut sink = Recorder::default();
    let (status, body, _) = call(
        &mut a,
        "POST",
        "/api/sessions/s/approvals",
        r#"{"approvals":{}}"#,
        None,
    );
    assert_eq!(
        (status, body),
        (404, json!({"detail": "Session not found"}))
    );
    asked(&mut a, &mut sink);
    for bad in [
        "",
        "[]",
        "{}",
        r#"{"approvals":[true]}"#,
        r#"{"approvals":{"c1":"yes"}}"#,
    ] {
        let (status, body, _) = call(&mut a, "POST", "/api/sessions/s/approvals", bad, None);
        assert_eq!(status, 422, "{bad}");
        assert!(body["detail"].is_array(), "{bad}: {body}");
    }
    let (status, body, _) = call(
        &mut a,
        "POST",
        "/api/sessions/s/approvals",
        r#"{"approvals":{"c1":true,"c9":false}}"#,
        None,
    );
    assert_eq!(status, 422);
    let why = body["detail"].as_str().unwrap();
    assert!(why.contains("c2") && why.contains("c9"), "{why}");
    let now = Instant::now();
    let frames_to_other = sink.texts_to(OTHER).len();
    a.ws_text(
        WS,
        "s",
        r#"{"op":"approve","data":{"approvals":{"c1":true}}}"#,
        now,
        &mut sink,
    );
    let mismatch = last_json(&sink, WS);
    assert_eq!(mismatch["data"]["code"], "approval_mismatch");
    assert!(mismatch.get("seq").is_none());
    a.ws_text(
        WS,
        "s",
        r#"{"op":"approve","data":{"approvals":"all"}}"#,
        now,
        &mut sink,
    );
    assert_eq!(
        last_json(&sink, WS)["data"],
        json!({"message": "Invalid message format"})
    );
    assert_eq!(
        sink.texts_to(OTHER).len(),
        frames_to_other,
        "only the sender heard"
    );
    assert_eq!(a.pending_calls("s").len(), 2);
    assert!(sink.agents_started.is_empty());
}

#[test]
fn deciding_over_the_websocket_resumes_for_everyone() {
    let mut a = agent_app();
    let mut sink = Recorder::default();
    asked(&mut a, &mut sink);
    let now = Instant::now();
    a.ws_text(OTHER, "s", r#"{"op":"approve","data":{"approvals":{"c1":true,"c2":{"approved":true,"override_args":{"path":"c2.bak"}}}}}"#, now, &mut sink);
    assert_eq!(last_json(&sink, WS)["op"], "approval_resolved");
    a.run_turns(now, &mut sink);
    let job = sink.agents_started.pop().expect("resumed");
    assert!(job.approvals.unwrap().contains("c2.bak"));
    assert!(job.prompt.is_empty());
}

#[test]
fn with_nothing_pending_the_original_replies_stay() {
    let mut a = agent_app();
    let mut sink = Recorder::default();
    let now = Instant::now();
    a.subscribed(WS, "s", None, now, &mut sink);
    a.subscribed(OTHER, "s", None, now, &mut sink);
    a.ws_text(WS, "s", r#"{"op":"approve","data":{}}"#, now, &mut sink);
    for c in [WS, OTHER] {
        let e = last_json(&sink, c);
        assert_eq!(e["data"]["code"], "approval_unsupported");
        assert!(e["seq"].is_u64(), "broadcast");
    }
    let (status, body, _) = call(
        &mut a,
        "POST",
        "/api/sessions/s/approvals",
        r#"{"approvals":{"x":true}}"#,
        None,
    );
    assert_eq!(status, 409);
    assert_eq!(body["detail"]["code"], "no_pending_approval");
}
