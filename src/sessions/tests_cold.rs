//! Cold histories: evicted after `--history-idle`, read back through the
//! journal's chains (here the [`Recorder`]'s journal bytes), and never
//! wrong: the same history, approvals, `seq` and count as when hot.

use std::time::{Duration, Instant};

use super::*;
use crate::events;
use crate::journal::{self, chain};
use crate::sink::Recorder;

fn table() -> SessionTable {
    SessionTable::with_retention(
        100,
        Retention {
            events: 1000,
            bytes: 1 << 20,
            idle: Some(Duration::from_secs(1)),
            history_idle: Some(Duration::from_secs(1)),
        },
    )
}

fn msgs(tag: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{{\"m\":\"{tag}-{i}\"}}")).collect()
}

/// Does every read asked for, against `file`, and hands the answers back.
fn answer_reads(t: &mut SessionTable, file: &[u8], now: Instant) -> Vec<Loaded> {
    t.take_reads()
        .into_iter()
        .filter_map(|read| {
            let result = chain::read_history(&read.id, read.head, read.count, chain::read_in(file));
            t.history_read(read, result, now)
        })
        .collect()
}

/// Session "s" with three turns, one of which replaced what was recorded
/// of it, tool calls pending, and events broadcast.
fn with_history(t: &mut SessionTable, sink: &mut Recorder, now: Instant) {
    t.get_or_create("s", now).unwrap();
    t.append("s", msgs("a", 2), sink).unwrap();
    t.append("s", msgs("b", 1), sink).unwrap();
    let calls = vec![PendingCall {
        tool_call_id: "c".into(),
        name: "rm".into(),
        args: serde_json::json!({"p": 1}),
    }];
    t.end_turn("s", msgs("b-own", 2), Some(2), Some(calls), sink)
        .unwrap();
    t.append("s", msgs("c", 3), sink).unwrap();
    for _ in 0..3 {
        t.broadcast("s", "token", events::Content { content: "x" }, sink);
    }
    t.flush_changes(sink).unwrap();
}

#[test]
fn a_cold_history_reads_back_identical_with_its_approvals_seq_and_count() {
    let now = Instant::now();
    let (mut t, mut sink) = (table(), Recorder::default());
    with_history(&mut t, &mut sink, now);
    let hot = t.history_json("s").unwrap();
    let s = t.get("s").unwrap();
    let (seq, count, approvals) = (s.seq, s.message_count(), s.pending_approvals().to_vec());
    assert_eq!(count, 7);

    // Idle past --history-idle: only the directory entry stays.
    let later = now + Duration::from_secs(2);
    t.sweep_step(later, None, usize::MAX);
    let s = t.get("s").unwrap();
    assert!(s.messages().is_none());
    assert!(!s.is_hot(), "the retained events went too");
    assert_eq!(t.history_json("s"), None);
    assert_eq!((s.seq, s.message_count()), (seq, count));
    assert_eq!(s.pending_approvals(), &approvals[..]);
    assert_eq!(t.metrics.histories_evicted, 1);

    // Read back: the same history, byte for byte.
    assert!(!t.want_history("s", later));
    let loaded = answer_reads(&mut t, &sink.journal, later);
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].outcome, LoadOutcome::Ready);
    assert_eq!(t.history_json("s").unwrap(), hot);
    assert_eq!(t.metrics.history_loads_ok, 1);
    // `seq` goes on from where it was.
    let next = t.broadcast("s", "token", events::Content { content: "y" }, &mut sink);
    assert_eq!(next, Some(seq + 1));
}

#[test]
fn a_cold_session_takes_new_messages_without_reading_its_history() {
    let now = Instant::now();
    let (mut t, mut sink) = (table(), Recorder::default());
    with_history(&mut t, &mut sink, now);
    let later = now + Duration::from_secs(2);
    t.sweep_step(later, None, usize::MAX);
    t.append("s", msgs("d", 2), &mut sink).unwrap();
    t.end_turn("s", msgs("d-own", 1), Some(8), None, &mut sink)
        .unwrap();
    let s = t.get("s").unwrap();
    assert!(s.messages().is_none(), "still cold");
    assert_eq!(s.message_count(), 9);
    assert!(t.take_reads().is_empty());
    t.want_history("s", later);
    answer_reads(&mut t, &sink.journal, later);
    let texts: Vec<String> = t
        .get("s")
        .unwrap()
        .messages()
        .unwrap()
        .iter()
        .map(text_of)
        .collect();
    let mut want = msgs("a", 2);
    want.extend(msgs("b-own", 2));
    want.extend(msgs("c", 3));
    want.extend(msgs("d", 1));
    want.extend(msgs("d-own", 1));
    assert_eq!(texts, want);
}

