//! A turn folded into pydantic-ai `ModelMessage` JSON, as it streams.
//!
//! The texts are written directly (by hand for the per-turn parts, serde
//! derive for tool parts; parts kept as JSON text), never built as
//! `serde_json::Value` trees: a
//! tree per message was a quarter of a turn's instructions (callgrind).
//! Keys stay in the order the history has always had (alphabetical), so a
//! journal written before reads the same.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::Value;

use crate::approvals::PendingCall;
use crate::clock;
use crate::json;

/// The user's request of a turn, as pydantic-ai stores it (written to the
/// history when the turn starts, so a crash mid-turn keeps the prompt).
pub fn request_message(prompt: &str, timestamp: &str) -> String {
    let mut part = Vec::with_capacity(prompt.len() + 96);
    part.extend_from_slice(b"{\"content\":");
    json::push_str(&mut part, prompt);
    part.extend_from_slice(b",\"part_kind\":\"user-prompt\",\"timestamp\":");
    json::push_str(&mut part, timestamp);
    part.push(b'}');
    message("request", &[into_text(part)], None)
}

/// Folds a turn's answer into pydantic-ai `ModelMessage`s as it streams
/// (the request is [`request_message`]): a response with the text before
/// any tool calls and the calls; a request with the matching returns; and
/// so on; then the final text.
#[derive(Debug)]
pub struct Transcript {
    model_name: String,
    /// Whole messages, as JSON texts.
    messages: Vec<String>,
    /// Parts of the response being built, as JSON texts.
    response_parts: Vec<String>,
    /// Parts of the tool-return request being built, as JSON texts.
    return_parts: Vec<String>,
    text: String,
    /// The thinking being streamed (a `thinking` part once it ends).
    thinking: String,
    /// Names of the calls made, to label their returns.
    call_names: HashMap<String, String>,
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
            thinking: String::new(),
            call_names: HashMap::new(),
            reply: String::new(),
        }
    }

    /// A resumed turn's transcript knows the calls the turn before made
    /// (and a person decided on), to label their returns.
    pub fn resuming(model_name: &str, calls: &[PendingCall]) -> Self {
        let mut t = Transcript::new(model_name);
        t.call_names = calls
            .iter()
            .map(|c| (c.tool_call_id.clone(), c.name.clone()))
            .collect();
        t
    }

    pub fn token(&mut self, t: &str) {
        self.flush_returns();
        self.flush_thinking();
        self.text.push_str(t);
        self.reply.push_str(t);
    }

    /// Whether this turn made call `id` (streamed as `tool_call`).
    pub fn has_call(&self, id: &str) -> bool {
        self.call_names.contains_key(id)
    }

    pub fn thinking(&mut self, t: &str) {
        self.flush_returns();
        self.flush_text();
        self.thinking.push_str(t);
    }

    /// The end of a thinking run: it becomes a part of the response.
    pub fn thinking_done(&mut self) {
        self.flush_thinking();
    }

    pub fn tool_call(&mut self, id: &str, name: &str, args: &Value) {
        #[derive(Serialize)]
        struct ToolCall<'a> {
            args: &'a Value,
            part_kind: &'static str,
            tool_call_id: &'a str,
            tool_name: &'a str,
        }
        self.flush_returns();
        self.flush_thinking();
        self.flush_text();
        self.call_names.insert(id.to_owned(), name.to_owned());
        self.response_parts.push(to_json(&ToolCall {
            args,
            part_kind: "tool-call",
            tool_call_id: id,
            tool_name: name,
        }));
    }

    pub fn tool_result(&mut self, id: &str, content: &Value) {
        #[derive(Serialize)]
        struct ToolReturn<'a> {
            content: &'a Value,
            part_kind: &'static str,
            timestamp: &'a str,
            tool_call_id: &'a str,
            tool_name: &'a str,
        }
        self.flush_thinking();
        self.flush_text();
        self.flush_response();
        let name = self.call_names.get(id).map_or("", String::as_str);
        let part = to_json(&ToolReturn {
            content,
            part_kind: "tool-return",
            timestamp: &clock::now_rfc3339(),
            tool_call_id: id,
            tool_name: name,
        });
        self.return_parts.push(part);
    }

    /// The messages of the turn so far, the last response closed.
    pub fn finish(mut self, final_text: Option<&str>) -> Vec<String> {
        self.flush_returns();
        if let Some(text) = final_text {
            // The agent's own account of its reply, when it streamed none.
            if self.text.is_empty() && self.response_parts.is_empty() && !text.is_empty() {
                self.text = text.to_owned();
            }
        }
        self.flush_thinking();
        self.flush_text();
        if self.response_parts.is_empty() {
            // A turn always ends in a response, if only an empty one.
            self.response_parts.push(text_part(""));
        }
        self.flush_response();
        self.messages
    }

    fn flush_thinking(&mut self) {
        if !self.thinking.is_empty() {
            let mut part = Vec::with_capacity(self.thinking.len() + 40);
            part.extend_from_slice(b"{\"content\":");
            json::push_str(&mut part, &self.thinking);
            part.extend_from_slice(b",\"part_kind\":\"thinking\"}");
            self.thinking.clear();
            self.response_parts.push(into_text(part));
        }
    }

    fn flush_text(&mut self) {
        if !self.text.is_empty() {
            let part = text_part(&self.text);
            self.text.clear();
            self.response_parts.push(part);
        }
    }

    fn flush_response(&mut self) {
        if !self.response_parts.is_empty() {
            let parts = std::mem::take(&mut self.response_parts);
            let stamp = clock::now_rfc3339();
            let message = message("response", &parts, Some((&self.model_name, &stamp)));
            self.messages.push(message);
        }
    }

    fn flush_returns(&mut self) {
        if !self.return_parts.is_empty() {
            let parts = std::mem::take(&mut self.return_parts);
            self.messages.push(message("request", &parts, None));
        }
    }
}

