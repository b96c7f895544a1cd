//! Server → client events: serialized once, framed once, and the same
//! [`Bytes`] handed to every subscriber (a refcount bump each), WebSocket
//! and Server-Sent Events alike.

use bytes::{Bytes, BytesMut};
use serde::Serialize;

use crate::json;
use crate::ws::{frame_header, frame_in_place, FRAME_HEADER_ROOM, OPCODE_TEXT};

/// What an event's `data` is: anything serde serializes, or a type that
/// writes its own JSON (the per-token [`Content`]).
pub trait EventData {
    fn write_json(&self, buf: &mut Vec<u8>);
}

impl<T: Serialize> EventData for T {
    fn write_json(&self, buf: &mut Vec<u8>) {
        // Serializing plain structs of strings and integers into a Vec
        // cannot fail.
        let _ = serde_json::to_writer(buf, self);
    }
}

/// `{"content": ...}`, the data of `token`, `thinking` and `done`.
#[derive(Clone, Copy, Debug)]
pub struct Content<'a> {
    pub content: &'a str,
}

impl EventData for Content<'_> {
    fn write_json(&self, buf: &mut Vec<u8>) {
        buf.extend_from_slice(b"{\"content\":");
        json::push_str(buf, self.content);
        buf.push(b'}');
    }
}

/// The data of an `error` event: `{"message"}` or `{"code","message"}`.
#[derive(Serialize)]
pub struct ErrorData<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'a str>,
    pub message: &'a str,
}

/// The JSON text of an event (what a client's `JSON.parse` sees).
pub fn event_json(op: &str, data: impl EventData, seq: Option<u64>) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64);
    write_event(&mut buf, op, data, seq);
    buf
}

/// The event as one complete WebSocket text frame.
pub fn event_frame(op: &str, data: impl EventData, seq: Option<u64>) -> Bytes {
    let mut buf = Vec::with_capacity(FRAME_HEADER_ROOM + 64);
    buf.resize(FRAME_HEADER_ROOM, 0);
    write_event(&mut buf, op, data, seq);
    frame_in_place(buf, OPCODE_TEXT)
}

/// `{"op":…,"data":…[,"seq":N]}`. The envelope is written by hand and only
/// `data` goes through serde: this runs once per token, and serde's
/// per-key escaping and `fmt` for the number were most of its cost.
fn write_event(buf: &mut Vec<u8>, op: &str, data: impl EventData, seq: Option<u64>) {
    buf.extend_from_slice(b"{\"op\":");
    json::push_str(buf, op);
    buf.extend_from_slice(b",\"data\":");
    data.write_json(buf);
    if let Some(seq) = seq {
        buf.extend_from_slice(b",\"seq\":");
        json::push_u64(buf, seq);
    }
    buf.push(b'}');
}

/// Writes the event's SSE head, frame header and JSON, then the blank line,
/// into `buf`; returns where the SSE head ends, the frame starts and the
/// JSON starts.
fn write_wire_forms(
    buf: &mut Vec<u8>,
    op: &str,
    data: impl EventData,
    seq: Option<u64>,
) -> (usize, usize, usize) {
    if let Some(seq) = seq {
        buf.extend_from_slice(b"id: ");
        json::push_u64(buf, seq);
        buf.push(b'\n');
    }
    buf.extend_from_slice(b"event: ");
    buf.extend_from_slice(op.as_bytes());
    buf.extend_from_slice(b"\ndata: ");
    let sse_head_end = buf.len();
    buf.resize(sse_head_end + FRAME_HEADER_ROOM, 0);
    let json_start = buf.len();
    write_event(buf, op, data, seq);
    let json_len = buf.len() - json_start;
    let header = frame_header(OPCODE_TEXT, json_len);
    let frame_start = json_start - header.len();
    buf[frame_start..json_start].copy_from_slice(&header);
    buf.extend_from_slice(b"\n\n");
    (sse_head_end, frame_start, json_start)
}

/// First chunk of a session's [`EventArena`], and the most a chunk grows to.
const FIRST_CHUNK: usize = 1024;
const MAX_CHUNK: usize = 16 * 1024;

