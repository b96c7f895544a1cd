//! JSON text written by hand on the hot paths (events, history messages,
//! journal records), byte-for-byte what `serde_json` writes.
//!
//! Every streamed token is serialized at least twice (its event, its share
//! of the history); serde_json escapes strings a byte at a time and formats
//! numbers through `fmt`, which callgrind showed as a tenth of a turn.
//! Here a string with nothing to escape — almost every one — is checked
//! eight bytes at a time and copied whole.

/// `s` as a JSON string, exactly as `serde_json::to_writer` writes it.
pub fn push_str(buf: &mut Vec<u8>, s: &str) {
    if needs_escape(s.as_bytes()) {
        // Writing into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *buf, s);
    } else {
        buf.reserve(s.len() + 2);
        buf.push(b'"');
        buf.extend_from_slice(s.as_bytes());
        buf.push(b'"');
    }
}

/// `n` in decimal (a JSON number; HTTP's status and lengths use it too).
pub fn push_u64(buf: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[at..]);
}

/// `[a,b,...]` of JSON texts kept as they are (the history's
/// `ModelMessage`s, a message's parts), without parsing them again.
pub fn push_array<T: AsRef<[u8]>>(buf: &mut Vec<u8>, items: &[T]) {
    buf.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        buf.extend_from_slice(item.as_ref());
    }
    buf.push(b']');
}

/// Whether a JSON string of `bytes` has anything serde_json escapes: a
/// control character (below 0x20), `"` or `\`.
fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // The high bit of each byte of the result is set where that byte of
    // `x` is zero (exact when no byte borrows, i.e. for the first zero and
    // — since any hit means "escape" — good enough for a yes/no answer).
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        // Below 0x20: with the high bit clear, x - 0x20 borrows into it.
        let control = x.wrapping_sub(ONES * 0x20) & !x & HIGHS;
        if control
            | zero_byte(x ^ (ONES * u64::from(b'"')))
            | zero_byte(x ^ (ONES * u64::from(b'\\')))
            != 0
        {
            return true;
        }
    }
    chunks
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_written_as_serde_json_writes_them() {
        let mut cases: Vec<String> = [
            "",
            "plain",
            "q\"uote",
            "back\\slash",
            "nl\n",
            "\u{1}\u{1f}",
            "é\u{7f}→ and more than eight bytes",
            "exactly8",
            "sixteen bytes ok",
            "0123456\"",
            "01234567\\",
            "!#$%&'()*+,-./ ~",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // Every byte value at every position of a 17-byte string.
        for c in 0u8..0x80 {
            for at in 0..17 {
                let mut s = vec![b'a'; 17];
                s[at] = c;
                cases.push(String::from_utf8(s).unwrap());
            }
        }
        for s in &cases {
            let mut mine = Vec::new();
            push_str(&mut mine, s);
            assert_eq!(mine, serde_json::to_vec(s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn numbers_are_decimal() {
        for n in [0, 7, 10, 99, 12_345, u64::MAX] {
            let mut mine = Vec::new();
            push_u64(&mut mine, n);
            assert_eq!(mine, n.to_string().into_bytes());
        }
    }
}
