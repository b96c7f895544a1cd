//! The run's input: a `RunAgentInput` read for what this server uses of it
//! (the thread, the run, the prompt or the answers to interrupts), and the
//! answers turned into the decisions of [`crate::approvals`].

use std::collections::HashSet;

use serde_json::{json, Map, Value};

use crate::approvals::PendingCall;

/// What the prefix of an interrupt id stands for: the tool call it asks
/// about (pydantic-ai's `INTERRUPT_ID_PREFIX`).
pub const INTERRUPT_PREFIX: &str = "int-";
/// The denial message of an interrupt the user cancelled (pydantic-ai's).
pub const CANCELLED_BY_USER: &str = "Cancelled by user.";

/// A `RunAgentInput`, as far as the server uses it. `tools`, `state`,
/// `context` and `forwardedProps` are accepted and not used, and the
/// client's `messages` only give the prompt: the server's own history is
/// authoritative.
#[derive(Debug, PartialEq)]
pub struct RunInput {
    pub thread_id: String,
    pub run_id: String,
    pub ask: Ask,
}

/// What the run does.
#[derive(Debug, PartialEq)]
pub enum Ask {
    /// A turn with the last message's text (a user message).
    Prompt(String),
    /// Answers to the interrupts of the run before (the `resume` list).
    Resume(Vec<Value>),
}

/// Reads a `RunAgentInput` object. Err: pydantic-style errors (FastAPI's
/// 422 list) for a missing `threadId`, `runId` or `messages`, fields of
/// the wrong type, or nothing to run (the last message is not the user's,
/// and there is no `resume`).
pub fn parse_input(body: &Map<String, Value>) -> Result<RunInput, Vec<Value>> {
    let mut errors = Vec::new();
    let mut text = |key: &str| match body.get(key) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            errors.push(json!({"type": "string_type", "loc": ["body", key], "msg": "Input should be a valid string", "input": other}));
            None
        }
        None => {
            errors.push(json!({"type": "missing", "loc": ["body", key], "msg": "Field required", "input": body}));
            None
        }
    };
    let thread_id = text("threadId");
    let run_id = text("runId");
    let messages = match body.get("messages") {
        Some(Value::Array(list)) => Some(list),
        Some(other) => {
            errors.push(json!({"type": "list_type", "loc": ["body", "messages"], "msg": "Input should be a valid list", "input": other}));
            None
        }
        None => {
            errors.push(json!({"type": "missing", "loc": ["body", "messages"], "msg": "Field required", "input": body}));
            None
        }
    };
    for key in ["tools", "context"] {
        match body.get(key) {
            None | Some(Value::Null | Value::Array(_)) => {}
            Some(other) => errors.push(json!({"type": "list_type", "loc": ["body", key], "msg": "Input should be a valid list", "input": other})),
        }
    }
    match body.get("parentRunId") {
        None | Some(Value::Null | Value::String(_)) => {}
        Some(other) => errors.push(json!({"type": "string_type", "loc": ["body", "parentRunId"], "msg": "Input should be a valid string", "input": other})),
    }
    for (i, m) in messages.into_iter().flatten().enumerate() {
        match m.get("role") {
            Some(Value::String(_)) => {}
            Some(other) => errors.push(json!({"type": "string_type", "loc": ["body", "messages", i, "role"], "msg": "Input should be a valid string", "input": other})),
            None => errors.push(json!({"type": "missing", "loc": ["body", "messages", i, "role"], "msg": "Field required", "input": m})),
        }
    }
    let resume = match body.get("resume") {
        None | Some(Value::Null) => None,
        Some(Value::Array(list)) if list.is_empty() => None,
        Some(Value::Array(list)) => Some(list.clone()),
        Some(other) => {
            errors.push(json!({"type": "list_type", "loc": ["body", "resume"], "msg": "Input should be a valid list", "input": other}));
            None
        }
    };
    let (Some(thread_id), Some(run_id), Some(messages)) = (thread_id, run_id, messages) else {
        return Err(errors);
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    let ask = match resume {
        Some(entries) => Ask::Resume(entries),
        None => match messages.last().and_then(user_text) {
            Some(prompt) => Ask::Prompt(prompt),
            None => {
                return Err(vec![json!({
                    "type": "value_error",
                    "loc": ["body", "messages", messages.len().saturating_sub(1)],
                    "msg": "Value error, the last message must be a user message with text content (or send `resume`)",
                    "input": messages.last().cloned().unwrap_or(Value::Null),
                })])
            }
        },
    };
    Ok(RunInput {
        thread_id,
        run_id,
        ask,
    })
}

