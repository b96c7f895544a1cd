//! The append-only journal that keeps sessions across restarts.
//!
//! One record per state change, framed as `[len u32 LE][crc32 u32 LE]
//! [payload]` with a JSON payload, so a torn last record (a crash in the
//! middle of a write) is detected and dropped, while a bad record with
//! good ones after it (corruption) is refused with its offset. Records:
//!
//! | `t` | meaning |
//! |---|---|
//! | `c` | session `id` created at `at` |
//! | `m` | `messages` appended to session `id`'s history (after cutting it to `from` messages, when `from` is given); `p`: where the session's previous `m` record is, `[offset, length]` in this file |
//! | `s` | session `id`'s `seq` counter is at least `seq` |
//! | `d` | session `id` deleted |
//! | `a` | session `id`'s tool calls waiting for approval are `calls` (`[]`: none) |
//!
//! The `p` links make each session's history a chain, newest record first,
//! that [`chain`] reads back with one read per record: a session whose
//! history left RAM keeps only where its last `m` record is (Bitcask's key
//! directory, with the values in the log).
//!
//! Encoding and replay are plain functions over bytes; [`JournalFile`] is
//! the file, written from the loop (regular files cannot be polled), with
//! the fsync policy of `--fsync`.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::approvals::PendingCall;

/// A state change, as the session table reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Created {
        id: String,
        at: String,
    },
    /// `ModelMessage` JSON texts appended to the history; with
    /// `replace_from`, after the history is cut to that many messages (a
    /// turn whose agent gave its own account replaces what the server
    /// recorded of it).
    Messages {
        id: String,
        messages: Vec<String>,
        replace_from: Option<u64>,
    },
    /// The `seq` counter is at least this (reserved ahead, or exact).
    Seq {
        id: String,
        seq: u64,
    },
    Deleted {
        id: String,
    },
    /// The tool calls waiting for a person's decision (empty: none).
    Approvals {
        id: String,
        calls: Vec<PendingCall>,
    },
}

impl Change {
    pub fn id(&self) -> &str {
        match self {
            Change::Created { id, .. }
            | Change::Messages { id, .. }
            | Change::Seq { id, .. }
            | Change::Deleted { id }
            | Change::Approvals { id, .. } => id,
        }
    }
}

/// Where a record is in a journal file: its offset and whole length
/// (header included).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Loc {
    pub offset: u64,
    pub len: u32,
}

/// A record read back: the change, its size in the file, and (an `m`
/// record) where its session's previous `m` record is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub change: Change,
    pub size: u64,
    pub prev: Option<Loc>,
}

/// A record to append: the change and, for an `m` record, the session's
/// previous `m` record in the journal (`prev`) and in the new file a
/// compaction is writing (`mirror_prev`); `mirror`: it goes to that new
/// file too.
#[derive(Clone, Copy, Debug)]
pub struct ToAppend<'a> {
    pub change: &'a Change,
    pub prev: Option<Loc>,
    pub mirror: bool,
    pub mirror_prev: Option<Loc>,
}

impl<'a> ToAppend<'a> {
    /// A record with no chain and no mirror.
    pub fn plain(change: &'a Change) -> Self {
        ToAppend {
            change,
            prev: None,
            mirror: false,
            mirror_prev: None,
        }
    }
}

/// Where an appended record went: the journal, and the compaction's new
/// file when mirrored there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    pub at: Loc,
    pub mirrored_at: Option<Loc>,
}

/// Bytes before a record's payload.
pub const HEADER: usize = 8;

/// The framed record for `change`, unlinked (see [`encode_linked`]).
pub fn encode(change: &Change) -> Vec<u8> {
    encode_linked(change, None)
}

