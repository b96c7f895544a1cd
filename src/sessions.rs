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
use map::GrowingMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use bytes::Bytes;

use crate::approvals::PendingCall;
use crate::clock;
use crate::events::{Event, EventArena, EventData};
use crate::journal::{self, Change};
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

/// Sessions moved to the grown table per loop iteration (32 bytes each).
const GROWTH_STEP_PER_ITERATION: usize = 1024;

/// Capacity of the event scratch buffer kept between broadcasts.
const SCRATCH_KEPT: usize = 64 * 1024;

/// How many `seq` numbers one journal record reserves ahead.
const SEQ_BLOCK: u64 = 1024;

/// How much broadcast history each session keeps for resume.
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    pub events: usize,
    pub bytes: usize,
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
            arena: EventArena::default(),
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

    /// Clears session `id`'s pending approvals (a person decided): journaled
    /// with the next write, like a creation.
    pub fn clear_approvals(&mut self, id: &str) {
        if let Some(s) = self.sessions.get_mut(id) {
            if !s.approvals.is_empty() {
                s.approvals.clear();
                self.pending.push(Change::Approvals {
                    id: id.to_owned(),
                    calls: Vec::new(),
                });
            }
        }
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

    /// Compaction starts: sessions are written out a step at a time, in
    /// creation order (see [`snapshot_step`](Self::snapshot_step)).
    pub fn begin_snapshot(&mut self) {
        self.compaction_cursor = Some(0);
        self.compaction_partial = None;
    }

    /// The next sessions' records, about `budget` bytes of them; true when
    /// every session has been written. From then on, and for the sessions
    /// already written, each new record is mirrored (`mirrored`):
    /// the new file gets it too.
    pub fn snapshot_step(&mut self, budget: usize) -> (Vec<u8>, bool) {
        let Some(cursor) = self.compaction_cursor else {
            return (Vec::new(), true);
        };
        let mut out = Vec::new();
        // Where this step stops: a session (ordinal), and how many of its
        // messages are already written (None: not even its creation).
        let mut partial = self.compaction_partial.take();
        let mut next = None;
        for (&ordinal, id) in self.order.range(cursor..) {
            if out.len() >= budget {
                next = Some(ordinal);
                break;
            }
            let Some(s) = self.sessions.get(id) else {
                continue;
            };
            let start = match partial.take().filter(|&(o, _)| o == ordinal) {
                Some((_, done)) => done,
                None => {
                    out.extend(journal::encode(&Change::Created {
                        id: id.clone(),
                        at: s.created_at.clone(),
                    }));
                    0
                }
            };
            // A long history goes in several records, a budget at a time
            // (replay appends them in order).
            let mut end = start;
            let mut size = 0;
            while end < s.messages.len() && (end == start || out.len() + size < budget) {
                size += s.messages[end].len();
                end += 1;
            }
            if end > start {
                out.extend(journal::encode(&Change::Messages {
                    id: id.clone(),
                    messages: s.messages[start..end].iter().map(text_of).collect(),
                    replace_from: None,
                }));
            }
            if end < s.messages.len() {
                // The rest of this session next step; it is not copied yet.
                self.compaction_partial = Some((ordinal, end));
                next = Some(ordinal);
                break;
            }
            if s.seq_reserved > 0 {
                out.extend(journal::encode(&Change::Seq {
                    id: id.clone(),
                    seq: s.seq_reserved,
                }));
            }
            if !s.approvals.is_empty() {
                out.extend(journal::encode(&Change::Approvals {
                    id: id.clone(),
                    calls: s.approvals.clone(),
                }));
            }
        }
        // Done: every session, including ones made from now on, is mirrored.
        self.compaction_cursor = Some(next.unwrap_or(u64::MAX));
        (out, next.is_none())
    }

    /// Compaction is over (done or given up).
    pub fn end_snapshot(&mut self) {
        self.compaction_cursor = None;
        self.compaction_partial = None;
    }

    /// Whether a record must also go to the file a compaction is writing:
    /// its session was already written there (a deleted session's record
    /// goes too: replaying a deletion of nothing is harmless).
    fn mirrored(&self, change: &Change) -> bool {
        let Some(cursor) = self.compaction_cursor else {
            return false;
        };
        let Some(s) = self.sessions.get(change.id()) else {
            return true;
        };
        // A cut into the part of a history the new file already holds
        // must reach it too (`apply_messages` then moves the copy on).
        if let (
            Change::Messages {
                replace_from: Some(from),
                ..
            },
            Some((ordinal, done)),
        ) = (change, self.compaction_partial)
        {
            if ordinal == s.ordinal && (done as u64) > *from {
                return true;
            }
        }
        s.ordinal < cursor
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

    /// `{"session_id": id, "messages": [...]}` as a response body: the
    /// start, then parts to queue after it. Long messages are not copied
    /// (each is shared as it is stored); short ones are gathered into
    /// chunks, so a history of many small messages is not many tiny parts.
    /// The work is proportional to the number of messages, never to the
    /// bytes of a long one.
    pub fn history_parts(&self, id: &str) -> Option<(Vec<u8>, Vec<Bytes>)> {
        let s = self.sessions.get(id)?;
        let mut start = Vec::with_capacity(64);
        start.extend_from_slice(b"{\"session_id\":");
        let _ = serde_json::to_writer(&mut start, id);
        start.extend_from_slice(b",\"messages\":[");
        let mut parts = Vec::new();
        let mut chunk = Vec::new();
        for (i, m) in s.messages.iter().enumerate() {
            if i > 0 {
                chunk.push(b',');
            }
            if m.len() >= SHARE_FROM {
                if !chunk.is_empty() {
                    parts.push(Bytes::from(std::mem::take(&mut chunk)));
                }
                parts.push(m.clone());
            } else {
                chunk.extend_from_slice(m);
                if chunk.len() >= CHUNK {
                    parts.push(Bytes::from(std::mem::take(&mut chunk)));
                }
            }
        }
        chunk.extend_from_slice(b"]}");
        parts.push(Bytes::from(chunk));
        Some((start, parts))
    }

    /// The whole history body in one buffer (tests, small histories).
    pub fn history_json(&self, id: &str) -> Option<Vec<u8>> {
        let (mut out, parts) = self.history_parts(id)?;
        for p in parts {
            out.extend_from_slice(&p);
        }
        Some(out)
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
    /// them (a run of streamed tokens). Returns the last `seq`.
    pub fn broadcast_each<D: EventData>(
        &mut self,
        id: &str,
        op: &str,
        data: impl IntoIterator<Item = D>,
        sink: &mut dyn Sink,
    ) -> Option<u64> {
        self.broadcast_each_to(id, op, data, None, sink)
    }

    /// [`broadcast_each`](Self::broadcast_each), handing each event to
    /// `also` too (see [`broadcast_to`](Self::broadcast_to)).
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
            while session.retained.len() > self.retention.events
                || (session.retained_bytes > self.retention.bytes && session.retained.len() > 1)
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
        self.sessions.step(&self.order, GROWTH_STEP_PER_ITERATION);
    }

    /// Ids of sessions with a turn running or queued.
    pub fn busy_ids(&self) -> Vec<String> {
        self.sessions
            .iter()
            .filter(|(_, s)| s.running.is_some() || !s.queue.is_empty())
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// One step of the TTL sweep: looks at up to `budget` sessions from
    /// where the last step stopped (in creation order) and removes those
    /// with no subscriber, no turn and no activity for `ttl`. Returns how
    /// many went and whether the pass over every session is complete.
    pub fn sweep_step(&mut self, now: Instant, ttl: Duration, budget: usize) -> (usize, bool) {
        let from = self.sweep_cursor.unwrap_or(0);
        let mut stale = Vec::new();
        let mut next = None;
        for (i, (&ordinal, id)) in self.order.range(from..).enumerate() {
            if i == budget {
                next = Some(ordinal);
                break;
            }
            let Some(s) = self.sessions.get(id) else {
                continue;
            };
            if s.running.is_none()
                && s.queue.is_empty()
                && !self.subscribers.contains_key(id.as_str())
                && now.saturating_duration_since(s.last_activity) >= ttl
            {
                stale.push(id.clone());
            }
        }
        for id in &stale {
            self.remove(id);
        }
        self.sweep_cursor = next;
        (stale.len(), next.is_none())
    }

    /// A whole TTL sweep at once (tests, small tables).
    pub fn sweep(&mut self, now: Instant, ttl: Duration) -> usize {
        let mut removed = 0;
        loop {
            let (n, done) = self.sweep_step(now, ttl, usize::MAX);
            removed += n;
            if done {
                return removed;
            }
        }
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

/// Messages at least this long are shared, not copied, into a history
/// response.
const SHARE_FROM: usize = 16 * 1024;
/// Short messages are gathered into parts of about this size.
const CHUNK: usize = 64 * 1024;

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
mod tests {
    use super::*;
    use crate::events;
    use crate::sink::Recorder;

    #[test]
    fn ids() {
        assert!(valid_session_id("abc-DEF_1.2"));
        assert!(valid_session_id(&"a".repeat(128)));
        assert!(!valid_session_id(&"a".repeat(129)));
        assert!(!valid_session_id(""));
        assert!(!valid_session_id("a b"));
        assert!(!valid_session_id("a/b"));
        assert!(!valid_session_id("é"));
        assert!(!valid_session_id("."));
        assert!(!valid_session_id(".."));
        assert!(valid_session_id("..."));
        assert!(valid_session_id(".a"));
    }

    #[test]
    fn listing_keeps_creation_order_after_deletes() {
        let now = Instant::now();
        let mut t = SessionTable::new(10);
        for id in ["c", "a", "b"] {
            t.get_or_create(id, now).unwrap();
        }
        t.remove("a");
        t.get_or_create("a", now).unwrap();
        let list: serde_json::Value = serde_json::from_slice(&t.list_json()).unwrap();
        let ids: Vec<&str> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["c", "b", "a"]);
    }

    #[test]
    fn table_is_bounded() {
        let now = Instant::now();
        let mut t = SessionTable::new(2);
        t.create(now).unwrap();
        t.get_or_create("x", now).unwrap();
        assert_eq!(t.create(now), Err(TableFull));
        assert!(
            t.get_or_create("x", now).is_ok(),
            "an existing session is not a new one"
        );
    }

    #[test]
    fn broadcast_serializes_once_and_numbers_events() {
        let now = Instant::now();
        let mut t = SessionTable::new(10);
        t.get_or_create("s", now).unwrap();
        t.get_or_create("other", now).unwrap();
        let (a, b, c) = (
            ConnId { slot: 1, serial: 1 },
            ConnId { slot: 2, serial: 2 },
            ConnId { slot: 3, serial: 3 },
        );
        t.subscribe("s", a);
        t.subscribe("s", b);
        t.subscribe("other", c);
        let mut sink = Recorder::default();
        assert_eq!(
            t.broadcast("s", "token", events::Content { content: "x" }, &mut sink),
            Some(1)
        );
        assert_eq!(
            t.broadcast("s", "done", events::Content { content: "x" }, &mut sink),
            Some(2)
        );
        assert_eq!(sink.sent.len(), 4);
        // The same allocation went to both clients.
        assert_eq!(sink.sent[0].1.as_ptr(), sink.sent[1].1.as_ptr());
        assert_eq!(sink.texts_to(a), sink.texts_to(b));
        assert!(sink.texts_to(c).is_empty());
        assert!(sink.texts_to(a)[1].ends_with(r#","seq":2}"#));
        t.unsubscribe("s", a);
        assert_eq!(t.subscribers("s"), &[b]);
    }

    #[test]
    fn a_history_shares_long_messages_and_gathers_short_ones() {
        let now = Instant::now();
        let mut t = SessionTable::new(10);
        t.get_or_create("h", now).unwrap();
        let long = format!("{{\"kind\":\"request\",\"x\":\"{}\"}}", "y".repeat(100_000));
        let mut sink = Recorder::default();
        let short = |i: usize| format!("{{\"n\":{i}}}");
        let mut messages: Vec<String> = (0..5).map(short).collect();
        messages.push(long.clone());
        messages.extend((5..8).map(short));
        t.append("h", messages.clone(), &mut sink).unwrap();
        let (start, parts) = t.history_parts("h").unwrap();
        // Short messages before and after, gathered; the long one shared.
        assert_eq!(parts.len(), 3);
        let stored = &t.get("h").unwrap().messages()[5];
        assert_eq!(parts[1].as_ptr(), stored.as_ptr());
        let mut body = start;
        for p in &parts {
            body.extend_from_slice(p);
        }
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["session_id"], "h");
        let got: Vec<String> = v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.to_string())
            .collect();
        assert_eq!(got, messages);
        assert_eq!(t.history_json("h").unwrap(), body);
    }

    #[test]
    fn a_snapshot_in_small_steps_restores_what_the_table_holds() {
        let now = Instant::now();
        let mut t = SessionTable::new(100);
        let mut sink = Recorder::default();
        for i in 0..5 {
            let id = format!("s{i}");
            t.get_or_create(&id, now).unwrap();
            let messages = (0..4).map(|m| format!("{{\"m\":\"{id}-{m}\"}}")).collect();
            t.append(&id, messages, &mut sink).unwrap();
        }
        t.get_or_create("empty", now).unwrap();
        t.broadcast("s1", "token", events::Content { content: "x" }, &mut sink);
        t.begin_snapshot();
        let mut records = Vec::new();
        let mut steps = 0;
        loop {
            // A budget of one byte: one session's creation, or one message.
            let (bytes, done) = t.snapshot_step(1);
            records.extend(bytes);
            steps += 1;
            if steps == 3 {
                // Mid-snapshot: a message for a session partly written.
                t.append("s0", vec![r#"{"m":"late"}"#.into()], &mut sink)
                    .unwrap();
            }
            if done {
                break;
            }
        }
        t.end_snapshot();
        assert!(steps > 20, "{steps} steps");
        let replayed = journal::replay(&records).unwrap();
        let mut restored = SessionTable::new(100);
        restored.restore(replayed.changes, now);
        assert_eq!(restored.len(), 6);
        for id in ["s0", "s1", "s2", "s3", "s4", "empty"] {
            assert_eq!(restored.history_json(id), t.history_json(id), "{id}");
        }
        assert_eq!(restored.get("s0").unwrap().message_count(), 5);
        assert_eq!(
            restored.get("s1").unwrap().seq,
            t.get("s1").unwrap().seq_reserved
        );
    }

    #[test]
    fn a_turn_replacing_history_a_compaction_already_copied_reaches_the_new_file() {
        let now = Instant::now();
        let mut t = SessionTable::new(100);
        let mut sink = Recorder::default();
        t.get_or_create("s", now).unwrap();
        let messages = (0..4).map(|m| format!("{{\"m\":{m}}}")).collect();
        t.append("s", messages, &mut sink).unwrap();
        t.begin_snapshot();
        let mut file = Vec::new();
        // One byte of budget: the creation and a message, then one message
        // per step.
        for _ in 0..2 {
            file.extend(t.snapshot_step(1).0);
        }
        assert_eq!(t.compaction_partial.map(|(_, done)| done), Some(2));
        // The turn that began at message 1 ends with the agent's account,
        // and leaves calls pending.
        let calls = vec![PendingCall {
            tool_call_id: "c".into(),
            name: "rm".into(),
            args: serde_json::json!({}),
        }];
        let own = vec![r#"{"m":"own"}"#.to_string()];
        t.end_turn("s", own, Some(1), Some(calls.clone()), &mut sink)
            .unwrap();
        for change in sink.mirrored.drain(..) {
            file.extend(journal::encode(&change));
        }
        loop {
            let (bytes, done) = t.snapshot_step(1);
            file.extend(bytes);
            if done {
                break;
            }
        }
        t.end_snapshot();
        let mut restored = SessionTable::new(100);
        restored.restore(journal::replay(&file).unwrap().changes, now);
        assert_eq!(restored.history_json("s"), t.history_json("s"));
        assert_eq!(t.get("s").unwrap().message_count(), 2);
        assert_eq!(restored.get("s").unwrap().pending_approvals(), &calls[..]);
    }

    #[test]
    fn pending_approvals_survive_a_restart_and_a_decision_clears_them() {
        let now = Instant::now();
        let mut t = SessionTable::new(100);
        let mut sink = Recorder::default();
        t.get_or_create("s", now).unwrap();
        let calls = vec![PendingCall {
            tool_call_id: "c".into(),
            name: "rm".into(),
            args: serde_json::json!({"p": 1}),
        }];
        t.end_turn("s", vec!["{}".into()], None, Some(calls.clone()), &mut sink)
            .unwrap();
        let journal: Vec<Change> = sink.persisted.clone();
        let mut restored = SessionTable::new(100);
        restored.restore(journal.iter().map(|c| (c.clone(), 1)).collect(), now);
        assert_eq!(restored.get("s").unwrap().pending_approvals(), &calls[..]);
        t.clear_approvals("s");
        t.flush_changes(&mut sink).unwrap();
        let mut restored = SessionTable::new(100);
        restored.restore(sink.persisted.iter().map(|c| (c.clone(), 1)).collect(), now);
        assert!(restored.get("s").unwrap().pending_approvals().is_empty());
    }

    #[test]
    fn a_sweep_goes_a_budget_at_a_time() {
        let t0 = Instant::now();
        let mut t = SessionTable::new(100);
        for i in 0..10 {
            t.get_or_create(&format!("s{i}"), t0).unwrap();
        }
        t.subscribe("s4", ConnId { slot: 0, serial: 0 });
        let later = t0 + Duration::from_secs(100);
        let ttl = Duration::from_secs(50);
        let mut steps = vec![];
        loop {
            let (removed, done) = t.sweep_step(later, ttl, 3);
            steps.push(removed);
            if done {
                break;
            }
        }
        // Ten sessions, three looked at per step: four steps; s4 is watched.
        assert_eq!(steps, [3, 2, 3, 1]);
        assert_eq!(t.len(), 1);
        assert!(t.get("s4").is_some());
        // The next pass starts from the beginning again.
        t.get_or_create("new", later).unwrap();
        assert_eq!(t.sweep_step(later + ttl, ttl, 100), (1, true));
    }

    #[test]
    fn sweep_spares_watched_and_recent_sessions() {
        let t0 = Instant::now();
        let mut t = SessionTable::new(10);
        t.get_or_create("old", t0).unwrap();
        t.get_or_create("watched", t0).unwrap();
        t.subscribe("watched", ConnId { slot: 0, serial: 0 });
        let later = t0 + Duration::from_secs(100);
        t.get_or_create("new", later).unwrap();
        assert_eq!(t.sweep(later, Duration::from_secs(50)), 1);
        assert!(t.get("old").is_none());
        assert!(t.get("watched").is_some() && t.get("new").is_some());
    }
}
