//! Harnesses shared by the `fuzz/` targets and by the corpus replay test
//! (`tests/fuzz_corpus.rs`), so `cargo test` checks every corpus file with
//! exactly the code the fuzzer runs. Each harness panics on a finding.

// Panicking is how a harness reports a finding.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use crate::http::chunked::{ChunkError, ChunkedDecoder};
use crate::http::{ParserLimits, Progress, RequestParser};

const LIMITS: ParserLimits = ParserLimits {
    max_head: 4096,
    max_body: 8192,
    id_header: Some("x-request-id"),
};

/// A request parser's decisions, comparable across splits.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    Continue,
    Request {
        method: String,
        path: String,
        body_len: usize,
    },
    Reject(u16),
}

/// Feeds `data` to a parser in pieces of at most `step` bytes, buffering
/// unconsumed input as the connection does, and records every decision.
fn decisions(data: &[u8], step: usize) -> Vec<Decision> {
    let mut parser = RequestParser::new(LIMITS);
    let mut buf: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    for piece in data.chunks(step.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            let (used, progress) = parser.advance(&buf);
            assert!(used <= buf.len(), "consumed more than it was given");
            buf.drain(..used);
            // Never holds more than a head plus one piece of unconsumed input.
            assert!(
                buf.len() <= LIMITS.max_head + step,
                "unconsumed input grew to {}",
                buf.len()
            );
            match progress {
                Progress::NeedMore => break,
                Progress::SendContinue => out.push(Decision::Continue),
                Progress::Request(r) => {
                    assert!(r.body.len() <= LIMITS.max_body, "body over the limit");
                    out.push(Decision::Request {
                        method: r.head.method,
                        path: r.head.path,
                        body_len: r.body.len(),
                    });
                }
                Progress::Reject(r) => {
                    assert!(
                        matches!(r.status, 400 | 413 | 431 | 501),
                        "status {}",
                        r.status
                    );
                    out.push(Decision::Reject(r.status));
                    return out;
                }
            }
        }
    }
    out
}

/// `http_request`: arbitrary bytes, fed whole and split at points the
/// input chooses; never a panic, bounded memory, the same decisions.
pub fn http_request(data: &[u8]) {
    let whole = decisions(data, data.len());
    let step = data.first().map_or(1, |&b| usize::from(b % 64) + 1);
    // Byte-at-a-time re-parses the head once per byte (quadratic), so only
    // for short inputs; the input-chosen step covers the rest.
    let byte_by_byte = if data.len() <= 512 { 1 } else { step };
    for s in [byte_by_byte, step] {
        assert_eq!(
            decisions(data, s),
            whole,
            "split every {s} bytes decides otherwise"
        );
    }
}

fn decode_chunked(data: &[u8], step: usize) -> (Result<bool, ChunkError>, Vec<u8>) {
    let mut dec = ChunkedDecoder::new(LIMITS.max_body, LIMITS.max_head);
    let mut body = Vec::new();
    let mut pending = Vec::new();
    for piece in data.chunks(step.max(1)) {
        pending.extend_from_slice(piece);
        match dec.decode(&pending, &mut body) {
            Ok(used) => {
                pending.drain(..used);
            }
            Err(e) => return (Err(e), body),
        }
        assert!(body.len() <= LIMITS.max_body);
        if dec.is_done() {
            break;
        }
    }
    (Ok(dec.is_done()), body)
}

/// `chunked_body`: the chunked decoder alone, whole and split.
pub fn chunked_body(data: &[u8]) {
    let (whole, body) = decode_chunked(data, data.len());
    let step = data.first().map_or(1, |&b| usize::from(b % 16) + 1);
    for s in [1, step] {
        let (split, split_body) = decode_chunked(data, s);
        assert_eq!(split, whole, "split every {s} bytes decides otherwise");
        if whole == Ok(true) {
            assert_eq!(split_body, body);
        }
    }
}

/// `ws_handshake`: a request head through the parser, then the upgrade
/// checks; the accept key, when given, is a 28-character base64 string.
pub fn ws_handshake(data: &[u8]) {
    let mut parser = RequestParser::new(LIMITS);
    if let (_, Progress::Request(req)) = parser.advance(data) {
        match crate::ws::check_handshake(&req.head) {
            Ok(accept) => assert_eq!(accept.len(), 28),
            Err(resp) => assert!(matches!(resp.status, 400 | 426)),
        }
    }
}

/// `ws_client_op`: a client text frame through the op parser.
pub fn ws_client_op(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let crate::ws::ClientOp::Message(content) = crate::ws::parse_client_op(text) {
            assert!(!content.is_empty());
        }
    }
}

fn upstream_events(
    data: &[u8],
    step: usize,
) -> (Vec<crate::agent::AgentEvent>, Result<(), String>) {
    let mut decoder = crate::agent::openai::UpstreamDecoder::new(1 << 20);
    let mut events = Vec::new();
    for piece in data.chunks(step.max(1)) {
        if let Err(e) = decoder.feed(piece, &mut events) {
            return (events, Err(e));
        }
    }
    let end = if decoder.is_finished() {
        Ok(())
    } else {
        decoder.finish(&mut events)
    };
    (events, end)
}

