//! A response body produced a slice at a time: [`Spliced`], shared parts
//! joined by a separator between a head and a foot, pulled by the reactor
//! only as its socket takes them. A session's history is one
//! ([`history`]): an 8.7 MB history of short messages, copied whole into
//! its response, held the loop for 2–4 ms per request (several requests in
//! one iteration: 15–17 ms); pulled in slices, a connection costs one
//! slice's copy per loop iteration.
//!
//! Sans-IO: [`Spliced::pull`] returns bytes; the reactor queues them.

use bytes::Bytes;

/// Parts at least this long are handed out shared (sliced, never copied).
pub const SHARE_FROM: usize = 16 * 1024;
/// What the reactor asks of one [`Spliced::pull`]: short parts are copied
/// together into slices of about this size.
pub const SLICE: usize = 64 * 1024;

/// A body made of `head`, then `items` with `sep` between them, then
/// `foot`, produced in order a slice at a time. It holds its own snapshot
/// of the items (shared `Bytes`: cloning them copies no text), so what it
/// produces does not change if their owner changes meanwhile, and its
/// length is known from the start (the `Content-Length`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spliced {
    head: Vec<u8>,
    items: Vec<Bytes>,
    sep: u8,
    foot: &'static [u8],
    /// The head has been produced.
    head_done: bool,
    /// The next item (not yet produced, or partly: `offset`).
    next: usize,
    /// Bytes of `items[next]` already produced (a long one, in slices).
    offset: usize,
    /// The separator before `items[next]` has been produced.
    sep_done: bool,
    /// Bytes not yet produced.
    left: usize,
}

impl Spliced {
    pub fn new(head: Vec<u8>, items: Vec<Bytes>, sep: u8, foot: &'static [u8]) -> Self {
        let len = head.len()
            + items.iter().map(Bytes::len).sum::<usize>()
            + items.len().saturating_sub(1)
            + foot.len();
        Spliced {
            head,
            items,
            sep,
            foot,
            head_done: false,
            next: 0,
            offset: 0,
            sep_done: false,
            left: len,
        }
    }

    /// Bytes not yet produced (all of them before the first pull).
    pub fn remaining(&self) -> usize {
        self.left
    }

    pub fn is_done(&self) -> bool {
        self.left == 0
    }

    /// The next bytes, None when all are produced. Short items are copied
    /// together up to `max` bytes (one more item is never split: a slice
    /// can hold up to [`SHARE_FROM`] more when `max` is smaller); a long
    /// one is handed out shared, in slices of at most `max`. The work is
    /// proportional to the bytes returned, never to the whole body.
    pub fn pull(&mut self, max: usize) -> Option<Bytes> {
        let max = max.max(1);
        let mut buf = Vec::new();
        if !self.head_done {
            self.head_done = true;
            buf.reserve(max.min(self.left));
            buf.extend_from_slice(&self.head);
            self.head = Vec::new();
        }
        while let Some(item) = self.items.get(self.next) {
            if self.next > 0 && !self.sep_done {
                if buf.capacity() == 0 {
                    buf.reserve(max.min(self.left));
                }
                buf.push(self.sep);
                self.sep_done = true;
            }
            if item.len() >= SHARE_FROM {
                if !buf.is_empty() {
                    break;
                }
                let n = (item.len() - self.offset).min(max);
                let out = item.slice(self.offset..self.offset + n);
                self.offset += n;
                if self.offset == item.len() {
                    self.advance();
                }
                self.left -= n;
                return Some(out);
            }
            if buf.len() > usize::from(self.sep_done) && buf.len() + item.len() > max {
                break;
            }
            if buf.capacity() == 0 {
                buf.reserve(max.min(self.left));
            }
            buf.extend_from_slice(item);
            self.advance();
        }
        let foot_due = self.next == self.items.len() && self.left == buf.len() + self.foot.len();
        if foot_due && (buf.is_empty() || buf.len() + self.foot.len() <= max) {
            buf.extend_from_slice(self.foot);
        }
        self.left -= buf.len();
        (!buf.is_empty()).then(|| Bytes::from(buf))
    }

    fn advance(&mut self) {
        self.next += 1;
        self.offset = 0;
        self.sep_done = false;
    }

    /// What is left of the body in one buffer, without producing it (tests,
    /// small histories).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut copy = self.clone();
        let mut out = Vec::with_capacity(self.left);
        while let Some(b) = copy.pull(usize::MAX) {
            out.extend_from_slice(&b);
        }
        out
    }
}

/// `{"session_id": id, "messages": [...]}`, the history response body of
/// session `id` whose messages (each a `ModelMessage`'s JSON text) are
/// `messages`, spliced as they are stored.
pub fn history(id: &str, messages: &[Bytes]) -> Spliced {
    let mut head = Vec::with_capacity(32 + id.len());
    head.extend_from_slice(b"{\"session_id\":");
    let _ = serde_json::to_writer(&mut head, id);
    head.extend_from_slice(b",\"messages\":[");
    Spliced::new(head, messages.to_vec(), b',', b"]}")
}

