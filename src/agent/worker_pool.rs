//! Scheduling for `--agent worker`, sans-IO: which worker slot runs which
//! turn, what each worker's stdin gets, which turns fail when a worker
//! breaks, when a worker is (re)started, when a turn times out.
//!
//! The reactor (`reactor::workers`) owns the processes and their pipes. It
//! tells the pool what happened (a worker started, printed an event, went
//! down; the core ended a turn; time passed) and carries out the
//! [`Action`]s the pool queues: start a worker, append lines to a worker's
//! stdin, fail a turn with a reason.
//!
//! - A session is bound at its first turn to the slot with the fewest turns
//!   in flight or waiting, and keeps it (across restarts of that slot's
//!   worker) until [`Pool::prune_bindings`] finds the session gone.
//! - At most `concurrency` turns are in flight per worker; the rest wait in
//!   the slot's queue, in arrival order. A turn is also held back while the
//!   worker's stdin has [`STDIN_HIGH`] bytes unwritten (a worker that does
//!   not read its stdin cannot make the server buffer without bound).
//! - A turn's deadline (`--turn-timeout`) runs from its submission, so a
//!   turn waiting for a restarting worker times out like a running one.
//! - Every turn that was sent to a worker and is ended by the server (the
//!   core stopped it, timeout, output bound) gets a `cancel` line. A turn
//!   the worker ended itself, or that never reached it, gets none.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::worker::{cancel_line, turn_line};
use super::{AgentEvent, AgentJob};

/// First restart delay after a worker goes down; it doubles per failure.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A worker that ran this long resets the back-off.
pub const STABLE_AFTER: Duration = Duration::from_secs(30);
/// Unwritten stdin bytes above which no more turns are sent to a worker.
pub const STDIN_HIGH: usize = 1024 * 1024;

/// `--agent worker`'s settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// `--agent-cmd`, run by `/bin/sh -c`.
    pub cmd: String,
    /// `--workers`.
    pub workers: usize,
    /// `--worker-concurrency`.
    pub concurrency: usize,
    /// Most bytes of event lines per turn.
    pub max_output: usize,
    pub turn_timeout: Duration,
}

/// What the reactor must do.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Start this slot's worker, then call [`Pool::started`] or
    /// [`Pool::spawn_failed`].
    Spawn(usize),
    /// Append these whole lines to this slot's stdin; report what is
    /// written with [`Pool::written`].
    Write(usize, Vec<u8>),
    /// End the turn with `error` `{"message": reason}` (REST 503).
    Fail {
        session: Rc<str>,
        turn: u64,
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A [`Action::Spawn`] is out.
    Starting,
    Up {
        since: Instant,
    },
    /// Going down (it exited or broke; its last lines are being read):
    /// nothing more is sent to it.
    Leaving {
        since: Instant,
    },
    Down {
        restart_at: Instant,
    },
    /// Shutting down: never started again.
    Retired,
}

#[derive(Debug)]
struct Slot {
    state: State,
    backoff: Duration,
    /// Turns in arrival order. Removal is lazy (a removed turn's id stays
    /// until it reaches the front or a compaction): searching the queue on
    /// every removal would make ending many waiting turns quadratic.
    waiting: VecDeque<u64>,
    /// Ids in `waiting` whose turn was removed.
    stale: usize,
    in_flight: Vec<u64>,
    stdin_queued: usize,
    /// Why the worker last went down, for the turns that wait for it.
    last_failure: Option<String>,
}

#[derive(Debug)]
struct TurnInfo {
    session: Rc<str>,
    slot: usize,
    deadline: Instant,
    /// Some while waiting; None once sent to the worker.
    job: Option<AgentJob>,
    output: usize,
}

#[derive(Debug)]
pub struct Pool {
    cfg: PoolConfig,
    slots: Vec<Slot>,
    turns: HashMap<u64, TurnInfo>,
    deadlines: BTreeSet<(Instant, u64)>,
    /// Session → slot. Ordered, so that pruning can go a budget at a time
    /// from a cursor.
    bindings: BTreeMap<Rc<str>, usize>,
    /// Where the pruning pass under way goes on.
    prune_from: Option<Rc<str>>,
    actions: Vec<Action>,
    retiring: bool,
}

impl Slot {
    /// Turns waiting, stale ids not counted.
    fn waiting_len(&self) -> usize {
        self.waiting.len() - self.stale.min(self.waiting.len())
    }
}

