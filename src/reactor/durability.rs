//! Acknowledgements released when their records are durable, with the
//! journal's fsync off the loop (see [`super::syncer`]).
//!
//! Every loop iteration is an epoch. An acknowledgement queued in epoch `e`
//! (a `done` or turn-ending `error` event, an event that reserved new `seq`
//! numbers, a REST answer to a request that changed state) is put behind a
//! barrier for `e` in its connection's queue. At the end of the iteration
//! the journal's length is what epoch `e` needs durable; when the helper
//! reports an offset at least that long, `e` is durable and the held
//! output goes. Everything else — health checks, tokens, other sessions'
//! streams — never waits for the disk.

use std::collections::VecDeque;
use std::time::Instant;

use mio::Token;

use super::conn::{Conn, State};
use super::syncer::{Synced, Syncer};
use super::Server;

/// The sync helper's answers arrive on this token.
pub(super) const SYNCER: Token = Token(usize::MAX - 3);

/// What the loop tracks of the journal's durability.
#[derive(Default)]
pub(super) struct Durability {
    pub syncer: Option<Syncer>,
    /// The loop iteration under way.
    pub epoch: u64,
    /// Every epoch up to this one is durable.
    pub durable_epoch: u64,
    /// Epochs waiting for the journal to be durable up to an offset.
    waiting: VecDeque<(u64, u64)>,
    /// Connections holding output back for an epoch.
    pub held: Vec<usize>,
    /// No new sync of the journal is asked for (a compaction is swapping
    /// the file: nothing may be acknowledged that the new file may lack).
    pub paused: bool,
}

impl Server {
    /// Starts the sync helper (`--fsync batch` with a journal).
    pub(super) fn start_syncer(&mut self) -> Result<(), String> {
        let Some(j) = self.journal.as_mut() else {
            return Ok(());
        };
        let file = match j.hand_syncing_over() {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(()),
            Err(e) => return Err(format!("cannot start the journal's sync helper: {e}")),
        };
        let syncer = Syncer::spawn(file, self.poll.registry(), SYNCER)
            .map_err(|e| format!("cannot start the journal's sync helper: {e}"))?;
        self.durability.syncer = Some(syncer);
        Ok(())
    }

    /// End of an iteration's writes (after the group's records are in the
    /// file): what this epoch needs durable, and a sync asked for if none
    /// is under way.
    pub(super) fn close_epoch(&mut self) {
        let d = &mut self.durability;
        let epoch = d.epoch;
        d.epoch += 1;
        match self.journal.as_ref() {
            Some(j) if j.len() > j.durable_len() && !j.sync_has_failed() => {
                d.waiting.push_back((epoch, j.len()))
            }
            // Everything written is durable: so is every epoch so far. Or a
            // sync failed: the clients holding output then were cut off,
            // and nothing since can have been saved, so what is queued now
            // (errors, 503s) claims nothing and must not wait forever.
            _ => {
                d.waiting.clear();
                d.durable_epoch = epoch;
            }
        }
        self.request_sync();
    }

    pub(super) fn request_sync(&mut self) {
        let d = &mut self.durability;
        if d.paused {
            return;
        }
        if let (Some(syncer), Some(&(_, offset))) = (d.syncer.as_mut(), d.waiting.back()) {
            syncer.request(offset);
        }
    }

    /// The helper answered: release what is now durable.
    pub(super) fn on_synced(&mut self, now: Instant) {
        let replies = match self.durability.syncer.as_mut() {
            Some(s) => s.replies(),
            None => return,
        };
        for reply in replies {
            match reply {
                Synced::Upto(offset, took) => {
                    if let Some(j) = self.journal.as_mut() {
                        j.synced_upto(offset, took);
                    }
                    let d = &mut self.durability;
                    while let Some(&(epoch, needed)) = d.waiting.front() {
                        if needed > offset {
                            break;
                        }
                        d.durable_epoch = epoch;
                        d.waiting.pop_front();
                    }
                }
                Synced::Failed(why) => {
                    if let Some(j) = self.journal.as_mut() {
                        j.sync_failed(&why);
                    }
                    // What they hold may never go: those clients are cut
                    // off rather than told something unsaved is saved.
                    self.durability.syncer = None;
                    self.durability.waiting.clear();
                    for slot in std::mem::take(&mut self.durability.held) {
                        self.drop_conn(slot, now);
                    }
                    return;
                }
            }
        }
        self.dirty.append(&mut self.durability.held);
        self.request_sync();
    }

    /// The journal is a new file now (a compaction swapped it): what
    /// waits, waits for the new file to be durable up to its length.
    pub(super) fn journal_swapped(&mut self) {
        let len = self.journal.as_ref().map_or(0, |j| j.len());
        let d = &mut self.durability;
        for w in d.waiting.iter_mut() {
            w.1 = len;
        }
        d.syncer = None;
        d.paused = false;
    }

    /// After a flush: remembers the connections still holding output.
    pub(super) fn note_held(&mut self, slot: usize) {
        if let Some(conn) = self.conns.get(slot) {
            if holds(conn) {
                let held = &mut self.durability.held;
                held.push(slot);
                // A slot flushed again while it waits is listed once.
                if held.len() > 64 && held.len() > 2 * self.conns.len() {
                    held.sort_unstable();
                    held.dedup();
                }
            }
        }
    }
}

fn holds(conn: &Conn) -> bool {
    match &conn.state {
        State::Http(h) => h.io.held(),
        State::Ws(w) => w.ws.get_ref().held(),
        State::Sse(s) => s.io.held(),
        State::Closing(c) => c.io.held(),
        State::Moving => false,
    }
}
