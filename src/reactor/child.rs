//! Agent child processes, shared by `exec` (one per turn) and `worker`
//! (long-lived): `/bin/sh -c CMD` in its own process group with three
//! non-blocking pipes registered in the poll, its stderr copied to the
//! server log (bounded), and SIGKILL to the whole group.

use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use mio::unix::pipe;
use mio::{Interest, Registry, Token};

use crate::agent::lines::LineDecoder;

const READ_CHUNK: usize = 16 * 1024;
/// Longest stderr line kept whole; a longer one is logged as dropped.
const MAX_STDERR_LINE: usize = 64 * 1024;
/// Characters of the last stderr line quoted in failure reasons.
const QUOTED: usize = 300;

/// A started child and its pipes, registered: stdin WRITABLE, stdout and
/// stderr READABLE, under the three tokens given.
pub struct Piped {
    pub child: Child,
    pub stdin: pipe::Sender,
    pub stdout: pipe::Receiver,
    pub stderr: pipe::Receiver,
}

/// Spawns `/bin/sh -c cmd` in a process group of its own (so a kill
/// reaches whatever it starts).
pub fn spawn_piped(cmd: &str, registry: &Registry, tokens: [Token; 3]) -> io::Result<Piped> {
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()?;
    let (Some(i), Some(o), Some(e)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        kill_group(child.id());
        let _ = child.wait();
        return Err(io::Error::other("pipes missing"));
    };
    let mut stdin = pipe::Sender::from(i);
    let mut stdout = pipe::Receiver::from(o);
    let mut stderr = pipe::Receiver::from(e);
    let setup = (|| {
        stdin.set_nonblocking(true)?;
        stdout.set_nonblocking(true)?;
        stderr.set_nonblocking(true)?;
        registry.register(&mut stdin, tokens[0], Interest::WRITABLE)?;
        registry.register(&mut stdout, tokens[1], Interest::READABLE)?;
        registry.register(&mut stderr, tokens[2], Interest::READABLE)
    })();
    if let Err(e) = setup {
        let _ = registry.deregister(&mut stdin);
        let _ = registry.deregister(&mut stdout);
        let _ = registry.deregister(&mut stderr);
        kill_group(child.id());
        let _ = child.wait();
        return Err(e);
    }
    Ok(Piped {
        child,
        stdin,
        stdout,
        stderr,
    })
}

/// SIGKILL to the process group `pid` leads. Call it before the leader is
/// reaped (an unreaped leader keeps its group id from being reused).
/// Deregisters and drops whichever of a child's pipes are still open.
pub fn deregister_pipes(
    registry: &Registry,
    stdin: &mut Option<pipe::Sender>,
    stdout: &mut Option<pipe::Receiver>,
    stderr: &mut Option<pipe::Receiver>,
) {
    if let Some(mut s) = stdin.take() {
        let _ = registry.deregister(&mut s);
    }
    for out in [stdout, stderr] {
        if let Some(mut s) = out.take() {
            let _ = registry.deregister(&mut s);
        }
    }
}

pub fn kill_group(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: kill(2) with a negative pid signals the group we created.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
}

/// True once child `pid` has exited, without reaping it (so its group can
/// still be killed safely).
pub fn has_exited(pid: u32) -> bool {
    let pid: libc::id_t = pid;
    // SAFETY: waitid only writes into the zeroed siginfo we pass.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let r = libc::waitid(
            libc::P_PID,
            pid,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        );
        r == 0 && info.si_pid() != 0
    }
}

/// How a child ended, for failure reasons.
pub fn describe_exit(status: Option<std::process::ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status.map(|s| (s.code(), s.signal())) {
        Some((Some(code), _)) => format!("exited with status {code}"),
        Some((None, Some(sig))) => format!("was killed by signal {sig}"),
        _ => "ended".to_owned(),
    }
}

/// Stderr bytes read per call: the rest waits for the next loop iteration.
const STDERR_BUDGET: usize = 64 * 1024;

/// What [`StderrLog::read`] left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StderrRead {
    /// Nothing more to read now: the next readiness event says when.
    Blocked,
    /// The budget ran out with more to read: read again next iteration
    /// (an edge-triggered poll will not say so again).
    More,
    /// EOF or an error: deregister and drop the pipe.
    Closed,
}

