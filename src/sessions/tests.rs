use super::*;
use crate::events;
use crate::journal;
use crate::sink::Recorder;
use std::time::Duration;

#[test]
fn ids() {
    assert!(valid_session_id("abc-DEF_1.2"));
    assert!(valid_session_id(&"a".repeat(128)));
    assert!(!valid_session_id(&"a".repeat(129)));
    assert!(!valid_session_id(""));
    assert!(!valid_session_id("a b"));
    assert!(!valid_session_id("a/b"));
    assert!(!valid_session_id("é"));
    assert!(!valid_session_id("."));
    assert!(!valid_session_id(".."));
    assert!(valid_session_id("..."));
    assert!(valid_session_id(".a"));
}

#[test]
fn listing_keeps_creation_order_after_deletes() {
    let now = Instant::now();
    let mut t = SessionTable::new(10);
    for id in ["c", "a", "b"] {
        t.get_or_create(id, now).unwrap();
    }
    t.remove("a");
    t.get_or_create("a", now).unwrap();
    let list: serde_json::Value = serde_json::from_slice(&t.list_json()).unwrap();
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["c", "b", "a"]);
}

#[test]
fn table_is_bounded() {
    let now = Instant::now();
    let mut t = SessionTable::new(2);
    t.create(now).unwrap();
    t.get_or_create("x", now).unwrap();
    assert_eq!(t.create(now), Err(TableFull));
    assert!(
        t.get_or_create("x", now).is_ok(),
        "an existing session is not a new one"
    );
}

