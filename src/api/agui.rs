//! `POST /api/ag-ui`: a run of the AG-UI protocol is a turn of the session
//! its `threadId` names, queued like any turn and broadcast to the
//! session's clients; this connection gets the turn's events as an AG-UI
//! event stream ([`crate::agui`]). Errors found before the stream starts
//! are the usual JSON answers; a resume that does not answer the pending
//! interrupts is a run that ends with `RUN_ERROR`, and changes nothing.

use std::time::Instant;

use super::chat_body::json_object;
use super::{busy, invalid_id, unprocessable, App, HttpOutcome};
use crate::agui::{self, Ask, RunStream};
use crate::http::{Request, Response};
use crate::sessions::valid_session_id;
use crate::sink::{ConnId, Sink};
use crate::turns::{self, Refused, Turn};

impl App {
    pub(super) fn ag_ui_run(
        &mut self,
        req: &Request,
        from: ConnId,
        now: Instant,
        sink: &mut dyn Sink,
    ) -> HttpOutcome {
        let input = match json_object(&req.body).and_then(|body| agui::parse_input(&body)) {
            Ok(input) => input,
            Err(errors) => return HttpOutcome::Respond(unprocessable(errors)),
        };
        let id = input.thread_id.as_str();
        if !valid_session_id(id) {
            return HttpOutcome::Respond(invalid_id());
        }
        let run = RunStream::new(id, &input.run_id);
        match input.ask {
            Ask::Prompt(prompt) => {
                if let Err(why) = self.ensure_session(Some(id), now, sink) {
                    return HttpOutcome::Respond(Response::detail(503, &why));
                }
                let turn = Turn::new(self.new_turn_id(), prompt, None).streamed_to(from);
                match self.submit(id, turn, now) {
                    Ok(()) => HttpOutcome::Run(Box::new(run)),
                    Err(Refused::Busy) => HttpOutcome::Respond(busy()),
                    Err(Refused::ApprovalPending) => {
                        HttpOutcome::Respond(turns::pending_response(self.pending_calls(id)))
                    }
                }
            }
            Ask::Resume(entries) => {
                // A resume changes nothing it does not decide: an unknown
                // thread is not created (nothing is pending there).
                let pending = self.pending_calls(id).to_vec();
                let decisions = match agui::resume_decisions(&entries, &pending) {
                    Ok(decisions) => decisions,
                    Err(why) => {
                        let code = if pending.is_empty() {
                            "no_pending_approval"
                        } else {
                            "approval_mismatch"
                        };
                        return HttpOutcome::Run(Box::new(run.failing(why, Some(code))));
                    }
                };
                match self.resume(id, decisions, None, Some(from), now, sink) {
                    Ok(()) => HttpOutcome::Run(Box::new(run.resuming(pending))),
                    Err(()) => HttpOutcome::Respond(busy()),
                }
            }
        }
    }
}
