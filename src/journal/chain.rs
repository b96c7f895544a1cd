//! A cold session's history read back from the journal: its last `m`
//! record, then each one its `p` names, newest first, folded into the
//! history in order. Sans-IO: the caller supplies the read (a helper
//! thread's `pread`, a test's byte slice).
//!
//! Nothing wrong gets through: every record must pass its CRC, be an `m`
//! record of this session, and link strictly backwards (so a corrupt link
//! cannot loop), and the history must have the length the directory
//! expects. Any failure is an error naming the offset, never a partial or
//! foreign history.

use super::{decode_payload, Change, Loc, HEADER};

/// Longest chain followed (a history of this many turns is far past any
/// real one; a longer chain is treated as corrupt rather than read for
/// ever).
const MAX_LINKS: usize = 1 << 20;

/// Reads session `id`'s history whose last `m` record is at `last`, with
/// `read_at(offset, buf)` filling `buf` from the file. `expected`: the
/// message count the directory holds.
pub fn read_history(
    id: &str,
    last: Loc,
    expected: usize,
    mut read_at: impl FnMut(u64, &mut [u8]) -> std::io::Result<()>,
) -> Result<Vec<String>, String> {
    let mut links = Vec::new();
    let mut next = Some(last);
    let mut buf = Vec::new();
    while let Some(at) = next {
        if links.len() == MAX_LINKS {
            return Err(format!(
                "the chain of records at {} is too long",
                last.offset
            ));
        }
        if (at.len as usize) < HEADER {
            return Err(format!("a bad link to byte offset {}", at.offset));
        }
        buf.resize(at.len as usize, 0);
        read_at(at.offset, &mut buf)
            .map_err(|e| format!("cannot read byte offset {}: {e}", at.offset))?;
        let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
        let payload = &buf[HEADER..];
        if len != payload.len() || super::crc32(payload) != crc {
            return Err(format!("a corrupt record at byte offset {}", at.offset));
        }
        match decode_payload(payload) {
            Some((
                Change::Messages {
                    id: of,
                    messages,
                    replace_from,
                },
                prev,
            )) if of == id => {
                if prev.is_some_and(|p| p.offset >= at.offset) {
                    return Err(format!("a bad link at byte offset {}", at.offset));
                }
                links.push((messages, replace_from));
                next = prev;
            }
            _ => {
                return Err(format!(
                    "the record at byte offset {} is not one of this session's messages",
                    at.offset
                ))
            }
        }
    }
    let mut history: Vec<String> = Vec::new();
    for (messages, replace_from) in links.into_iter().rev() {
        if let Some(from) = replace_from {
            history.truncate(usize::try_from(from).unwrap_or(usize::MAX));
        }
        history.extend(messages);
    }
    if history.len() != expected {
        return Err(format!(
            "the journal holds {} messages where {expected} were expected",
            history.len()
        ));
    }
    Ok(history)
}

/// `read_at` over journal bytes held in memory (tests, fuzz targets): a
/// range past the end is `UnexpectedEof`, as a short `pread` would be.
pub fn read_in(bytes: &[u8]) -> impl FnMut(u64, &mut [u8]) -> std::io::Result<()> + '_ {
    move |offset, buf| {
        let from = usize::try_from(offset).unwrap_or(usize::MAX);
        let got = bytes
            .get(from..from.saturating_add(buf.len()))
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(got);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::encode_linked;

    /// A file of records, each `m` linked to the previous one of its
    /// session; returns the file and each session's last link.
    fn file(changes: &[Change]) -> (Vec<u8>, std::collections::HashMap<String, Loc>) {
        let mut out = Vec::new();
        let mut last = std::collections::HashMap::new();
        for c in changes {
            let prev = match c {
                Change::Messages { id, .. } => last.get(id).copied(),
                _ => None,
            };
            let record = encode_linked(c, prev);
            let at = Loc {
                offset: out.len() as u64,
                len: record.len() as u32,
            };
            out.extend(record);
            if let Change::Messages { id, .. } = c {
                last.insert(id.clone(), at);
            }
        }
        (out, last)
    }

    fn m(id: &str, texts: &[&str], from: Option<u64>) -> Change {
        Change::Messages {
            id: id.into(),
            messages: texts.iter().map(|t| format!("\"{t}\"")).collect(),
            replace_from: from,
        }
    }

    #[test]
    fn follows_the_links_back_and_folds_in_order_with_cuts() {
        let (bytes, last) = file(&[
            Change::Created {
                id: "a".into(),
                at: "x".into(),
            },
            m("a", &["1", "2"], None),
            m("b", &["other"], None),
            m("a", &["3"], None),
            Change::Seq {
                id: "a".into(),
                seq: 9,
            },
            m("a", &["3'", "4"], Some(2)),
        ]);
        let got = read_history("a", last["a"], 4, read_in(&bytes)).unwrap();
        assert_eq!(got, ["\"1\"", "\"2\"", "\"3'\"", "\"4\""]);
        let got = read_history("b", last["b"], 1, read_in(&bytes)).unwrap();
        assert_eq!(got, ["\"other\""]);
    }

    #[test]
    fn refuses_a_wrong_session_a_corrupt_record_a_bad_link_and_a_wrong_count() {
        let (mut bytes, last) = file(&[m("a", &["1"], None), m("b", &["2"], None)]);
        // Another session's record.
        let err = read_history("a", last["b"], 1, read_in(&bytes)).unwrap_err();
        assert!(err.contains("not one of this session's"), "{err}");
        // The count the directory expects.
        let err = read_history("a", last["a"], 2, read_in(&bytes)).unwrap_err();
        assert!(err.contains("1 messages where 2"), "{err}");
        // Past the end of the file.
        let far = Loc {
            offset: 10_000,
            len: 40,
        };
        let err = read_history("a", far, 1, read_in(&bytes)).unwrap_err();
        assert!(err.contains("cannot read byte offset 10000"), "{err}");
        // A link that does not point backwards.
        let (looped, _) = file(&[]);
        let mut self_link = looped;
        let rec = encode_linked(&m("a", &["x"], None), Some(Loc { offset: 0, len: 10 }));
        let at = Loc {
            offset: 0,
            len: rec.len() as u32,
        };
        self_link.extend(rec);
        let err = read_history("a", at, 1, read_in(&self_link)).unwrap_err();
        assert!(err.contains("bad link"), "{err}");
        // A flipped byte.
        let n = bytes.len();
        bytes[n - 3] ^= 1;
        let err = read_history("b", last["b"], 1, read_in(&bytes)).unwrap_err();
        assert!(err.contains("corrupt record"), "{err}");
    }
}
