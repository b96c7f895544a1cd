//! Cold histories read back from the journal, off the loop.
//!
//! A history that left RAM (`--history-idle`) is a chain of records in the
//! journal (see [`crate::journal::chain`]); reading it is one `pread` per
//! record, which waits for the disk if the page cache lacks them. So, like
//! the fsync helper, one helper thread owns a read-only descriptor of the
//! journal and does the reads: the loop hands it [`HistoryRead`]s over a
//! channel, it answers over another and writes a byte to a pipe registered
//! in the loop's `Poll` to say so. Nothing is shared but the messages
//! themselves, moved from one thread to the other.
//!
//! When a compaction's new file becomes the journal, the helper is handed
//! a descriptor of it, in order after every read asked of the old one.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Instant;

use mio::unix::pipe;
use mio::{Interest, Token};

use super::conn_sink::sink;
use super::Server;
use crate::sessions::HistoryRead;

/// The reader's answers arrive on this token.
pub(super) const READER: Token = Token(usize::MAX - 5);

enum Ask {
    Read(HistoryRead),
    /// The journal is now this file.
    Switch(File),
}

type Answer = (HistoryRead, Result<Vec<String>, String>);

pub(super) struct HistoryReader {
    asks: mpsc::Sender<Ask>,
    answers: mpsc::Receiver<Answer>,
    /// One byte per answer (the helper blocks if the loop is 64 KiB of
    /// bytes behind, which it never is for long: it drains them all).
    wake: pipe::Receiver,
    thread: Option<JoinHandle<()>>,
}

impl HistoryReader {
    fn spawn(file: File, registry: &mio::Registry) -> io::Result<HistoryReader> {
        let (asks, asked) = mpsc::channel::<Ask>();
        let (answer, answers) = mpsc::channel::<Answer>();
        let (mut waker, mut wake) = pipe::new()?;
        waker.set_nonblocking(false)?;
        registry.register(&mut wake, READER, Interest::READABLE)?;
        // Test-only: a slow disk, so a test can act while a read is under way.
        let delay = super::test_delay("AUTOPOIESIS_TEST_READ_DELAY_MS");
        let thread = super::spawn_helper("history-read", move || {
            let mut file = file;
            while let Ok(ask) = asked.recv() {
                let read = match ask {
                    Ask::Switch(to) => {
                        file = to;
                        continue;
                    }
                    Ask::Read(read) => read,
                };
                if let Some(d) = delay {
                    std::thread::sleep(d);
                }
                let result = crate::journal::chain::read_history(
                    &read.id,
                    read.head,
                    read.count,
                    |offset, buf| file.read_exact_at(buf, offset),
                );
                if answer.send((read, result)).is_err() || waker.write_all(&[1]).is_err() {
                    return;
                }
            }
        })?;
        Ok(HistoryReader {
            asks,
            answers,
            wake,
            thread: Some(thread),
        })
    }
}

impl Drop for HistoryReader {
    fn drop(&mut self) {
        // Closing the channel ends the helper after the read it is doing.
        let (closed, _) = mpsc::channel();
        self.asks = closed;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Server {
    /// Starts the reader over the journal (after it is opened).
    pub(super) fn start_history_reader(&mut self) -> Result<(), String> {
        let Some(j) = self.journal.as_ref() else {
            return Ok(());
        };
        let file = j
            .reader_handle()
            .map_err(|e| format!("cannot open {} for reading: {e}", j.path().display()))?;
        self.history_reader = Some(
            HistoryReader::spawn(file, self.poll.registry())
                .map_err(|e| format!("cannot start the history reader: {e}"))?,
        );
        Ok(())
    }

    /// Hands the reads the core asked for this iteration to the reader.
    /// Without one (no journal) nothing is ever cold, so none are asked.
    pub(super) fn send_history_reads(&mut self) {
        let reads = self.app.take_history_reads();
        let Some(reader) = self.history_reader.as_ref() else {
            return;
        };
        for read in reads {
            // The helper only stops when the reader is dropped.
            let _ = reader.asks.send(Ask::Read(read));
        }
    }

    /// The journal is a new file (a compaction was adopted): reads asked
    /// from now on follow the heads in it.
    pub(super) fn history_reader_switch(&mut self) {
        // Reads asked for before the switch name places in the old file:
        // they go first, to be done there.
        self.send_history_reads();
        self.app.journal_switched();
        let (Some(reader), Some(j)) = (self.history_reader.as_ref(), self.journal.as_ref()) else {
            return;
        };
        match j.reader_handle() {
            Ok(file) => {
                let _ = reader.asks.send(Ask::Switch(file));
            }
            Err(e) => {
                // Reads of the new file would go to the old one (a wrong
                // offset is refused by the chain's checks, never misread).
                crate::error!(
                    "cannot open {} for reading: {e}; cold histories cannot be read",
                    j.path().display()
                );
            }
        }
    }

    /// The reader answered: each answer goes to the core.
    pub(super) fn on_history_read(&mut self, now: Instant) {
        let Some(reader) = self.history_reader.as_mut() else {
            return;
        };
        let mut bytes = [0u8; 256];
        loop {
            match reader.wake.read(&mut bytes) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        let answers: Vec<Answer> = reader.answers.try_iter().collect();
        for (read, result) in answers {
            self.app.history_read(read, result, now, &mut sink!(self));
        }
    }
}
