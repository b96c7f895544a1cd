//! Server-Sent Events connections in the loop: the switch from HTTP once
//! the core accepted `GET /api/sessions/{id}/events`, draining (and
//! dropping) what the client sends, and keep-alive comments.
//!
//! The stream is close-delimited (`Connection: close`, no length, no
//! chunking): every event is the shared bytes of [`crate::events::Event`]
//! with nothing added per client.

use std::io::{self, Read};
use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;

use super::conn::{Conn, HttpConn, SseConn, State};
use super::conn_sink::sink;
use super::Server;
use crate::api::EventStream;
use crate::sink::ConnId;

/// The response head of an event stream.
const SSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
cache-control: no-cache\r\nx-accel-buffering: no\r\nconnection: close\r\n\r\n";

/// Bytes of [`SSE_HEAD`] (the access log's size of an event stream).
pub(super) const HEAD_LEN: usize = SSE_HEAD.len();

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
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        let State::Http(h) = std::mem::replace(&mut conn.state, State::Moving) else {
            return;
        };
        let HttpConn { mut io, .. } = *h;
        io.push(Bytes::from_static(SSE_HEAD));
        let session: Rc<str> = Rc::from(stream.session_id);
        conn.state = State::Sse(Box::new(SseConn {
            io,
            session: session.clone(),
            last_keepalive: now,
        }));
        self.dirty.push(slot);
        self.app
            .stream_opened(id, &session, stream.since, now, &mut sink!(self));
    }

    /// Reads and drops what an event-stream client sends, until WouldBlock;
    /// at its EOF or an error the stream is over.
    pub(super) fn drive_sse(&mut self, slot: usize, now: Instant) {
        let Some(Conn {
            state: State::Sse(s),
            ..
        }) = self.conns.get_mut(slot)
        else {
            return;
        };
        let mut scratch = [0u8; 512];
        loop {
            match s.io.tcp.read(&mut scratch) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        self.drop_conn(slot, now);
    }

    /// Queues a keep-alive comment to the stream in `slot` when one is due.
    pub(super) fn sse_keepalive(&mut self, slot: usize, now: Instant) {
        let every = self.limits.ws_ping_interval;
        if let Some(Conn {
            state: State::Sse(s),
            ..
        }) = self.conns.get_mut(slot)
        {
            if now.saturating_duration_since(s.last_keepalive) >= every {
                s.last_keepalive = now;
                s.io.push(Bytes::from_static(KEEPALIVE));
                self.dirty.push(slot);
            }
        }
    }
}
