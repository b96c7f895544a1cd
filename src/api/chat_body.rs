//! Request bodies validated as pydantic would, with FastAPI's 422 error
//! list when they fail: any JSON object body ([`json_object`]), and the
//! body of `POST /api/chat`.

use serde_json::{json, Map, Value};

/// The body as a JSON object, or FastAPI's errors for a missing body,
/// one that is not JSON, or one that is not an object.
pub fn json_object(body: &[u8]) -> Result<Map<String, Value>, Vec<Value>> {
    match json_value(body)? {
        Value::Object(map) => Ok(map),
        value => Err(vec![json!({
            "type": "model_attributes_type",
            "loc": ["body"],
            "msg": "Input should be a valid dictionary or object to extract fields from",
            "input": value,
        })]),
    }
}

/// pydantic's validation of `{"content": str, "session_id": str | null}`,
/// with FastAPI's 422 error list when it fails. An empty `session_id` means
/// none, as in the original.
pub fn validate_chat_body(body: &[u8]) -> Result<(String, Option<String>), Vec<Value>> {
    let map = json_object(body)?;
    let mut errors = Vec::new();
    let content = match map.get("content") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            errors.push(string_type(&["body", "content"], other));
            None
        }
        None => {
            errors.push(json!({"type": "missing", "loc": ["body", "content"], "msg": "Field required", "input": map}));
            None
        }
    };
    let session_id = match map.get("session_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            errors.push(string_type(&["body", "session_id"], other));
            None
        }
    };
    match content {
        Some(content) if errors.is_empty() => Ok((content, session_id)),
        _ => Err(errors),
    }
}

/// The body as JSON, or FastAPI's error for a missing or undecodable body.
fn json_value(body: &[u8]) -> Result<Value, Vec<Value>> {
    if body.is_empty() {
        return Err(vec![
            json!({"type": "missing", "loc": ["body"], "msg": "Field required", "input": null}),
        ]);
    }
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            // Python reports the offset where decoding stopped: the end, at EOF.
            let pos = if e.is_eof() {
                body.len()
            } else {
                byte_offset(body, e.line(), e.column())
            };
            let reason = e.to_string();
            let reason = reason
                .split(" at line ")
                .next()
                .unwrap_or("JSON decode error");
            return Err(vec![json!({
                "type": "json_invalid",
                "loc": ["body", pos],
                "msg": "JSON decode error",
                "input": {},
                "ctx": {"error": reason},
            })]);
        }
    };
    Ok(value)
}

fn string_type(loc: &[&str], input: &Value) -> Value {
    json!({"type": "string_type", "loc": loc, "msg": "Input should be a valid string", "input": input})
}

/// serde_json reports 1-based line and column; FastAPI reports an offset.
fn byte_offset(body: &[u8], line: usize, column: usize) -> usize {
    let line_start: usize = body
        .split(|&b| b == b'\n')
        .take(line.saturating_sub(1))
        .map(|l| l.len() + 1)
        .sum();
    (line_start + column.saturating_sub(1)).min(body.len())
}
