//! A connection's I/O half: the socket, its output queue, and the states a
//! connection moves through (HTTP → WebSocket → closing). The slab that
//! owns them is keyed by `mio::Token`.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;
use std::rc::Rc;
use std::time::Instant;

use bytes::{Buf, Bytes};
use mio::net::TcpStream;
use tungstenite::WebSocket;

use super::LINGER;
use crate::http::body::{Spliced, SLICE};
use crate::http::RequestParser;
use crate::sink::ConnId;
use crate::ws::{self, close};

/// Most buffers handed to one `writev`.
const IOV_BATCH: usize = 64;
/// Bytes written to one socket per loop iteration. A long history (8 MB)
/// handed to a loopback socket in one go is milliseconds of copying while
/// everyone else waits; the rest goes in the next iterations.
pub const WRITE_BUDGET: u64 = 256 * 1024;
/// A response body produced a slice at a time (a long history) is pulled
/// while less than this is queued: one iteration's write, no more, so a
/// connection costs at most this much copying per iteration.
const BODY_AHEAD: usize = WRITE_BUDGET as usize;

/// A socket plus the bytes queued for it.
///
/// tungstenite writes through this type too: `Write::write` only queues, so
/// tungstenite never holds a partial frame and never blocks, and broadcast
/// frames (shared [`Bytes`]) can be queued between its writes safely. The
/// reactor drains the queue with `writev` until the kernel says WouldBlock.
pub struct Transport {
    pub tcp: TcpStream,
    out: VecDeque<Bytes>,
    queued: usize,
    /// The front buffer has been partly written: it must go out whole.
    front_started: bool,
    /// Bytes pushed and written since the connection opened.
    pushed: u64,
    written: u64,
    /// Acknowledgements held for the journal: `(pushed, epoch)` says that
    /// what was pushed from that point on waits until the records of loop
    /// iteration `epoch` are durable (in order: what follows waits too).
    barriers: VecDeque<(u64, u64)>,
    /// The last flush stopped at [`WRITE_BUDGET`] with the socket still
    /// writable: flush again next iteration (no event will say so).
    pub budget_spent: bool,
    /// `pushed` when [`flush_out`](Self::flush_out) last ran: what came
    /// after it is this iteration's output, not yet tried on the socket.
    flushed_mark: u64,
    /// A read returned less than it asked for: the socket's receive queue
    /// was empty then, so no read is tried again until the next readiness
    /// event. epoll(7): for a stream socket a short read shows the input is
    /// exhausted, and data arriving later raises a new edge. This saves the
    /// `read` that would only say WouldBlock: one syscall per request or
    /// WebSocket message (the same rule async runtimes apply to readiness).
    drained: bool,
    /// Cleared for good once poll reports the peer's half-close or an
    /// error: then EOF has to be read, and only reading until WouldBlock
    /// (or EOF) finds it.
    short_reads_drain: bool,
}

impl Transport {
    pub fn new(tcp: TcpStream) -> Self {
        Transport {
            tcp,
            out: VecDeque::new(),
            queued: 0,
            front_started: false,
            pushed: 0,
            written: 0,
            barriers: VecDeque::new(),
            budget_spent: false,
            flushed_mark: 0,
            drained: false,
            short_reads_drain: true,
        }
    }

    /// A readiness event for the socket arrived (`hup`: with the peer's
    /// half-close or an error).
    pub fn readiness(&mut self, hup: bool) {
        self.drained = false;
        if hup {
            self.short_reads_drain = false;
        }
    }

    /// Reads from the socket, or says WouldBlock without a syscall when a
    /// short read has shown the receive queue empty since the last event.
    pub fn read_socket(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.drained {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.tcp.read(buf)?;
        if n > 0 && n < buf.len() && self.short_reads_drain {
            self.drained = true;
        }
        Ok(n)
    }

    /// Bytes queued and not yet written to the socket.
    pub fn queued(&self) -> usize {
        self.queued
    }

    pub fn push(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.queued += bytes.len();
            self.pushed += bytes.len() as u64;
            self.out.push_back(bytes);
        }
    }

