//! Journal compaction without stopping the loop.
//!
//! Once dead records (deleted sessions, superseded `seq` reservations)
//! outweigh live ones, the journal is rewritten as a snapshot, the way
//! Redis rewrites its AOF but without a fork:
//! 1. *Copying*: each loop iteration writes the next sessions (about
//!    [`STEP_BYTES`]) to `journal.compact`, in creation order. A record of
//!    a session already copied goes to both files as it happens; a record
//!    of one not yet copied is in the copy when its turn comes. A cold
//!    history is read back first (by the history reader, a few ahead),
//!    copied, and let go again; if one cannot be read, the compaction
//!    gives up.
//! 2. *Switching*: a helper thread syncs the new file, renames it over the
//!    journal and syncs the directory, while the loop serves on and keeps
//!    writing every record to both files. Meanwhile no new sync of the old
//!    file is asked for, so nothing gets acknowledged that the new file's
//!    synced part may lack.
//! 3. The helper answers through a pipe in the same poll: the new file is
//!    the journal, its sync helper restarts, held acknowledgements wait for
//!    it. If anything fails, the old journal stays and nothing is lost.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::Instant;

use mio::unix::pipe;
use mio::{Interest, Token};

use super::{Server, COMPACT_MIN_BYTES};

/// The compaction helper's answer arrives on this token.
pub(super) const COMPACTOR: Token = Token(usize::MAX - 4);
/// Snapshot bytes written per loop iteration.
const STEP_BYTES: usize = 256 * 1024;

#[derive(Default)]
pub(super) enum Compaction {
    #[default]
    Idle,
    Copying {
        started: Instant,
        before: u64,
    },
    Switching {
        started: Instant,
        before: u64,
        /// The new file's length when its sync was asked for.
        synced: u64,
        reply: pipe::Receiver,
        thread: Option<JoinHandle<()>>,
    },
}

impl Server {
    /// Starts a compaction when it is due, or takes its next step.
    pub(super) fn maybe_compact(&mut self) {
        match self.compaction {
            Compaction::Idle => self.start_compaction(),
            Compaction::Copying { .. } => self.copy_step(),
            Compaction::Switching { .. } => {}
        }
    }

    fn start_compaction(&mut self) {
        let live = self.app.journal_live_bytes();
        let Some(j) = self.journal.as_mut() else {
            return;
        };
        // Not over a journal that refuses writes: what it lacks must not
        // be made to look saved.
        if j.len() < COMPACT_MIN_BYTES || j.len() < 2 * live || j.has_failed() {
            return;
        }
        if let Err(e) = j.begin_shadow() {
            crate::warn!("{e}");
            return;
        }
        let before = j.len();
        self.app.begin_snapshot();
        self.compaction = Compaction::Copying {
            started: Instant::now(),
            before,
        };
        self.copy_step();
    }

    fn copy_step(&mut self) {
        let Compaction::Copying { started, before } = self.compaction else {
            return;
        };
        let Some(j) = self.journal.as_mut() else {
            return;
        };
        if !j.has_shadow() {
            // A mirrored write failed and gave it up.
            return self.give_up("the new file could not be written");
        }
        let base = j.shadow_len().unwrap_or(0);
        let (bytes, done) = match self.app.snapshot_step(STEP_BYTES, base, Instant::now()) {
            Ok(step) => step,
            Err(why) => return self.give_up(&why),
        };
        let Some(j) = self.journal.as_mut() else {
            return;
        };
        if let Err(e) = j.shadow_write(&bytes) {
            return self.give_up(&e);
        }
        if !done {
            return;
        }
        // Everything is in the new file, and every record from now on goes
        // to both. Hand the sync and the rename to a helper.
        let handle = match j.shadow_handle() {
            Ok(Some(h)) => h,
            Ok(None) => return self.give_up("the new file is gone"),
            Err(e) => return self.give_up(&e.to_string()),
        };
        let (file, synced) = handle;
        let paths = (j.shadow_path(), j.path().to_owned(), j.dir().to_owned());
        match spawn_switch(file, paths, self.poll.registry()) {
            Ok((reply, thread)) => {
                self.durability.paused = true;
                self.compaction = Compaction::Switching {
                    started,
                    before,
                    synced,
                    reply,
                    thread: Some(thread),
                };
            }
            Err(e) => self.give_up(&e),
        }
    }

