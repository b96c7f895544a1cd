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
pub mod worker;
pub mod worker_pool;

use serde::Serialize;
use serde_json::{json, Value};

use crate::clock;

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
    out.extend_from_slice(b"{\"session_id\":");
    let _ = serde_json::to_writer(&mut out, &job.session_id);
    out.extend_from_slice(b",\"prompt\":");
    let _ = serde_json::to_writer(&mut out, &job.prompt);
    out.extend_from_slice(b",\"history\":");
    crate::sessions::write_json_array(&mut out, &job.history);
    out.extend_from_slice(b"}\n");
    out
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

/// The user's request of a turn, as pydantic-ai stores it (written to the
/// history when the turn starts, so a crash mid-turn keeps the prompt).
pub fn request_message(prompt: &str, timestamp: &str) -> String {
    json!({
        "kind": "request",
        "parts": [{"part_kind": "user-prompt", "content": prompt, "timestamp": timestamp}],
    })
    .to_string()
}

/// Folds a turn's answer into pydantic-ai `ModelMessage`s as it streams
/// (the request is [`request_message`]): a response with the text before
/// any tool calls and the calls; a request with the matching returns; and
/// so on; then the final text.
#[derive(Debug)]
pub struct Transcript {
    model_name: String,
    messages: Vec<Value>,
    response_parts: Vec<Value>,
    return_parts: Vec<Value>,
    text: String,
    /// Names of the calls made, to label their returns.
    call_names: Vec<(String, String)>,
    /// All text streamed, across tool rounds (the reply of a REST turn).
    pub reply: String,
}

impl Transcript {
    pub fn new(model_name: &str) -> Self {
        Transcript {
            model_name: model_name.to_owned(),
            messages: Vec::new(),
            response_parts: Vec::new(),
            return_parts: Vec::new(),
            text: String::new(),
            call_names: Vec::new(),
            reply: String::new(),
        }
    }

    pub fn token(&mut self, t: &str) {
        self.flush_returns();
        self.text.push_str(t);
        self.reply.push_str(t);
    }

    pub fn tool_call(&mut self, id: &str, name: &str, args: &Value) {
        self.flush_returns();
        self.flush_text();
        self.call_names.push((id.to_owned(), name.to_owned()));
        self.response_parts.push(json!({
            "part_kind": "tool-call", "tool_name": name, "args": args, "tool_call_id": id,
        }));
    }

    pub fn tool_result(&mut self, id: &str, content: &Value) {
        self.flush_text();
        self.flush_response();
        let name = self
            .call_names
            .iter()
            .find(|(call, _)| call == id)
            .map_or("", |(_, n)| n.as_str());
        self.return_parts.push(json!({
            "part_kind": "tool-return", "tool_name": name, "content": content, "tool_call_id": id,
            "timestamp": clock::now_rfc3339(),
        }));
    }

    /// The messages of the turn so far, the last response closed.
    pub fn finish(mut self, final_text: Option<&str>) -> Vec<Value> {
        self.flush_returns();
        if let Some(text) = final_text {
            // The agent's own account of its reply, when it streamed none.
            if self.text.is_empty() && self.response_parts.is_empty() && !text.is_empty() {
                self.text = text.to_owned();
            }
        }
        self.flush_text();
        if self.response_parts.is_empty() {
            // A turn always ends in a response, if only an empty one.
            self.response_parts
                .push(json!({"part_kind": "text", "content": ""}));
        }
        self.flush_response();
        self.messages
    }

    fn flush_text(&mut self) {
        if !self.text.is_empty() {
            let text = std::mem::take(&mut self.text);
            self.response_parts
                .push(json!({"part_kind": "text", "content": text}));
        }
    }

    fn flush_response(&mut self) {
        if !self.response_parts.is_empty() {
            let parts = std::mem::take(&mut self.response_parts);
            self.messages.push(json!({
                "kind": "response", "parts": parts, "model_name": self.model_name,
                "timestamp": clock::now_rfc3339(),
            }));
        }
    }

    fn flush_returns(&mut self) {
        if !self.return_parts.is_empty() {
            let parts = std::mem::take(&mut self.return_parts);
            self.messages
                .push(json!({"kind": "request", "parts": parts}));
        }
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

    #[test]
    fn transcript_folds_tool_rounds_like_pydantic_ai() {
        let mut t = Transcript::new("m");
        t.token("Let me look. ");
        t.tool_call("c1", "ls", &json!({"path": "."}));
        t.tool_result("c1", &json!("a.txt"));
        t.token("There is a.txt");
        let msgs = t.finish(Some("There is a.txt"));
        let kinds: Vec<&str> = msgs.iter().map(|m| m["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["response", "request", "response"]);
        assert_eq!(
            msgs[0]["parts"][0],
            json!({"part_kind": "text", "content": "Let me look. "})
        );
        assert_eq!(msgs[0]["parts"][1]["part_kind"], "tool-call");
        assert_eq!(msgs[1]["parts"][0]["tool_name"], "ls");
        assert_eq!(msgs[1]["parts"][0]["content"], "a.txt");
        assert_eq!(
            msgs[2]["parts"],
            json!([{"part_kind": "text", "content": "There is a.txt"}])
        );
        let request: Value = serde_json::from_str(&request_message("list files", "ts")).unwrap();
        assert_eq!(request["parts"][0]["part_kind"], "user-prompt");
        assert_eq!(request["parts"][0]["content"], "list files");
    }

    #[test]
    fn transcript_of_a_turn_with_no_text_still_ends_in_a_response() {
        let msgs = Transcript::new("m").finish(None);
        assert_eq!(msgs.len(), 1);
        assert_eq!(
            msgs[0]["parts"],
            json!([{"part_kind": "text", "content": ""}])
        );
        let msgs = Transcript::new("m").finish(Some("from done"));
        assert_eq!(msgs[0]["parts"][0]["content"], "from done");
    }
}
