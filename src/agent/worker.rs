//! The `worker` agent's wire protocol, sans-IO: the lines the server writes
//! to a long-lived worker's stdin ([`turn_line`], [`cancel_line`]) and the
//! decoder of what it prints on stdout ([`WorkerDecoder`]): exec's event
//! lines with a `"turn"` added, many turns interleaved on one stream.
//!
//! Scheduling (which worker, how many turns in flight, restarts) is
//! [`super::worker_pool`]; the pipes are the reactor's (`reactor::workers`).

use serde_json::Value;

use super::lines::LineDecoder;
use super::{parse_event, AgentEvent, AgentJob};

/// The longest line a worker may print; a longer one breaks the worker.
pub const MAX_WORKER_LINE: usize = 16 * 1024 * 1024;

/// `{"type":"turn","turn":T,"session_id":S,"prompt":P,"history":[...]}` and
/// a newline: the server hands turn `T` to the worker.
pub fn turn_line(job: &AgentJob) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        96 + job.prompt.len() + job.history.iter().map(String::len).sum::<usize>(),
    );
    out.extend_from_slice(b"{\"type\":\"turn\",\"turn\":");
    out.extend_from_slice(job.turn.to_string().as_bytes());
    out.push(b',');
    super::write_job_fields(&mut out, job);
    out.extend_from_slice(b"}\n");
    out
}

/// `{"type":"cancel","turn":T}` and a newline: the server has ended turn
/// `T` early and ignores anything more the worker says about it.
pub fn cancel_line(turn: u64) -> Vec<u8> {
    format!("{{\"type\":\"cancel\",\"turn\":{turn}}}\n").into_bytes()
}

/// Reads one stdout line of a worker: an exec event line with a positive
/// integer `"turn"`. Err says what is wrong with it.
pub fn parse_worker_line(line: &[u8]) -> Result<(u64, AgentEvent), String> {
    let value: Value = serde_json::from_slice(line).map_err(|e| format!("not JSON ({e})"))?;
    let turn = match value.get("turn") {
        None => return Err("no \"turn\"".into()),
        Some(t) => t
            .as_u64()
            .filter(|&t| t > 0)
            .ok_or("\"turn\" is not a positive integer")?,
    };
    Ok((turn, parse_event(line, &value)?))
}

/// One event a worker printed, with the bytes of its line (for the
/// per-turn output bound).
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerLine {
    pub turn: u64,
    pub event: AgentEvent,
    pub bytes: usize,
}

/// A worker's stdout, fed in arbitrary pieces: complete lines become
/// [`WorkerLine`]s; the first line that is not an event (or is over the
/// bound) is an error, after which the decoder takes nothing more (the
/// worker is broken and will be killed).
#[derive(Debug)]
pub struct WorkerDecoder {
    lines: LineDecoder,
    max_line: usize,
    broken: bool,
}

impl Default for WorkerDecoder {
    fn default() -> Self {
        WorkerDecoder::new(MAX_WORKER_LINE)
    }
}

impl WorkerDecoder {
    pub fn new(max_line: usize) -> Self {
        WorkerDecoder {
            lines: LineDecoder::new(max_line),
            max_line,
            broken: false,
        }
    }

    /// Decodes `input`, appending its complete lines' events to `out`.
    /// Err: why the worker is broken (the events before the bad line are
    /// in `out`).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<WorkerLine>) -> Result<(), String> {
        if self.broken {
            return Err("already broken".into());
        }
        let mut failure = None;
        let fed = self.lines.feed(input, |line| {
            if failure.is_none() {
                failure = decode(line, out).err();
            }
        });
        self.check(fed.is_err(), failure)
    }

    /// End of the stream: an unterminated last line counts as a line.
    pub fn finish(&mut self, out: &mut Vec<WorkerLine>) -> Result<(), String> {
        if self.broken {
            return Err("already broken".into());
        }
        let failure = match self.lines.finish() {
            Some(rest) => decode(&rest, out).err(),
            None => None,
        };
        self.check(false, failure)
    }

    fn check(&mut self, too_long: bool, failure: Option<String>) -> Result<(), String> {
        // A bad line before an over-long one is what the worker did first.
        let failure = failure
            .or_else(|| too_long.then(|| format!("printed a line over {} bytes", self.max_line)));
        match failure {
            Some(why) => {
                self.broken = true;
                Err(why)
            }
            None => Ok(()),
        }
    }
}

