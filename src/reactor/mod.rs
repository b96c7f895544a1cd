//! The reactor: one thread, one `mio::Poll`, every socket non-blocking and
//! edge-triggered. Readiness comes in; the sans-IO core ([`App`], the HTTP
//! parser, tungstenite) decides; the bytes it produces go out.
//!
//! One loop iteration: poll (the timeout is the nearest deadline, or zero
//! when a turn can stream more), handle every ready socket, step every
//! running turn once, fire expired timers, then `writev` every connection
//! that got output. Writing once per iteration, not once per event, is what
//! lets a broadcast of many small frames leave in few syscalls.

// Submodules, each an `impl Server` block or the types it drives:
// `conn` the connection states and slab, `conn_sink` the core's `Sink`,
// `websocket` and `sse` the two subscriber transports, `agents` the
// agent processes and upstream sockets.
mod access;
mod agents;
mod child;
mod compaction;
mod conn;
mod conn_sink;
mod durability;
mod history_reader;
mod http;
mod listener;
mod shutdown;
mod sse;
mod syncer;
mod timers;
mod websocket;
mod workers;

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGCHLD, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use tungstenite::protocol::WebSocketConfig;

use crate::agent::{AgentJob, AgentKind};
use crate::api::App;
use crate::config::{Config, Limits};
use crate::journal::JournalFile;
use crate::metrics::{CloseReason, TransportMetrics};
use crate::service::Service;
use crate::sink::ConnId;
use crate::ws::close;
use conn::{close_subscriber, ClosingConn, Conn, Slab, State};
use conn_sink::sink;

const LISTENER: Token = Token(usize::MAX - 1);
const SIGNALS: Token = Token(usize::MAX - 2);

/// Bytes read per `read` call.
const READ_CHUNK: usize = 16 * 1024;
/// Requests or WebSocket messages handled per connection per iteration,
/// so one busy client cannot starve the others.
const WORK_PER_TURN: usize = 32;
/// An HTTP connection stops parsing pipelined requests while this much of
/// its output is unsent (the client is not reading its responses).
const HTTP_OUT_HIGH: usize = 256 * 1024;
/// How long a closing connection may take to read its last bytes.
const LINGER: Duration = Duration::from_secs(2);
/// Timers are checked at least this often while connections are open.
const TICK: Duration = Duration::from_secs(1);
/// The journal is compacted only past this size.
const COMPACT_MIN_BYTES: u64 = 1024 * 1024;
/// How long shutdown waits for connections to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// tungstenite's read buffer, allocated per connection for its whole life
/// and the most one read syscall takes. Chat clients send small frames:
/// 1 KiB holds several per read and keeps an idle WebSocket under 2 KiB of
/// RSS in all (measured: 1 679 B at 10 000 held; 4 KiB made it 4.7 KB). A
/// 1 MiB message then takes 1 024 reads instead of 256: rare, and still
/// about a millisecond. (The default, 128 KiB, is zero-filled on every
/// read.)
const WS_READ_BUFFER: usize = 1024;

