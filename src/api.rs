//! The API: routing, auth, every REST handler and WebSocket op of the
//! contract, over the session table and the turn engine.
//!
//! [`App`] is the whole server state that is not a socket. The reactor
//! hands it parsed requests and WebSocket messages and carries out what it
//! returns (or what it gives the [`Sink`]); unit tests do the same with a
//! [`crate::sink::Recorder`].

use std::time::{Duration, Instant};

use serde_json::json;

use crate::agent::AgentEvent;
use crate::config::AgentChoice;
use crate::config::Config;
use crate::events;
use crate::http::{Head, Request, Response};
use crate::sessions::{valid_session_id, SessionTable};
use crate::sink::{ConnId, Sink};
use crate::turns::{self, Engine, Refused, StepOutcome, Turn};
use crate::ws::{self, ClientOp};

mod agui;
mod approvals;
mod as_service;
mod auth;
mod chat_body;
mod history;
mod routes;
mod upkeep;

pub use auth::key_matches;
pub use chat_body::validate_chat_body;
#[cfg(test)]
pub(crate) use routes::ROUTES;
pub use routes::{percent_decode, since_param};
use routes::{resume_point, route, Route, Target};

pub const UNAUTHORIZED: &str = "Invalid or missing API key";
pub const ORIGIN_NOT_ALLOWED: &str = "Origin not allowed";
const NOT_RUNNING: &str = "No turn is running";
const TOO_MANY_SESSIONS: &str = "Too many sessions";
const NOT_ON_THIS_INSTANCE: &str = "Session not on this instance: use POST /api/sessions/{id}/chat";
/// Longest interval between two sweeps of stale sessions.
const SWEEP_EVERY: Duration = Duration::from_secs(300);
/// Sessions looked at per loop iteration by the TTL sweep.
const SWEEP_BUDGET: usize = 256;
/// How soon turns paused for a slow client are looked at again.
const PAUSED_RECHECK: Duration = Duration::from_millis(10);

pub use crate::service::{EventStream, HttpOutcome, Upgrade};

pub struct App {
    config: Config,
    pub sessions: SessionTable,
    /// Ids of sessions with a running turn, in the order they started.
    active: Vec<String>,
    /// Set when `active` gained a session since the last `run_turns`.
    newly_active: bool,
    engine: Engine,
    next_turn_id: u64,
    next_sweep: Instant,
    /// The sweep pass under way freed something; the last pass did.
    freed_in_pass: bool,
    pass_freed: bool,
    health_body: Vec<u8>,
    page: crate::page::ChatPage,
}