    /// The helper has synced and renamed the new file (or failed to).
    pub(super) fn on_compacted(&mut self, now: Instant) {
        let Compaction::Switching {
            started,
            before,
            synced,
            reply,
            thread,
        } = &mut self.compaction
        else {
            return;
        };
        let mut answer = [0u8; 8];
        match reply.read(&mut answer) {
            Ok(8) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            _ => answer = (libc::EIO as u64).to_le_bytes(),
        }
        if let Some(t) = thread.take() {
            let _ = t.join();
        }
        let errno = u64::from_le_bytes(answer);
        let (started, before, synced) = (*started, *before, *synced);
        let mut reply = match std::mem::take(&mut self.compaction) {
            Compaction::Switching { reply, .. } => reply,
            _ => return,
        };
        let _ = self.poll.registry().deregister(&mut reply);
        self.app.end_snapshot();
        if errno != 0 {
            self.durability.paused = false;
            if let Some(j) = self.journal.as_mut() {
                j.abandon_shadow();
            }
            let e = std::io::Error::from_raw_os_error(errno as i32);
            crate::warn!("compaction failed, the old journal is kept: {e}");
            self.request_sync();
            return;
        }
        if let Some(j) = self.journal.as_mut() {
            j.adopt_shadow(synced);
            crate::info!(
                "compacted {} from {before} to {} bytes in {} ms, the loop serving on",
                j.path().display(),
                j.len(),
                started.elapsed().as_millis()
            );
        }
        self.journal_swapped();
        self.history_reader_switch();
        if let Err(e) = self.start_syncer() {
            crate::error!("{e}; syncing on the loop from now on");
            if let Some(j) = self.journal.as_mut() {
                j.sync_on_the_loop();
            }
        }
        self.request_sync();
        let _ = now;
    }

    fn give_up(&mut self, why: &str) {
        crate::warn!("compaction given up, the old journal is kept: {why}");
        if let Some(j) = self.journal.as_mut() {
            j.abandon_shadow();
        }
        self.app.end_snapshot();
        self.compaction = Compaction::Idle;
        self.durability.paused = false;
    }
}

/// The helper: fdatasync the new file, rename it over the journal, fsync
/// the directory; answers 0 or an errno over a pipe.
fn spawn_switch(
    file: File,
    (from, to, dir): (PathBuf, PathBuf, PathBuf),
    registry: &mio::Registry,
) -> Result<(pipe::Receiver, JoinHandle<()>), String> {
    let (mut tx, mut rx) = pipe::new().map_err(|e| e.to_string())?;
    tx.set_nonblocking(false).map_err(|e| e.to_string())?;
    registry
        .register(&mut rx, COMPACTOR, Interest::READABLE)
        .map_err(|e| e.to_string())?;
    // Test-only: a slow disk (the same knob as the sync helper's).
    let delay = super::test_delay("AUTOPOIESIS_TEST_SYNC_DELAY_MS");
    let thread = super::spawn_helper("journal-compact", move || {
        if let Some(d) = delay {
            std::thread::sleep(d);
        }
        let result = (|| -> std::io::Result<()> {
            // SAFETY: fdatasync on a descriptor this thread owns.
            if unsafe { libc::fdatasync(file.as_raw_fd()) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            std::fs::rename(&from, &to)?;
            File::open(&dir)?.sync_all()
        })();
        let errno = match result {
            Ok(()) => 0,
            Err(e) => e.raw_os_error().unwrap_or(libc::EIO) as u64,
        };
        let _ = tx.write_all(&errno.to_le_bytes());
    })
    .map_err(|e| e.to_string())?;
    Ok((rx, thread))
}
