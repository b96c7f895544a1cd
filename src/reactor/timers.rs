//! Timers: header and keep-alive timeouts, WebSocket pings and idle
//! closes, event-stream keep-alives, lingering closes, and giving freed
//! memory back, checked once per [`TICK`](super::TICK) while connections
//! are open.

use std::time::Instant;

use bytes::Bytes;
use tungstenite::Message;

use super::conn::{Conn, State};
use super::http::{http_timer, refuse};
use super::{Server, TICK};
use crate::metrics::CloseReason;
use crate::ws::close;

impl Server {
    /// Fires expired deadlines: header and idle timeouts, WebSocket pings
    /// and idle closes, lingering closes.
    pub(super) fn tick(&mut self, now: Instant) {
        self.next_tick = now + TICK;
        self.agent_timers(now);
        // glibc keeps the freed buffers of closed connections in its heap;
        // once a wave of them has gone, hand the pages back so RSS returns
        // near idle instead of staying at the high-water mark.
        let open = self.conns.len();
        if self.conns_peak >= open + TRIM_AFTER_CLOSED && open <= self.conns_peak / 2 {
            release_free_memory();
            self.conns_peak = open;
        }
        if self.accept_paused {
            self.accept(now);
        }
        let l = self.limits.clone();
        for slot in 0..self.conns.capacity() {
            let Some(conn) = self.conns.get_mut(slot) else {
                continue;
            };
            let action = match &mut conn.state {
                State::Http(h) => http_timer(h, now, &l),
                State::Ws(w) => {
                    let silent = now.saturating_duration_since(w.last_heard);
                    if silent >= l.ws_idle_timeout {
                        TimerAction::CloseWsIdle
                    } else if silent >= l.ws_ping_interval && !w.ping_sent {
                        w.ping_sent = true;
                        let _ = w.ws.write(Message::Ping(Bytes::new()));
                        self.dirty.push(slot);
                        TimerAction::None
                    } else {
                        TimerAction::None
                    }
                }
                State::Sse(_) => TimerAction::SseKeepalive,
                // Not while it holds an acknowledgement for the journal: that
                // goes once durable (or the connection is cut if it cannot be).
                State::Closing(c) if now >= c.deadline && !c.io.held() => TimerAction::Drop,
                _ => TimerAction::None,
            };
            match action {
                TimerAction::None => {}
                TimerAction::Drop => self.drop_conn(slot, now),
                TimerAction::SseKeepalive => self.sse_keepalive(slot, now),
                TimerAction::CloseWsIdle => {
                    self.metrics.closed(CloseReason::Idle);
                    self.close_client(slot, close::GOING_AWAY, "Idle timeout", now)
                }
                TimerAction::RequestTimeout => {
                    if let Some(Conn {
                        state: State::Http(h),
                        ..
                    }) = self.conns.get_mut(slot)
                    {
                        let log = self.access_log;
                        refuse(h, &mut self.metrics, log, 408, "Request Timeout");
                    }
                    self.begin_close(slot, now);
                }
                TimerAction::CloseQuietly => self.begin_close(slot, now),
            }
        }
    }
}

/// Closed connections that make it worth returning freed memory to the OS.
const TRIM_AFTER_CLOSED: usize = 1000;

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_free_memory() {
    // SAFETY: malloc_trim only walks glibc's own heap; no pointers are passed.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_memory() {}

pub(super) enum TimerAction {
    None,
    SseKeepalive,
    Drop,
    CloseWsIdle,
    RequestTimeout,
    CloseQuietly,
}
