//! One AG-UI run's event stream, translated from its turn's broadcast
//! events (`token`, `thinking`, `thinking_done`, `tool_call`,
//! `tool_result`, `done`, `error`, `approval_required`): each becomes the
//! AG-UI events it stands for, each message and tool call started before
//! its content and ended before the run ends. Pure: JSON in, `data:`
//! frames out.

use std::collections::{HashMap, HashSet};

use serde::Deserialize;
use serde_json::{json, Value};

use super::input::INTERRUPT_PREFIX;
use crate::approvals::PendingCall;
use crate::clock;
use crate::json::{push_str, push_u64};

/// The JSON schema of an interrupt's answer, as pydantic-ai advertises it.
const RESPONSE_SCHEMA: &str = r#"{"properties":{"approved":{"type":"boolean"},"editedArgs":{"type":"object"},"reason":{"type":"string"}},"required":["approved"],"type":"object"}"#;

/// The translator of one run.
#[derive(Debug, PartialEq, Eq)]
pub struct RunStream {
    thread_id: String,
    run_id: String,
    /// Ids given so far (messages and tool results).
    next_id: u32,
    /// The text message open now, if any.
    text: Option<String>,
    /// The reasoning message open now, if any.
    reasoning: Option<String>,
    /// The last text message: the parent of the tool calls after it.
    last_text: Option<String>,
    /// Whether any text went out (else `done`'s content is the text).
    texted: bool,
    /// Tool calls started in this run.
    calls: HashSet<String>,
    /// A resumed run: the calls it answers, announced before their
    /// results (they were started by the run before, on another stream).
    resumed: HashMap<String, PendingCall>,
    /// The run fails before its turn: why (and its code).
    failure: Option<(String, Option<&'static str>)>,
    ended: bool,
}

#[derive(Deserialize)]
struct Broadcast {
    op: String,
    #[serde(default)]
    data: Value,
}

impl RunStream {
    pub fn new(thread_id: &str, run_id: &str) -> Self {
        RunStream {
            thread_id: thread_id.to_owned(),
            run_id: run_id.to_owned(),
            next_id: 0,
            text: None,
            reasoning: None,
            last_text: None,
            texted: false,
            calls: HashSet::new(),
            resumed: HashMap::new(),
            failure: None,
            ended: false,
        }
    }

    /// A run that resumes after `calls` were decided.
    pub fn resuming(mut self, calls: Vec<PendingCall>) -> Self {
        self.resumed = calls
            .into_iter()
            .map(|c| (c.tool_call_id.clone(), c))
            .collect();
        self
    }

    /// A run refused before its turn (a resume that does not answer the
    /// pending calls): it starts, then ends with `RUN_ERROR`.
    pub fn failing(mut self, message: String, code: Option<&'static str>) -> Self {
        self.failure = Some((message, code));
        self
    }

    /// The thread: the session whose turn this run is.
    pub fn thread_id(&self) -> &str {
        &self.thread_id
    }

    /// `RUN_STARTED`, and `RUN_ERROR` too for a run refused before its
    /// turn. Returns whether the run has ended.
    pub fn start(&mut self, out: &mut Vec<u8>) -> bool {
        let started = json!({"threadId": self.thread_id, "runId": self.run_id});
        frame(out, "RUN_STARTED", started);
        if let Some((message, code)) = self.failure.take() {
            self.fail(&message, code, out);
        }
        self.ended
    }

    /// One broadcast event of the run's turn (its JSON text, as a
    /// WebSocket client gets it). Returns whether the run has ended.
    pub fn event(&mut self, event: &[u8], out: &mut Vec<u8>) -> bool {
        if self.ended {
            return true;
        }
        let Ok(Broadcast { op, data }) = serde_json::from_slice::<Broadcast>(event) else {
            return false;
        };
        let text = |key: &str| data.get(key).and_then(Value::as_str).unwrap_or("");
        match op.as_str() {
            "token" => self.text_delta(text("content"), out),
            "thinking" => self.reasoning_delta(text("content"), out),
            "thinking_done" => self.close_reasoning(out),
            "tool_call" => {
                let details = data.get("details").unwrap_or(&Value::Null);
                self.tool_call(text("tool_call_id"), text("name"), details, out);
            }
            "tool_result" => {
                let details = data.get("details").unwrap_or(&Value::Null);
                self.tool_result(text("tool_call_id"), details, out);
            }
            "done" => {
                if !self.texted && !text("content").is_empty() {
                    self.text_delta(text("content"), out);
                }
                self.finish(json!({"type": "success"}), out);
            }
            "error" => match data.get("code").and_then(Value::as_str) {
                Some("cancelled") => self.finish(json!({"type": "cancelled"}), out),
                code => {
                    let (message, code) = (text("message").to_owned(), code.map(str::to_owned));
                    self.fail(&message, code.as_deref(), out);
                }
            },
            "approval_required" => {
                let calls: Vec<PendingCall> = data
                    .get("tool_calls")
                    .cloned()
                    .and_then(|c| serde_json::from_value(c).ok())
                    .unwrap_or_default();
                self.interrupt(&calls, out);
            }
            // `approval_resolved` and the rest are not a turn's output.
            _ => {}
        }
        self.ended
    }

