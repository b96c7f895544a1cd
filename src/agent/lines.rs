//! Newline-delimited input, fed in arbitrary pieces, with a bound on the
//! longest line (so a child that never prints a newline cannot grow it).

/// Splits a byte stream into lines (without the `\n`, and without a
/// trailing `\r`).
#[derive(Debug, Default)]
pub struct LineDecoder {
    partial: Vec<u8>,
    max_line: usize,
}

/// A line longer than the bound.
#[derive(Debug, PartialEq, Eq)]
pub struct LineTooLong;

impl LineDecoder {
    pub fn new(max_line: usize) -> Self {
        LineDecoder {
            partial: Vec::new(),
            max_line,
        }
    }

    /// Appends `input` and hands every complete line to `each`.
    pub fn feed(
        &mut self,
        mut input: &[u8],
        mut each: impl FnMut(&[u8]),
    ) -> Result<(), LineTooLong> {
        while let Some(nl) = input.iter().position(|&b| b == b'\n') {
            let (head, rest) = input.split_at(nl);
            input = &rest[1..];
            if self.partial.len() + head.len() > self.max_line {
                return Err(LineTooLong);
            }
            if self.partial.is_empty() {
                each(trim_cr(head));
            } else {
                self.partial.extend_from_slice(head);
                let line = std::mem::take(&mut self.partial);
                each(trim_cr(&line));
            }
        }
        if self.partial.len() + input.len() > self.max_line {
            return Err(LineTooLong);
        }
        self.partial.extend_from_slice(input);
        Ok(())
    }

    /// The unterminated rest, at end of input.
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        let rest = std::mem::take(&mut self.partial);
        (!rest.is_empty()).then_some(rest)
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(input: &[u8], step: usize) -> Vec<Vec<u8>> {
        let mut d = LineDecoder::new(64);
        let mut out = Vec::new();
        for piece in input.chunks(step) {
            d.feed(piece, |l| out.push(l.to_vec())).unwrap();
        }
        out.extend(d.finish());
        out
    }

    #[test]
    fn same_lines_however_split() {
        let input = b"one\r\ntwo\n\nthree";
        let whole = split(input, input.len());
        assert_eq!(whole, [&b"one"[..], b"two", b"", b"three"]);
        for step in 1..input.len() {
            assert_eq!(split(input, step), whole, "step {step}");
        }
    }

    #[test]
    fn long_lines_are_refused() {
        let mut d = LineDecoder::new(4);
        assert_eq!(d.feed(b"abc", |_| {}), Ok(()));
        assert_eq!(d.feed(b"de", |_| {}), Err(LineTooLong));
        let mut d = LineDecoder::new(4);
        assert_eq!(
            d.feed(b"abcd\nabcdefgh\n", |_| {}),
            Err(LineTooLong),
            "whole or split alike"
        );
    }
}
