//! The HTTP/1.1 request state machine: bytes in, requests or rejections out.
//!
//! [`RequestParser::advance`] is handed the connection's unconsumed input and
//! answers how many bytes it used and what happened. It owns no socket, so
//! unit tests and the `http_request` fuzz target drive it directly, and the
//! same input gives the same decision however it is split.
//!
//! httparse is stateless, so the head is re-parsed from the start on each
//! call; that is bounded by `max_head` (16 KiB by default). The body is
//! consumed incrementally and never held beyond `max_body`.

use super::chunked::{ChunkError, ChunkedDecoder};

/// Most header lines a request may carry (httparse needs a fixed array).
pub const MAX_HEADERS: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParserLimits {
    pub max_head: usize,
    pub max_body: usize,
    /// `--id-from-header NAME`: the header whose value is kept as
    /// [`Head::id_hint`] (lowercase; None = not kept).
    pub id_header: Option<&'static str>,
}

/// The parts of a request head the server acts on, owned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Head {
    pub method: String,
    /// The path of the request target, still percent-encoded.
    pub path: String,
    pub query: Option<String>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// Whether the connection may serve another request after this one.
    pub keep_alive: bool,
    /// `Upgrade: websocket` was asked for (with `Connection: upgrade`).
    pub upgrade_websocket: bool,
    pub ws_key: Option<String>,
    pub ws_version: Option<String>,
    /// Every `Sec-WebSocket-Protocol` token offered, in order.
    pub ws_protocols: Vec<String>,
    pub api_key: Option<Vec<u8>>,
    /// The credentials of `Authorization: Bearer <KEY>`.
    pub bearer: Option<Vec<u8>>,
    /// `Last-Event-ID` (an `EventSource` reconnecting).
    pub last_event_id: Option<String>,
    pub origin: Option<String>,
    /// The `Host` header (the origin a same-site browser page would send).
    pub host: Option<String>,
    /// `Expect: 100-continue` was sent.
    pub expect_continue: bool,
    /// `X-Forwarded-For`, as sent (the access log trusts it only from a
    /// `--trusted-proxy`).
    pub forwarded_for: Option<String>,
    /// The value of the `--id-from-header` header: the id a session created
    /// by this request takes (a proxy chose it to know its shard).
    pub id_hint: Option<String>,
}

/// A complete request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub head: Head,
    pub body: Vec<u8>,
}

/// A request the server refuses at the protocol level. The connection is
/// answered with `status` and then closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reject {
    pub status: u16,
    pub detail: &'static str,
}

impl Reject {
    const fn new(status: u16, detail: &'static str) -> Self {
        Reject { status, detail }
    }
}

/// What [`RequestParser::advance`] found.
// The `Request` variant is large, but a `Progress` lives for one call and
// boxing it would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// Not enough input yet.
    NeedMore,
    /// The head asked for `Expect: 100-continue` and a body will follow:
    /// write `HTTP/1.1 100 Continue` and call `advance` again.
    SendContinue,
    Request(Request),
    Reject(Reject),
}

#[derive(Debug)]
enum State {
    Head,
    Sized {
        head: Head,
        remaining: usize,
    },
    Chunked {
        head: Head,
        decoder: ChunkedDecoder,
    },
    /// A rejection was returned; the parser takes no more input.
    Failed,
}

#[derive(Debug)]
pub struct RequestParser {
    limits: ParserLimits,
    state: State,
    body: Vec<u8>,
}

enum BodyKind {
    None,
    Sized(usize),
    Chunked,
}

impl RequestParser {
    pub fn new(limits: ParserLimits) -> Self {
        RequestParser {
            limits,
            state: State::Head,
            body: Vec::new(),
        }
    }

