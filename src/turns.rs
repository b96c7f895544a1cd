//! Agent turns: one at a time per session, in arrival order.
//!
//! A turn starts from a user message and ends with `done`, an `error`, or
//! a cancel. [`step`] starts the session's running turn and, for the
//! built-in echo agent, streams it: at most [`TOKENS_PER_STEP`] tokens per
//! loop iteration (or one token per `--echo-delay-ms`), so a long turn
//! never stalls the loop. Other agents stream from the reactor: it hands
//! their events to [`agent_event`].
//!
//! Flow control: a session's echo stream waits while one of its WebSocket
//! clients has more than the high-water mark of unsent output, so a client
//! that reads a little slower than the stream is never cut off. A client
//! that stays above it for [`STALL_LIMIT`] is closed with 1008, so one stuck
//! client cannot hold the others back for longer than that.

use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use crate::agent::{self, AgentEvent, AgentJob, Transcript};
use crate::clock;
use crate::echo;
use crate::events::{Content, ErrorData};
use crate::http::Response;
use crate::metrics::Outcome;
use crate::sessions::SessionTable;
use crate::sink::{ConnId, Sink};
use crate::ws::close;

/// Tokens one session may emit per loop iteration.
pub const TOKENS_PER_STEP: usize = 256;
/// How long a lagging client may hold its session's stream back.
pub const STALL_LIMIT: Duration = Duration::from_secs(5);

pub const CANCELLED_MESSAGE: &str = "Turn cancelled";
pub const BUSY_MESSAGE: &str = "Too many turns queued for this session";
pub const APPROVAL_UNSUPPORTED: &str = "Deferred approvals are not supported in server mode yet.";

/// How turns are run: the parts of the configuration [`step`] needs.
#[derive(Clone, Debug)]
pub struct Engine {
    /// The echo agent streams inside the loop; others run in the reactor.
    pub echo: bool,
    /// `model_name` of the history's responses.
    pub model_name: String,
    /// `--echo-delay-ms`: one echo token per this interval.
    pub echo_delay: Option<Duration>,
    /// Unsent output per client above which the echo stream waits.
    pub high_water: usize,
}

/// One user message and the agent's answer to it, as it streams.
#[derive(Debug)]
pub struct Turn {
    pub id: u64,
    pub prompt: String,
    /// The `POST /api/chat` request waiting for this turn's reply, if any.
    pub waiter: Option<ConnId>,
    /// Set when the turn starts running.
    transcript: Option<Transcript>,
    /// Echo: bytes of the prompt streamed so far.
    echo_streamed: usize,
    /// Echo with a delay: when the next token may go.
    next_token_at: Option<Instant>,
    paused_since: Option<Instant>,
    /// When it started running (for the duration histogram).
    started: Option<Instant>,
    /// The request message, not in the history yet: an echo turn saves it
    /// with its answer in one journal record when it ends in the step that
    /// began it (one `write` per turn instead of two), and on its own at
    /// the end of that step otherwise. Nothing leaves the loop between the
    /// two, so a crash loses no more than it would have.
    unsaved_request: Option<String>,
}