/// A child's stderr into the server log: each line prefixed with `label`,
/// at most `max` bytes (the rest counted and dropped), the last non-empty
/// line kept for failure reasons.
pub struct StderrLog {
    label: String,
    lines: LineDecoder,
    logged: usize,
    dropped: usize,
    max: usize,
    /// The last non-empty line (at most 300 characters).
    pub last: String,
}

impl StderrLog {
    pub fn new(label: String, max: usize) -> Self {
        StderrLog {
            label,
            lines: LineDecoder::new(MAX_STDERR_LINE),
            logged: 0,
            dropped: 0,
            max,
            last: String::new(),
        }
    }

    /// Reads `stderr` until it would block, at most [`STDERR_BUDGET`] bytes
    /// a call (a child that floods its stderr must not hold the loop).
    pub fn read(&mut self, stderr: &mut pipe::Receiver) -> StderrRead {
        let mut buf = [0u8; READ_CHUNK];
        let mut budget = STDERR_BUDGET;
        loop {
            if budget == 0 {
                return StderrRead::More;
            }
            match stderr.read(&mut buf[..READ_CHUNK.min(budget)]) {
                Ok(0) => {
                    if let Some(rest) = self.lines.finish() {
                        self.line(&rest);
                    }
                    self.summary();
                    return StderrRead::Closed;
                }
                Ok(n) => {
                    budget -= n;
                    self.feed(&buf[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return StderrRead::Blocked,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return StderrRead::Closed,
            }
        }
    }

    fn feed(&mut self, bytes: &[u8]) {
        let mut lines = Vec::new();
        if self.lines.feed(bytes, |l| lines.push(l.to_vec())).is_err() {
            // The rest of an over-long line is lost; start afresh.
            self.lines = LineDecoder::new(MAX_STDERR_LINE);
            lines.push(format!("(a stderr line over {MAX_STDERR_LINE} bytes was dropped)").into());
        }
        for l in lines {
            self.line(&l);
        }
    }

    fn line(&mut self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        if self.logged < self.max {
            crate::info!("{}: {text}", self.label);
            self.logged += line.len() + 1;
        } else {
            self.dropped += line.len() + 1;
        }
        if !text.trim().is_empty() {
            self.last = text.chars().take(QUOTED).collect();
        }
    }

    /// Logs how much was dropped (once, at EOF).
    fn summary(&mut self) {
        if self.dropped > 0 {
            crate::info!(
                "{}: ({} more bytes of stderr not logged)",
                self.label,
                self.dropped
            );
            self.dropped = 0;
        }
    }

    /// Reads the child's `stderr` pipe (a budget's worth); at its end the
    /// pipe is deregistered and dropped. True when more is waiting for the
    /// next iteration.
    pub fn read_pipe(&mut self, stderr: &mut Option<pipe::Receiver>, registry: &Registry) -> bool {
        let Some(pipe) = stderr.as_mut() else {
            return false;
        };
        match self.read(pipe) {
            StderrRead::Blocked => false,
            StderrRead::More => true,
            StderrRead::Closed => {
                if let Some(mut s) = stderr.take() {
                    let _ = registry.deregister(&mut s);
                }
                false
            }
        }
    }

    /// Drains what is readable now and reports any drop (the child is gone).
    pub fn drain(&mut self, stderr: &mut pipe::Receiver) {
        self.read(stderr);
        self.summary();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_flood_of_stderr_is_read_a_budget_at_a_time() {
        let (mut tx, mut rx) = pipe::new().unwrap();
        let mut log = StderrLog::new("test".into(), 0);
        // More than one budget's worth waits in the pipe (its buffer holds
        // 64 KiB by default; grow it so two budgets fit).
        // SAFETY: F_SETPIPE_SZ on a pipe we own.
        unsafe {
            use std::os::fd::AsRawFd;
            libc::fcntl(
                tx.as_raw_fd(),
                libc::F_SETPIPE_SZ,
                4 * STDERR_BUDGET as libc::c_int,
            );
        }
        let line = [b'x'; 99];
        let mut written = 0;
        while written < 2 * STDERR_BUDGET + 1000 {
            tx.write_all(&line).unwrap();
            tx.write_all(b"\n").unwrap();
            written += 100;
        }
        assert_eq!(log.read(&mut rx), StderrRead::More);
        assert_eq!(log.read(&mut rx), StderrRead::More);
        assert_eq!(log.read(&mut rx), StderrRead::Blocked);
        assert_eq!(log.last.len(), 99);
        drop(tx);
        assert_eq!(log.read(&mut rx), StderrRead::Closed);
    }
}
