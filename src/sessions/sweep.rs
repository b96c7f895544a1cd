//! The idle sweep: stale sessions removed (`--session-ttl`), retained
//! events dropped by sessions without clients (`--retain-idle`), and idle
//! histories sent back to the journal (`--history-idle`), found a
//! budget at a time, in creation order, so a pass never takes time
//! proportional to the sessions held.

use std::time::{Duration, Instant};

use super::{cold, SessionTable, Walk};

impl SessionTable {
    /// One step of the idle sweep: looks at up to `budget` sessions from
    /// where the last step stopped (in creation order); of those with no
    /// subscriber and no turn, removes the ones idle for `ttl` and drops
    /// the retained events of the ones idle for the retention's `idle`,
    /// and the history of the ones idle for its `history_idle` (not while
    /// a compaction copies: it evicts what it read back itself).
    /// Returns how many went and whether the pass over every session is
    /// complete.
    pub fn sweep_step(
        &mut self,
        now: Instant,
        ttl: Option<Duration>,
        budget: usize,
    ) -> (usize, bool) {
        let retain_idle = self.retention.idle;
        let from = match self.sweep_cursor.unwrap_or(Walk::At(u32::MAX)) {
            Walk::At(u32::MAX) => None,
            Walk::At(slot) => Some(slot),
            Walk::End => {
                self.sweep_cursor = None;
                return (0, true);
            }
        };
        // This step's share, in creation order; where the next one starts.
        let mut slots: Vec<u32> = Vec::new();
        let mut next = Walk::End;
        for slot in self.sessions.order_from(from) {
            if slots.len() == budget {
                next = Walk::At(slot);
                break;
            }
            slots.push(slot);
        }
        let mut stale = Vec::new();
        for slot in slots {
            let Some((id, s)) = self.sessions.at(slot) else {
                continue;
            };
            if s.is_busy() || self.subscribers.contains_key(id) {
                continue;
            }
            let idle = now.saturating_duration_since(s.last_activity);
            if ttl.is_some_and(|ttl| idle >= ttl) {
                stale.push(id.to_owned());
                continue;
            }
            let evict = self.compaction_cursor.is_none() && self.history_idle(id, s, now);
            let Some((_, s)) = self.sessions.at_mut(slot) else {
                continue;
            };
            if retain_idle.is_some_and(|r| idle >= r) && s.drop_retained() {
                self.metrics.retained_dropped += 1;
            }
            if evict && cold::evict(s, self.file) {
                self.metrics.histories_evicted += 1;
            }
        }
        self.sweep_cursor = Some(next);
        for id in &stale {
            self.remove(id);
        }
        let done = self.sweep_cursor == Some(Walk::End);
        if done {
            self.sweep_cursor = None;
        }
        (stale.len(), done)
    }

    /// A whole TTL sweep at once (tests, small tables).
    pub fn sweep(&mut self, now: Instant, ttl: Duration) -> usize {
        let mut removed = 0;
        loop {
            let (n, done) = self.sweep_step(now, Some(ttl), usize::MAX);
            removed += n;
            if done {
                return removed;
            }
        }
    }
}
