//! Incremental decoder for `Transfer-Encoding: chunked` request bodies.
//!
//! Fed whatever bytes have arrived; returns how many it consumed. Bounded:
//! the decoded body never exceeds `max_body` (→ [`ChunkError::TooLarge`]),
//! a size line or the trailer section never exceeds `max_line`/`max_trailer`
//! bytes (→ [`ChunkError::Invalid`]). Strict where leniency enables request
//! smuggling: chunk sizes are hex only (httparse), the CRLF after each
//! chunk's data is required, and an empty size line is an error (httparse
//! would read it as the last chunk).

/// Why a chunked body was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkError {
    /// Malformed framing: 400 and close.
    Invalid,
    /// The decoded body would pass the body limit: 413 and close.
    TooLarge,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Size,
    Data(u64),
    DataCrlf,
    Trailer,
    Done,
}

/// Longest chunk-size line (hex digits, extensions, CRLF) we accept.
const MAX_SIZE_LINE: usize = 1024;

#[derive(Debug)]
pub struct ChunkedDecoder {
    state: State,
    max_body: usize,
    max_trailer: usize,
    trailer_seen: usize,
}

impl ChunkedDecoder {
    pub fn new(max_body: usize, max_trailer: usize) -> Self {
        ChunkedDecoder {
            state: State::Size,
            max_body,
            max_trailer,
            trailer_seen: 0,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes from `buf` into `body`. Returns the bytes consumed; call again
    /// with more input until [`is_done`](Self::is_done). Bytes after the
    /// final CRLF are never consumed (they are the next pipelined request).
    pub fn decode(&mut self, buf: &[u8], body: &mut Vec<u8>) -> Result<usize, ChunkError> {
        let mut pos = 0;
        loop {
            let rest = &buf[pos..];
            match self.state {
                State::Done => return Ok(pos),
                State::Size => {
                    let Some(nl) = rest.iter().take(MAX_SIZE_LINE).position(|&b| b == b'\n') else {
                        if rest.len() >= MAX_SIZE_LINE {
                            return Err(ChunkError::Invalid);
                        }
                        return Ok(pos);
                    };
                    if !rest[0].is_ascii_hexdigit() {
                        return Err(ChunkError::Invalid);
                    }
                    let line = &rest[..=nl];
                    let size = match httparse::parse_chunk_size(line) {
                        Ok(httparse::Status::Complete((used, size))) if used == line.len() => size,
                        _ => return Err(ChunkError::Invalid),
                    };
                    let room = (self.max_body - body.len().min(self.max_body)) as u64;
                    if size > room {
                        return Err(ChunkError::TooLarge);
                    }
                    pos += line.len();
                    self.state = if size == 0 {
                        State::Trailer
                    } else {
                        State::Data(size)
                    };
                }
                State::Data(remaining) => {
                    if rest.is_empty() {
                        return Ok(pos);
                    }
                    let take = rest
                        .len()
                        .min(usize::try_from(remaining).unwrap_or(usize::MAX));
                    body.extend_from_slice(&rest[..take]);
                    pos += take;
                    let left = remaining - take as u64;
                    self.state = if left == 0 {
                        State::DataCrlf
                    } else {
                        State::Data(left)
                    };
                }
                State::DataCrlf => {
                    if rest.len() < 2 {
                        if rest.first().is_some_and(|&b| b != b'\r') {
                            return Err(ChunkError::Invalid);
                        }
                        return Ok(pos);
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err(ChunkError::Invalid);
                    }
                    pos += 2;
                    self.state = State::Size;
                }
                State::Trailer => {
                    // Trailer fields are read and ignored; an empty line ends them.
                    let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                        if self.trailer_seen + rest.len() > self.max_trailer {
                            return Err(ChunkError::Invalid);
                        }
                        return Ok(pos);
                    };
                    self.trailer_seen += nl + 1;
                    if self.trailer_seen > self.max_trailer {
                        return Err(ChunkError::Invalid);
                    }
                    let line = &rest[..nl];
                    pos += nl + 1;
                    // Each trailer line ends in CRLF and holds no other CR.
                    match line.split_last() {
                        Some((b'\r', [])) => self.state = State::Done,
                        Some((b'\r', field)) if !field.contains(&b'\r') => {}
                        _ => return Err(ChunkError::Invalid),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in pieces of `step` bytes (the way a socket hands
    /// them over), keeping unconsumed bytes like the connection does.
    fn decode_split(input: &[u8], step: usize, max: usize) -> Result<(Vec<u8>, usize), ChunkError> {
        let mut dec = ChunkedDecoder::new(max, 1024);
        let mut body = Vec::new();
        let mut pending = Vec::new();
        let mut consumed_total = 0;
        for piece in input.chunks(step.max(1)) {
            pending.extend_from_slice(piece);
            let used = dec.decode(&pending, &mut body)?;
            consumed_total += used;
            pending.drain(..used);
            if dec.is_done() {
                break;
            }
        }
        assert!(dec.is_done(), "not done after all input");
        Ok((body, consumed_total))
    }

    #[test]
    fn decodes_whole_and_split_alike() {
        let input = b"5\r\nhello\r\n1;ext=1\r\n \r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, 100] {
            let (body, used) = decode_split(input, step, 1 << 20).unwrap();
            assert_eq!(body, b"hello 0123456789");
            assert_eq!(used, input.len() - 4, "step {step} must stop before NEXT");
        }
    }

    #[test]
    fn rejects_bad_framing() {
        for bad in [
            &b"\r\n"[..],             // empty size line
            b"-1\r\n",                // sign
            b"zz\r\n",                // not hex
            b"1\nx\r\n0\r\n\r\n",     // bare LF after size
            b"3\r\nabcXY0\r\n\r\n",   // data not followed by CRLF
            b"11111111111111111\r\n", // 17 digits
        ] {
            let mut dec = ChunkedDecoder::new(1 << 20, 1024);
            assert_eq!(
                dec.decode(bad, &mut Vec::new()),
                Err(ChunkError::Invalid),
                "{bad:?}"
            );
        }
        let long_line = vec![b'1'; MAX_SIZE_LINE + 1];
        let mut dec = ChunkedDecoder::new(1 << 20, 1024);
        assert_eq!(
            dec.decode(&long_line, &mut Vec::new()),
            Err(ChunkError::Invalid)
        );
    }

    #[test]
    fn enforces_body_limit_across_chunks() {
        let mut dec = ChunkedDecoder::new(8, 1024);
        let mut body = Vec::new();
        assert_eq!(dec.decode(b"5\r\nhello\r\n", &mut body), Ok(10));
        assert_eq!(dec.decode(b"4\r\n", &mut body), Err(ChunkError::TooLarge));
        let mut dec = ChunkedDecoder::new(8, 1024);
        assert_eq!(
            dec.decode(b"ffffffffffffffff\r\n", &mut Vec::new()),
            Err(ChunkError::TooLarge)
        );
    }

    #[test]
    fn bounds_trailer_section() {
        let mut input = b"0\r\n".to_vec();
        input.extend(std::iter::repeat_n(b'a', 2000));
        let mut dec = ChunkedDecoder::new(8, 1024);
        assert_eq!(
            dec.decode(&input, &mut Vec::new()),
            Err(ChunkError::Invalid)
        );
    }
}
