//! Agent turns: one at a time per session, in arrival order.
//!
//! A turn starts from a user message (or, resumed, from a person's
//! decisions on the tool calls the turn before asked about) and ends with
//! `done`, an `error`, `approval_required`, or a cancel. [`step`] starts
//! the session's running turn and, for the built-in echo agent, streams
//! it: at most [`TOKENS_PER_STEP`] tokens per loop iteration (or one token
//! per `--echo-delay-ms`), so a long turn never stalls the loop. Other agents stream from the reactor: it hands
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
use crate::approvals::{self, PendingCall};
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
    /// The WebSocket client that sent it: told if the turn is dropped
    /// unrun because the turn before it asked for approvals.
    client: Option<ConnId>,
    /// The AG-UI run that streams this turn's events (not a subscriber of
    /// the session: it gets this turn's events only).
    stream: Option<ConnId>,
    /// A resumed turn: what a person decided on the pending tool calls.
    resume: Option<Resume>,
    /// The history's length before this turn: the agent's own account of
    /// the turn (`messages`) replaces everything after it.
    history_start: usize,
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

/// What a resumed turn carries: the decisions, and the calls decided on
/// (the journal holds them as pending until the turn ends).
#[derive(Debug)]
struct Resume {
    approvals: String,
    calls: Vec<PendingCall>,
}

impl Turn {
    /// Whether it has started (its request recorded, its agent asked);
    /// a turn that waits for its history to be read back has not.
    pub fn has_begun(&self) -> bool {
        self.transcript.is_some()
    }

    pub fn new(id: u64, prompt: String, waiter: Option<ConnId>) -> Self {
        Turn {
            id,
            prompt,
            waiter,
            client: None,
            stream: None,
            resume: None,
            history_start: 0,
            transcript: None,
            echo_streamed: 0,
            next_token_at: None,
            paused_since: None,
            started: None,
            unsaved_request: None,
        }
    }

    /// The turn that follows a person's decisions (`approvals`, a JSON
    /// object text) on `calls`: its prompt is `null` to the agent, and it
    /// adds no user request to the history.
    pub fn resumed(
        id: u64,
        approvals: String,
        calls: Vec<PendingCall>,
        waiter: Option<ConnId>,
    ) -> Self {
        let mut turn = Turn::new(id, String::new(), waiter);
        turn.resume = Some(Resume { approvals, calls });
        turn
    }

    /// A resumed turn's calls: decided, and pending in the journal until
    /// the turn ends.
    pub fn decided_calls(&self) -> Option<&[PendingCall]> {
        self.resume.as_ref().map(|r| r.calls.as_slice())
    }

    /// Marks the turn as sent by WebSocket client `conn`.
    pub fn from_client(mut self, conn: ConnId) -> Self {
        self.client = Some(conn);
        self
    }

    /// Streams the turn's events to the AG-UI run on `conn` as well.
    pub fn streamed_to(mut self, conn: ConnId) -> Self {
        self.stream = Some(conn);
        self
    }
}

/// `POST /api/chat`'s answer, fields in the original's order.
#[derive(Serialize)]
struct ChatReply<'a> {
    session_id: &'a str,
    content: &'a str,
}

/// Why a turn was not taken.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The session's queue is full (or the session is gone).
    Busy,
    /// Tool calls wait for a person's decision: no new message until then.
    ApprovalPending,
}

