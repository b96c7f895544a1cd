//! The I/O half of `--agent worker`: the long-lived worker processes, their
//! pipes registered in the same `mio::Poll` as the clients, and the loop's
//! side of the [`Pool`] (which decides; this carries out its [`Action`]s).
//!
//! - **Stdin**: a queue of whole lines per worker, written until the pipe
//!   would block and resumed on WRITABLE. Its size is bounded by the pool
//!   (no turn is sent past [`crate::agent::worker_pool::STDIN_HIGH`]).
//! - **Stdout**: read in the loop's worker step, at most [`READ_BUDGET`]
//!   per worker per iteration, decoded by [`WorkerDecoder`] and routed by
//!   turn to the sessions.
//! - **Backpressure**: a worker's stdout carries many sessions' turns. It is
//!   not read while any session with a turn in flight on it has a client
//!   with more than half its output bound unsent (the echo agent's
//!   high-water mark): the pipe fills and the worker blocks in its write.
//!   Other sessions on that worker wait too; a client that holds its
//!   worker back for [`STALL_LIMIT`] is closed with 1008, as with echo.
//! - **Failure**: a bad line, a closed stdout or stdin, or an exit kill the
//!   worker's process group; the pool fails its in-flight turns with a
//!   reason naming the worker and quoting its last stderr line, and
//!   restarts it after the back-off.
//! - **Shutdown**: after the grace period and the cancel lines, stdin is
//!   closed; a worker still there [`RETIRE_GRACE`] later is killed.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::process::Child;
use std::rc::Rc;
use std::time::{Duration, Instant};

use mio::unix::pipe;
use mio::{Registry, Token};

use super::child::{describe_exit, has_exited, kill_group, spawn_piped, StderrLog};
use super::conn_sink::sink;
use super::Server;
use crate::agent::worker::{WorkerDecoder, WorkerLine};
use crate::agent::worker_pool::{Action, Pool, PoolConfig};
use crate::agent::{AgentEvent, AgentJob};
use crate::config::MAX_WORKERS;
use crate::sink::{ConnId, Sink};
use crate::turns::STALL_LIMIT;
use crate::ws::close;

/// Worker tokens start here (above the per-turn agents' range); each
/// worker has three: stdin, stdout, stderr.
const WORKER_BASE: usize = 1 << 50;
const STREAMS: usize = 3;
const READ_CHUNK: usize = 16 * 1024;
/// Stdout read from one worker per loop iteration, so one chatty worker
/// cannot starve the clients and the other workers.
pub const READ_BUDGET: usize = 256 * 1024;
/// Stderr logged per worker start; the rest is counted and dropped.
const MAX_STDERR_LOG: usize = 1024 * 1024;
/// A worker whose stdout or stdin closed has this long to exit (and be
/// reported with its exit status) before it is killed as broken.
const EXIT_WAIT: Duration = Duration::from_millis(100);
/// At shutdown, how long a worker has after its stdin is closed.
pub const RETIRE_GRACE: Duration = Duration::from_secs(2);
/// How soon a worker paused for a slow client is looked at again.
const PAUSED_RECHECK: Duration = Duration::from_millis(10);
/// Stdout still decoded from a worker that has exited.
const DRAIN_AT_EXIT: usize = 1024 * 1024;
/// How often bindings of deleted sessions are forgotten.
const PRUNE_EVERY: Duration = Duration::from_secs(5);
/// Bindings looked at per loop iteration while pruning.
const PRUNE_BUDGET: usize = 256;

fn token(slot: usize, stream: usize) -> Token {
    Token(WORKER_BASE + slot * STREAMS + stream)
}

/// Whether `t` is a worker pipe's token.
pub fn owns(t: Token) -> bool {
    split_token(t).is_some()
}

fn split_token(t: Token) -> Option<(usize, usize)> {
    let n = t.0.checked_sub(WORKER_BASE)?;
    (n < MAX_WORKERS * STREAMS).then_some((n / STREAMS, n % STREAMS))
}

/// One running worker process.
struct Proc {
    child: Child,
    pid: u32,
    stdin: Option<pipe::Sender>,
    outq: VecDeque<Vec<u8>>,
    /// Bytes of `outq`'s first line already written.
    out_off: usize,
    /// Shutdown: close stdin once the queue is written.
    close_stdin: bool,
    stdout: Option<pipe::Receiver>,
    /// Stdout may have bytes unread (edge-triggered: until WouldBlock).
    stdout_ready: bool,
    stderr: Option<pipe::Receiver>,
    decoder: WorkerDecoder,
    stderr_log: StderrLog,
    /// Since when a lagging client holds this worker's stdout back.
    paused_since: Option<Instant>,
    /// Stdout or stdin closed: broken (with this reason) unless it exits
    /// by then.
    doomed: Option<(Instant, &'static str)>,
    /// Shutdown: killed then.
    kill_at: Option<Instant>,
}

impl Proc {
    fn deregister(&mut self, registry: &Registry) {
        super::child::deregister_pipes(
            registry,
            &mut self.stdin,
            &mut self.stdout,
            &mut self.stderr,
        );
    }

