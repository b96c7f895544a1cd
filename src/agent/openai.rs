//! The OpenAI-compatible Chat Completions client, sans-IO: the request
//! bytes, and a decoder that takes the response bytes in arbitrary pieces
//! (status line and headers by httparse, chunked or sized or until-EOF
//! body, SSE `data:` lines, `[DONE]`) and returns [`AgentEvent`]s.
//!
//! The reactor owns the socket: it connects (non-blocking) to the address
//! resolved once at start, writes [`request`], and feeds what it reads to
//! [`UpstreamDecoder::feed`].

use std::net::SocketAddr;

use serde_json::{json, Value};

use super::lines::LineDecoder;
use super::{AgentEvent, AgentJob};
use crate::http::chunked::{ChunkError, ChunkedDecoder};

/// Where and how to reach the upstream model (`--openai-base-url` etc.).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// `host[:port]` as written in the URL, for the `Host` header.
    pub authority: String,
    /// Resolved once at start, so no lookup ever blocks the loop.
    pub addr: SocketAddr,
    /// The URL's path without a trailing slash (e.g. `/v1`).
    pub base_path: String,
    pub model: String,
    pub api_key: Option<String>,
    pub system_prompt: Option<String>,
}

/// Parses `http://host[:port][/path]`. `https://` is refused: this build
/// has no TLS (see docs/agents.md).
pub fn parse_base_url(url: &str) -> Result<(String, u16, String), String> {
    if url.starts_with("https://") {
        return Err(format!(
            "{url}: https is not supported (this build has no TLS); use http:// to a local server, \
             or a TLS-terminating proxy on this machine"
        ));
    }
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: the base URL must start with http://"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if authority.is_empty() {
        return Err(format!("{url}: no host"));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => match p.parse::<u16>() {
            Ok(port) => (
                h.trim_start_matches('[').trim_end_matches(']').to_owned(),
                port,
            ),
            Err(_) if authority.starts_with('[') && authority.ends_with(']') => (
                authority
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned(),
                80,
            ),
            Err(_) => return Err(format!("{url}: bad port")),
        },
        _ => (
            authority
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            80,
        ),
    };
    Ok((host, port, path.trim_end_matches('/').to_owned()))
}