impl App {
    pub fn new(config: Config, now: Instant) -> Self {
        let health_body = json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")})
            .to_string()
            .into_bytes();
        let retention = crate::sessions::Retention {
            events: config.limits.retain_events,
            bytes: config.limits.retain_bytes,
            idle: config.limits.retain_idle,
            history_idle: config.limits.history_idle,
        };
        let sessions = SessionTable::with_retention(config.limits.max_sessions, retention);
        let engine = Engine {
            echo: config.agent.choice == AgentChoice::Echo,
            model_name: match config.agent.choice {
                AgentChoice::Echo => "echo".to_owned(),
                AgentChoice::Exec => "exec".to_owned(),
                AgentChoice::Worker => "worker".to_owned(),
                AgentChoice::OpenAi => config.agent.model.clone().unwrap_or_default(),
            },
            echo_delay: config.agent.echo_delay,
            high_water: config.limits.max_ws_output_bytes / 2,
        };
        let mut app = App {
            config,
            sessions,
            active: Vec::new(),
            newly_active: false,
            engine,
            next_turn_id: 0,
            next_sweep: now,
            freed_in_pass: false,
            pass_freed: false,
            health_body,
            page: crate::page::ChatPage::new(),
        };
        app.next_sweep = now + app.sweep_interval();
        app
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The Origin policy, against cross-site WebSocket hijacking and
    /// cross-site requests (a page may POST `text/plain` to `/api/chat`
    /// without a CORS preflight, and the body is parsed as JSON whatever its
    /// type). Browsers send `Origin`; other clients do not. Allowed: no
    /// `Origin`, the server's own origin (`Origin` authority = `Host`), or
    /// one listed with `--allowed-origin`. With an API key set every origin
    /// is allowed: a hostile page cannot know the key, and a browser UI on
    /// another origin keeps working as with the original server.
    fn origin_allowed(&self, head: &Head) -> bool {
        if self.config.api_key.is_some() {
            return true;
        }
        let Some(origin) = head.origin.as_deref() else {
            return true;
        };
        if self
            .config
            .allowed_origins
            .iter()
            .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
        {
            return true;
        }
        let authority = origin.split_once("://").map(|(_, a)| a);
        matches!((authority, head.host.as_deref()), (Some(a), Some(h)) if a.eq_ignore_ascii_case(h))
    }

    /// The key from `X-API-Key`, else from `Authorization: Bearer`.
    fn head_authorized(&self, head: &Head) -> bool {
        self.authorized(head.api_key.as_deref().or(head.bearer.as_deref()))
    }

    fn authorized(&self, candidate: Option<&[u8]>) -> bool {
        match (&self.config.api_key, candidate) {
            (None, _) => true,
            (Some(key), Some(c)) => key_matches(c, key.as_bytes()),
            (Some(_), None) => false,
        }
    }

    /// Answers one HTTP request from connection `from`.
    pub fn handle_http(
        &mut self,
        req: Request,
        from: ConnId,
        now: Instant,
        sink: &mut dyn Sink,
    ) -> HttpOutcome {
        let path = percent_decode(&req.head.path);
        let route = match route(&path) {
            Some(Target::Rest(route)) => route,
            Some(ws @ Target::WebSocket(_))
                if !ws.allowed().contains(&req.head.method.as_str()) =>
            {
                let allow = ws.allowed().join(", ");
                return HttpOutcome::Respond(
                    Response::detail(405, "Method Not Allowed").with_header("allow", allow),
                );
            }
            Some(Target::WebSocket(id)) => return self.upgrade(&req, id, now, sink),
            None => return HttpOutcome::Respond(Response::detail(404, "Not Found")),
        };
        if !route.allowed().contains(&req.head.method.as_str()) {
            let allow = route.allowed().join(", ");
            return HttpOutcome::Respond(
                Response::detail(405, "Method Not Allowed").with_header("allow", allow),
            );
        }
        if !route.public() && !self.origin_allowed(&req.head) {
            return HttpOutcome::Respond(Response::detail(403, ORIGIN_NOT_ALLOWED));
        }
        let open =
            route.public() || matches!(route, Route::Metrics) && self.config.ops.metrics_public;
        if !open && !self.head_authorized(&req.head) {
            return HttpOutcome::Respond(Response::detail(401, UNAUTHORIZED));
        }
        let response = match route {
            Route::Page => self.page.response(),
            Route::OpenApi => crate::docs::openapi(),
            Route::AsyncApi => crate::docs::asyncapi(),
            Route::Docs => crate::docs::page(),
            Route::Health => Response::json(200, self.health_body.clone()),
            Route::Metrics => self.metrics(sink),
            Route::Sessions if req.head.method == "POST" => {
                let hint = self.id_hint(&req.head);
                match self.ensure_new_session(hint, now, sink) {
                    Ok(id) => Response::json(201, self.sessions.info_json(&id).unwrap_or_default()),
                    Err(why) => Response::detail(503, &why),
                }
            }
            Route::Sessions => Response::json(200, self.sessions.list_json()),
            Route::History(id) if !valid_session_id(id) => invalid_id(),
            Route::History(id) => return self.history(id, from, now),
            Route::Session(id) if !valid_session_id(id) => invalid_id(),
            Route::Session(id) => {
                // Deleting a session cancels its turns (their REST callers get 409).
                turns::cancel(&mut self.sessions, id, sink, &self.engine);
                match self.sessions.remove(id) {
                    Some(_) => {
                        for &conn in self.sessions.subscribers(id) {
                            sink.session_gone(conn);
                        }
                        Response::json(204, Vec::new())
                    }
                    None => session_not_found(),
                }
            }
            Route::Chat => return self.chat(&req, None, from, now, sink),
            Route::SessionChat(id) if !valid_session_id(id) => invalid_id(),
            Route::SessionChat(id) => return self.chat(&req, Some(id), from, now, sink),
            Route::Events(id) => return self.event_stream(&req.head, id, now),
            Route::Approvals(id) if !valid_session_id(id) => invalid_id(),
            Route::Approvals(id) if req.head.method == "GET" => self.list_approvals(id, now),
            Route::Approvals(id) => return self.decide(&req, id, from, now, sink),
            Route::AgUi => return self.ag_ui_run(&req, from, now, sink),
        };
        HttpOutcome::Respond(response)
    }

    fn touch(&mut self, id: &str, now: Instant) {
        if let Some(s) = self.sessions.get_mut(id) {
            s.last_activity = now;
        }
    }

    /// `POST /api/chat`, or `POST /api/sessions/{path_id}/chat` (the
    /// path's id stands for the body's `session_id`, which is then ignored).
    fn chat(
        &mut self,
        req: &Request,
        path_id: Option<&str>,
        from: ConnId,
        now: Instant,
        sink: &mut dyn Sink,
    ) -> HttpOutcome {
        let hint = self.id_hint(&req.head);
        let (content, body_id) = match validate_chat_body(&req.body) {
            Ok(parts) => parts,
            Err(errors) => return HttpOutcome::Respond(unprocessable(errors)),
        };
        if path_id.is_none() && self.config.id_from_header.is_some() {
            // Behind a sharding proxy a body's id was not routed: this may
            // be the wrong instance, and creating the session here would
            // fork its history.
            if let Some(id) = body_id.as_deref() {
                if valid_session_id(id) && self.sessions.get(id).is_none() {
                    return HttpOutcome::Respond(Response::detail(421, NOT_ON_THIS_INSTANCE));
                }
            }
        }
        let session_id = path_id.map(str::to_owned).or(body_id);
        if session_id
            .as_deref()
            .is_some_and(|id| !valid_session_id(id))
        {
            return HttpOutcome::Respond(invalid_id());
        }
        let created = match session_id.as_deref() {
            Some(id) => self.ensure_session(Some(id), now, sink),
            None => self.ensure_new_session(hint, now, sink),
        };
        let id = match created {
            Ok(id) => id,
            Err(why) => return HttpOutcome::Respond(Response::detail(503, &why)),
        };
        let turn = Turn::new(self.new_turn_id(), content, Some(from));
        match self.submit(&id, turn, now) {
            Ok(()) => HttpOutcome::Pending,
            Err(Refused::Busy) => HttpOutcome::Respond(busy()),
            Err(Refused::ApprovalPending) => {
                HttpOutcome::Respond(turns::pending_response(self.pending_calls(&id)))
            }
        }
    }

    fn submit(&mut self, id: &str, turn: Turn, now: Instant) -> Result<(), Refused> {
        if turns::submit(
            &mut self.sessions,
            id,
            turn,
            self.config.limits.max_queued_turns,
            now,
        )? {
            self.activate(id);
        }
        Ok(())
    }

    /// `GET /metrics`: the session table's counters, then the transport's.
    fn metrics(&self, sink: &mut dyn Sink) -> Response {
        let mut out = crate::metrics::Exposition::new();
        out.family(
            "autopoiesis_build_info",
            "gauge",
            "The running version (value 1).",
        );
        out.sample(
            "autopoiesis_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))],
            1,
        );
        let resident = crate::sessions::hot_sessions();
        self.sessions
            .metrics
            .write(self.sessions.len(), resident, &mut out);
        out.single(
            "autopoiesis_history_loads_in_flight",
            "gauge",
            "Cold histories being read back from the journal now.",
            self.sessions.loads_in_flight(),
        );
        sink.write_metrics(&mut out);
        Response::typed(200, crate::metrics::CONTENT_TYPE, out.into_bytes())
    }

    /// `GET /api/sessions/{id}/events`: checks the session and the resume
    /// point; the reactor then opens the stream and calls
    /// [`subscribed`](Self::subscribed).
    fn event_stream(&mut self, head: &Head, id: &str, now: Instant) -> HttpOutcome {
        if !valid_session_id(id) {
            return HttpOutcome::Respond(invalid_id());
        }
        let since = match resume_point(head) {
            Ok(since) => since,
            Err(why) => return HttpOutcome::Respond(Response::detail(400, why)),
        };
        if self.sessions.get(id).is_none() {
            return HttpOutcome::Respond(session_not_found());
        }
        self.touch(id, now);
        HttpOutcome::EventStream(EventStream {
            session_id: id.to_owned(),
            since,
        })
    }

    fn upgrade(
        &mut self,
        req: &Request,
        id: &str,
        now: Instant,
        sink: &mut dyn Sink,
    ) -> HttpOutcome {
        let head = &req.head;
        // A plain GET is not a WebSocket route (FastAPI answers it 404).
        if !head.upgrade_websocket {
            return HttpOutcome::Respond(Response::detail(404, "Not Found"));
        }
        let accept = match ws::check_handshake(head) {
            Ok(accept) => accept,
            Err(response) => return HttpOutcome::Respond(response),
        };
        if !self.origin_allowed(head) {
            return HttpOutcome::Respond(Response::detail(403, ORIGIN_NOT_ALLOWED));
        }
        let mut protocol = None;
        let mut since = None;
        let authorized = self.config.api_key.is_none() || self.head_authorized(head) || {
            protocol = ws::key_from_subprotocols(&head.ws_protocols, |k| self.authorized(Some(k)));
            protocol.is_some()
        };
        if authorized {
            if !valid_session_id(id) {
                return HttpOutcome::Respond(invalid_id());
            }
            if let Some(query) = &head.query {
                match since_param(query) {
                    Some(Err(())) => {
                        return HttpOutcome::Respond(Response::detail(400, "Invalid since"))
                    }
                    Some(Ok(n)) => since = Some(n),
                    None => {}
                }
            }
            if let Err(why) = self.ensure_session(Some(id), now, sink) {
                return HttpOutcome::Respond(Response::detail(503, &why));
            }
        }
        if !authorized {
            // Select an offered protocol anyway: a browser fails a handshake
            // that offered protocols and got none back, and then cannot see
            // the 4001 close code that tells it the key was wrong.
            protocol = head
                .ws_protocols
                .iter()
                .find(|p| p.starts_with(ws::KEY_SUBPROTOCOL_PREFIX))
                .or(head.ws_protocols.first())
                .map(String::as_str);
        } else if protocol.is_none() {
            // Authorized otherwise (no key set, or the header): a browser
            // that offered its key protocol still needs one selected, or it
            // fails the handshake.
            protocol = head
                .ws_protocols
                .iter()
                .find(|p| p.starts_with(ws::KEY_SUBPROTOCOL_PREFIX))
                .map(String::as_str);
        }
        HttpOutcome::Upgrade(Upgrade {
            session_id: id.to_owned(),
            response: ws::switching_protocols(&accept, protocol),
            authorized,
            since,
        })
    }

    /// A subscriber has gone (WebSocket or event stream).
    pub fn unsubscribed(&mut self, conn: ConnId, session_id: &str, now: Instant) {
        self.sessions.unsubscribe(session_id, conn);
        self.touch(session_id, now);
    }

    /// A subscriber (WebSocket client or event stream) of `session_id` is
    /// open: subscribe it, and with `?since=N` / `Last-Event-ID: N` first
    /// replay the retained events after N (or tell it to resync). Replay
    /// and subscription happen in one step of the loop, so nothing is
    /// missed or sent twice in between.
    pub fn subscribed(
        &mut self,
        conn: ConnId,
        session_id: &str,
        since: Option<u64>,
        now: Instant,
        sink: &mut dyn Sink,
    ) {
        if let (Some(since), Some(session)) = (since, self.sessions.get(session_id)) {
            match session.events_after(since) {
                Some(events) => {
                    for event in events {
                        sink.deliver(conn, event);
                    }
                }
                None => {
                    let data = serde_json::json!({ "since": since });
                    sink.deliver(conn, &events::Event::new("resync", data, None));
                }
            }
        }
        self.sessions.subscribe(session_id, conn);
        self.touch(session_id, now);
        // A client that attaches (or resumes, or is told to resync) will
        // likely fetch the history or send a message next: a cold history
        // starts being read back now.
        self.sessions.want_history(session_id, now);
    }

    /// Rebuilds sessions from the journal (at start).
    pub fn restore(&mut self, records: Vec<crate::journal::Record>, now: Instant) {
        self.sessions.restore(records, now);
    }

    /// Hands pending state changes to the journal (called by the reactor
    /// before it writes the iteration's output).
    pub fn persist_pending(&mut self, sink: &mut dyn Sink) {
        // A failure is logged by the journal and refuses later writes.
        let _ = self.sessions.flush_changes(sink);
    }

    /// `--id-from-header`'s value on this request, if the flag is set.
    fn id_hint<'h>(&self, head: &'h Head) -> Option<&'h str> {
        self.config.id_from_header.as_ref()?;
        head.id_hint.as_deref()
    }

    /// A new session: under `hint` (a sharding proxy's request id) when it
    /// is a valid id not in use, else under a random id.
    fn ensure_new_session(
        &mut self,
        hint: Option<&str>,
        now: Instant,
        sink: &mut dyn Sink,
    ) -> Result<String, String> {
        match hint.filter(|h| valid_session_id(h) && self.sessions.get(h).is_none()) {
            Some(id) => self.ensure_session(Some(id), now, sink),
            None => self.ensure_session(None, now, sink),
        }
    }

    /// Session `id` (a new random one for None), created if needed and
    /// journaled before anyone hears of it. Err: the 503 message (the
    /// session table is full, or the session could not be saved).
    fn ensure_session(
        &mut self,
        id: Option<&str>,
        now: Instant,
        sink: &mut dyn Sink,
    ) -> Result<String, String> {
        let full = |_| TOO_MANY_SESSIONS.to_owned();
        let (id, new) = match id {
            Some(id) => {
                let new = self.sessions.get(id).is_none();
                self.sessions.get_or_create(id, now).map_err(full)?;
                (id.to_owned(), new)
            }
            None => (self.sessions.create(now).map_err(full)?, true),
        };
        if let Err(why) = self.sessions.flush_changes(sink) {
            if new {
                self.sessions.forget(&id);
            }
            return Err(format!("the session could not be saved: {why}"));
        }
        Ok(id)
    }

    /// Journals every session's exact `seq` (clean shutdown).
    pub fn record_exact_seqs(&mut self) {
        self.sessions.record_exact_seqs();
    }

    /// Sessions with a turn running or queued.
    pub fn busy_sessions(&self) -> Vec<String> {
        self.sessions.busy_ids()
    }

    /// Cancels every turn (shutdown after the grace period).
    pub fn cancel_all(&mut self, sink: &mut dyn Sink) {
        for id in self.busy_sessions() {
            turns::cancel(&mut self.sessions, &id, sink, &self.engine);
        }
    }

    /// A binary frame: not a frame of the contract.
    pub fn ws_binary(
        &mut self,
        conn: ConnId,
        _session_id: &str,
        _data: &[u8],
        sink: &mut dyn Sink,
    ) {
        sink.send(conn, &events::error_frame(None, "Invalid message format"));
    }

    /// One text frame from a WebSocket client of `session_id`.
    pub fn ws_text(
        &mut self,
        conn: ConnId,
        session_id: &str,
        text: &str,
        now: Instant,
        sink: &mut dyn Sink,
    ) {
        let reply = |sink: &mut dyn Sink, code: Option<&str>, message: &str| {
            sink.send(conn, &events::error_frame(code, message));
        };
        match ws::parse_client_op(text) {
            ClientOp::Message(content) => {
                // Looked up per turn: a session deleted over REST comes back.
                if let Err(why) = self.ensure_session(Some(session_id), now, sink) {
                    return reply(sink, Some("unavailable"), &why);
                }
                let turn = Turn::new(self.new_turn_id(), content, None).from_client(conn);
                match self.submit(session_id, turn, now) {
                    Ok(()) => {}
                    Err(Refused::Busy) => reply(sink, Some("busy"), turns::BUSY_MESSAGE),
                    Err(Refused::ApprovalPending) => {
                        let frame =
                            crate::approvals::pending_error_frame(self.pending_calls(session_id));
                        sink.send(conn, &frame);
                    }
                }
            }
            ClientOp::EmptyMessage => reply(sink, None, "Empty message"),
            ClientOp::Invalid => reply(sink, None, "Invalid message format"),
            ClientOp::Unknown(op) => reply(sink, None, &format!("Unknown op: {op}")),
            ClientOp::Approve(approvals) => {
                if let Err(why) = self.ensure_session(Some(session_id), now, sink) {
                    return reply(sink, Some("unavailable"), &why);
                }
                self.ws_approve(conn, session_id, approvals, now, sink);
            }
            ClientOp::Cancel => {
                if !turns::cancel(&mut self.sessions, session_id, sink, &self.engine) {
                    reply(sink, Some("not_running"), NOT_RUNNING);
                }
            }
        }
    }

    /// Starts and streams every running turn one step. Returns when the
    /// turns want the next step: now (more to stream), soon (waiting for a
    /// slow client to drain), at an echo delay's next token, or never.
    pub fn run_turns(&mut self, now: Instant, sink: &mut dyn Sink) -> Option<Instant> {
        self.newly_active = false;
        let mut wake: Option<Instant> = None;
        let mut at = |t: Instant| wake = Some(wake.map_or(t, |w| w.min(t)));
        let mut i = 0;
        while i < self.active.len() {
            match turns::step(&mut self.sessions, &self.active[i], sink, now, &self.engine) {
                StepOutcome::Progress => at(now),
                StepOutcome::Paused => at(now + PAUSED_RECHECK),
                StepOutcome::Sleep(t) => at(t),
                StepOutcome::Waiting | StepOutcome::Idle => {
                    self.active.swap_remove(i);
                    continue;
                }
            }
            i += 1;
        }
        wake
    }

    /// Events from the agent running turn `turn` of session `session_id`.
    pub fn agent_events(
        &mut self,
        session_id: &str,
        turn: u64,
        events: Vec<AgentEvent>,
        now: Instant,
        sink: &mut dyn Sink,
    ) {
        for event in events {
            if turns::agent_event(&mut self.sessions, session_id, turn, event, sink, now) {
                self.activate(session_id);
            }
        }
    }

    /// The agent of turn `turn` failed; the turn ends with `reason`.
    pub fn agent_failed(
        &mut self,
        session_id: &str,
        turn: u64,
        reason: String,
        now: Instant,
        sink: &mut dyn Sink,
    ) {
        if turns::agent_failed(&mut self.sessions, session_id, turn, reason, sink, now) {
            self.activate(session_id);
        }
    }

    /// A session became runnable since the last [`run_turns`](Self::run_turns):
    /// the loop must not sleep before stepping it.
    pub fn has_new_turns(&self) -> bool {
        self.newly_active
    }

    fn activate(&mut self, id: &str) {
        self.newly_active = true;
        // Listing a session twice would step it twice per iteration.
        if !self.active.iter().any(|a| a == id) {
            self.active.push(id.to_owned());
        }
    }

    fn new_turn_id(&mut self) -> u64 {
        self.next_turn_id += 1;
        self.next_turn_id
    }
}

fn invalid_id() -> Response {
    Response::detail(400, "Invalid session id")
}

/// FastAPI's 422 with pydantic's list of errors.
fn unprocessable(errors: Vec<serde_json::Value>) -> Response {
    Response::json(422, json!({ "detail": errors }).to_string().into_bytes())
}

/// 429: the session's turn queue is full.
fn busy() -> Response {
    turns::coded_error(429, "busy", turns::BUSY_MESSAGE)
}

fn session_not_found() -> Response {
    Response::detail(404, "Session not found")
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_approvals;
#[cfg(test)]
mod tests_stream;