    /// Reads stderr into the server log (bounded per call), keeping the
    /// last line for failure reasons; true when more is waiting for the
    /// next iteration.
    fn read_stderr(&mut self, registry: &Registry) -> bool {
        self.stderr_log.read_pipe(&mut self.stderr, registry)
    }

    /// "; its last stderr line: ...", or nothing when it wrote none.
    fn stderr_suffix(&self) -> String {
        match self.stderr_log.last.as_str() {
            "" => String::new(),
            last => format!("; its last stderr line: {last}"),
        }
    }
}

/// The workers of `--agent worker`.
pub struct Workers {
    pool: Pool,
    procs: Vec<Option<Proc>>,
    /// Killed workers not reaped yet.
    zombies: Vec<Child>,
    next_prune: Instant,
    /// A pruning pass is under way.
    pruning: bool,
}

impl Workers {
    /// The pool for `cfg`; its workers are started by the first loop step.
    pub fn new(cfg: PoolConfig, now: Instant) -> Workers {
        let pool = Pool::new(cfg);
        Workers {
            procs: (0..pool.workers()).map(|_| None).collect(),
            pool,
            zombies: Vec::new(),
            next_prune: now + PRUNE_EVERY,
            pruning: false,
        }
    }

    fn proc_mut(&mut self, slot: usize) -> Option<&mut Proc> {
        self.procs.get_mut(slot).and_then(Option::as_mut)
    }
}

/// The loop's side of the workers.
impl Server {
    /// A turn for the workers (from the core's `start_agent`).
    pub(super) fn submit_worker_turn(&mut self, job: AgentJob, now: Instant) {
        if let Some(w) = self.workers.as_mut() {
            w.pool.submit(job, now);
            self.worker_actions(now);
        }
    }

    /// The core ended turn `turn`: a worker that has it gets a cancel line.
    pub(super) fn stop_worker_turn(&mut self, turn: u64, now: Instant) {
        if let Some(w) = self.workers.as_mut() {
            w.pool.stop(turn);
            self.worker_actions(now);
        }
    }

    /// Readiness of a worker pipe.
    pub(super) fn on_worker_ready(&mut self, t: Token, now: Instant) {
        let Some((slot, stream)) = split_token(t) else {
            return;
        };
        let registry = self.poll.registry();
        let Some(p) = self.workers.as_mut().and_then(|w| w.proc_mut(slot)) else {
            return;
        };
        match stream {
            0 => {
                self.write_worker(slot, now);
                self.worker_actions(now);
            }
            // Read in `worker_step`, after the backpressure check.
            1 => p.stdout_ready = true,
            _ => {
                if p.read_stderr(registry) {
                    self.ready_again.push(t);
                }
            }
        }
    }

    /// Once per loop iteration: restarts and timeouts due, workers that
    /// must be killed, and stdout read from every worker not held back.
    pub(super) fn worker_step(&mut self, now: Instant) {
        let Some(w) = self.workers.as_mut() else {
            return;
        };
        w.pool.on_time(now);
        // Bindings of sessions that are gone are forgotten a budget per
        // iteration, a pass every PRUNE_EVERY.
        if now >= w.next_prune || w.pruning {
            let app = &self.app;
            let done = w
                .pool
                .prune_bindings(|id| app.has_session(id), PRUNE_BUDGET);
            w.pruning = !done;
            if done {
                w.next_prune = now + PRUNE_EVERY;
            }
        }
        for slot in 0..w.procs.len() {
            let Some(p) = self.workers.as_mut().and_then(|w| w.proc_mut(slot)) else {
                continue;
            };
            if let Some((_, why)) = p.doomed.filter(|&(at, _)| now >= at) {
                self.worker_broken(slot, why, now);
            } else if p.kill_at.is_some_and(|at| now >= at) {
                let why = "did not exit within 2 s of its stdin closing at shutdown; killed";
                self.worker_broken(slot, why, now);
            }
        }
        self.worker_actions(now);
        let slots = self.workers.as_ref().map_or(0, |w| w.procs.len());
        for slot in 0..slots {
            if self.worker_may_read(slot, now) {
                self.read_worker(slot, now);
            }
        }
    }