/// The text of a user message: its `content` string, or the `text` of its
/// text parts, joined.
fn user_text(message: &Value) -> Option<String> {
    if message.get("role").and_then(Value::as_str) != Some("user") {
        return None;
    }
    match message.get("content")? {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => {
            let texts: Vec<&str> = parts
                .iter()
                .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect();
            (!texts.is_empty()).then(|| texts.concat())
        }
        _ => None,
    }
}

/// The decisions (`{"<tool_call_id>": {"approved", "message"?,
/// "override_args"?}}`, as [`crate::approvals`] takes them) that a
/// `resume` list gives for the `pending` calls. Err says why the run
/// fails instead: an entry that is not `{"interruptId", "status",
/// "payload"}` of the advertised schema, an interrupt that is not
/// pending, or a pending call left unanswered.
pub fn resume_decisions(entries: &[Value], pending: &[PendingCall]) -> Result<Value, String> {
    if pending.is_empty() {
        return Err("Nothing is waiting for approval on this thread.".into());
    }
    let pending_ids: HashSet<&str> = pending.iter().map(|p| p.tool_call_id.as_str()).collect();
    let mut decisions = Map::new();
    for (i, entry) in entries.iter().enumerate() {
        let id = entry
            .get("interruptId")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("resume[{i}]: no \"interruptId\" string"))?;
        let call = id
            .strip_prefix(INTERRUPT_PREFIX)
            .filter(|call| pending_ids.contains(call))
            .ok_or_else(|| {
                format!("resume[{i}]: interrupt {id:?} is not pending on this thread")
            })?;
        let decision = match entry.get("status").and_then(Value::as_str) {
            Some("cancelled") => json!({"approved": false, "message": CANCELLED_BY_USER}),
            Some("resolved") => payload_decision(entry.get("payload"))
                .map_err(|why| format!("resume[{i}]: the payload of interrupt {id:?} does not match its responseSchema ({why})"))?,
            _ => return Err(format!("resume[{i}]: \"status\" is not \"resolved\" or \"cancelled\"")),
        };
        if decisions.insert(call.to_owned(), decision).is_some() {
            return Err(format!("resume[{i}]: interrupt {id:?} is answered twice"));
        }
    }
    let missing: Vec<String> = pending
        .iter()
        .filter(|p| !decisions.contains_key(&p.tool_call_id))
        .map(|p| format!("{INTERRUPT_PREFIX}{}", p.tool_call_id))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "resume must answer every pending interrupt; unanswered: {}",
            missing.join(", ")
        ));
    }
    Ok(Value::Object(decisions))
}

