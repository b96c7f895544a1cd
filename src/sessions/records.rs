//! The table's side of the journal: each change written as a record (a
//! history record linked to its session's previous one, in the journal
//! and in a compaction's new file), and the records read back at start.

use std::time::Instant;

use bytes::Bytes;

use super::{cold, SessionTable, BROKEN, NO_HEAD};
use crate::clock::Stamp;
use crate::journal::{Change, Loc, Record, ToAppend};
use crate::sink::Sink;

impl SessionTable {
    /// Applies an `m` record to session `id`: in RAM when its history is,
    /// else only to its count (the journal holds the messages).
    pub(super) fn apply_messages(
        &mut self,
        id: &str,
        messages: Vec<String>,
        replace_from: Option<u64>,
    ) {
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
    pub(super) fn persist_pending(&mut self, sink: &mut dyn Sink) -> Result<Vec<Change>, String> {
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

    /// Counts a record's `bytes` towards its session's live journal size.
    pub(super) fn account(&mut self, change: &Change, bytes: u64) {
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
}
