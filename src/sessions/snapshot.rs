//! Compaction's side of the session table: the live state written out a
//! budget at a time into the journal's new file, and which records must
//! reach that file too while it is being written (see
//! `reactor::compaction`).

use std::time::Instant;

use super::{cold, text_of, SessionTable, Walk, NO_HEAD};
use crate::journal::{self, Change, Loc};

impl SessionTable {
    /// Compaction starts: sessions are written out a step at a time, in
    /// creation order (see [`snapshot_step`](Self::snapshot_step)).
    pub fn begin_snapshot(&mut self) {
        self.compaction_cursor = Some(0);
        self.compaction_walk = self.sessions.first().map_or(Walk::End, Walk::At);
        self.compaction_partial = None;
        self.compaction_failed = None;
    }

    /// The next sessions' records, about `budget` bytes of them, for the
    /// new file at offset `base` (each session's `m` records chained there
    /// too); true when every session has been written. From then on, and
    /// for the sessions already written, each new record is mirrored
    /// (`mirrored`): the new file gets it too.
    ///
    /// A cold history is read back first: the step stops before it (and
    /// asks for it and a few after it), and a later step copies it, then
    /// lets it go again. Err: a history could not be read, and the
    /// compaction must give up (the journal stays as it is).
    pub fn snapshot_step(
        &mut self,
        budget: usize,
        base: u64,
        now: Instant,
    ) -> Result<(Vec<u8>, bool), String> {
        if let Some(why) = self.compaction_failed.take() {
            return Err(why);
        }
        if self.compaction_cursor.is_none() {
            return Ok((Vec::new(), true));
        }
        let shadow = 1 - self.file;
        let mut out = Vec::new();
        // Where this step stops: a session (ordinal), and how many of its
        // messages are already written (None: not even its creation).
        let mut partial = self.compaction_partial.take();
        // Where the next step starts (None: every session is written).
        let mut next = None;
        let mut cold_at = None;
        let mut copied = Vec::new();
        let empty = Vec::new();
        let mut walk = match self.compaction_walk {
            Walk::At(slot) => Some(slot),
            Walk::End => None,
        };
        while let Some(slot) = walk {
            walk = self.sessions.next_of(slot);
            if out.len() >= budget {
                next = Some(slot);
                break;
            }
            let Some((id, s)) = self.sessions.at_mut(slot) else {
                continue;
            };
            let ordinal = s.ordinal;
            let messages = match s.hot.as_ref().and_then(|h| h.messages.as_ref()) {
                Some(m) => m,
                None if s.message_count > 0 => {
                    // Cold: read it back, then copy it.
                    cold_at = Some(slot);
                    next = Some(slot);
                    break;
                }
                None => &empty,
            };
            let start = match partial.take().filter(|&(o, _)| o == ordinal) {
                Some((_, done)) => done,
                None => {
                    out.extend(journal::encode(&Change::Created {
                        id: id.to_owned(),
                        at: s.created_at.to_rfc3339(),
                    }));
                    s.heads[shadow] = NO_HEAD;
                    0
                }
            };
            // A long history goes in several records, a budget at a time
            // (replay appends them in order), each linked to the one before.
            let mut end = start;
            let mut size = 0;
            while end < messages.len() && (end == start || out.len() + size < budget) {
                size += messages[end].len();
                end += 1;
            }
            let count = messages.len();
            if end > start {
                let prev = s.heads[shadow];
                let record = journal::encode_linked(
                    &Change::Messages {
                        id: id.to_owned(),
                        messages: messages[start..end].iter().map(text_of).collect(),
                        replace_from: None,
                    },
                    (prev.len > 0).then_some(prev),
                );
                s.heads[shadow] = Loc {
                    offset: base + out.len() as u64,
                    len: record.len() as u32,
                };
                out.extend(record);
            }
            if end < count {
                // The rest of this session next step; it is not copied yet.
                self.compaction_partial = Some((ordinal, end));
                next = Some(slot);
                break;
            }
            if s.seq_reserved > 0 {
                out.extend(journal::encode(&Change::Seq {
                    id: id.to_owned(),
                    seq: s.seq_reserved,
                }));
            }
            // What the journal holds as pending: the calls waiting, or
            // those a running resumed turn took (its end clears them).
            let pending = match s.running().and_then(|t| t.decided_calls()) {
                Some(taken) => taken,
                None => s.pending_approvals(),
            };
            if !pending.is_empty() {
                out.extend(journal::encode(&Change::Approvals {
                    id: id.to_owned(),
                    calls: pending.to_vec(),
                }));
            }
            copied.push(slot);
        }
        // A history read back only to be copied goes back to the journal.
        for slot in copied {
            let idle = self
                .sessions
                .at(slot)
                .is_some_and(|(id, s)| self.history_idle(id, s, now));
            if let (true, Some((_, s))) = (idle, self.sessions.at_mut(slot)) {
                cold::evict(s, self.file);
            }
        }
        if let Some(slot) = cold_at {
            self.prefetch_for_compaction(slot, now);
        }
        // Done: every session, including ones made from now on, is mirrored.
        let at = next.and_then(|slot| self.sessions.at(slot));
        self.compaction_cursor = Some(at.map_or(u64::MAX, |(_, s)| s.ordinal));
        self.compaction_walk = next.map_or(Walk::End, Walk::At);
        Ok((out, next.is_none()))
    }

    /// Compaction is over (done or given up).
    pub fn end_snapshot(&mut self) {
        self.compaction_cursor = None;
        self.compaction_partial = None;
    }

    /// Whether a record must also go to the file a compaction is writing:
    /// its session was already written there (a deleted session's record
    /// goes too: replaying a deletion of nothing is harmless).
    pub(super) fn mirrored(&self, change: &Change) -> bool {
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
}
