//! The session table: sessions in creation order, their history, their
//! `seq` counters, and the WebSocket subscribers of each session id.
//!
//! Owned by [`crate::api::App`] on the reactor thread; nothing here is
//! shared or locked. Subscribers are kept per session *id*, apart from the
//! session itself, because a client stays attached to its id when the
//! session is deleted over REST (its next message creates it again, as in
//! the original server).
//!
//! One concern per file: a session's entry and in-use part (`session`), the
//! directory they live in (`map`), broadcast and retention (`broadcast`),
//! records to and from the journal (`records`), cold histories' reads
//! (`cold`), the idle sweep (`sweep`) and the compaction's copy
//! (`snapshot`).

use std::collections::HashMap;

mod broadcast;
mod cold;
mod map;
mod records;
mod session;
mod snapshot;
mod sweep;
pub use cold::{HistoryRead, LoadOutcome, Loaded};
use map::Directory;
pub use session::{hot_sessions, Session};
use session::{BROKEN, NO_HEAD};
use std::time::Instant;

use serde::Serialize;

use bytes::Bytes;

use crate::approvals::PendingCall;
use crate::clock::{self, Stamp};
use crate::journal::Change;
use crate::sink::{ConnId, Sink};

/// `SessionInfo` of the contract.
#[derive(Serialize)]
pub struct SessionInfo<'a> {
    pub id: &'a str,
    pub created_at: String,
    pub message_count: usize,
}

/// Loop time given to moving sessions to the grown table per iteration
/// (Redis' `dictRehashMilliseconds`).
const GROWTH_BUDGET_PER_ITERATION: std::time::Duration = std::time::Duration::from_millis(1);

/// How much broadcast history each session keeps for resume.
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    pub events: usize,
    /// Bytes of retained events, counting the arena chunk being filled.
    pub bytes: usize,
    /// With no subscriber this long, a session drops its retained events
    /// (a later resume gets `resync`). None: never.
    pub idle: Option<std::time::Duration>,
    /// With no subscriber and no turn this long, a session's history
    /// leaves RAM (read back from the journal when needed). None: never.
    pub history_idle: Option<std::time::Duration>,
}

/// Where a walk over the sessions in creation order (the idle sweep, a
/// compaction) goes on: a slot of the directory, or past the newest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Walk {
    At(u32),
    End,
}

/// Creating a session would pass `--max-sessions`.
#[derive(Debug, PartialEq, Eq)]
pub struct TableFull;

#[derive(Debug)]
pub struct SessionTable {
    /// Sessions by id, in creation order.
    sessions: Directory<Session>,
    next_ordinal: u64,
    subscribers: HashMap<String, Vec<ConnId>>,
    /// Where an event is serialized before it is copied into its session's
    /// arena (reused: no allocation per event).
    scratch: Vec<u8>,
    max_sessions: usize,
    retention: Retention,
    /// Changes not yet handed to the journal, in order.
    pending: Vec<Change>,
    /// Bytes of journal records that describe live state.
    journal_live: u64,
    /// Which of a session's two `heads` is the journal's (the other is a
    /// compaction's new file); flips when the new file becomes the journal.
    file: usize,
    /// Cold histories being read back, by session id.
    loads: HashMap<String, cold::Load>,
    /// Reads asked for and not yet handed to the reader.
    reads: Vec<HistoryRead>,
    /// Compaction under way: sessions with an ordinal below this are in the
    /// new file.
    compaction_cursor: Option<u64>,
    /// Where the compaction's walk goes on.
    compaction_walk: Walk,
    /// A session partly written: its ordinal and how many messages.
    compaction_partial: Option<(u64, usize)>,
    /// A history the compaction needed could not be read: it gives up.
    compaction_failed: Option<String>,
    /// Where the idle sweep under way goes on, if one is.
    sweep_cursor: Option<Walk>,
    /// Turns running, queued and ended; tokens broadcast.
    pub metrics: crate::metrics::TurnMetrics,
}

impl SessionTable {
    pub fn new(max_sessions: usize) -> Self {
        Self::with_retention(
            max_sessions,
            Retention {
                events: 1000,
                bytes: 1 << 20,
                idle: None,
                history_idle: None,
            },
        )
    }

