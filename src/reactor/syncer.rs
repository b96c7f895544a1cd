//! The journal's fsync, off the loop.
//!
//! `--fsync batch` promises that a `done`, a 200 or a 201 never leaves
//! before its record is on disk; waiting for the disk on the loop would
//! make every client wait for it. So one helper thread owns a duplicate of
//! the journal's descriptor and nothing else: the loop writes it the offset
//! to make durable over a pipe, it calls `fdatasync` and writes back the
//! offset it made durable, over a pipe registered in the loop's `Poll`.
//! No memory is shared and nothing is locked; the loop holds back only the
//! acknowledgements (see [`super::conn::Transport`]'s barriers) until the
//! offset they depend on comes back.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::unix::pipe;
use mio::{Interest, Registry, Token};

/// What the helper answers: the offset now durable, or why it is not.
#[derive(Debug, PartialEq, Eq)]
pub enum Synced {
    Upto(u64, Duration),
    Failed(String),
}

pub struct Syncer {
    /// Offsets to sync, to the helper (blocking on its side).
    requests: Option<pipe::Sender>,
    /// Its answers: 8 bytes of offset, 8 of errno (0: success), 8 of
    /// nanoseconds taken.
    replies: pipe::Receiver,
    partial: Vec<u8>,
    /// The offset asked for and not yet answered.
    in_flight: Option<u64>,
    thread: Option<JoinHandle<()>>,
}

impl Syncer {
    /// Starts the helper for `file` (a duplicate of the journal's
    /// descriptor); its answers arrive as readiness of `token`.
    pub fn spawn(file: File, registry: &Registry, token: Token) -> io::Result<Syncer> {
        let (requests, request_rx) = pipe::new()?;
        let (reply_tx, mut replies) = pipe::new()?;
        request_rx.set_nonblocking(false)?;
        reply_tx.set_nonblocking(false)?;
        registry.register(&mut replies, token, Interest::READABLE)?;
        // Test-only: a slow disk, to show the loop does not wait for it.
        let delay = super::test_delay("AUTOPOIESIS_TEST_SYNC_DELAY_MS");
        // Test-only: a disk that fails every sync after the first N.
        let fail_after = std::env::var("AUTOPOIESIS_TEST_SYNC_FAIL_AFTER")
            .ok()
            .and_then(|v| v.parse().ok());
        let thread = super::spawn_helper("journal-sync", move || {
            helper(file, request_rx, reply_tx, delay, fail_after)
        })?;
        Ok(Syncer {
            requests: Some(requests),
            replies,
            partial: Vec::new(),
            in_flight: None,
            thread: Some(thread),
        })
    }

    /// Asks for everything up to `offset` to be made durable (one request
    /// at a time: what is written meanwhile goes in the next one).
    pub fn request(&mut self, offset: u64) -> bool {
        if self.in_flight.is_some() {
            return false;
        }
        let Some(tx) = self.requests.as_mut() else {
            return false;
        };
        // Eight bytes into an empty pipe: never short, never blocking.
        if tx.write_all(&offset.to_le_bytes()).is_err() {
            return false;
        }
        self.in_flight = Some(offset);
        true
    }

    /// The helper's answers, read until WouldBlock.
    pub fn replies(&mut self) -> Vec<Synced> {
        let mut out = Vec::new();
        let mut buf = [0u8; 240];
        loop {
            match self.replies.read(&mut buf) {
                Ok(0) => {
                    out.push(Synced::Failed("the journal's sync helper stopped".into()));
                    break;
                }
                Ok(n) => self.partial.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    out.push(Synced::Failed(format!("the journal's sync helper: {e}")));
                    break;
                }
            }
        }
        while self.partial.len() >= 24 {
            let field = |i: usize| {
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.partial[i * 8..i * 8 + 8]);
                u64::from_le_bytes(b)
            };
            let (offset, errno, nanos) = (field(0), field(1), field(2));
            self.partial.drain(..24);
            self.in_flight = None;
            out.push(if errno == 0 {
                Synced::Upto(offset, Duration::from_nanos(nanos))
            } else {
                Synced::Failed(io::Error::from_raw_os_error(errno as i32).to_string())
            });
        }
        out
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        // Closing the request pipe ends the helper after its current sync;
        // it is not waited for (that would be waiting for the disk).
        self.requests = None;
        drop(self.thread.take());
    }
}

/// The helper: reads an offset, syncs, answers; ends at EOF.
fn helper(
    file: File,
    mut requests: pipe::Receiver,
    mut replies: pipe::Sender,
    delay: Option<Duration>,
    mut fail_after: Option<u64>,
) {
    let mut buf = [0u8; 8];
    while requests.read_exact(&mut buf).is_ok() {
        let offset = u64::from_le_bytes(buf);
        if let Some(d) = delay {
            std::thread::sleep(d);
        }
        let started = Instant::now();
        let failing = fail_after == Some(0);
        fail_after = fail_after.map(|n| n.saturating_sub(1));
        // SAFETY: fdatasync on a descriptor this thread owns.
        let rc = match failing {
            true => -1,
            false => unsafe { libc::fdatasync(file.as_raw_fd()) },
        };
        let errno = if failing {
            libc::EIO as u64
        } else if rc == 0 {
            0
        } else {
            io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO) as u64
        };
        let nanos = started.elapsed().as_nanos() as u64;
        let mut reply = [0u8; 24];
        reply[..8].copy_from_slice(&offset.to_le_bytes());
        reply[8..16].copy_from_slice(&errno.to_le_bytes());
        reply[16..].copy_from_slice(&nanos.to_le_bytes());
        if replies.write_all(&reply).is_err() {
            return;
        }
    }
}