    /// Ends the run with `RUN_ERROR` (what was open is closed first).
    pub fn fail(&mut self, message: &str, code: Option<&str>, out: &mut Vec<u8>) {
        self.close_open(out);
        let mut e = json!({ "message": message });
        if let Some(code) = code {
            e["code"] = Value::String(code.to_owned());
        }
        frame(out, "RUN_ERROR", e);
        self.ended = true;
    }

    fn new_id(&mut self, kind: char) -> String {
        self.next_id += 1;
        format!("{}:{kind}{}", self.run_id, self.next_id)
    }

    fn text_delta(&mut self, delta: &str, out: &mut Vec<u8>) {
        if delta.is_empty() {
            return;
        }
        self.close_reasoning(out);
        let id = match &self.text {
            Some(id) => id.clone(),
            None => {
                let id = self.new_id('m');
                let start = json!({"messageId": id, "role": "assistant"});
                frame(out, "TEXT_MESSAGE_START", start);
                self.text = Some(id.clone());
                self.last_text = Some(id.clone());
                id
            }
        };
        self.texted = true;
        // Once per token: written by hand.
        out.extend_from_slice(b"data: {\"type\":\"TEXT_MESSAGE_CONTENT\",\"messageId\":");
        push_str(out, &id);
        out.extend_from_slice(b",\"delta\":");
        push_str(out, delta);
        out.extend_from_slice(b",\"timestamp\":");
        push_u64(out, clock::unix_millis());
        out.extend_from_slice(b"}\n\n");
    }

    fn close_text(&mut self, out: &mut Vec<u8>) {
        if let Some(id) = self.text.take() {
            frame(out, "TEXT_MESSAGE_END", json!({"messageId": id}));
        }
    }

    fn reasoning_delta(&mut self, delta: &str, out: &mut Vec<u8>) {
        self.close_text(out);
        let id = match &self.reasoning {
            Some(id) => id.clone(),
            None => {
                let id = self.new_id('m');
                frame(out, "REASONING_START", json!({"messageId": id}));
                let start = json!({"messageId": id, "role": "reasoning"});
                frame(out, "REASONING_MESSAGE_START", start);
                self.reasoning = Some(id.clone());
                id
            }
        };
        if !delta.is_empty() {
            let content = json!({"messageId": id, "delta": delta});
            frame(out, "REASONING_MESSAGE_CONTENT", content);
        }
    }

    fn close_reasoning(&mut self, out: &mut Vec<u8>) {
        if let Some(id) = self.reasoning.take() {
            frame(out, "REASONING_MESSAGE_END", json!({"messageId": id}));
            frame(out, "REASONING_END", json!({"messageId": id}));
        }
    }

    fn close_open(&mut self, out: &mut Vec<u8>) {
        self.close_reasoning(out);
        self.close_text(out);
    }

    /// `TOOL_CALL_START`, the arguments as one JSON text, `TOOL_CALL_END`.
    fn tool_call(&mut self, id: &str, name: &str, args: &Value, out: &mut Vec<u8>) {
        self.close_open(out);
        let mut start = json!({"toolCallId": id, "toolCallName": name});
        if let Some(parent) = &self.last_text {
            start["parentMessageId"] = Value::String(parent.clone());
        }
        frame(out, "TOOL_CALL_START", start);
        let delta = args_text(args);
        frame(
            out,
            "TOOL_CALL_ARGS",
            json!({"toolCallId": id, "delta": delta}),
        );
        frame(out, "TOOL_CALL_END", json!({"toolCallId": id}));
        self.calls.insert(id.to_owned());
    }

