//! [`App`] as the reactor sees it: the [`Service`] it serves.

use std::time::Instant;

use super::App;
use crate::agent::AgentEvent;
use crate::http::Request;
use crate::journal::Record;
use crate::service::{HttpOutcome, Service};
use crate::sessions::HistoryRead;
use crate::sink::{ConnId, Sink};

impl Service for App {
    fn handle_http(
        &mut self,
        req: Request,
        from: ConnId,
        now: Instant,
        sink: &mut dyn Sink,
    ) -> HttpOutcome {
        App::handle_http(self, req, from, now, sink)
    }

    fn subscribed(
        &mut self,
        conn: ConnId,
        session_id: &str,
        since: Option<u64>,
        now: Instant,
        sink: &mut dyn Sink,
    ) {
        App::subscribed(self, conn, session_id, since, now, sink)
    }

    fn unsubscribed(&mut self, conn: ConnId, session_id: &str, now: Instant) {
        App::unsubscribed(self, conn, session_id, now)
    }

    fn ws_text(
        &mut self,
        conn: ConnId,
        session_id: &str,
        text: &str,
        now: Instant,
        sink: &mut dyn Sink,
    ) {
        App::ws_text(self, conn, session_id, text, now, sink)
    }

    fn ws_binary(&mut self, conn: ConnId, session_id: &str, data: &[u8], sink: &mut dyn Sink) {
        App::ws_binary(self, conn, session_id, data, sink)
    }

    fn route_label(&self, path: &str) -> &'static str {
        super::routes::template(path)
    }

    fn run_turns(&mut self, now: Instant, sink: &mut dyn Sink) -> Option<Instant> {
        App::run_turns(self, now, sink)
    }

    fn has_new_turns(&self) -> bool {
        App::has_new_turns(self)
    }

    fn next_sweep(&self) -> Option<Instant> {
        Some(App::next_sweep(self))
    }

    fn sweep(&mut self, now: Instant) -> usize {
        App::sweep(self, now)
    }

    fn take_pass_freed(&mut self) -> bool {
        App::take_pass_freed(self)
    }

    fn persist_pending(&mut self, sink: &mut dyn Sink) {
        App::persist_pending(self, sink)
    }

    fn journal_live_bytes(&self) -> u64 {
        self.sessions.journal_live_bytes()
    }

    fn begin_snapshot(&mut self) {
        self.sessions.begin_snapshot()
    }

    fn snapshot_step(
        &mut self,
        budget: usize,
        base: u64,
        now: Instant,
    ) -> Result<(Vec<u8>, bool), String> {
        self.sessions.snapshot_step(budget, base, now)
    }

    fn end_snapshot(&mut self) {
        self.sessions.end_snapshot()
    }

    fn restore(&mut self, records: Vec<Record>, now: Instant) {
        App::restore(self, records, now)
    }

    fn take_history_reads(&mut self) -> Vec<HistoryRead> {
        App::take_history_reads(self)
    }

    fn history_read(
        &mut self,
        read: HistoryRead,
        result: Result<Vec<String>, String>,
        now: Instant,
        sink: &mut dyn Sink,
    ) {
        App::history_read(self, read, result, now, sink)
    }

    fn journal_switched(&mut self) {
        self.sessions.journal_switched()
    }

    fn record_exact_seqs(&mut self) {
        App::record_exact_seqs(self)
    }

    fn busy(&self) -> usize {
        self.busy_sessions().len()
    }

    fn cancel_all(&mut self, sink: &mut dyn Sink) {
        App::cancel_all(self, sink)
    }

    fn agent_events(
        &mut self,
        session_id: &str,
        turn: u64,
        events: Vec<AgentEvent>,
        now: Instant,
        sink: &mut dyn Sink,
    ) {
        App::agent_events(self, session_id, turn, events, now, sink)
    }

    fn agent_failed(
        &mut self,
        session_id: &str,
        turn: u64,
        reason: String,
        now: Instant,
        sink: &mut dyn Sink,
    ) {
        App::agent_failed(self, session_id, turn, reason, now, sink)
    }

    fn has_session(&self, id: &str) -> bool {
        self.sessions.get(id).is_some()
    }

    fn subscribers(&self, id: &str) -> &[ConnId] {
        self.sessions.subscribers(id)
    }

    fn sessions_held(&self) -> usize {
        self.sessions.len()
    }
}
