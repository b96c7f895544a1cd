//! Agent turns: one at a time per session, in arrival order, streamed in
//! small steps so that a long turn never stalls the loop.
//!
//! The built-in echo agent lives here: its "model" is the prompt itself,
//! streamed one word-token per event. [`step`] emits at most
//! [`TOKENS_PER_STEP`] tokens and returns; the reactor calls it again on the
//! next loop iteration, after serving every other ready connection.
//!
//! Flow control: a session's stream waits while one of its WebSocket
//! clients has more than the high-water mark of unsent output, so a client
//! that reads a little slower than the stream is never cut off. A client
//! that stays above it for [`STALL_LIMIT`] is closed with 1008, so one stuck
//! client cannot hold the others back for longer than that.

use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use crate::clock;
use crate::echo;
use crate::events::{Content, ErrorData};
use crate::http::Response;
use crate::sessions::SessionTable;
use crate::sink::{ConnId, Sink};
use crate::ws::close;

/// Tokens one session may emit per loop iteration.
pub const TOKENS_PER_STEP: usize = 256;
/// How long a lagging client may hold its session's stream back.
pub const STALL_LIMIT: Duration = Duration::from_secs(5);

pub const CANCELLED_MESSAGE: &str = "Turn cancelled";
pub const BUSY_MESSAGE: &str = "Too many turns queued for this session";

/// One user message and the agent's answer to it, as it streams.
#[derive(Debug)]
pub struct Turn {
    pub prompt: String,
    /// The `POST /api/chat` request waiting for this turn's reply, if any.
    pub waiter: Option<ConnId>,
    /// Bytes of the reply streamed so far (echo: a prefix of the prompt).
    streamed: usize,
    /// When the user's request was taken up (its `ModelMessage` timestamp).
    started_at: String,
    paused_since: Option<Instant>,
}

impl Turn {
    pub fn new(prompt: String, waiter: Option<ConnId>) -> Self {
        Turn {
            prompt,
            waiter,
            streamed: 0,
            started_at: String::new(),
            paused_since: None,
        }
    }

    fn start(mut self) -> Self {
        self.started_at = clock::now_rfc3339();
        self
    }
}

/// `POST /api/chat`'s answer, fields in the original's order.
#[derive(Serialize)]
struct ChatReply<'a> {
    session_id: &'a str,
    content: &'a str,
}

/// The session's queue is full.
#[derive(Debug, PartialEq, Eq)]
pub struct Busy;

