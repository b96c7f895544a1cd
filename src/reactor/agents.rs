//! The I/O half of the `exec` and `openai` agents: child processes and
//! upstream sockets, registered in the same `mio::Poll` as the clients.
//! Each task turns readiness into [`AgentEvent`]s (through the sans-IO
//! decoders in [`crate::agent`]) or a failure reason; the reactor hands
//! those to the core.

use std::io::{self, Read, Write};
use std::process::{Child, ExitStatus};
use std::rc::Rc;
use std::time::Instant;

use mio::net::TcpStream;
use mio::unix::pipe;
use mio::{Interest, Registry, Token};

use std::net::ToSocketAddrs;
use std::time::Duration;

use super::child::{describe_exit, kill_group, spawn_piped, StderrLog};
use super::conn_sink::sink;
use super::Server;

/// How long an agent that said `done` may take to exit before it is killed.
const AGENT_EXIT_GRACE: Duration = Duration::from_secs(2);
use crate::agent::lines::LineDecoder;
use crate::agent::openai::UpstreamDecoder;
use crate::agent::openai::{self, UpstreamConfig};
use crate::agent::{exec_request, AgentJob, AgentKind};
use crate::agent::{parse_exec_line, AgentEvent};
use crate::config::AgentChoice;

/// Agent tokens start here; each task has four (stdin or socket, stdout,
/// stderr, spare), so a token maps back to (task, stream) by arithmetic.
pub const AGENT_BASE: usize = 1 << 40;
const SLOTS_PER_TASK: usize = 4;
const READ_CHUNK: usize = 16 * 1024;
/// Stderr bytes logged per turn; the rest is counted and dropped.
const MAX_STDERR_LOG: usize = 64 * 1024;
/// Longest stdout line of an exec agent.
const MAX_LINE: usize = 4 * 1024 * 1024;

pub fn token(task: usize, stream: usize) -> Token {
    Token(AGENT_BASE + task * SLOTS_PER_TASK + stream)
}

/// (task, stream) of an agent token.
pub fn split_token(t: Token) -> Option<(usize, usize)> {
    let n = t.0.checked_sub(AGENT_BASE)?;
    Some((n / SLOTS_PER_TASK, n % SLOTS_PER_TASK))
}

/// What a task's readiness produced.
#[derive(Default)]
pub struct Progress {
    pub events: Vec<AgentEvent>,
    /// The turn fails with this reason (the task is dead or must be killed).
    pub failure: Option<String>,
}

pub struct ExecTask {
    pub child: Child,
    stdin: Option<pipe::Sender>,
    request: Vec<u8>,
    written: usize,
    stdout: Option<pipe::Receiver>,
    stderr: Option<pipe::Receiver>,
    lines: LineDecoder,
    stderr_log: StderrLog,
    out_bytes: usize,
    max_output: usize,
    pub exited: Option<ExitStatus>,
    pub stdout_eof: bool,
}

impl ExecTask {
    /// Spawns `/bin/sh -c cmd` in its own process group (so a kill reaches
    /// whatever it starts) with three non-blocking pipes registered.
    pub fn spawn(
        cmd: &str,
        request: Vec<u8>,
        max_output: usize,
        registry: &Registry,
        task: usize,
    ) -> io::Result<Self> {
        let piped = spawn_piped(
            cmd,
            registry,
            [token(task, 0), token(task, 1), token(task, 2)],
        )?;
        let label = format!("agent[{}]", piped.child.id());
        Ok(ExecTask {
            child: piped.child,
            stdin: Some(piped.stdin),
            request,
            written: 0,
            stdout: Some(piped.stdout),
            stderr: Some(piped.stderr),
            lines: LineDecoder::new(MAX_LINE),
            stderr_log: StderrLog::new(label, MAX_STDERR_LOG),
            out_bytes: 0,
            max_output,
            exited: None,
            stdout_eof: false,
        })
    }