fn text_part(content: &str) -> String {
    let mut part = Vec::with_capacity(content.len() + 40);
    part.extend_from_slice(b"{\"content\":");
    json::push_str(&mut part, content);
    part.extend_from_slice(b",\"part_kind\":\"text\"}");
    into_text(part)
}

/// `{"kind":…,["model_name":…,]"parts":[…][,"timestamp":…]}` around parts
/// that are JSON texts already.
fn message(kind: &str, parts: &[String], response: Option<(&str, &str)>) -> String {
    let len: usize = parts.iter().map(|p| p.len() + 1).sum();
    let mut out = Vec::with_capacity(len + 96);
    out.extend_from_slice(b"{\"kind\":");
    json::push_str(&mut out, kind);
    if let Some((model_name, _)) = response {
        out.extend_from_slice(b",\"model_name\":");
        json::push_str(&mut out, model_name);
    }
    out.extend_from_slice(b",\"parts\":");
    json::push_array(&mut out, parts);
    if let Some((_, timestamp)) = response {
        out.extend_from_slice(b",\"timestamp\":");
        json::push_str(&mut out, timestamp);
    }
    out.push(b'}');
    into_text(out)
}

/// JSON built here from UTF-8 pieces is UTF-8.
fn into_text(json: Vec<u8>) -> String {
    String::from_utf8(json).unwrap_or_default()
}