/// Where a session's broadcast events are written: chunks of memory, each
/// event a shared slice of one. An event that is retained for resume lives
/// until a thousand newer ones push it out; with an allocation per event,
/// that late free (and the refcount it reads) missed the cache every time —
/// a sixth of a turn's time in `perf`. Cut from one chunk, a run of events
/// shares one refcount and one free.
///
/// A chunk lives while any event cut from it does; retained events are the
/// newest ones, cut in order, so a session pins at most two partly used
/// chunks beyond them (the oldest one's and the current one); chunks start at
/// 1 KiB (a short turn) and double up to 16 KiB for sessions that stream
/// more.
#[derive(Debug, Default)]
pub struct EventArena {
    chunk: BytesMut,
    next_chunk: usize,
    /// The size the current chunk was allocated with.
    chunk_size: usize,
    /// Largest chunk to allocate (0: `MAX_CHUNK`): a session's retention
    /// budget counts its chunk, so a small budget gets small chunks.
    cap: usize,
}

impl EventArena {
    /// An arena whose chunks are at most `max` bytes (or one event's, when
    /// an event is larger).
    pub fn capped(max: usize) -> Self {
        EventArena {
            cap: max.max(1),
            ..EventArena::default()
        }
    }

    /// Lets go of the chunk being filled and starts small again, keeping
    /// the cap.
    pub fn clear(&mut self) {
        *self = EventArena::capped(self.cap);
    }

    /// Bytes of the chunk being filled (0: none yet): pinned as long as
    /// any event cut from it is retained.
    pub fn chunk_capacity(&self) -> usize {
        self.chunk_size
    }

    /// `bytes`, copied into the current chunk (a new one when it is full).
    fn copy(&mut self, bytes: &[u8]) -> Bytes {
        if self.chunk.capacity() - self.chunk.len() < bytes.len() {
            let mut size = self.next_chunk.clamp(FIRST_CHUNK, MAX_CHUNK);
            if self.cap > 0 {
                size = size.min(self.cap);
            }
            self.next_chunk = size * 2;
            self.chunk = BytesMut::with_capacity(size.max(bytes.len()));
            self.chunk_size = self.chunk.capacity();
        }
        self.chunk.extend_from_slice(bytes);
        self.chunk.split().freeze()
    }
}

/// A broadcast event, serialized once into one allocation that holds both
/// of its wire forms around the same JSON text:
///
/// ```text
/// id: 7\nevent: token\ndata: ·[ws header]{"op":"token",…,"seq":7}\n\n
/// └──── SSE head ─────────────┘└──── WebSocket frame ─────────┘
///                                          └──── SSE body ─────────────┘
/// ```
///
/// A WebSocket subscriber gets one slice (header + JSON), an SSE subscriber
/// two (head, then JSON + blank line); neither copies the JSON.
#[derive(Clone, Debug)]
pub struct Event {
    buf: Bytes,
    sse_head_end: usize,
    frame_start: usize,
    json_start: usize,
    /// It acknowledges something journaled (a turn's end, a `seq`
    /// reservation): it leaves only once that is durable.
    acknowledges: bool,
}

impl Event {
    /// The event `op` with `data`; `seq` None for one-client events
    /// (`resync`), which then carry no `seq` and no SSE `id:`.
    pub fn new(op: &str, data: impl EventData, seq: Option<u64>) -> Self {
        let mut buf = Vec::with_capacity(48 + FRAME_HEADER_ROOM + 64);
        let layout = write_wire_forms(&mut buf, op, data, seq);
        Event::at(Bytes::from(buf), layout)
    }

    /// [`new`](Self::new), written into `arena` (through `scratch`, which is
    /// left holding the bytes): a session's retained events share a few
    /// chunks instead of owning an allocation each.
    pub fn new_in(
        arena: &mut EventArena,
        scratch: &mut Vec<u8>,
        op: &str,
        data: impl EventData,
        seq: Option<u64>,
    ) -> Self {
        scratch.clear();
        let layout = write_wire_forms(scratch, op, data, seq);
        Event::at(arena.copy(scratch), layout)
    }

    fn at(buf: Bytes, (sse_head_end, frame_start, json_start): (usize, usize, usize)) -> Self {
        Event {
            buf,
            sse_head_end,
            frame_start,
            json_start,
            acknowledges: false,
        }
    }