impl Turn {
    pub fn new(id: u64, prompt: String, waiter: Option<ConnId>) -> Self {
        Turn {
            id,
            prompt,
            waiter,
            transcript: None,
            echo_streamed: 0,
            next_token_at: None,
            paused_since: None,
            started: None,
            unsaved_request: None,
        }
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

/// Makes `turn` the running turn if session `id` is idle, else queues it
/// (at most `max_queued` waiting). `Ok(true)`: it is the running turn now,
/// and the session must be stepped to start it.
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
        session.running = Some(turn);
        table.metrics.running += 1;
        Ok(true)
    } else if session.queue.len() < max_queued {
        session.queue.push_back(turn);
        table.metrics.queued += 1;
        Ok(false)
    } else {
        Err(Busy)
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum StepOutcome {
    /// Tokens went out and more remain (or the next queued turn is due).
    Progress,
    /// Waiting for a slow client to drain.
    Paused,
    /// The echo agent's next token is due then.
    Sleep(Instant),
    /// An agent in the reactor runs the turn; its events come later.
    Waiting,
    /// Nothing left to run in this session.
    Idle,
}

/// How a turn ended.
enum Finish {
    Done(Option<String>),
    Failed(String),
    Approval,
    Cancelled,
}

/// Starts or streams session `id`'s running turn.
pub fn step(
    table: &mut SessionTable,
    id: &str,
    sink: &mut dyn Sink,
    now: Instant,
    engine: &Engine,
) -> StepOutcome {
    let Some(mut turn) = table.get_mut(id).and_then(|s| s.running.take()) else {
        return StepOutcome::Idle;
    };
    if turn.transcript.is_none() {
        // The agent gets the history before this turn's request.
        let history = match engine.echo {
            true => Vec::new(),
            false => table
                .get(id)
                .map(|s| s.messages().iter().map(crate::sessions::text_of).collect())
                .unwrap_or_default(),
        };
        if let Err(why) = begin(table, id, &mut turn, &engine.model_name, engine.echo, sink) {
            finish(table, id, turn, Finish::Failed(why), sink);
            return start_next(table, id, now);
        }
        if !engine.echo {
            sink.start_agent(AgentJob {
                turn: turn.id,
                session_id: id.to_owned(),
                prompt: turn.prompt.clone(),
                history,
            });
        }
    }
    if !engine.echo {
        put_back(table, id, turn);
        return StepOutcome::Waiting;
    }

    let lagging: Vec<ConnId> = table
        .subscribers(id)
        .iter()
        .copied()
        .filter(|&c| sink.backlog(c) > engine.high_water)
        .collect();
    if !lagging.is_empty() {
        let since = *turn.paused_since.get_or_insert(now);
        if now.saturating_duration_since(since) < STALL_LIMIT {
            return keep_running(table, id, turn, StepOutcome::Paused, sink, now);
        }
        for c in lagging {
            sink.close(c, close::POLICY, "Client too slow");
        }
    }
    turn.paused_since = None;

    let budget = match engine.echo_delay {
        Some(delay) => {
            if let Some(at) = turn.next_token_at.filter(|&at| now < at) {
                return keep_running(table, id, turn, StepOutcome::Sleep(at), sink, now);
            }
            turn.next_token_at = Some(now + delay);
            1
        }
        None => TOKENS_PER_STEP,
    };
    // This step's run of tokens, broadcast together (one lookup of the
    // session for all of them) and folded into the transcript as one text.
    let start = turn.echo_streamed;
    let mut end = start;
    let mut tokens = Vec::new();
    while tokens.len() < budget {
        let n = echo::first_token_len(&turn.prompt[end..]);
        if n == 0 {
            break;
        }
        tokens.push(Content {
            content: &turn.prompt[end..end + n],
        });
        end += n;
    }
    table.broadcast_each(id, "token", tokens, sink);
    if let Some(t) = turn.transcript.as_mut() {
        t.token(&turn.prompt[start..end]);
    }
    turn.echo_streamed = end;
    if turn.echo_streamed < turn.prompt.len() {
        let next = match turn.next_token_at {
            Some(at) => StepOutcome::Sleep(at),
            None => StepOutcome::Progress,
        };
        return keep_running(table, id, turn, next, sink, now);
    }
    finish(table, id, turn, Finish::Done(None), sink);
    start_next(table, id, now)
}

/// Puts back a turn that goes on in a later step, its request saved first
/// if it was held for a one-record turn; if that save fails, the turn ends
/// with the reason.
fn keep_running(
    table: &mut SessionTable,
    id: &str,
    mut turn: Turn,
    next: StepOutcome,
    sink: &mut dyn Sink,
    now: Instant,
) -> StepOutcome {
    if let Some(request) = turn.unsaved_request.take() {
        if let Err(why) = table.append(id, vec![request], sink) {
            let why = format!("the turn could not be saved: {why}");
            finish(table, id, turn, Finish::Failed(why), sink);
            return start_next(table, id, now);
        }
    }
    put_back(table, id, turn);
    next
}

/// An event from the agent running turn `turn_id` of session `id`. Returns
/// true when the turn ended and another one is now due (step the session).
pub fn agent_event(
    table: &mut SessionTable,
    id: &str,
    turn_id: u64,
    event: AgentEvent,
    sink: &mut dyn Sink,
    now: Instant,
) -> bool {
    let Some(session) = table.get_mut(id) else {
        return false;
    };
    // Events of a turn that has already ended (cancelled, deleted) are dropped.
    if session.running.as_ref().is_none_or(|t| t.id != turn_id) {
        return false;
    }
    session.last_activity = now;
    let ending = match &event {
        AgentEvent::Done(content) => Some(Finish::Done(content.clone())),
        AgentEvent::Error(reason) => Some(Finish::Failed(reason.clone())),
        AgentEvent::ApprovalRequired => Some(Finish::Approval),
        _ => None,
    };
    if let Some(how) = ending {
        let Some(turn) = session.running.take() else {
            return false;
        };
        finish(table, id, turn, how, sink);
        return start_next(table, id, now) == StepOutcome::Progress;
    }
    if let Some(t) = session.running.as_mut().and_then(|t| t.transcript.as_mut()) {
        match &event {
            AgentEvent::Token(text) => t.token(text),
            AgentEvent::ToolCall { id, name, details } => t.tool_call(id, name, details),
            AgentEvent::ToolResult { id, details, .. } => t.tool_result(id, details),
            _ => {}
        }
    }
    if let Some((op, data)) = event.wire() {
        table.broadcast(id, op, data, sink);
    }
    false
}

/// Starts `turn`: its request goes into the history (and the journal) now,
/// so a crash mid-turn keeps the prompt, or with `hold`, at the end of
/// this step (see [`Turn`]'s `unsaved_request`). Err: it could not be
/// saved.
fn begin(
    table: &mut SessionTable,
    id: &str,
    turn: &mut Turn,
    model_name: &str,
    hold: bool,
    sink: &mut dyn Sink,
) -> Result<(), String> {
    turn.transcript = Some(Transcript::new(model_name));
    turn.started = Some(Instant::now());
    let request = agent::request_message(&turn.prompt, &clock::now_rfc3339());
    if hold {
        turn.unsaved_request = Some(request);
        return Ok(());
    }
    table
        .append(id, vec![request], sink)
        .map_err(|why| format!("the turn could not be saved: {why}"))
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
            session.running = Some(next);
            table.metrics.queued = table.metrics.queued.saturating_sub(1);
            table.metrics.running += 1;
            StepOutcome::Progress
        }
        None => StepOutcome::Idle,
    }
}

