//! One session: its directory entry, always in RAM, and the part it
//! holds only while in use ([`Hot`]), with the accessors the turn engine
//! and the API use. The table ([`super::SessionTable`]) owns them.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;

use crate::approvals::PendingCall;
use crate::clock::Stamp;
use crate::events::{Event, EventArena};
use crate::journal::Loc;
use crate::turns::Turn;

/// One conversation: its directory entry, always in RAM, and what it holds
/// while in use (`Hot`), dropped once it is idle.
///
/// The entry is what the listing, `seq` numbering and a cold read need:
/// a history that left RAM is found again from `heads` (its last `m`
/// record in the journal; see [`crate::journal::chain`]).
#[derive(Debug)]
pub struct Session {
    /// When it was made (written as RFC 3339 when shown: 8 bytes here
    /// instead of a string allocated beside the entry).
    pub created_at: Stamp,
    /// Position in creation order (the listing order).
    pub(super) ordinal: u64,
    /// The last `seq` given to a broadcast event of this session.
    pub seq: u64,
    /// The journal promises no `seq` up to this was used: after a crash,
    /// numbering resumes above it, so no `seq` is ever given twice.
    pub(super) seq_reserved: u64,
    /// Bytes of this session's records in the journal (for compaction).
    pub(super) journal_bytes: u64,
    pub last_activity: Instant,
    /// Messages in the history, resident or not.
    pub(super) message_count: usize,
    /// Where its last `m` record is, in each of the two journal files (the
    /// journal, and the new file a compaction writes; see
    /// `SessionTable::file`). [`NO_HEAD`]: none yet; [`BROKEN`]: its
    /// records are not chained (an older journal), so its history stays in
    /// RAM until a compaction rewrites it.
    pub(super) heads: [Loc; 2],
    /// Tool calls waiting for a person's decision (empty: none). While
    /// there are any, no new message is taken.
    pub(super) approvals: Vec<PendingCall>,
    pub(super) hot: Option<Box<Hot>>,
}

/// What a session holds only while it is in use.
#[derive(Debug)]
pub(super) struct Hot {
    /// pydantic-ai `ModelMessage`s, each kept as its JSON text: the history
    /// endpoint splices them without re-serializing. None: in the journal
    /// only (a cold history).
    pub(super) messages: Option<Vec<Bytes>>,
    /// Recent broadcast events, for `?since=` resume (bounded).
    pub(super) retained: VecDeque<(u64, Event)>,
    pub(super) retained_bytes: usize,
    /// Where its broadcast events are written (see [`EventArena`]); made
    /// at the first broadcast.
    pub(super) arena: Option<EventArena>,
    /// The turn streaming now, if any.
    pub(super) running: Option<Turn>,
    /// Turns waiting for `running` to finish, in arrival order.
    pub(super) queue: VecDeque<Turn>,
}

