//! `--agent worker` against `--agent exec` with the same trivial Python
//! agent: turns per second (one client, then eight at once, REST
//! `POST /api/chat` on keep-alive connections), the per-token overhead
//! (the agent stamps each token with `CLOCK_MONOTONIC`; the WebSocket
//! client reads the same clock on receipt), and both again for an agent
//! that takes 1 s to start (a framework import, a model load).
//!
//!     cargo build --release && cargo bench --bench worker
//!
//! Env: AUTOPOIESIS_BIN (default target/release/autopoiesis), TURNS (400:
//! worker turns per run; exec runs do fewer), TOKENS (2000).

use std::net::TcpStream;
use std::time::Instant;

mod common;
use common::{call, connect, env_num, Server};

/// One program, both protocols: `exec` answers the one request on stdin;
/// `worker` answers every turn line until EOF. `stream N` stamps N tokens;
/// any other prompt comes back word by word. `--start S` sleeps S seconds
/// first (a slow import).
const AGENT: &str = r#"
import json, sys, time
mode, start = sys.argv[1], float(sys.argv[2])
time.sleep(start)
out = sys.stdout

def answer(req, extra):
    words = req["prompt"].split()
    if words and words[0] == "stream":
        for _ in range(int(words[1])):
            out.write(json.dumps(dict(extra, op="token", data={"content": str(time.monotonic_ns())})) + "\n")
            out.flush()
            time.sleep(0.0005)
        out.write(json.dumps(dict(extra, op="done", data={})) + "\n")
    else:
        for w in words:
            out.write(json.dumps(dict(extra, op="token", data={"content": w + " "})) + "\n")
        out.write(json.dumps(dict(extra, op="done", data={"content": req["prompt"]})) + "\n")
    out.flush()

if mode == "exec":
    answer(json.loads(sys.stdin.readline()), {})
else:
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["type"] == "turn":
            answer(msg, {"turn": msg["turn"]})
"#;

fn start(bin: &str, agent: &str, start_s: f64) -> Server {
    let path = std::env::temp_dir().join("autopoiesis-worker-bench-agent.py");
    std::fs::write(&path, AGENT).expect("write the agent");
    let cmd = format!("exec python3 {} {agent} {start_s}", path.display());
    let args = [
        "--in-memory",
        "--agent",
        agent,
        "--agent-cmd",
        &cmd,
        "--max-queued-turns",
        "64",
    ];
    Server::start(bin, &args)
}

/// One `POST /api/chat` on a keep-alive connection; the status.
fn chat(conn: &mut TcpStream, session: &str, content: &str) -> u16 {
    let body = format!(r#"{{"content":"{content}","session_id":"{session}"}}"#);
    call(conn, "POST", "/api/chat", &body).0
}

/// `clients` threads each run `turns / clients` turns on their own session;
/// returns turns per second.
fn turns_per_second(s: &Server, clients: usize, turns: usize) -> f64 {
    let started = Instant::now();
    std::thread::scope(|scope| {
        for c in 0..clients {
            let addr = s.addr.clone();
            scope.spawn(move || {
                let mut conn = connect(&addr);
                for _ in 0..turns / clients {
                    assert_eq!(chat(&mut conn, &format!("c{c}"), "hello big world"), 200);
                }
            });
        }
    });
    (turns / clients * clients) as f64 / started.elapsed().as_secs_f64()
}

/// Agent write → client receipt, per token; (p50, p90, p99) in µs.
fn token_overhead(s: &Server, tokens: usize) -> (f64, f64, f64) {
    let stream = connect(&s.addr);
    let (mut ws, _) =
        tungstenite::client::client(format!("ws://{}/api/ws/tok", s.addr), stream).unwrap();
    let msg = format!(r#"{{"op":"message","data":{{"content":"stream {tokens}"}}}}"#);
    ws.send(tungstenite::Message::text(msg)).unwrap();
    let lat = common::token_latencies_us(&mut ws);
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize];
    (pct(0.5), pct(0.9), pct(0.99))
}

fn main() {
    let bin =
        std::env::var("AUTOPOIESIS_BIN").unwrap_or_else(|_| "target/release/autopoiesis".into());
    let turns = env_num("TURNS", 400);
    let tokens = env_num("TOKENS", 2000);

    for (start_s, exec_turns) in [(0.0, turns / 4), (1.0, 8)] {
        for agent in ["exec", "worker"] {
            let s = start(&bin, agent, start_s);
            let n = if agent == "exec" { exec_turns } else { turns };
            // The first turn alone: for a worker, it may wait for the start.
            let first = Instant::now();
            assert_eq!(chat(&mut connect(&s.addr), "first", "hi"), 200);
            let first_ms = first.elapsed().as_secs_f64() * 1000.0;
            let one = turns_per_second(&s, 1, n);
            let eight = turns_per_second(&s, 8, n.max(8));
            println!(
                "worker_bench agent={agent} start_s={start_s} first_turn_ms={first_ms:.0} \
                 turns_per_s_1_client={one:.1} turns_per_s_8_clients={eight:.1}"
            );
            if start_s == 0.0 {
                let (p50, p90, p99) = token_overhead(&s, tokens);
                println!(
                    "worker_bench agent={agent} token_overhead tokens={tokens} \
                     p50_us={p50:.1} p90_us={p90:.1} p99_us={p99:.1}"
                );
            }
        }
    }
}