#[test]
fn many_first_touches_make_one_read_and_a_read_of_an_older_history_is_asked_again() {
    let now = Instant::now();
    let (mut t, mut sink) = (table(), Recorder::default());
    with_history(&mut t, &mut sink, now);
    let later = now + Duration::from_secs(2);
    t.sweep_step(later, None, usize::MAX);
    let conn = |slot| ConnId { slot, serial: 1 };
    for slot in 0..50 {
        t.wait_for_history("s", conn(slot), later);
    }
    assert!(!t.want_history("s", later));
    let reads = t.take_reads();
    assert_eq!(reads.len(), 1, "one read for every first touch");
    assert_eq!(t.loads_in_flight(), 1);

    // A message lands while it is read: the answer is for an older
    // history, so it is read again, and the waiters wait for that.
    t.append("s", msgs("late", 1), &mut sink).unwrap();
    let old = chain::read_history(
        "s",
        reads[0].head,
        reads[0].count,
        chain::read_in(&sink.journal),
    );
    assert!(t.history_read(reads[0].clone(), old, later).is_none());
    assert!(t.get("s").unwrap().messages().is_none());
    let loaded = answer_reads(&mut t, &sink.journal, later);
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].waiters.len(), 50);
    assert_eq!(t.get("s").unwrap().messages().unwrap().len(), 8);
}

#[test]
fn a_session_deleted_while_its_read_is_in_flight_answers_its_waiters_not_found() {
    let now = Instant::now();
    let (mut t, mut sink) = (table(), Recorder::default());
    with_history(&mut t, &mut sink, now);
    let later = now + Duration::from_secs(2);
    t.sweep_step(later, None, usize::MAX);
    let waiter = ConnId { slot: 7, serial: 3 };
    t.wait_for_history("s", waiter, later);
    let read = t.take_reads().remove(0);
    t.remove("s");
    let result = chain::read_history("s", read.head, read.count, chain::read_in(&sink.journal));
    let loaded = t.history_read(read.clone(), result.clone(), later).unwrap();
    assert_eq!(loaded.outcome, LoadOutcome::Gone);
    assert_eq!(loaded.waiters, [waiter]);
    // Made again under the same id before the answer: the answer, for the
    // old one, is not taken for the new one's history.
    t.get_or_create("s", later).unwrap();
    assert!(t.history_read(read, result, later).is_none());
    assert_eq!(t.get("s").unwrap().messages().unwrap().len(), 0);
}

