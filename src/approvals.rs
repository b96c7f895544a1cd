//! Tool approvals (human in the loop), sans-IO: the calls an agent asks a
//! person to approve ([`parse_request`]), the decisions a client sends back
//! ([`parse_decisions`], [`check_decisions`]), and the bodies and events
//! that carry them.
//!
//! A session holds its pending calls ([`PendingCall`]) from the turn that
//! asked until a decision arrives; the turn engine ([`crate::turns`]) sets
//! and clears them, the session table journals them, the API decides them.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::http::Response;

/// `POST /api/chat` whose turn ended asking for approvals: the 409 message.
pub const APPROVAL_REQUIRED_MESSAGE: &str = "The agent asks for approval of tool calls.";
/// A message while approvals are pending.
pub const APPROVAL_PENDING_MESSAGE: &str =
    "Tool calls are waiting for approval: approve or deny them first.";
/// `POST .../approvals` with nothing pending.
pub const NO_PENDING_MESSAGE: &str = "Nothing is waiting for approval.";

/// One tool call waiting for a person's decision, as the agent named it
/// (`args`: an object, or the JSON text a model produced).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingCall {
    pub tool_call_id: String,
    pub name: String,
    pub args: Value,
}

/// The `tool_calls` of an agent's `approval_required` data. `Ok(None)`:
/// there is no such list (an older agent), and the turn ends as the
/// original server ended it. Err: the list is there but not a non-empty
/// list of calls with unique ids.
pub fn parse_request(data: &Value) -> Result<Option<Vec<PendingCall>>, String> {
    let list = match data.get("tool_calls") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(list)) if !list.is_empty() => list,
        Some(_) => return Err("approval_required: \"tool_calls\" is not a non-empty list".into()),
    };
    let mut calls: Vec<PendingCall> = Vec::with_capacity(list.len());
    let mut ids = HashSet::with_capacity(list.len());
    for (i, call) in list.iter().enumerate() {
        let text = |key: &str| {
            call.get(key)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| format!("approval_required: tool_calls[{i}].{key} is not a string"))
        };
        let tool_call_id = text("tool_call_id")?;
        let name = text("name")?;
        let args = match call.get("args") {
            // pydantic-ai's `args` may be None: no arguments.
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(a @ (Value::Object(_) | Value::String(_))) => a.clone(),
            Some(_) => {
                return Err(format!(
                    "approval_required: tool_calls[{i}].args is not an object or a string"
                ))
            }
        };
        if !ids.insert(tool_call_id.clone()) {
            return Err(format!(
                "approval_required: tool_call_id {tool_call_id:?} appears twice"
            ));
        }
        calls.push(PendingCall {
            tool_call_id,
            name,
            args,
        });
    }
    Ok(Some(calls))
}

/// The `data` of the `approval_required` event: `{"tool_calls":[...]}`.
#[derive(Serialize)]
pub struct RequiredData<'a> {
    pub tool_calls: &'a [PendingCall],
}

/// The `data` of the `approval_resolved` event: the decisions as given.
#[derive(Serialize)]
pub struct ResolvedData<'a> {
    pub approvals: &'a Value,
}