    fn tool_result(&mut self, id: &str, details: &Value, out: &mut Vec<u8>) {
        self.close_open(out);
        if !self.calls.contains(id) {
            // A resumed run's result for a call the run before made.
            if let Some(call) = self.resumed.get(id).cloned() {
                self.tool_call(&call.tool_call_id, &call.name, &call.args, out);
            }
        }
        let content = match details {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let message_id = self.new_id('r');
        let result =
            json!({"messageId": message_id, "toolCallId": id, "content": content, "role": "tool"});
        frame(out, "TOOL_CALL_RESULT", result);
    }

    fn finish(&mut self, outcome: Value, out: &mut Vec<u8>) {
        self.close_open(out);
        let finished =
            json!({"threadId": self.thread_id, "runId": self.run_id, "outcome": outcome});
        frame(out, "RUN_FINISHED", finished);
        self.ended = true;
    }

    /// The run ends waiting for a person: every call asked about was
    /// started in this stream (the front end shows it), then the
    /// interrupts, as pydantic-ai's adapter shapes them.
    fn interrupt(&mut self, calls: &[PendingCall], out: &mut Vec<u8>) {
        self.close_open(out);
        for call in calls {
            if !self.calls.contains(&call.tool_call_id) {
                self.tool_call(&call.tool_call_id, &call.name, &call.args, out);
            }
        }
        let schema: Value = serde_json::from_str(RESPONSE_SCHEMA).unwrap_or(Value::Null);
        let interrupts: Vec<Value> = calls
            .iter()
            .map(|c| {
                json!({
                    "id": format!("{INTERRUPT_PREFIX}{}", c.tool_call_id),
                    "reason": "tool_call",
                    "toolCallId": c.tool_call_id,
                    "message": format!("Approve {}({})?", c.name, args_text(&c.args)),
                    "responseSchema": schema,
                })
            })
            .collect();
        self.finish(json!({"type": "interrupt", "interrupts": interrupts}), out);
    }
}

/// A tool call's arguments as the JSON text AG-UI streams: a string that
/// is JSON already (what a model produced) as it is, anything else
/// serialized, no arguments as `{}`.
fn args_text(args: &Value) -> String {
    match args {
        Value::Null => "{}".to_owned(),
        Value::String(s) if serde_json::from_str::<Value>(s).is_ok() => s.clone(),
        other => other.to_string(),
    }
}

/// `data: {"type":…,<fields>,"timestamp":…}` and the blank line that ends
/// an SSE event: the type first, as every AG-UI producer writes it (a
/// `Value` object would sort it among the fields), and the time in
/// milliseconds since the epoch, as every AG-UI SDK sets it.
fn frame(out: &mut Vec<u8>, event_type: &str, fields: Value) {
    out.extend_from_slice(b"data: {\"type\":");
    push_str(out, event_type);
    if let Value::Object(fields) = fields {
        for (key, value) in &fields {
            out.push(b',');
            push_str(out, key);
            out.push(b':');
            // A `Value` serializes without failing.
            let _ = serde_json::to_writer(&mut *out, value);
        }
    }
    out.extend_from_slice(b",\"timestamp\":");
    push_u64(out, clock::unix_millis());
    out.extend_from_slice(b"}\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The events of `stream` fed `events` (JSON texts), as values.
    fn run(stream: &mut RunStream, events: &[Value]) -> Vec<Value> {
        let mut out = Vec::new();
        stream.start(&mut out);
        for e in events {
            stream.event(e.to_string().as_bytes(), &mut out);
        }
        parse(&out)
    }

    fn parse(out: &[u8]) -> Vec<Value> {
        let text = std::str::from_utf8(out).unwrap();
        assert!(text.ends_with("\n\n"), "{text:?}");
        text.split_terminator("\n\n")
            .map(|f| {
                let body = f.strip_prefix("data: ").unwrap();
                assert!(body.starts_with("{\"type\":"), "the type first: {body}");
                let mut v: Value = serde_json::from_str(body).unwrap();
                assert!(v["timestamp"].as_u64().unwrap() > 1_700_000_000_000, "{v}");
                v.as_object_mut().unwrap().remove("timestamp");
                v
            })
            .collect()
    }

    fn types(events: &[Value]) -> Vec<&str> {
        events.iter().map(|e| e["type"].as_str().unwrap()).collect()
    }

    fn ev(op: &str, data: Value) -> Value {
        json!({"op": op, "data": data, "seq": 1})
    }

    #[test]
    fn text_reasoning_and_tools_each_start_and_end() {
        let mut s = RunStream::new("t", "r");
        let out = run(
            &mut s,
            &[
                ev("thinking", json!({"content": "hm"})),
                ev("thinking_done", json!({})),
                ev("token", json!({"content": "Let me "})),
                ev("token", json!({"content": ""})),
                ev("token", json!({"content": "look."})),
                ev(
                    "tool_call",
                    json!({"tool_call_id": "c1", "name": "ls", "details": {"path": "."}}),
                ),
                ev(
                    "tool_result",
                    json!({"tool_call_id": "c1", "status": "success", "details": ["a.txt"]}),
                ),
                ev("thinking", json!({"content": "so"})),
                ev("token", json!({"content": "Found it."})),
                ev("done", json!({"content": "Let me look.Found it."})),
            ],
        );
        assert_eq!(
            types(&out),
            [
                "RUN_STARTED",
                "REASONING_START",
                "REASONING_MESSAGE_START",
                "REASONING_MESSAGE_CONTENT",
                "REASONING_MESSAGE_END",
                "REASONING_END",
                "TEXT_MESSAGE_START",
                "TEXT_MESSAGE_CONTENT",
                "TEXT_MESSAGE_CONTENT",
                "TEXT_MESSAGE_END",
                "TOOL_CALL_START",
                "TOOL_CALL_ARGS",
                "TOOL_CALL_END",
                "TOOL_CALL_RESULT",
                "REASONING_START",
                "REASONING_MESSAGE_START",
                "REASONING_MESSAGE_CONTENT",
                "REASONING_MESSAGE_END",
                "REASONING_END",
                "TEXT_MESSAGE_START",
                "TEXT_MESSAGE_CONTENT",
                "TEXT_MESSAGE_END",
                "RUN_FINISHED",
            ]
        );
        assert_eq!(
            out[0],
            json!({"type": "RUN_STARTED", "threadId": "t", "runId": "r"})
        );
        assert_eq!(out[3]["delta"], "hm");
        assert_eq!(out[2]["role"], "reasoning");
        assert_eq!(out[6]["role"], "assistant");
        assert_eq!(out[7]["messageId"], out[6]["messageId"]);
        assert_eq!(out[10]["parentMessageId"], out[6]["messageId"]);
        assert_eq!(out[11]["delta"], r#"{"path":"."}"#);
        assert_eq!(out[13]["content"], r#"["a.txt"]"#);
        assert_eq!(out[13]["role"], "tool");
        assert_ne!(out[19]["messageId"], out[6]["messageId"], "a new message");
        assert_eq!(
            out.last().unwrap(),
            &json!({"type": "RUN_FINISHED", "threadId": "t", "runId": "r", "outcome": {"type": "success"}})
        );
        let mut more = Vec::new();
        assert!(s.event(
            ev("token", json!({"content": "late"}))
                .to_string()
                .as_bytes(),
            &mut more
        ));
        assert!(more.is_empty(), "nothing after the end");
    }

    #[test]
    fn a_reply_given_only_in_done_is_still_a_message() {
        let out = run(
            &mut RunStream::new("t", "r"),
            &[ev("done", json!({"content": "all at once"}))],
        );
        assert_eq!(
            types(&out),
            [
                "RUN_STARTED",
                "TEXT_MESSAGE_START",
                "TEXT_MESSAGE_CONTENT",
                "TEXT_MESSAGE_END",
                "RUN_FINISHED"
            ]
        );
    }

    #[test]
    fn errors_and_cancels_end_the_run() {
        let out = run(
            &mut RunStream::new("t", "r"),
            &[
                ev("token", json!({"content": "par"})),
                ev("error", json!({"message": "agent exited with status 1"})),
            ],
        );
        assert_eq!(
            types(&out),
            [
                "RUN_STARTED",
                "TEXT_MESSAGE_START",
                "TEXT_MESSAGE_CONTENT",
                "TEXT_MESSAGE_END",
                "RUN_ERROR"
            ]
        );
        assert_eq!(
            out[4],
            json!({"type": "RUN_ERROR", "message": "agent exited with status 1"})
        );
        let out = run(
            &mut RunStream::new("t", "r"),
            &[ev("error", json!({"code": "busy", "message": "m"}))],
        );
        assert_eq!(out[1]["code"], "busy");
        let out = run(
            &mut RunStream::new("t", "r"),
            &[
                ev("thinking", json!({"content": "x"})),
                ev(
                    "error",
                    json!({"code": "cancelled", "message": "Turn cancelled"}),
                ),
            ],
        );
        assert_eq!(types(&out).last(), Some(&"RUN_FINISHED"));
        assert_eq!(out.last().unwrap()["outcome"], json!({"type": "cancelled"}));
        assert!(types(&out).contains(&"REASONING_END"));
        let mut refused = RunStream::new("t", "r")
            .failing("resume must answer every pending interrupt".into(), None);
        let mut out = Vec::new();
        assert!(refused.start(&mut out));
        assert_eq!(types(&parse(&out)), ["RUN_STARTED", "RUN_ERROR"]);
    }

    #[test]
    fn an_approval_request_ends_the_run_with_interrupts() {
        let calls = json!([{"tool_call_id": "c1", "name": "delete_file", "args": {"path": "a.txt"}},
                           {"tool_call_id": "c2", "name": "rename", "args": "{\"from\":\"x\"}"}]);
        let out = run(
            &mut RunStream::new("t", "r"),
            &[
                ev("token", json!({"content": "Sure."})),
                ev(
                    "tool_call",
                    json!({"tool_call_id": "c1", "name": "delete_file", "details": {"path": "a.txt"}}),
                ),
                ev("approval_required", json!({"tool_calls": calls})),
            ],
        );
        assert_eq!(
            types(&out),
            [
                "RUN_STARTED",
                "TEXT_MESSAGE_START",
                "TEXT_MESSAGE_CONTENT",
                "TEXT_MESSAGE_END",
                "TOOL_CALL_START",
                "TOOL_CALL_ARGS",
                "TOOL_CALL_END",
                "TOOL_CALL_START",
                "TOOL_CALL_ARGS",
                "TOOL_CALL_END",
                "RUN_FINISHED",
            ],
            "a call not yet streamed is started before the interrupt"
        );
        assert_eq!(out[8]["delta"], r#"{"from":"x"}"#);
        let outcome = &out[10]["outcome"];
        assert_eq!(outcome["type"], "interrupt");
        assert_eq!(
            outcome["interrupts"][0],
            json!({"id": "int-c1", "reason": "tool_call", "toolCallId": "c1",
                   "message": "Approve delete_file({\"path\":\"a.txt\"})?",
                   "responseSchema": {"type": "object", "required": ["approved"],
                       "properties": {"approved": {"type": "boolean"}, "editedArgs": {"type": "object"}, "reason": {"type": "string"}}}})
        );
        assert_eq!(
            outcome["interrupts"][1]["message"],
            "Approve rename({\"from\":\"x\"})?"
        );
    }

    #[test]
    fn a_resumed_run_announces_the_calls_it_answers_before_their_results() {
        let calls = vec![PendingCall {
            tool_call_id: "c1".into(),
            name: "delete_file".into(),
            args: json!({"path": "a.txt"}),
        }];
        let out = run(
            &mut RunStream::new("t", "r2").resuming(calls),
            &[
                ev("approval_resolved", json!({"approvals": {"c1": true}})),
                ev(
                    "tool_result",
                    json!({"tool_call_id": "c1", "status": "success", "details": "deleted"}),
                ),
                ev("token", json!({"content": "Done."})),
                ev("done", json!({"content": "Done."})),
            ],
        );
        assert_eq!(
            types(&out),
            [
                "RUN_STARTED",
                "TOOL_CALL_START",
                "TOOL_CALL_ARGS",
                "TOOL_CALL_END",
                "TOOL_CALL_RESULT",
                "TEXT_MESSAGE_START",
                "TEXT_MESSAGE_CONTENT",
                "TEXT_MESSAGE_END",
                "RUN_FINISHED",
            ]
        );
        assert_eq!(out[4]["content"], "deleted");
    }

    #[test]
    fn escaping_in_hand_written_frames() {
        let out = run(
            &mut RunStream::new("t\"", "r\n"),
            &[ev(
                "token",
                json!({"content": "a \"quoted\"\nline \u{1F600}"}),
            )],
        );
        assert_eq!(out[2]["delta"], "a \"quoted\"\nline \u{1F600}");
        assert_eq!(out[0]["runId"], "r\n");
    }
}
