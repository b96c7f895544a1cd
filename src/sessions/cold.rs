//! Cold histories: a session idle for `--history-idle` keeps only its
//! directory entry, and its history is read back from the journal when
//! something needs it (a history GET, a turn of an agent that is given the
//! history, a compaction). The reads themselves happen off the loop (see
//! `reactor::history_reader`); here is the bookkeeping: which reads are
//! wanted, who waits on each, and what a finished read means.
//!
//! Nothing wrong gets in: a read answers for the history as it was when
//! asked (its message count and last record); if the session changed
//! meanwhile the read is asked again, and if it was deleted its waiters
//! hear so.

use std::time::Instant;

use bytes::Bytes;

use super::{Session, SessionTable};
use crate::journal::Loc;
use crate::sink::ConnId;

/// Cold sessions a compaction asks to be read ahead of the one it waits
/// for (the reader works through them while the loop writes).
const COMPACTION_PREFETCH: usize = 8;

/// A history to read back: session `id` (its incarnation `ordinal`),
/// whose last `m` record is `head`, holding `count` messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryRead {
    pub id: String,
    pub ordinal: u64,
    pub head: Loc,
    pub count: usize,
}

/// A read under way.
#[derive(Debug)]
pub(super) struct Load {
    read: HistoryRead,
    asked: Instant,
    /// History requests (`GET .../history`) answered when it is done.
    waiters: Vec<ConnId>,
    /// A compaction waits on it: if it fails, the compaction gives up.
    for_compaction: bool,
}

/// What a finished read means for those who waited on it.
#[derive(Debug, PartialEq, Eq)]
pub struct Loaded {
    pub id: String,
    /// History requests to answer now.
    pub waiters: Vec<ConnId>,
    pub outcome: LoadOutcome,
}

#[derive(Debug, PartialEq, Eq)]
pub enum LoadOutcome {
    /// The history is in RAM.
    Ready,
    /// The session was deleted meanwhile.
    Gone,
    /// It could not be read (I/O error, a corrupt record): why.
    Failed(String),
}

/// Drops session `s`'s history from RAM if the journal (`file`, an index
/// of its heads) can give it back. Returns whether it did.
pub(super) fn evict(s: &mut Session, file: usize) -> bool {
    // No head (in memory, or never written) or a broken chain: RAM is the
    // only copy.
    if s.heads[file].len == 0 || s.message_count == 0 {
        return false;
    }
    let Some(hot) = s.hot.as_mut() else {
        return false;
    };
    if hot.messages.take().is_none() {
        return false;
    }
    s.shed();
    true
}

impl SessionTable {
    /// Whether session `id`'s history is in RAM; if it is not, its read
    /// is asked for (once, however many ask). False also for no session.
    pub fn want_history(&mut self, id: &str, now: Instant) -> bool {
        self.want(id, now, false)
    }

    /// A history request that waits for session `id`'s history to be read
    /// back (see [`want_history`](Self::want_history)).
    pub fn wait_for_history(&mut self, id: &str, conn: ConnId, now: Instant) {
        self.want(id, now, false);
        if let Some(load) = self.loads.get_mut(id) {
            load.waiters.push(conn);
        }
    }

    pub(super) fn want(&mut self, id: &str, now: Instant, for_compaction: bool) -> bool {
        let Some(s) = self.sessions.get(id) else {
            return false;
        };
        if s.messages().is_some() {
            return true;
        }
        let read = HistoryRead {
            id: id.to_owned(),
            ordinal: s.ordinal,
            head: s.heads[self.file],
            count: s.message_count,
        };
        match self.loads.get_mut(id) {
            Some(load) if load.read == read => load.for_compaction |= for_compaction,
            other => {
                // A read of another incarnation, or of the history before
                // a record it lacks: its waiters wait for this one.
                let waiters = other.map(|l| std::mem::take(&mut l.waiters));
                self.reads.push(read.clone());
                self.loads.insert(
                    id.to_owned(),
                    Load {
                        read,
                        asked: now,
                        waiters: waiters.unwrap_or_default(),
                        for_compaction,
                    },
                );
            }
        }
        false
    }

