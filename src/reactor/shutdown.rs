//! Shutdown: the first SIGTERM/SIGINT stops accepting and lets running
//! turns finish (`--shutdown-grace`), then every client is closed and the
//! exact `seq` of every session journaled; a second signal exits at once.
//! SIGCHLD (an agent exited) arrives on the same source.

use std::time::Instant;

use signal_hook::consts::SIGCHLD;

use super::conn::State;
use super::conn_sink::sink;
use super::{Server, SHUTDOWN_GRACE};
use crate::metrics::CloseReason;
use crate::ws::close;

impl Server {
    /// Returns true when the process should exit now.
    pub(super) fn on_signals(&mut self, now: Instant) -> bool {
        let mut stop = false;
        let mut child_exited = false;
        for signal in self.signals.pending() {
            match signal {
                SIGCHLD => child_exited = true,
                _ => stop = true,
            }
        }
        if child_exited {
            self.reap_agents(now);
        }
        if !stop {
            return false;
        }
        if self.shutdown_deadline.is_some() || self.draining_until.is_some() {
            // Every record already written is whole: the journal is consistent.
            crate::info!("second signal, exiting now");
            return true;
        }
        crate::info!("shutting down");
        if let Some(n) = &self.notifier {
            n.notify("STOPPING=1");
        }
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        self.draining_until = Some(now + self.limits.shutdown_grace);
        false
    }

    /// The end of shutdown: WebSockets close with 1001, idle HTTP
    /// connections close, busy ones after their response; the exact `seq`
    /// of every session is journaled.
    pub(super) fn close_all(&mut self, now: Instant) {
        self.shutdown_deadline = Some(now + SHUTDOWN_GRACE);
        self.app.record_exact_seqs();
        self.retire_workers(now);
        for slot in 0..self.conns.capacity() {
            let Some(conn) = self.conns.get_mut(slot) else {
                continue;
            };
            match &mut conn.state {
                State::Ws(_) | State::Sse(_) => {
                    self.metrics.closed(CloseReason::Shutdown);
                    self.close_client(slot, close::GOING_AWAY, "Server shutting down", now)
                }
                State::Http(h) if h.is_idle() && h.io.queued() == 0 => self.begin_close(slot, now),
                State::Http(h) => h.keep_alive = false,
                _ => {}
            }
        }
    }

    /// Writes what is pending and forces the journal to disk (any mode).
    pub(super) fn sync_journal(&mut self) {
        self.app.persist_pending(&mut sink!(self));
        if let Some(j) = &mut self.journal {
            j.sync_now();
        }
    }
}
