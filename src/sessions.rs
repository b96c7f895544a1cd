//! The session table: sessions in creation order, their history, their
//! `seq` counters, and the WebSocket subscribers of each session id.
//!
//! Owned by [`crate::api::App`] on the reactor thread; nothing here is
//! shared or locked. Subscribers are kept per session *id*, apart from the
//! session itself, because a client stays attached to its id when the
//! session is deleted over REST (its next message creates it again, as in
//! the original server).

use std::collections::{HashMap, VecDeque};

mod cold;
mod map;
mod snapshot;
mod sweep;
pub use cold::{HistoryRead, LoadOutcome, Loaded};
use map::Directory;
use std::time::Instant;

use serde::Serialize;

use bytes::Bytes;

use crate::approvals::PendingCall;
use crate::clock::{self, Stamp};
use crate::events::{Event, EventArena, EventData};
use crate::journal::{Change, Loc, Record, ToAppend};
use crate::sink::{ConnId, Sink};
use crate::turns::Turn;

/// One conversation: its directory entry, always in RAM, and what it holds
/// while in use ([`Hot`]), dropped once it is idle.
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
    ordinal: u64,
    /// The last `seq` given to a broadcast event of this session.
    pub seq: u64,
    /// The journal promises no `seq` up to this was used: after a crash,
    /// numbering resumes above it, so no `seq` is ever given twice.
    seq_reserved: u64,
    /// Bytes of this session's records in the journal (for compaction).
    journal_bytes: u64,
    pub last_activity: Instant,
    /// Messages in the history, resident or not.
    message_count: usize,
    /// Where its last `m` record is, in each of the two journal files (the
    /// journal, and the new file a compaction writes; see
    /// `SessionTable::file`). [`NO_HEAD`]: none yet; [`BROKEN`]: its
    /// records are not chained (an older journal), so its history stays in
    /// RAM until a compaction rewrites it.
    heads: [Loc; 2],
    /// Tool calls waiting for a person's decision (empty: none). While
    /// there are any, no new message is taken.
    approvals: Vec<PendingCall>,
    hot: Option<Box<Hot>>,
}