    /// Backpressure: false while a client of a session in flight on this
    /// worker is over the high-water mark (for at most [`STALL_LIMIT`];
    /// then those clients are closed with 1008 and reading resumes).
    fn worker_may_read(&mut self, slot: usize, now: Instant) -> bool {
        let ready = self
            .workers
            .as_mut()
            .and_then(|w| w.proc_mut(slot))
            .is_some_and(|p| p.stdout_ready);
        if !ready {
            return false;
        }
        let lagging = self.worker_lagging(slot);
        let Some(p) = self.workers.as_mut().and_then(|w| w.proc_mut(slot)) else {
            return false;
        };
        if lagging.is_empty() {
            p.paused_since = None;
            return true;
        }
        let since = *p.paused_since.get_or_insert(now);
        if now.saturating_duration_since(since) < STALL_LIMIT {
            return false;
        }
        p.paused_since = None;
        let mut sink = sink!(self);
        for c in lagging {
            sink.close(c, close::POLICY, "Client too slow");
        }
        true
    }

    /// Subscribers of this worker's in-flight sessions over the high-water
    /// mark.
    fn worker_lagging(&self, slot: usize) -> Vec<ConnId> {
        let Some(w) = self.workers.as_ref() else {
            return Vec::new();
        };
        let high = self.limits.max_ws_output_bytes / 2;
        let mut out = Vec::new();
        for session in w.pool.in_flight_sessions(slot) {
            for &c in self.app.subscribers(session) {
                let backlog = self
                    .conns
                    .get(c.slot)
                    .filter(|conn| conn.serial == c.serial)
                    .map_or(0, |conn| conn.subscriber_backlog());
                if backlog > high {
                    out.push(c);
                }
            }
        }
        out
    }

    /// When the worker step next has something to do.
    pub(super) fn worker_wake(&self, now: Instant) -> Option<Instant> {
        let w = self.workers.as_ref()?;
        if w.pool.has_actions() {
            return Some(now);
        }
        let mut next = w.pool.next_deadline();
        let mut at = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        for p in w.procs.iter().flatten() {
            if p.stdout_ready {
                at(match p.paused_since {
                    None => now,
                    Some(_) => now + PAUSED_RECHECK,
                });
            }
            if let Some((t, _)) = p.doomed {
                at(t);
            }
            if let Some(t) = p.kill_at {
                at(t);
            }
        }
        next
    }

    /// Carries out what the pool queued, until it queues nothing more.
    fn worker_actions(&mut self, now: Instant) {
        loop {
            let actions = match self.workers.as_mut() {
                Some(w) => w.pool.take_actions(),
                None => return,
            };
            if actions.is_empty() {
                return;
            }
            for action in actions {
                match action {
                    Action::Spawn(slot) => self.spawn_worker(slot, now),
                    Action::Write(slot, line) => {
                        if let Some(p) = self.workers.as_mut().and_then(|w| w.proc_mut(slot)) {
                            p.outq.push_back(line);
                        }
                        self.write_worker(slot, now);
                    }
                    Action::Fail {
                        session,
                        turn,
                        reason,
                    } => self
                        .app
                        .agent_failed(&session, turn, reason, now, &mut sink!(self)),
                }
            }
        }
    }

    fn spawn_worker(&mut self, slot: usize, now: Instant) {
        let Some(w) = self.workers.as_mut() else {
            return;
        };
        let cmd = w.pool.config().cmd.clone();
        let tokens = [token(slot, 0), token(slot, 1), token(slot, 2)];
        match spawn_piped(&cmd, self.poll.registry(), tokens) {
            Ok(piped) => {
                let pid = piped.child.id();
                crate::info!("worker {slot} started (pid {pid})");
                w.procs[slot] = Some(Proc {
                    child: piped.child,
                    pid,
                    stdin: Some(piped.stdin),
                    outq: VecDeque::new(),
                    out_off: 0,
                    close_stdin: false,
                    stdout: Some(piped.stdout),
                    stdout_ready: false,
                    stderr: Some(piped.stderr),
                    decoder: WorkerDecoder::default(),
                    stderr_log: StderrLog::new(
                        format!("worker {slot} (pid {pid})"),
                        MAX_STDERR_LOG,
                    ),
                    paused_since: None,
                    doomed: None,
                    kill_at: None,
                });
                w.pool.started(slot, now);
            }
            Err(e) => {
                let why = format!("worker {slot} could not start ({cmd}): {e}");
                crate::info!("{why}");
                w.pool.spawn_failed(slot, why, now);
            }
        }
    }