/// A client's `approvals`, checked: an object mapping tool call ids to
/// `true`, `false` or `{"approved": bool, "message"?: str,
/// "override_args"?: object}`. Err: pydantic-style errors, as FastAPI's 422
/// list (`loc` under `prefix`).
pub fn parse_decisions(approvals: Option<Value>, prefix: &[&str]) -> Result<Value, Vec<Value>> {
    let loc = |extra: &[&str]| -> Vec<Value> {
        prefix
            .iter()
            .chain(extra)
            .map(|s| Value::String((*s).to_owned()))
            .collect()
    };
    let Some(approvals) = approvals else {
        return Err(vec![
            json!({"type": "missing", "loc": loc(&["approvals"]), "msg": "Field required", "input": null}),
        ]);
    };
    let Value::Object(map) = &approvals else {
        return Err(vec![json!({
            "type": "dict_type",
            "loc": loc(&["approvals"]),
            "msg": "Input should be a valid dictionary",
            "input": approvals,
        })]);
    };
    let mut errors = Vec::new();
    for (id, decision) in map {
        let at = |field: Option<&str>| {
            let mut l = loc(&["approvals", id]);
            l.extend(field.map(|f| Value::String(f.to_owned())));
            l
        };
        match decision {
            Value::Bool(_) => {}
            Value::Object(d) => {
                match d.get("approved") {
                    Some(Value::Bool(_)) => {}
                    None => errors.push(json!({"type": "missing", "loc": at(Some("approved")), "msg": "Field required", "input": decision})),
                    Some(other) => errors.push(json!({"type": "bool_type", "loc": at(Some("approved")), "msg": "Input should be a valid boolean", "input": other})),
                }
                match d.get("message") {
                    None | Some(Value::Null | Value::String(_)) => {}
                    Some(other) => errors.push(json!({"type": "string_type", "loc": at(Some("message")), "msg": "Input should be a valid string", "input": other})),
                }
                match d.get("override_args") {
                    None | Some(Value::Null | Value::Object(_)) => {}
                    Some(other) => errors.push(json!({"type": "dict_type", "loc": at(Some("override_args")), "msg": "Input should be a valid dictionary", "input": other})),
                }
            }
            other => errors.push(json!({
                "type": "model_type",
                "loc": at(None),
                "msg": "Input should be a boolean or an object with \"approved\"",
                "input": other,
            })),
        }
    }
    if errors.is_empty() {
        Ok(approvals)
    } else {
        Err(errors)
    }
}

/// Decisions must answer exactly the pending calls. Err names the calls
/// left without a decision and the ids that are not pending.
pub fn check_decisions(
    pending: &[PendingCall],
    approvals: &Map<String, Value>,
) -> Result<(), String> {
    let pending_ids: HashSet<&str> = pending.iter().map(|c| c.tool_call_id.as_str()).collect();
    let missing: Vec<&str> = pending
        .iter()
        .map(|c| c.tool_call_id.as_str())
        .filter(|id| !approvals.contains_key(*id))
        .collect();
    let unknown: Vec<&str> = approvals
        .keys()
        .map(String::as_str)
        .filter(|id| !pending_ids.contains(id))
        .collect();
    let mut why = Vec::new();
    if !missing.is_empty() {
        why.push(format!("no decision for {}", missing.join(", ")));
    }
    if !unknown.is_empty() {
        why.push(format!("not pending: {}", unknown.join(", ")));
    }
    if why.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "The decisions must answer exactly the pending tool calls: {}",
            why.join("; ")
        ))
    }
}

/// `{"detail":{"code","message","tool_calls"}}` with `status`: the answer
/// to a chat whose turn asked for approvals (`approval_required`) or that
/// came while approvals were pending (`approval_pending`).
pub fn coded_with_calls(status: u16, code: &str, message: &str, calls: &[PendingCall]) -> Response {
    // Structs, not a `json!` tree: the calls keep the field order of every
    // other place they appear (a `Value` object would sort them).
    #[derive(Serialize)]
    struct Body<'a> {
        detail: Detail<'a>,
    }
    #[derive(Serialize)]
    struct Detail<'a> {
        code: &'a str,
        message: &'a str,
        tool_calls: &'a [PendingCall],
    }
    let body = Body {
        detail: Detail {
            code,
            message,
            tool_calls: calls,
        },
    };
    Response::json(status, serde_json::to_vec(&body).unwrap_or_default())
}