    /// True between requests: no byte of the next request has been consumed.
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Head)
    }

    /// True while a head has been parsed and its body is still arriving.
    pub fn in_body(&self) -> bool {
        matches!(self.state, State::Sized { .. } | State::Chunked { .. })
    }

    /// Parses from `input` (the bytes not yet consumed). Returns the number
    /// of bytes used, which the caller drops from its buffer, and the result.
    pub fn advance(&mut self, input: &[u8]) -> (usize, Progress) {
        match std::mem::replace(&mut self.state, State::Failed) {
            State::Failed => (0, Progress::Reject(Reject::new(400, "Bad Request"))),
            State::Head => self.advance_head(input),
            State::Sized { head, remaining } => {
                let take = remaining.min(input.len());
                self.body.extend_from_slice(&input[..take]);
                if take == remaining {
                    (take, self.finish(head))
                } else {
                    self.state = State::Sized {
                        head,
                        remaining: remaining - take,
                    };
                    (take, Progress::NeedMore)
                }
            }
            State::Chunked { head, mut decoder } => match decoder.decode(input, &mut self.body) {
                Ok(used) if decoder.is_done() => (used, self.finish(head)),
                Ok(used) => {
                    self.state = State::Chunked { head, decoder };
                    (used, Progress::NeedMore)
                }
                Err(ChunkError::TooLarge) => (0, Progress::Reject(TOO_LARGE)),
                Err(ChunkError::Invalid) => (
                    0,
                    Progress::Reject(Reject::new(400, "Invalid chunked body")),
                ),
            },
        }
    }

    fn finish(&mut self, head: Head) -> Progress {
        self.state = State::Head;
        Progress::Request(Request {
            head,
            body: std::mem::take(&mut self.body),
        })
    }

    fn advance_head(&mut self, input: &[u8]) -> (usize, Progress) {
        // Parse no more than the limit, so the decision does not depend on
        // how much input happened to arrive at once.
        let window = &input[..input.len().min(self.limits.max_head)];
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let head_len = match req.parse(window) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if input.len() >= self.limits.max_head => {
                return (0, Progress::Reject(HEAD_TOO_LARGE));
            }
            Ok(httparse::Status::Partial) => {
                self.state = State::Head;
                return (0, Progress::NeedMore);
            }
            Err(httparse::Error::TooManyHeaders) => return (0, Progress::Reject(HEAD_TOO_LARGE)),
            Err(_) => return (0, Progress::Reject(Reject::new(400, "Malformed request"))),
        };
        let (head, body) = match interpret(&req, self.limits) {
            Ok(parts) => parts,
            Err(reject) => return (0, Progress::Reject(reject)),
        };
        let wants_continue =
            head.expect_continue && !matches!(body, BodyKind::None | BodyKind::Sized(0));
        self.body = Vec::new();
        match body {
            BodyKind::None | BodyKind::Sized(0) => return (head_len, self.finish(head)),
            BodyKind::Sized(n) => {
                self.body.reserve_exact(n);
                self.state = State::Sized { head, remaining: n };
            }
            BodyKind::Chunked => {
                let decoder = ChunkedDecoder::new(self.limits.max_body, self.limits.max_head);
                self.state = State::Chunked { head, decoder };
            }
        }
        if wants_continue {
            (head_len, Progress::SendContinue)
        } else {
            let (used, progress) = self.advance(&input[head_len..]);
            (head_len + used, progress)
        }
    }
}

const HEAD_TOO_LARGE: Reject = Reject::new(431, "Request header fields too large");
const TOO_LARGE: Reject = Reject::new(413, "Request body too large");

/// Reads the headers the server acts on and decides how the body is framed.
fn interpret(req: &httparse::Request, limits: ParserLimits) -> Result<(Head, BodyKind), Reject> {
    let bad = |detail| Err(Reject::new(400, detail));
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return bad("Malformed request");
    };
    if !target.starts_with('/') {
        return bad("Invalid request target");
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q.to_owned())),
        None => (target, None),
    };
    let mut head = Head {
        method: method.to_owned(),
        path: path.to_owned(),
        query,
        minor_version: version,
        ..Head::default()
    };
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding: Option<String> = None;
    let (mut conn_close, mut conn_keep_alive, mut conn_upgrade) = (false, false, false);
    for h in req.headers.iter() {
        let name = h.name;
        let value = h.value;
        if name.eq_ignore_ascii_case("content-length") {
            if content_length.is_some() {
                return bad("Multiple Content-Length headers");
            }
            content_length = match parse_content_length(value) {
                Some(n) => Some(n),
                None => return bad("Invalid Content-Length"),
            };
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            let text = String::from_utf8_lossy(value);
            transfer_encoding = Some(match transfer_encoding {
                Some(prev) => format!("{prev},{text}"),
                None => text.into_owned(),
            });
        } else if name.eq_ignore_ascii_case("connection") {
            for token in tokens(value) {
                conn_close |= token.eq_ignore_ascii_case("close");
                conn_keep_alive |= token.eq_ignore_ascii_case("keep-alive");
                conn_upgrade |= token.eq_ignore_ascii_case("upgrade");
            }
        } else if name.eq_ignore_ascii_case("upgrade") {
            head.upgrade_websocket |= tokens(value).any(|t| t.eq_ignore_ascii_case("websocket"));
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            head.ws_key = std::str::from_utf8(value).ok().map(str::to_owned);
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            head.ws_version = Some(String::from_utf8_lossy(value).into_owned());
        } else if name.eq_ignore_ascii_case("sec-websocket-protocol") {
            head.ws_protocols.extend(tokens(value).map(str::to_owned));
        } else if name.eq_ignore_ascii_case("x-api-key") {
            head.api_key = Some(value.to_vec());
        } else if name.eq_ignore_ascii_case("authorization") {
            head.bearer = bearer_token(value).map(<[u8]>::to_vec);
        } else if name.eq_ignore_ascii_case("last-event-id") {
            head.last_event_id = Some(String::from_utf8_lossy(value).trim().to_owned());
        } else if name.eq_ignore_ascii_case("x-forwarded-for") {
            let text = String::from_utf8_lossy(value);
            head.forwarded_for = Some(match head.forwarded_for.take() {
                Some(prev) => format!("{prev},{text}"),
                None => text.into_owned(),
            });
        } else if name.eq_ignore_ascii_case("origin") {
            head.origin = Some(String::from_utf8_lossy(value).into_owned());
        } else if name.eq_ignore_ascii_case("host") {
            head.host = Some(String::from_utf8_lossy(value).into_owned());
        } else if limits
            .id_header
            .is_some_and(|h| name.eq_ignore_ascii_case(h))
        {
            head.id_hint = std::str::from_utf8(value).ok().map(|v| v.trim().to_owned());
        } else if name.eq_ignore_ascii_case("expect") {
            head.expect_continue = value.eq_ignore_ascii_case(b"100-continue");
        }
    }
    head.upgrade_websocket &= conn_upgrade;
    head.keep_alive = !conn_close && (version == 1 || conn_keep_alive);

    let body = match (content_length, transfer_encoding) {
        (Some(_), Some(_)) => return bad("Both Content-Length and Transfer-Encoding"),
        (_, Some(_)) if version == 0 => return bad("Transfer-Encoding in an HTTP/1.0 request"),
        (_, Some(te)) if te.trim().eq_ignore_ascii_case("chunked") => BodyKind::Chunked,
        (_, Some(_)) => return Err(Reject::new(501, "Unsupported Transfer-Encoding")),
        (Some(n), None) if n > limits.max_body as u64 => return Err(TOO_LARGE),
        (Some(n), None) => BodyKind::Sized(n as usize),
        (None, None) => BodyKind::None,
    };
    Ok((head, body))
}