/// `{"approved": bool, "editedArgs"?: object, "reason"?: string}` (null
/// and absence alike for the optional two) as a decision.
fn payload_decision(payload: Option<&Value>) -> Result<Value, &'static str> {
    let Some(Value::Object(p)) = payload else {
        return Err("payload: not an object");
    };
    let Some(Value::Bool(approved)) = p.get("approved") else {
        return Err("approved: not a boolean");
    };
    let edited = match p.get("editedArgs") {
        None | Some(Value::Null) => None,
        Some(v @ Value::Object(_)) => Some(v.clone()),
        Some(_) => return Err("editedArgs: not an object"),
    };
    let reason = match p.get("reason") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("reason: not a string"),
    };
    let mut decision = Map::new();
    decision.insert("approved".into(), Value::Bool(*approved));
    if let (true, Some(args)) = (*approved, edited) {
        decision.insert("override_args".into(), args);
    }
    // An empty reason is none, as in pydantic-ai.
    if let (false, Some(reason)) = (*approved, reason.filter(|r| !r.is_empty())) {
        decision.insert("message".into(), Value::String(reason));
    }
    Ok(Value::Object(decision))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(v: Value) -> Result<RunInput, Vec<Value>> {
        parse_input(v.as_object().unwrap())
    }

    #[test]
    fn the_prompt_is_the_last_user_message() {
        let base = json!({"threadId": "t", "runId": "r", "state": {}, "tools": [], "context": [], "forwardedProps": {},
            "messages": [{"id": "1", "role": "user", "content": "first"}, {"id": "2", "role": "assistant", "content": "ok"},
                         {"id": "3", "role": "user", "content": "second"}]});
        let got = input(base).unwrap();
        assert_eq!((got.thread_id.as_str(), got.run_id.as_str()), ("t", "r"));
        assert_eq!(got.ask, Ask::Prompt("second".into()));
        let parts = json!({"threadId": "t", "runId": "r", "messages": [{"id": "1", "role": "user",
            "content": [{"type": "text", "text": "a "}, {"type": "binary", "mimeType": "image/png"}, {"type": "text", "text": "b"}]}]});
        assert_eq!(input(parts).unwrap().ask, Ask::Prompt("a b".into()));
    }

    #[test]
    fn inputs_that_are_not_runs_are_refused_as_pydantic_would() {
        let errors = input(json!({"messages": []})).unwrap_err();
        let locs: Vec<&Value> = errors.iter().map(|e| &e["loc"]).collect();
        assert_eq!(
            locs,
            [&json!(["body", "threadId"]), &json!(["body", "runId"])]
        );
        let errors = input(json!({"threadId": 1, "runId": "r", "messages": {}})).unwrap_err();
        assert_eq!(errors.len(), 2);
        let errors = input(
            json!({"threadId": "t", "runId": "r", "context": {}, "tools": "x", "parentRunId": 3,
            "messages": [{"id": "1", "content": "hi"}, 7, {"role": "user", "content": "hi"}]}),
        )
        .unwrap_err();
        let locs: Vec<&Value> = errors.iter().map(|e| &e["loc"]).collect();
        assert_eq!(
            locs,
            [
                &json!(["body", "tools"]),
                &json!(["body", "context"]),
                &json!(["body", "parentRunId"]),
                &json!(["body", "messages", 0, "role"]),
                &json!(["body", "messages", 1, "role"]),
            ]
        );
        for no_prompt in [
            json!([]),
            json!([{"id": "1", "role": "assistant", "content": "hi"}]),
            json!([{"id": "1", "role": "tool", "content": "x", "toolCallId": "c"}]),
            json!([{"id": "1", "role": "user", "content": [{"type": "binary"}]}]),
            json!([{"id": "1", "role": "user", "content": 3}]),
        ] {
            let errors =
                input(json!({"threadId": "t", "runId": "r", "messages": no_prompt})).unwrap_err();
            assert_eq!(errors[0]["type"], "value_error", "{no_prompt}");
        }
        let resume = json!({"threadId": "t", "runId": "r", "messages": [], "resume": [{"interruptId": "int-c", "status": "resolved"}]});
        assert!(matches!(input(resume).unwrap().ask, Ask::Resume(e) if e.len() == 1));
    }

    fn pending() -> Vec<PendingCall> {
        ["c1", "c2"]
            .iter()
            .map(|id| PendingCall {
                tool_call_id: (*id).into(),
                name: "rm".into(),
                args: json!({}),
            })
            .collect()
    }

    #[test]
    fn resume_entries_become_decisions() {
        let entries = [
            json!({"interruptId": "int-c1", "status": "resolved", "payload": {"approved": true, "editedArgs": {"p": 2}, "reason": "ignored"}}),
            json!({"interruptId": "int-c2", "status": "resolved", "payload": {"approved": false, "reason": "no"}}),
        ];
        assert_eq!(
            resume_decisions(&entries, &pending()).unwrap(),
            json!({"c1": {"approved": true, "override_args": {"p": 2}}, "c2": {"approved": false, "message": "no"}})
        );
        let entries = [
            json!({"interruptId": "int-c1", "status": "resolved", "payload": {"approved": true, "editedArgs": null}}),
            json!({"interruptId": "int-c2", "status": "cancelled"}),
        ];
        assert_eq!(
            resume_decisions(&entries, &pending()).unwrap(),
            json!({"c1": {"approved": true}, "c2": {"approved": false, "message": "Cancelled by user."}})
        );
    }

    #[test]
    fn resumes_that_do_not_answer_exactly_the_pending_calls_fail() {
        let ok =
            json!({"interruptId": "int-c1", "status": "resolved", "payload": {"approved": true}});
        let cases: [(Vec<Value>, &str); 7] = [
            (vec![ok.clone()], "unanswered: int-c2"),
            (
                vec![
                    ok.clone(),
                    json!({"interruptId": "int-c9", "status": "cancelled"}),
                ],
                "not pending",
            ),
            (
                vec![
                    ok.clone(),
                    json!({"interruptId": "c2", "status": "cancelled"}),
                ],
                "not pending",
            ),
            (vec![ok.clone(), ok.clone()], "answered twice"),
            (
                vec![
                    ok.clone(),
                    json!({"interruptId": "int-c2", "status": "resolved", "payload": {"approved": "yes"}}),
                ],
                "responseSchema",
            ),
            (
                vec![
                    ok.clone(),
                    json!({"interruptId": "int-c2", "status": "resolved", "payload": {"approved": true, "editedArgs": [1]}}),
                ],
                "editedArgs",
            ),
            (
                vec![
                    ok.clone(),
                    json!({"interruptId": "int-c2", "status": "done"}),
                ],
                "status",
            ),
        ];
        for (entries, why) in cases {
            let err = resume_decisions(&entries, &pending()).unwrap_err();
            assert!(err.contains(why), "{err} (wanted {why})");
        }
        assert!(resume_decisions(&[ok], &[])
            .unwrap_err()
            .contains("Nothing is waiting"));
    }
}