/// The `error` frame for one client whose message came while approvals
/// are pending: `{"code":"approval_pending","message","tool_calls"}`.
pub fn pending_error_frame(calls: &[PendingCall]) -> bytes::Bytes {
    #[derive(Serialize)]
    struct PendingError<'a> {
        code: &'a str,
        message: &'a str,
        tool_calls: &'a [PendingCall],
    }
    crate::events::event_frame(
        "error",
        PendingError {
            code: "approval_pending",
            message: APPROVAL_PENDING_MESSAGE,
            tool_calls: calls,
        },
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(id: &str) -> PendingCall {
        PendingCall {
            tool_call_id: id.into(),
            name: "rm".into(),
            args: json!({"path": "x"}),
        }
    }

    #[test]
    fn requests_without_a_list_are_the_old_kind() {
        assert_eq!(parse_request(&json!({})), Ok(None));
        assert_eq!(parse_request(&json!({"tool_calls": null})), Ok(None));
        let calls = parse_request(&json!({"tool_calls": [
            {"tool_call_id": "a", "name": "rm", "args": {"path": "x"}},
            {"tool_call_id": "b", "name": "ls", "args": "{\"p\":1}"},
            {"tool_call_id": "c", "name": "now"},
        ]}))
        .unwrap()
        .unwrap();
        assert_eq!(calls.len(), 3);
        assert_eq!(calls[1].args, json!("{\"p\":1}"));
        assert_eq!(calls[2].args, json!({}));
    }

    #[test]
    fn bad_requests_are_refused() {
        for bad in [
            json!({"tool_calls": []}),
            json!({"tool_calls": {}}),
            json!({"tool_calls": [{"name": "rm", "args": {}}]}),
            json!({"tool_calls": [{"tool_call_id": "", "name": "rm"}]}),
            json!({"tool_calls": [{"tool_call_id": "a", "args": {}}]}),
            json!({"tool_calls": [{"tool_call_id": "a", "name": "rm", "args": 3}]}),
            json!({"tool_calls": [{"tool_call_id": "a", "name": "rm"}, {"tool_call_id": "a", "name": "ls"}]}),
            json!({"tool_calls": ["a"]}),
        ] {
            assert!(parse_request(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn decisions_of_every_form() {
        let ok = json!({"a": true, "b": false, "c": {"approved": true, "override_args": {"x": 1}},
                        "d": {"approved": false, "message": "no"}, "e": {"approved": true, "message": null}});
        assert_eq!(parse_decisions(Some(ok.clone()), &["body"]), Ok(ok));
        let missing = parse_decisions(None, &["body"]).unwrap_err();
        assert_eq!(missing[0]["loc"], json!(["body", "approvals"]));
        assert_eq!(missing[0]["type"], "missing");
        let not_object = parse_decisions(Some(json!([true])), &["body"]).unwrap_err();
        assert_eq!(not_object[0]["type"], "dict_type");
        let bad =
            json!({"a": "yes", "b": {"message": "m"}, "c": {"approved": 1, "override_args": [1]}});
        let errors = parse_decisions(Some(bad), &["body"]).unwrap_err();
        let locs: Vec<&Value> = errors.iter().map(|e| &e["loc"]).collect();
        assert_eq!(
            locs,
            [
                &json!(["body", "approvals", "a"]),
                &json!(["body", "approvals", "b", "approved"]),
                &json!(["body", "approvals", "c", "approved"]),
                &json!(["body", "approvals", "c", "override_args"]),
            ]
        );
    }

    #[test]
    fn decisions_must_answer_exactly_the_pending_calls() {
        let pending = [call("a"), call("b")];
        let map = |v: Value| v.as_object().unwrap().clone();
        assert_eq!(
            check_decisions(&pending, &map(json!({"a": true, "b": false}))),
            Ok(())
        );
        let why = check_decisions(&pending, &map(json!({"a": true, "z": true}))).unwrap_err();
        assert!(
            why.contains("no decision for b") && why.contains("not pending: z"),
            "{why}"
        );
    }

    #[test]
    fn bodies_and_frames_carry_the_calls() {
        let r = coded_with_calls(
            409,
            "approval_required",
            APPROVAL_REQUIRED_MESSAGE,
            &[call("a")],
        );
        let text = std::str::from_utf8(&r.body).unwrap();
        assert!(
            text.contains(r#""tool_calls":[{"tool_call_id":"a","name":"rm","args":"#),
            "the calls' own field order: {text}"
        );
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["detail"]["code"], "approval_required");
        assert_eq!(body["detail"]["tool_calls"][0]["tool_call_id"], "a");
        assert_eq!(
            body["detail"]["tool_calls"][0]["args"],
            json!({"path": "x"})
        );
        let frame = pending_error_frame(&[call("a")]);
        let start = frame.iter().position(|&b| b == b'{').unwrap();
        let text = std::str::from_utf8(&frame[start..]).unwrap();
        let v: Value = serde_json::from_str(text).unwrap();
        assert_eq!(v["op"], "error");
        assert_eq!(v["data"]["code"], "approval_pending");
        assert!(v.get("seq").is_none());
    }
}
