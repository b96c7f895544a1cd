use super::*;
use serde_json::Value;

fn cfg(workers: usize, concurrency: usize) -> PoolConfig {
    PoolConfig {
        cmd: "w".into(),
        workers,
        concurrency,
        max_output: 100,
        turn_timeout: Duration::from_secs(10),
    }
}

fn job(turn: u64, session: &str) -> AgentJob {
    AgentJob {
        turn,
        session_id: session.into(),
        prompt: format!("p{turn}"),
        history: Vec::new(),
        approvals: None,
    }
}

/// A pool whose workers are all up.
fn up(workers: usize, concurrency: usize, now: Instant) -> Pool {
    let mut p = Pool::new(cfg(workers, concurrency));
    let spawns = p.take_actions();
    assert_eq!(spawns, (0..workers).map(Action::Spawn).collect::<Vec<_>>());
    for i in 0..workers {
        p.started(i, now);
    }
    assert!(p.take_actions().is_empty());
    p
}

/// (slot, type, turn) of a line written.
type Written = (usize, String, u64);
/// (session, turn, reason) of a failure.
type Failed = (String, u64, String);

/// Every line written, and the failures.
fn sorted(actions: Vec<Action>) -> (Vec<Written>, Vec<Failed>) {
    let mut writes = Vec::new();
    let mut fails = Vec::new();
    for a in actions {
        match a {
            Action::Write(slot, line) => {
                let v: Value = serde_json::from_slice(&line).unwrap();
                writes.push((
                    slot,
                    v["type"].as_str().unwrap().to_owned(),
                    v["turn"].as_u64().unwrap(),
                ));
            }
            Action::Fail {
                session,
                turn,
                reason,
            } => fails.push((session.to_string(), turn, reason)),
            Action::Spawn(_) => panic!("unexpected spawn"),
        }
    }
    (writes, fails)
}

fn w(slot: usize, kind: &str, turn: u64) -> (usize, String, u64) {
    (slot, kind.to_owned(), turn)
}

#[test]
fn turns_go_out_up_to_the_concurrency_then_wait() {
    let now = Instant::now();
    let mut p = up(1, 2, now);
    for t in 1..=3 {
        p.submit(job(t, &format!("s{t}")), now);
    }
    let (writes, _) = sorted(p.take_actions());
    assert_eq!(writes, [w(0, "turn", 1), w(0, "turn", 2)]);
    // Turn 2 ends: turn 3 goes out.
    assert_eq!(
        p.event(0, 2, &AgentEvent::done(None), 10).as_deref(),
        Some("s2")
    );
    let (writes, _) = sorted(p.take_actions());
    assert_eq!(writes, [w(0, "turn", 3)]);
    assert_eq!(p.in_flight(0), 2);
    // The core's stop after a done finds the turn gone: no cancel.
    p.stop(2);
    assert!(p.take_actions().is_empty());
}

#[test]
fn sessions_bind_to_the_least_loaded_slot_and_stay() {
    let now = Instant::now();
    let mut p = up(2, 4, now);
    p.submit(job(1, "a"), now);
    p.submit(job(2, "b"), now);
    p.submit(job(3, "c"), now);
    assert_eq!(
        (p.binding("a"), p.binding("b"), p.binding("c")),
        (Some(0), Some(1), Some(0))
    );
    p.take_actions();
    for t in [1, 2, 3] {
        p.event(
            p.binding(["a", "b", "c"][t as usize - 1]).unwrap(),
            t,
            &AgentEvent::done(None),
            1,
        );
    }
    // Both slots idle now; "b" still goes to 1, a new session to 0.
    p.submit(job(4, "b"), now);
    p.submit(job(5, "d"), now);
    let (writes, _) = sorted(p.take_actions());
    assert_eq!(writes, [w(1, "turn", 4), w(0, "turn", 5)]);
    // Across a restart of slot 1, "b" stays bound to it.
    p.down(1, "gone".into(), now);
    assert!(p.prune_bindings(|id| id != "a", 100));
    assert_eq!((p.binding("a"), p.binding("b")), (None, Some(1)));
}

#[test]
fn stop_sends_a_cancel_only_for_turns_the_worker_has() {
    let now = Instant::now();
    let mut p = up(1, 1, now);
    p.submit(job(1, "a"), now);
    p.submit(job(2, "b"), now);
    p.take_actions();
    // Waiting turn: just dropped.
    p.stop(2);
    assert!(p.take_actions().is_empty());
    // In flight: a cancel line; later lines for it are ignored.
    p.stop(1);
    let (writes, fails) = sorted(p.take_actions());
    assert_eq!(writes, [w(0, "cancel", 1)]);
    assert!(fails.is_empty(), "the core already ended it");
    assert_eq!(p.event(0, 1, &AgentEvent::Token("late".into()), 5), None);
    // A turn never sent to this worker is ignored too.
    assert_eq!(p.event(0, 99, &AgentEvent::done(None), 5), None);
}

