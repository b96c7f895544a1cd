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
//! | `m` | `messages` appended to session `id`'s history (after cutting it to `from` messages, when `from` is given) |
//! | `s` | session `id`'s `seq` counter is at least `seq` |
//! | `d` | session `id` deleted |
//! | `a` | session `id`'s tool calls waiting for approval are `calls` (`[]`: none) |
//!
//! Encoding and replay are plain functions over bytes; [`JournalFile`] is
//! the file, written from the loop (regular files cannot be polled), with
//! the fsync policy of `--fsync`.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

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

/// Bytes before a record's payload.
pub const HEADER: usize = 8;

/// The framed record for `change`.
pub fn encode(change: &Change) -> Vec<u8> {
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
}

fn decode_payload(payload: &[u8]) -> Option<Change> {
    let w: Wire = serde_json::from_slice(payload).ok()?;
    Some(match w.t {
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
    })
}

/// What reading a journal found.
#[derive(Debug, PartialEq, Eq)]
pub struct Replay {
    /// Each record's change and its size in bytes.
    pub changes: Vec<(Change, u64)>,
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
            Some((used, change)) => {
                changes.push((change, used as u64));
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

/// The journal file in the data directory, plus its lock.
pub struct JournalFile {
    path: PathBuf,
    dir: PathBuf,
    file: File,
    _lock: File,
    len: u64,
    mode: FsyncMode,
    /// Written since the last sync.
    unsynced: bool,
    /// Set once a write failed: nothing more is accepted.
    failed: Option<String>,
    /// A sync failed: what was written and not yet durable never will be.
    sync_broken: bool,
    /// How long each fsync took (`autopoiesis_journal_fsync_seconds`).
    pub fsync_seconds: crate::metrics::Histogram,
    /// `batch` with a sync helper: the loop never syncs; [`commit`] is a
    /// no-op and the helper reports what is durable.
    ///
    /// [`commit`]: Self::commit
    async_sync: bool,
    /// Bytes known durable (with `async_sync`).
    synced: u64,
    /// The new file a compaction is writing (`journal.compact`), and its
    /// length.
    shadow: Option<(File, u64)>,
}

impl JournalFile {
    /// Opens (creating) `dir/journal`, locked against a second server, and
    /// replays it. A torn tail is cut off with a warning.
    pub fn open(dir: &Path, mode: FsyncMode) -> Result<(JournalFile, Vec<(Change, u64)>), String> {
        create_private_dir(dir)
            .map_err(|e| format!("cannot create data directory {}: {e}", dir.display()))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
        if !try_lock(&lock) {
            return Err(format!(
                "another autopoiesis server is using {} (its lock file is held); refusing to start",
                dir.display()
            ));
        }
        let path = dir.join("journal");
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let replayed = replay(&bytes).map_err(|c| {
            format!(
                "{} is corrupt at byte offset {} (the file has {} bytes, and valid records follow the bad one); \
                 refusing to start. To recover, keep a copy, then truncate the file to {} bytes \
                 (losing everything after that point) or move it aside to start empty",
                path.display(),
                c.offset,
                c.len,
                c.offset
            )
        })?;
        if let Some(at) = replayed.torn_at {
            crate::warn!(
                "{}: dropping a torn record at byte offset {at} ({} bytes; a write was cut short)",
                path.display(),
                bytes.len() as u64 - at
            );
            file.set_len(at)
                .map_err(|e| format!("cannot truncate {}: {e}", path.display()))?;
            file.sync_all()
                .map_err(|e| format!("cannot sync {}: {e}", path.display()))?;
        }
        file.seek(SeekFrom::Start(replayed.valid_len))
            .map_err(|e| format!("cannot seek {}: {e}", path.display()))?;
        let journal = JournalFile {
            path,
            dir: dir.to_owned(),
            file,
            _lock: lock,
            len: replayed.valid_len,
            mode,
            unsynced: false,
            failed: None,
            sync_broken: false,
            fsync_seconds: crate::metrics::Histogram::new(crate::metrics::FSYNC_BUCKETS),
            async_sync: false,
            synced: replayed.valid_len,
            shadow: None,
        };
        Ok((journal, replayed.changes))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends records in one `write` (a turn's pending creation and `seq`
    /// reservation with its messages): all of them or, on failure, none
    /// (synced now with `always`). On failure the file is cut back to its
    /// last whole record and the journal refuses further writes; the error
    /// names the file and offset. Each change's `bool`: the record also
    /// goes to a compaction's new file. Returns each record's size.
    pub fn append(&mut self, changes: &[(&Change, bool)]) -> Result<Vec<u64>, String> {
        if let Some(why) = &self.failed {
            return Err(why.clone());
        }
        let mut batch = Vec::new();
        let mut mirrored = Vec::new();
        let mut sizes = Vec::with_capacity(changes.len());
        for &(change, mirror) in changes {
            let record = encode(change);
            sizes.push(record.len() as u64);
            if mirror && self.shadow.is_some() {
                mirrored.extend_from_slice(&record);
            }
            if batch.is_empty() {
                batch = record;
            } else {
                batch.extend_from_slice(&record);
            }
        }
        let at = self.len;
        let result = self.file.write_all(&batch).and_then(|()| {
            if self.mode == FsyncMode::Always {
                self.timed_sync()
            } else {
                Ok(())
            }
        });
        match result {
            Ok(()) => {
                self.len += batch.len() as u64;
                self.unsynced = self.mode == FsyncMode::Batch;
                // The compaction's new file gets the records only once the
                // journal has them: a failed write must not live on there.
                if !mirrored.is_empty() {
                    let always = self.mode == FsyncMode::Always;
                    let written = self
                        .shadow_write(&mirrored)
                        .and_then(|()| match &self.shadow {
                            // `always` promises each record durable in the file that
                            // will be the journal, too.
                            Some((f, _)) if always => f.sync_data().map_err(|e| {
                                format!("syncing the compaction's new file failed: {e}")
                            }),
                            _ => Ok(()),
                        });
                    if let Err(e) = written {
                        crate::warn!("{e}");
                        self.abandon_shadow();
                    }
                }
                Ok(sizes)
            }
            Err(e) => {
                let why = format!(
                    "cannot write the journal {} at byte offset {at}: {e}",
                    self.path.display()
                );
                crate::error!("{why}; sessions can no longer be saved");
                // Leave no partial record behind.
                let _ = self.file.set_len(at);
                let _ = self.file.seek(SeekFrom::Start(at));
                self.failed = Some(why.clone());
                Err(why)
            }
        }
    }

    /// A duplicate of the journal's descriptor for a sync helper, after
    /// which the loop never syncs in `batch` mode (see
    /// [`crate::reactor`]'s syncer).
    pub fn hand_syncing_over(&mut self) -> io::Result<Option<File>> {
        if self.mode != FsyncMode::Batch {
            return Ok(None);
        }
        let dup = self.file.try_clone()?;
        self.async_sync = true;
        Ok(Some(dup))
    }

    /// Bytes that an acknowledgement may depend on: all of them with
    /// `always` (synced per record) and `never` (durability not promised),
    /// what the helper reported with `batch`.
    pub fn durable_len(&self) -> u64 {
        if self.async_sync {
            self.synced
        } else {
            self.len
        }
    }

    /// The helper made everything up to `offset` durable in `took`.
    pub fn synced_upto(&mut self, offset: u64, took: std::time::Duration) {
        self.synced = self.synced.max(offset);
        self.fsync_seconds.observe(took.as_secs_f64());
    }

    /// The helper could not sync: nothing more is accepted.
    pub fn sync_failed(&mut self, why: &str) {
        let why = format!("cannot sync the journal {}: {why}", self.path.display());
        crate::error!("{why}; sessions can no longer be saved");
        self.failed.get_or_insert(why);
        self.sync_broken = true;
    }

    /// Whether a sync failed. From then on no record is accepted, so no
    /// later acknowledgement can claim a record is saved (a turn's end is
    /// an error, a REST answer a 503): those need not wait for a sync that
    /// will never come.
    pub fn sync_has_failed(&self) -> bool {
        self.sync_broken
    }

    /// The sync helper could not be (re)started: `batch` falls back to
    /// syncing in [`commit`](Self::commit), on the loop — slower, never
    /// wrong.
    pub fn sync_on_the_loop(&mut self) {
        self.async_sync = false;
    }

    /// The group commit of `batch`: one fsync for everything this loop
    /// iteration wrote (unless a sync helper does it off the loop).
    pub fn commit(&mut self) {
        if self.async_sync {
            return;
        }
        if self.unsynced {
            self.unsynced = false;
            if let Err(e) = self.timed_sync() {
                let why = format!("cannot sync the journal {}: {e}", self.path.display());
                crate::error!("{why}; sessions can no longer be saved");
                self.failed = Some(why);
                self.sync_broken = true;
            }
        }
    }

    fn timed_sync(&mut self) -> io::Result<()> {
        let started = std::time::Instant::now();
        let result = self.file.sync_data();
        self.fsync_seconds.observe(started.elapsed().as_secs_f64());
        result
    }

    /// Forces everything written to disk now, whatever the mode (shutdown).
    pub fn sync_now(&mut self) {
        if self.failed.is_none() && self.file.sync_data().is_ok() {
            self.synced = self.len;
        }
        self.unsynced = false;
    }

    /// Starts the new file of a compaction (`journal.compact`, empty).
    pub fn begin_shadow(&mut self) -> Result<(), String> {
        let path = self.shadow_path();
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(|e| format!("cannot start compacting into {}: {e}", path.display()))?;
        self.shadow = Some((file, 0));
        Ok(())
    }

    /// Appends to the compaction's new file (page cache: no sync here).
    pub fn shadow_write(&mut self, bytes: &[u8]) -> Result<(), String> {
        let path = self.shadow_path();
        let Some((file, len)) = self.shadow.as_mut() else {
            return Err("no compaction under way".into());
        };
        file.write_all(bytes)
            .map_err(|e| format!("compacting into {} failed: {e}", path.display()))?;
        *len += bytes.len() as u64;
        Ok(())
    }

    /// The compaction's new file: a duplicate descriptor (for the helper
    /// that syncs and renames it) and its length now.
    pub fn shadow_handle(&self) -> io::Result<Option<(File, u64)>> {
        match &self.shadow {
            Some((f, len)) => Ok(Some((f.try_clone()?, *len))),
            None => Ok(None),
        }
    }

    /// Whether a write or sync failed (nothing more is accepted).
    pub fn has_failed(&self) -> bool {
        self.failed.is_some()
    }

    /// Whether a compaction's new file is being written.
    pub fn has_shadow(&self) -> bool {
        self.shadow.is_some()
    }

    /// Gives the compaction up: the old journal stays.
    pub fn abandon_shadow(&mut self) {
        if self.shadow.take().is_some() {
            let _ = std::fs::remove_file(self.shadow_path());
        }
    }

    /// The new file has been synced up to `synced` and renamed over the
    /// journal: it is the journal from now on.
    pub fn adopt_shadow(&mut self, synced: u64) {
        if let Some((file, len)) = self.shadow.take() {
            self.file = file;
            self.len = len;
            self.synced = synced.min(len);
            self.unsynced = self.synced < len;
        }
    }

    /// Where a compaction writes, and the journal's own path and directory
    /// (for the helper that renames it).
    pub fn shadow_path(&self) -> PathBuf {
        self.dir.join("journal.compact")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

fn try_lock(file: &File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor we own; the lock lives as long as the file.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// `$XDG_STATE_HOME/autopoiesis`, else `~/.local/state/autopoiesis`.
pub fn default_data_dir(env: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(state) = env("XDG_STATE_HOME").filter(|s| !s.is_empty()) {
        return Some(PathBuf::from(state).join("autopoiesis"));
    }
    env("HOME")
        .filter(|h| !h.is_empty())
        .map(|home| PathBuf::from(home).join(".local/state/autopoiesis"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Change> {
        vec![
            Change::Created {
                id: "a".into(),
                at: "2026-01-01T00:00:00.000000Z".into(),
            },
            Change::Messages {
                id: "a".into(),
                messages: vec![
                    r#"{"kind":"request","parts":[]}"#.into(),
                    r#"{"kind":"response"}"#.into(),
                ],
                replace_from: None,
            },
            Change::Approvals {
                id: "a".into(),
                calls: vec![PendingCall {
                    tool_call_id: "c1".into(),
                    name: "rm".into(),
                    args: serde_json::json!({"path": "x"}),
                }],
            },
            Change::Messages {
                id: "a".into(),
                messages: vec![r#"{"kind":"request","parts":[]}"#.into()],
                replace_from: Some(1),
            },
            Change::Approvals {
                id: "a".into(),
                calls: Vec::new(),
            },
            Change::Seq {
                id: "a".into(),
                seq: 1024,
            },
            Change::Deleted { id: "a".into() },
        ]
    }

    fn file_of(changes: &[Change]) -> Vec<u8> {
        changes.iter().flat_map(encode).collect()
    }

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn records_round_trip() {
        let bytes = file_of(&sample());
        let r = replay(&bytes).unwrap();
        let changes: Vec<Change> = r.changes.into_iter().map(|(c, _)| c).collect();
        assert_eq!(changes, sample());
        assert_eq!(r.valid_len, bytes.len() as u64);
        assert_eq!(r.torn_at, None);
    }

    #[test]
    fn a_torn_tail_is_dropped() {
        let bytes = file_of(&sample());
        let whole = encode(&sample()[0]).len() + encode(&sample()[1]).len();
        for cut in [
            whole + 1,
            whole + 5,
            whole + 9,
            whole + encode(&sample()[2]).len() - 1,
        ] {
            let r = replay(&bytes[..cut]).unwrap();
            assert_eq!(r.changes.len(), 2, "cut at {cut}");
            assert_eq!(r.torn_at, Some(whole as u64));
        }
        // A last record whose payload was garbled in place is torn too.
        let mut garbled = bytes.clone();
        let last = garbled.len() - 3;
        garbled[last] ^= 0xFF;
        assert_eq!(replay(&garbled).unwrap().changes.len(), sample().len() - 1);
    }

    #[test]
    fn a_bad_record_in_the_middle_is_corruption() {
        let mut bytes = file_of(&sample());
        let second = encode(&sample()[0]).len();
        bytes[second + HEADER + 3] ^= 0x01;
        assert_eq!(
            replay(&bytes),
            Err(Corrupt {
                offset: second as u64,
                len: bytes.len() as u64
            })
        );
    }

    #[test]
    fn data_dir_default() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(
            default_data_dir(env(&[("XDG_STATE_HOME", "/s"), ("HOME", "/h")])),
            Some("/s/autopoiesis".into())
        );
        assert_eq!(
            default_data_dir(env(&[("HOME", "/h")])),
            Some("/h/.local/state/autopoiesis".into())
        );
        assert_eq!(default_data_dir(env(&[])), None);
    }

    #[test]
    fn records_appended_together_read_back_as_separate_records() {
        let dir =
            std::env::temp_dir().join(format!("autopoiesis-journal-batch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let changes = sample();
        {
            let (mut j, _) = JournalFile::open(&dir, FsyncMode::Never).unwrap();
            let batch: Vec<(&Change, bool)> = changes.iter().map(|c| (c, false)).collect();
            let sizes = j.append(&batch).unwrap();
            let want: Vec<u64> = changes.iter().map(|c| encode(c).len() as u64).collect();
            assert_eq!(sizes, want);
            assert_eq!(j.len(), want.iter().sum::<u64>());
        }
        let (_, replayed) = JournalFile::open(&dir, FsyncMode::Never).unwrap();
        let read: Vec<Change> = replayed.into_iter().map(|(c, _)| c).collect();
        assert_eq!(read, changes);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn file_lock_refuses_a_second_opener_and_torn_tails_are_cut() {
        let dir =
            std::env::temp_dir().join(format!("autopoiesis-journal-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let (mut j, changes) = JournalFile::open(&dir, FsyncMode::Batch).unwrap();
            assert!(changes.is_empty());
            for c in sample() {
                j.append(&[(&c, false)]).unwrap();
            }
            j.commit();
            let second = JournalFile::open(&dir, FsyncMode::Batch)
                .err()
                .unwrap_or_default();
            assert!(second.contains("another autopoiesis server"), "{second}");
        }
        // Append half a record, as a crash would.
        let good = std::fs::metadata(dir.join("journal")).unwrap().len();
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.join("journal"))
            .unwrap();
        f.write_all(&encode(&sample()[1])[..10]).unwrap();
        drop(f);
        let (j, changes) = JournalFile::open(&dir, FsyncMode::Batch).unwrap();
        assert_eq!(
            changes.into_iter().map(|(c, _)| c).collect::<Vec<_>>(),
            sample()
        );
        assert_eq!(j.len(), good);
        assert_eq!(std::fs::metadata(dir.join("journal")).unwrap().len(), good);
        drop(j);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
