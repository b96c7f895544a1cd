//! Agents: what produces a turn's events.
//!
//! The built-in echo agent runs inside [`crate::turns`]. The others are I/O
//! the reactor owns (a child process's pipes, an upstream socket); this
//! module holds their sans-IO halves, which the reactor feeds with bytes:
//! the event vocabulary ([`AgentEvent`]), the `exec` JSON-lines protocol
//! ([`parse_exec_line`], [`exec_request`]), the long-lived worker's protocol
//! ([`worker`]) and scheduling ([`worker_pool`]), the OpenAI-compatible
//! streaming client ([`openai`]), and the fold of a turn into pydantic-ai history
//! ([`Transcript`]).

pub mod lines;
pub mod openai;
mod transcript;
pub mod worker;
pub mod worker_pool;

use serde::Serialize;
use serde_json::{json, Value};

pub use transcript::{request_message, Transcript};

/// Which agent runs turns (`--agent`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentKind {
    Echo,
    /// `--agent-cmd`, run with `/bin/sh -c` once per turn.
    Exec(String),
    OpenAi(openai::UpstreamConfig),
    /// `--agent-cmd` run as long-lived workers, each serving many turns.
    Worker(worker_pool::PoolConfig),
}

/// One thing an agent did, in the server's outgoing vocabulary.
#[derive(Clone, Debug, PartialEq)]
pub enum AgentEvent {
    Token(String),
    Thinking(String),
    ThinkingDone,
    ToolCall {
        id: String,
        name: String,
        details: Value,
    },
    ToolResult {
        id: String,
        status: String,
        details: Value,
    },
    /// The turn is complete; `Some` carries the agent's full reply.
    Done(Option<String>),
    /// The agent gave up; the turn ends with this reason.
    Error(String),
    /// The agent wants a deferred tool approval, which server mode lacks.
    ApprovalRequired,
}

/// What the server hands an agent to start a turn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentJob {
    pub turn: u64,
    pub session_id: String,
    pub prompt: String,
    /// The session's history before this turn, as `ModelMessage` JSON texts.
    pub history: Vec<String>,
}

/// The `exec` agent's stdin: one JSON line, then EOF.
pub fn exec_request(job: &AgentJob) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        64 + job.prompt.len() + job.history.iter().map(String::len).sum::<usize>(),
    );
    out.push(b'{');
    write_job_fields(&mut out, job);
    out.extend_from_slice(b"}\n");
    out
}

/// `"session_id":…,"prompt":…,"history":[…]`: what an agent program is
/// told of a turn (exec's request line, worker's `turn` line), the stored
/// history spliced in without re-parsing.
pub fn write_job_fields(out: &mut Vec<u8>, job: &AgentJob) {
    out.extend_from_slice(b"\"session_id\":");
    let _ = serde_json::to_writer(&mut *out, &job.session_id);
    out.extend_from_slice(b",\"prompt\":");
    let _ = serde_json::to_writer(&mut *out, &job.prompt);
    out.extend_from_slice(b",\"history\":");
    crate::json::push_array(out, &job.history);
}

/// Reads one line of an `exec` agent's stdout:
/// `{"op": "token", "data": {"content": "..."}}` and the other outgoing ops,
/// plus `approval_required`. Err says what is wrong with the line.
pub fn parse_exec_line(line: &[u8]) -> Result<AgentEvent, String> {
    let value: Value = serde_json::from_slice(line).map_err(|e| format!("not JSON ({e})"))?;
    parse_event(&value)
}

