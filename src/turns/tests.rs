use super::*;
use crate::approvals::PendingCall;
use crate::sink::Recorder;

const A: ConnId = ConnId { slot: 1, serial: 1 };
const B: ConnId = ConnId { slot: 2, serial: 2 };
const REST: ConnId = ConnId { slot: 3, serial: 3 };

fn echo_engine(high_water: usize) -> Engine {
    Engine {
        echo: true,
        model_name: "echo".into(),
        echo_delay: None,
        high_water,
    }
}

fn setup() -> (SessionTable, Instant) {
    let now = Instant::now();
    let mut t = SessionTable::new(10);
    t.get_or_create("s", now).unwrap();
    t.subscribe("s", A);
    t.subscribe("s", B);
    (t, now)
}

fn run_to_idle(t: &mut SessionTable, sink: &mut Recorder, now: Instant) -> usize {
    // Counts every call, the one that finishes the turn included.
    let mut steps = 1;
    while step(t, "s", sink, now, &echo_engine(1 << 20)) != StepOutcome::Idle {
        steps += 1;
        assert!(steps < 100_000);
    }
    steps
}

/// The messages of every `Messages` record persisted, one list each.
fn message_records(sink: &Recorder) -> Vec<Vec<String>> {
    sink.persisted
        .iter()
        .filter_map(|c| match c {
            crate::journal::Change::Messages { messages, .. } => Some(messages.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_turn_ending_in_the_step_that_began_it_is_one_record() {
    let (mut t, now) = setup();
    submit(&mut t, "s", Turn::new(0, "a b c".into(), None), 8, now).unwrap();
    let mut sink = Recorder::default();
    assert_eq!(run_to_idle(&mut t, &mut sink, now), 1);
    let records = message_records(&sink);
    assert_eq!(records.len(), 1, "{records:?}");
    assert!(records[0][0].contains("user-prompt"));
    assert!(records[0][1].contains(r#""kind":"response""#));
    assert_eq!(t.get("s").unwrap().messages().unwrap().len(), 2);
}

#[test]
fn a_longer_turn_saves_its_request_at_the_end_of_its_first_step() {
    let (mut t, now) = setup();
    let prompt = "w ".repeat(TOKENS_PER_STEP + 10);
    submit(&mut t, "s", Turn::new(0, prompt, None), 8, now).unwrap();
    let mut sink = Recorder::default();
    let engine = echo_engine(1 << 20);
    assert_eq!(
        step(&mut t, "s", &mut sink, now, &engine),
        StepOutcome::Progress
    );
    let records = message_records(&sink);
    assert_eq!(records.len(), 1);
    assert!(records[0][0].contains("user-prompt"));
    assert_eq!(t.get("s").unwrap().messages().unwrap().len(), 1);
    run_to_idle(&mut t, &mut sink, now);
    let records = message_records(&sink);
    assert_eq!(records.len(), 2);
    assert!(records[1][0].contains(r#""kind":"response""#));
}

#[test]
fn a_one_step_turn_that_cannot_be_saved_ends_in_an_error_and_leaves_no_history() {
    let (mut t, now) = setup();
    submit(&mut t, "s", Turn::new(0, "a b".into(), Some(REST)), 8, now).unwrap();
    let mut sink = Recorder {
        persist_error: Some("disk full".into()),
        ..Recorder::default()
    };
    run_to_idle(&mut t, &mut sink, now);
    let last = sink.texts_to(A).pop().unwrap();
    assert!(
        last.contains(r#""op":"error""#) && last.contains("disk full"),
        "{last}"
    );
    assert_eq!(sink.responses[0].1.status, 503);
    assert!(t.get("s").unwrap().messages().unwrap().is_empty());
}

#[test]
fn echo_turn_streams_tokens_then_done_to_every_client() {
    let (mut t, now) = setup();
    assert_eq!(
        submit(
            &mut t,
            "s",
            Turn::new(0, "hello big world".into(), Some(REST)),
            8,
            now
        ),
        Ok(true)
    );
    let mut sink = Recorder::default();
    run_to_idle(&mut t, &mut sink, now);
    let a = sink.texts_to(A);
    assert_eq!(a, sink.texts_to(B));
    assert_eq!(
        a,
        [
            r#"{"op":"token","data":{"content":"hello "},"seq":1}"#,
            r#"{"op":"token","data":{"content":"big "},"seq":2}"#,
            r#"{"op":"token","data":{"content":"world"},"seq":3}"#,
            r#"{"op":"done","data":{"content":"hello big world"},"seq":4}"#,
        ]
    );
    assert_eq!(sink.responses.len(), 1);
    let (to, resp) = &sink.responses[0];
    assert_eq!((*to, resp.status), (REST, 200));
    let body: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(
        body,
        json!({"session_id": "s", "content": "hello big world"})
    );
    let history: serde_json::Value = serde_json::from_slice(&t.history_json("s").unwrap()).unwrap();
    let msgs = history["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0]["kind"], "request");
    assert_eq!(msgs[0]["parts"][0]["part_kind"], "user-prompt");
    assert_eq!(msgs[0]["parts"][0]["content"], "hello big world");
    assert_eq!(msgs[1]["kind"], "response");
    assert_eq!(msgs[1]["parts"][0]["content"], "hello big world");
    assert_eq!(msgs[1]["model_name"], "echo");
}

#[test]
fn long_turns_are_streamed_in_steps() {
    let (mut t, now) = setup();
    let prompt = "w ".repeat(TOKENS_PER_STEP * 3);
    submit(&mut t, "s", Turn::new(0, prompt, None), 8, now).unwrap();
    let mut sink = Recorder::default();
    assert_eq!(
        step(&mut t, "s", &mut sink, now, &echo_engine(1 << 20)),
        StepOutcome::Progress
    );
    assert_eq!(sink.texts_to(A).len(), TOKENS_PER_STEP);
    assert_eq!(run_to_idle(&mut t, &mut sink, now), 2);
    assert_eq!(sink.texts_to(A).len(), TOKENS_PER_STEP * 3 + 1);
}

#[test]
fn turns_queue_in_order_and_busy_past_the_limit() {
    let (mut t, now) = setup();
    assert_eq!(
        submit(&mut t, "s", Turn::new(0, "one".into(), None), 2, now),
        Ok(true)
    );
    assert_eq!(
        submit(&mut t, "s", Turn::new(0, "two".into(), None), 2, now),
        Ok(false)
    );
    assert_eq!(
        submit(&mut t, "s", Turn::new(0, "three".into(), None), 2, now),
        Ok(false)
    );
    assert_eq!(
        submit(&mut t, "s", Turn::new(0, "four".into(), None), 2, now),
        Err(Refused::Busy)
    );
    let mut sink = Recorder::default();
    run_to_idle(&mut t, &mut sink, now);
    let dones: Vec<String> = sink
        .texts_to(A)
        .into_iter()
        .filter(|f| f.contains("\"done\""))
        .collect();
    assert_eq!(dones.len(), 3);
    assert!(dones[0].contains("one") && dones[1].contains("two") && dones[2].contains("three"));
    assert_eq!(t.get("s").unwrap().message_count(), 6);
}

#[test]
fn cancel_keeps_partial_reply_and_ends_every_turn() {
    let (mut t, now) = setup();
    let prompt = "x ".repeat(TOKENS_PER_STEP * 2);
    submit(
        &mut t,
        "s",
        Turn::new(0, prompt.clone(), Some(REST)),
        8,
        now,
    )
    .unwrap();
    submit(&mut t, "s", Turn::new(0, "queued".into(), None), 8, now).unwrap();
    let mut sink = Recorder::default();
    step(&mut t, "s", &mut sink, now, &echo_engine(1 << 20));
    assert!(cancel(&mut t, "s", &mut sink, &echo_engine(1 << 20)));
    assert!(
        !cancel(&mut t, "s", &mut sink, &echo_engine(1 << 20)),
        "nothing runs any more"
    );
    let texts = sink.texts_to(A);
    let cancels = texts.iter().filter(|f| f.contains("\"cancelled\"")).count();
    assert_eq!(cancels, 2, "running and queued turn both end");
    assert_eq!(sink.responses[0].1.status, 409);
    let history: serde_json::Value = serde_json::from_slice(&t.history_json("s").unwrap()).unwrap();
    let reply = history["messages"][1]["parts"][0]["content"]
        .as_str()
        .unwrap();
    assert_eq!(reply, &prompt[..TOKENS_PER_STEP * 2]);
    assert_eq!(history["messages"].as_array().unwrap().len(), 2);
    assert_eq!(
        step(&mut t, "s", &mut sink, now, &echo_engine(1 << 20)),
        StepOutcome::Idle
    );
}

#[test]
fn a_lagging_client_pauses_the_stream_then_is_closed() {
    let (mut t, now) = setup();
    submit(&mut t, "s", Turn::new(0, "a b c".into(), None), 8, now).unwrap();
    let mut sink = Recorder {
        backlogs: vec![(B, 1000)],
        ..Recorder::default()
    };
    assert_eq!(
        step(&mut t, "s", &mut sink, now, &echo_engine(500)),
        StepOutcome::Paused
    );
    assert!(sink.sent.is_empty());
    let later = now + STALL_LIMIT;
    assert_eq!(
        step(&mut t, "s", &mut sink, later, &echo_engine(500)),
        StepOutcome::Idle
    );
    assert_eq!(
        sink.closed,
        [(B, close::POLICY, "Client too slow".to_string())]
    );
    assert_eq!(sink.texts_to(A).len(), 4);
}

fn agent_engine() -> Engine {
    Engine {
        echo: false,
        model_name: "worker".into(),
        echo_delay: None,
        high_water: 1 << 20,
    }
}

fn history(t: &SessionTable) -> Vec<serde_json::Value> {
    let h: serde_json::Value = serde_json::from_slice(&t.history_json("s").unwrap()).unwrap();
    h["messages"].as_array().unwrap().clone()
}

fn calls() -> Vec<PendingCall> {
    vec![PendingCall {
        tool_call_id: "c1".into(),
        name: "delete_file".into(),
        args: json!({"path": "notes.txt"}),
    }]
}

/// Runs turn `turn_id` (already submitted) to the point where its agent
/// was started, and returns the job the agent got.
fn start(t: &mut SessionTable, sink: &mut Recorder, now: Instant) -> AgentJob {
    assert_eq!(
        step(t, "s", sink, now, &agent_engine()),
        StepOutcome::Waiting
    );
    sink.agents_started.pop().expect("an agent started")
}

#[test]
fn the_agents_own_messages_replace_what_was_recorded_of_the_turn() {
    let (mut t, now) = setup();
    let mut sink = Recorder::default();
    t.append(
        "s",
        vec![r#"{"kind":"request","parts":[],"old":1}"#.into()],
        &mut sink,
    )
    .unwrap();
    submit(&mut t, "s", Turn::new(1, "hi".into(), Some(REST)), 8, now).unwrap();
    let job = start(&mut t, &mut sink, now);
    assert_eq!(job.history.len(), 1);
    assert_eq!(
        history(&t).len(),
        2,
        "the request is kept while the turn runs"
    );
    agent_event(
        &mut t,
        "s",
        1,
        AgentEvent::Thinking("hmm".into()),
        &mut sink,
        now,
    );
    agent_event(
        &mut t,
        "s",
        1,
        AgentEvent::Token("hello".into()),
        &mut sink,
        now,
    );
    let own = vec![
        r#"{"kind":"request","parts":[{"part_kind":"user-prompt","content":"hi"}],"instructions":null}"#.to_string(),
        r#"{"kind":"response","parts":[{"part_kind":"thinking","content":"hmm","signature":"sig"},{"part_kind":"text","content":"hello"}],"usage":{"input_tokens":5},"model_name":"gpt"}"#.to_string(),
    ];
    let done = AgentEvent::Done {
        content: Some("hello".into()),
        messages: Some(own.clone()),
    };
    agent_event(&mut t, "s", 1, done, &mut sink, now);
    let stored: Vec<String> = t
        .get("s")
        .unwrap()
        .messages()
        .unwrap()
        .iter()
        .map(crate::sessions::text_of)
        .collect();
    assert_eq!(
        stored[1..],
        own[..],
        "stored verbatim, in place of the recorded turn"
    );
    assert_eq!(stored.len(), 3);
    let frames = sink.texts_to(A);
    assert!(frames
        .last()
        .unwrap()
        .starts_with(r#"{"op":"done","data":{"content":"hello"}"#));
    assert!(
        frames.iter().all(|f| !f.contains("usage")),
        "messages are never broadcast"
    );
    assert_eq!(sink.responses[0].1.status, 200);
}

#[test]
fn without_messages_a_thinking_run_is_stored_as_a_part() {
    let (mut t, now) = setup();
    let mut sink = Recorder::default();
    submit(&mut t, "s", Turn::new(1, "hi".into(), None), 8, now).unwrap();
    start(&mut t, &mut sink, now);
    agent_event(
        &mut t,
        "s",
        1,
        AgentEvent::Thinking("let me see".into()),
        &mut sink,
        now,
    );
    agent_event(&mut t, "s", 1, AgentEvent::ThinkingDone, &mut sink, now);
    agent_event(
        &mut t,
        "s",
        1,
        AgentEvent::Token("yes".into()),
        &mut sink,
        now,
    );
    agent_event(&mut t, "s", 1, AgentEvent::done(None), &mut sink, now);
    let h = history(&t);
    assert_eq!(
        h[1]["parts"],
        json!([{"part_kind": "thinking", "content": "let me see"}, {"part_kind": "text", "content": "yes"}])
    );
    assert_eq!(t.get("s").unwrap().message_count(), 2);
}

#[test]
fn a_turn_asking_for_approvals_leaves_them_pending_and_drops_the_queue() {
    const C: ConnId = ConnId { slot: 4, serial: 4 };
    const REST2: ConnId = ConnId { slot: 5, serial: 5 };
    let (mut t, now) = setup();
    let mut sink = Recorder::default();
    submit(
        &mut t,
        "s",
        Turn::new(1, "delete it".into(), Some(REST)),
        8,
        now,
    )
    .unwrap();
    submit(
        &mut t,
        "s",
        Turn::new(2, "queued rest".into(), Some(REST2)),
        8,
        now,
    )
    .unwrap();
    submit(
        &mut t,
        "s",
        Turn::new(3, "queued ws".into(), None).from_client(C),
        8,
        now,
    )
    .unwrap();
    start(&mut t, &mut sink, now);
    agent_event(
        &mut t,
        "s",
        1,
        AgentEvent::Token("Sure. ".into()),
        &mut sink,
        now,
    );
    let ask = AgentEvent::ApprovalRequired {
        calls: Some(calls()),
        messages: None,
    };
    assert!(
        !agent_event(&mut t, "s", 1, ask, &mut sink, now),
        "nothing more to run"
    );
    assert_eq!(t.get("s").unwrap().pending_approvals(), &calls()[..]);
    let last = sink.texts_to(A).pop().unwrap();
    assert_eq!(
        last,
        r#"{"op":"approval_required","data":{"tool_calls":[{"tool_call_id":"c1","name":"delete_file","args":{"path":"notes.txt"}}]},"seq":2}"#
    );
    let status = |c: ConnId| {
        let (_, r) = sink.responses.iter().find(|(to, _)| *to == c).unwrap();
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        (
            r.status,
            body["detail"]["code"].as_str().unwrap().to_owned(),
        )
    };
    assert_eq!(status(REST), (409, "approval_required".into()));
    assert_eq!(status(REST2), (409, "approval_pending".into()));
    let to_c = sink.texts_to(C);
    assert_eq!(to_c.len(), 1);
    assert!(to_c[0].contains("approval_pending") && !to_c[0].contains("seq"));
    // The history: the request, and a response with the text and the call.
    let h = history(&t);
    assert_eq!(h.len(), 2);
    assert_eq!(
        h[1]["parts"][0],
        json!({"part_kind": "text", "content": "Sure. "})
    );
    assert_eq!(h[1]["parts"][1]["part_kind"], "tool-call");
    assert_eq!(h[1]["parts"][1]["tool_call_id"], "c1");
    // Approvals and history are one journal write.
    let last_record = sink.persisted.last().unwrap();
    assert!(
        matches!(last_record, crate::journal::Change::Approvals { calls, .. } if calls.len() == 1)
    );
    assert_eq!(t.metrics.approval_required, 1);
    assert_eq!(t.metrics.queued, 0);
    // New messages are refused until a decision.
    assert_eq!(
        submit(&mut t, "s", Turn::new(4, "more".into(), None), 8, now),
        Err(Refused::ApprovalPending)
    );
}

#[test]
fn a_resumed_turn_carries_the_decisions_and_adds_no_user_request() {
    let (mut t, now) = setup();
    let mut sink = Recorder::default();
    submit(&mut t, "s", Turn::new(1, "delete it".into(), None), 8, now).unwrap();
    start(&mut t, &mut sink, now);
    let ask = AgentEvent::ApprovalRequired {
        calls: Some(calls()),
        messages: None,
    };
    agent_event(&mut t, "s", 1, ask, &mut sink, now);
    let taken = t.take_approvals("s");
    assert_eq!(taken, calls());
    let decisions = r#"{"c1":true}"#.to_string();
    let turn = Turn::resumed(2, decisions.clone(), taken, Some(REST));
    assert_eq!(submit(&mut t, "s", turn, 8, now), Ok(true));
    let job = start(&mut t, &mut sink, now);
    assert_eq!(job.approvals.as_deref(), Some(decisions.as_str()));
    assert_eq!(
        job.history.len(),
        2,
        "ends with the response holding the call"
    );
    let line: serde_json::Value =
        serde_json::from_slice(&crate::agent::exec_request(&job)).unwrap();
    assert_eq!(line["prompt"], serde_json::Value::Null);
    assert_eq!(line["approvals"], json!({"c1": true}));
    let result = AgentEvent::ToolResult {
        id: "c1".into(),
        status: "success".into(),
        details: json!("deleted"),
    };
    agent_event(&mut t, "s", 2, result, &mut sink, now);
    agent_event(
        &mut t,
        "s",
        2,
        AgentEvent::Token("Done.".into()),
        &mut sink,
        now,
    );
    agent_event(&mut t, "s", 2, AgentEvent::done(None), &mut sink, now);
    let h = history(&t);
    assert_eq!(h.len(), 4);
    assert_eq!(h[2]["kind"], "request");
    assert_eq!(h[2]["parts"][0]["part_kind"], "tool-return");
    assert_eq!(h[2]["parts"][0]["tool_name"], "delete_file");
    assert_eq!(
        h[3]["parts"],
        json!([{"part_kind": "text", "content": "Done."}])
    );
    assert!(
        h.iter()
            .filter(|m| m["parts"][0]["part_kind"] == "user-prompt")
            .count()
            == 1
    );
    assert_eq!(sink.responses.last().unwrap().1.status, 200);
    assert!(t.get("s").unwrap().pending_approvals().is_empty());
    // The journal learns the calls are no longer pending with the resumed
    // turn's own record, in the same write.
    assert!(matches!(
        sink.persisted.last(),
        Some(crate::journal::Change::Approvals { calls, .. }) if calls.is_empty()
    ));
}

#[test]
fn an_old_agents_approval_request_is_refused_as_before() {
    let (mut t, now) = setup();
    let mut sink = Recorder::default();
    submit(&mut t, "s", Turn::new(1, "x".into(), Some(REST)), 8, now).unwrap();
    start(&mut t, &mut sink, now);
    let ask = AgentEvent::ApprovalRequired {
        calls: None,
        messages: None,
    };
    agent_event(&mut t, "s", 1, ask, &mut sink, now);
    let last = sink.texts_to(A).pop().unwrap();
    assert!(last.contains(r#""code":"approval_unsupported""#), "{last}");
    assert_eq!(sink.responses[0].1.status, 409);
    assert!(t.get("s").unwrap().pending_approvals().is_empty());
    assert_eq!(t.metrics.error, 1);
}

#[test]
fn approvals_that_cannot_be_saved_are_not_pending() {
    let (mut t, now) = setup();
    let mut sink = Recorder::default();
    submit(&mut t, "s", Turn::new(1, "x".into(), Some(REST)), 8, now).unwrap();
    start(&mut t, &mut sink, now);
    sink.persist_error = Some("disk full".into());
    let ask = AgentEvent::ApprovalRequired {
        calls: Some(calls()),
        messages: None,
    };
    agent_event(&mut t, "s", 1, ask, &mut sink, now);
    assert!(t.get("s").unwrap().pending_approvals().is_empty());
    assert_eq!(sink.responses[0].1.status, 503);
    let last = sink.texts_to(A).pop().unwrap();
    assert!(last.contains("disk full"), "{last}");
}
