//! The app's share of loop maintenance: the directory's growth step and
//! the idle sweep (`--session-ttl`, `--retain-idle`, `--history-idle`) a
//! budget per iteration, on a schedule, and whether a pass freed memory
//! for the reactor to hand back to the OS.

use std::time::{Duration, Instant};

use super::{App, SWEEP_BUDGET, SWEEP_EVERY};

impl App {
    /// How often a sweep pass starts: often enough that a session goes
    /// at most about one interval after its TTL or retention idle time.
    pub(super) fn sweep_interval(&self) -> Duration {
        let l = &self.config.limits;
        [l.session_ttl, l.retain_idle, l.history_idle]
            .into_iter()
            .flatten()
            .fold(SWEEP_EVERY, Duration::min)
    }

    /// Whether the sweep pass that just ended freed sessions or retained
    /// events (asked once: the reactor then hands the memory back).
    pub fn take_pass_freed(&mut self) -> bool {
        std::mem::take(&mut self.pass_freed)
    }

    /// When [`sweep`](Self::sweep) next wants to run.
    pub fn next_sweep(&self) -> Instant {
        self.next_sweep
    }

    /// Loop maintenance, once per iteration: moves a share of the session
    /// table if it is growing, and drops stale sessions (the original's
    /// `--session-ttl` sweep) a budget at a time, so neither ever takes
    /// time proportional to the sessions held. Returns how many went.
    pub fn sweep(&mut self, now: Instant) -> usize {
        self.sessions.maintain();
        if now < self.next_sweep {
            return 0;
        }
        let ttl = self.config.limits.session_ttl;
        let l = &self.config.limits;
        if ttl.is_none() && l.retain_idle.is_none() && l.history_idle.is_none() {
            self.next_sweep = now + self.sweep_interval();
            return 0;
        }
        let m = &self.sessions.metrics;
        let freed_before = m.retained_dropped + m.histories_evicted;
        let (removed, done) = self.sessions.sweep_step(now, ttl, SWEEP_BUDGET);
        let m = &self.sessions.metrics;
        self.freed_in_pass |=
            removed > 0 || m.retained_dropped + m.histories_evicted > freed_before;
        // A pass under way keeps `next_sweep` due, so the loop comes back
        // at once for the next budget.
        if done {
            self.next_sweep = now + self.sweep_interval();
            self.pass_freed = std::mem::take(&mut self.freed_in_pass);
        }
        removed
    }
}