pub struct Server {
    poll: Poll,
    listener: Option<TcpListener>,
    local_addr: SocketAddr,
    signals: Signals,
    /// What is served: the API, or another [`Service`] (the echo example).
    app: Box<dyn Service>,
    conns: Slab,
    next_serial: u64,
    limits: Limits,
    ws_config: WebSocketConfig,
    /// Scratch space for HTTP reads (copied into the connection's buffer,
    /// so an idle connection holds no read buffer of its own).
    read_buf: Box<[u8]>,
    /// Slots with output queued this iteration.
    dirty: Vec<usize>,
    /// HTTP connections whose deferred answer arrived: parse on.
    wake: Vec<usize>,
    /// Subscribers the sink closed; the core still has to forget them.
    gone_subscribers: Vec<(ConnId, Rc<str>)>,
    /// Agent pipes that stopped reading with data left (their budget ran
    /// out): handled again next iteration as if readiness had come.
    ready_again: Vec<Token>,
    /// Connections that stopped with work left (fairness budget).
    retry: Vec<usize>,
    /// The helper handing freed memory back to the OS, while it runs.
    trimmer: Option<std::thread::JoinHandle<std::time::Duration>>,
    accept_paused: bool,
    /// Most connections open since memory was last given back.
    conns_peak: usize,
    /// When the turn engine wants its next step (None: nothing to step).
    turns_wake: Option<Instant>,
    agent: AgentKind,
    agent_config: crate::config::AgentConfig,
    /// Running agents (child processes, upstream requests), by task slot.
    tasks: Vec<Option<agents::AgentTask>>,
    /// Agents the core asked to start or stop, carried out by `settle`.
    agent_starts: Vec<AgentJob>,
    agent_stops: Vec<(u64, bool)>,
    next_tick: Instant,
    shutdown_deadline: Option<Instant>,
    /// After SIGTERM/SIGINT: running turns may finish until then.
    draining_until: Option<Instant>,
    /// The session journal (None with `--in-memory`).
    journal: Option<JournalFile>,
    /// Journal records written so far (a request that wrote some is
    /// acknowledged only once they are durable).
    records: u64,
    /// The fsync helper, epochs and held acknowledgements.
    durability: durability::Durability,
    /// A journal compaction under way.
    compaction: compaction::Compaction,
    /// Reads cold histories back from the journal (None with `--in-memory`).
    history_reader: Option<history_reader::HistoryReader>,
    /// Requests, events sent, closes (the core's counters live with it).
    metrics: TransportMetrics,
    /// `--access-log`.
    access_log: bool,
    /// `--id-from-header`, lowercase (leaked once at start: the parser of
    /// every connection refers to it).
    id_header: Option<&'static str>,
    /// `--trusted-proxy`: peers whose `X-Forwarded-For` names the client.
    trusted_proxies: Vec<std::net::IpAddr>,
    /// systemd's `NOTIFY_SOCKET`, if set.
    notifier: Option<crate::systemd::Notifier>,
    /// `--agent worker`: the long-lived worker processes.
    workers: Option<workers::Workers>,
}

/// Starts a helper thread (the journal's fsync, a compaction's sync and
/// rename) one step below the loop in the scheduler: nice 10 for it
/// alone (Linux nice values are per thread). Where the two share a core
/// (a one-core board, or the benchmarks' pinning), the loop — everyone's
/// answers — is not preempted by a helper that woke from the disk; the
/// helper runs while the loop waits in `poll`, and an acknowledgement
/// waits a little longer instead of every client.
fn spawn_helper<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> io::Result<std::thread::JoinHandle<T>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            // SAFETY: setpriority on the calling thread (who = 0) only
            // changes its scheduling; failure leaves it as it was.
            unsafe {
                libc::setpriority(libc::PRIO_PROCESS, 0, 10);
            }
            work()
        })
}

/// Test-only: a helper's delay in milliseconds from the environment
/// variable `var` (a slow disk, so a test can act while the helper works).
fn test_delay(var: &str) -> Option<Duration> {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
}

impl Server {
    /// The API server: the listener is bound, then the journal opened and
    /// replayed (unless `--in-memory`). Errors name what failed.
    pub fn bind(config: Config) -> Result<Server, String> {
        let now = Instant::now();
        let (data_dir, fsync) = (config.data_dir.clone(), config.fsync);
        let app = App::new(config.clone(), now);
        let mut server = Server::with_service(config, Box::new(app))?;
        if let Some(dir) = &data_dir {
            let (journal, records) = JournalFile::open(dir, fsync)?;
            let count = records.len();
            server.app.restore(records, now);
            crate::info!(
                "{} session(s) from {} ({count} records, {} bytes)",
                server.app.sessions_held(),
                journal.path().display(),
                journal.len()
            );
            server.journal = Some(journal);
            server.start_syncer()?;
            server.start_history_reader()?;
        }
        Ok(server)
    }

    /// Serves `service` with the transport settings of `config` (host,
    /// port, limits); no journal, and agents only as `config` says.
    pub fn with_service(config: Config, app: Box<dyn Service>) -> Result<Server, String> {
        let mut listener = match crate::systemd::take_listener()? {
            // Socket activation: systemd bound it; --host/--port do not apply.
            Some(passed) => TcpListener::from_std(passed),
            None => {
                let what = format!("{}:{}", config.host, config.port);
                let addr = (config.host.as_str(), config.port)
                    .to_socket_addrs()
                    .map_err(|e| format!("cannot resolve {what}: {e}"))?
                    .next()
                    .ok_or_else(|| format!("cannot resolve {what}: no address"))?;
                TcpListener::bind(addr).map_err(|e| format!("cannot listen on {what}: {e}"))?
            }
        };
        let local_addr = listener.local_addr().map_err(|e| e.to_string())?;
        let poll = Poll::new().map_err(|e| format!("cannot create poll: {e}"))?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(|e| e.to_string())?;
        let mut signals = Signals::new([SIGINT, SIGTERM, SIGCHLD])
            .map_err(|e| format!("cannot install signal handlers: {e}"))?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)
            .map_err(|e| e.to_string())?;
        listener::raise_nofile_limit(config.limits.max_connections);