/// Runs `turn` now if session `id` is idle, else queues it (at most
/// `max_queued` waiting). `Ok(true)` means it started and the session must
/// be stepped.
pub fn submit(
    table: &mut SessionTable,
    id: &str,
    turn: Turn,
    max_queued: usize,
    now: Instant,
) -> Result<bool, Busy> {
    let Some(session) = table.get_mut(id) else {
        return Err(Busy);
    };
    session.last_activity = now;
    if session.running.is_none() {
        session.running = Some(turn.start());
        Ok(true)
    } else if session.queue.len() < max_queued {
        session.queue.push_back(turn);
        Ok(false)
    } else {
        Err(Busy)
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum StepOutcome {
    /// Tokens went out; more remain (or the next queued turn started).
    Progress,
    /// Waiting for a slow client to drain.
    Paused,
    /// Nothing left to run in this session.
    Idle,
}

/// Streams the next few tokens of session `id`'s running turn.
pub fn step(
    table: &mut SessionTable,
    id: &str,
    sink: &mut dyn Sink,
    now: Instant,
    high_water: usize,
) -> StepOutcome {
    let Some(mut turn) = table.get_mut(id).and_then(|s| s.running.take()) else {
        return StepOutcome::Idle;
    };

    let lagging: Vec<ConnId> = table
        .subscribers(id)
        .iter()
        .copied()
        .filter(|&c| sink.backlog(c) > high_water)
        .collect();
    if !lagging.is_empty() {
        let since = *turn.paused_since.get_or_insert(now);
        if now.saturating_duration_since(since) < STALL_LIMIT {
            put_back(table, id, turn);
            return StepOutcome::Paused;
        }
        for c in lagging {
            sink.close(c, close::POLICY, "Client too slow");
        }
    }
    turn.paused_since = None;

    for _ in 0..TOKENS_PER_STEP {
        let rest = &turn.prompt[turn.streamed..];
        let n = echo::first_token_len(rest);
        if n == 0 {
            break;
        }
        table.broadcast(
            id,
            "token",
            Content {
                content: &rest[..n],
            },
            sink,
        );
        turn.streamed += n;
    }
    if turn.streamed < turn.prompt.len() {
        put_back(table, id, turn);
        return StepOutcome::Progress;
    }

    // The turn is complete: history first, so a client that sees `done` and
    // refetches finds it; then `done`; then the REST caller's answer.
    record(table, id, &turn);
    table.broadcast(
        id,
        "done",
        Content {
            content: &turn.prompt,
        },
        sink,
    );
    if let Some(waiter) = turn.waiter {
        let body = ChatReply {
            session_id: id,
            content: &turn.prompt,
        };
        sink.respond(
            waiter,
            Response::json(200, serde_json::to_vec(&body).unwrap_or_default()),
        );
    }
    start_next(table, id, now)
}

fn put_back(table: &mut SessionTable, id: &str, turn: Turn) {
    if let Some(s) = table.get_mut(id) {
        s.running = Some(turn);
    }
}

fn start_next(table: &mut SessionTable, id: &str, now: Instant) -> StepOutcome {
    let Some(session) = table.get_mut(id) else {
        return StepOutcome::Idle;
    };
    session.last_activity = now;
    match session.queue.pop_front() {
        Some(next) => {
            session.running = Some(next.start());
            StepOutcome::Progress
        }
        None => StepOutcome::Idle,
    }
}

/// Appends the user's request and the reply streamed so far to the history.
fn record(table: &mut SessionTable, id: &str, turn: &Turn) {
    let Some(session) = table.get_mut(id) else {
        return;
    };
    session.push_message(&json!({
        "kind": "request",
        "parts": [{"part_kind": "user-prompt", "content": turn.prompt, "timestamp": turn.started_at}],
    }));
    session.push_message(&json!({
        "kind": "response",
        "parts": [{"part_kind": "text", "content": &turn.prompt[..turn.streamed]}],
        "model_name": "echo",
        "timestamp": clock::now_rfc3339(),
    }));
}

/// Stops the running turn of session `id` and drops its queued ones. Each
/// ends with a broadcast `error` `cancelled`, and a waiting REST caller gets
/// 409. The running turn's request and the reply streamed so far stay in
/// the history. Returns false when nothing was running.
pub fn cancel(table: &mut SessionTable, id: &str, sink: &mut dyn Sink) -> bool {
    let Some(session) = table.get_mut(id) else {
        return false;
    };
    let Some(running) = session.running.take() else {
        return false;
    };
    let queued: Vec<Turn> = session.queue.drain(..).collect();
    record(table, id, &running);
    for turn in std::iter::once(running).chain(queued) {
        let data = ErrorData {
            code: Some("cancelled"),
            message: CANCELLED_MESSAGE,
        };
        table.broadcast(id, "error", data, sink);
        if let Some(waiter) = turn.waiter {
            sink.respond(waiter, coded_error(409, "cancelled", CANCELLED_MESSAGE));
        }
    }
    true
}

/// `{"detail": {"code": ..., "message": ...}}` with `status`.
pub fn coded_error(status: u16, code: &str, message: &str) -> Response {
    let body = json!({ "detail": { "code": code, "message": message } });
    Response::json(status, body.to_string().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::Recorder;

    const A: ConnId = ConnId { slot: 1, serial: 1 };
    const B: ConnId = ConnId { slot: 2, serial: 2 };
    const REST: ConnId = ConnId { slot: 3, serial: 3 };

    fn setup() -> (SessionTable, Instant) {
        let now = Instant::now();
        let mut t = SessionTable::new(10);
        t.get_or_create("s", now).unwrap();
        t.subscribe("s", A);
        t.subscribe("s", B);
        (t, now)
    }

    fn run_to_idle(t: &mut SessionTable, sink: &mut Recorder, now: Instant) -> usize {
        // Counts every call, the one that finishes the turn included.
        let mut steps = 1;
        while step(t, "s", sink, now, 1 << 20) != StepOutcome::Idle {
            steps += 1;
            assert!(steps < 100_000);
        }
        steps
    }

    #[test]
    fn echo_turn_streams_tokens_then_done_to_every_client() {
        let (mut t, now) = setup();
        assert_eq!(
            submit(
                &mut t,
                "s",
                Turn::new("hello big world".into(), Some(REST)),
                8,
                now
            ),
            Ok(true)
        );
        let mut sink = Recorder::default();
        run_to_idle(&mut t, &mut sink, now);
        let a = sink.texts_to(A);
        assert_eq!(a, sink.texts_to(B));
        assert_eq!(
            a,
            [
                r#"{"op":"token","data":{"content":"hello "},"seq":1}"#,
                r#"{"op":"token","data":{"content":"big "},"seq":2}"#,
                r#"{"op":"token","data":{"content":"world"},"seq":3}"#,
                r#"{"op":"done","data":{"content":"hello big world"},"seq":4}"#,
            ]
        );
        assert_eq!(sink.responses.len(), 1);
        let (to, resp) = &sink.responses[0];
        assert_eq!((*to, resp.status), (REST, 200));
        let body: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
        assert_eq!(
            body,
            json!({"session_id": "s", "content": "hello big world"})
        );
        let history: serde_json::Value =
            serde_json::from_slice(&t.history_json("s").unwrap()).unwrap();
        let msgs = history["messages"].as_array().unwrap();
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[0]["kind"], "request");
        assert_eq!(msgs[0]["parts"][0]["part_kind"], "user-prompt");
        assert_eq!(msgs[0]["parts"][0]["content"], "hello big world");
        assert_eq!(msgs[1]["kind"], "response");
        assert_eq!(msgs[1]["parts"][0]["content"], "hello big world");
        assert_eq!(msgs[1]["model_name"], "echo");
    }

    #[test]
    fn long_turns_are_streamed_in_steps() {
        let (mut t, now) = setup();
        let prompt = "w ".repeat(TOKENS_PER_STEP * 3);
        submit(&mut t, "s", Turn::new(prompt, None), 8, now).unwrap();
        let mut sink = Recorder::default();
        assert_eq!(
            step(&mut t, "s", &mut sink, now, 1 << 20),
            StepOutcome::Progress
        );
        assert_eq!(sink.texts_to(A).len(), TOKENS_PER_STEP);
        assert_eq!(run_to_idle(&mut t, &mut sink, now), 2);
        assert_eq!(sink.texts_to(A).len(), TOKENS_PER_STEP * 3 + 1);
    }

    #[test]
    fn turns_queue_in_order_and_busy_past_the_limit() {
        let (mut t, now) = setup();
        assert_eq!(
            submit(&mut t, "s", Turn::new("one".into(), None), 2, now),
            Ok(true)
        );
        assert_eq!(
            submit(&mut t, "s", Turn::new("two".into(), None), 2, now),
            Ok(false)
        );
        assert_eq!(
            submit(&mut t, "s", Turn::new("three".into(), None), 2, now),
            Ok(false)
        );
        assert_eq!(
            submit(&mut t, "s", Turn::new("four".into(), None), 2, now),
            Err(Busy)
        );
        let mut sink = Recorder::default();
        run_to_idle(&mut t, &mut sink, now);
        let dones: Vec<String> = sink
            .texts_to(A)
            .into_iter()
            .filter(|f| f.contains("\"done\""))
            .collect();
        assert_eq!(dones.len(), 3);
        assert!(dones[0].contains("one") && dones[1].contains("two") && dones[2].contains("three"));
        assert_eq!(t.get("s").unwrap().message_count(), 6);
    }

    #[test]
    fn cancel_keeps_partial_reply_and_ends_every_turn() {
        let (mut t, now) = setup();
        let prompt = "x ".repeat(TOKENS_PER_STEP * 2);
        submit(&mut t, "s", Turn::new(prompt.clone(), Some(REST)), 8, now).unwrap();
        submit(&mut t, "s", Turn::new("queued".into(), None), 8, now).unwrap();
        let mut sink = Recorder::default();
        step(&mut t, "s", &mut sink, now, 1 << 20);
        assert!(cancel(&mut t, "s", &mut sink));
        assert!(!cancel(&mut t, "s", &mut sink), "nothing runs any more");
        let texts = sink.texts_to(A);
        let cancels = texts.iter().filter(|f| f.contains("\"cancelled\"")).count();
        assert_eq!(cancels, 2, "running and queued turn both end");
        assert_eq!(sink.responses[0].1.status, 409);
        let history: serde_json::Value =
            serde_json::from_slice(&t.history_json("s").unwrap()).unwrap();
        let reply = history["messages"][1]["parts"][0]["content"]
            .as_str()
            .unwrap();
        assert_eq!(reply, &prompt[..TOKENS_PER_STEP * 2]);
        assert_eq!(history["messages"].as_array().unwrap().len(), 2);
        assert_eq!(
            step(&mut t, "s", &mut sink, now, 1 << 20),
            StepOutcome::Idle
        );
    }

    #[test]
    fn a_lagging_client_pauses_the_stream_then_is_closed() {
        let (mut t, now) = setup();
        submit(&mut t, "s", Turn::new("a b c".into(), None), 8, now).unwrap();
        let mut sink = Recorder {
            backlogs: vec![(B, 1000)],
            ..Recorder::default()
        };
        assert_eq!(step(&mut t, "s", &mut sink, now, 500), StepOutcome::Paused);
        assert!(sink.sent.is_empty());
        let later = now + STALL_LIMIT;
        assert_eq!(step(&mut t, "s", &mut sink, later, 500), StepOutcome::Idle);
        assert_eq!(
            sink.closed,
            [(B, close::POLICY, "Client too slow".to_string())]
        );
        assert_eq!(sink.texts_to(A).len(), 4);
    }
}
