//! Server-Sent Events connections in the loop: the switch from HTTP once
//! the core accepted `GET /api/sessions/{id}/events`, draining (and
//! dropping) what the client sends, and keep-alive comments.
//!
//! The stream is close-delimited (`Connection: close`, no length, no
//! chunking): every event is the shared bytes of [`crate::events::Event`]
//! with nothing added per client. An AG-UI run (`POST /api/ag-ui`) is the
//! same kind of stream, carrying its turn's events translated by its
//! [`RunStream`], and closed when the run ends.

use std::io;
use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;

use super::conn::{close_subscriber, Conn, HttpConn, SseConn, State};
use super::conn_sink::sink;
use super::{Server, WORK_PER_TURN};
use crate::agui::RunStream;
use crate::api::EventStream;
use crate::sink::ConnId;
use crate::ws::close;

/// The response head of an event stream.
const SSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
cache-control: no-cache\r\nx-accel-buffering: no\r\nconnection: close\r\n\r\n";

/// Bytes of [`SSE_HEAD`] (the access log's size of an event stream).
pub(super) const HEAD_LEN: usize = SSE_HEAD.len();

/// Bytes a client may send on its event stream before it is closed.
const MAX_INPUT: usize = 64 * 1024;

/// A comment line: keeps proxies and clients from timing the stream out.
const KEEPALIVE: &[u8] = b": keep-alive\n\n";

impl Server {
    /// Turns the HTTP connection in `slot` into an event stream, then
    /// replays and subscribes it in the same step.
    pub(super) fn open_stream(
        &mut self,
        slot: usize,
        id: ConnId,
        stream: EventStream,
        now: Instant,
    ) {
        let session: Rc<str> = Rc::from(stream.session_id);
        if self.switch_to_sse(slot, session.clone(), Vec::new(), None, now) {
            self.app
                .subscribed(id, &session, stream.since, now, &mut sink!(self));
        }
    }

    /// Moves the HTTP connection in `slot` to an event stream of `session`,
    /// its head and `first` bytes queued. False: it was no HTTP connection.
    fn switch_to_sse(
        &mut self,
        slot: usize,
        session: Rc<str>,
        first: Vec<u8>,
        run: Option<Box<RunStream>>,
        now: Instant,
    ) -> bool {
        let Some(conn) = self.conns.get_mut(slot) else {
            return false;
        };
        let State::Http(h) = std::mem::replace(&mut conn.state, State::Moving) else {
            return false;
        };
        let HttpConn { mut io, .. } = *h;
        io.push(Bytes::from_static(SSE_HEAD));
        io.push(Bytes::from(first));
        conn.state = State::Sse(Box::new(SseConn {
            io,
            session,
            last_keepalive: now,
            received: 0,
            run,
        }));
        self.dirty.push(slot);
        true
    }

    /// Turns the HTTP connection in `slot` into an AG-UI run's stream: the
    /// head and `RUN_STARTED` now, the turn's events as the core hands
    /// them over (it is no subscriber), and the close once the run ends.
    pub(super) fn open_run(&mut self, slot: usize, mut run: Box<RunStream>, now: Instant) {
        let mut first = Vec::new();
        let ended = run.start(&mut first);
        let session = Rc::from(run.thread_id());
        if self.switch_to_sse(slot, session, first, Some(run), now) && ended {
            if let Some(gone) = close_subscriber(&mut self.conns, slot, close::NORMAL, "", now) {
                self.gone_subscribers.push(gone);
            }
        }
    }

    /// Reads and drops what an event-stream client sends, until WouldBlock
    /// or the per-iteration budget; at its EOF or an error the stream is
    /// over. A client has nothing to send on a stream: one that sends more
    /// than [`MAX_INPUT`] is closed (as a protocol error).
    pub(super) fn drive_sse(&mut self, slot: usize, now: Instant) {
        let Some(Conn {
            state: State::Sse(s),
            ..
        }) = self.conns.get_mut(slot)
        else {
            return;
        };
        for _ in 0..WORK_PER_TURN {
            match s.io.read_socket(&mut self.read_buf) {
                Ok(0) => return self.drop_conn(slot, now),
                Ok(n) => {
                    s.received += n;
                    if s.received > MAX_INPUT {
                        return self.close_client(slot, close::PROTOCOL_ERROR, "", now);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.drop_conn(slot, now),
            }
        }
        // Budget spent with more to read: the next iteration goes on.
        self.retry.push(slot);
    }

    /// Queues a keep-alive comment to the stream in `slot` when one is due.
    pub(super) fn sse_keepalive(&mut self, slot: usize, now: Instant) {
        let every = self.limits.ws_ping_interval;
        if let Some(Conn {
            state: State::Sse(s),
            ..
        }) = self.conns.get_mut(slot)
        {
            // A reader that is not reading gets nothing more queued; the
            // next event closes it if it stays past the bound.
            let backed_up = s.io.queued() > self.limits.max_ws_output_bytes;
            if now.saturating_duration_since(s.last_keepalive) >= every && !backed_up {
                s.last_keepalive = now;
                s.io.push(Bytes::from_static(KEEPALIVE));
                self.dirty.push(slot);
            }
        }
    }
}
