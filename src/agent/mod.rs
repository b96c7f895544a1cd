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

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::approvals::{self, PendingCall};

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
    /// The turn is complete.
    Done {
        /// The agent's full reply, when it says it.
        content: Option<String>,
        /// The agent's own account of the turn: pydantic-ai `ModelMessage`
        /// JSON texts, kept as the agent wrote them.
        messages: Option<Vec<String>>,
    },
    /// The agent gave up; the turn ends with this reason.
    Error(String),
    /// The agent asks a person to approve tool calls. `calls` is None for
    /// an older agent that names none: server mode then refuses, as the
    /// original did.
    ApprovalRequired {
        calls: Option<Vec<PendingCall>>,
        messages: Option<Vec<String>>,
    },
}

impl AgentEvent {
    /// A `done` with nothing but (optionally) the reply.
    pub fn done(content: Option<String>) -> Self {
        AgentEvent::Done {
            content,
            messages: None,
        }
    }

    /// Whether this event ends its turn.
    pub fn ends_turn(&self) -> bool {
        matches!(
            self,
            AgentEvent::Done { .. } | AgentEvent::Error(_) | AgentEvent::ApprovalRequired { .. }
        )
    }
}

/// What the server hands an agent to start a turn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentJob {
    pub turn: u64,
    pub session_id: String,
    pub prompt: String,
    /// The session's history before this turn, as `ModelMessage` JSON texts.
    pub history: Vec<String>,
    /// A resumed turn: the person's decisions on the pending tool calls
    /// (a JSON object text); its prompt is `null` on the wire.
    pub approvals: Option<String>,
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

/// `"session_id":…,"prompt":…,"history":[…]` (and `"approvals":{…}` with
/// a `null` prompt for a resumed turn): what an agent program is told of a
/// turn (exec's request line, worker's `turn` line), the stored history
/// spliced in without re-parsing.
pub fn write_job_fields(out: &mut Vec<u8>, job: &AgentJob) {
    out.extend_from_slice(b"\"session_id\":");
    let _ = serde_json::to_writer(&mut *out, &job.session_id);
    out.extend_from_slice(b",\"prompt\":");
    match job.approvals {
        Some(_) => out.extend_from_slice(b"null"),
        None => crate::json::push_str(out, &job.prompt),
    }
    out.extend_from_slice(b",\"history\":");
    crate::json::push_array(out, &job.history);
    if let Some(approvals) = &job.approvals {
        out.extend_from_slice(b",\"approvals\":");
        out.extend_from_slice(approvals.as_bytes());
    }
}

/// Reads one line of an `exec` agent's stdout:
/// `{"op": "token", "data": {"content": "..."}}` and the other outgoing ops,
/// plus `approval_required`. Err says what is wrong with the line.
pub fn parse_exec_line(line: &[u8]) -> Result<AgentEvent, String> {
    let value: Value = serde_json::from_slice(line).map_err(|e| format!("not JSON ({e})"))?;
    parse_event(line, &value)
}

/// An event `line` already parsed as JSON into `value` (`exec`'s, or a
/// worker's, whose `turn` field this ignores). The line itself is read
/// again only for a turn's end that carries `messages`, which are kept as
/// the agent wrote them.
pub fn parse_event(line: &[u8], value: &Value) -> Result<AgentEvent, String> {
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
        "done" => AgentEvent::Done {
            content: data
                .get("content")
                .and_then(Value::as_str)
                .map(str::to_owned),
            messages: parse_messages(line, data)?,
        },
        "error" => {
            AgentEvent::Error(text("message").unwrap_or_else(|_| "agent reported an error".into()))
        }
        "approval_required" => AgentEvent::ApprovalRequired {
            calls: approvals::parse_request(data)?,
            messages: parse_messages(line, data)?,
        },
        other => return Err(format!("unknown op {other:?}")),
    })
}