/// An event line already parsed as JSON (`exec`'s, or a worker's, whose
/// `turn` field this ignores).
pub fn parse_event(value: &Value) -> Result<AgentEvent, String> {
    let op = value
        .get("op")
        .and_then(Value::as_str)
        .ok_or("no \"op\" string")?;
    let empty = json!({});
    let data = value.get("data").unwrap_or(&empty);
    if !data.is_object() {
        return Err("\"data\" is not an object".into());
    }
    let text = |key: &str| -> Result<String, String> {
        data.get(key)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| format!("{op}: \"{key}\" is not a string"))
    };
    let optional = |key: &str| {
        data.get(key)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let details = |key: &str| data.get(key).cloned().unwrap_or(Value::Null);
    Ok(match op {
        "token" => AgentEvent::Token(text("content")?),
        "thinking" => AgentEvent::Thinking(text("content")?),
        "thinking_done" => AgentEvent::ThinkingDone,
        "tool_call" => AgentEvent::ToolCall {
            id: text("tool_call_id")?,
            name: text("name")?,
            details: details("details"),
        },
        "tool_result" => AgentEvent::ToolResult {
            id: text("tool_call_id")?,
            status: optional("status"),
            details: details("details"),
        },
        "done" => AgentEvent::Done(
            data.get("content")
                .and_then(Value::as_str)
                .map(str::to_owned),
        ),
        "error" => {
            AgentEvent::Error(text("message").unwrap_or_else(|_| "agent reported an error".into()))
        }
        "approval_required" => AgentEvent::ApprovalRequired,
        other => return Err(format!("unknown op {other:?}")),
    })
}

/// The `data` of a broadcast event, by op.
#[derive(Serialize)]
#[serde(untagged)]
pub enum EventData<'a> {
    Content {
        content: &'a str,
    },
    Empty {},
    ToolCall {
        tool_call_id: &'a str,
        name: &'a str,
        details: &'a Value,
    },
    ToolResult {
        tool_call_id: &'a str,
        status: &'a str,
        details: &'a Value,
    },
}

impl AgentEvent {
    /// The broadcast op and data of a streaming event (not `done`/`error`).
    pub fn wire(&self) -> Option<(&'static str, EventData<'_>)> {
        Some(match self {
            AgentEvent::Token(t) => ("token", EventData::Content { content: t }),
            AgentEvent::Thinking(t) => ("thinking", EventData::Content { content: t }),
            AgentEvent::ThinkingDone => ("thinking_done", EventData::Empty {}),
            AgentEvent::ToolCall { id, name, details } => (
                "tool_call",
                EventData::ToolCall {
                    tool_call_id: id,
                    name,
                    details,
                },
            ),
            AgentEvent::ToolResult {
                id,
                status,
                details,
            } => (
                "tool_result",
                EventData::ToolResult {
                    tool_call_id: id,
                    status,
                    details,
                },
            ),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_lines() {
        let ok = |l: &str| parse_exec_line(l.as_bytes()).unwrap();
        assert_eq!(
            ok(r#"{"op":"token","data":{"content":"hi"}}"#),
            AgentEvent::Token("hi".into())
        );
        assert_eq!(
            ok(r#"{"op":"done","data":{"content":"hi"}}"#),
            AgentEvent::Done(Some("hi".into()))
        );
        assert_eq!(ok(r#"{"op":"done"}"#), AgentEvent::Done(None));
        assert_eq!(
            ok(r#"{"op":"thinking_done","data":{}}"#),
            AgentEvent::ThinkingDone
        );
        assert_eq!(
            ok(r#"{"op":"approval_required","data":{"x":1}}"#),
            AgentEvent::ApprovalRequired
        );
        assert_eq!(
            ok(
                r#"{"op":"tool_call","data":{"tool_call_id":"c1","name":"ls","details":{"path":"."}}}"#
            ),
            AgentEvent::ToolCall {
                id: "c1".into(),
                name: "ls".into(),
                details: json!({"path": "."})
            }
        );
        for bad in [
            "nope",
            "[]",
            r#"{"op":1}"#,
            r#"{"op":"token","data":{}}"#,
            r#"{"op":"dance"}"#,
            r#"{"op":"token","data":[]}"#,
        ] {
            assert!(parse_exec_line(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn exec_request_is_one_json_line() {
        let job = AgentJob {
            turn: 1,
            session_id: "s".into(),
            prompt: "hi \"there\"".into(),
            history: vec![r#"{"kind":"request","parts":[]}"#.into()],
        };
        let line = exec_request(&job);
        assert_eq!(line.last(), Some(&b'\n'));
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(
            v,
            json!({"session_id": "s", "prompt": "hi \"there\"", "history": [{"kind": "request", "parts": []}]})
        );
    }
}
