//! WebSocket connections in the loop: the switch from HTTP after the
//! handshake the core answered, reading messages into the core, closing.

use std::io;
use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;
use tungstenite::protocol::Role;
use tungstenite::{Message, WebSocket};

use super::conn::{ClosingConn, Conn, HttpConn, State, WsConn};
use super::conn_sink::sink;
use super::{Server, LINGER, WORK_PER_TURN};
use crate::api::Upgrade;
use crate::sink::ConnId;
use crate::ws::{self, close};

impl Server {
    pub(super) fn upgrade(&mut self, slot: usize, id: ConnId, upgrade: Upgrade, now: Instant) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        let State::Http(h) = std::mem::replace(&mut conn.state, State::Moving) else {
            return;
        };
        let HttpConn { mut io, inbuf, .. } = *h;
        io.push(Bytes::from(upgrade.response));
        self.dirty.push(slot);
        if !upgrade.authorized {
            io.push(ws::close_frame(close::UNAUTHORIZED, "Unauthorized"));
            conn.state = State::Closing(ClosingConn {
                io,
                deadline: now + LINGER,
                write_shut: false,
            });
            return;
        }
        let session: Rc<str> = Rc::from(upgrade.session_id);
        let ws = WebSocket::from_partially_read(io, inbuf, Role::Server, Some(self.ws_config));
        conn.state = State::Ws(Box::new(WsConn {
            ws,
            session: session.clone(),
            last_heard: now,
            ping_sent: false,
        }));
        self.app
            .subscribed(id, &session, upgrade.since, now, &mut sink!(self));
        // Frames may already be buffered after the head: edge-triggered
        // polling will not report them again.
        self.drive_ws(slot, now);
    }

    /// Reads WebSocket messages until WouldBlock (or the budget) and hands
    /// each to the core.
    pub(super) fn drive_ws(&mut self, slot: usize, now: Instant) {
        let Some(id) = self.conn_id(slot) else { return };
        for _ in 0..WORK_PER_TURN {
            let Some(Conn {
                state: State::Ws(w),
                ..
            }) = self.conns.get_mut(slot)
            else {
                return;
            };
            let result = w.ws.read();
            if result.is_ok() {
                w.last_heard = now;
                w.ping_sent = false;
            }
            let session = w.session.clone();
            self.dirty.push(slot);
            match result {
                Ok(Message::Text(text)) => {
                    self.metrics.ws_received += 1;
                    self.app
                        .ws_text(id, &session, text.as_str(), now, &mut sink!(self))
                }
                Ok(Message::Binary(data)) => {
                    self.metrics.ws_received += 1;
                    self.app.ws_binary(id, &session, &data, &mut sink!(self))
                }
                // Pings are answered by tungstenite (the pong is queued in the
                // transport); a client's close is answered by the next read.
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_)) => {
                }
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(tungstenite::Error::ConnectionClosed) => {
                    // Our close reply is queued: flush it, then let go.
                    self.app.unsubscribed(id, &session, now);
                    return self.begin_close(slot, now);
                }
                Err(tungstenite::Error::Capacity(_)) => {
                    return self.close_client(slot, close::TOO_BIG, "Message too big", now)
                }
                Err(tungstenite::Error::Utf8(_)) => {
                    return self.close_client(slot, close::INVALID_PAYLOAD, "Invalid UTF-8", now)
                }
                Err(tungstenite::Error::Protocol(
                    tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                )) => return self.drop_conn(slot, now),
                Err(tungstenite::Error::Protocol(_)) => {
                    return self.close_client(slot, close::PROTOCOL_ERROR, "Protocol error", now)
                }
                Err(_) => return self.drop_conn(slot, now),
            }
        }
        self.retry.push(slot);
    }
}