/// The token of `Bearer <token>` (the scheme is case-insensitive).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let start = rest.iter().position(|&b| b != b' ')?;
    Some(&rest[start..])
}

/// `Content-Length` is 1*DIGIT: no sign, no spaces inside, no list.
fn parse_content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// Comma-separated list elements of a header value, trimmed, empty ones skipped.
fn tokens(value: &[u8]) -> impl Iterator<Item = &str> {
    std::str::from_utf8(value)
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ParserLimits = ParserLimits {
        max_head: 1024,
        max_body: 64,
        id_header: Some("x-request-id"),
    };

    /// Feeds `input` in pieces of `step` bytes, buffering what is not
    /// consumed, and collects every outcome until input runs out or a reject.
    fn run(input: &[u8], step: usize) -> Vec<Progress> {
        let mut parser = RequestParser::new(LIMITS);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        for piece in input.chunks(step.max(1)) {
            buf.extend_from_slice(piece);
            loop {
                let (used, progress) = parser.advance(&buf);
                buf.drain(..used);
                match progress {
                    Progress::NeedMore => break,
                    Progress::Reject(r) => {
                        out.push(Progress::Reject(r));
                        return out;
                    }
                    p => out.push(p),
                }
            }
        }
        out
    }

    fn one(input: &[u8]) -> Progress {
        let whole = run(input, input.len());
        for step in [1, 3, 17] {
            assert_eq!(run(input, step), whole, "split every {step} bytes differs");
        }
        assert_eq!(whole.len(), 1, "{whole:?}");
        whole.into_iter().next().unwrap()
    }

    fn request(input: &[u8]) -> Request {
        match one(input) {
            Progress::Request(r) => r,
            other => panic!("expected a request, got {other:?}"),
        }
    }

    fn status(input: &[u8]) -> u16 {
        match one(input) {
            Progress::Reject(r) => r.status,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn headers_beyond_the_basics() {
        let r = request(
            b"GET /e HTTP/1.1\r\nHost: a\r\nAuthorization: bEaReR  s3cret\r\n\
              Last-Event-ID: 42 \r\nX-Request-Id:  0a1b \r\n\r\n",
        );
        assert_eq!(r.head.bearer.as_deref(), Some(&b"s3cret"[..]));
        assert_eq!(r.head.last_event_id.as_deref(), Some("42"));
        assert_eq!(r.head.id_hint.as_deref(), Some("0a1b"));
        let r = request(b"GET /e HTTP/1.1\r\nAuthorization: Basic eDp5\r\n\r\n");
        assert_eq!(r.head.bearer, None);
    }

    #[test]
    fn simple_get() {
        let r = request(b"GET /api/health?x=1 HTTP/1.1\r\nHost: a\r\nX-API-Key: k\r\n\r\n");
        assert_eq!(r.head.method, "GET");
        assert_eq!(r.head.path, "/api/health");
        assert_eq!(r.head.query.as_deref(), Some("x=1"));
        assert_eq!(r.head.api_key.as_deref(), Some(&b"k"[..]));
        assert!(r.head.keep_alive);
        assert!(r.body.is_empty());
    }

    #[test]
    fn keep_alive_rules() {
        assert!(!request(b"GET / HTTP/1.0\r\n\r\n").head.keep_alive);
        assert!(
            request(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
                .head
                .keep_alive
        );
        assert!(
            !request(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
                .head
                .keep_alive
        );
        assert!(
            !request(b"GET / HTTP/1.1\r\nConnection: foo, CLOSE\r\n\r\n")
                .head
                .keep_alive
        );
    }

    #[test]
    fn sized_and_chunked_bodies() {
        let r = request(b"POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello");
        assert_eq!(r.body, b"hello");
        let r = request(b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n");
        assert_eq!(r.body, b"hello");
    }

    #[test]
    fn pipelined_requests_come_out_in_order() {
        let input = b"GET /a HTTP/1.1\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 2\r\n\r\nhiGET /c HTTP/1.1\r\n\r\n";
        for step in [1, 5, input.len()] {
            let paths: Vec<String> = run(input, step)
                .into_iter()
                .map(|p| match p {
                    Progress::Request(r) => r.head.path,
                    other => panic!("{other:?}"),
                })
                .collect();
            assert_eq!(paths, ["/a", "/b", "/c"]);
        }
    }

    #[test]
    fn expect_continue_is_reported_once_before_the_body() {
        let input = b"POST /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok";
        let out = run(input, input.len());
        assert_eq!(out.len(), 2);
        assert_eq!(out[0], Progress::SendContinue);
        assert!(matches!(&out[1], Progress::Request(r) if r.body == b"ok"));
        // No body, no 100 Continue.
        let out = run(b"GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n", 100);
        assert!(matches!(&out[..], [Progress::Request(_)]));
    }

    #[test]
    fn every_protocol_rejection() {
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            400
        );
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n"),
            400
        );
        assert_eq!(status(b"GET / HTTP/1.1\r\nContent-Length: +1\r\n\r\n"), 400);
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nContent-Length: 1,1\r\n\r\n"),
            400
        );
        assert_eq!(status(b"GET / HTTP/1.1\r\nContent-Length: \r\n\r\n"), 400);
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n"),
            400
        );
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
            400
        );
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\r\n"),
            400
        );
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"),
            501
        );
        assert_eq!(
            status(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            400
        );
        assert_eq!(status(b"GET  / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/2.0\r\n\r\n"), 400);
        assert_eq!(status(b"GET /\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n"), 400);
        assert_eq!(status(b"GET * HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"), 400);
    }

    #[test]
    fn limits() {
        // Head over the limit, whether complete or not.
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 2000));
        assert_eq!(status(&big), 431);
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(status(&big), 431);
        // Too many header lines.
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..MAX_HEADERS + 1 {
            many.extend_from_slice(format!("H{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        let mut p = RequestParser::new(ParserLimits {
            max_head: 1 << 16,
            max_body: 64,
            id_header: None,
        });
        assert_eq!(p.advance(&many).1, Progress::Reject(HEAD_TOO_LARGE));
        // Body over the limit: declared, or decoded from chunks.
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nContent-Length: 65\r\n\r\n"),
            413
        );
        let mut chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..3 {
            chunked.extend_from_slice(b"20\r\n");
            chunked.extend(std::iter::repeat_n(b'x', 32));
            chunked.extend_from_slice(b"\r\n");
        }
        assert_eq!(status(&chunked), 413);
    }

    #[test]
    fn a_failed_parser_stays_failed() {
        let mut p = RequestParser::new(LIMITS);
        assert!(matches!(
            p.advance(b"BAD REQUEST LINE\r\n\r\n").1,
            Progress::Reject(_)
        ));
        assert!(matches!(
            p.advance(b"GET / HTTP/1.1\r\n\r\n").1,
            Progress::Reject(_)
        ));
    }

    #[test]
    fn websocket_headers() {
        let r = request(
            b"GET /api/ws/s HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
              Sec-WebSocket-Protocol: chat, autopoiesis.key.k\r\nOrigin: http://x\r\n\r\n",
        );
        assert!(r.head.upgrade_websocket);
        assert_eq!(r.head.ws_key.as_deref(), Some("dGhlIHNhbXBsZSBub25jZQ=="));
        assert_eq!(r.head.ws_version.as_deref(), Some("13"));
        assert_eq!(r.head.ws_protocols, ["chat", "autopoiesis.key.k"]);
        assert_eq!(r.head.origin.as_deref(), Some("http://x"));
        // Upgrade without Connection: upgrade is not an upgrade.
        let r = request(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n");
        assert!(!r.head.upgrade_websocket);
    }
}