/// The chat history as OpenAI messages: user prompts and assistant text
/// from the pydantic-ai `ModelMessage`s (tool parts are not replayed).
fn messages(config: &UpstreamConfig, job: &AgentJob) -> Vec<Value> {
    let mut out = Vec::new();
    if let Some(system) = &config.system_prompt {
        out.push(json!({"role": "system", "content": system}));
    }
    for raw in &job.history {
        let Ok(message) = serde_json::from_str::<Value>(raw) else {
            continue;
        };
        let role = match message["kind"].as_str() {
            Some("request") => "user",
            Some("response") => "assistant",
            _ => continue,
        };
        let text: String = message["parts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| matches!(p["part_kind"].as_str(), Some("user-prompt" | "text")))
            .filter_map(|p| p["content"].as_str())
            .collect();
        if !text.is_empty() {
            out.push(json!({"role": role, "content": text}));
        }
    }
    // A resumed turn (after tool approvals) has no new user message; this
    // agent never asks for approvals, so only a journal from another agent
    // can bring one here.
    if job.approvals.is_none() {
        out.push(json!({"role": "user", "content": job.prompt}));
    }
    out
}

/// The whole HTTP request for one turn.
pub fn request(config: &UpstreamConfig, job: &AgentJob) -> Vec<u8> {
    let body = json!({"model": config.model, "stream": true, "messages": messages(config, job)})
        .to_string();
    let mut head = format!(
        "POST {}/chat/completions HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Accept: text/event-stream\r\nConnection: close\r\nContent-Length: {}\r\n",
        config.base_path,
        config.authority,
        body.len()
    );
    if let Some(key) = &config.api_key {
        head.push_str(&format!("Authorization: Bearer {key}\r\n"));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// Most bytes of a response head, an error body, or one SSE line.
const MAX_HEAD: usize = 16 * 1024;
const MAX_ERROR_BODY: usize = 16 * 1024;
const MAX_SSE_LINE: usize = 1024 * 1024;

#[derive(Debug)]
enum Framing {
    Chunked(ChunkedDecoder),
    Sized(u64),
    UntilEof,
}

#[derive(Debug)]
enum Phase {
    Head(Vec<u8>),
    Stream(Framing),
    /// A non-2xx status: collect the body for the error message.
    ErrorBody {
        status: u16,
        framing: Framing,
        body: Vec<u8>,
    },
    Finished,
}

#[derive(Debug, Default)]
struct ToolCallDraft {
    id: String,
    name: String,
    arguments: String,
}

/// Turns the upstream's response bytes into agent events.
#[derive(Debug)]
pub struct UpstreamDecoder {
    phase: Phase,
    sse: LineDecoder,
    data: String,
    thinking: bool,
    tool_calls: Vec<ToolCallDraft>,
    /// Received body bytes the framing has not consumed yet.
    pending: Vec<u8>,
    /// Bytes of body decoded so far, against `max_body`.
    body_bytes: u64,
    max_body: u64,
}

impl UpstreamDecoder {
    pub fn new(max_body: u64) -> Self {
        UpstreamDecoder {
            phase: Phase::Head(Vec::new()),
            sse: LineDecoder::new(MAX_SSE_LINE),
            data: String::new(),
            thinking: false,
            tool_calls: Vec::new(),
            pending: Vec::new(),
            body_bytes: 0,
            max_body,
        }
    }

    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Finished)
    }

    /// Feeds response bytes. Events come out as they complete; an `Err` is
    /// the reason the turn fails (and the decoder takes nothing more).
    pub fn feed(&mut self, input: &[u8], events: &mut Vec<AgentEvent>) -> Result<(), String> {
        let result = self.feed_inner(input, events);
        if result.is_err() {
            self.phase = Phase::Finished;
        }
        result
    }

    fn feed_inner(&mut self, input: &[u8], events: &mut Vec<AgentEvent>) -> Result<(), String> {
        match &mut self.phase {
            Phase::Finished => Ok(()),
            Phase::Head(buf) => {
                buf.extend_from_slice(input);
                let mut headers = [httparse::EMPTY_HEADER; 64];
                let mut resp = httparse::Response::new(&mut headers);
                let used = match resp.parse(buf) {
                    Ok(httparse::Status::Complete(n)) => n,
                    Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                        return Err("upstream response head too large".into())
                    }
                    Ok(httparse::Status::Partial) => return Ok(()),
                    Err(e) => return Err(format!("upstream sent a malformed response ({e})")),
                };
                let status = resp.code.unwrap_or(0);
                let framing = framing_of(resp.headers, self.max_body)?;
                let rest = buf[used..].to_vec();
                self.phase = if (200..300).contains(&status) {
                    Phase::Stream(framing)
                } else {
                    Phase::ErrorBody {
                        status,
                        framing,
                        body: Vec::new(),
                    }
                };
                // Go on with the bytes after the head.
                self.feed_inner(&rest, events)
            }
            Phase::Stream(framing) => {
                // Framing may leave a partial chunk-size line unconsumed:
                // keep it for the next piece.
                self.pending.extend_from_slice(input);
                let mut body = Vec::new();
                let framed = take_body(framing, &self.pending, &mut body);
                self.body_bytes += body.len() as u64;
                if self.body_bytes > self.max_body {
                    return Err("upstream stream passed the output bound".into());
                }
                // What was decoded before a framing error still counts, so
                // the events do not depend on how the bytes arrived.
                self.sse_bytes(&body, events)?;
                if self.is_finished() {
                    // `[DONE]` ended the stream: whatever follows is ignored.
                    return Ok(());
                }
                let (used, complete) = framed?;
                self.pending.drain(..used);
                if self.pending.len() > MAX_HEAD {
                    return Err("upstream sent malformed chunked encoding".into());
                }
                if complete {
                    self.end_of_stream(events)
                } else {
                    Ok(())
                }
            }
            Phase::ErrorBody {
                status,
                framing,
                body,
            } => {
                self.pending.extend_from_slice(input);
                let (used, complete) = take_body(framing, &self.pending, body)?;
                self.pending.drain(..used);
                if complete || body.len() >= MAX_ERROR_BODY || self.pending.len() > MAX_HEAD {
                    Err(error_reason(*status, body))
                } else {
                    Ok(())
                }
            }
        }
    }

    /// The upstream closed the connection.
    pub fn finish(&mut self, events: &mut Vec<AgentEvent>) -> Result<(), String> {
        let phase = std::mem::replace(&mut self.phase, Phase::Finished);
        match phase {
            Phase::Finished => Ok(()),
            Phase::Head(_) => Err("upstream closed the connection before answering".into()),
            Phase::Stream(Framing::UntilEof) => {
                self.phase = Phase::Stream(Framing::UntilEof);
                self.end_of_stream(events)
            }
            Phase::Stream(_) => Err("upstream closed the connection mid-stream".into()),
            Phase::ErrorBody { status, body, .. } => Err(error_reason(status, &body)),
        }
    }

    fn end_of_stream(&mut self, events: &mut Vec<AgentEvent>) -> Result<(), String> {
        if let Some(rest) = self.sse.finish() {
            self.sse_line(&rest, events)?;
        }
        if !self.data.is_empty() {
            self.dispatch(events)?;
        }
        if self.is_finished() {
            return Ok(());
        }
        self.phase = Phase::Finished;
        Err("upstream stream ended without [DONE]".into())
    }

    fn sse_bytes(&mut self, bytes: &[u8], events: &mut Vec<AgentEvent>) -> Result<(), String> {
        let mut lines = Vec::new();
        self.sse
            .feed(bytes, |l| lines.push(l.to_vec()))
            .map_err(|_| "upstream sent an SSE line over 1 MiB".to_string())?;
        for line in lines {
            if self.is_finished() {
                break;
            }
            self.sse_line(&line, events)?;
        }
        Ok(())
    }

    fn sse_line(&mut self, line: &[u8], events: &mut Vec<AgentEvent>) -> Result<(), String> {
        if line.is_empty() {
            return self.dispatch(events);
        }
        if let Some(data) = line.strip_prefix(b"data:") {
            let data = data.strip_prefix(b" ").unwrap_or(data);
            if !self.data.is_empty() {
                self.data.push('\n');
            }
            self.data.push_str(&String::from_utf8_lossy(data));
        }
        // `event:`, `id:`, `retry:` and `:` comments carry nothing for us.
        Ok(())
    }

    fn dispatch(&mut self, events: &mut Vec<AgentEvent>) -> Result<(), String> {
        let data = std::mem::take(&mut self.data);
        if data.is_empty() {
            return Ok(());
        }
        if data.trim() == "[DONE]" {
            self.close_thinking(events);
            self.flush_tool_calls(events);
            events.push(AgentEvent::done(None));
            self.phase = Phase::Finished;
            return Ok(());
        }
        let chunk: Value = serde_json::from_str(&data)
            .map_err(|e| format!("upstream sent a malformed stream chunk ({e})"))?;
        if let Some(err) = chunk.get("error") {
            let message = err["message"]
                .as_str()
                .map_or_else(|| err.to_string(), str::to_owned);
            return Err(format!("upstream error: {message}"));
        }
        let choice = &chunk["choices"][0];
        let delta = &choice["delta"];
        let reasoning = delta["reasoning_content"]
            .as_str()
            .or_else(|| delta["reasoning"].as_str());
        if let Some(r) = reasoning.filter(|r| !r.is_empty()) {
            self.thinking = true;
            events.push(AgentEvent::Thinking(r.to_owned()));
        }
        if let Some(c) = delta["content"].as_str().filter(|c| !c.is_empty()) {
            self.close_thinking(events);
            events.push(AgentEvent::Token(c.to_owned()));
        }
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            self.close_thinking(events);
            let index = call["index"].as_u64().unwrap_or(0) as usize;
            if index >= 128 {
                return Err("upstream sent too many tool calls".into());
            }
            if self.tool_calls.len() <= index {
                self.tool_calls
                    .resize_with(index + 1, ToolCallDraft::default);
            }
            let draft = &mut self.tool_calls[index];
            if let Some(id) = call["id"].as_str() {
                draft.id = id.to_owned();
            }
            if let Some(name) = call["function"]["name"].as_str() {
                draft.name.push_str(name);
            }
            if let Some(args) = call["function"]["arguments"].as_str() {
                draft.arguments.push_str(args);
            }
        }
        if choice["finish_reason"].as_str() == Some("tool_calls") {
            self.flush_tool_calls(events);
        }
        Ok(())
    }

    fn close_thinking(&mut self, events: &mut Vec<AgentEvent>) {
        if self.thinking {
            self.thinking = false;
            events.push(AgentEvent::ThinkingDone);
        }
    }

    fn flush_tool_calls(&mut self, events: &mut Vec<AgentEvent>) {
        for draft in self.tool_calls.drain(..) {
            let details =
                serde_json::from_str(&draft.arguments).unwrap_or(Value::String(draft.arguments));
            events.push(AgentEvent::ToolCall {
                id: draft.id,
                name: draft.name,
                details,
            });
        }
    }
}