#[test]
fn broadcast_serializes_once_and_numbers_events() {
    let now = Instant::now();
    let mut t = SessionTable::new(10);
    t.get_or_create("s", now).unwrap();
    t.get_or_create("other", now).unwrap();
    let (a, b, c) = (
        ConnId { slot: 1, serial: 1 },
        ConnId { slot: 2, serial: 2 },
        ConnId { slot: 3, serial: 3 },
    );
    t.subscribe("s", a);
    t.subscribe("s", b);
    t.subscribe("other", c);
    let mut sink = Recorder::default();
    assert_eq!(
        t.broadcast("s", "token", events::Content { content: "x" }, &mut sink),
        Some(1)
    );
    assert_eq!(
        t.broadcast("s", "done", events::Content { content: "x" }, &mut sink),
        Some(2)
    );
    assert_eq!(sink.sent.len(), 4);
    // The same allocation went to both clients.
    assert_eq!(sink.sent[0].1.as_ptr(), sink.sent[1].1.as_ptr());
    assert_eq!(sink.texts_to(a), sink.texts_to(b));
    assert!(sink.texts_to(c).is_empty());
    assert!(sink.texts_to(a)[1].ends_with(r#","seq":2}"#));
    t.unsubscribe("s", a);
    assert_eq!(t.subscribers("s"), &[b]);
}

#[test]
fn a_snapshot_in_small_steps_restores_what_the_table_holds() {
    let now = Instant::now();
    let mut t = SessionTable::new(100);
    let mut sink = Recorder::default();
    for i in 0..5 {
        let id = format!("s{i}");
        t.get_or_create(&id, now).unwrap();
        let messages = (0..4).map(|m| format!("{{\"m\":\"{id}-{m}\"}}")).collect();
        t.append(&id, messages, &mut sink).unwrap();
    }
    t.get_or_create("empty", now).unwrap();
    t.broadcast("s1", "token", events::Content { content: "x" }, &mut sink);
    t.begin_snapshot();
    let mut records = Vec::new();
    let mut steps = 0;
    loop {
        // A budget of one byte: one session's creation, or one message.
        let (bytes, done) = t.snapshot_step(1, records.len() as u64, now).unwrap();
        records.extend(bytes);
        steps += 1;
        if steps == 3 {
            // Mid-snapshot: a message for a session partly written.
            t.append("s0", vec![r#"{"m":"late"}"#.into()], &mut sink)
                .unwrap();
        }
        if done {
            break;
        }
    }
    t.end_snapshot();
    assert!(steps > 20, "{steps} steps");
    let replayed = journal::replay(&records).unwrap();
    let mut restored = SessionTable::new(100);
    restored.restore(replayed.changes, now);
    assert_eq!(restored.len(), 6);
    for id in ["s0", "s1", "s2", "s3", "s4", "empty"] {
        assert_eq!(restored.history_json(id), t.history_json(id), "{id}");
    }
    assert_eq!(restored.get("s0").unwrap().message_count(), 5);
    assert_eq!(
        restored.get("s1").unwrap().seq,
        t.get("s1").unwrap().seq_reserved
    );
}

#[test]
fn a_turn_replacing_history_a_compaction_already_copied_reaches_the_new_file() {
    let now = Instant::now();
    let mut t = SessionTable::new(100);
    let mut sink = Recorder::default();
    t.get_or_create("s", now).unwrap();
    let messages = (0..4).map(|m| format!("{{\"m\":{m}}}")).collect();
    t.append("s", messages, &mut sink).unwrap();
    t.begin_snapshot();
    let mut file = Vec::new();
    // One byte of budget: the creation and a message, then one message
    // per step.
    for _ in 0..2 {
        let (bytes, _) = t.snapshot_step(1, file.len() as u64, now).unwrap();
        file.extend(bytes);
    }
    assert_eq!(t.compaction_partial.map(|(_, done)| done), Some(2));
    // The turn that began at message 1 ends with the agent's account,
    // and leaves calls pending.
    let calls = vec![PendingCall {
        tool_call_id: "c".into(),
        name: "rm".into(),
        args: serde_json::json!({}),
    }];
    let own = vec![r#"{"m":"own"}"#.to_string()];
    t.end_turn("s", own, Some(1), Some(calls.clone()), &mut sink)
        .unwrap();
    for change in sink.mirrored.drain(..) {
        file.extend(journal::encode(&change));
    }
    loop {
        let (bytes, done) = t.snapshot_step(1, file.len() as u64, now).unwrap();
        file.extend(bytes);
        if done {
            break;
        }
    }
    t.end_snapshot();
    let mut restored = SessionTable::new(100);
    restored.restore(journal::replay(&file).unwrap().changes, now);
    assert_eq!(restored.history_json("s"), t.history_json("s"));
    assert_eq!(t.get("s").unwrap().message_count(), 2);
    assert_eq!(restored.get("s").unwrap().pending_approvals(), &calls[..]);
}

#[test]
fn pending_approvals_survive_a_restart_and_a_decision_clears_them() {
    let now = Instant::now();
    let mut t = SessionTable::new(100);
    let mut sink = Recorder::default();
    t.get_or_create("s", now).unwrap();
    let calls = vec![PendingCall {
        tool_call_id: "c".into(),
        name: "rm".into(),
        args: serde_json::json!({"p": 1}),
    }];
    t.end_turn("s", vec!["{}".into()], None, Some(calls.clone()), &mut sink)
        .unwrap();
    let journal: Vec<Change> = sink.persisted.clone();
    let mut restored = SessionTable::new(100);
    restored.restore(replayed(&journal), now);
    assert_eq!(restored.get("s").unwrap().pending_approvals(), &calls[..]);
    // Decided: the resumed turn's end writes the clear with its messages.
    assert_eq!(t.take_approvals("s"), calls);
    let journal: Vec<Change> = sink.persisted.clone();
    let mut restored = SessionTable::new(100);
    restored.restore(replayed(&journal), now);
    assert_eq!(
        restored.get("s").unwrap().pending_approvals(),
        &calls[..],
        "still pending in the journal until the resumed turn ends"
    );
    t.end_turn("s", vec!["{}".into()], None, Some(Vec::new()), &mut sink)
        .unwrap();
    let mut restored = SessionTable::new(100);
    restored.restore(replayed(&sink.persisted), now);
    assert!(restored.get("s").unwrap().pending_approvals().is_empty());
}

#[test]
fn a_sweep_goes_a_budget_at_a_time() {
    let t0 = Instant::now();
    let mut t = SessionTable::new(100);
    for i in 0..10 {
        t.get_or_create(&format!("s{i}"), t0).unwrap();
    }
    t.subscribe("s4", ConnId { slot: 0, serial: 0 });
    let later = t0 + Duration::from_secs(100);
    let ttl = Duration::from_secs(50);
    let mut steps = vec![];
    loop {
        let (removed, done) = t.sweep_step(later, Some(ttl), 3);
        steps.push(removed);
        if done {
            break;
        }
    }
    // Ten sessions, three looked at per step: four steps; s4 is watched.
    assert_eq!(steps, [3, 2, 3, 1]);
    assert_eq!(t.len(), 1);
    assert!(t.get("s4").is_some());
    // The next pass starts from the beginning again.
    t.get_or_create("new", later).unwrap();
    assert_eq!(t.sweep_step(later + ttl, Some(ttl), 100), (1, true));
}

#[test]
fn sweep_spares_watched_and_recent_sessions() {
    let t0 = Instant::now();
    let mut t = SessionTable::new(10);
    t.get_or_create("old", t0).unwrap();
    t.get_or_create("watched", t0).unwrap();
    t.subscribe("watched", ConnId { slot: 0, serial: 0 });
    let later = t0 + Duration::from_secs(100);
    t.get_or_create("new", later).unwrap();
    assert_eq!(t.sweep(later, Duration::from_secs(50)), 1);
    assert!(t.get("old").is_none());
    assert!(t.get("watched").is_some() && t.get("new").is_some());
}

/// A table whose sessions drop retained events after 10 s without a client.
fn retaining_for_10s() -> SessionTable {
    SessionTable::with_retention(
        10,
        Retention {
            events: 1000,
            bytes: 1 << 20,
            idle: Some(Duration::from_secs(10)),
            history_idle: None,
        },
    )
}

#[test]
fn retained_events_go_once_a_session_has_had_no_client_for_retain_idle() {
    let now = Instant::now();
    let mut t = retaining_for_10s();
    let mut sink = Recorder::default();
    let watcher = ConnId { slot: 1, serial: 1 };
    for id in ["watched", "alone"] {
        t.get_or_create(id, now).unwrap();
        t.broadcast(id, "token", events::Content { content: "hi" }, &mut sink);
        t.broadcast(id, "token", events::Content { content: "there" }, &mut sink);
    }
    t.subscribe("watched", watcher);
    let later = now + Duration::from_secs(11);
    assert_eq!(t.sweep_step(later, None, 100), (0, true));
    // Kept where a client is attached; the resume still replays.
    assert_eq!(
        t.get("watched").unwrap().events_after(0).unwrap().count(),
        2
    );
    // Dropped where none is: a resume from before now gets `resync`,
    // one that is up to date gets nothing (and no resync).
    let alone = t.get("alone").unwrap();
    assert!(alone.events_after(0).is_none());
    assert_eq!(alone.events_after(2).unwrap().count(), 0);
    assert_eq!(t.metrics.retained_dropped, 1);
    // Numbering goes on from where it was.
    let seq = t.broadcast(
        "alone",
        "token",
        events::Content { content: "x" },
        &mut sink,
    );
    assert_eq!(seq, Some(3));
    // A session idle for less than the limit keeps its events.
    t.unsubscribe("watched", watcher);
    if let Some(s) = t.get_mut("watched") {
        s.last_activity = later;
    }
    t.sweep_step(later + Duration::from_secs(5), None, 100);
    assert_eq!(
        t.get("watched").unwrap().events_after(0).unwrap().count(),
        2
    );
    t.sweep_step(later + Duration::from_secs(10), None, 100);
    assert!(t.get("watched").unwrap().events_after(0).is_none());
}

#[test]
fn retained_bytes_count_the_chunk_being_filled() {
    let now = Instant::now();
    let mut t = SessionTable::with_retention(
        10,
        Retention {
            events: 1000,
            bytes: 4096,
            idle: None,
            history_idle: None,
        },
    );
    let mut sink = Recorder::default();
    t.get_or_create("s", now).unwrap();
    for _ in 0..2000 {
        t.broadcast("s", "token", events::Content { content: "word" }, &mut sink);
    }
    let s = t.get("s").unwrap().hot.as_ref().unwrap();
    let pinned = s.arena.as_ref().unwrap().chunk_capacity();
    assert!(pinned > 0);
    assert!(
        s.retained_bytes + pinned <= 4096,
        "{} retained + {pinned} chunk",
        s.retained_bytes
    );
    assert!(s.retained.len() > 1);
}

/// `changes` as a journal file replays them (unlinked records).
fn replayed(changes: &[Change]) -> Vec<journal::Record> {
    let bytes: Vec<u8> = changes.iter().flat_map(journal::encode).collect();
    journal::replay(&bytes).unwrap().changes
}