#[test]
fn a_read_that_fails_is_an_error_and_the_history_stays_cold_and_whole() {
    let now = Instant::now();
    let (mut t, mut sink) = (table(), Recorder::default());
    with_history(&mut t, &mut sink, now);
    let later = now + Duration::from_secs(2);
    t.sweep_step(later, None, usize::MAX);
    t.want_history("s", later);
    // A flipped byte in the newest record.
    let mut damaged = sink.journal.clone();
    let head = t.get("s").unwrap().heads[0];
    damaged[(head.offset + head.len as u64 - 3) as usize] ^= 1;
    let loaded = answer_reads(&mut t, &damaged, later);
    match &loaded[0].outcome {
        LoadOutcome::Failed(why) => assert!(why.contains("corrupt record"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(t.get("s").unwrap().messages().is_none());
    assert_eq!(t.metrics.history_loads_failed, 1);
    // Asked again (the disk may have recovered), it reads.
    t.want_history("s", later);
    assert_eq!(
        answer_reads(&mut t, &sink.journal, later)[0].outcome,
        LoadOutcome::Ready
    );
}

#[test]
fn a_busy_or_followed_session_keeps_its_history() {
    let now = Instant::now();
    let (mut t, mut sink) = (table(), Recorder::default());
    with_history(&mut t, &mut sink, now);
    t.subscribe("s", ConnId { slot: 1, serial: 1 });
    let later = now + Duration::from_secs(2);
    t.sweep_step(later, None, usize::MAX);
    assert!(t.get("s").unwrap().messages().is_some());
    // With no journal record to read it back from (in memory), a
    // history never goes.
    let mut mem = table();
    mem.get_or_create("m", now).unwrap();
    mem.append("m", msgs("x", 1), &mut sink).unwrap();
    mem.get_mut("m").unwrap().heads = [NO_HEAD; 2];
    mem.sweep_step(later, None, usize::MAX);
    assert!(mem.get("m").unwrap().messages().is_some());
}

#[test]
fn a_restart_leaves_chained_histories_cold_and_unchained_ones_in_ram() {
    let now = Instant::now();
    let (mut t, mut sink) = (table(), Recorder::default());
    with_history(&mut t, &mut sink, now);
    let hot = t.history_json("s").unwrap();
    let mut restored = table();
    restored.restore(journal::replay(&sink.journal).unwrap().changes, now);
    let s = restored.get("s").unwrap();
    assert!(s.messages().is_none());
    assert_eq!(s.message_count(), 7);
    restored.want_history("s", now);
    answer_reads(&mut restored, &sink.journal, now);
    assert_eq!(restored.history_json("s").unwrap(), hot);

    // A journal of an older version: records without links.
    let unlinked: Vec<u8> = sink.persisted.iter().flat_map(journal::encode).collect();
    let mut old = table();
    old.restore(journal::replay(&unlinked).unwrap().changes, now);
    assert_eq!(old.history_json("s").unwrap(), hot);
    old.sweep_step(now + Duration::from_secs(2), None, usize::MAX);
    assert!(
        old.get("s").unwrap().messages().is_some(),
        "no chain to read it back by"
    );
}

#[test]
fn a_compaction_reads_cold_histories_back_copies_them_linked_and_lets_them_go() {
    let now = Instant::now();
    let (mut t, mut sink) = (table(), Recorder::default());
    let mut hot = Vec::new();
    for i in 0..4 {
        let id = format!("s{i}");
        t.get_or_create(&id, now).unwrap();
        for turn in 0..3 {
            t.append(&id, msgs(&format!("{id}-{turn}"), 2), &mut sink)
                .unwrap();
        }
        hot.push(t.history_json(&id).unwrap());
    }
    let later = now + Duration::from_secs(2);
    t.sweep_step(later, None, usize::MAX);
    assert_eq!(t.metrics.histories_evicted, 4);

    t.begin_snapshot();
    let mut file = Vec::new();
    let mut waits = 0;
    loop {
        let (bytes, done) = t.snapshot_step(1 << 20, file.len() as u64, later).unwrap();
        file.extend(bytes);
        if done {
            break;
        }
        waits += 1;
        assert!(waits < 10, "the compaction never got its histories");
        answer_reads(&mut t, &sink.journal, later);
    }
    t.end_snapshot();
    assert!(waits >= 1, "it waited for the reads");
    for i in 0..4 {
        let s = t.get(&format!("s{i}")).unwrap();
        assert!(s.messages().is_none(), "s{i} let go again after its copy");
    }
    // The new file becomes the journal: the histories read back from it.
    t.journal_switched();
    for (i, want) in hot.iter().enumerate() {
        let id = format!("s{i}");
        t.want_history(&id, later);
        let loaded = answer_reads(&mut t, &file, later);
        assert_eq!(loaded[0].outcome, LoadOutcome::Ready, "{id}");
        assert_eq!(&t.history_json(&id).unwrap(), want, "{id}");
    }
}

#[test]
fn a_compaction_gives_up_when_a_history_cannot_be_read() {
    let now = Instant::now();
    let (mut t, mut sink) = (table(), Recorder::default());
    with_history(&mut t, &mut sink, now);
    let later = now + Duration::from_secs(2);
    t.sweep_step(later, None, usize::MAX);
    t.begin_snapshot();
    let (_, done) = t.snapshot_step(1 << 20, 0, later).unwrap();
    assert!(!done);
    answer_reads(&mut t, b"not a journal", later);
    let err = t.snapshot_step(1 << 20, 0, later).unwrap_err();
    assert!(
        err.contains("history of session s could not be read"),
        "{err}"
    );
}
