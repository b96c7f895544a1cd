//! The session table: sessions in creation order, their history, their
//! `seq` counters, and the WebSocket subscribers of each session id.
//!
//! Owned by [`crate::api::App`] on the reactor thread; nothing here is
//! shared or locked. Subscribers are kept per session *id*, apart from the
//! session itself, because a client stays attached to its id when the
//! session is deleted over REST (its next message creates it again, as in
//! the original server).

use std::collections::{BTreeMap, HashMap, VecDeque};

mod map;
mod snapshot;
mod sweep;
use map::GrowingMap;
use std::time::Instant;

use serde::Serialize;

use bytes::Bytes;

use crate::approvals::PendingCall;
use crate::clock;
use crate::events::{Event, EventArena, EventData};
use crate::journal::Change;
use crate::sink::{ConnId, Sink};
use crate::turns::Turn;

/// One conversation.
#[derive(Debug)]
pub struct Session {
    pub created_at: String,
    /// Position in creation order (the listing order).
    ordinal: u64,
    /// pydantic-ai `ModelMessage`s, each kept as its JSON text: the history
    /// endpoint splices them without re-serializing.
    messages: Vec<Bytes>,
    /// The last `seq` given to a broadcast event of this session.
    pub seq: u64,
    /// The journal promises no `seq` up to this was used: after a crash,
    /// numbering resumes above it, so no `seq` is ever given twice.
    seq_reserved: u64,
    /// Recent broadcast events, for `?since=` resume (bounded).
    retained: VecDeque<(u64, Event)>,
    retained_bytes: usize,
    /// Where its broadcast events are written (see [`EventArena`]).
    arena: EventArena,
    /// Bytes of this session's records in the journal (for compaction).
    journal_bytes: u64,
    pub last_activity: Instant,
    /// The turn streaming now, if any.
    pub running: Option<Turn>,
    /// Turns waiting for `running` to finish, in arrival order.
    pub queue: VecDeque<Turn>,
    /// Tool calls waiting for a person's decision (empty: none). While
    /// there are any, no new message is taken.
    approvals: Vec<PendingCall>,
}

impl Session {
    /// The history, each `ModelMessage` as its JSON text.
    pub fn messages(&self) -> &[Bytes] {
        &self.messages
    }

    pub fn message_count(&self) -> usize {
        self.messages.len()
    }

    /// The tool calls waiting for approval (empty: none).
    pub fn pending_approvals(&self) -> &[PendingCall] {
        &self.approvals
    }

    /// Drops the retained events and the arena chunk they were cut from:
    /// RAM a session without clients keeps for a resume nobody may ask
    /// for. Returns whether there was anything to drop.
    pub fn drop_retained(&mut self) -> bool {
        let had = !self.retained.is_empty() || self.arena.chunk_capacity() > 0;
        self.retained = VecDeque::new();
        self.retained_bytes = 0;
        self.arena.clear();
        had
    }

    /// The events after `since`, or None when the client must resync:
    /// some of them are no longer retained, or `since` is above any `seq`
    /// this session gave (the client saw another incarnation of it).
    pub fn events_after(&self, since: u64) -> Option<impl Iterator<Item = &Event>> {
        let first = self.retained.front().map_or(self.seq + 1, |(seq, _)| *seq);
        if since > self.seq || (since < self.seq && since + 1 < first) {
            return None;
        }
        Some(
            self.retained
                .iter()
                .filter(move |(seq, _)| *seq > since)
                .map(|(_, f)| f),
        )
    }
}

/// `SessionInfo` of the contract.
#[derive(Serialize)]
pub struct SessionInfo<'a> {
    pub id: &'a str,
    pub created_at: &'a str,
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
}

/// Creating a session would pass `--max-sessions`.
#[derive(Debug, PartialEq, Eq)]
pub struct TableFull;

