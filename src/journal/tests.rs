use std::fs::OpenOptions;
use std::io::Write;

use super::*;

fn sample() -> Vec<Change> {
    vec![
        Change::Created {
            id: "a".into(),
            at: "2026-01-01T00:00:00.000000Z".into(),
        },
        Change::Messages {
            id: "a".into(),
            messages: vec![
                r#"{"kind":"request","parts":[]}"#.into(),
                r#"{"kind":"response"}"#.into(),
            ],
            replace_from: None,
        },
        Change::Approvals {
            id: "a".into(),
            calls: vec![PendingCall {
                tool_call_id: "c1".into(),
                name: "rm".into(),
                args: serde_json::json!({"path": "x"}),
            }],
        },
        Change::Messages {
            id: "a".into(),
            messages: vec![r#"{"kind":"request","parts":[]}"#.into()],
            replace_from: Some(1),
        },
        Change::Approvals {
            id: "a".into(),
            calls: Vec::new(),
        },
        Change::Seq {
            id: "a".into(),
            seq: 1024,
        },
        Change::Deleted { id: "a".into() },
    ]
}

fn file_of(changes: &[Change]) -> Vec<u8> {
    changes.iter().flat_map(encode).collect()
}

#[test]
fn crc32_check_value() {
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
}

#[test]
fn records_round_trip() {
    let bytes = file_of(&sample());
    let r = replay(&bytes).unwrap();
    let changes: Vec<Change> = r.changes.into_iter().map(|r| r.change).collect();
    assert_eq!(changes, sample());
    assert_eq!(r.valid_len, bytes.len() as u64);
    assert_eq!(r.torn_at, None);
}

#[test]
fn a_torn_tail_is_dropped() {
    let bytes = file_of(&sample());
    let whole = encode(&sample()[0]).len() + encode(&sample()[1]).len();
    for cut in [
        whole + 1,
        whole + 5,
        whole + 9,
        whole + encode(&sample()[2]).len() - 1,
    ] {
        let r = replay(&bytes[..cut]).unwrap();
        assert_eq!(r.changes.len(), 2, "cut at {cut}");
        assert_eq!(r.torn_at, Some(whole as u64));
    }
    // A last record whose payload was garbled in place is torn too.
    let mut garbled = bytes.clone();
    let last = garbled.len() - 3;
    garbled[last] ^= 0xFF;
    assert_eq!(replay(&garbled).unwrap().changes.len(), sample().len() - 1);
}

#[test]
fn a_bad_record_in_the_middle_is_corruption() {
    let mut bytes = file_of(&sample());
    let second = encode(&sample()[0]).len();
    bytes[second + HEADER + 3] ^= 0x01;
    assert_eq!(
        replay(&bytes),
        Err(Corrupt {
            offset: second as u64,
            len: bytes.len() as u64
        })
    );
}

#[test]
fn data_dir_default() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    };
    assert_eq!(
        default_data_dir(env(&[("XDG_STATE_HOME", "/s"), ("HOME", "/h")])),
        Some("/s/autopoiesis".into())
    );
    assert_eq!(
        default_data_dir(env(&[("HOME", "/h")])),
        Some("/h/.local/state/autopoiesis".into())
    );
    assert_eq!(default_data_dir(env(&[])), None);
}

#[test]
fn records_appended_together_read_back_as_separate_records() {
    let dir =
        std::env::temp_dir().join(format!("autopoiesis-journal-batch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let changes = sample();
    {
        let (mut j, _) = JournalFile::open(&dir, FsyncMode::Never).unwrap();
        let batch: Vec<ToAppend> = changes.iter().map(ToAppend::plain).collect();
        let appended = j.append(&batch).unwrap();
        let sizes: Vec<u64> = appended.iter().map(|a| u64::from(a.at.len)).collect();
        let want: Vec<u64> = changes.iter().map(|c| encode(c).len() as u64).collect();
        assert_eq!(sizes, want);
        // Each record where the one before it ends.
        let offsets: Vec<u64> = appended.iter().map(|a| a.at.offset).collect();
        let ends: Vec<u64> = std::iter::once(0)
            .chain(want.iter().scan(0, |sum, n| {
                *sum += n;
                Some(*sum)
            }))
            .take(want.len())
            .collect();
        assert_eq!(offsets, ends);
        assert_eq!(j.len(), want.iter().sum::<u64>());
    }
    let (_, replayed) = JournalFile::open(&dir, FsyncMode::Never).unwrap();
    let read: Vec<Change> = replayed.into_iter().map(|r| r.change).collect();
    assert_eq!(read, changes);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn file_lock_refuses_a_second_opener_and_torn_tails_are_cut() {
    let dir = std::env::temp_dir().join(format!("autopoiesis-journal-unit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    {
        let (mut j, changes) = JournalFile::open(&dir, FsyncMode::Batch).unwrap();
        assert!(changes.is_empty());
        for c in sample() {
            j.append(&[ToAppend::plain(&c)]).unwrap();
        }
        j.commit();
        let second = JournalFile::open(&dir, FsyncMode::Batch)
            .err()
            .unwrap_or_default();
        assert!(second.contains("another autopoiesis server"), "{second}");
    }
    // Append half a record, as a crash would.
    let good = std::fs::metadata(dir.join("journal")).unwrap().len();
    let mut f = OpenOptions::new()
        .append(true)
        .open(dir.join("journal"))
        .unwrap();
    f.write_all(&encode(&sample()[1])[..10]).unwrap();
    drop(f);
    let (j, changes) = JournalFile::open(&dir, FsyncMode::Batch).unwrap();
    assert_eq!(
        changes.into_iter().map(|r| r.change).collect::<Vec<_>>(),
        sample()
    );
    assert_eq!(j.len(), good);
    assert_eq!(std::fs::metadata(dir.join("journal")).unwrap().len(), good);
    drop(j);
    let _ = std::fs::remove_dir_all(&dir);
}
