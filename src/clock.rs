//! Wall-clock timestamps in the contract's format (and AG-UI's epoch
//! milliseconds), and random session ids.
//!
//! Both are tiny enough to write by hand: RFC 3339 with microseconds is
//! Howard Hinnant's `civil_from_days` plus fixed-width digits, and an id is 16 bytes
//! from `getrandom(2)` printed as hex.

use std::time::{SystemTime, UNIX_EPOCH};

/// `2026-02-16T09:30:12.123456Z` for `t` (UTC, always microseconds, `Z`).
///
/// Digits are written into a fixed buffer rather than through `format!`:
/// every turn stamps two messages, and the formatter machinery was 9% of a
/// turn's instructions (callgrind).
pub fn rfc3339_micros(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = (secs % 86_400) as u32;
    let (year, month, day) = civil_from_days(days);
    let mut out = *b"0000-00-00T00:00:00.000000Z";
    // Years past 9999 cannot come from a `SystemTime` on this platform's
    // clock in practice; they are clamped rather than widening the field.
    put_digits(&mut out[0..4], year.clamp(0, 9999) as u32);
    put_digits(&mut out[5..7], month);
    put_digits(&mut out[8..10], day);
    put_digits(&mut out[11..13], rem / 3600);
    put_digits(&mut out[14..16], (rem / 60) % 60);
    put_digits(&mut out[17..19], rem % 60);
    put_digits(&mut out[20..26], since.subsec_micros());
    // Only ASCII digits and punctuation were written.
    String::from_utf8_lossy(&out).into_owned()
}

/// A wall-clock instant in microseconds since the Unix epoch: a session's
/// `created_at` in 8 bytes instead of a 27-byte string, formatted by
/// [`rfc3339_micros`] when shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stamp(u64);

impl Stamp {
    pub fn now() -> Stamp {
        Stamp::of(SystemTime::now())
    }

    pub fn of(t: SystemTime) -> Stamp {
        let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        Stamp(u64::try_from(since.as_micros()).unwrap_or(u64::MAX))
    }

    /// The text [`rfc3339_micros`] writes, read back; None for any other
    /// text (it must round-trip exactly).
    pub fn parse(text: &str) -> Option<Stamp> {
        let b = text.as_bytes();
        if b.len() != 27 {
            return None;
        }
        let num = |from: usize, to: usize| -> Option<u64> {
            let digits = b.get(from..to)?;
            digits.iter().try_fold(0u64, |n, &d| {
                d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
            })
        };
        let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
        let (h, m, sec, micros) = (num(11, 13)?, num(14, 16)?, num(17, 19)?, num(20, 26)?);
        if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 59 {
            return None;
        }
        let days = u64::try_from(days_from_civil(year as i64, month as u32, day as u32)).ok()?;
        let stamp = Stamp((((days * 24 + h) * 60 + m) * 60 + sec) * 1_000_000 + micros);
        (stamp.to_rfc3339() == text).then_some(stamp)
    }

    pub fn to_rfc3339(self) -> String {
        rfc3339_micros(UNIX_EPOCH + std::time::Duration::from_micros(self.0))
    }
}

/// (year, month 1..=12, day 1..=31) → days since 1970-01-01, the inverse
/// of [`civil_from_days`].
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400; // [0, 399]
    let mp = (i64::from(m) + 9) % 12; // March = 0
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

/// Writes `n` as decimal into all of `field`, zero-padded on the left.
fn put_digits(field: &mut [u8], mut n: u32) {
    for b in field.iter_mut().rev() {
        *b = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// The current time, formatted by [`rfc3339_micros`].
pub fn now_rfc3339() -> String {
    rfc3339_micros(SystemTime::now())
}

/// Milliseconds since the Unix epoch (AG-UI's event `timestamp`).
pub fn unix_millis() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

/// Days since 1970-01-01 → (year, month 1..=12, day 1..=31), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32; // [1, 31]
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32; // [1, 12]
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A new session id: 32 lowercase hex characters from the OS's randomness.
///
/// `getrandom(2)` does not fail on Linux once the pool is initialised (it
/// blocks until then, which only matters in the first seconds of boot); if
/// it ever did, a time-and-counter id keeps the server answering rather than
/// panicking, and is still unique within this process.
pub fn new_session_id() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        use std::sync::atomic::{AtomicU64, Ordering};
        static FALLBACK: AtomicU64 = AtomicU64::new(0);
        let n = FALLBACK.fetch_add(1, Ordering::Relaxed);
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        bytes[..8].copy_from_slice(&t.to_le_bytes());
        bytes[8..].copy_from_slice(&n.to_le_bytes());
    }
    hex(&bytes)
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64, micros: u32) -> String {
        rfc3339_micros(UNIX_EPOCH + Duration::new(secs, micros * 1000))
    }

    #[test]
    fn formats_known_instants() {
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 1), "2000-02-29T00:00:00.000001Z");
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000000Z");
        assert_eq!(at(1_771_234_212, 123_456), "2026-02-16T09:30:12.123456Z");
        assert_eq!(at(253_402_300_799, 999_999), "9999-12-31T23:59:59.999999Z");
    }

    #[test]
    fn stamps_round_trip_their_text_and_refuse_any_other() {
        for (secs, micros) in [
            (0, 0),
            (951_782_400, 1),
            (4_107_542_400, 0),
            (1_771_234_212, 123_456),
            (253_402_300_799, 999_999),
        ] {
            let text = at(secs, micros);
            let stamp = Stamp::parse(&text).unwrap();
            assert_eq!(stamp.to_rfc3339(), text);
        }
        let now = Stamp::now();
        assert_eq!(Stamp::parse(&now.to_rfc3339()), Some(now));
        for bad in [
            "",
            "2026-02-30T00:00:00.000000Z",
            "2026-02-16T09:30:12.123456+00:00",
            "2026-02-16 09:30:12.123456Z",
            "2026-13-16T09:30:12.123456Z",
            "2026-02-16T09:30:12.12345xZ",
        ] {
            assert_eq!(Stamp::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn ids_are_32_lowercase_hex_and_distinct() {
        let a = new_session_id();
        let b = new_session_id();
        assert_eq!(a.len(), 32);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
        assert_ne!(a, b);
    }
}