/// Ends the running `turn`: its messages into the history first (so a
/// client that sees the last event and refetches finds them), then the
/// broadcast, then the REST caller's answer.
fn finish(table: &mut SessionTable, id: &str, mut turn: Turn, how: Finish, sink: &mut dyn Sink) {
    let (final_text, graceful) = match &how {
        Finish::Done(content) => (content.clone(), true),
        _ => (None, false),
    };
    let mut how = how;
    let mut reply = String::new();
    if let Some(mut transcript) = turn.transcript {
        reply = std::mem::take(&mut transcript.reply);
        let mut messages = transcript.finish(final_text.as_deref());
        if let Some(request) = turn.unsaved_request.take() {
            messages.insert(0, request);
        }
        if let Err(why) = table.append(id, messages, sink) {
            // A `done` must not go out for a turn that was not saved.
            if matches!(how, Finish::Done(_)) {
                how = Finish::Failed(format!("the turn could not be saved: {why}"));
            }
        }
        sink.stop_agent(turn.id, graceful);
    }
    let waiter = turn.waiter;
    table.metrics.running = table.metrics.running.saturating_sub(1);
    table.metrics.ended(match how {
        Finish::Done(_) => Outcome::Done,
        Finish::Failed(_) | Finish::Approval => Outcome::Error,
        Finish::Cancelled => Outcome::Cancelled,
    });
    if let Some(started) = turn.started {
        table
            .metrics
            .duration
            .observe(started.elapsed().as_secs_f64());
    }
    match how {
        Finish::Done(content) => {
            let content = content.unwrap_or(reply);
            table.broadcast(id, "done", Content { content: &content }, sink);
            if let Some(w) = waiter {
                let body = ChatReply {
                    session_id: id,
                    content: &content,
                };
                sink.respond(
                    w,
                    Response::json(200, serde_json::to_vec(&body).unwrap_or_default()),
                );
            }
        }
        Finish::Failed(reason) => {
            table.broadcast(
                id,
                "error",
                ErrorData {
                    code: None,
                    message: &reason,
                },
                sink,
            );
            if let Some(w) = waiter {
                sink.respond(w, Response::detail(503, &reason));
            }
        }
        Finish::Approval => {
            let data = ErrorData {
                code: Some("approval_unsupported"),
                message: APPROVAL_UNSUPPORTED,
            };
            table.broadcast(id, "error", data, sink);
            if let Some(w) = waiter {
                sink.respond(
                    w,
                    coded_error(409, "approval_unsupported", APPROVAL_UNSUPPORTED),
                );
            }
        }
        Finish::Cancelled => end_cancelled(table, id, waiter, sink),
    }
}

