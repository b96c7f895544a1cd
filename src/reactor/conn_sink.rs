//! The reactor's side of [`Sink`]: what the core hands over goes into
//! connection queues (written at the end of the iteration), the journal,
//! or the lists of agents to start and stop that the loop carries out.

use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;

use super::access;
use super::conn::{close_subscriber, Conn, Slab, State};
use super::http::queue_response;
use crate::agent::AgentJob;
use crate::events::Event;
use crate::http::Response;
use crate::journal::{Appended, JournalFile, Loc, ToAppend};
use crate::metrics::{self, CloseReason, Exposition, TransportMetrics};
use crate::sink::{ConnId, Sink};
use crate::ws::close;

pub(super) struct ConnSink<'a> {
    pub journal: &'a mut Option<JournalFile>,
    pub agent_starts: &'a mut Vec<AgentJob>,
    pub agent_stops: &'a mut Vec<(u64, bool)>,
    pub conns: &'a mut Slab,
    pub dirty: &'a mut Vec<usize>,
    pub wake: &'a mut Vec<usize>,
    /// Subscribers the sink closed; the core still has to forget them.
    pub gone: &'a mut Vec<(ConnId, Rc<str>)>,
    pub max_output: usize,
    pub metrics: &'a mut TransportMetrics,
    /// `--access-log`.
    pub access_log: bool,
    /// The loop iteration under way: acknowledgements are held for it.
    pub epoch: u64,
    /// Journal records written (counted for acknowledgements).
    pub records: &'a mut u64,
    pub now: Instant,
}

/// Borrows the fields a [`ConnSink`] needs, leaving `self.app` free.
macro_rules! sink {
    ($s:ident) => {
        $crate::reactor::conn_sink::ConnSink {
            conns: &mut $s.conns,
            dirty: &mut $s.dirty,
            wake: &mut $s.wake,
            gone: &mut $s.gone_subscribers,
            journal: &mut $s.journal,
            agent_starts: &mut $s.agent_starts,
            agent_stops: &mut $s.agent_stops,
            max_output: $s.limits.max_ws_output_bytes,
            metrics: &mut $s.metrics,
            access_log: $s.access_log,
            epoch: $s.durability.epoch,
            records: &mut $s.records,
            now: std::time::Instant::now(),
        }
    };
}
pub(super) use sink;

impl ConnSink<'_> {
    fn live(&mut self, to: ConnId) -> Option<&mut Conn> {
        self.conns
            .get_mut(to.slot)
            .filter(|c| c.serial == to.serial)
    }

    /// Subscriber `to` is over the output bound: it is closed with 1008
    /// instead of being given more. (A client keeping up may still get one
    /// item larger than the bound, a long reply's `done`: the check comes
    /// before the push, so the most a client holds is the bound plus one.)
    fn close_slow(&mut self, to: ConnId) {
        if let Some(gone) = close_subscriber(
            self.conns,
            to.slot,
            close::POLICY,
            "Output buffer full",
            self.now,
        ) {
            self.metrics.closed(CloseReason::Slow);
            self.gone.push(gone);
        }
    }
}

impl Sink for ConnSink<'_> {
    fn send(&mut self, to: ConnId, frame: &Bytes) {
        let max = self.max_output;
        let Some(conn) = self.live(to) else { return };
        let State::Ws(w) = &mut conn.state else {
            return;
        };
        let io = w.ws.get_mut();
        if io.queued() > max {
            self.close_slow(to);
        } else {
            io.push(frame.clone());
        }
        self.dirty.push(to.slot);
    }

    fn deliver(&mut self, to: ConnId, event: &Event) {
        let (max, epoch) = (self.max_output, self.epoch);
        let Some(conn) = self.live(to) else { return };
        let mut run_ended = false;
        if conn.subscriber_backlog() > max {
            self.close_slow(to);
        } else {
            match &mut conn.state {
                State::Ws(w) => {
                    if event.acknowledges() {
                        w.ws.get_mut().barrier(epoch);
                    }
                    w.ws.get_mut().push(event.ws_frame());
                    self.metrics.events_ws += 1;
                }
                State::Sse(s) => {
                    if event.acknowledges() {
                        s.io.barrier(epoch);
                    }
                    match &mut s.run {
                        None => {
                            s.io.push(event.sse_head());
                            s.io.push(event.sse_body());
                        }
                        Some(run) => {
                            let mut out = Vec::new();
                            run_ended = run.event(event.json(), &mut out);
                            s.io.push(Bytes::from(out));
                        }
                    }
                    self.metrics.events_sse += 1;
                }
                _ => return,
            }
        }
        if run_ended {
            // The run is over: what it queued goes out, then the close.
            if let Some(gone) = close_subscriber(self.conns, to.slot, close::NORMAL, "", self.now) {
                self.gone.push(gone);
            }
        }
        self.dirty.push(to.slot);
    }

    fn session_gone(&mut self, to: ConnId) {
        let Some(conn) = self.live(to) else { return };
        if !matches!(conn.state, State::Sse(_)) {
            return;
        }
        if let Some(gone) = close_subscriber(
            self.conns,
            to.slot,
            close::NORMAL,
            "Session deleted",
            self.now,
        ) {
            self.gone.push(gone);
            self.dirty.push(to.slot);
        }
    }

    fn respond(&mut self, to: ConnId, response: Response) {
        let Some(conn) = self
            .conns
            .get_mut(to.slot)
            .filter(|c| c.serial == to.serial)
        else {
            return;
        };
        let State::Http(h) = &mut conn.state else {
            return;
        };
        if !h.waiting {
            return;
        }
        h.waiting = false;
        h.keep_alive = h.waiting_keep_alive;
        // The answer to a turn: it leaves once the turn is durable.
        h.io.barrier(self.epoch);
        let mut response = response;
        let (status, len) = queue_response(h, &mut response, h.keep_alive);
        if let Some(request) = h.pending_log.take() {
            let log = self.access_log;
            access::record(self.metrics, log, h.peer, &request, status, len);
        }
        self.dirty.push(to.slot);
        self.wake.push(to.slot);
    }

    fn close(&mut self, to: ConnId, code: u16, reason: &str) {
        if self.live(to).is_none() {
            return;
        }
        if let Some(gone) = close_subscriber(self.conns, to.slot, code, reason, self.now) {
            if let Some(why) = CloseReason::of_code(code) {
                self.metrics.closed(why);
            }
            self.gone.push(gone);
            self.dirty.push(to.slot);
        }
    }

    fn write_metrics(&mut self, out: &mut Exposition) {
        if let Some(j) = self.journal.as_ref() {
            self.metrics.journal_bytes = j.len();
            self.metrics.fsync = j.fsync_seconds.clone();
        }
        self.metrics.write(self.conns.count_kinds(), out);
        metrics::write_process(out);
    }

    fn start_agent(&mut self, job: AgentJob) {
        self.agent_starts.push(job);
    }

    fn persist(&mut self, changes: &[ToAppend]) -> Result<Vec<Appended>, String> {
        *self.records += changes.len() as u64;
        match self.journal {
            Some(j) => j.append(changes),
            None => Ok(vec![
                Appended {
                    at: Loc { offset: 0, len: 0 },
                    mirrored_at: None,
                };
                changes.len()
            ]),
        }
    }

    fn stop_agent(&mut self, turn: u64, graceful: bool) {
        self.agent_stops.push((turn, graceful));
    }

    fn backlog(&self, to: ConnId) -> usize {
        match self.conns.get(to.slot) {
            Some(conn) if conn.serial == to.serial => conn.subscriber_backlog(),
            _ => 0,
        }
    }
}
