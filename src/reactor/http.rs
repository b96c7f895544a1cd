//! HTTP/1.1 connections in the loop: reading, parsing (the sans-IO
//! [`RequestParser`]), handing requests to the service, queueing answers
//! in order, and the switch to a WebSocket or an event stream.

use std::io;
use std::time::Instant;

use bytes::Bytes;

use super::access::{self, RequestLog};
use super::conn::{Conn, HttpConn, State, Transport};
use super::conn_sink::sink;
use super::sse;
use super::timers::TimerAction;
use super::{Server, HTTP_OUT_HIGH, READ_CHUNK, WORK_PER_TURN};
use crate::config::Limits;
use crate::http::{response, ParserLimits, Progress, Response};
use crate::metrics::TransportMetrics;
use crate::service::HttpOutcome;

impl Server {
    pub(super) fn parser_limits(&self) -> ParserLimits {
        ParserLimits {
            max_head: self.limits.max_head_bytes,
            max_body: self.limits.max_body_bytes,
            id_header: self.id_header,
        }
    }

    /// Parses and answers requests, reading as needed, until the socket
    /// would block, a request waits for a turn, or the budget runs out.
    pub(super) fn drive_http(&mut self, slot: usize, now: Instant) {
        let Some(id) = self.conn_id(slot) else { return };
        let mut budget = WORK_PER_TURN;
        loop {
            let Some(Conn {
                state: State::Http(h),
                ..
            }) = self.conns.get_mut(slot)
            else {
                return;
            };
            if h.waiting || !h.keep_alive || h.body.is_some() {
                break;
            }
            if h.io.queued() > HTTP_OUT_HIGH {
                h.stalled_on_output = true;
                break;
            }
            let was_idle = h.parser.is_idle() && h.inbuf.is_empty();
            let (used, progress) = h.parser.advance(&h.inbuf);
            h.inbuf.drain(..used);
            match progress {
                Progress::NeedMore => {
                    match read_some(&mut h.io, &mut h.inbuf, &mut self.read_buf) {
                        ReadResult::Data => {
                            h.last_progress = now;
                            if was_idle {
                                h.request_started = now;
                            }
                        }
                        ReadResult::WouldBlock => break,
                        ReadResult::Eof => {
                            h.peer_eof = true;
                            break;
                        }
                        ReadResult::Error => return self.drop_conn(slot, now),
                    }
                }
                Progress::SendContinue => h.io.push(Bytes::from_static(response::CONTINUE)),
                Progress::Reject(reject) => {
                    let log = self.access_log;
                    refuse(h, &mut self.metrics, log, reject.status, reject.detail);
                    break;
                }
                Progress::Request(req) => {
                    let stopping =
                        self.shutdown_deadline.is_some() || self.draining_until.is_some();
                    let keep_alive = req.head.keep_alive && !stopping;
                    if h.inbuf.capacity() > READ_CHUNK && h.inbuf.is_empty() {
                        h.inbuf = Vec::new();
                    }
                    let request = RequestLog {
                        route: self.app.route_label(&req.head.path),
                        line: self
                            .access_log
                            .then(|| (req.head.method.clone(), req.head.path.clone())),
                        started: h.request_started,
                        client: access::forwarded_client(
                            h.peer,
                            req.head.forwarded_for.as_deref(),
                            &self.trusted_proxies,
                        ),
                    };
                    let peer = h.peer;
                    let records = self.records;
                    let mut outcome = self.app.handle_http(req, id, now, &mut sink!(self));
                    // Whatever the request changed is in the journal before
                    // its answer is queued (and the answer waits for it).
                    self.app.persist_pending(&mut sink!(self));
                    let changed = self.records != records;
                    let epoch = self.durability.epoch;
                    let Some(Conn {
                        state: State::Http(h),
                        ..
                    }) = self.conns.get_mut(slot)
                    else {
                        return;
                    };
                    h.served += 1;
                    h.request_started = now;
                    let answered = match &mut outcome {
                        HttpOutcome::Respond(resp) => {
                            if changed {
                                h.io.barrier(epoch);
                            }
                            let bytes = queue_response(h, resp, keep_alive);
                            h.keep_alive = keep_alive;
                            Some(bytes)
                        }
                        HttpOutcome::Pending => None,
                        HttpOutcome::Upgrade(upgrade) => Some((101, upgrade.response.len())),
                        HttpOutcome::EventStream(_) | HttpOutcome::Run(_) => {
                            Some((200, sse::HEAD_LEN))
                        }
                    };
                    match answered {
                        Some((status, bytes)) => access::record(
                            &mut self.metrics,
                            self.access_log,
                            peer,
                            &request,
                            status,
                            bytes,
                        ),
                        None => h.pending_log = Some(request),
                    }
                    match outcome {
                        HttpOutcome::Respond(_) => {}
                        HttpOutcome::Pending => {
                            h.waiting = true;
                            h.waiting_keep_alive = keep_alive;
                        }
                        HttpOutcome::Upgrade(upgrade) => {
                            return self.upgrade(slot, id, upgrade, now)
                        }
                        HttpOutcome::EventStream(stream) => {
                            return self.open_stream(slot, id, stream, now)
                        }
                        HttpOutcome::Run(run) => return self.open_run(slot, run, now),
                    }
                    budget -= 1;
                    if budget == 0 {
                        self.retry.push(slot);
                        break;
                    }
                }
            }
        }
        self.dirty.push(slot);
        self.maybe_finish_http(slot, now);
    }