    /// An acknowledgement follows: it waits until loop iteration `epoch`'s
    /// journal records are durable, and so does what this iteration queued
    /// ahead of it since the last flush (an echo turn's tokens before its
    /// `done`), which then goes out with it in one write, one group commit
    /// later, instead of in a write of its own. Output that was already
    /// there at the last flush is not held back.
    pub fn barrier(&mut self, epoch: u64) {
        match self.barriers.back() {
            // Already held from an earlier point: that covers this too.
            Some(&(_, e)) if e >= epoch => {}
            _ => {
                let from = self.flushed_mark.max(self.written);
                self.barriers.push_back((from, epoch));
            }
        }
    }

    /// Whether output is held back for the journal.
    pub fn held(&self) -> bool {
        !self.barriers.is_empty()
    }

    /// Writes queued bytes until the queue is empty (`Ok(true)`) or the
    /// socket would block, output is held, or this iteration's
    /// [`WRITE_BUDGET`] is spent (`Ok(false)`; see `budget_spent`).
    pub fn flush_out(&mut self, durable_epoch: u64) -> io::Result<bool> {
        self.flushed_mark = self.pushed;
        self.budget_spent = false;
        let mut budget_left = WRITE_BUDGET;
        while self
            .barriers
            .front()
            .is_some_and(|&(_, e)| e <= durable_epoch)
        {
            self.barriers.pop_front();
        }
        // Bytes that may go now: up to the first barrier still held.
        let mut allowed = self
            .barriers
            .front()
            .map_or(u64::MAX, |&(at, _)| at.saturating_sub(self.written));
        while !self.out.is_empty() && allowed > 0 {
            if budget_left == 0 {
                self.budget_spent = true;
                return Ok(false);
            }
            let mut slices = [IoSlice::new(&[]); IOV_BATCH];
            let mut n = 0;
            let mut budget = allowed.min(budget_left);
            for (slot, buf) in slices.iter_mut().zip(self.out.iter()) {
                if budget == 0 {
                    break;
                }
                let take = buf.len().min(usize::try_from(budget).unwrap_or(usize::MAX));
                *slot = IoSlice::new(&buf[..take]);
                budget -= take as u64;
                n += 1;
            }
            let written = match self.tcp.write_vectored(&slices[..n]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.queued -= written;
            self.written += written as u64;
            allowed = allowed.saturating_sub(written as u64);
            budget_left = budget_left.saturating_sub(written as u64);
            let mut left = written;
            while left > 0 {
                let Some(front) = self.out.front_mut() else {
                    break;
                };
                if front.len() <= left {
                    left -= front.len();
                    self.out.pop_front();
                    self.front_started = false;
                } else {
                    front.advance(left);
                    self.front_started = true;
                    left = 0;
                }
            }
        }
        if self.out.capacity() > 64 {
            self.out.shrink_to(16);
        }
        // Drained only when nothing is held back either.
        Ok(self.out.is_empty())
    }

    /// Drops every queued buffer that has not started to go out, so that a
    /// close frame can follow at once (the client that stopped reading gets
    /// it after the frame in flight, never in the middle of one).
    pub fn drop_unsent(&mut self) {
        let keep = usize::from(self.front_started);
        while self.out.len() > keep {
            if let Some(b) = self.out.pop_back() {
                self.queued -= b.len();
            }
        }
        // Nothing held is left to hold back.
        self.barriers.clear();
        self.pushed = self.written + self.queued as u64;
        self.flushed_mark = self.pushed;
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_socket(buf)
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.push(Bytes::copy_from_slice(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// An HTTP/1.1 connection between requests or inside one.
pub struct HttpConn {
    pub io: Transport,
    /// Received bytes the parser has not consumed (at most one head limit
    /// plus one read).
    pub inbuf: Vec<u8>,
    pub parser: RequestParser,
    /// A request's answer comes later (a chat turn); nothing else is parsed
    /// until it is queued, so responses leave in request order.
    pub waiting: bool,
    /// Whether the waiting request allows another after it.
    pub waiting_keep_alive: bool,
    /// False once a response said `Connection: close`.
    pub keep_alive: bool,
    /// The client has shut down its sending side.
    pub peer_eof: bool,
    /// Parsing stopped because too much output is unsent; resume on drain.
    pub stalled_on_output: bool,
    /// Requests answered on this connection so far.
    pub served: u64,
    /// When the current request's first byte arrived (or the connection
    /// opened): the header timeout counts from here.
    pub request_started: Instant,
    /// Last read or write that moved bytes.
    pub last_progress: Instant,
    /// The client's address (for the access log).
    pub peer: Option<std::net::SocketAddr>,
    /// The request whose answer comes later (a chat turn), for accounting.
    pub pending_log: Option<super::access::RequestLog>,
    /// The rest of a response body, produced as the socket takes it (see
    /// [`produce`](Self::produce)); nothing else is parsed until it is
    /// queued whole, so responses leave in request order.
    pub body: Option<Box<Spliced>>,
}

impl HttpConn {
    pub fn new(io: Transport, parser: RequestParser, now: Instant) -> Self {
        HttpConn {
            io,
            inbuf: Vec::new(),
            parser,
            waiting: false,
            waiting_keep_alive: true,
            keep_alive: true,
            peer_eof: false,
            stalled_on_output: false,
            served: 0,
            request_started: now,
            last_progress: now,
            peer: None,
            pending_log: None,
            body: None,
        }
    }

    /// Between requests with nothing buffered.
    pub fn is_idle(&self) -> bool {
        self.parser.is_idle() && self.inbuf.is_empty() && !self.waiting && self.body.is_none()
    }

    /// Queues the next slices of the body under way while less than
    /// [`BODY_AHEAD`] is queued. True when it has just been queued whole:
    /// the connection may parse its next request.
    pub fn produce(&mut self) -> bool {
        let Some(body) = &mut self.body else {
            return false;
        };
        while self.io.queued() < BODY_AHEAD {
            match body.pull(SLICE) {
                Some(bytes) => self.io.push(bytes),
                None => break,
            }
        }
        if body.is_done() {
            self.body = None;
            return true;
        }
        false
    }
}

/// An upgraded connection, framed by tungstenite over a [`Transport`].
pub struct WsConn {
    pub ws: WebSocket<Transport>,
    pub session: Rc<str>,
    /// Last frame of any kind from the client.
    pub last_heard: Instant,
    pub ping_sent: bool,
}

/// A Server-Sent Events stream of one session: output only. What the
/// client sends is read and dropped (so its EOF is seen); it holds no read
/// buffer and no parser, less than an idle WebSocket.
pub struct SseConn {
    pub io: Transport,
    pub session: Rc<str>,
    /// When the last keep-alive comment was queued (or the stream opened).
    pub last_keepalive: Instant,
    /// Bytes the client has sent on the stream (it should send none).
    pub received: usize,
    /// An AG-UI run: its turn's events are translated, and the stream
    /// ends with the run. None: the session's events as they are.
    pub run: Option<Box<crate::agui::RunStream>>,
}

/// A connection on its way out: queued bytes are flushed, then the write
/// side is shut down and input is read and discarded until the client
/// closes or `deadline` passes. Closing this way (rather than dropping the
/// socket with unread input, which makes the kernel send RST) lets the
/// client read the last response or close frame.
pub struct ClosingConn {
    pub io: Transport,
    pub deadline: Instant,
    pub write_shut: bool,
}

impl ClosingConn {
    /// Makes progress; returns true when the socket can be dropped.
    pub fn advance(&mut self, durable_epoch: u64) -> bool {
        match self.io.flush_out(durable_epoch) {
            Ok(true) => {}
            Ok(false) => return false,
            Err(_) => return true,
        }
        if !self.write_shut {
            self.write_shut = true;
            if self.io.tcp.shutdown(Shutdown::Write).is_err() {
                return true;
            }
        }
        // What the client still sends is read and dropped, 256 KiB per
        // iteration at most: one that keeps sending cannot hold the loop
        // here; it gets the rest of its linger time, then the timer drops it.
        let mut scratch = [0u8; 4096];
        for _ in 0..64 {
            match self.io.tcp.read(&mut scratch) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return true,
            }
        }
        false
    }
}

pub enum State {
    Http(Box<HttpConn>),
    Ws(Box<WsConn>),
    Sse(Box<SseConn>),
    Closing(ClosingConn),
    /// Only while a connection moves between states.
    Moving,
}

pub struct Conn {
    /// Unique for the life of the process; see [`crate::sink::ConnId`].
    pub serial: u64,
    pub state: State,
}

impl Conn {
    /// The session a subscriber (WebSocket or event stream) follows.
    pub fn subscribed_to(&self) -> Option<&Rc<str>> {
        match &self.state {
            State::Ws(w) => Some(&w.session),
            State::Sse(s) => Some(&s.session),
            _ => None,
        }
    }

    /// Output queued for a subscriber (0 for other connections).
    pub fn subscriber_backlog(&self) -> usize {
        match &self.state {
            State::Ws(w) => w.ws.get_ref().queued(),
            State::Sse(s) => s.io.queued(),
            _ => 0,
        }
    }

    pub fn transport_mut(&mut self) -> Option<&mut Transport> {
        match &mut self.state {
            State::Http(h) => Some(&mut h.io),
            State::Ws(w) => Some(w.ws.get_mut()),
            State::Sse(s) => Some(&mut s.io),
            State::Closing(c) => Some(&mut c.io),
            State::Moving => None,
        }
    }
}

/// Connections by slot (= `mio::Token`); freed slots are reused.
#[derive(Default)]
pub struct Slab {
    entries: Vec<Option<Conn>>,
    free: Vec<usize>,
    len: usize,
}

impl Slab {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// One past the highest slot ever used (for scans).
    pub fn capacity(&self) -> usize {
        self.entries.len()
    }

    /// The slot the next insert will use.
    pub fn vacant_slot(&self) -> usize {
        self.free.last().copied().unwrap_or(self.entries.len())
    }

    pub fn insert(&mut self, conn: Conn) -> usize {
        self.len += 1;
        match self.free.pop() {
            Some(slot) => {
                self.entries[slot] = Some(conn);
                slot
            }
            None => {
                self.entries.push(Some(conn));
                self.entries.len() - 1
            }
        }
    }

    pub fn get_mut(&mut self, slot: usize) -> Option<&mut Conn> {
        self.entries.get_mut(slot).and_then(Option::as_mut)
    }

    pub fn remove(&mut self, slot: usize) -> Option<Conn> {
        let conn = self.entries.get_mut(slot)?.take()?;
        self.len -= 1;
        self.free.push(slot);
        Some(conn)
    }
}

impl Slab {
    pub fn get(&self, slot: usize) -> Option<&Conn> {
        self.entries.get(slot).and_then(Option::as_ref)
    }

    pub fn entries_serial(&self, slot: usize) -> Option<u64> {
        self.get(slot).map(|c| c.serial)
    }

    /// Open connections by kind (a scan: for a metrics scrape).
    pub fn count_kinds(&self) -> crate::metrics::Connections {
        let mut n = crate::metrics::Connections::default();
        for conn in self.entries.iter().flatten() {
            match conn.state {
                State::Http(_) => n.http += 1,
                State::Ws(_) => n.websocket += 1,
                State::Sse(_) => n.sse += 1,
                State::Closing(_) | State::Moving => {}
            }
        }
        n
    }
}

/// Turns the subscriber in `slot` into a closing connection. A WebSocket
/// gets a close frame with `code` after what is queued; an event stream
/// simply ends after it. For 1008 (a client too far behind) the unsent
/// output is dropped instead. Returns the client's id and session for the
/// core to forget (None: not a subscriber).
pub fn close_subscriber(
    conns: &mut Slab,
    slot: usize,
    code: u16,
    reason: &str,
    now: Instant,
) -> Option<(ConnId, Rc<str>)> {
    let conn = conns.get_mut(slot)?;
    let (io, session) = match std::mem::replace(&mut conn.state, State::Moving) {
        State::Ws(w) => {
            let session = w.session.clone();
            let mut io = w.ws.into_inner();
            if code == close::POLICY {
                io.drop_unsent();
            }
            io.push(ws::close_frame(code, reason));
            (io, session)
        }
        State::Sse(s) => {
            let SseConn {
                mut io, session, ..
            } = *s;
            if code == close::POLICY {
                io.drop_unsent();
            }
            (io, session)
        }
        other => {
            conn.state = other;
            return None;
        }
    };
    conn.state = State::Closing(ClosingConn {
        io,
        deadline: now + LINGER,
        write_shut: false,
    });
    Some((
        ConnId {
            slot,
            serial: conn.serial,
        },
        session,
    ))
}