impl Pool {
    /// A pool whose every worker is to be started now.
    pub fn new(cfg: PoolConfig) -> Pool {
        let n = cfg.workers.max(1);
        let slots = (0..n)
            .map(|_| Slot {
                state: State::Starting,
                backoff: BACKOFF_MIN,
                waiting: VecDeque::new(),
                stale: 0,
                in_flight: Vec::new(),
                stdin_queued: 0,
                last_failure: None,
            })
            .collect();
        Pool {
            actions: (0..n).map(Action::Spawn).collect(),
            cfg,
            slots,
            turns: HashMap::new(),
            deadlines: BTreeSet::new(),
            bindings: BTreeMap::new(),
            prune_from: None,
            retiring: false,
        }
    }

    pub fn config(&self) -> &PoolConfig {
        &self.cfg
    }

    pub fn workers(&self) -> usize {
        self.slots.len()
    }

    /// The actions queued since the last call.
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    pub fn has_actions(&self) -> bool {
        !self.actions.is_empty()
    }

    /// The slot session `id` is bound to, if any.
    pub fn binding(&self, id: &str) -> Option<usize> {
        self.bindings.get(id).copied()
    }

    /// A turn to run: bound to its session's slot, sent when the worker
    /// has room.
    pub fn submit(&mut self, job: AgentJob, now: Instant) {
        let session: Rc<str> = Rc::from(job.session_id.as_str());
        if self.retiring {
            let reason = "the server is shutting down".to_owned();
            let turn = job.turn;
            self.actions.push(Action::Fail {
                session,
                turn,
                reason,
            });
            return;
        }
        let slot = match self.bindings.get(&session) {
            Some(&slot) => slot,
            None => {
                let slot = (0..self.slots.len())
                    .min_by_key(|&i| self.slots[i].in_flight.len() + self.slots[i].waiting_len())
                    .unwrap_or(0);
                self.bindings.insert(session.clone(), slot);
                slot
            }
        };
        let deadline = now + self.cfg.turn_timeout;
        self.deadlines.insert((deadline, job.turn));
        self.slots[slot].waiting.push_back(job.turn);
        self.turns.insert(
            job.turn,
            TurnInfo {
                session,
                slot,
                deadline,
                job: Some(job),
                output: 0,
            },
        );
        self.dispatch(slot);
    }

    /// Sends waiting turns while the worker is up and has room.
    fn dispatch(&mut self, slot: usize) {
        let s = &mut self.slots[slot];
        if !matches!(s.state, State::Up { .. }) || self.retiring {
            return;
        }
        while s.in_flight.len() < self.cfg.concurrency && s.stdin_queued < STDIN_HIGH {
            let Some(turn) = s.waiting.pop_front() else {
                return;
            };
            let Some(job) = self.turns.get_mut(&turn).and_then(|t| t.job.take()) else {
                // Removed while it waited.
                s.stale = s.stale.saturating_sub(1);
                continue;
            };
            let line = turn_line(&job);
            s.stdin_queued += line.len();
            s.in_flight.push(turn);
            self.actions.push(Action::Write(slot, line));
        }
    }

    /// Removes turn `turn` from the pool; its info if it was there.
    fn remove(&mut self, turn: u64) -> Option<TurnInfo> {
        let info = self.turns.remove(&turn)?;
        self.deadlines.remove(&(info.deadline, turn));
        let s = &mut self.slots[info.slot];
        if info.job.is_some() {
            s.stale += 1;
            // Compact once stale ids are the majority: amortized O(1).
            if s.stale * 2 > s.waiting.len() {
                let turns = &self.turns;
                s.waiting.retain(|t| turns.contains_key(t));
                s.stale = 0;
            }
        } else {
            // At most --worker-concurrency turns are in flight.
            s.in_flight.retain(|&t| t != turn);
        }
        Some(info)
    }

    /// Ends a turn the server decided to end: a cancel line if the worker
    /// has it; its slot may take the next waiting turn.
    fn end_early(&mut self, turn: u64, reason: Option<String>) {
        let Some(info) = self.remove(turn) else {
            return;
        };
        if info.job.is_none() {
            let line = cancel_line(turn);
            self.slots[info.slot].stdin_queued += line.len();
            self.actions.push(Action::Write(info.slot, line));
        }
        if let Some(reason) = reason {
            self.actions.push(Action::Fail {
                session: info.session,
                turn,
                reason,
            });
        }
        self.dispatch(info.slot);
    }