    /// Writes the request line; closes stdin once it is all written (or the
    /// child stopped reading).
    pub fn write_stdin(&mut self, registry: &Registry) {
        let Some(stdin) = self.stdin.as_mut() else {
            return;
        };
        while self.written < self.request.len() {
            match stdin.write(&self.request[self.written..]) {
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break, // EPIPE: the child does not want it
            }
        }
        if let Some(mut stdin) = self.stdin.take() {
            let _ = registry.deregister(&mut stdin);
        }
        self.request = Vec::new();
    }

    pub fn read_stdout(&mut self, registry: &Registry) -> Progress {
        let mut progress = Progress::default();
        let Some(stdout) = self.stdout.as_mut() else {
            return progress;
        };
        let mut buf = [0u8; READ_CHUNK];
        loop {
            match stdout.read(&mut buf) {
                Ok(0) => {
                    self.stdout_eof = true;
                    if let Some(rest) = self.lines.finish() {
                        decode_line(&rest, &mut progress);
                    }
                    if let Some(mut s) = self.stdout.take() {
                        let _ = registry.deregister(&mut s);
                    }
                    return progress;
                }
                Ok(n) => {
                    self.out_bytes += n;
                    if self.out_bytes > self.max_output {
                        progress.failure =
                            Some(format!("agent output passed {} bytes", self.max_output));
                        return progress;
                    }
                    let fed = self
                        .lines
                        .feed(&buf[..n], |line| decode_line(line, &mut progress));
                    if fed.is_err() {
                        progress.failure =
                            Some(format!("agent printed a line over {MAX_LINE} bytes"));
                    }
                    if progress.failure.is_some() {
                        return progress;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return progress,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    progress.failure = Some(format!("reading the agent's output failed: {e}"));
                    return progress;
                }
            }
        }
    }

    /// Reads stderr into the server log (bounded per call), keeping the
    /// last line for failure reasons; true when more is waiting for the
    /// next iteration.
    pub fn read_stderr(&mut self, registry: &Registry) -> bool {
        self.stderr_log.read_pipe(&mut self.stderr, registry)
    }

    /// Collects the exit status if the child has exited (never blocks).
    pub fn reap(&mut self) -> bool {
        if self.exited.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exited = Some(status);
            }
        }
        self.exited.is_some()
    }

    pub fn kill(&self) {
        if self.exited.is_none() {
            kill_group(self.child.id());
        }
    }

    pub fn deregister(&mut self, registry: &Registry) {
        super::child::deregister_pipes(
            registry,
            &mut self.stdin,
            &mut self.stdout,
            &mut self.stderr,
        );
    }

    /// Why a turn whose agent exited without `done` failed.
    pub fn exit_reason(&self) -> String {
        let status = describe_exit(self.exited);
        let last = &self.stderr_log.last;
        if last.is_empty() {
            format!("agent {status} before done")
        } else {
            format!("agent {status} before done: {last}")
        }
    }
}

fn decode_line(line: &[u8], progress: &mut Progress) {
    if progress.failure.is_some() || line.iter().all(u8::is_ascii_whitespace) {
        return;
    }
    match parse_exec_line(line) {
        Ok(event) => progress.events.push(event),
        Err(why) => {
            let shown: String = String::from_utf8_lossy(line).chars().take(200).collect();
            progress.failure = Some(format!(
                "agent printed a line that is not an event ({why}): {shown}"
            ));
        }
    }
}

pub struct UpstreamTask {
    stream: TcpStream,
    request: Vec<u8>,
    written: usize,
    decoder: UpstreamDecoder,
    pub last_progress: Instant,
}