/// `sse_stream`: an upstream's response bytes (head, chunked or sized body,
/// SSE) through the OpenAI stream decoder, whole and split: the same events
/// and the same outcome, never a panic.
pub fn sse_stream(data: &[u8]) {
    let whole = upstream_events(data, data.len());
    let step = data.first().map_or(1, |&b| usize::from(b % 32) + 1);
    let byte_by_byte = if data.len() <= 1024 { 1 } else { step };
    for s in [byte_by_byte, step] {
        assert_eq!(
            upstream_events(data, s),
            whole,
            "split every {s} bytes decodes otherwise"
        );
    }
}

fn exec_events(data: &[u8], step: usize) -> Vec<Result<crate::agent::AgentEvent, String>> {
    let mut lines = crate::agent::lines::LineDecoder::new(4096);
    let mut out = Vec::new();
    for piece in data.chunks(step.max(1)) {
        if lines
            .feed(piece, |l| out.push(crate::agent::parse_exec_line(l)))
            .is_err()
        {
            out.push(Err("line too long".into()));
            return out;
        }
    }
    if let Some(rest) = lines.finish() {
        out.push(crate::agent::parse_exec_line(&rest));
    }
    out
}

/// `exec_lines`: an exec agent's stdout through the line splitter and the
/// event parser, whole and split: the same results, never a panic.
pub fn exec_lines(data: &[u8]) {
    let whole = exec_events(data, data.len());
    let step = data.first().map_or(1, |&b| usize::from(b % 32) + 1);
    for s in [1, step] {
        assert_eq!(
            exec_events(data, s),
            whole,
            "split every {s} bytes parses otherwise"
        );
    }
}

fn worker_events(
    data: &[u8],
    step: usize,
) -> (Vec<crate::agent::worker::WorkerLine>, Result<(), String>) {
    let mut decoder = crate::agent::worker::WorkerDecoder::new(4096);
    let mut out = Vec::new();
    for piece in data.chunks(step.max(1)) {
        if let Err(e) = decoder.feed(piece, &mut out) {
            return (out, Err(e));
        }
    }
    let end = decoder.finish(&mut out);
    (out, end)
}

/// `worker_lines`: a worker's stdout (many turns' event lines interleaved)
/// through the worker decoder, whole and split: the same events, the same
/// verdict, never a panic; every event has a positive turn, and the bytes
/// counted against the turns' output bound are the bytes of their lines.
/// Then the input as a prompt and session id: the `turn` line the server
/// would write is one JSON line that carries them back unchanged.
pub fn worker_lines(data: &[u8]) {
    let whole = worker_events(data, data.len());
    let step = data.first().map_or(1, |&b| usize::from(b % 32) + 1);
    for s in [1, step] {
        assert_eq!(
            worker_events(data, s),
            whole,
            "split every {s} bytes decodes otherwise"
        );
    }
    let counted: usize = whole.0.iter().map(|l| l.bytes).sum();
    assert!(
        counted <= data.len() + 1,
        "{counted} bytes from {}",
        data.len()
    );
    assert!(whole.0.iter().all(|l| l.turn > 0));

    let text = String::from_utf8_lossy(data).into_owned();
    let job = crate::agent::AgentJob {
        turn: data.len() as u64 + 1,
        session_id: text.clone(),
        prompt: text.clone(),
        history: Vec::new(),
        approvals: None,
    };
    let line = crate::agent::worker::turn_line(&job);
    assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
    assert_eq!(line.last(), Some(&b'\n'));
    let v: serde_json::Value = serde_json::from_slice(&line).expect("a turn line is JSON");
    assert_eq!(v["prompt"].as_str(), Some(text.as_str()));
    assert_eq!(v["session_id"].as_str(), Some(text.as_str()));
    assert_eq!(v["turn"].as_u64(), Some(job.turn));
}

/// `journal_replay`: arbitrary journal bytes through the replay that runs
/// at start: never a panic; what it accepts re-encodes to the same
/// records; and cutting the file at the valid length replays the same.
/// Each accepted `m` record's chain is read back as a cold read would
/// (never a panic; a history only when every link checks out).
pub fn journal_replay(data: &[u8]) {
    use crate::journal::{chain, Change, Loc};
    let Ok(replayed) = crate::journal::replay(data) else {
        return;
    };
    let valid = usize::try_from(replayed.valid_len).unwrap_or(usize::MAX);
    assert!(valid <= data.len());
    let again = crate::journal::replay(&data[..valid]).expect("a valid prefix replays");
    assert_eq!(again.changes, replayed.changes);
    assert_eq!(again.torn_at, None);
    let reencoded: Vec<u8> = replayed
        .changes
        .iter()
        .flat_map(|r| crate::journal::encode_linked(&r.change, r.prev))
        .collect();
    let third = crate::journal::replay(&reencoded).expect("re-encoded records replay");
    assert_eq!(third.changes, replayed.changes);
    let mut offset = 0;
    for record in replayed.changes.iter().take(16) {
        let at = Loc {
            offset,
            len: record.size as u32,
        };
        offset += record.size;
        if let Change::Messages { id, messages, .. } = &record.change {
            let _ = chain::read_history(id, at, messages.len(), chain::read_in(data));
        }
    }
}