/// What a session holds only while it is in use.
#[derive(Debug)]
struct Hot {
    /// pydantic-ai `ModelMessage`s, each kept as its JSON text: the history
    /// endpoint splices them without re-serializing. None: in the journal
    /// only (a cold history).
    messages: Option<Vec<Bytes>>,
    /// Recent broadcast events, for `?since=` resume (bounded).
    retained: VecDeque<(u64, Event)>,
    retained_bytes: usize,
    /// Where its broadcast events are written (see [`EventArena`]); made
    /// at the first broadcast.
    arena: Option<EventArena>,
    /// The turn streaming now, if any.
    running: Option<Turn>,
    /// Turns waiting for `running` to finish, in arrival order.
    queue: VecDeque<Turn>,
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
    fn new(created_at: Stamp, ordinal: u64, now: Instant) -> Session {
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

    fn hot(&mut self) -> &mut Hot {
        self.hot.get_or_insert_with(Box::default)
    }

    /// Drops what the session holds in use if none of it is left.
    fn shed(&mut self) {
        if self.hot.as_ref().is_some_and(|h| h.is_idle()) {
            self.hot = None;
        }
    }

    /// The history, each `ModelMessage` as its JSON text; None while it is
    /// in the journal only (see [`SessionTable::want_history`]).
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

/// Capacity of the event scratch buffer kept between broadcasts.
const SCRATCH_KEPT: usize = 64 * 1024;

/// How many `seq` numbers one journal record reserves ahead.
const SEQ_BLOCK: u64 = 1024;

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

    /// Applies an `m` record to session `id`: in RAM when its history is,
    /// else only to its count (the journal holds the messages).
    fn apply_messages(&mut self, id: &str, messages: Vec<String>, replace_from: Option<u64>) {
        let Some(s) = self.sessions.get_mut(id) else {
            return;
        };
        let resident = s.messages().is_some();
        if let Some(from) = replace_from {
            let from = usize::try_from(from).unwrap_or(usize::MAX);
            s.message_count = s.message_count.min(from);
            if let Some(m) = s.hot.as_mut().and_then(|h| h.messages.as_mut()) {
                m.truncate(from);
            }
            // A compaction that had copied this session past the cut got
            // this record too (see `mirrored`): it has the whole history now.
            if let Some((ordinal, done)) = self.compaction_partial {
                if ordinal == s.ordinal && done > from {
                    self.compaction_partial = Some((ordinal, from + messages.len()));
                }
            }
        }
        s.message_count += messages.len();
        // A cold history stays cold: the record is its newest link.
        if resident || s.message_count == messages.len() {
            let kept = s.hot().messages.get_or_insert_with(Vec::new);
            kept.extend(messages.into_iter().map(Bytes::from));
        }
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

    /// Hands pending changes (creations, deletions, `seq` reservations) to
    /// the journal, in one write. Err: why they could not be saved (the
    /// journal has logged it; the in-memory state stays as it is).
    pub fn flush_changes(&mut self, sink: &mut dyn Sink) -> Result<(), String> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.persist_pending(sink).map(drop)
    }

    /// Journals the pending changes, all or none; returns them. An `m`
    /// record is linked to its session's previous one, in the journal and
    /// (mirrored) in a compaction's new file, and becomes the session's
    /// head in each.
    fn persist_pending(&mut self, sink: &mut dyn Sink) -> Result<Vec<Change>, String> {
        let changes = std::mem::take(&mut self.pending);
        let (file, other) = (self.file, 1 - self.file);
        let batch: Vec<ToAppend> = changes
            .iter()
            .map(|change| {
                let mirror = self.mirrored(change);
                let heads = match change {
                    Change::Messages { id, .. } => self.sessions.get(id).map(|s| s.heads),
                    _ => None,
                };
                let link = |head: Loc| (head.len > 0).then_some(head);
                ToAppend {
                    change,
                    prev: heads.and_then(|h| link(h[file])),
                    mirror,
                    mirror_prev: heads.and_then(|h| link(h[other])),
                }
            })
            .collect();
        let appended = sink.persist(&batch)?;
        for (change, at) in changes.iter().zip(appended) {
            self.account(change, u64::from(at.at.len));
            if let Change::Messages { id, .. } = change {
                if let Some(s) = self.sessions.get_mut(id) {
                    // Journaled (an in-memory table has no records) and
                    // chained (an older journal's history stays in RAM).
                    if at.at.len > 0 && s.heads[file] != BROKEN {
                        s.heads[file] = at.at;
                    }
                    if let Some(m) = at.mirrored_at {
                        s.heads[other] = m;
                    }
                }
            }
        }
        Ok(changes)
    }

    /// Drops a session that was never saved (its creation could not be
    /// journaled): no record of it is written.
    pub fn forget(&mut self, id: &str) {
        self.unlink(id);
    }

    /// Counts a record's `bytes` towards its session's live journal size.
    fn account(&mut self, change: &Change, bytes: u64) {
        match change {
            Change::Deleted { .. } => {}
            Change::Seq { .. } => {}
            _ => {
                if let Some(s) = self.sessions.get_mut(change.id()) {
                    s.journal_bytes += bytes;
                    self.journal_live += bytes;
                }
            }
        }
    }

    /// Bytes of journal that a compaction would keep (roughly).
    pub fn journal_live_bytes(&self) -> u64 {
        self.journal_live + 64 * self.sessions.len() as u64
    }

    /// Rebuilds state from the journal's records (at start), in file
    /// order from offset 0. Histories whose records are chained start
    /// cold: only their directory entries stay in RAM.
    pub fn restore(&mut self, records: Vec<Record>, now: Instant) {
        let mut offset = 0;
        for Record { change, size, prev } in records {
            let loc = Loc {
                offset,
                len: u32::try_from(size).unwrap_or(0),
            };
            offset += size;
            match change {
                Change::Created { id, at } => {
                    self.unlink(&id);
                    let stamp = Stamp::parse(&at).unwrap_or_else(|| {
                        // Only this server writes the journal, in this
                        // format; anything else is shown as the epoch.
                        crate::warn!(
                            "session {id}: created_at {at:?} is not a timestamp this server writes"
                        );
                        Stamp::of(std::time::UNIX_EPOCH)
                    });
                    self.insert(&id, stamp, now);
                    if let Some(s) = self.sessions.get_mut(&id) {
                        s.journal_bytes = size;
                    }
                }
                Change::Messages {
                    id,
                    messages,
                    replace_from,
                } => {
                    if let Some(s) = self.sessions.get_mut(&id) {
                        s.journal_bytes += size;
                        let head = &mut s.heads[0];
                        let linked = prev.unwrap_or(NO_HEAD) == *head;
                        *head = if linked && *head != BROKEN {
                            loc
                        } else {
                            BROKEN
                        };
                    }
                    self.apply_messages(&id, messages, replace_from);
                }
                Change::Approvals { id, calls } => {
                    if let Some(s) = self.sessions.get_mut(&id) {
                        s.approvals = calls;
                        s.journal_bytes += size;
                    }
                }
                Change::Seq { id, seq } => {
                    if let Some(s) = self.sessions.get_mut(&id) {
                        // The last record wins: a reservation after a crash
                        // (numbering resumes above anything used), or the
                        // exact value a clean shutdown wrote.
                        s.seq = seq;
                        s.seq_reserved = seq;
                    }
                }
                Change::Deleted { id } => {
                    self.unlink(&id);
                }
            }
        }
        self.file = 0;
        self.journal_live = self.sessions.values().map(|s| s.journal_bytes).sum();
        if self.retention.history_idle.is_some() {
            for s in self.sessions.values_mut() {
                cold::evict(s, 0);
            }
        }
    }

    /// Records every session's exact `seq`, so a clean restart continues
    /// the numbering without the gap a crash leaves.
    pub fn record_exact_seqs(&mut self) {
        for slot in self.sessions.order_from(None) {
            if let Some((id, s)) = self.sessions.at(slot) {
                if s.seq_reserved > s.seq {
                    self.pending.push(Change::Seq {
                        id: id.to_owned(),
                        seq: s.seq,
                    });
                }
            }
        }
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

    pub fn subscribe(&mut self, id: &str, conn: ConnId) {
        self.subscribers
            .entry(id.to_owned())
            .or_default()
            .push(conn);
    }

    pub fn unsubscribe(&mut self, id: &str, conn: ConnId) {
        if let Some(list) = self.subscribers.get_mut(id) {
            list.retain(|c| *c != conn);
            if list.is_empty() {
                self.subscribers.remove(id);
            }
        }
    }

    pub fn subscribers(&self, id: &str) -> &[ConnId] {
        self.subscribers.get(id).map_or(&[], Vec::as_slice)
    }

    /// Gives the next `seq` of session `id` to an event, serializes it once
    /// and queues the same bytes to every subscriber. Returns the `seq`.
    pub fn broadcast(
        &mut self,
        id: &str,
        op: &str,
        data: impl EventData,
        sink: &mut dyn Sink,
    ) -> Option<u64> {
        self.broadcast_each_to(id, op, std::iter::once(data), None, sink)
    }

    /// [`broadcast`](Self::broadcast), handing the event to `also` too: the
    /// AG-UI run a turn's events stream to, which is not a subscriber.
    pub fn broadcast_to(
        &mut self,
        id: &str,
        op: &str,
        data: impl EventData,
        also: Option<ConnId>,
        sink: &mut dyn Sink,
    ) -> Option<u64> {
        self.broadcast_each_to(id, op, std::iter::once(data), also, sink)
    }

    /// [`broadcast`](Self::broadcast) of several events of one kind, in
    /// order, with one lookup of the session and its subscribers for all of
    /// them (a run of streamed tokens), handing each to `also` too (see
    /// [`broadcast_to`](Self::broadcast_to)). Returns the last `seq`.
    pub fn broadcast_each_to<D: EventData>(
        &mut self,
        id: &str,
        op: &str,
        data: impl IntoIterator<Item = D>,
        also: Option<ConnId>,
        sink: &mut dyn Sink,
    ) -> Option<u64> {
        let session = self.sessions.get_mut(id)?;
        let subscribers = self.subscribers.get(id).map_or(&[][..], Vec::as_slice);
        let mut last = None;
        for data in data {
            session.seq += 1;
            let seq = session.seq;
            let reserved = seq > session.seq_reserved;
            if reserved {
                session.seq_reserved = seq + SEQ_BLOCK;
                self.pending.push(Change::Seq {
                    id: id.to_owned(),
                    seq: session.seq_reserved,
                });
            }
            if op == "token" {
                self.metrics.tokens += 1;
            }
            let hot = session.hot.get_or_insert_with(Box::default);
            // A quarter of the retention budget at most goes to the chunk
            // being filled (it counts towards the budget).
            let arena = hot
                .arena
                .get_or_insert_with(|| EventArena::capped(self.retention.bytes / 4));
            let mut event = Event::new_in(arena, &mut self.scratch, op, data, Some(seq));
            // A turn's end, a decision on approvals, and any `seq` beyond
            // what the journal promised, go out only once the journal has
            // them (no `seq` is ever reused).
            if reserved
                || matches!(
                    op,
                    "done" | "error" | "approval_required" | "approval_resolved"
                )
            {
                event = event.acknowledging();
            }
            hot.retained_bytes += event.size();
            hot.retained.push_back((seq, event.clone()));
            // The chunk being filled is pinned whatever is retained: it
            // counts (a session holds at most one more partly used chunk,
            // the oldest event's, see `EventArena`).
            let pinned = arena.chunk_capacity();
            while hot.retained.len() > self.retention.events
                || (hot.retained_bytes + pinned > self.retention.bytes && hot.retained.len() > 1)
            {
                if let Some((_, old)) = hot.retained.pop_front() {
                    hot.retained_bytes -= old.size();
                }
            }
            for &conn in subscribers.iter().chain(also.as_ref()) {
                sink.deliver(conn, &event);
            }
            last = Some(seq);
        }
        if self.scratch.capacity() > SCRATCH_KEPT {
            // One huge event must not pin its size for the life of the table.
            self.scratch = Vec::new();
        }
        last
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
