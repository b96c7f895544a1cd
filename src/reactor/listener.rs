//! The listener: accepting connections while under `--max-connections`
//! (pausing, not refusing, at the cap), and the open-file limit raised so
//! the cap, not the default 1024, is what bounds them.

use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use mio::net::TcpStream;
use mio::{Interest, Token};

use super::access::{self, RequestLog};
use super::conn::{Conn, HttpConn, State, Transport};
use super::Server;
use crate::http::{RequestParser, Response};

/// Raises the soft open-file limit to the hard limit, so that the
/// connection cap, not the default 1024, bounds the connections.
pub(super) fn raise_nofile_limit(want: usize) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        if lim.rlim_cur < lim.rlim_max {
            let old = lim.rlim_cur;
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                lim.rlim_cur = old;
            }
        }
    }
    if (lim.rlim_cur as u128) < want as u128 + 32 {
        crate::warn!(
            "open-file limit is {} (hard limit {}), below --max-connections {}; \
             accepts will fail with EMFILE before the cap is reached",
            lim.rlim_cur,
            lim.rlim_max,
            want
        );
    }
}

impl Server {
    pub(super) fn accept(&mut self, now: Instant) {
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((stream, peer)) => {
                    self.accept_paused = false;
                    self.admit(stream, peer, now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.accept_paused = false;
                    return;
                }
                Err(e)
                    if e.kind() == io::ErrorKind::Interrupted
                        || e.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(e) => {
                    // EMFILE/ENFILE/ENOMEM: the pending connection stays in the
                    // backlog. Try again when a connection closes or at the next
                    // tick, never in a tight loop.
                    if !self.accept_paused {
                        crate::info!("accept failed, pausing accepts: {e}");
                    }
                    self.accept_paused = true;
                    return;
                }
            }
        }
    }

    fn admit(&mut self, mut stream: TcpStream, peer: SocketAddr, now: Instant) {
        if self.conns.len() >= self.limits.max_connections {
            // Over the cap: one best-effort 503 and close, never queued.
            use std::io::Write;
            let body = Response::detail(503, "Too many connections").encode(false);
            let _ = stream.write(&body);
            let request = RequestLog::unparsed(now);
            let (log, bytes) = (self.access_log, body.len());
            access::record(&mut self.metrics, log, Some(peer), &request, 503, bytes);
            return;
        }
        let _ = stream.set_nodelay(true);
        let slot = self.conns.vacant_slot();
        // Readable and writable, edge-triggered, once: interest never has to
        // change, so there is no reregister syscall on the hot path.
        if self
            .poll
            .registry()
            .register(
                &mut stream,
                Token(slot),
                Interest::READABLE | Interest::WRITABLE,
            )
            .is_err()
        {
            return;
        }
        self.next_serial += 1;
        let parser = RequestParser::new(self.parser_limits());
        let mut http = HttpConn::new(Transport::new(stream), parser, now);
        http.peer = Some(peer);
        let conn = Conn {
            serial: self.next_serial,
            state: State::Http(Box::new(http)),
        };
        let inserted = self.conns.insert(conn);
        self.conns_peak = self.conns_peak.max(self.conns.len());
        debug_assert_eq!(inserted, slot);
    }
}