impl UpstreamTask {
    pub fn connect(
        addr: std::net::SocketAddr,
        request: Vec<u8>,
        max_body: u64,
        registry: &Registry,
        task: usize,
        now: Instant,
    ) -> io::Result<Self> {
        let mut stream = TcpStream::connect(addr)?;
        registry.register(
            &mut stream,
            token(task, 0),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        Ok(UpstreamTask {
            stream,
            request,
            written: 0,
            decoder: UpstreamDecoder::new(max_body),
            last_progress: now,
        })
    }

    /// Writes the request, reads the response; returns events, or the
    /// failure that ends the turn. `finished` is set once the stream is over.
    pub fn drive(&mut self, now: Instant, finished: &mut bool) -> Progress {
        let mut progress = Progress::default();
        if let Ok(Some(e)) | Err(e) = self.stream.take_error() {
            // Before anything was sent, an error means the connect failed.
            progress.failure = Some(if self.written == 0 {
                format!("cannot reach the upstream model server: {e}")
            } else {
                format!("upstream connection failed: {e}")
            });
            return progress;
        }
        while self.written < self.request.len() {
            match self.stream.write(&self.request[self.written..]) {
                Ok(n) => {
                    self.written += n;
                    self.last_progress = now;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return progress,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return progress,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    progress.failure = Some(format!("cannot reach the upstream model server: {e}"));
                    return progress;
                }
            }
        }
        let mut buf = [0u8; READ_CHUNK];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    if let Err(why) = self.decoder.finish(&mut progress.events) {
                        progress.failure = Some(why);
                    }
                    *finished = true;
                    return progress;
                }
                Ok(n) => {
                    self.last_progress = now;
                    if let Err(why) = self.decoder.feed(&buf[..n], &mut progress.events) {
                        progress.failure = Some(why);
                        return progress;
                    }
                    if self.decoder.is_finished() {
                        *finished = true;
                        return progress;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return progress,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    progress.failure = Some(format!("upstream connection failed: {e}"));
                    return progress;
                }
            }
        }
    }

    pub fn deregister(&mut self, registry: &Registry) {
        let _ = registry.deregister(&mut self.stream);
    }
}

pub enum AgentIo {
    Exec(Box<ExecTask>),
    Upstream(Box<UpstreamTask>),
}

pub struct AgentTask {
    pub turn: u64,
    pub session: Rc<str>,
    pub io: AgentIo,
    /// The turn has ended; nothing more is forwarded.
    pub ended: bool,
    pub started: Instant,
    /// Graceful stop: kill if still running then.
    pub kill_at: Option<Instant>,
}

/// The agent `--agent` names, with the upstream address resolved now: a
/// name lookup is a blocking call, so it happens once, before the loop.
pub(super) fn resolve_agent(config: &crate::config::AgentConfig) -> Result<AgentKind, String> {
    Ok(match config.choice {
        AgentChoice::Echo => AgentKind::Echo,
        AgentChoice::Exec => AgentKind::Exec(config.cmd.clone().unwrap_or_default()),
        AgentChoice::Worker => AgentKind::Worker(crate::agent::worker_pool::PoolConfig {
            cmd: config.cmd.clone().unwrap_or_default(),
            workers: config.workers,
            concurrency: config.worker_concurrency,
            max_output: config.max_output_bytes,
            turn_timeout: config.turn_timeout,
        }),
        AgentChoice::OpenAi => {
            let url = config.base_url.clone().unwrap_or_default();
            let (host, port, base_path) = openai::parse_base_url(&url)?;
            let addr = (host.as_str(), port)
                .to_socket_addrs()
                .map_err(|e| format!("cannot resolve the upstream {host}: {e}"))?
                .next()
                .ok_or_else(|| format!("cannot resolve the upstream {host}: no address"))?;
            let authority = url
                .trim_start_matches("http://")
                .split('/')
                .next()
                .unwrap_or_default()
                .to_owned();
            AgentKind::OpenAi(UpstreamConfig {
                authority,
                addr,
                base_path,
                model: config.model.clone().unwrap_or_default(),
                api_key: config.openai_api_key.clone(),
                system_prompt: config.system_prompt.clone(),
            })
        }
    })
}