/// The `messages` of a turn's last event: the turn's part of the history
/// in pydantic-ai's own JSON, stored verbatim (every field, in order: the
/// texts are cut from `line`, not re-serialized). Each must be an object
/// whose `kind` is `request` or `response` and whose `parts` is a list.
fn parse_messages(line: &[u8], data: &Value) -> Result<Option<Vec<String>>, String> {
    let Some(list) = data.get("messages").filter(|m| !m.is_null()) else {
        return Ok(None);
    };
    let Some(list) = list.as_array() else {
        return Err("\"messages\" is not a list".into());
    };
    for (i, m) in list.iter().enumerate() {
        let kind_ok = matches!(
            m.get("kind").and_then(Value::as_str),
            Some("request" | "response")
        );
        if !kind_ok || !m.get("parts").is_some_and(Value::is_array) {
            return Err(format!(
                "messages[{i}] is not a ModelMessage (an object with \"kind\" request or response and a \"parts\" list)"
            ));
        }
    }
    #[derive(Deserialize)]
    struct Line<'a> {
        #[serde(borrow)]
        data: Data<'a>,
    }
    #[derive(Deserialize)]
    struct Data<'a> {
        #[serde(borrow)]
        messages: Vec<&'a RawValue>,
    }
    let raw: Line = serde_json::from_slice(line).map_err(|e| format!("messages: {e}"))?;
    Ok(Some(
        raw.data
            .messages
            .iter()
            .map(|m| m.get().to_owned())
            .collect(),
    ))
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
            AgentEvent::done(Some("hi".into()))
        );
        assert_eq!(ok(r#"{"op":"done"}"#), AgentEvent::done(None));
        assert_eq!(
            ok(r#"{"op":"thinking_done","data":{}}"#),
            AgentEvent::ThinkingDone
        );
        assert_eq!(
            ok(r#"{"op":"approval_required","data":{"x":1}}"#),
            AgentEvent::ApprovalRequired {
                calls: None,
                messages: None
            }
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
            approvals: None,
        };
        let line = exec_request(&job);
        assert_eq!(line.last(), Some(&b'\n'));
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(
            v,
            json!({"session_id": "s", "prompt": "hi \"there\"", "history": [{"kind": "request", "parts": []}]})
        );
        let resumed = AgentJob {
            approvals: Some(r#"{"c1":true}"#.into()),
            ..job
        };
        let v: Value = serde_json::from_slice(&exec_request(&resumed)).unwrap();
        assert_eq!(
            v,
            json!({"session_id": "s", "prompt": null, "history": [{"kind": "request", "parts": []}], "approvals": {"c1": true}})
        );
    }

    #[test]
    fn a_turns_end_may_carry_the_agents_own_messages_verbatim() {
        let line = br#"{"op":"done","data":{"content":"ok","messages":[{"parts":[],"kind":"request", "z":1},{"kind":"response","parts":[{"part_kind":"text","content":"ok"}],"usage":{"input_tokens":3}}]}}"#;
        let AgentEvent::Done { content, messages } = parse_exec_line(line).unwrap() else {
            panic!("not done");
        };
        assert_eq!(content.as_deref(), Some("ok"));
        let messages = messages.unwrap();
        assert_eq!(
            messages[0], r#"{"parts":[],"kind":"request", "z":1}"#,
            "kept as written"
        );
        assert!(messages[1].contains(r#""usage":{"input_tokens":3}"#));
        let line = br#"{"op":"approval_required","data":{"tool_calls":[{"tool_call_id":"c","name":"rm","args":{"p":1}}],"messages":[{"kind":"response","parts":[]}]}}"#;
        let AgentEvent::ApprovalRequired { calls, messages } = parse_exec_line(line).unwrap()
        else {
            panic!("not approval_required");
        };
        assert_eq!(calls.unwrap()[0].name, "rm");
        assert_eq!(messages.unwrap().len(), 1);
        for bad in [
            r#"{"op":"done","data":{"messages":{}}}"#,
            r#"{"op":"done","data":{"messages":[1]}}"#,
            r#"{"op":"done","data":{"messages":[{"kind":"reply","parts":[]}]}}"#,
            r#"{"op":"done","data":{"messages":[{"kind":"request"}]}}"#,
            r#"{"op":"approval_required","data":{"tool_calls":[]}}"#,
        ] {
            assert!(parse_exec_line(bad.as_bytes()).is_err(), "{bad}");
        }
        let none = parse_exec_line(br#"{"op":"done","data":{"messages":null}}"#).unwrap();
        assert_eq!(none, AgentEvent::done(None));
    }
}