/// The framed record for `change`; an `m` record names `prev`, its
/// session's previous `m` record.
pub fn encode_linked(change: &Change, prev: Option<Loc>) -> Vec<u8> {
    let mut out = vec![0u8; HEADER];
    let id_json = |out: &mut Vec<u8>, id: &str| crate::json::push_str(out, id);
    match change {
        Change::Created { id, at } => {
            out.extend_from_slice(br#"{"t":"c","id":"#);
            id_json(&mut out, id);
            out.extend_from_slice(br#","at":"#);
            crate::json::push_str(&mut out, at);
        }
        Change::Messages {
            id,
            messages,
            replace_from,
        } => {
            out.extend_from_slice(br#"{"t":"m","id":"#);
            id_json(&mut out, id);
            if let Some(from) = replace_from {
                out.extend_from_slice(br#","from":"#);
                crate::json::push_u64(&mut out, *from);
            }
            if let Some(p) = prev {
                out.extend_from_slice(br#","p":["#);
                crate::json::push_u64(&mut out, p.offset);
                out.push(b',');
                crate::json::push_u64(&mut out, u64::from(p.len));
                out.push(b']');
            }
            out.extend_from_slice(br#","messages":"#);
            crate::json::push_array(&mut out, messages);
        }
        Change::Seq { id, seq } => {
            out.extend_from_slice(br#"{"t":"s","id":"#);
            id_json(&mut out, id);
            out.extend_from_slice(br#","seq":"#);
            crate::json::push_u64(&mut out, *seq);
        }
        Change::Deleted { id } => {
            out.extend_from_slice(br#"{"t":"d","id":"#);
            id_json(&mut out, id);
        }
        Change::Approvals { id, calls } => {
            out.extend_from_slice(br#"{"t":"a","id":"#);
            id_json(&mut out, id);
            out.extend_from_slice(br#","calls":"#);
            // Plain structs of strings and JSON values: cannot fail.
            let _ = serde_json::to_writer(&mut out, calls);
        }
    }
    out.push(b'}');
    let len = (out.len() - HEADER) as u32;
    let crc = crc32(&out[HEADER..]);
    out[..4].copy_from_slice(&len.to_le_bytes());
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    out
}

#[derive(Deserialize)]
struct Wire<'a> {
    t: &'a str,
    id: String,
    at: Option<String>,
    #[serde(borrow)]
    messages: Option<Vec<&'a RawValue>>,
    seq: Option<u64>,
    from: Option<u64>,
    calls: Option<Vec<PendingCall>>,
    p: Option<(u64, u32)>,
}

/// A record's payload → its change and `p` link.
pub fn decode_payload(payload: &[u8]) -> Option<(Change, Option<Loc>)> {
    let w: Wire = serde_json::from_slice(payload).ok()?;
    let prev = w.p.map(|(offset, len)| Loc { offset, len });
    let change = match w.t {
        "c" => Change::Created {
            id: w.id,
            at: w.at?,
        },
        "m" => Change::Messages {
            id: w.id,
            messages: w.messages?.iter().map(|m| m.get().to_owned()).collect(),
            replace_from: w.from,
        },
        "s" => Change::Seq {
            id: w.id,
            seq: w.seq?,
        },
        "d" => Change::Deleted { id: w.id },
        "a" => Change::Approvals {
            id: w.id,
            calls: w.calls?,
        },
        _ => return None,
    };
    Some((change, prev))
}

/// What reading a journal found.
#[derive(Debug, PartialEq, Eq)]
pub struct Replay {
    /// Each record, in file order (each one starts where the one before
    /// it ends, from offset 0).
    pub changes: Vec<Record>,
    /// Bytes of valid records; anything after is a torn tail.
    pub valid_len: u64,
    /// The offset of a torn last record that was dropped, if any.
    pub torn_at: Option<u64>,
}

/// A bad record with valid data after it.
#[derive(Debug, PartialEq, Eq)]
pub struct Corrupt {
    pub offset: u64,
    pub len: u64,
}

/// Reads records from `bytes`. A bad record at the end is a torn write
/// (dropped); a bad record followed by more data is corruption.
pub fn replay(bytes: &[u8]) -> Result<Replay, Corrupt> {
    let mut changes = Vec::new();
    let mut pos = 0usize;
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        let record = (|| {
            let header = rest.get(..HEADER)?;
            let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
            let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
            let payload = rest.get(HEADER..HEADER.checked_add(len)?)?;
            (crc32(payload) == crc).then_some(())?;
            Some((HEADER + len, decode_payload(payload)?))
        })();
        match record {
            Some((used, (change, prev))) => {
                changes.push(Record {
                    change,
                    size: used as u64,
                    prev,
                });
                pos += used;
            }
            None => {
                // Torn when the bad record runs to the end of the file: its
                // declared length reaches past the end, or nothing follows it.
                let declared = rest
                    .get(..4)
                    .map(|h| u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize);
                let torn = match declared {
                    None => true,
                    Some(len) => HEADER + len >= rest.len(),
                };
                if !torn {
                    return Err(Corrupt {
                        offset: pos as u64,
                        len: bytes.len() as u64,
                    });
                }
                return Ok(Replay {
                    changes,
                    valid_len: pos as u64,
                    torn_at: Some(pos as u64),
                });
            }
        }
    }
    Ok(Replay {
        changes,
        valid_len: pos as u64,
        torn_at: None,
    })
}

/// CRC-32 (IEEE) of a record's payload. `crc32fast` computes it with the
/// CPU's carry-less multiply (≈ 15× the byte-at-a-time table it replaced):
/// a 2 MB turn's record took ~3 ms of loop time to checksum before, and a
/// start-up replay checksums the whole journal.
pub fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

/// `--fsync`: when appended records are forced to the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncMode {
    /// After every record, before anything that depends on it goes out.
    Always,
    /// Once per loop iteration that wrote, before that iteration's
    /// acknowledgements are written to clients (group commit).
    Batch,
    /// Never: the OS writes back when it likes (survives a crash of the
    /// server, not of the machine).
    Never,
}

pub mod chain;
mod file;
pub use file::{default_data_dir, JournalFile};

#[cfg(test)]
mod tests;