/// Agents: start, drive, reap, time out, stop.
impl Server {
    pub(super) fn start_agent(&mut self, job: AgentJob, now: Instant) {
        if let AgentKind::Worker(_) = self.agent {
            return self.submit_worker_turn(job, now);
        }
        let slot = match self.tasks.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.tasks.push(None);
                self.tasks.len() - 1
            }
        };
        let registry = self.poll.registry();
        let max = self.agent_config.max_output_bytes;
        let io = match &self.agent {
            AgentKind::Echo | AgentKind::Worker(_) => return,
            AgentKind::Exec(cmd) => ExecTask::spawn(cmd, exec_request(&job), max, registry, slot)
                .map(|t| AgentIo::Exec(Box::new(t)))
                .map_err(|e| format!("could not start the agent ({cmd}): {e}")),
            AgentKind::OpenAi(cfg) => UpstreamTask::connect(
                cfg.addr,
                openai::request(cfg, &job),
                max as u64,
                registry,
                slot,
                now,
            )
            .map(|t| AgentIo::Upstream(Box::new(t)))
            .map_err(|e| {
                format!(
                    "cannot reach the upstream model server at {}: {e}",
                    cfg.addr
                )
            }),
        };
        let session: Rc<str> = Rc::from(job.session_id);
        match io {
            Ok(mut io) => {
                if let AgentIo::Exec(task) = &mut io {
                    task.write_stdin(self.poll.registry());
                }
                self.tasks[slot] = Some(AgentTask {
                    turn: job.turn,
                    session,
                    io,
                    ended: false,
                    started: now,
                    kill_at: None,
                });
            }
            Err(reason) => {
                crate::info!("{reason}");
                self.app
                    .agent_failed(&session, job.turn, reason, now, &mut sink!(self));
            }
        }
    }

    /// The turn ended (done, error, cancel, session deleted): forward
    /// nothing more, and kill the agent unless it said `done`.
    pub(super) fn stop_agent(&mut self, turn: u64, graceful: bool, now: Instant) {
        if let AgentKind::Worker(_) = self.agent {
            return self.stop_worker_turn(turn, now);
        }
        let Some(slot) = self
            .tasks
            .iter()
            .position(|t| t.as_ref().is_some_and(|t| t.turn == turn))
        else {
            return;
        };
        let Some(task) = self.tasks[slot].as_mut() else {
            return;
        };
        task.ended = true;
        match &mut task.io {
            AgentIo::Exec(exec) => {
                if graceful {
                    task.kill_at = Some(now + AGENT_EXIT_GRACE);
                } else {
                    exec.kill();
                }
            }
            AgentIo::Upstream(_) => self.remove_task(slot),
        }
    }

    pub(super) fn on_agent_ready(&mut self, slot: usize, stream: usize, now: Instant) {
        let registry = self.poll.registry();
        let Some(task) = self.tasks.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let (progress, finished) = match &mut task.io {
            AgentIo::Exec(exec) => {
                let progress = match stream {
                    0 => {
                        exec.write_stdin(registry);
                        Progress::default()
                    }
                    1 => exec.read_stdout(registry),
                    _ => {
                        if exec.read_stderr(registry) {
                            self.ready_again.push(token(slot, stream));
                        }
                        Progress::default()
                    }
                };
                if progress.failure.is_some() {
                    exec.kill();
                }
                (progress, false)
            }
            AgentIo::Upstream(up) => {
                let mut finished = false;
                let progress = up.drive(now, &mut finished);
                (progress, finished)
            }
        };
        let failed = progress.failure.is_some();
        self.deliver(slot, progress, now);
        let upstream = matches!(
            self.tasks.get(slot).and_then(Option::as_ref).map(|t| &t.io),
            Some(AgentIo::Upstream(_))
        );
        if upstream && (finished || failed) {
            self.remove_task(slot);
        } else {
            self.finish_exec_if_done(slot, now);
        }
    }

    /// Hands a task's events (or failure) to the core, unless its turn ended.
    fn deliver(&mut self, slot: usize, progress: Progress, now: Instant) {
        let Some(task) = self.tasks.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        if task.ended {
            return;
        }
        let (session, turn) = (task.session.clone(), task.turn);
        if progress.failure.is_some() {
            task.ended = true;
        }
        if !progress.events.is_empty() {
            self.app
                .agent_events(&session, turn, progress.events, now, &mut sink!(self));
        }
        if let Some(reason) = progress.failure {
            self.app
                .agent_failed(&session, turn, reason, now, &mut sink!(self));
        }
    }

    /// SIGCHLD: collect every exited child.
    pub(super) fn reap_agents(&mut self, now: Instant) {
        self.reap_workers(now);
        for slot in 0..self.tasks.len() {
            if let Some(AgentTask {
                io: AgentIo::Exec(exec),
                ..
            }) = self.tasks[slot].as_mut()
            {
                if exec.reap() {
                    // Drain what it wrote before exiting.
                    let registry = self.poll.registry();
                    exec.read_stderr(registry);
                    let progress = exec.read_stdout(registry);
                    self.deliver(slot, progress, now);
                    self.finish_exec_if_done(slot, now);
                }
            }
        }
    }

    /// An exec task is over once its child has exited and its output is
    /// read; a turn still open then failed ("exited before done").
    fn finish_exec_if_done(&mut self, slot: usize, now: Instant) {
        let registry = self.poll.registry();
        let Some(AgentTask {
            io: AgentIo::Exec(exec),
            ended,
            ..
        }) = self.tasks.get_mut(slot).and_then(Option::as_mut)
        else {
            return;
        };
        exec.reap();
        if exec.exited.is_none() || !(exec.stdout_eof || *ended) {
            return;
        }
        if !*ended {
            // Its last words may still sit in the stderr pipe (the stdout
            // EOF can come first): they are the reason's best part.
            exec.read_stderr(registry);
            let reason = exec.exit_reason();
            let progress = Progress {
                events: Vec::new(),
                failure: Some(reason),
            };
            self.deliver(slot, progress, now);
        }
        self.remove_task(slot);
    }

    fn remove_task(&mut self, slot: usize) {
        let Some(mut task) = self.tasks.get_mut(slot).and_then(Option::take) else {
            return;
        };
        let registry = self.poll.registry();
        match &mut task.io {
            AgentIo::Exec(exec) => {
                exec.deregister(registry);
                exec.kill();
                if !exec.reap() {
                    // Killed: it exits at once; wait so no zombie is left.
                    let _ = exec.child.wait();
                }
            }
            AgentIo::Upstream(up) => up.deregister(registry),
        }
    }

    /// Turn and upstream timeouts, and the grace after `done`.
    pub(super) fn agent_timers(&mut self, now: Instant) {
        let turn_timeout = self.agent_config.turn_timeout;
        let upstream_timeout = self.agent_config.upstream_timeout;
        for slot in 0..self.tasks.len() {
            let Some(task) = self.tasks[slot].as_mut() else {
                continue;
            };
            let failure = match &mut task.io {
                AgentIo::Exec(exec) => {
                    if task.kill_at.is_some_and(|t| now >= t) {
                        exec.kill();
                        None
                    } else if !task.ended && now >= task.started + turn_timeout {
                        exec.kill();
                        Some(format!(
                            "the turn timed out after {} s; the agent was killed",
                            turn_timeout.as_secs()
                        ))
                    } else {
                        None
                    }
                }
                AgentIo::Upstream(up) => (now >= up.last_progress + upstream_timeout).then(|| {
                    format!(
                        "the upstream model server sent nothing for {} s",
                        upstream_timeout.as_secs()
                    )
                }),
            };
            if let Some(reason) = failure {
                let upstream = matches!(task.io, AgentIo::Upstream(_));
                let progress = Progress {
                    events: Vec::new(),
                    failure: Some(reason),
                };
                self.deliver(slot, progress, now);
                if upstream {
                    self.remove_task(slot);
                }
            }
        }
    }

    /// At exit: no child outlives the server, and none is left a zombie.
    pub(super) fn kill_agents(&mut self) {
        self.kill_workers();
        for slot in 0..self.tasks.len() {
            self.remove_task(slot);
        }
    }
}
