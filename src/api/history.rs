//! `GET /api/sessions/{id}/history`, and what a cold history's read back
//! means for those waiting on it: history requests answered, a turn
//! started (or failed).

use std::time::Instant;

use super::{session_not_found, App};
use crate::http::Response;
use crate::service::HttpOutcome;
use crate::sessions::{HistoryRead, LoadOutcome};
use crate::sink::{ConnId, Sink};
use crate::turns;

impl App {
    /// The history now if it is in RAM; else the request waits for it to
    /// be read back from the journal (answered in
    /// [`history_read`](Self::history_read)).
    pub(super) fn history(&mut self, id: &str, from: ConnId, now: Instant) -> HttpOutcome {
        if self.sessions.get(id).is_none() {
            return HttpOutcome::Respond(session_not_found());
        }
        self.touch(id, now);
        if let Some(response) = self.history_response(id) {
            return HttpOutcome::Respond(response);
        }
        self.sessions.wait_for_history(id, from, now);
        HttpOutcome::Pending
    }

    /// The history body, if the session's history is in RAM: a snapshot
    /// of the messages (shared, not copied), produced a slice at a time as
    /// the socket takes it.
    fn history_response(&self, id: &str) -> Option<Response> {
        let messages = self.sessions.get(id)?.messages()?;
        let body = crate::http::body::history(id, messages);
        Some(Response::json(200, Vec::new()).with_rest(body))
    }

    /// The reader's answer to `read`: waiting history requests are
    /// answered, and a turn that waited for the history starts (or, when
    /// it could not be read, ends with why).
    pub fn history_read(
        &mut self,
        read: HistoryRead,
        result: Result<Vec<String>, String>,
        now: Instant,
        sink: &mut dyn Sink,
    ) {
        let Some(loaded) = self.sessions.history_read(read, result, now) else {
            return;
        };
        let id = loaded.id;
        for conn in loaded.waiters {
            let response = match &loaded.outcome {
                LoadOutcome::Gone => session_not_found(),
                LoadOutcome::Failed(why) => Response::detail(
                    500,
                    &format!("The session's history could not be read from the journal: {why}"),
                ),
                LoadOutcome::Ready => self.history_response(&id).unwrap_or_else(|| {
                    Response::detail(500, "The session's history is not in memory")
                }),
            };
            sink.respond(conn, response);
        }
        match loaded.outcome {
            LoadOutcome::Ready => {
                let waiting = self
                    .sessions
                    .get(&id)
                    .and_then(|s| s.running())
                    .is_some_and(|t| !t.has_begun());
                if waiting {
                    self.activate(&id);
                }
            }
            LoadOutcome::Failed(why) => {
                if turns::history_unreadable(&mut self.sessions, &id, &why, sink, now) {
                    self.activate(&id);
                }
            }
            LoadOutcome::Gone => {}
        }
    }

    /// Cold histories to read back, asked for since the last call.
    pub fn take_history_reads(&mut self) -> Vec<HistoryRead> {
        self.sessions.take_reads()
    }
}