    /// Reads asked for since the last call, for the reader.
    pub fn take_reads(&mut self) -> Vec<HistoryRead> {
        std::mem::take(&mut self.reads)
    }

    /// Cold histories being read back now.
    pub fn loads_in_flight(&self) -> usize {
        self.loads.len()
    }

    /// The reader's answer to `read`: the history (each message's JSON
    /// text), or why it could not be read. None: nobody waits on it any
    /// more (an answer to a read asked again since).
    pub fn history_read(
        &mut self,
        read: HistoryRead,
        result: Result<Vec<String>, String>,
        now: Instant,
    ) -> Option<Loaded> {
        if self.loads.get(&read.id).is_none_or(|l| l.read != read) {
            return None;
        }
        let load = self.loads.remove(&read.id)?;
        let took = now.saturating_duration_since(load.asked).as_secs_f64();
        let id = read.id.clone();
        let file = self.file;
        enum Found {
            Gone,
            /// Cut to nothing meanwhile: no read needed any more.
            Resident,
            /// A record added (or the journal switched files) while it was
            /// read: it answers for an older history.
            Stale,
            AsRead,
        }
        let found = match self.sessions.get(&id) {
            Some(s) if s.ordinal == read.ordinal => {
                if s.messages().is_some() {
                    Found::Resident
                } else if s.message_count != read.count || s.heads[file] != read.head {
                    Found::Stale
                } else {
                    Found::AsRead
                }
            }
            _ => Found::Gone,
        };
        let outcome = match (found, result) {
            (Found::Gone, _) => LoadOutcome::Gone,
            (Found::Resident, _) => LoadOutcome::Ready,
            (Found::Stale, _) => {
                // Read the history as it is now; the waiters wait for that.
                self.want(&id, now, load.for_compaction);
                if let Some(l) = self.loads.get_mut(&id) {
                    l.waiters.extend(load.waiters);
                }
                return None;
            }
            (Found::AsRead, Ok(history)) => {
                if let Some(s) = self.sessions.get_mut(&id) {
                    s.hot().messages = Some(history.into_iter().map(Bytes::from).collect());
                }
                self.metrics.history_loads_ok += 1;
                self.metrics.history_load.observe(took);
                LoadOutcome::Ready
            }
            (Found::AsRead, Err(why)) => {
                self.metrics.history_loads_failed += 1;
                crate::warn!("the history of session {id} could not be read: {why}");
                if load.for_compaction {
                    self.compaction_failed = Some(format!(
                        "the history of session {id} could not be read: {why}"
                    ));
                }
                LoadOutcome::Failed(why)
            }
        };
        Some(Loaded {
            id,
            waiters: load.waiters,
            outcome,
        })
    }

    /// A compaction's new file became the journal: each session's head
    /// in it is now the one reads follow.
    pub fn journal_switched(&mut self) {
        self.file = 1 - self.file;
    }

    /// Asks for the cold histories from slot `from` on, in creation order
    /// (at most [`COMPACTION_PREFETCH`] + 1), for a compaction that copies
    /// them.
    pub(super) fn prefetch_for_compaction(&mut self, from: u32, now: Instant) {
        let cold: Vec<String> = self
            .sessions
            .order_from(Some(from))
            .filter_map(|slot| self.sessions.at(slot))
            .filter(|(_, s)| s.messages().is_none())
            .take(COMPACTION_PREFETCH + 1)
            .map(|(id, _)| id.to_owned())
            .collect();
        for id in cold {
            self.want(&id, now, true);
        }
    }

    /// Whether session `id` (that is `s`) may leave RAM now: no client,
    /// no turn, no read under way, idle for `--history-idle`.
    pub(super) fn history_idle(&self, id: &str, s: &Session, now: Instant) -> bool {
        self.retention
            .history_idle
            .is_some_and(|h| now.saturating_duration_since(s.last_activity) >= h)
            && !s.is_busy()
            && !self.subscribers.contains_key(id)
            && !self.loads.contains_key(id)
    }
}
