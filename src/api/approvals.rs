//! The tool-approval routes and op: `GET`/`POST
//! /api/sessions/{id}/approvals` and the WebSocket `approve`. Deciding
//! clears the session's pending calls, tells every client
//! (`approval_resolved`) and queues the resumed turn; the checks are
//! [`crate::approvals`]'.

use std::time::Instant;

use serde::Serialize;
use serde_json::Value;

use super::chat_body::json_object;
use super::{busy, session_not_found, unprocessable, App, HttpOutcome};
use crate::approvals::{self, PendingCall, ResolvedData};
use crate::events::{self, ErrorData};
use crate::http::{Request, Response};
use crate::sink::{ConnId, Sink};
use crate::turns::{self, Turn};

impl App {
    /// The calls session `id` waits on (empty: none, or no such session).
    pub(super) fn pending_calls(&self, id: &str) -> &[PendingCall] {
        self.sessions.get(id).map_or(&[], |s| s.pending_approvals())
    }

    /// `GET /api/sessions/{id}/approvals`.
    pub(super) fn list_approvals(&mut self, id: &str, now: Instant) -> Response {
        #[derive(Serialize)]
        struct Listing<'a> {
            session_id: &'a str,
            tool_calls: &'a [PendingCall],
        }
        let Some(session) = self.sessions.get(id) else {
            return session_not_found();
        };
        let body = serde_json::to_vec(&Listing {
            session_id: id,
            tool_calls: session.pending_approvals(),
        })
        .unwrap_or_default();
        self.touch(id, now);
        Response::json(200, body)
    }

    /// `POST /api/sessions/{id}/approvals` with `{"approvals": {...}}`:
    /// answered when the resumed turn ends, as a chat is.
    pub(super) fn decide(
        &mut self,
        req: &Request,
        id: &str,
        from: ConnId,
        now: Instant,
        sink: &mut dyn Sink,
    ) -> HttpOutcome {
        if self.sessions.get(id).is_none() {
            return HttpOutcome::Respond(session_not_found());
        }
        let mut body = match json_object(&req.body) {
            Ok(map) => map,
            Err(errors) => return HttpOutcome::Respond(unprocessable(errors)),
        };
        let decisions = match approvals::parse_decisions(body.remove("approvals"), &["body"]) {
            Ok(decisions) => decisions,
            Err(errors) => return HttpOutcome::Respond(unprocessable(errors)),
        };
        if self.pending_calls(id).is_empty() {
            return HttpOutcome::Respond(turns::coded_error(
                409,
                "no_pending_approval",
                approvals::NO_PENDING_MESSAGE,
            ));
        }
        if let Err(why) = self.check(id, &decisions) {
            return HttpOutcome::Respond(Response::detail(422, &why));
        }
        match self.resume(id, decisions, Some(from), None, now, sink) {
            Ok(()) => HttpOutcome::Pending,
            Err(()) => HttpOutcome::Respond(busy()),
        }
    }

    /// The WebSocket `approve` op. With nothing pending it keeps the
    /// original's reply (a broadcast `approval_unsupported`).
    pub(super) fn ws_approve(
        &mut self,
        conn: ConnId,
        id: &str,
        decisions: Option<Value>,
        now: Instant,
        sink: &mut dyn Sink,
    ) {
        if self.pending_calls(id).is_empty() {
            let data = ErrorData {
                code: Some("approval_unsupported"),
                message: turns::APPROVAL_UNSUPPORTED,
            };
            self.sessions.broadcast(id, "error", data, sink);
            return;
        }
        let Ok(decisions) = approvals::parse_decisions(decisions, &["data"]) else {
            return sink.send(conn, &events::error_frame(None, "Invalid message format"));
        };
        if let Err(why) = self.check(id, &decisions) {
            return sink.send(conn, &events::error_frame(Some("approval_mismatch"), &why));
        }
        if self.resume(id, decisions, None, None, now, sink).is_err() {
            sink.send(
                conn,
                &events::error_frame(Some("busy"), turns::BUSY_MESSAGE),
            );
        }
    }

    fn check(&self, id: &str, decisions: &Value) -> Result<(), String> {
        let empty = serde_json::Map::new();
        let map = decisions.as_object().unwrap_or(&empty);
        approvals::check_decisions(self.pending_calls(id), map)
    }

    /// Accepted decisions: the pending calls are cleared, every client is
    /// told, and the resumed turn is queued (nothing else can be running
    /// or queued while calls are pending), answered to `waiter` (REST) or
    /// streamed to `stream` (AG-UI). Err: the turn was not taken.
    pub(super) fn resume(
        &mut self,
        id: &str,
        decisions: Value,
        waiter: Option<ConnId>,
        stream: Option<ConnId>,
        now: Instant,
        sink: &mut dyn Sink,
    ) -> Result<(), ()> {
        if self.sessions.get(id).is_none_or(|s| s.running().is_some()) {
            // Pending calls mean an idle session; this cannot happen.
            return Err(());
        }
        let calls = self.sessions.take_approvals(id);
        let mut turn = Turn::resumed(self.new_turn_id(), decisions.to_string(), calls, waiter);
        if let Some(conn) = stream {
            turn = turn.streamed_to(conn);
        }
        // The session is idle: the turn is taken, and runs.
        self.submit(id, turn, now).map_err(drop)?;
        let data = ResolvedData {
            approvals: &decisions,
        };
        self.sessions.broadcast(id, "approval_resolved", data, sink);
        Ok(())
    }
}