    /// Marks the event as an acknowledgement of journaled state.
    pub fn acknowledging(mut self) -> Self {
        self.acknowledges = true;
        self
    }

    /// Whether it may leave only once the journal is durable.
    pub fn acknowledges(&self) -> bool {
        self.acknowledges
    }

    /// The complete WebSocket text frame.
    pub fn ws_frame(&self) -> Bytes {
        self.buf.slice(self.frame_start..self.buf.len() - 2)
    }

    /// `id: N\nevent: OP\ndata: `: what goes before [`sse_body`](Self::sse_body).
    pub fn sse_head(&self) -> Bytes {
        self.buf.slice(..self.sse_head_end)
    }

    /// The JSON and the blank line that ends the SSE event.
    pub fn sse_body(&self) -> Bytes {
        self.buf.slice(self.json_start..)
    }

    /// The event's JSON text (what a client's `JSON.parse` sees).
    pub fn json(&self) -> &[u8] {
        &self.buf[self.json_start..self.buf.len() - 2]
    }

    /// Bytes this event holds (for retention limits).
    pub fn size(&self) -> usize {
        self.buf.len()
    }
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
    fn one_event_both_wire_forms_share_the_json() {
        let data = Content { content: "a\nb" };
        let event = Event::new("token", data, Some(42));
        let json = event_json("token", data, Some(42));
        assert_eq!(event.json(), &json[..]);
        assert_eq!(
            &event.ws_frame()[..],
            &event_frame("token", data, Some(42))[..]
        );
        let mut sse = event.sse_head().to_vec();
        sse.extend_from_slice(&event.sse_body());
        let mut want = b"id: 42\nevent: token\ndata: ".to_vec();
        want.extend_from_slice(&json);
        want.extend_from_slice(b"\n\n");
        assert_eq!(sse, want);
        // The JSON is not copied: both forms point into one allocation.
        assert_eq!(
            event.ws_frame().as_ptr().wrapping_add(2),
            event.sse_body().as_ptr()
        );
        // Newlines inside strings are escaped: the data line stays one line.
        assert!(!event.json().contains(&b'\n'));
    }

    #[test]
    fn events_in_an_arena_are_the_same_bytes_and_share_chunks() {
        let mut arena = EventArena::default();
        let mut scratch = Vec::new();
        let data = Content { content: "a\nb" };
        let a = Event::new_in(&mut arena, &mut scratch, "token", data, Some(1));
        let b = Event::new_in(&mut arena, &mut scratch, "token", data, Some(2));
        let alone = Event::new("token", data, Some(2));
        assert_eq!(b.json(), alone.json());
        assert_eq!(&b.ws_frame()[..], &alone.ws_frame()[..]);
        assert_eq!(&b.sse_head()[..], &alone.sse_head()[..]);
        assert_eq!(&b.sse_body()[..], &alone.sse_body()[..]);
        // Cut one after the other from the same chunk.
        let end_of_a = a.ws_frame().as_ptr() as usize + a.ws_frame().len() + 2;
        assert_eq!(end_of_a, b.sse_head().as_ptr() as usize);
        // An event bigger than any chunk gets its own.
        let long = "x".repeat(3 * MAX_CHUNK);
        let big = Event::new_in(
            &mut arena,
            &mut scratch,
            "done",
            Content { content: &long },
            Some(3),
        );
        assert_eq!(
            big.json().len(),
            long.len() + r#"{"op":"done","data":{"content":""},"seq":3}"#.len()
        );
        let after = Event::new_in(&mut arena, &mut scratch, "token", data, Some(4));
        assert_eq!(after.json(), Event::new("token", data, Some(4)).json());
    }

    #[test]
    fn long_event_and_event_without_seq() {
        let long = "x".repeat(70_000);
        let event = Event::new("done", Content { content: &long }, Some(1));
        let frame = event.ws_frame();
        assert_eq!(frame[1], 127);
        assert_eq!(frame.len(), 10 + event.json().len());
        let resync = Event::new("resync", serde_json::json!({"since": 5}), None);
        assert_eq!(&resync.sse_head()[..], b"event: resync\ndata: ");
        assert_eq!(resync.json(), br#"{"op":"resync","data":{"since":5}}"#);
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
