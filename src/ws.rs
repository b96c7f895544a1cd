//! WebSocket pieces that need no socket: the upgrade handshake (RFC 6455
//! §4.2, answered by hand with sha1 + base64), server frame encoding, and
//! the client ops of the contract. tungstenite does the framing of the live
//! connection in the reactor; everything here is plain functions.

use base64::Engine as _;
use bytes::Bytes;
use sha1::Digest as _;

use crate::http::{Head, Response};

const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Subprotocol prefix that carries the API key for browsers, which cannot
/// set headers on a WebSocket.
pub const KEY_SUBPROTOCOL_PREFIX: &str = "autopoiesis.key.";

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let mut h = sha1::Sha1::new();
    h.update(key.as_bytes());
    h.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// Checks the upgrade request's WebSocket headers; returns the accept key,
/// or the response that refuses the upgrade (400 bad key, 426 bad version).
pub fn check_handshake(head: &Head) -> Result<String, Response> {
    if head.minor_version != 1 || head.method != "GET" {
        return Err(Response::detail(
            400,
            "WebSocket upgrade needs GET over HTTP/1.1",
        ));
    }
    match head.ws_version.as_deref() {
        Some("13") => {}
        _ => {
            return Err(Response::detail(426, "Unsupported WebSocket version")
                .with_header("sec-websocket-version", "13"))
        }
    }
    let key = head.ws_key.as_deref().unwrap_or("");
    let decoded = base64::engine::general_purpose::STANDARD.decode(key.trim());
    if !matches!(decoded, Ok(ref nonce) if nonce.len() == 16) {
        return Err(Response::detail(
            400,
            "Missing or invalid Sec-WebSocket-Key",
        ));
    }
    Ok(accept_key(key.trim()))
}

/// The `101 Switching Protocols` answer.
pub fn switching_protocols(accept: &str, protocol: Option<&str>) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {accept}\r\n"
    );
    if let Some(p) = protocol {
        out.push_str("sec-websocket-protocol: ");
        out.push_str(p);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// Bytes reserved in front of a payload for the largest frame header.
pub const FRAME_HEADER_ROOM: usize = 10;

/// Turns `buf`, whose first [`FRAME_HEADER_ROOM`] bytes are spare and the
/// rest is the payload, into one unmasked server frame with `opcode`,
/// without copying the payload.
pub fn frame_in_place(mut buf: Vec<u8>, opcode: u8) -> Bytes {
    let len = buf.len().saturating_sub(FRAME_HEADER_ROOM);
    let header = frame_header(opcode, len);
    let start = FRAME_HEADER_ROOM - header.len();
    buf[start..FRAME_HEADER_ROOM].copy_from_slice(&header);
    Bytes::from(buf).slice(start..)
}

/// The header of one unmasked, final server frame of `len` payload bytes.
pub fn frame_header(opcode: u8, len: usize) -> FrameHeader {
    let mut bytes = [0u8; FRAME_HEADER_ROOM];
    bytes[0] = 0x80 | opcode;
    let len_used = if len < 126 {
        bytes[1] = len as u8;
        2
    } else if len <= 0xFFFF {
        bytes[1] = 126;
        bytes[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        bytes[1] = 127;
        bytes[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    FrameHeader { bytes, len_used }
}

/// A frame header: 2, 4 or 10 bytes.
pub struct FrameHeader {
    bytes: [u8; FRAME_HEADER_ROOM],
    len_used: usize,
}

impl std::ops::Deref for FrameHeader {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes[..self.len_used]
    }
}

pub const OPCODE_TEXT: u8 = 0x1;
pub const OPCODE_BINARY: u8 = 0x2;
pub const OPCODE_CLOSE: u8 = 0x8;

/// One complete, unmasked server data frame (`OPCODE_TEXT` or
/// `OPCODE_BINARY`) carrying `payload`.
pub fn data_frame(opcode: u8, payload: &[u8]) -> Bytes {
    let mut buf = Vec::with_capacity(FRAME_HEADER_ROOM + payload.len());
    buf.resize(FRAME_HEADER_ROOM, 0);
    buf.extend_from_slice(payload);
    frame_in_place(buf, opcode)
}

/// A close frame with `code` and `reason` (at most 123 bytes of reason).
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut buf = vec![0u8; FRAME_HEADER_ROOM];
    buf.extend_from_slice(&code.to_be_bytes());
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    buf.extend_from_slice(&reason.as_bytes()[..end]);
    frame_in_place(buf, OPCODE_CLOSE)
}

/// Close codes the server sends.
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const UNAUTHORIZED: u16 = 4001;
}

/// A client → server text frame, decided.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientOp {
    /// `message` with non-empty string content: start a turn.
    Message(String),
    /// `message` with `""` or no content.
    EmptyMessage,
    /// `approve`: the decisions (`data.approvals`) as sent, if any.
    Approve(Option<serde_json::Value>),
    Cancel,
    Unknown(String),
    /// Not `{"op": str, "data": {...}}`, or content not a string.
    Invalid,
}