thread_local! {
    /// Sessions holding a [`Hot`] part, for `autopoiesis_sessions_resident`:
    /// counted as they are made and dropped, so a scrape never walks the
    /// table. Per thread, as the table is the loop thread's own.
    static HOT_SESSIONS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Sessions of this thread's table holding more than a directory entry.
pub fn hot_sessions() -> usize {
    HOT_SESSIONS.with(std::cell::Cell::get)
}

impl Default for Hot {
    fn default() -> Hot {
        HOT_SESSIONS.with(|n| n.set(n.get() + 1));
        Hot {
            messages: None,
            retained: VecDeque::new(),
            retained_bytes: 0,
            arena: None,
            running: None,
            queue: VecDeque::new(),
        }
    }
}

impl Drop for Hot {
    fn drop(&mut self) {
        HOT_SESSIONS.with(|n| n.set(n.get().saturating_sub(1)));
    }
}

impl Hot {
    /// Holds nothing a directory entry does not (an empty or cold history).
    fn is_idle(&self) -> bool {
        self.messages.as_ref().is_none_or(Vec::is_empty)
            && self.retained.is_empty()
            && self.arena.is_none()
            && self.running.is_none()
            && self.queue.is_empty()
    }
}

/// No `m` record of the session in that journal file.
pub const NO_HEAD: Loc = Loc { offset: 0, len: 0 };
/// The session's `m` records in that file are not chained.
pub const BROKEN: Loc = Loc {
    offset: u64::MAX,
    len: 0,
};

impl Session {
    pub(super) fn new(created_at: Stamp, ordinal: u64, now: Instant) -> Session {
        Session {
            created_at,
            ordinal,
            seq: 0,
            seq_reserved: 0,
            journal_bytes: 0,
            last_activity: now,
            message_count: 0,
            heads: [NO_HEAD; 2],
            approvals: Vec::new(),
            hot: None,
        }
    }

    pub(super) fn hot(&mut self) -> &mut Hot {
        self.hot.get_or_insert_with(Box::default)
    }

    /// Drops what the session holds in use if none of it is left.
    pub(super) fn shed(&mut self) {
        if self.hot.as_ref().is_some_and(|h| h.is_idle()) {
            self.hot = None;
        }
    }

    /// The history, each `ModelMessage` as its JSON text; None while it is
    /// in the journal only (see [`super::SessionTable::want_history`]).
    pub fn messages(&self) -> Option<&[Bytes]> {
        match self.hot.as_ref().and_then(|h| h.messages.as_deref()) {
            Some(m) => Some(m),
            None if self.message_count == 0 => Some(&[]),
            None => None,
        }
    }

    pub fn message_count(&self) -> usize {
        self.message_count
    }

    /// Whether more than the directory entry is in RAM.
    pub fn is_hot(&self) -> bool {
        self.hot.is_some()
    }

    /// The tool calls waiting for approval (empty: none).
    pub fn pending_approvals(&self) -> &[PendingCall] {
        &self.approvals
    }

    pub fn running(&self) -> Option<&Turn> {
        self.hot.as_ref()?.running.as_ref()
    }

    pub fn running_mut(&mut self) -> Option<&mut Turn> {
        self.hot.as_mut()?.running.as_mut()
    }

    pub fn take_running(&mut self) -> Option<Turn> {
        self.hot.as_mut()?.running.take()
    }

    pub fn set_running(&mut self, turn: Turn) {
        self.hot().running = Some(turn);
    }

    /// Turns waiting behind the running one.
    pub fn queued(&self) -> usize {
        self.hot.as_ref().map_or(0, |h| h.queue.len())
    }

    pub fn push_queued(&mut self, turn: Turn) {
        self.hot().queue.push_back(turn);
    }

    pub fn pop_queued(&mut self) -> Option<Turn> {
        self.hot.as_mut()?.queue.pop_front()
    }

    pub fn take_queue(&mut self) -> VecDeque<Turn> {
        self.hot
            .as_mut()
            .map(|h| std::mem::take(&mut h.queue))
            .unwrap_or_default()
    }

    /// A turn runs or waits.
    pub fn is_busy(&self) -> bool {
        self.hot
            .as_ref()
            .is_some_and(|h| h.running.is_some() || !h.queue.is_empty())
    }

    /// Drops the retained events and the arena chunk they were cut from:
    /// RAM a session without clients keeps for a resume nobody may ask
    /// for. Returns whether there was anything to drop.
    pub fn drop_retained(&mut self) -> bool {
        let Some(hot) = self.hot.as_mut() else {
            return false;
        };
        let had = !hot.retained.is_empty() || hot.arena.is_some();
        hot.retained = VecDeque::new();
        hot.retained_bytes = 0;
        hot.arena = None;
        self.shed();
        had
    }

    /// The events after `since`, or None when the client must resync:
    /// some of them are no longer retained, or `since` is above any `seq`
    /// this session gave (the client saw another incarnation of it).
    pub fn events_after(&self, since: u64) -> Option<impl Iterator<Item = &Event>> {
        let retained = self.hot.as_ref().map(|h| &h.retained);
        let first = retained
            .and_then(|r| r.front())
            .map_or(self.seq + 1, |(seq, _)| *seq);
        if since > self.seq || (since < self.seq && since + 1 < first) {
            return None;
        }
        Some(
            retained
                .into_iter()
                .flatten()
                .filter(move |(seq, _)| *seq > since)
                .map(|(_, f)| f),
        )
    }
}
