//! The TTL sweep (`--session-ttl`): stale sessions found a budget at a
//! time, in creation order, so a pass never takes time proportional to the
//! sessions held.

use std::time::{Duration, Instant};

use super::SessionTable;

impl SessionTable {
    /// One step of the TTL sweep: looks at up to `budget` sessions from
    /// where the last step stopped (in creation order) and removes those
    /// with no subscriber, no turn and no activity for `ttl`. Returns how
    /// many went and whether the pass over every session is complete.
    pub fn sweep_step(&mut self, now: Instant, ttl: Duration, budget: usize) -> (usize, bool) {
        let from = self.sweep_cursor.unwrap_or(0);
        let mut stale = Vec::new();
        let mut next = None;
        for (i, (&ordinal, id)) in self.order.range(from..).enumerate() {
            if i == budget {
                next = Some(ordinal);
                break;
            }
            let Some(s) = self.sessions.get(id) else {
                continue;
            };
            if s.running.is_none()
                && s.queue.is_empty()
                && !self.subscribers.contains_key(id.as_str())
                && now.saturating_duration_since(s.last_activity) >= ttl
            {
                stale.push(id.clone());
            }
        }
        for id in &stale {
            self.remove(id);
        }
        self.sweep_cursor = next;
        (stale.len(), next.is_none())
    }

    /// A whole TTL sweep at once (tests, small tables).
    pub fn sweep(&mut self, now: Instant, ttl: Duration) -> usize {
        let mut removed = 0;
        loop {
            let (n, done) = self.sweep_step(now, ttl, usize::MAX);
            removed += n;
            if done {
                return removed;
            }
        }
    }
}