fn to_json(value: &impl Serialize) -> String {
    // The parts are plain structs of strings and JSON values: serializing
    // them cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(texts: &[String]) -> Vec<Value> {
        texts
            .iter()
            .map(|t| serde_json::from_str(t).unwrap())
            .collect()
    }

    #[test]
    fn transcript_folds_tool_rounds_like_pydantic_ai() {
        let mut t = Transcript::new("m");
        t.token("Let me look. ");
        t.tool_call("c1", "ls", &json!({"path": "."}));
        t.tool_result("c1", &json!("a.txt"));
        t.token("There is a.txt");
        let msgs = parse(&t.finish(Some("There is a.txt")));
        let kinds: Vec<&str> = msgs.iter().map(|m| m["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["response", "request", "response"]);
        assert_eq!(
            msgs[0]["parts"][0],
            json!({"part_kind": "text", "content": "Let me look. "})
        );
        assert_eq!(
            msgs[0]["parts"][1],
            json!({"part_kind": "tool-call", "tool_name": "ls", "args": {"path": "."}, "tool_call_id": "c1"})
        );
        assert_eq!(msgs[0]["model_name"], "m");
        assert_eq!(msgs[1]["parts"][0]["part_kind"], "tool-return");
        assert_eq!(msgs[1]["parts"][0]["tool_name"], "ls");
        assert_eq!(msgs[1]["parts"][0]["tool_call_id"], "c1");
        assert_eq!(msgs[1]["parts"][0]["content"], "a.txt");
        assert_eq!(
            msgs[2]["parts"],
            json!([{"part_kind": "text", "content": "There is a.txt"}])
        );
        for m in [&msgs[0], &msgs[2]] {
            let stamp = m["timestamp"].as_str().unwrap();
            assert!(stamp.len() == 27 && stamp.ends_with('Z'), "{stamp}");
        }
    }

    #[test]
    fn texts_keep_the_historical_key_order_and_escaping() {
        // The bytes the `Value`-built texts had, so histories and journals
        // written before this change compare equal.
        assert_eq!(
            request_message("say \"hi\"\n", "2026-01-01T00:00:00.000000Z"),
            r#"{"kind":"request","parts":[{"content":"say \"hi\"\n","part_kind":"user-prompt","timestamp":"2026-01-01T00:00:00.000000Z"}]}"#
        );
        let response = message(
            "response",
            &[text_part("a"), text_part("b")],
            Some(("echo", "T")),
        );
        assert_eq!(
            response,
            r#"{"kind":"response","model_name":"echo","parts":[{"content":"a","part_kind":"text"},{"content":"b","part_kind":"text"}],"timestamp":"T"}"#
        );
        let old = json!({
            "kind": "response",
            "parts": [{"part_kind": "text", "content": "a"}, {"part_kind": "text", "content": "b"}],
            "model_name": "echo",
            "timestamp": "T",
        });
        assert_eq!(response, old.to_string());
    }

    #[test]
    fn thinking_is_stored_as_a_part_before_the_text() {
        let mut t = Transcript::new("m");
        t.thinking("Let me ");
        t.thinking("think.");
        t.thinking_done();
        t.token("Done.");
        let msgs = parse(&t.finish(None));
        assert_eq!(
            msgs[0]["parts"],
            json!([{"part_kind": "thinking", "content": "Let me think."}, {"part_kind": "text", "content": "Done."}])
        );
        // A thinking run the agent never closed is kept too.
        let mut t = Transcript::new("m");
        t.thinking("hmm");
        let msgs = parse(&t.finish(None));
        assert_eq!(
            msgs[0]["parts"],
            json!([{"part_kind": "thinking", "content": "hmm"}])
        );
    }

    #[test]
    fn a_resumed_turn_labels_the_returns_of_the_calls_before_it() {
        let call = PendingCall {
            tool_call_id: "c1".into(),
            name: "rm".into(),
            args: json!({}),
        };
        let mut t = Transcript::resuming("m", &[call]);
        t.tool_result("c1", &json!("removed"));
        t.token("Removed.");
        let msgs = parse(&t.finish(None));
        let kinds: Vec<&str> = msgs.iter().map(|m| m["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["request", "response"]);
        assert_eq!(msgs[0]["parts"][0]["tool_name"], "rm");
    }

    #[test]
    fn transcript_of_a_turn_with_no_text_still_ends_in_a_response() {
        let msgs = parse(&Transcript::new("m").finish(None));
        assert_eq!(msgs.len(), 1);
        assert_eq!(
            msgs[0]["parts"],
            json!([{"part_kind": "text", "content": ""}])
        );
        let msgs = parse(&Transcript::new("m").finish(Some("from done")));
        assert_eq!(msgs[0]["parts"][0]["content"], "from done");
    }
}