    /// Moves an HTTP connection that has nothing more to do to closing.
    pub(super) fn maybe_finish_http(&mut self, slot: usize, now: Instant) {
        let Some(Conn {
            state: State::Http(h),
            ..
        }) = self.conns.get_mut(slot)
        else {
            return;
        };
        if h.waiting || h.body.is_some() {
            return;
        }
        // At EOF everything parseable has been parsed (reading comes last),
        // so what is left can never complete.
        if !h.keep_alive || h.peer_eof {
            self.begin_close(slot, now);
        }
    }
}

/// Queues `resp` (head and body; the rest of the body, if any, is taken
/// to be produced as the socket takes it: see [`HttpConn::produce`]);
/// returns its status and size.
pub(super) fn queue_response(
    h: &mut HttpConn,
    resp: &mut Response,
    keep_alive: bool,
) -> (u16, usize) {
    let head = resp.encode(keep_alive);
    let mut size = head.len();
    h.io.push(Bytes::from(head));
    if let Some(rest) = resp.rest.take() {
        size += rest.remaining();
        h.body = Some(rest);
    }
    (resp.status, size)
}

/// Answers a request that never got a route (refused by the parser, or
/// timed out) with `status` and closes after it; counted and logged.
pub(super) fn refuse(
    h: &mut HttpConn,
    metrics: &mut TransportMetrics,
    access_log: bool,
    status: u16,
    detail: &str,
) {
    let bytes = Response::detail(status, detail).encode(false);
    let request = RequestLog::unparsed(h.request_started);
    access::record(metrics, access_log, h.peer, &request, status, bytes.len());
    h.io.push(Bytes::from(bytes));
    h.keep_alive = false;
}

/// What an HTTP connection's timers call for.
pub(super) fn http_timer(h: &HttpConn, now: Instant, l: &Limits) -> TimerAction {
    if h.waiting {
        return TimerAction::None;
    }
    if h.body.is_some() {
        // A response is going out: no new request is read meanwhile, and
        // only a client that stopped taking it is closed.
        if now >= h.last_progress + l.keepalive_timeout {
            return TimerAction::CloseQuietly;
        }
        return TimerAction::None;
    }
    if h.parser.in_body() {
        // Like nginx's client_body_timeout: time between reads that progress.
        if now >= h.last_progress + l.header_timeout {
            return TimerAction::RequestTimeout;
        }
    } else if !h.inbuf.is_empty() || (h.served == 0 && h.io.queued() == 0) {
        // A head is arriving (or a new connection has sent nothing yet).
        if now >= h.request_started + l.header_timeout {
            return TimerAction::RequestTimeout;
        }
    } else if now >= h.last_progress + l.keepalive_timeout {
        return TimerAction::CloseQuietly;
    }
    TimerAction::None
}

enum ReadResult {
    Data,
    WouldBlock,
    Eof,
    Error,
}

fn read_some(io: &mut Transport, inbuf: &mut Vec<u8>, chunk: &mut [u8]) -> ReadResult {
    loop {
        match io.read_socket(chunk) {
            Ok(0) => return ReadResult::Eof,
            Ok(n) => {
                inbuf.extend_from_slice(&chunk[..n]);
                return ReadResult::Data;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ReadResult::WouldBlock,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return ReadResult::Error,
        }
    }
}
