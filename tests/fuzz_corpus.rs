//! Replays every file of `fuzz/corpus/<target>/` through the harness the
//! fuzz target runs, so CI checks the corpus (seeds and past findings)
//! without fuzzing.

use std::path::Path;

fn replay(target: &str, harness: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| harness(&data));
        assert!(outcome.is_ok(), "{} fails its harness", path.display());
        count += 1;
    }
    assert!(count > 0, "empty corpus for {target}");
}

#[test]
fn http_request_corpus() {
    replay("http_request", autopoiesis::fuzzing::http_request);
}

#[test]
fn chunked_body_corpus() {
    replay("chunked_body", autopoiesis::fuzzing::chunked_body);
}

#[test]
fn ws_handshake_corpus() {
    replay("ws_handshake", autopoiesis::fuzzing::ws_handshake);
}

#[test]
fn ws_client_op_corpus() {
    replay("ws_client_op", autopoiesis::fuzzing::ws_client_op);
}

#[test]
fn sse_stream_corpus() {
    replay("sse_stream", autopoiesis::fuzzing::sse_stream);
}

#[test]
fn exec_lines_corpus() {
    replay("exec_lines", autopoiesis::fuzzing::exec_lines);
}

#[test]
fn worker_lines_corpus() {
    replay("worker_lines", autopoiesis::fuzzing::worker_lines);
}

#[test]
fn journal_replay_corpus() {
    replay("journal_replay", autopoiesis::fuzzing::journal_replay);
}

#[test]
fn agui_run_corpus() {
    replay("agui_run", autopoiesis::fuzzing::agui_run);
}

#[test]
fn approvals_corpus() {
    replay("approvals", autopoiesis::fuzzing::approvals);
}