#[derive(Debug)]
pub struct SessionTable {
    sessions: GrowingMap<Session>,
    order: BTreeMap<u64, String>,
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
    /// Compaction under way: sessions with an ordinal below this are in the
    /// new file.
    compaction_cursor: Option<u64>,
    /// A session partly written: its ordinal and how many messages.
    compaction_partial: Option<(u64, usize)>,
    /// Where the TTL sweep under way goes on (an ordinal), if one is.
    sweep_cursor: Option<u64>,
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
            },
        )
    }

    pub fn with_retention(max_sessions: usize, retention: Retention) -> Self {
        SessionTable {
            sessions: GrowingMap::default(),
            order: BTreeMap::new(),
            next_ordinal: 0,
            subscribers: HashMap::new(),
            scratch: Vec::new(),
            max_sessions,
            retention,
            pending: Vec::new(),
            journal_live: 0,
            metrics: Default::default(),
            sweep_cursor: None,
            compaction_cursor: None,
            compaction_partial: None,
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
            let created_at = clock::now_rfc3339();
            self.pending.push(Change::Created {
                id: id.to_owned(),
                at: created_at.clone(),
            });
            self.insert(id, created_at, now);
        }
        self.sessions.get_mut(id).ok_or(TableFull)
    }

    fn insert(&mut self, id: &str, created_at: String, now: Instant) {
        let ordinal = self.next_ordinal;
        self.next_ordinal += 1;
        self.order.insert(ordinal, id.to_owned());
        let session = Session {
            created_at,
            ordinal,
            messages: Vec::new(),
            seq: 0,
            seq_reserved: 0,
            retained: VecDeque::new(),
            retained_bytes: 0,
            // A quarter of the retention budget at most goes to the chunk
            // being filled (it counts towards the budget).
            arena: EventArena::capped(self.retention.bytes / 4),
            journal_bytes: 0,
            last_activity: now,
            running: None,
            queue: VecDeque::new(),
            approvals: Vec::new(),
        };
        self.sessions.insert(id.to_owned(), session, &self.order);
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

    fn apply_messages(&mut self, id: &str, messages: Vec<String>, replace_from: Option<u64>) {
        let Some(s) = self.sessions.get_mut(id) else {
            return;
        };
        if let Some(from) = replace_from {
            let from = usize::try_from(from).unwrap_or(usize::MAX);
            s.messages.truncate(from);
            // A compaction that had copied this session past the cut got
            // this record too (see `mirrored`): it has the whole history now.
            if let Some((ordinal, done)) = self.compaction_partial {
                if ordinal == s.ordinal && done > from {
                    self.compaction_partial = Some((ordinal, from + messages.len()));
                }
            }
        }
        s.messages.extend(messages.into_iter().map(Bytes::from));
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

    /// Journals the pending changes, all or none; returns them.
    fn persist_pending(&mut self, sink: &mut dyn Sink) -> Result<Vec<Change>, String> {
        let changes = std::mem::take(&mut self.pending);
        let batch: Vec<(&Change, bool)> = changes.iter().map(|c| (c, self.mirrored(c))).collect();
        let sizes = sink.persist(&batch)?;
        for (change, bytes) in changes.iter().zip(sizes) {
            self.account(change, bytes);
        }
        Ok(changes)
    }

    /// Drops a session that was never saved (its creation could not be
    /// journaled): no record of it is written.
    pub fn forget(&mut self, id: &str) {
        if let Some(session) = self.sessions.remove(id) {
            self.order.remove(&session.ordinal);
        }
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

    /// Rebuilds state from journal records (at start), each with its size
    /// in the journal.
    pub fn restore(&mut self, records: Vec<(Change, u64)>, now: Instant) {
        for (change, bytes) in records {
            match change {
                Change::Created { id, at } => {
                    if let Some(old) = self.sessions.remove(&id) {
                        self.order.remove(&old.ordinal);
                    }
                    self.insert(&id, at, now);
                    if let Some(s) = self.sessions.get_mut(&id) {
                        s.journal_bytes = bytes;
                    }
                }
                Change::Messages {
                    id,
                    messages,
                    replace_from,
                } => {
                    self.apply_messages(&id, messages, replace_from);
                    if let Some(s) = self.sessions.get_mut(&id) {
                        s.journal_bytes += bytes;
                    }
                }
                Change::Approvals { id, calls } => {
                    if let Some(s) = self.sessions.get_mut(&id) {
                        s.approvals = calls;
                        s.journal_bytes += bytes;
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
                    if let Some(old) = self.sessions.remove(&id) {
                        self.order.remove(&old.ordinal);
                    }
                }
            }
        }
        self.journal_live = self.sessions.values().map(|s| s.journal_bytes).sum();
    }

    /// Records every session's exact `seq`, so a clean restart continues
    /// the numbering without the gap a crash leaves.
    pub fn record_exact_seqs(&mut self) {
        for id in self.order.values() {
            if let Some(s) = self.sessions.get(id) {
                if s.seq_reserved > s.seq {
                    self.pending.push(Change::Seq {
                        id: id.clone(),
                        seq: s.seq,
                    });
                }
            }
        }
    }

    /// Removes the session; its subscribers stay attached to the id.
    pub fn remove(&mut self, id: &str) -> Option<Session> {
        let session = self.sessions.remove(id)?;
        self.order.remove(&session.ordinal);
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
            .order
            .values()
            .filter_map(|id| self.sessions.get(id).map(|s| info(id, s)))
            .collect();
        serde_json::to_vec(&list).unwrap_or_else(|_| b"[]".to_vec())
    }

    /// The whole history body in one buffer (tests, small histories); the
    /// response produces it a slice at a time ([`crate::http::body`]).
    pub fn history_json(&self, id: &str) -> Option<Vec<u8>> {
        let s = self.sessions.get(id)?;
        Some(crate::http::body::history_json(id, &s.messages))
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
            let mut event =
                Event::new_in(&mut session.arena, &mut self.scratch, op, data, Some(seq));
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
            session.retained_bytes += event.size();
            session.retained.push_back((seq, event.clone()));
            // The chunk being filled is pinned whatever is retained: it
            // counts (a session holds at most one more partly used chunk,
            // the oldest event's, see `EventArena`).
            let pinned = session.arena.chunk_capacity();
            while session.retained.len() > self.retention.events
                || (session.retained_bytes + pinned > self.retention.bytes
                    && session.retained.len() > 1)
            {
                if let Some((_, old)) = session.retained.pop_front() {
                    session.retained_bytes -= old.size();
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
        self.sessions
            .step_for(&self.order, GROWTH_BUDGET_PER_ITERATION);
    }

    /// Ids of sessions with a turn running or queued.
    pub fn busy_ids(&self) -> Vec<String> {
        self.sessions
            .iter()
            .filter(|(_, s)| s.running.is_some() || !s.queue.is_empty())
            .map(|(id, _)| id.clone())
            .collect()
    }
}

fn info<'a>(id: &'a str, s: &'a Session) -> SessionInfo<'a> {
    SessionInfo {
        id,
        created_at: &s.created_at,
        message_count: s.messages.len(),
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
