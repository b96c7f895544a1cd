//! How long the server takes to pass one agent token on: from the `exec`
//! agent's write to the WebSocket client's receipt of the frame.
//!
//! The agent (a small Python program) stamps each token with
//! `CLOCK_MONOTONIC` just before writing it; the client reads the same
//! clock when the frame arrives. Both sides' own costs (Python's print,
//! the client's frame parsing) are included, so this is an upper bound on
//! the server's share.
//!
//!     cargo build --release && cargo bench --bench token_overhead
//!
//! Env: AUTOPOIESIS_BIN (default target/release/autopoiesis), TOKENS (2000).

use std::time::Duration;

mod common;

const AGENT: &str = r#"
import json, sys, time
sys.stdin.readline()
n = int(sys.argv[1])
out = sys.stdout
for i in range(n):
    out.write(json.dumps({"op": "token", "data": {"content": str(time.monotonic_ns())}}) + "\n")
    out.flush()
    time.sleep(0.0005)
out.write(json.dumps({"op": "done", "data": {}}) + "\n")
out.flush()
"#;

fn main() {
    let bin =
        std::env::var("AUTOPOIESIS_BIN").unwrap_or_else(|_| "target/release/autopoiesis".into());
    let tokens = common::env_num("TOKENS", 2000);
    let agent_path = std::env::temp_dir().join("autopoiesis-token-overhead-agent.py");
    std::fs::write(&agent_path, AGENT).expect("write agent");
    let cmd = format!("python3 {} {tokens}", agent_path.display());
    let server = common::Server::start(
        &bin,
        &["--in-memory", "--agent", "exec", "--agent-cmd", &cmd],
    );
    let addr = server.addr.clone();

    let stream = std::net::TcpStream::connect(&addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut ws, _) =
        tungstenite::client::client(format!("ws://{addr}/api/ws/bench"), stream).unwrap();
    ws.send(tungstenite::Message::text(
        r#"{"op":"message","data":{"content":"go"}}"#,
    ))
    .unwrap();
    let lat_us = common::token_latencies_us(&mut ws);
    drop(server);
    let pct = |p: f64| lat_us[((lat_us.len() - 1) as f64 * p) as usize];
    println!(
        "token_overhead tokens={} p50_us={:.1} p90_us={:.1} p99_us={:.1} max_us={:.1}",
        lat_us.len(),
        pct(0.50),
        pct(0.90),
        pct(0.99),
        lat_us[lat_us.len() - 1]
    );
}