fn end_cancelled(table: &mut SessionTable, id: &str, waiter: Option<ConnId>, sink: &mut dyn Sink) {
    let data = ErrorData {
        code: Some("cancelled"),
        message: CANCELLED_MESSAGE,
    };
    table.broadcast(id, "error", data, sink);
    if let Some(w) = waiter {
        sink.respond(w, coded_error(409, "cancelled", CANCELLED_MESSAGE));
    }
}

/// An agent in the reactor failed (could not start, died, timed out, sent
/// garbage): the turn ends with `error` (REST: 503) saying why.
pub fn agent_failed(
    table: &mut SessionTable,
    id: &str,
    turn_id: u64,
    reason: String,
    sink: &mut dyn Sink,
    now: Instant,
) -> bool {
    agent_event(table, id, turn_id, AgentEvent::Error(reason), sink, now)
}

/// Stops the running turn of session `id` and drops its queued ones. Each
/// ends with a broadcast `error` `cancelled`, and a waiting REST caller gets
/// 409. The running turn's request and the reply streamed so far stay in
/// the history; queued turns never ran and leave none. Returns false when
/// nothing was running.
pub fn cancel(table: &mut SessionTable, id: &str, sink: &mut dyn Sink, engine: &Engine) -> bool {
    let Some(session) = table.get_mut(id) else {
        return false;
    };
    let Some(mut running) = session.running.take() else {
        return false;
    };
    let queued: Vec<Turn> = session.queue.drain(..).collect();
    if running.transcript.is_none() {
        // Cancelled before its first step: it still counts as having run.
        let _ = begin(table, id, &mut running, &engine.model_name, false, sink);
    }
    finish(table, id, running, Finish::Cancelled, sink);
    for turn in queued {
        // Queued turns never ran: cancelled, with no duration.
        table.metrics.queued = table.metrics.queued.saturating_sub(1);
        table.metrics.ended(Outcome::Cancelled);
        end_cancelled(table, id, turn.waiter, sink);
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

    fn echo_engine(high_water: usize) -> Engine {
        Engine {
            echo: true,
            model_name: "echo".into(),
            echo_delay: None,
            high_water,
        }
    }

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
        while step(t, "s", sink, now, &echo_engine(1 << 20)) != StepOutcome::Idle {
            steps += 1;
            assert!(steps < 100_000);
        }
        steps
    }

    /// The messages of every `Messages` record persisted, one list each.
    fn message_records(sink: &Recorder) -> Vec<Vec<String>> {
        sink.persisted
            .iter()
            .filter_map(|c| match c {
                crate::journal::Change::Messages { messages, .. } => Some(messages.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_turn_ending_in_the_step_that_began_it_is_one_record() {
        let (mut t, now) = setup();
        submit(&mut t, "s", Turn::new(0, "a b c".into(), None), 8, now).unwrap();
        let mut sink = Recorder::default();
        assert_eq!(run_to_idle(&mut t, &mut sink, now), 1);
        let records = message_records(&sink);
        assert_eq!(records.len(), 1, "{records:?}");
        assert!(records[0][0].contains("user-prompt"));
        assert!(records[0][1].contains(r#""kind":"response""#));
        assert_eq!(t.get("s").unwrap().messages().len(), 2);
    }

    #[test]
    fn a_longer_turn_saves_its_request_at_the_end_of_its_first_step() {
        let (mut t, now) = setup();
        let prompt = "w ".repeat(TOKENS_PER_STEP + 10);
        submit(&mut t, "s", Turn::new(0, prompt, None), 8, now).unwrap();
        let mut sink = Recorder::default();
        let engine = echo_engine(1 << 20);
        assert_eq!(
            step(&mut t, "s", &mut sink, now, &engine),
            StepOutcome::Progress
        );
        let records = message_records(&sink);
        assert_eq!(records.len(), 1);
        assert!(records[0][0].contains("user-prompt"));
        assert_eq!(t.get("s").unwrap().messages().len(), 1);
        run_to_idle(&mut t, &mut sink, now);
        let records = message_records(&sink);
        assert_eq!(records.len(), 2);
        assert!(records[1][0].contains(r#""kind":"response""#));
    }

    #[test]
    fn a_one_step_turn_that_cannot_be_saved_ends_in_an_error_and_leaves_no_history() {
        let (mut t, now) = setup();
        submit(&mut t, "s", Turn::new(0, "a b".into(), Some(REST)), 8, now).unwrap();
        let mut sink = Recorder {
            persist_error: Some("disk full".into()),
            ..Recorder::default()
        };
        run_to_idle(&mut t, &mut sink, now);
        let last = sink.texts_to(A).pop().unwrap();
        assert!(
            last.contains(r#""op":"error""#) && last.contains("disk full"),
            "{last}"
        );
        assert_eq!(sink.responses[0].1.status, 503);
        assert!(t.get("s").unwrap().messages().is_empty());
    }

    #[test]
    fn echo_turn_streams_tokens_then_done_to_every_client() {
        let (mut t, now) = setup();
        assert_eq!(
            submit(
                &mut t,
                "s",
                Turn::new(0, "hello big world".into(), Some(REST)),
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
        submit(&mut t, "s", Turn::new(0, prompt, None), 8, now).unwrap();
        let mut sink = Recorder::default();
        assert_eq!(
            step(&mut t, "s", &mut sink, now, &echo_engine(1 << 20)),
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
            submit(&mut t, "s", Turn::new(0, "one".into(), None), 2, now),
            Ok(true)
        );
        assert_eq!(
            submit(&mut t, "s", Turn::new(0, "two".into(), None), 2, now),
            Ok(false)
        );
        assert_eq!(
            submit(&mut t, "s", Turn::new(0, "three".into(), None), 2, now),
            Ok(false)
        );
        assert_eq!(
            submit(&mut t, "s", Turn::new(0, "four".into(), None), 2, now),
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
        submit(
            &mut t,
            "s",
            Turn::new(0, prompt.clone(), Some(REST)),
            8,
            now,
        )
        .unwrap();
        submit(&mut t, "s", Turn::new(0, "queued".into(), None), 8, now).unwrap();
        let mut sink = Recorder::default();
        step(&mut t, "s", &mut sink, now, &echo_engine(1 << 20));
        assert!(cancel(&mut t, "s", &mut sink, &echo_engine(1 << 20)));
        assert!(
            !cancel(&mut t, "s", &mut sink, &echo_engine(1 << 20)),
            "nothing runs any more"
        );
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
            step(&mut t, "s", &mut sink, now, &echo_engine(1 << 20)),
            StepOutcome::Idle
        );
    }

    #[test]
    fn a_lagging_client_pauses_the_stream_then_is_closed() {
        let (mut t, now) = setup();
        submit(&mut t, "s", Turn::new(0, "a b c".into(), None), 8, now).unwrap();
        let mut sink = Recorder {
            backlogs: vec![(B, 1000)],
            ..Recorder::default()
        };
        assert_eq!(
            step(&mut t, "s", &mut sink, now, &echo_engine(500)),
            StepOutcome::Paused
        );
        assert!(sink.sent.is_empty());
        let later = now + STALL_LIMIT;
        assert_eq!(
            step(&mut t, "s", &mut sink, later, &echo_engine(500)),
            StepOutcome::Idle
        );
        assert_eq!(
            sink.closed,
            [(B, close::POLICY, "Client too slow".to_string())]
        );
        assert_eq!(sink.texts_to(A).len(), 4);
    }
}