    /// Writes the worker's stdin queue until the pipe would block.
    fn write_worker(&mut self, slot: usize, now: Instant) {
        let registry = self.poll.registry();
        let Some(w) = self.workers.as_mut() else {
            return;
        };
        let Some(p) = w.procs.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let mut written = 0;
        let mut closed = false;
        if let Some(stdin) = p.stdin.as_mut() {
            while let Some(front) = p.outq.front() {
                match stdin.write(&front[p.out_off..]) {
                    Ok(0) => break,
                    Ok(n) => {
                        written += n;
                        p.out_off += n;
                        if p.out_off == front.len() {
                            p.outq.pop_front();
                            p.out_off = 0;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        closed = true;
                        break;
                    }
                }
            }
        }
        if closed {
            // EPIPE: it closed its stdin (or is exiting).
            p.outq.clear();
            p.out_off = 0;
            p.doomed
                .get_or_insert((now + EXIT_WAIT, "closed its stdin"));
            // No new turn goes to a worker on its way out.
            w.pool.leaving(slot);
        }
        if closed || (p.close_stdin && p.outq.is_empty()) {
            if let Some(mut s) = p.stdin.take() {
                let _ = registry.deregister(&mut s);
            }
        }
        w.pool.written(slot, written);
    }

    /// Reads the worker's stdout (up to the budget, while no client lags)
    /// and hands each event to its turn.
    fn read_worker(&mut self, slot: usize, now: Instant) {
        let mut budget = READ_BUDGET;
        let mut buf = [0u8; READ_CHUNK];
        loop {
            let registry = self.poll.registry();
            let Some(p) = self.workers.as_mut().and_then(|w| w.proc_mut(slot)) else {
                return;
            };
            let Some(stdout) = p.stdout.as_mut() else {
                p.stdout_ready = false;
                return;
            };
            let mut lines = Vec::new();
            let (decoded, more) = match stdout.read(&mut buf) {
                Ok(0) => {
                    if let Some(mut s) = p.stdout.take() {
                        let _ = registry.deregister(&mut s);
                    }
                    p.stdout_ready = false;
                    p.doomed
                        .get_or_insert((now + EXIT_WAIT, "closed its stdout"));
                    let decoded = p.decoder.finish(&mut lines);
                    // No new turn goes to a worker on its way out.
                    if let Some(w) = self.workers.as_mut() {
                        w.pool.leaving(slot);
                    }
                    (decoded, false)
                }
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    (p.decoder.feed(&buf[..n], &mut lines), budget > 0)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    p.stdout_ready = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => (Err("could not be read from".to_owned()), false),
            };
            if let Err(why) = decoded {
                // Nothing more goes to it, whatever the good lines free up.
                if let Some(w) = self.workers.as_mut() {
                    w.pool.leaving(slot);
                }
                self.deliver_worker_lines(slot, lines, now);
                return self.worker_broken(slot, &why, now);
            }
            self.deliver_worker_lines(slot, lines, now);
            if !more || !self.worker_lagging(slot).is_empty() {
                return;
            }
        }
    }

    /// Routes a worker's events to their turns, consecutive events of one
    /// turn in one call.
    fn deliver_worker_lines(&mut self, slot: usize, lines: Vec<WorkerLine>, now: Instant) {
        let mut run: Option<(Rc<str>, u64, Vec<AgentEvent>)> = None;
        for line in lines {
            let Some(w) = self.workers.as_mut() else {
                return;
            };
            let Some(session) = w.pool.event(slot, line.turn, &line.event, line.bytes) else {
                continue;
            };
            match &mut run {
                Some((_, turn, events)) if *turn == line.turn => events.push(line.event),
                _ => {
                    if let Some((s, t, events)) = run.take() {
                        self.app.agent_events(&s, t, events, now, &mut sink!(self));
                    }
                    run = Some((session, line.turn, vec![line.event]));
                }
            }
        }
        if let Some((s, t, events)) = run {
            self.app.agent_events(&s, t, events, now, &mut sink!(self));
        }
        self.worker_actions(now);
    }

    /// The worker broke the protocol, closed a pipe, or must go at
    /// shutdown: its group is killed, its in-flight turns fail, and it is
    /// restarted after the back-off (unless shutting down).
    fn worker_broken(&mut self, slot: usize, why: &str, now: Instant) {
        self.worker_down(slot, now, |_| why.to_owned());
    }

    /// Takes worker `slot` down: its last stderr is drained, its process
    /// group killed, its pipes deregistered, and its in-flight turns fail
    /// with a reason naming it, saying `what` happened (given its exit
    /// status when already known) and quoting its last stderr line. It is
    /// reaped on SIGCHLD if not yet.
    fn worker_down(
        &mut self,
        slot: usize,
        now: Instant,
        what: impl FnOnce(Option<std::process::ExitStatus>) -> String,
    ) {
        let registry = self.poll.registry();
        let Some(w) = self.workers.as_mut() else {
            return;
        };
        let Some(mut p) = w.procs.get_mut(slot).and_then(Option::take) else {
            return;
        };
        // Killed first (its leader is not reaped yet, so the group id is
        // still its own), so a flood of stderr stops; then what is left is
        // read, a budget's worth at most.
        kill_group(p.pid);
        if let Some(stderr) = p.stderr.as_mut() {
            p.stderr_log.drain(stderr);
        }
        let status = p.child.try_wait().ok().flatten();
        let reason = format!(
            "worker {slot} (pid {}) {}{}",
            p.pid,
            what(status),
            p.stderr_suffix()
        );
        crate::info!("{reason}");
        p.deregister(registry);
        if status.is_none() {
            w.zombies.push(p.child);
        }
        w.pool.down(slot, reason, now);
        self.worker_actions(now);
    }

    /// SIGCHLD: reap killed workers; a worker that exited by itself has
    /// its last output read, its group killed, its in-flight turns failed.
    pub(super) fn reap_workers(&mut self, now: Instant) {
        let Some(w) = self.workers.as_mut() else {
            return;
        };
        w.zombies.retain_mut(|c| matches!(c.try_wait(), Ok(None)));
        for slot in 0..w.procs.len() {
            let exited = self
                .workers
                .as_mut()
                .and_then(|w| w.proc_mut(slot))
                .is_some_and(|p| has_exited(p.pid));
            if exited {
                self.worker_exited(slot, now);
            }
        }
    }

    fn worker_exited(&mut self, slot: usize, now: Instant) {
        if let Some(w) = self.workers.as_mut() {
            w.pool.leaving(slot);
        }
        // What it wrote before exiting still counts (up to a bound: its
        // children may hold the pipe open and keep writing).
        let mut lines = Vec::new();
        let mut buf = [0u8; READ_CHUNK];
        let mut drained = 0;
        if let Some(p) = self.workers.as_mut().and_then(|w| w.proc_mut(slot)) {
            while let Some(stdout) = p.stdout.as_mut() {
                match stdout.read(&mut buf) {
                    Ok(0) => {
                        let _ = p.decoder.finish(&mut lines);
                        break;
                    }
                    Ok(n) => {
                        drained += n;
                        if p.decoder.feed(&buf[..n], &mut lines).is_err() || drained > DRAIN_AT_EXIT
                        {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        }
        self.deliver_worker_lines(slot, lines, now);
        self.worker_down(slot, now, describe_exit);
    }

    /// Shutdown, after the grace period and the cancel lines: no more
    /// turns or restarts; each worker's stdin closes once its queue is
    /// written, and it is killed [`RETIRE_GRACE`] later if still there.
    pub(super) fn retire_workers(&mut self, now: Instant) {
        let Some(w) = self.workers.as_mut() else {
            return;
        };
        w.pool.retire();
        self.worker_actions(now);
        let slots = self.workers.as_ref().map_or(0, |w| w.procs.len());
        for slot in 0..slots {
            if let Some(p) = self.workers.as_mut().and_then(|w| w.proc_mut(slot)) {
                p.close_stdin = true;
                p.kill_at = Some(now + RETIRE_GRACE);
                self.write_worker(slot, now);
            }
        }
    }

    /// True once no worker process is left (running or unreaped).
    pub(super) fn workers_gone(&self) -> bool {
        self.workers
            .as_ref()
            .is_none_or(|w| w.procs.iter().all(Option::is_none) && w.zombies.is_empty())
    }

    /// At exit: every worker's group killed and every worker reaped.
    pub(super) fn kill_workers(&mut self) {
        let registry = self.poll.registry();
        let Some(w) = self.workers.as_mut() else {
            return;
        };
        for p in w.procs.iter_mut().filter_map(Option::take) {
            let mut p = p;
            kill_group(p.pid);
            p.deregister(registry);
            let _ = p.child.wait();
        }
        for mut c in w.zombies.drain(..) {
            kill_group(c.id());
            let _ = c.wait();
        }
    }
}
