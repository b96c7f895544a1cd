//! Journal costs: bytes per turn, and start-up time replaying many turns.
//!
//!     cargo build --release && cargo bench --bench journal
//!
//! Writes a journal of TURNS turns (default 100 000; 10 turns per session,
//! the echo agent's records for a 5-word prompt, as the server writes
//! them) with the server's own encoder, then starts the release binary on
//! it RUNS times and reports the time to the `listening` line (printed
//! after the replay). Env: AUTOPOIESIS_BIN, TURNS, RUNS.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Instant;

use autopoiesis::agent::request_message;
use autopoiesis::journal::{encode, Change};

fn main() {
    let bin =
        std::env::var("AUTOPOIESIS_BIN").unwrap_or_else(|_| "target/release/autopoiesis".into());
    let turns: usize = std::env::var("TURNS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(100_000);
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(5);
    let dir =
        std::env::temp_dir().join(format!("autopoiesis-journal-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    let prompt = "hello world from the benchmark";
    let ts = "2026-11-24T01:00:00.000000Z";
    let response = serde_json::json!({
        "kind": "response",
        "parts": [{"part_kind": "text", "content": prompt}],
        "model_name": "echo",
        "timestamp": ts,
    })
    .to_string();
    let mut file = std::io::BufWriter::new(std::fs::File::create(dir.join("journal")).unwrap());
    let mut bytes = 0usize;
    let mut write = |c: Change| {
        let r = encode(&c);
        bytes += r.len();
        file.write_all(&r).unwrap();
    };
    for t in 0..turns {
        let id = format!("{:032x}", t / 10);
        if t % 10 == 0 {
            write(Change::Created {
                id: id.clone(),
                at: ts.into(),
            });
            // One reservation covers this session's first 1024 events.
            write(Change::Seq {
                id: id.clone(),
                seq: 1024,
            });
        }
        // An echo turn that ends in the step that began it: request and
        // answer in one record.
        write(Change::Messages {
            id,
            messages: vec![request_message(prompt, ts), response.clone()],
            replace_from: None,
        });
    }
    drop(file);
    println!(
        "journal turns={turns} bytes={bytes} bytes_per_turn={:.0}",
        bytes as f64 / turns as f64
    );

    let mut times = Vec::new();
    for _ in 0..runs {
        let t0 = Instant::now();
        let mut child = Command::new(&bin)
            .args(["serve", "--port", "0", "--data-dir", dir.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {bin}: {e} (cargo build --release first)"));
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        times.push(t0.elapsed().as_secs_f64() * 1000.0);
        assert!(line.starts_with("listening on"), "{line}");
        let _ = child.kill();
        let _ = child.wait();
    }
    times.sort_by(|a, b| a.total_cmp(b));
    println!(
        "journal replay turns={turns} startup_ms_min={:.0} startup_ms_median={:.0}",
        times[0],
        times[times.len() / 2]
    );
    let _ = std::fs::remove_dir_all(&dir);
}