    /// The core ended turn `turn` (done, error, cancel, session deleted,
    /// shutdown). A turn the worker itself ended is already gone.
    pub fn stop(&mut self, turn: u64) {
        self.end_early(turn, None);
    }

    /// Slot `slot`'s worker process runs (the reactor spawned it).
    pub fn started(&mut self, slot: usize, now: Instant) {
        let Some(s) = self.slots.get_mut(slot) else {
            return;
        };
        s.state = State::Up { since: now };
        s.stdin_queued = 0;
        self.dispatch(slot);
    }

    /// Slot `slot`'s worker could not be started (`why` says so): the
    /// turns waiting for it fail; it is tried again after the back-off.
    pub fn spawn_failed(&mut self, slot: usize, why: String, now: Instant) {
        if slot >= self.slots.len() {
            return;
        }
        for (turn, session) in self.take_waiting(slot) {
            self.actions.push(Action::Fail {
                session,
                turn,
                reason: why.clone(),
            });
        }
        self.went_down(slot, why, now, now);
    }

    /// Slot `slot`'s worker is on its way out: its remaining output still
    /// counts, but no turn is sent to it any more. [`down`](Self::down)
    /// follows.
    pub fn leaving(&mut self, slot: usize) {
        if let Some(s) = self.slots.get_mut(slot) {
            if let State::Up { since } = s.state {
                s.state = State::Leaving { since };
            }
        }
    }

    /// Slot `slot`'s worker is gone (exited, or killed as broken): every
    /// turn in flight on it fails with `reason`; the waiting ones wait for
    /// the restart, which comes after the back-off.
    pub fn down(&mut self, slot: usize, reason: String, now: Instant) {
        let Some(s) = self.slots.get_mut(slot) else {
            return;
        };
        let since = match s.state {
            State::Up { since } | State::Leaving { since } => since,
            _ => now,
        };
        for turn in std::mem::take(&mut s.in_flight) {
            if let Some(info) = self.turns.remove(&turn) {
                self.deadlines.remove(&(info.deadline, turn));
                self.actions.push(Action::Fail {
                    session: info.session,
                    turn,
                    reason: reason.clone(),
                });
            }
        }
        self.went_down(slot, reason, since, now);
    }

    fn went_down(&mut self, slot: usize, reason: String, since: Instant, now: Instant) {
        let retiring = self.retiring;
        let s = &mut self.slots[slot];
        s.stdin_queued = 0;
        s.last_failure = Some(reason);
        if retiring {
            s.state = State::Retired;
            return;
        }
        if now.saturating_duration_since(since) >= STABLE_AFTER {
            s.backoff = BACKOFF_MIN;
        }
        s.state = State::Down {
            restart_at: now + s.backoff,
        };
        s.backoff = (s.backoff * 2).min(BACKOFF_MAX);
    }

    /// Slot `slot`'s worker printed `event` for `turn` in a line of `bytes`.
    /// Returns the session to hand the event to, or None: ignore it (the
    /// turn is not in flight on this worker, or it just passed its output
    /// bound and fails).
    pub fn event(
        &mut self,
        slot: usize,
        turn: u64,
        event: &AgentEvent,
        bytes: usize,
    ) -> Option<Rc<str>> {
        let info = self.turns.get_mut(&turn)?;
        if info.slot != slot || info.job.is_some() {
            return None;
        }
        info.output += bytes;
        if info.output > self.cfg.max_output {
            let reason = format!("agent output passed {} bytes", self.cfg.max_output);
            self.end_early(turn, Some(reason));
            return None;
        }
        let session = info.session.clone();
        if event.ends_turn() {
            self.remove(turn);
            self.dispatch(slot);
        }
        Some(session)
    }

    /// `n` bytes of slot `slot`'s stdin queue were written.
    pub fn written(&mut self, slot: usize, n: usize) {
        let Some(s) = self.slots.get_mut(slot) else {
            return;
        };
        let was_full = s.stdin_queued >= STDIN_HIGH;
        s.stdin_queued = s.stdin_queued.saturating_sub(n);
        if was_full {
            self.dispatch(slot);
        }
    }