        let limits = config.limits.clone();
        let agent_config = config.agent.clone();
        let agent = agents::resolve_agent(&agent_config)?;
        let workers = match &agent {
            AgentKind::Worker(cfg) => Some(workers::Workers::new(cfg.clone(), Instant::now())),
            _ => None,
        };
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(WS_READ_BUFFER)
            .write_buffer_size(0)
            .max_write_buffer_size(usize::MAX)
            .max_message_size(Some(limits.max_ws_message_bytes))
            .max_frame_size(Some(limits.max_ws_message_bytes));
        let now = Instant::now();
        Ok(Server {
            poll,
            listener: Some(listener),
            local_addr,
            signals,
            app,
            journal: None,
            records: 0,
            durability: durability::Durability::default(),
            compaction: compaction::Compaction::default(),
            history_reader: None,
            draining_until: None,
            conns: Slab::default(),
            next_serial: 0,
            limits,
            ws_config,
            read_buf: vec![0u8; READ_CHUNK].into_boxed_slice(),
            dirty: Vec::new(),
            wake: Vec::new(),
            gone_subscribers: Vec::new(),
            retry: Vec::new(),
            trimmer: None,
            ready_again: Vec::new(),
            accept_paused: false,
            conns_peak: 0,
            turns_wake: None,
            agent,
            agent_config,
            tasks: Vec::new(),
            agent_starts: Vec::new(),
            agent_stops: Vec::new(),
            next_tick: now + TICK,
            shutdown_deadline: None,
            metrics: TransportMetrics::default(),
            access_log: config.ops.access_log,
            notifier: crate::systemd::Notifier::from_env(),
            trusted_proxies: config.trusted_proxies.clone(),
            id_header: config
                .id_from_header
                .as_deref()
                .map(|h| &*Box::leak(h.to_ascii_lowercase().into_boxed_str())),
            workers,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Tells systemd (`NOTIFY_SOCKET`) the server is ready: call once the
    /// `listening on` line is out.
    pub fn notify_ready(&self) {
        if let Some(n) = &self.notifier {
            n.notify("READY=1");
        }
    }

    /// Runs until SIGINT/SIGTERM and the drain after it.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let now = Instant::now();
            let again = std::mem::take(&mut self.ready_again);
            for event in events.iter() {
                let t = event.token();
                // Connections are the tokens below the agents' (a slab index).
                if t.0 < agents::AGENT_BASE {
                    if let Some(io) = self.conns.get_mut(t.0).and_then(Conn::transport_mut) {
                        io.readiness(event.is_read_closed() || event.is_error());
                    }
                }
            }
            for token in events.iter().map(|e| e.token()).chain(again) {
                match token {
                    LISTENER => self.accept(now),
                    durability::SYNCER => self.on_synced(now),
                    compaction::COMPACTOR => self.on_compacted(now),
                    history_reader::READER => self.on_history_read(now),
                    SIGNALS => {
                        if self.on_signals(now) {
                            self.kill_agents();
                            return Ok(());
                        }
                    }
                    t if workers::owns(t) => self.on_worker_ready(t, now),
                    t => match agents::split_token(t) {
                        Some((task, stream)) => self.on_agent_ready(task, stream, now),
                        None => self.on_ready(t.0, now),
                    },
                }
            }
            for slot in std::mem::take(&mut self.retry) {
                self.on_ready(slot, now);
            }
            self.turns_wake = self.app.run_turns(now, &mut sink!(self));
            self.settle(now);
            self.worker_step(now);
            if now >= self.next_tick {
                self.tick(now);
            }
            let swept = self.app.sweep(now);
            if swept > 0 {
                crate::info!("removed {swept} stale session(s)");
            }
            if self.app.take_pass_freed() {
                self.release_freed_memory();
            }
            if let Some(until) = self.draining_until {
                let busy = self.app.busy();
                if busy == 0 || now >= until {
                    self.draining_until = None;
                    if busy > 0 {
                        crate::info!("cancelling the turns of {busy} session(s)");
                        self.app.cancel_all(&mut sink!(self));
                        self.settle(now);
                    }
                    self.close_all(now);
                }
            }
            self.flush_dirty(now);
            self.metrics.iteration(now.elapsed().as_secs_f64());
            if let Some(deadline) = self.shutdown_deadline {
                // Workers get their own bounded time (stdin closed, then killed).
                if (self.conns.is_empty() || now >= deadline) && self.workers_gone() {
                    self.kill_agents();
                    self.sync_journal();
                    return Ok(());
                }
            }
        }
    }