fn decode(line: &[u8], out: &mut Vec<WorkerLine>) -> Result<(), String> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    match parse_worker_line(line) {
        Ok((turn, event)) => {
            out.push(WorkerLine {
                turn,
                event,
                bytes: line.len() + 1,
            });
            Ok(())
        }
        Err(why) => {
            let shown: String = String::from_utf8_lossy(line).chars().take(200).collect();
            Err(format!(
                "printed a line that is not an event ({why}): {shown}"
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn turn_and_cancel_lines_are_one_json_line_each() {
        let job = AgentJob {
            turn: 7,
            session_id: "s".into(),
            prompt: "hi \"there\"\n".into(),
            history: vec![r#"{"kind":"request","parts":[]}"#.into()],
            approvals: None,
        };
        let line = turn_line(&job);
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        assert_eq!(line.last(), Some(&b'\n'));
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(
            v,
            json!({"type": "turn", "turn": 7, "session_id": "s", "prompt": "hi \"there\"\n",
                   "history": [{"kind": "request", "parts": []}]})
        );
        let v: Value = serde_json::from_slice(&cancel_line(7)).unwrap();
        assert_eq!(v, json!({"type": "cancel", "turn": 7}));
    }

    #[test]
    fn event_lines_carry_a_turn() {
        assert_eq!(
            parse_worker_line(br#"{"turn":7,"op":"token","data":{"content":"hi "}}"#),
            Ok((7, AgentEvent::Token("hi ".into())))
        );
        assert_eq!(
            parse_worker_line(br#"{"op":"done","turn":1}"#),
            Ok((1, AgentEvent::done(None)))
        );
        for (bad, why) in [
            (&br#"{"op":"done"}"#[..], "no \"turn\""),
            (br#"{"turn":"7","op":"done"}"#, "positive integer"),
            (br#"{"turn":0,"op":"done"}"#, "positive integer"),
            (br#"{"turn":-1,"op":"done"}"#, "positive integer"),
            (br#"{"turn":1.5,"op":"done"}"#, "positive integer"),
            (br#"{"turn":1,"op":"dance"}"#, "unknown op"),
            (br#"{"turn":1,"op":"token","data":{}}"#, "content"),
            (b"nope", "not JSON"),
            (b"[1]", "no \"turn\""),
        ] {
            let err = parse_worker_line(bad).unwrap_err();
            assert!(err.contains(why), "{}: {err}", String::from_utf8_lossy(bad));
        }
    }

    fn decode_in(input: &[u8], step: usize) -> (Vec<WorkerLine>, Result<(), String>) {
        let mut d = WorkerDecoder::new(128);
        let mut out = Vec::new();
        for piece in input.chunks(step) {
            if let Err(e) = d.feed(piece, &mut out) {
                return (out, Err(e));
            }
        }
        let end = d.finish(&mut out);
        (out, end)
    }

    #[test]
    fn interleaved_turns_decode_the_same_however_split() {
        let input = b"{\"turn\":1,\"op\":\"token\",\"data\":{\"content\":\"a\"}}\r\n\n  \n\
            {\"turn\":2,\"op\":\"token\",\"data\":{\"content\":\"b\"}}\n\
            {\"turn\":1,\"op\":\"done\"}\n{\"turn\":2,\"op\":\"error\",\"data\":{\"message\":\"no\"}}";
        let whole = decode_in(input, input.len());
        assert_eq!(whole.1, Ok(()));
        let turns: Vec<(u64, &AgentEvent)> = whole.0.iter().map(|l| (l.turn, &l.event)).collect();
        assert_eq!(
            turns,
            [
                (1, &AgentEvent::Token("a".into())),
                (2, &AgentEvent::Token("b".into())),
                (1, &AgentEvent::done(None)),
                (2, &AgentEvent::Error("no".into())),
            ]
        );
        assert_eq!(whole.0[0].bytes, 47, "the line and its newline");
        for step in 1..input.len() {
            assert_eq!(decode_in(input, step), whole, "step {step}");
        }
    }

    #[test]
    fn a_bad_line_breaks_the_worker_after_the_good_ones() {
        let input = b"{\"turn\":3,\"op\":\"done\"}\nnot json\n{\"turn\":3,\"op\":\"done\"}\n";
        for step in 1..=input.len() {
            let (lines, end) = decode_in(input, step);
            assert_eq!(lines.len(), 1, "step {step}");
            let why = end.unwrap_err();
            assert!(
                why.contains("not an event") && why.contains("not json"),
                "{why}"
            );
        }
        let mut d = WorkerDecoder::new(16);
        let mut out = Vec::new();
        let why = d.feed(&[b'x'; 40], &mut out).unwrap_err();
        assert_eq!(why, "printed a line over 16 bytes");
        assert!(d.feed(b"\n", &mut out).is_err(), "stays broken");
    }
}