    /// The next time [`on_time`](Self::on_time) has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let restart = self
            .slots
            .iter()
            .filter_map(|s| match s.state {
                State::Down { restart_at } => Some(restart_at),
                _ => None,
            })
            .min();
        let turn = self.deadlines.first().map(|&(at, _)| at);
        match (restart, turn) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Restarts that are due; turns past `--turn-timeout`.
    pub fn on_time(&mut self, now: Instant) {
        for (i, s) in self.slots.iter_mut().enumerate() {
            if matches!(s.state, State::Down { restart_at } if now >= restart_at) {
                s.state = State::Starting;
                self.actions.push(Action::Spawn(i));
            }
        }
        while let Some(&(at, turn)) = self.deadlines.first() {
            if at > now {
                break;
            }
            let secs = self.cfg.turn_timeout.as_secs();
            let reason = match self.turns.get(&turn) {
                Some(info) if info.job.is_none() => {
                    format!(
                        "the turn timed out after {secs} s; worker {} was told to cancel it",
                        info.slot
                    )
                }
                Some(info) => {
                    let slot = &self.slots[info.slot];
                    match &slot.last_failure {
                        Some(why) if !matches!(slot.state, State::Up { .. }) => format!(
                            "the turn timed out after {secs} s waiting for worker {}, \
                             which is restarting: {why}",
                            info.slot
                        ),
                        _ => format!(
                            "the turn timed out after {secs} s waiting for worker {}",
                            info.slot
                        ),
                    }
                }
                None => {
                    self.deadlines.remove(&(at, turn));
                    continue;
                }
            };
            self.end_early(turn, Some(reason));
        }
    }

    /// Shutdown: nothing more is started or sent; turns still waiting fail.
    pub fn retire(&mut self) {
        self.retiring = true;
        for slot in 0..self.slots.len() {
            let s = &mut self.slots[slot];
            if !matches!(s.state, State::Up { .. }) {
                s.state = State::Retired;
            }
            for (turn, session) in self.take_waiting(slot) {
                self.actions.push(Action::Fail {
                    session,
                    turn,
                    reason: "the server is shutting down".into(),
                });
            }
        }
    }

    /// Removes every turn waiting on `slot`, in one pass; their ids and
    /// sessions, in arrival order.
    fn take_waiting(&mut self, slot: usize) -> Vec<(u64, Rc<str>)> {
        let Some(s) = self.slots.get_mut(slot) else {
            return Vec::new();
        };
        let ids = std::mem::take(&mut s.waiting);
        s.stale = 0;
        let mut out = Vec::with_capacity(ids.len());
        for turn in ids {
            if let Some(info) = self.turns.remove(&turn) {
                self.deadlines.remove(&(info.deadline, turn));
                out.push((turn, info.session));
            }
        }
        out
    }

    /// Sessions with a turn in flight on slot `slot`.
    pub fn in_flight_sessions(&self, slot: usize) -> impl Iterator<Item = &Rc<str>> + '_ {
        self.slots
            .get(slot)
            .map_or(&[][..], |s| s.in_flight.as_slice())
            .iter()
            .filter_map(|t| self.turns.get(t).map(|i| &i.session))
    }

    /// Turns in flight on slot `slot`.
    pub fn in_flight(&self, slot: usize) -> usize {
        self.slots.get(slot).map_or(0, |s| s.in_flight.len())
    }

    /// Forgets the bindings of sessions that no longer exist (and have no
    /// turn here), looking at up to `budget` of them from where the last
    /// call stopped. True when the pass over every binding is complete.
    pub fn prune_bindings(&mut self, exists: impl Fn(&str) -> bool, budget: usize) -> bool {
        let busy: std::collections::HashSet<&str> =
            self.turns.values().map(|t| &*t.session).collect();
        let from = self.prune_from.take();
        let range = match &from {
            Some(key) => self.bindings.range::<Rc<str>, _>(key.clone()..),
            None => self.bindings.range::<Rc<str>, _>(..),
        };
        let mut gone = Vec::new();
        let mut next = None;
        for (i, (id, _)) in range.enumerate() {
            if i == budget {
                next = Some(id.clone());
                break;
            }
            if !exists(id) && !busy.contains(&**id) {
                gone.push(id.clone());
            }
        }
        drop(busy);
        for id in gone {
            self.bindings.remove(&id);
        }
        self.prune_from = next;
        self.prune_from.is_none()
    }
}

#[cfg(test)]
#[path = "worker_pool_tests.rs"]
mod tests;
