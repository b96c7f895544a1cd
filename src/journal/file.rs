//! The journal's file: appends from the loop, the fsync policy, the lock,
//! and the compaction's new file.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::{replay, Appended, FsyncMode, Loc, Record, ToAppend};

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
    pub fn open(dir: &Path, mode: FsyncMode) -> Result<(JournalFile, Vec<Record>), String> {
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
    /// names the file and offset. A mirrored record also goes to a
    /// compaction's new file, linked there to `mirror_prev`. Returns where
    /// each record went.
    pub fn append(&mut self, changes: &[ToAppend]) -> Result<Vec<Appended>, String> {
        if let Some(why) = &self.failed {
            return Err(why.clone());
        }
        let mut batch: Vec<u8> = Vec::new();
        let mut mirrored = Vec::new();
        let mut written = Vec::with_capacity(changes.len());
        let shadow_len = self.shadow.as_ref().map(|(_, len)| *len);
        for append in changes {
            let record = super::encode_linked(append.change, append.prev);
            let at = Loc {
                offset: self.len + batch.len() as u64,
                len: record.len() as u32,
            };
            let mut mirrored_at = None;
            if let (true, Some(shadow_len)) = (append.mirror, shadow_len) {
                let offset = shadow_len + mirrored.len() as u64;
                if append.mirror_prev == append.prev {
                    mirrored.extend_from_slice(&record);
                } else {
                    mirrored.extend(super::encode_linked(append.change, append.mirror_prev));
                }
                mirrored_at = Some(Loc {
                    offset,
                    len: (shadow_len + mirrored.len() as u64 - offset) as u32,
                });
            }
            written.push(Appended { at, mirrored_at });
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
                Ok(written)
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

    /// A descriptor of the journal for reading cold histories (see
    /// `reactor::history_reader`): reads at offsets, never moving the
    /// loop's file position.
    pub fn reader_handle(&self) -> io::Result<File> {
        File::open(&self.path)
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

    /// Bytes in the compaction's new file, if one is being written.
    pub fn shadow_len(&self) -> Option<u64> {
        self.shadow.as_ref().map(|(_, len)| *len)
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