/// Makes `turn` the running turn if session `id` is idle, else queues it
/// (at most `max_queued` waiting). `Ok(true)`: it is the running turn now,
/// and the session must be stepped to start it.
pub fn submit(
    table: &mut SessionTable,
    id: &str,
    turn: Turn,
    max_queued: usize,
    now: Instant,
) -> Result<bool, Refused> {
    let Some(session) = table.get_mut(id) else {
        return Err(Refused::Busy);
    };
    session.last_activity = now;
    if turn.resume.is_none() && !session.pending_approvals().is_empty() {
        return Err(Refused::ApprovalPending);
    }
    if session.running().is_none() {
        session.set_running(turn);
        table.metrics.running += 1;
        Ok(true)
    } else if session.queued() < max_queued {
        session.push_queued(turn);
        table.metrics.queued += 1;
        Ok(false)
    } else {
        Err(Refused::Busy)
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
    /// With the agent's reply and its own account of the turn, if given.
    Done(Option<String>, Option<Vec<String>>),
    Failed(String),
    /// Asking for approval of `calls` (None: an older agent that names
    /// none, refused as the original server refused it).
    Approval(Option<Vec<PendingCall>>, Option<Vec<String>>),
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
    if !engine.echo
        && table
            .get(id)
            .is_some_and(|s| s.running().is_some_and(|t| t.transcript.is_none()))
        && !table.want_history(id, now)
    {
        // The agent is given the history, which is being read back from
        // the journal: the turn starts when it is in (see `history_ready`).
        return StepOutcome::Waiting;
    }
    let Some(mut turn) = table.get_mut(id).and_then(|s| s.take_running()) else {
        return StepOutcome::Idle;
    };
    if turn.transcript.is_none() {
        // The agent gets the history before this turn's request.
        let history = match engine.echo {
            true => Vec::new(),
            false => table
                .get(id)
                .and_then(|s| s.messages())
                .map(|m| m.iter().map(crate::sessions::text_of).collect())
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
                approvals: turn.resume.as_ref().map(|r| r.approvals.clone()),
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
    table.broadcast_each_to(id, "token", tokens, turn.stream, sink);
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
    finish(table, id, turn, Finish::Done(None, None), sink);
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
    if session.running().is_none_or(|t| t.id != turn_id) {
        return false;
    }
    session.last_activity = now;
    if event.ends_turn() {
        let Some(turn) = session.take_running() else {
            return false;
        };
        let how = match event {
            AgentEvent::Done { content, messages } => Finish::Done(content, messages),
            AgentEvent::ApprovalRequired { calls, messages } => Finish::Approval(calls, messages),
            AgentEvent::Error(reason) => Finish::Failed(reason),
            _ => Finish::Failed("the agent ended its turn oddly".into()),
        };
        finish(table, id, turn, how, sink);
        return start_next(table, id, now) == StepOutcome::Progress;
    }
    if let Some(t) = session.running_mut().and_then(|t| t.transcript.as_mut()) {
        match &event {
            AgentEvent::Token(text) => t.token(text),
            AgentEvent::Thinking(text) => t.thinking(text),
            AgentEvent::ThinkingDone => t.thinking_done(),
            AgentEvent::ToolCall { id, name, details } => t.tool_call(id, name, details),
            AgentEvent::ToolResult { id, details, .. } => t.tool_result(id, details),
            _ => {}
        }
    }
    if let Some((op, data)) = event.wire() {
        let stream = session.running().and_then(|t| t.stream);
        table.broadcast_to(id, op, data, stream, sink);
    }
    false
}

/// Starts `turn`: its request goes into the history (and the journal) now,
/// so a crash mid-turn keeps the prompt, or with `hold`, at the end of
/// this step (see [`Turn`]'s `unsaved_request`). A resumed turn adds no
/// request. Err: it could not be saved.
fn begin(
    table: &mut SessionTable,
    id: &str,
    turn: &mut Turn,
    model_name: &str,
    hold: bool,
    sink: &mut dyn Sink,
) -> Result<(), String> {
    turn.started = Some(Instant::now());
    turn.history_start = table.get(id).map_or(0, |s| s.message_count());
    if let Some(resume) = &turn.resume {
        turn.transcript = Some(Transcript::resuming(model_name, &resume.calls));
        return Ok(());
    }
    turn.transcript = Some(Transcript::new(model_name));
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
        s.set_running(turn);
    }
}

fn start_next(table: &mut SessionTable, id: &str, now: Instant) -> StepOutcome {
    let Some(session) = table.get_mut(id) else {
        return StepOutcome::Idle;
    };
    session.last_activity = now;
    match session.pop_queued() {
        Some(next) => {
            session.set_running(next);
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
    // The agent ended the turn itself: an exec program gets its exit
    // grace, a worker no cancel line.
    let graceful = matches!(how, Finish::Done(..) | Finish::Approval(Some(_), _));
    let mut how = how;
    let mut reply = String::new();
    if let Some(mut transcript) = turn.transcript.take() {
        reply = std::mem::take(&mut transcript.reply);
        if let Err(why) = save(table, id, &mut turn, transcript, &mut how, sink) {
            // A `done` (or a request for approvals) must not go out for a
            // turn that was not saved.
            if matches!(how, Finish::Done(..) | Finish::Approval(Some(_), _)) {
                how = Finish::Failed(format!("the turn could not be saved: {why}"));
            }
        }
        sink.stop_agent(turn.id, graceful);
    }
    let (waiter, stream) = (turn.waiter, turn.stream);
    table.metrics.running = table.metrics.running.saturating_sub(1);
    table.metrics.ended(match how {
        Finish::Done(..) => Outcome::Done,
        Finish::Approval(Some(_), _) => Outcome::ApprovalRequired,
        Finish::Failed(_) | Finish::Approval(None, _) => Outcome::Error,
        Finish::Cancelled => Outcome::Cancelled,
    });
    if let Some(started) = turn.started {
        table
            .metrics
            .duration
            .observe(started.elapsed().as_secs_f64());
    }
    match how {
        Finish::Done(content, _) => {
            let content = content.unwrap_or(reply);
            table.broadcast_to(id, "done", Content { content: &content }, stream, sink);
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
            let data = ErrorData {
                code: None,
                message: &reason,
            };
            table.broadcast_to(id, "error", data, stream, sink);
            if let Some(w) = waiter {
                sink.respond(w, Response::detail(503, &reason));
            }
        }
        Finish::Approval(Some(calls), _) => {
            let data = approvals::RequiredData { tool_calls: &calls };
            table.broadcast_to(id, "approval_required", data, stream, sink);
            if let Some(w) = waiter {
                sink.respond(
                    w,
                    approvals::coded_with_calls(
                        409,
                        "approval_required",
                        approvals::APPROVAL_REQUIRED_MESSAGE,
                        &calls,
                    ),
                );
            }
            drop_queued_for_approvals(table, id, &calls, sink);
        }
        Finish::Approval(None, _) => {
            let data = ErrorData {
                code: Some("approval_unsupported"),
                message: APPROVAL_UNSUPPORTED,
            };
            table.broadcast_to(id, "error", data, stream, sink);
            if let Some(w) = waiter {
                sink.respond(
                    w,
                    coded_error(409, "approval_unsupported", APPROVAL_UNSUPPORTED),
                );
            }
        }
        Finish::Cancelled => end_cancelled(table, id, &turn, sink),
    }
}

/// Saves what the ending turn leaves in the history: the agent's own
/// `messages` in place of what was recorded of the turn when it gave them
/// (and the turn ends well), else the server's transcript; and the calls
/// left waiting for approval, in the same write.
fn save(
    table: &mut SessionTable,
    id: &str,
    turn: &mut Turn,
    mut transcript: Transcript,
    how: &mut Finish,
    sink: &mut dyn Sink,
) -> Result<(), String> {
    let (final_text, own, mut calls) = match how {
        Finish::Done(content, messages) => (content.clone(), messages.take(), None),
        Finish::Approval(Some(calls), messages) => (None, messages.take(), Some(calls.clone())),
        _ => (None, None, None),
    };
    // A resumed turn's end is where its decided calls stop being pending
    // in the journal (unless it asks again, with calls of its own).
    if calls.is_none() && turn.resume.is_some() {
        calls = Some(Vec::new());
    }
    if let Some(messages) = own {
        return table.end_turn(id, messages, Some(turn.history_start), calls, sink);
    }
    // Without the agent's account, a request for approvals is recorded as
    // the response holding one tool call per pending call (those it did
    // not stream as `tool_call` already).
    for call in calls.iter().flatten() {
        if !transcript.has_call(&call.tool_call_id) {
            transcript.tool_call(&call.tool_call_id, &call.name, &call.args);
        }
    }
    let mut messages = transcript.finish(final_text.as_deref());
    if let Some(request) = turn.unsaved_request.take() {
        messages.insert(0, request);
    }
    table.end_turn(id, messages, None, calls, sink)
}

/// Turns queued behind one that asked for approvals never run: each ends
/// with `approval_pending` (REST: 409) to the one who sent it.
fn drop_queued_for_approvals(
    table: &mut SessionTable,
    id: &str,
    calls: &[PendingCall],
    sink: &mut dyn Sink,
) {
    let Some(session) = table.get_mut(id) else {
        return;
    };
    let queued = session.take_queue();
    for turn in queued {
        table.metrics.queued = table.metrics.queued.saturating_sub(1);
        table.metrics.ended(Outcome::Error);
        if let Some(w) = turn.waiter {
            sink.respond(w, pending_response(calls));
        }
        if let Some(c) = turn.client {
            sink.send(c, &approvals::pending_error_frame(calls));
        }
        if let Some(s) = turn.stream {
            let data = ErrorData {
                code: Some("approval_pending"),
                message: approvals::APPROVAL_PENDING_MESSAGE,
            };
            sink.deliver(s, &crate::events::Event::new("error", data, None));
        }
    }
}

/// The REST answer to a message that came while approvals are pending.
pub fn pending_response(calls: &[PendingCall]) -> Response {
    approvals::coded_with_calls(
        409,
        "approval_pending",
        approvals::APPROVAL_PENDING_MESSAGE,
        calls,
    )
}

fn end_cancelled(table: &mut SessionTable, id: &str, turn: &Turn, sink: &mut dyn Sink) {
    let data = ErrorData {
        code: Some("cancelled"),
        message: CANCELLED_MESSAGE,
    };
    table.broadcast_to(id, "error", data, turn.stream, sink);
    if let Some(w) = turn.waiter {
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

/// Session `id`'s history could not be read back for its running turn,
/// which has not started: it ends with `why`. Returns true when another
/// turn is now due (step the session).
pub fn history_unreadable(
    table: &mut SessionTable,
    id: &str,
    why: &str,
    sink: &mut dyn Sink,
    now: Instant,
) -> bool {
    let waiting = table
        .get(id)
        .and_then(|s| s.running())
        .filter(|t| !t.has_begun())
        .map(|t| t.id);
    let Some(turn) = waiting else {
        return false;
    };
    let reason = format!("the session's history could not be read: {why}");
    agent_failed(table, id, turn, reason, sink, now)
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
    let Some(mut running) = session.take_running() else {
        return false;
    };
    let queued = session.take_queue();
    if running.transcript.is_none() {
        // Cancelled before its first step: it still counts as having run.
        let _ = begin(table, id, &mut running, &engine.model_name, false, sink);
    }
    finish(table, id, running, Finish::Cancelled, sink);
    for turn in queued {
        // Queued turns never ran: cancelled, with no duration.
        table.metrics.queued = table.metrics.queued.saturating_sub(1);
        table.metrics.ended(Outcome::Cancelled);
        end_cancelled(table, id, &turn, sink);
    }
    true
}

/// `{"detail": {"code": ..., "message": ...}}` with `status`.
pub fn coded_error(status: u16, code: &str, message: &str) -> Response {
    let body = json!({ "detail": { "code": code, "message": message } });
    Response::json(status, body.to_string().into_bytes())
}

#[cfg(test)]
mod tests;
