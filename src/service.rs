//! The seam between the transport and what it serves.
//!
//! The reactor owns sockets, HTTP parsing, WebSocket framing, timers and
//! output queues; it knows nothing of sessions or agents. What a request
//! or a WebSocket message *means* is a [`Service`]'s business: the API
//! ([`crate::api::App`]) in the server, a plain echo in
//! `examples/ws_echo.rs` (the Autobahn|Testsuite target). A service answers
//! through the [`Sink`] it is handed, never through a socket.
//!
//! The methods after the first six are the hooks of a stateful service
//! (turns to step, a journal to write, agents in the reactor); their
//! defaults do nothing, so a stateless service implements only what it
//! answers.

use std::time::Instant;

use crate::agent::AgentEvent;
use crate::http::{Request, Response};
use crate::journal::Record;
use crate::sessions::HistoryRead;
use crate::sink::{ConnId, Sink};

/// What the reactor does with a request.
#[derive(Debug, PartialEq, Eq)]
pub enum HttpOutcome {
    Respond(Response),
    /// The answer comes later through [`Sink::respond`] (a chat turn runs);
    /// the connection reads no further request until then.
    Pending,
    /// Switch this connection to a WebSocket.
    Upgrade(Upgrade),
    /// Switch this connection to a Server-Sent Events stream.
    EventStream(EventStream),
    /// Switch this connection to one AG-UI run's event stream: the turn's
    /// events, translated, until the run ends; then it closes.
    Run(Box<crate::agui::RunStream>),
}

/// Switch this connection to a WebSocket of `session_id`.
#[derive(Debug, PartialEq, Eq)]
pub struct Upgrade {
    pub session_id: String,
    /// The `101` response, ready to write.
    pub response: Vec<u8>,
    /// False: the client had no valid key; close it with 4001 at once.
    pub authorized: bool,
    /// `?since=N`: replay the retained events after N first.
    pub since: Option<u64>,
}

/// Stream the events of `session_id` to this connection (SSE).
#[derive(Debug, PartialEq, Eq)]
pub struct EventStream {
    pub session_id: String,
    /// `Last-Event-ID` or `?since=N`: replay the retained events after N.
    pub since: Option<u64>,
}

pub trait Service {
    /// Answers one HTTP request from connection `from`.
    fn handle_http(
        &mut self,
        req: Request,
        from: ConnId,
        now: Instant,
        sink: &mut dyn Sink,
    ) -> HttpOutcome;

    /// A subscriber of `session_id` is open: a WebSocket client (after the
    /// `101`) or an event stream (after its head). `since`: replay the
    /// retained events after N first.
    fn subscribed(
        &mut self,
        conn: ConnId,
        session_id: &str,
        since: Option<u64>,
        now: Instant,
        sink: &mut dyn Sink,
    );

    /// A WebSocket client or event stream has gone, for whatever reason.
    fn unsubscribed(&mut self, conn: ConnId, session_id: &str, now: Instant);

    /// One complete text message from a WebSocket client.
    fn ws_text(
        &mut self,
        conn: ConnId,
        session_id: &str,
        text: &str,
        now: Instant,
        sink: &mut dyn Sink,
    );

    /// One complete binary message from a WebSocket client.
    fn ws_binary(&mut self, conn: ConnId, session_id: &str, data: &[u8], sink: &mut dyn Sink);

    /// The route template a request path falls under, for metrics
    /// (`/api/sessions/{id}`, …; `other` for unknown paths).
    fn route_label(&self, _path: &str) -> &'static str {
        "other"
    }

    /// Steps whatever runs by itself (turns); returns when it next wants
    /// a step.
    fn run_turns(&mut self, _now: Instant, _sink: &mut dyn Sink) -> Option<Instant> {
        None
    }

    /// Something became runnable since the last `run_turns`: the loop must
    /// not sleep before stepping it.
    fn has_new_turns(&self) -> bool {
        false
    }

    /// When [`sweep`](Self::sweep) next wants to run (None: never).
    fn next_sweep(&self) -> Option<Instant> {
        None
    }

    /// Periodic maintenance; returns how many items it dropped.
    fn sweep(&mut self, _now: Instant) -> usize {
        0
    }

    /// Whether the sweep pass that just ended freed memory worth handing
    /// back to the OS (asked once per pass).
    fn take_pass_freed(&mut self) -> bool {
        false
    }

    /// Hands pending state changes to the journal (through `sink.persist`).
    fn persist_pending(&mut self, _sink: &mut dyn Sink) {}

    /// Bytes of journal that describe live state (compaction policy).
    fn journal_live_bytes(&self) -> u64 {
        0
    }

    /// Compaction starts: the live state is to be written out in steps.
    fn begin_snapshot(&mut self) {}

    /// The next part of the live state as journal records (about `budget`
    /// bytes) for the new file at offset `base`; true when all of it has
    /// been given. Err: the compaction must give up (a history it needed
    /// could not be read).
    fn snapshot_step(
        &mut self,
        _budget: usize,
        _base: u64,
        _now: Instant,
    ) -> Result<(Vec<u8>, bool), String> {
        Ok((Vec::new(), true))
    }

    /// Compaction is over (done or given up).
    fn end_snapshot(&mut self) {}

    /// Rebuilds state from journal records (at start).
    fn restore(&mut self, _records: Vec<Record>, _now: Instant) {}

    /// Cold histories to read back from the journal, asked for since the
    /// last call (the reactor's reader thread reads them).
    fn take_history_reads(&mut self) -> Vec<HistoryRead> {
        Vec::new()
    }

    /// The reader's answer to one of them.
    fn history_read(
        &mut self,
        _read: HistoryRead,
        _result: Result<Vec<String>, String>,
        _now: Instant,
        _sink: &mut dyn Sink,
    ) {
    }

    /// A compaction's new file became the journal.
    fn journal_switched(&mut self) {}

    /// Journals what a clean shutdown should leave exact (`seq`s).
    fn record_exact_seqs(&mut self) {}

    /// Whether work is still running (shutdown waits for it).
    fn busy(&self) -> usize {
        0
    }

    /// Cancels whatever runs (shutdown after the grace period).
    fn cancel_all(&mut self, _sink: &mut dyn Sink) {}

    /// Events from the agent running turn `turn` of `session_id`.
    fn agent_events(
        &mut self,
        _session_id: &str,
        _turn: u64,
        _events: Vec<AgentEvent>,
        _now: Instant,
        _sink: &mut dyn Sink,
    ) {
    }

    /// The agent of turn `turn` failed with `reason`.
    fn agent_failed(
        &mut self,
        _session_id: &str,
        _turn: u64,
        _reason: String,
        _now: Instant,
        _sink: &mut dyn Sink,
    ) {
    }

    /// Whether session `id` exists (agents keep per-session state).
    fn has_session(&self, _id: &str) -> bool {
        false
    }

    /// The clients subscribed to session `id` (agents pause for slow ones).
    fn subscribers(&self, _id: &str) -> &[ConnId] {
        &[]
    }

    /// Sessions held (for the start-up log line).
    fn sessions_held(&self) -> usize {
        0
    }
}