fn framing_of(headers: &[httparse::Header], max_body: u64) -> Result<Framing, String> {
    let mut framing = Framing::UntilEof;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if String::from_utf8_lossy(h.value)
                .to_ascii_lowercase()
                .contains("chunked")
            {
                framing = Framing::Chunked(ChunkedDecoder::new(usize::MAX, MAX_HEAD));
            }
        } else if h.name.eq_ignore_ascii_case("content-length")
            && !matches!(framing, Framing::Chunked(_))
        {
            let n: u64 = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or("upstream sent an invalid Content-Length")?;
            if n > max_body {
                return Err("upstream response passes the output bound".into());
            }
            framing = Framing::Sized(n);
        }
    }
    Ok(framing)
}

/// Decodes what `input` holds of the body into `out`. Returns the bytes
/// used and whether the body is complete.
fn take_body(
    framing: &mut Framing,
    input: &[u8],
    out: &mut Vec<u8>,
) -> Result<(usize, bool), String> {
    match framing {
        Framing::UntilEof => {
            out.extend_from_slice(input);
            Ok((input.len(), false))
        }
        Framing::Sized(left) => {
            let take = input
                .len()
                .min(usize::try_from(*left).unwrap_or(usize::MAX));
            out.extend_from_slice(&input[..take]);
            *left -= take as u64;
            Ok((take, *left == 0))
        }
        Framing::Chunked(decoder) => match decoder.decode(input, out) {
            Ok(used) => Ok((used, decoder.is_done())),
            Err(ChunkError::Invalid | ChunkError::TooLarge) => {
                Err("upstream sent malformed chunked encoding".into())
            }
        },
    }
}