/// `agui_run`: an AG-UI run, both halves. The input up to the first NUL is
/// a request body: reading it never panics, and a resume it carries is
/// turned into decisions (or refused) against two pending calls. The rest
/// is the turn's broadcast events, one per line, through the run's
/// translator: every frame it writes is one `data:` line of a JSON object
/// with a `type`, the run ends at most once (with `RUN_FINISHED` or
/// `RUN_ERROR`, last), and nothing is written after it.
pub fn agui_run(data: &[u8]) {
    use crate::approvals::PendingCall;
    let (body, events) = match data.iter().position(|&b| b == 0) {
        Some(nul) => (&data[..nul], &data[nul + 1..]),
        None => (data, &data[..0]),
    };
    let pending: Vec<PendingCall> = ["c1", "c2"]
        .iter()
        .map(|id| PendingCall {
            tool_call_id: (*id).into(),
            name: "rm".into(),
            args: serde_json::json!({"p": 1}),
        })
        .collect();
    let mut run = crate::agui::RunStream::new("t", "r");
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(body) {
        if let Ok(input) = crate::agui::parse_input(&map) {
            if let crate::agui::Ask::Resume(entries) = &input.ask {
                if let Ok(decisions) = crate::agui::resume_decisions(entries, &pending) {
                    let map = decisions.as_object().expect("decisions are an object");
                    assert_eq!(map.len(), pending.len(), "every pending call decided");
                    assert!(crate::approvals::check_decisions(&pending, map).is_ok());
                    assert!(
                        crate::approvals::parse_decisions(Some(decisions.clone()), &[]).is_ok()
                    );
                }
                run = run.resuming(pending.clone());
            }
        }
    }
    let mut out = Vec::new();
    let mut ended = run.start(&mut out);
    let mut ends_seen = 0;
    for line in events.split(|&b| b == b'\n') {
        let before = out.len();
        let was_ended = ended;
        ended = run.event(line, &mut out);
        if was_ended {
            assert_eq!(out.len(), before, "nothing after the end");
        }
        ends_seen += usize::from(!was_ended && ended);
    }
    assert!(ends_seen <= 1);
    let text = std::str::from_utf8(&out).expect("frames are UTF-8");
    let frames: Vec<&str> = text.split_terminator("\n\n").collect();
    for (i, frame) in frames.iter().enumerate() {
        let json = frame.strip_prefix("data: ").expect("a data line");
        assert!(!json.contains('\n'), "one line per frame");
        let v: serde_json::Value = serde_json::from_str(json).expect("a JSON event");
        let kind = v["type"].as_str().expect("a type");
        let terminal = kind == "RUN_FINISHED" || kind == "RUN_ERROR";
        assert_eq!(terminal, ended && i == frames.len() - 1, "{kind} at {i}");
    }
}

/// `approvals`: what people and agents say about tool approvals. The bytes
/// as a decisions body (`{"approvals": {...}}`) against two pending calls:
/// checked without a panic, and a body both checks accept decides exactly
/// the pending calls. The same bytes as an agent's `approval_required` and
/// `done` data (its `tool_calls` and `messages`): read or refused, and
/// calls that are read have unique, non-empty ids.
pub fn approvals(data: &[u8]) {
    use crate::approvals::{check_decisions, parse_decisions, parse_request, PendingCall};
    let pending: Vec<PendingCall> = ["c1", "c2"]
        .iter()
        .map(|id| PendingCall {
            tool_call_id: (*id).into(),
            name: "rm".into(),
            args: serde_json::json!({}),
        })
        .collect();
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if let Ok(decisions) = parse_decisions(value.get("approvals").cloned(), &["body"]) {
        let map = decisions
            .as_object()
            .expect("checked decisions are an object");
        if check_decisions(&pending, map).is_ok() {
            let mut ids: Vec<&String> = map.keys().collect();
            ids.sort();
            assert_eq!(ids, ["c1", "c2"]);
        }
    }
    if let Ok(Some(calls)) = parse_request(&value) {
        assert!(!calls.is_empty());
        let mut ids: Vec<&str> = calls.iter().map(|c| c.tool_call_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), calls.len(), "unique ids");
        assert!(ids.iter().all(|id| !id.is_empty()));
    }
    // As the `data` of an agent's last line: its `messages` are kept as
    // written, so each one read is the JSON text of an object.
    for op in ["done", "approval_required"] {
        let mut line = format!("{{\"op\":\"{op}\",\"data\":").into_bytes();
        line.extend_from_slice(data);
        line.push(b'}');
        if let Ok(crate::agent::AgentEvent::Done {
            messages: Some(messages),
            ..
        }) = crate::agent::parse_exec_line(&line)
        {
            for m in messages {
                let v: serde_json::Value = serde_json::from_str(&m).expect("a message is JSON");
                assert!(v["parts"].is_array(), "{m}");
            }
        }
    }
}