/// The whole history body in one buffer (tests, small histories).
pub fn history_json(id: &str, messages: &[Bytes]) -> Vec<u8> {
    history(id, messages).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pulled(mut body: Spliced, max: usize) -> Vec<Bytes> {
        let mut out = Vec::new();
        while let Some(b) = body.pull(max) {
            assert!(!b.is_empty());
            out.push(b);
        }
        assert!(body.is_done());
        assert_eq!(body.pull(max), None);
        out
    }

    fn joined(parts: &[Bytes]) -> Vec<u8> {
        parts.iter().flat_map(|b| b.iter().copied()).collect()
    }

    /// What the history body was before it was produced in slices: the
    /// head, the messages joined by commas, the foot, all at once.
    fn reference(id: &str, messages: &[Bytes]) -> Vec<u8> {
        let mut out =
            format!("{{\"session_id\":{},\"messages\":[", serde_json::json!(id)).into_bytes();
        for (i, m) in messages.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(m);
        }
        out.extend_from_slice(b"]}");
        out
    }

    fn message(n: usize, len: usize) -> Bytes {
        let text = format!("{{\"n\":{n},\"x\":\"{}\"}}", "y".repeat(len));
        Bytes::from(text)
    }

    #[test]
    fn a_history_shares_long_messages_and_gathers_short_ones() {
        let long = Bytes::from(format!(
            "{{\"kind\":\"request\",\"x\":\"{}\"}}",
            "y".repeat(100_000)
        ));
        let short = |i: usize| Bytes::from(format!("{{\"n\":{i}}}"));
        let mut messages: Vec<Bytes> = (0..5).map(short).collect();
        messages.push(long.clone());
        messages.extend((5..8).map(short));
        let body = history("h", &messages);
        assert_eq!(body.remaining(), reference("h", &messages).len());
        let parts = pulled(body, SLICE);
        // Short messages before and after, gathered; the long one shared,
        // in slices of at most SLICE.
        assert_eq!(parts.len(), 1 + 100_024usize.div_ceil(SLICE) + 1);
        assert_eq!(parts[1].as_ptr(), long.as_ptr());
        assert!(parts[1..3].iter().all(|p| p.len() <= SLICE));
        let all = joined(&parts);
        assert_eq!(all, reference("h", &messages));
        let v: serde_json::Value = serde_json::from_slice(&all).unwrap();
        assert_eq!(v["session_id"], "h");
        let got: Vec<String> = v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.to_string())
            .collect();
        let want: Vec<String> = messages
            .iter()
            .map(|m| String::from_utf8(m.to_vec()).unwrap())
            .collect();
        assert_eq!(got, want);
        assert_eq!(history_json("h", &messages), all);
    }

    #[test]
    fn slices_are_bounded_and_join_to_the_whole_body_whatever_the_bound() {
        // Short, long and boundary-sized messages, mixed.
        let sizes = [
            0,
            10,
            SHARE_FROM - 20,
            SHARE_FROM,
            3,
            SLICE * 2 + 5,
            700,
            SHARE_FROM - 1,
            1,
            SLICE,
            40,
        ];
        let messages: Vec<Bytes> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| message(i, n))
            .collect();
        let want = reference("a-b.c", &messages);
        for max in [1, 7, 100, SHARE_FROM, SLICE, SLICE + 3, usize::MAX] {
            let parts = pulled(history("a-b.c", &messages), max);
            assert_eq!(joined(&parts), want, "max {max}");
            for p in &parts {
                // Never more than the bound plus one short item (and its
                // separator, the head, the foot).
                assert!(
                    p.len() <= max.max(SHARE_FROM + 64),
                    "max {max}: {}",
                    p.len()
                );
            }
        }
        assert_eq!(history_json("a-b.c", &messages), want);
    }

    #[test]
    fn many_short_messages_come_in_slices_of_about_the_bound() {
        let messages: Vec<Bytes> = (0..10_000).map(|i| message(i, 1000)).collect();
        let want = reference("many", &messages);
        let parts = pulled(history("many", &messages), SLICE);
        assert_eq!(joined(&parts), want);
        assert!(parts.iter().all(|p| p.len() <= SLICE));
        // Every slice but the last is nearly full.
        assert!(parts[..parts.len() - 1]
            .iter()
            .all(|p| p.len() > SLICE - 1100));
    }

    #[test]
    fn empty_and_single_histories() {
        for messages in [vec![], vec![message(0, 5)], vec![message(0, SLICE * 3)]] {
            let body = history("s", &messages);
            let want = reference("s", &messages);
            assert_eq!(body.remaining(), want.len());
            assert_eq!(body.to_vec(), want);
            // to_vec does not consume it.
            assert_eq!(joined(&pulled(body, 100)), want);
        }
        assert_eq!(
            history_json("s", &[]),
            br#"{"session_id":"s","messages":[]}"#
        );
    }

    #[test]
    fn what_is_left_after_some_pulls() {
        let messages: Vec<Bytes> = (0..50).map(|i| message(i, 3000)).collect();
        let want = reference("s", &messages);
        let mut body = history("s", &messages);
        let first = body.pull(10_000).unwrap();
        assert_eq!(body.remaining(), want.len() - first.len());
        let mut got = first.to_vec();
        got.extend_from_slice(&body.to_vec());
        assert_eq!(got, want);
    }

    #[test]
    fn the_snapshot_does_not_follow_later_changes() {
        let mut messages: Vec<Bytes> = (0..3).map(|i| message(i, 10)).collect();
        let body = history("s", &messages);
        let want = reference("s", &messages);
        messages.push(message(3, 10));
        assert_eq!(body.to_vec(), want);
    }
}