    pub fn with_retention(max_sessions: usize, retention: Retention) -> Self {
        SessionTable {
            sessions: Directory::default(),
            next_ordinal: 0,
            subscribers: HashMap::new(),
            scratch: Vec::new(),
            max_sessions,
            retention,
            pending: Vec::new(),
            journal_live: 0,
            file: 0,
            loads: HashMap::new(),
            reads: Vec::new(),
            metrics: Default::default(),
            sweep_cursor: None,
            compaction_cursor: None,
            compaction_walk: Walk::End,
            compaction_partial: None,
            compaction_failed: None,
        }
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    pub fn get(&self, id: &str) -> Option<&Session> {
        self.sessions.get(id)
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut Session> {
        self.sessions.get_mut(id)
    }

    /// A new session under a fresh random id; returns the id.
    pub fn create(&mut self, now: Instant) -> Result<String, TableFull> {
        loop {
            let id = clock::new_session_id();
            if !self.sessions.contains_key(&id) {
                self.get_or_create(&id, now)?;
                return Ok(id);
            }
        }
    }

    /// The session `id`, created if it does not exist.
    pub fn get_or_create(&mut self, id: &str, now: Instant) -> Result<&mut Session, TableFull> {
        if !self.sessions.contains_key(id) {
            if self.sessions.len() >= self.max_sessions {
                return Err(TableFull);
            }
            let created_at = Stamp::now();
            self.pending.push(Change::Created {
                id: id.to_owned(),
                at: created_at.to_rfc3339(),
            });
            self.insert(id, created_at, now);
        }
        self.sessions.get_mut(id).ok_or(TableFull)
    }

    fn insert(&mut self, id: &str, created_at: Stamp, now: Instant) {
        let ordinal = self.next_ordinal;
        self.next_ordinal += 1;
        let session = Session::new(created_at, ordinal, now);
        self.sessions.insert(id, session);
    }

    /// Takes session `id` out of the directory, moving any walk that
    /// stands on it to the next session.
    fn unlink(&mut self, id: &str) -> Option<Session> {
        if let Some(slot) = self.sessions.slot_of(id) {
            let next = self.sessions.next_of(slot).map_or(Walk::End, Walk::At);
            for walk in [self.sweep_cursor.as_mut(), Some(&mut self.compaction_walk)]
                .into_iter()
                .flatten()
            {
                if *walk == Walk::At(slot) {
                    *walk = next;
                }
            }
        }
        self.sessions.remove(id)
    }

    /// Appends `messages` to session `id`'s history, journaled first (with
    /// every change before it): Err when the journal cannot take them, and
    /// then the history is unchanged.
    pub fn append(
        &mut self,
        id: &str,
        messages: Vec<String>,
        sink: &mut dyn Sink,
    ) -> Result<(), String> {
        self.end_turn(id, messages, None, None, sink)
    }

    /// What a turn leaves in session `id`, journaled in one write (with
    /// every change before it), all or nothing: `messages` appended, after
    /// the history is cut to `replace_from` messages when given (the
    /// agent's own account replaces what was recorded of the turn), and
    /// the tool calls it leaves waiting for approval. Err: the journal
    /// cannot take them, and the session is unchanged.
    pub fn end_turn(
        &mut self,
        id: &str,
        messages: Vec<String>,
        replace_from: Option<usize>,
        approvals: Option<Vec<PendingCall>>,
        sink: &mut dyn Sink,
    ) -> Result<(), String> {
        // Pending changes (a creation, a `seq` reservation) go with the
        // messages, in one write.
        self.pending.push(Change::Messages {
            id: id.to_owned(),
            messages,
            replace_from: replace_from.map(|n| n as u64),
        });
        if let Some(calls) = approvals {
            self.pending.push(Change::Approvals {
                id: id.to_owned(),
                calls,
            });
        }
        let saved = self.persist_pending(sink)?;
        for change in saved {
            match change {
                Change::Messages {
                    id: of,
                    messages,
                    replace_from,
                } if of == id => self.apply_messages(id, messages, replace_from),
                Change::Approvals { id: of, calls } if of == id => {
                    if let Some(s) = self.sessions.get_mut(id) {
                        s.approvals = calls;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Takes session `id`'s pending approvals (a person decided) for the
    /// turn that resumes with them. Not journaled here: the resumed turn's
    /// end journals the clear with its messages (see [`end_turn`](Self::end_turn)),
    /// so a crash before that leaves the calls pending, to be decided
    /// again, rather than a history ending in calls nobody answers.
    pub fn take_approvals(&mut self, id: &str) -> Vec<PendingCall> {
        self.sessions
            .get_mut(id)
            .map(|s| std::mem::take(&mut s.approvals))
            .unwrap_or_default()
    }

    /// Drops a session that was never saved (its creation could not be
    /// journaled): no record of it is written.
    pub fn forget(&mut self, id: &str) {
        self.unlink(id);
    }

    /// Removes the session; its subscribers stay attached to the id.
    pub fn remove(&mut self, id: &str) -> Option<Session> {
        let session = self.unlink(id)?;
        self.journal_live = self.journal_live.saturating_sub(session.journal_bytes);
        self.pending.push(Change::Deleted { id: id.to_owned() });
        Some(session)
    }

    pub fn info_json(&self, id: &str) -> Option<Vec<u8>> {
        let s = self.sessions.get(id)?;
        serde_json::to_vec(&info(id, s)).ok()
    }

    /// `[SessionInfo, ...]` in creation order.
    pub fn list_json(&self) -> Vec<u8> {
        let list: Vec<SessionInfo> = self
            .sessions
            .order_from(None)
            .filter_map(|slot| self.sessions.at(slot).map(|(id, s)| info(id, s)))
            .collect();
        serde_json::to_vec(&list).unwrap_or_else(|_| b"[]".to_vec())
    }

    /// The whole history body in one buffer (tests, small histories); the
    /// response produces it a slice at a time ([`crate::http::body`]).
    /// None: no such session, or its history is not in RAM.
    pub fn history_json(&self, id: &str) -> Option<Vec<u8>> {
        let s = self.sessions.get(id)?;
        Some(crate::http::body::history_json(id, s.messages()?))
    }

    /// Moves a budget of entries if the table is growing (one loop
    /// iteration's share; inserts and removes move some too).
    pub fn maintain(&mut self) {
        self.sessions.step(GROWTH_BUDGET_PER_ITERATION);
    }

    /// Ids of sessions with a turn running or queued.
    pub fn busy_ids(&self) -> Vec<String> {
        self.sessions
            .iter()
            .filter(|(_, s)| s.is_busy())
            .map(|(id, _)| id.to_owned())
            .collect()
    }
}

fn info<'a>(id: &'a str, s: &'a Session) -> SessionInfo<'a> {
    SessionInfo {
        id,
        created_at: s.created_at.to_rfc3339(),
        message_count: s.message_count,
    }
}

/// A stored message as text (they are stored from `String`s: always UTF-8).
pub fn text_of(message: &Bytes) -> String {
    String::from_utf8_lossy(message).into_owned()
}

/// `^[A-Za-z0-9._-]{1,128}$` but not `.` or `..` (which cannot survive in
/// a URL path): the ids a client may name.
pub fn valid_session_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_cold;
