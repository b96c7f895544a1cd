//! How the sans-IO core talks back to the reactor.
//!
//! The core never holds a socket. It names connections by [`ConnId`] and
//! hands what they should receive to a [`Sink`]; the reactor implements it
//! over its connection slab, tests implement it with [`Recorder`].

use bytes::Bytes;

use crate::agent::AgentJob;
use crate::events::Event;
use crate::http::Response;
use crate::journal::{Appended, Change, Loc, ToAppend};
use crate::metrics::Exposition;

/// A connection, as the core knows it: its slab slot plus a serial number
/// that is never reused, so a message for a connection that has closed (and
/// whose slot now holds another) is dropped rather than misdelivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    pub slot: usize,
    pub serial: u64,
}

pub trait Sink {
    /// Queue one WebSocket frame (already encoded) to one WebSocket client
    /// (a reply meant for it alone).
    fn send(&mut self, to: ConnId, frame: &Bytes);
    /// Queue a session event to a subscriber, in the subscriber's wire form
    /// (a WebSocket frame, or a Server-Sent Event).
    fn deliver(&mut self, to: ConnId, event: &Event);
    /// The session `to` follows was deleted. A WebSocket client stays (its
    /// next message creates the session again); an event stream ends.
    fn session_gone(&mut self, to: ConnId);
    /// The response of an HTTP request that was answered later (a chat turn).
    fn respond(&mut self, to: ConnId, response: Response);
    /// Close a WebSocket client with `code` after what is queued for it.
    fn close(&mut self, to: ConnId, code: u16, reason: &str);
    /// Bytes queued for `to` and not yet written to its socket.
    fn backlog(&self, to: ConnId) -> usize;
    /// Start an agent (child process, upstream request) for a turn.
    fn start_agent(&mut self, job: AgentJob);
    /// The turn has ended: stop its agent. `graceful`: it said `done`, so
    /// let it exit by itself (briefly); otherwise kill it now.
    fn stop_agent(&mut self, turn: u64, graceful: bool);
    /// Write state changes to the journal, in one write (a no-op when in
    /// memory: each then is at an empty [`Loc`]): all saved or none, each
    /// `m` record linked to its session's previous one, and mirrored to a
    /// compaction's new file when it says so. Returns where each went; Err
    /// says why they could not be saved.
    fn persist(&mut self, changes: &[ToAppend]) -> Result<Vec<Appended>, String>;
    /// Writes the transport's metrics for a scrape: connections, requests,
    /// events sent, closes, the journal, the process.
    fn write_metrics(&mut self, out: &mut Exposition);
}

/// What a [`Sink`] was given, in order; for tests and fuzz targets.
#[derive(Debug, Default)]
pub struct Recorder {
    pub sent: Vec<(ConnId, Bytes)>,
    pub responses: Vec<(ConnId, Response)>,
    pub closed: Vec<(ConnId, u16, String)>,
    /// Subscribers told that their session was deleted.
    pub gone: Vec<ConnId>,
    /// Backlog to report per connection (default 0).
    pub backlogs: Vec<(ConnId, usize)>,
    pub agents_started: Vec<AgentJob>,
    pub agents_stopped: Vec<(u64, bool)>,
    pub persisted: Vec<Change>,
    /// The records persisted, as a journal file holds them (each `m`
    /// linked to its session's previous one): cold reads in tests read it.
    pub journal: Vec<u8>,
    /// The changes persisted that a compaction's new file gets too.
    pub mirrored: Vec<Change>,
    /// When set, `persist` fails with this reason.
    pub persist_error: Option<String>,
}

impl Recorder {
    /// The payload text of every frame sent to `to` (frames are unmasked
    /// server text frames; the header is skipped).
    pub fn texts_to(&self, to: ConnId) -> Vec<String> {
        self.sent
            .iter()
            .filter(|(id, _)| *id == to)
            .map(|(_, f)| {
                let skip = match f[1] {
                    126 => 4,
                    127 => 10,
                    _ => 2,
                };
                String::from_utf8_lossy(&f[skip..]).into_owned()
            })
            .collect()
    }
}

impl Sink for Recorder {
    fn send(&mut self, to: ConnId, frame: &Bytes) {
        self.sent.push((to, frame.clone()));
    }
    fn deliver(&mut self, to: ConnId, event: &Event) {
        self.sent.push((to, event.ws_frame()));
    }
    fn session_gone(&mut self, to: ConnId) {
        self.gone.push(to);
    }
    fn respond(&mut self, to: ConnId, response: Response) {
        self.responses.push((to, response));
    }
    fn close(&mut self, to: ConnId, code: u16, reason: &str) {
        self.closed.push((to, code, reason.to_owned()));
    }
    fn backlog(&self, to: ConnId) -> usize {
        self.backlogs
            .iter()
            .find(|(id, _)| *id == to)
            .map_or(0, |(_, n)| *n)
    }
    fn start_agent(&mut self, job: AgentJob) {
        self.agents_started.push(job);
    }
    fn stop_agent(&mut self, turn: u64, graceful: bool) {
        self.agents_stopped.push((turn, graceful));
    }
    fn write_metrics(&mut self, _out: &mut Exposition) {}
    fn persist(&mut self, changes: &[ToAppend]) -> Result<Vec<Appended>, String> {
        if let Some(why) = &self.persist_error {
            return Err(why.clone());
        }
        let mut appended = Vec::with_capacity(changes.len());
        for append in changes {
            self.persisted.push(append.change.clone());
            if append.mirror {
                self.mirrored.push(append.change.clone());
            }
            let record = crate::journal::encode_linked(append.change, append.prev);
            let at = Loc {
                offset: self.journal.len() as u64,
                len: record.len() as u32,
            };
            self.journal.extend(record);
            appended.push(Appended {
                at,
                mirrored_at: None,
            });
        }
        Ok(appended)
    }
}