    /// Hands memory freed by a sweep pass (sessions removed, retained
    /// events dropped) back to the OS. glibc keeps freed small allocations
    /// in its heap, interleaved with live ones, so without this the RSS of
    /// a server whose sessions went idle stays at its peak. `malloc_trim`
    /// takes time in proportion to what it frees (57 ms for ~400 MiB), so a
    /// helper thread runs it, one at a time; the loop never waits for it.
    fn release_freed_memory(&mut self) {
        if let Some(t) = self.trimmer.take() {
            if !t.is_finished() {
                self.trimmer = Some(t);
                return;
            }
            let _ = t.join();
        }
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        {
            self.trimmer = spawn_helper("malloc-trim", || {
                let started = Instant::now();
                // SAFETY: malloc_trim only works on the allocator's own
                // free lists, under its own locks.
                unsafe { libc::malloc_trim(0) };
                started.elapsed()
            })
            .ok();
        }
    }

    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        if !self.retry.is_empty()
            || !self.ready_again.is_empty()
            || !self.dirty.is_empty()
            || self.app.has_new_turns()
            || matches!(self.compaction, compaction::Compaction::Copying { .. })
        {
            return Some(Duration::ZERO);
        }
        let ticking =
            !self.conns.is_empty() || self.accept_paused || self.tasks.iter().any(Option::is_some);
        let next = [
            self.app.next_sweep(),
            ticking.then_some(self.next_tick),
            self.shutdown_deadline,
            self.turns_wake,
            self.worker_wake(now),
        ]
        .into_iter()
        .flatten()
        .min();
        // Nothing due: sleep until a socket or a signal wakes the loop.
        next.map(|t| t.saturating_duration_since(now))
    }

    fn conn_id(&self, slot: usize) -> Option<ConnId> {
        let serial = self.conns.entries_serial(slot)?;
        Some(ConnId { slot, serial })
    }

    fn on_ready(&mut self, slot: usize, now: Instant) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        match &mut conn.state {
            State::Http(_) => self.drive_http(slot, now),
            State::Ws(_) => self.drive_ws(slot, now),
            State::Sse(_) => self.drive_sse(slot, now),
            // Closing connections make progress in `flush_dirty`, after the
            // journal's group commit: nothing leaves before it is saved.
            State::Closing(_) | State::Moving => {}
        }
        self.dirty.push(slot);
    }

    fn begin_close(&mut self, slot: usize, now: Instant) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        let io = match std::mem::replace(&mut conn.state, State::Moving) {
            State::Http(h) => h.io,
            State::Ws(w) => w.ws.into_inner(),
            sse @ State::Sse(_) => {
                // A subscriber: the core must forget it too.
                conn.state = sse;
                return self.close_client(slot, close::NORMAL, "", now);
            }
            State::Closing(c) => {
                conn.state = State::Closing(c);
                return;
            }
            State::Moving => return,
        };
        conn.state = State::Closing(ClosingConn {
            io,
            deadline: now + LINGER,
            write_shut: false,
        });
        self.dirty.push(slot);
    }

    /// Closes a subscriber (WebSocket with `code`, or event stream) after
    /// its queued output (dropped for 1008), and the core forgets it.
    pub(super) fn close_client(&mut self, slot: usize, code: u16, reason: &str, now: Instant) {
        if let Some((id, session)) = close_subscriber(&mut self.conns, slot, code, reason, now) {
            if let Some(why) = CloseReason::of_code(code) {
                self.metrics.closed(why);
            }
            self.app.unsubscribed(id, &session, now);
            self.dirty.push(slot);
        }
    }

    fn drop_conn(&mut self, slot: usize, now: Instant) {
        let Some(mut conn) = self.conns.remove(slot) else {
            return;
        };
        if let State::Http(h) = &mut conn.state {
            // A request dropped before its answer was queued (its socket
            // failed, or shutdown ran out of time) is counted and logged as
            // nginx does: 499.
            if let Some(request) = h.pending_log.take() {
                access::record(&mut self.metrics, self.access_log, h.peer, &request, 499, 0);
            }
        }
        if let Some(session) = conn.subscribed_to() {
            let id = ConnId {
                slot,
                serial: conn.serial,
            };
            self.app.unsubscribed(id, &session.clone(), now);
        }
        if let Some(t) = conn.transport_mut() {
            let _ = self.poll.registry().deregister(&mut t.tcp);
        }
        drop(conn);
        if self.accept_paused {
            self.accept(now);
        }
    }

    /// Carries out what the core asked of the sink: forget closed clients,
    /// resume HTTP connections whose answers arrived.
    fn settle(&mut self, now: Instant) {
        loop {
            for (id, session) in std::mem::take(&mut self.gone_subscribers) {
                self.app.unsubscribed(id, &session, now);
            }
            for (turn, graceful) in std::mem::take(&mut self.agent_stops) {
                self.stop_agent(turn, graceful, now);
            }
            for job in std::mem::take(&mut self.agent_starts) {
                self.start_agent(job, now);
            }
            let wake = std::mem::take(&mut self.wake);
            if wake.is_empty() {
                if self.agent_starts.is_empty()
                    && self.agent_stops.is_empty()
                    && self.gone_subscribers.is_empty()
                {
                    break;
                }
                continue;
            }
            for slot in wake {
                self.drive_http(slot, now);
            }
        }
    }

    /// A flush left output queued: held for the journal (released by the
    /// sync), or stopped at the write budget (no event will come: flush
    /// again next iteration). A socket that would block waits for its
    /// writable event.
    fn note_unfinished(&mut self, slot: usize) {
        self.note_held(slot);
        let spent = self
            .conns
            .get_mut(slot)
            .and_then(Conn::transport_mut)
            .is_some_and(|io| io.budget_spent);
        if spent {
            self.dirty.push(slot);
        }
    }

    fn flush_dirty(&mut self, now: Instant) {
        // Group commit: this iteration's records reach the journal (and,
        // with `batch`, the disk) before any of its acknowledgements leave.
        self.app.persist_pending(&mut sink!(self));
        if let Some(j) = &mut self.journal {
            j.commit();
        }
        // Two comparisons per iteration; the rewrite itself is rare.
        self.maybe_compact();
        // Cold histories asked for by this iteration (requests, turns, the
        // compaction) go to the reader.
        self.send_history_reads();
        // What this iteration's acknowledgements wait for (with `batch`,
        // the helper's fsync; otherwise nothing).
        self.close_epoch();
        let durable = self.durability.durable_epoch;
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        for &slot in &dirty {
            let Some(conn) = self.conns.get_mut(slot) else {
                continue;
            };
            let result = match &mut conn.state {
                State::Closing(c) => {
                    if c.advance(durable) {
                        self.drop_conn(slot, now);
                    } else {
                        self.note_unfinished(slot);
                    }
                    continue;
                }
                State::Http(h) => {
                    // A body under way gives one iteration's write more.
                    if h.produce() {
                        self.retry.push(slot);
                    }
                    let before = h.io.queued();
                    let r = h.io.flush_out(durable);
                    if h.io.queued() < before {
                        h.last_progress = now;
                    }
                    if h.body.is_some() && matches!(r, Ok(true)) {
                        // All written and more to produce: no event will
                        // say so, so again next iteration.
                        self.dirty.push(slot);
                    }
                    r
                }
                State::Ws(w) => w.ws.get_mut().flush_out(durable),
                State::Sse(s) => s.io.flush_out(durable),
                State::Moving => continue,
            };
            match result {
                Err(_) => self.drop_conn(slot, now),
                Ok(drained) => {
                    if !drained {
                        self.note_unfinished(slot);
                    }
                    // An HTTP connection that stopped parsing because its
                    // output was backed up can go on now.
                    if let Some(Conn {
                        state: State::Http(h),
                        ..
                    }) = self.conns.get_mut(slot)
                    {
                        if drained && h.stalled_on_output {
                            h.stalled_on_output = false;
                            self.retry.push(slot);
                        }
                    }
                }
            }
        }
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
        self.settle(now);
    }
}