#[test]
fn a_worker_going_down_fails_its_in_flight_turns_and_the_rest_wait() {
    let now = Instant::now();
    let mut p = up(1, 1, now);
    p.submit(job(1, "a"), now);
    p.submit(job(2, "b"), now);
    p.take_actions();
    p.down(0, "worker 0 (pid 9) exited with status 3".into(), now);
    let (writes, fails) = sorted(p.take_actions());
    assert!(writes.is_empty());
    assert_eq!(
        fails,
        [(
            "a".to_owned(),
            1,
            "worker 0 (pid 9) exited with status 3".to_owned()
        )]
    );
    // Restart after 0.1 s; then turn 2 goes out to the new worker.
    assert_eq!(p.next_deadline(), Some(now + BACKOFF_MIN));
    p.on_time(now + Duration::from_millis(50));
    assert!(p.take_actions().is_empty());
    let later = now + BACKOFF_MIN;
    p.on_time(later);
    assert_eq!(p.take_actions(), [Action::Spawn(0)]);
    p.started(0, later);
    let (writes, _) = sorted(p.take_actions());
    assert_eq!(writes, [w(0, "turn", 2)]);
}

#[test]
fn back_off_doubles_to_five_seconds_and_resets_after_a_stable_run() {
    let mut now = Instant::now();
    let mut p = up(1, 1, now);
    let mut delays = Vec::new();
    for _ in 0..8 {
        p.down(0, "crash".into(), now);
        let at = p.next_deadline().unwrap();
        delays.push(at - now);
        p.on_time(at);
        assert_eq!(p.take_actions(), [Action::Spawn(0)]);
        p.started(0, at);
        now = at;
    }
    let ms: Vec<u128> = delays.iter().map(Duration::as_millis).collect();
    assert_eq!(ms, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
    // Thirty seconds of running: back to 0.1 s.
    let later = now + STABLE_AFTER;
    p.down(0, "crash".into(), later);
    assert_eq!(p.next_deadline(), Some(later + BACKOFF_MIN));
}

#[test]
fn a_worker_that_cannot_start_fails_the_waiting_turns_and_is_retried() {
    let now = Instant::now();
    let mut p = Pool::new(cfg(1, 4));
    p.take_actions();
    p.submit(job(1, "a"), now);
    assert!(p.take_actions().is_empty(), "no worker yet");
    p.spawn_failed(0, "worker 0 could not start: ENOENT".into(), now);
    let (_, fails) = sorted(p.take_actions());
    assert_eq!(fails.len(), 1);
    assert!(fails[0].2.contains("could not start"));
    assert_eq!(p.next_deadline(), Some(now + BACKOFF_MIN));
}

#[test]
fn turns_time_out_running_or_waiting() {
    let now = Instant::now();
    let mut p = up(1, 1, now);
    p.submit(job(1, "a"), now);
    p.submit(job(2, "b"), now + Duration::from_secs(1));
    p.take_actions();
    assert_eq!(p.next_deadline(), Some(now + Duration::from_secs(10)));
    p.on_time(now + Duration::from_secs(10));
    let (writes, fails) = sorted(p.take_actions());
    // Turn 1 is cancelled at the worker, and turn 2 takes its place.
    assert_eq!(writes, [w(0, "cancel", 1), w(0, "turn", 2)]);
    assert_eq!(fails.len(), 1);
    assert!(
        fails[0].2.contains("timed out after 10 s"),
        "{}",
        fails[0].2
    );
    // Turn 3 waits for a worker that is down: it times out with the reason.
    p.down(0, "worker 0 (pid 5) exited with status 1".into(), now);
    p.take_actions();
    p.submit(job(3, "c"), now);
    p.on_time(now + Duration::from_secs(10));
    let mut actions = p.take_actions();
    assert_eq!(
        actions.remove(0),
        Action::Spawn(0),
        "the restart is due too"
    );
    let (_, fails) = sorted(actions);
    assert_eq!(fails.len(), 1);
    assert!(
        fails[0].2.contains("waiting for worker 0") && fails[0].2.contains("status 1"),
        "{}",
        fails[0].2
    );
}

#[test]
fn output_over_the_bound_fails_the_turn_and_cancels_it() {
    let now = Instant::now();
    let mut p = up(1, 2, now);
    p.submit(job(1, "a"), now);
    p.take_actions();
    let tok = AgentEvent::Token("x".into());
    assert!(p.event(0, 1, &tok, 60).is_some());
    assert_eq!(p.event(0, 1, &tok, 60), None);
    let (writes, fails) = sorted(p.take_actions());
    assert_eq!(writes, [w(0, "cancel", 1)]);
    assert_eq!(fails[0].2, "agent output passed 100 bytes");
}

#[test]
fn a_worker_that_does_not_read_its_stdin_gets_no_more_turns() {
    let now = Instant::now();
    let mut p = up(1, 100, now);
    let big = "x".repeat(STDIN_HIGH / 2);
    for t in 1..=4 {
        let mut j = job(t, &format!("s{t}"));
        j.prompt = big.clone();
        p.submit(j, now);
    }
    let (writes, _) = sorted(p.take_actions());
    assert_eq!(writes.len(), 2, "stops once the queue passes the mark");
    p.written(0, STDIN_HIGH);
    let (writes, _) = sorted(p.take_actions());
    assert_eq!(writes, [w(0, "turn", 3), w(0, "turn", 4)]);
}

#[test]
fn retiring_fails_waiting_turns_and_never_restarts() {
    let now = Instant::now();
    let mut p = up(1, 1, now);
    p.submit(job(1, "a"), now);
    p.submit(job(2, "b"), now);
    p.take_actions();
    p.retire();
    let (_, fails) = sorted(p.take_actions());
    assert_eq!(fails.len(), 1);
    assert_eq!(fails[0].1, 2);
    p.stop(1);
    let (writes, _) = sorted(p.take_actions());
    assert_eq!(writes, [w(0, "cancel", 1)]);
    p.down(0, "stdin closed".into(), now);
    assert_eq!(p.next_deadline(), None);
    p.submit(job(3, "c"), now);
    let (_, fails) = sorted(p.take_actions());
    assert_eq!(fails[0].2, "the server is shutting down");
}

#[test]
fn a_leaving_worker_gets_nothing_new_but_its_last_lines_count() {
    let now = Instant::now();
    let mut p = up(1, 1, now);
    p.submit(job(1, "a"), now);
    p.submit(job(2, "b"), now);
    p.take_actions();
    p.leaving(0);
    // Its last words finish turn 1; turn 2 is not sent to a dying worker.
    assert_eq!(
        p.event(0, 1, &AgentEvent::done(None), 5).as_deref(),
        Some("a")
    );
    assert!(p.take_actions().is_empty());
    p.down(0, "exited".into(), now);
    assert!(p.take_actions().is_empty(), "nothing was in flight");
    p.on_time(now + BACKOFF_MIN);
    assert_eq!(p.take_actions(), [Action::Spawn(0)]);
    p.started(0, now + BACKOFF_MIN);
    let (writes, _) = sorted(p.take_actions());
    assert_eq!(writes, [w(0, "turn", 2)]);
}

#[test]
fn turns_removed_while_waiting_are_skipped_and_the_rest_keep_their_order() {
    let now = Instant::now();
    let mut p = up(1, 1, now);
    for t in 1..=1000 {
        p.submit(job(t, &format!("s{t}")), now);
    }
    let (writes, _) = sorted(p.take_actions());
    assert_eq!(writes, [w(0, "turn", 1)]);
    // Most waiting turns go (their sessions deleted, say); removal is lazy
    // and the queue is compacted on the way.
    for t in (2..=1000).filter(|t| t % 10 != 0) {
        p.stop(t);
    }
    assert!(p.take_actions().is_empty());
    let mut sent = Vec::new();
    let mut current = 1;
    loop {
        p.event(0, current, &AgentEvent::done(None), 1);
        let (writes, _) = sorted(p.take_actions());
        match writes.as_slice() {
            [(0, kind, next)] if kind == "turn" => {
                sent.push(*next);
                current = *next;
            }
            [] => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(sent, (10..=1000).step_by(10).collect::<Vec<_>>());
}

#[test]
fn bindings_are_pruned_a_budget_at_a_time() {
    let now = Instant::now();
    let mut p = up(2, 4, now);
    for t in 1..=10 {
        p.submit(job(t, &format!("s{t}")), now);
        p.event(
            p.binding(&format!("s{t}")).unwrap(),
            t,
            &AgentEvent::done(None),
            1,
        );
    }
    p.take_actions();
    // Sessions s1..s8 are gone; s9 and s10 still exist.
    let exists = |id: &str| id == "s9" || id == "s10";
    let mut passes = 0;
    while !p.prune_bindings(exists, 3) {
        passes += 1;
    }
    assert_eq!(passes, 3, "ten bindings, three looked at per call");
    for t in 1..=8 {
        assert_eq!(p.binding(&format!("s{t}")), None);
    }
    assert!(p.binding("s9").is_some() && p.binding("s10").is_some());
}
