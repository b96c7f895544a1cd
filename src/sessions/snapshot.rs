//! Compaction's side of the session table: the live state written out a
//! budget at a time into the journal's new file, and which records must
//! reach that file too while it is being written (see
//! `reactor::compaction`).

use super::{text_of, SessionTable};
use crate::journal::{self, Change};

impl SessionTable {
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
            // What the journal holds as pending: the calls waiting, or
            // those a running resumed turn took (its end clears them).
            let pending = match s.running.as_ref().and_then(|t| t.decided_calls()) {
                Some(taken) => taken,
                None => s.pending_approvals(),
            };
            if !pending.is_empty() {
                out.extend(journal::encode(&Change::Approvals {
                    id: id.clone(),
                    calls: pending.to_vec(),
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