/// Decides what a client's text frame asks for (the contract's op table).
pub fn parse_client_op(text: &str) -> ClientOp {
    let Ok(serde_json::Value::Object(mut frame)) = serde_json::from_str(text) else {
        return ClientOp::Invalid;
    };
    let Some(serde_json::Value::String(op)) = frame.remove("op") else {
        return ClientOp::Invalid;
    };
    let mut data = match frame.remove("data") {
        None => serde_json::Map::new(),
        Some(serde_json::Value::Object(d)) => d,
        Some(_) => return ClientOp::Invalid,
    };
    match op.as_str() {
        "message" => match data.remove("content") {
            None => ClientOp::EmptyMessage,
            Some(serde_json::Value::String(s)) if s.is_empty() => ClientOp::EmptyMessage,
            Some(serde_json::Value::String(s)) => ClientOp::Message(s),
            Some(_) => ClientOp::Invalid,
        },
        "approve" => ClientOp::Approve(data.remove("approvals")),
        "cancel" => ClientOp::Cancel,
        _ => ClientOp::Unknown(op),
    }
}

/// Whether a client's `Sec-WebSocket-Protocol` offer carries `key`; returns
/// the offered protocol to select.
pub fn key_from_subprotocols(offers: &[String], matches: impl Fn(&[u8]) -> bool) -> Option<&str> {
    offers.iter().map(String::as_str).find(|p| {
        p.strip_prefix(KEY_SUBPROTOCOL_PREFIX)
            .is_some_and(|k| matches(k.as_bytes()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6455_accept_vector() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    fn head(key: Option<&str>, version: Option<&str>) -> Head {
        Head {
            method: "GET".into(),
            minor_version: 1,
            ws_key: key.map(Into::into),
            ws_version: version.map(Into::into),
            ..Head::default()
        }
    }

    #[test]
    fn handshake_checks() {
        let ok = check_handshake(&head(Some("dGhlIHNhbXBsZSBub25jZQ=="), Some("13")));
        assert_eq!(ok, Ok("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".to_string()));
        assert_eq!(
            check_handshake(&head(None, Some("13"))).unwrap_err().status,
            400
        );
        assert_eq!(
            check_handshake(&head(Some("c2hvcnQ="), Some("13")))
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            check_handshake(&head(Some("!!!"), Some("13")))
                .unwrap_err()
                .status,
            400
        );
        let old = check_handshake(&head(Some("dGhlIHNhbXBsZSBub25jZQ=="), Some("8"))).unwrap_err();
        assert_eq!(old.status, 426);
        assert!(old
            .headers
            .contains(&("sec-websocket-version", "13".into())));
        assert_eq!(
            check_handshake(&head(Some("dGhlIHNhbXBsZSBub25jZQ=="), None))
                .unwrap_err()
                .status,
            426
        );
    }

    #[test]
    fn frames_have_minimal_headers() {
        for (len, header_len) in [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)] {
            let mut buf = vec![0u8; FRAME_HEADER_ROOM];
            buf.extend(std::iter::repeat_n(b'x', len));
            let frame = frame_in_place(buf, OPCODE_TEXT);
            assert_eq!(frame.len(), header_len + len);
            assert_eq!(frame[0], 0x81);
            let (parsed_len, _) = match frame[1] {
                126 => (u16::from_be_bytes([frame[2], frame[3]]) as usize, 4),
                127 => (
                    u64::from_be_bytes(frame[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                n => (n as usize, 2),
            };
            assert_eq!(parsed_len, len);
        }
        let close = close_frame(4001, "Unauthorized");
        assert_eq!(&close[..4], &[0x88, 14, 0x0F, 0xA1]);
        assert_eq!(&close[4..], b"Unauthorized");
    }

    #[test]
    fn client_ops() {
        use ClientOp::*;
        assert_eq!(
            parse_client_op(r#"{"op":"message","data":{"content":"hi"}}"#),
            Message("hi".into())
        );
        assert_eq!(
            parse_client_op(r#"{"op":"message","data":{"content":""}}"#),
            EmptyMessage
        );
        assert_eq!(
            parse_client_op(r#"{"op":"message","data":{}}"#),
            EmptyMessage
        );
        assert_eq!(parse_client_op(r#"{"op":"message"}"#), EmptyMessage);
        assert_eq!(
            parse_client_op(r#"{"op":"message","data":{"content":null}}"#),
            Invalid
        );
        assert_eq!(
            parse_client_op(r#"{"op":"message","data":{"content":5}}"#),
            Invalid
        );
        assert_eq!(
            parse_client_op(r#"{"op":"approve","data":{}}"#),
            Approve(None)
        );
        assert_eq!(
            parse_client_op(r#"{"op":"approve","data":{"approvals":{"c1":true}}}"#),
            Approve(Some(serde_json::json!({"c1": true})))
        );
        assert_eq!(parse_client_op(r#"{"op":"cancel"}"#), Cancel);
        assert_eq!(
            parse_client_op(r#"{"op":"dance"}"#),
            Unknown("dance".into())
        );
        assert_eq!(parse_client_op(r#"{"op":"message","data":[]}"#), Invalid);
        assert_eq!(parse_client_op(r#"{"op":5}"#), Invalid);
        assert_eq!(parse_client_op(r#"[1,2]"#), Invalid);
        assert_eq!(parse_client_op("not json"), Invalid);
    }

    #[test]
    fn key_subprotocol() {
        let offers = vec!["chat".to_string(), "autopoiesis.key.s3cret".to_string()];
        assert_eq!(
            key_from_subprotocols(&offers, |k| k == b"s3cret"),
            Some("autopoiesis.key.s3cret")
        );
        assert_eq!(key_from_subprotocols(&offers, |k| k == b"other"), None);
    }
}
