//! Server → client WebSocket events: serialized once, framed once, and the
//! same [`Bytes`] handed to every subscriber (a refcount bump each).

use bytes::Bytes;
use serde::Serialize;

use crate::ws::{frame_in_place, FRAME_HEADER_ROOM, OPCODE_TEXT};

#[derive(Serialize)]
struct Wire<'a, D: Serialize> {
    op: &'a str,
    data: D,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
}

/// `{"content": ...}`, the data of `token`, `thinking` and `done`.
#[derive(Serialize)]
pub struct Content<'a> {
    pub content: &'a str,
}

/// The data of an `error` event: `{"message"}` or `{"code","message"}`.
#[derive(Serialize)]
pub struct ErrorData<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'a str>,
    pub message: &'a str,
}

/// The JSON text of an event (what a client's `JSON.parse` sees).
pub fn event_json(op: &str, data: impl Serialize, seq: Option<u64>) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64);
    write_event(&mut buf, op, data, seq);
    buf
}

/// The event as one complete WebSocket text frame.
pub fn event_frame(op: &str, data: impl Serialize, seq: Option<u64>) -> Bytes {
    let mut buf = Vec::with_capacity(FRAME_HEADER_ROOM + 64);
    buf.resize(FRAME_HEADER_ROOM, 0);
    write_event(&mut buf, op, data, seq);
    frame_in_place(buf, OPCODE_TEXT)
}

fn write_event(buf: &mut Vec<u8>, op: &str, data: impl Serialize, seq: Option<u64>) {
    // Serializing plain structs of strings and integers into a Vec cannot fail.
    let _ = serde_json::to_writer(buf, &Wire { op, data, seq });
}

/// An `error` for one client only (no `seq`).
pub fn error_frame(code: Option<&str>, message: &str) -> Bytes {
    event_frame("error", ErrorData { code, message }, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_event_shape() {
        let json = event_json(
            "token",
            Content {
                content: "hi \"x\"",
            },
            Some(7),
        );
        assert_eq!(
            json,
            br#"{"op":"token","data":{"content":"hi \"x\""},"seq":7}"#
        );
        let frame = event_frame(
            "token",
            Content {
                content: "hi \"x\"",
            },
            Some(7),
        );
        assert_eq!(&frame[2..], &json[..]);
        assert_eq!(frame[1] as usize, json.len());
    }

    #[test]
    fn error_event_shapes() {
        let json = event_json(
            "error",
            ErrorData {
                code: None,
                message: "Empty message",
            },
            None,
        );
        assert_eq!(
            json,
            br#"{"op":"error","data":{"message":"Empty message"}}"#
        );
        let json = event_json(
            "error",
            ErrorData {
                code: Some("busy"),
                message: "m",
            },
            None,
        );
        assert_eq!(
            json,
            br#"{"op":"error","data":{"code":"busy","message":"m"}}"#
        );
    }
}