fn error_reason(status: u16, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            v["error"]["message"]
                .as_str()
                .or_else(|| v["error"].as_str())
                .or_else(|| v["detail"].as_str())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| text.trim().chars().take(500).collect());
    format!("upstream returned {status}: {message}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunked(body: &str, chunk: usize) -> Vec<u8> {
        let mut out = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for piece in body.as_bytes().chunks(chunk) {
            out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            out.extend_from_slice(piece);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    }

    fn decode(bytes: &[u8], step: usize) -> (Vec<AgentEvent>, Result<(), String>) {
        let mut d = UpstreamDecoder::new(1 << 24);
        let mut events = Vec::new();
        for piece in bytes.chunks(step.max(1)) {
            if let Err(e) = d.feed(piece, &mut events) {
                return (events, Err(e));
            }
        }
        let end = if d.is_finished() {
            Ok(())
        } else {
            d.finish(&mut events)
        };
        (events, end)
    }

    const STREAM: &str = concat!(
        "data: {\"choices\":[{\"delta\":{\"reasoning_content\":\"hmm\"}}]}\n\n",
        ": keep-alive\n\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\r\n\r\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\n",
        "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"c1\",\"function\":{\"name\":\"ls\",\"arguments\":\"{\\\"p\\\"\"}}]}}]}\n\n",
        "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\":1}\"}}]},\"finish_reason\":\"tool_calls\"}]}\n\n",
        "data: [DONE]\n\n",
    );

    #[test]
    fn sse_over_chunked_split_anywhere() {
        let expected = vec![
            AgentEvent::Thinking("hmm".into()),
            AgentEvent::ThinkingDone,
            AgentEvent::Token("Hel".into()),
            AgentEvent::Token("lo".into()),
            AgentEvent::ToolCall {
                id: "c1".into(),
                name: "ls".into(),
                details: json!({"p": 1}),
            },
            AgentEvent::done(None),
        ];
        for chunk in [1, 7, 64, 4096] {
            let bytes = chunked(STREAM, chunk);
            for step in [1, 3, 13, bytes.len()] {
                let (events, end) = decode(&bytes, step);
                assert_eq!(end, Ok(()), "chunk {chunk} step {step}");
                assert_eq!(events, expected, "chunk {chunk} step {step}");
            }
        }
    }

    #[test]
    fn sized_and_until_eof_bodies() {
        let body = "data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\ndata: [DONE]\n\n";
        let sized = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        assert_eq!(decode(sized.as_bytes(), 5).0.len(), 2);
        let eof = format!("HTTP/1.1 200 OK\r\n\r\n{body}");
        assert_eq!(
            decode(eof.as_bytes(), 5),
            (
                vec![AgentEvent::Token("x".into()), AgentEvent::done(None)],
                Ok(())
            )
        );
    }

    #[test]
    fn errors_carry_the_upstreams_reason() {
        let body = r#"{"error":{"message":"model 'x' not found","type":"invalid_request_error"}}"#;
        let resp = format!(
            "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let (_, end) = decode(resp.as_bytes(), 9);
        assert_eq!(
            end,
            Err("upstream returned 404: model 'x' not found".into())
        );
        let resp = "HTTP/1.1 500 Internal Server Error\r\nConnection: close\r\n\r\noops";
        assert_eq!(
            decode(resp.as_bytes(), 100).1,
            Err("upstream returned 500: oops".into())
        );
        let truncated = &chunked(STREAM, 16)[..200];
        assert!(decode(truncated, 100).1.unwrap_err().contains("mid-stream"));
        let no_done =
            "HTTP/1.1 200 OK\r\n\r\ndata: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n";
        assert_eq!(
            decode(no_done.as_bytes(), 100).1,
            Err("upstream stream ended without [DONE]".into())
        );
        let garbage = "HTTP/1.1 200 OK\r\n\r\ndata: {nope\n\n";
        assert!(decode(garbage.as_bytes(), 100)
            .1
            .unwrap_err()
            .contains("malformed stream chunk"));
        assert!(decode(b"NOT HTTP\r\n\r\n", 100)
            .1
            .unwrap_err()
            .contains("malformed response"));
    }

    #[test]
    fn base_urls() {
        assert_eq!(
            parse_base_url("http://127.0.0.1:11434/v1/"),
            Ok(("127.0.0.1".into(), 11434, "/v1".into()))
        );
        assert_eq!(
            parse_base_url("http://localhost"),
            Ok(("localhost".into(), 80, "".into()))
        );
        assert_eq!(
            parse_base_url("http://[::1]:8080/v1"),
            Ok(("::1".into(), 8080, "/v1".into()))
        );
        assert!(parse_base_url("https://api.openai.com/v1")
            .unwrap_err()
            .contains("no TLS"));
        assert!(parse_base_url("ftp://x").is_err());
        assert!(parse_base_url("http://h:99999").is_err());
    }

    #[test]
    fn request_carries_model_history_and_key() {
        let config = UpstreamConfig {
            authority: "h:1".into(),
            addr: "127.0.0.1:1".parse().unwrap(),
            base_path: "/v1".into(),
            model: "m".into(),
            api_key: Some("sk".into()),
            system_prompt: Some("be brief".into()),
        };
        let job = AgentJob {
            turn: 1,
            session_id: "s".into(),
            prompt: "now".into(),
            history: vec![
                r#"{"kind":"request","parts":[{"part_kind":"user-prompt","content":"before"}]}"#
                    .into(),
                r#"{"kind":"response","parts":[{"part_kind":"text","content":"reply"}]}"#.into(),
            ],
            approvals: None,
        };
        let bytes = request(&config, &job);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("POST /v1/chat/completions HTTP/1.1\r\nHost: h:1\r\n"));
        assert!(text.contains("Authorization: Bearer sk\r\n"));
        let body: Value = serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(body["stream"], true);
        assert_eq!(
            body["messages"],
            json!([
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "before"},
                {"role": "assistant", "content": "reply"},
                {"role": "user", "content": "now"},
            ])
        );
    }
}
