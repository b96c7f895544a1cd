//! Memory per session: what the server holds in RAM for sessions nobody is
//! using, and what a read of a cold session's history then costs.
//!
//! Each phase starts the release binary afresh (`serve --port 0` on a new
//! temporary `--data-dir`, the default journaled mode, `--max-sessions
//! 10000000`, then `MEMORY_ARGS` split on whitespace) and reads its RSS
//! from `/proc/PID/status` (`VmRSS`, with its anonymous and file-backed
//! parts):
//!
//! - `empty`: RSS before and after `MEM_EMPTY` (200 000) `POST
//!   /api/sessions`, 64 pipelined on each of 4 connections; the difference
//!   per session.
//! - `history`: `MEM_HISTORY_SESSIONS` (20 000) sessions × `MEM_TURNS` (5)
//!   turns of a 100-word message (`POST /api/sessions/{id}/chat`, the echo
//!   agent), from several threads, each session's turns back to back. Then
//!   the sessions are let go idle: `/metrics` is polled until the gauge
//!   `autopoiesis_sessions_resident` (sessions whose history is in RAM)
//!   reads 0 (at most `MEM_SETTLE_MAX_SECS`, 300) and then until the RSS
//!   stops falling (a second without a 1 % drop, at most 10 s), or, from a
//!   server without the gauge, for `MEM_SETTLE_SECS` (3). RSS per session, and the
//!   journal's bytes on disk per session beside it.
//! - `coldread` (on the `history` phase's server, once idle): `GET
//!   /api/sessions/{id}/history` of `MEM_READS` (2 000) distinct sessions
//!   picked at random, one at a time on one keep-alive connection, each
//!   read twice in a row: the first read finds it cold, the second hot
//!   (right away, since with `--history-idle 1` a second pass over all of
//!   them would find the first ones cold again). p50 / p99 / max of each,
//!   and the count of `autopoiesis_history_load_seconds` when the server
//!   has it.
//! - `big`: as `history` with `MEM_BIG_SESSIONS` (100 000) ×
//!   `MEM_BIG_TURNS` (20): the total RSS once all are idle. Not run by
//!   default (2 million turns, a few minutes): `MEM_BIG=1`, or name it in
//!   `MEMORY_PHASES`.
//!
//! `MEMORY_PHASES` (default `empty,history,coldread`) picks phases. The
//! load: `MEM_THREADS` (8) threads × `MEM_CONNS` (8) keep-alive
//! connections each, `MEM_DEPTH` (4) requests pipelined per connection.
//! A server whose RSS passes `MEM_MAX_RSS_MIB` (default half the memory
//! available at start, at most 8 GiB) stops that phase's load early, and
//! the figures are then per session loaded so far, with the total for all
//! of them extrapolated. Numbers, never assertions.
//!
//! ```text
//! cargo build --release && cargo bench --bench memory
//! AUTOPOIESIS_BIN=/tmp/before/autopoiesis MEMORY_PHASES=empty,history,coldread,big cargo bench --bench memory
//! MEMORY_ARGS="--history-idle 1 --retain-idle 1" MEM_BIG=1 cargo bench --bench memory
//! ```
//!
//! `AUTOPOIESIS_BIN` (default `target/release/autopoiesis`) names the
//! binary. The reproduction command is the output's first line.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::{env_num, Server};

/// Every environment variable this bench reads, for the reproduction line.
const ENV: [&str; 17] = [
    "AUTOPOIESIS_BIN",
    "MEMORY_ARGS",
    "MEMORY_PHASES",
    "MEM_BIG",
    "MEM_EMPTY",
    "MEM_HISTORY_SESSIONS",
    "MEM_TURNS",
    "MEM_BIG_SESSIONS",
    "MEM_BIG_TURNS",
    "MEM_READS",
    "MEM_SETTLE_SECS",
    "MEM_SETTLE_MAX_SECS",
    "MEM_THREADS",
    "MEM_CONNS",
    "MEM_DEPTH",
    "MEM_MAX_RSS_MIB",
    "MEM_SEED",
];

/// The server's memory, from `/proc/PID/status`, in bytes.
#[derive(Clone, Copy, Default)]
struct Rss {
    total: u64,
    anon: u64,
    file: u64,
}

fn rss(pid: u32) -> Rss {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    };
    Rss {
        total: field("VmRSS:"),
        anon: field("RssAnon:"),
        file: field("RssFile:"),
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn show_rss(r: Rss) -> String {
    format!(
        "{} (anon {}, file {})",
        mib(r.total),
        mib(r.anon),
        mib(r.file)
    )
}

/// One row of the table.
fn row(phase: &str, figure: &str, value: impl std::fmt::Display) {
    println!("{phase:<9} {figure:<44} {value}");
}

/// A keep-alive connection that pipelines: requests are queued, sent
/// together, and their responses read back in order.
struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    out: Vec<u8>,
}

impl Conn {
    fn open(addr: &str) -> Conn {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        stream
            .set_read_timeout(Some(Duration::from_secs(120)))
            .expect("timeout");
        Conn {
            reader: BufReader::with_capacity(64 * 1024, stream.try_clone().expect("clone")),
            writer: stream,
            out: Vec::new(),
        }
    }

    fn queue(&mut self, method: &str, path: &str, body: &str) {
        write!(
            self.out,
            "{method} {path} HTTP/1.1\r\nHost: memory\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .expect("a Vec takes writes");
    }

    fn flush(&mut self) {
        self.writer.write_all(&self.out).expect("send");
        self.out.clear();
    }

    /// The next response: its status and body.
    fn response(&mut self) -> (u16, Vec<u8>) {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("a status line");
        let status = line.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        let mut len = 0usize;
        loop {
            line.clear();
            assert!(
                self.reader.read_line(&mut line).expect("a header") > 0,
                "the server closed the connection"
            );
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((name, value)) = l.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    len = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; len];
        self.reader.read_exact(&mut body).expect("a body");
        (status, body)
    }

    fn call(&mut self, method: &str, path: &str, body: &str) -> (u16, Vec<u8>) {
        self.queue(method, path, body);
        self.flush();
        self.response()
    }
}

/// The settings every loading phase shares.
struct Load {
    threads: usize,
    conns: usize,
    depth: usize,
    max_rss: u64,
}

impl Load {
    fn from_env() -> Load {
        Load {
            threads: env_num("MEM_THREADS", 8).max(1),
            conns: env_num("MEM_CONNS", 8).max(1),
            depth: env_num("MEM_DEPTH", 4).max(1),
            max_rss: env_num(
                "MEM_MAX_RSS_MIB",
                (mem_available() / 2 / (1024 * 1024)).min(8192) as usize,
            ) as u64
                * 1024
                * 1024,
        }
    }

    /// Runs `total` requests (`request(i, conn)` queues the `i`th) over
    /// `threads × conns` keep-alive connections, `depth` in flight on
    /// each. Request `i` belongs to group `i / grouped` (a session's
    /// turns); a group's requests go to one connection, in order, and the
    /// groups are dealt to the connections in turn. Stops early when the
    /// server's RSS passes the cap.
    fn run(
        &self,
        server: &Server,
        total: usize,
        grouped: usize,
        request: impl Fn(usize, &mut Conn) + Send + Sync + 'static,
    ) -> Outcome {
        let connections = self.threads * self.conns;
        let request = Arc::new(request);
        let done = Arc::new(AtomicU64::new(0));
        let touched = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let groups = total.div_ceil(grouped);
        let started = Instant::now();
        let handles: Vec<_> = (0..self.threads)
            .map(|t| {
                let (addr, request, done, touched, stop) = (
                    server.addr.clone(),
                    request.clone(),
                    done.clone(),
                    touched.clone(),
                    stop.clone(),
                );
                let (conns, depth, threads) = (self.conns, self.depth, self.threads);
                std::thread::spawn(move || {
                    // Connection `c` of this thread is global connection
                    // `t + threads * c`; it takes every `connections`th
                    // group from that one, each group's requests in turn.
                    let mut work: Vec<(Conn, Box<dyn Iterator<Item = usize> + Send>)> = (0..conns)
                        .map(|c| {
                            let first = t + threads * c;
                            let items = (first..groups)
                                .step_by(connections)
                                .flat_map(move |g| g * grouped..((g + 1) * grouped).min(total));
                            (
                                Conn::open(&addr),
                                Box::new(items) as Box<dyn Iterator<Item = usize> + Send>,
                            )
                        })
                        .collect();
                    let mut in_flight = vec![Vec::new(); conns];
                    loop {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let mut any = false;
                        for (c, (conn, items)) in work.iter_mut().enumerate() {
                            in_flight[c].clear();
                            for i in items.by_ref().take(depth) {
                                request(i, conn);
                                in_flight[c].push(i);
                            }
                            if !in_flight[c].is_empty() {
                                conn.flush();
                                any = true;
                            }
                        }
                        if !any {
                            break;
                        }
                        for (c, (conn, _)) in work.iter_mut().enumerate() {
                            for &i in &in_flight[c] {
                                let (status, body) = conn.response();
                                assert!(
                                    (200..300).contains(&status),
                                    "status {status}: {}",
                                    String::from_utf8_lossy(&body)
                                );
                                if i % grouped == 0 {
                                    touched.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            done.fetch_add(in_flight[c].len() as u64, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        // Watch the server's RSS (and report progress) while they run.
        let pid = server.child.id();
        let mut capped = false;
        let mut last_report = Instant::now();
        while !handles.iter().all(|h| h.is_finished()) {
            std::thread::sleep(Duration::from_millis(100));
            let now = rss(pid);
            if now.total > self.max_rss && !capped {
                capped = true;
                stop.store(true, Ordering::Relaxed);
                eprintln!(
                    "memory: server RSS {} passed MEM_MAX_RSS_MIB {}: stopping the load",
                    mib(now.total),
                    mib(self.max_rss)
                );
            }
            if last_report.elapsed() >= Duration::from_secs(10) {
                last_report = Instant::now();
                eprintln!(
                    "memory: {} of {total} requests in {:.0} s, server RSS {}",
                    done.load(Ordering::Relaxed),
                    started.elapsed().as_secs_f64(),
                    mib(now.total)
                );
            }
        }
        for h in handles {
            h.join().expect("a load thread");
        }
        Outcome {
            done: done.load(Ordering::Relaxed),
            groups: touched.load(Ordering::Relaxed) as usize,
            took: started.elapsed(),
            capped,
        }
    }
}

/// What a [`Load::run`] did.
struct Outcome {
    /// Requests answered.
    done: u64,
    /// Groups (sessions) with at least one request answered.
    groups: usize,
    took: Duration,
    /// Whether the RSS cap stopped it early.
    capped: bool,
}

/// MemAvailable from /proc/meminfo, in bytes.
fn mem_available() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(8 << 30, |kib| kib * 1024)
}

/// A temporary data directory, removed when dropped.
struct DataDir(std::path::PathBuf);

impl DataDir {
    fn new(phase: &str) -> DataDir {
        let dir =
            std::env::temp_dir().join(format!("autopoiesis-memory-{}-{phase}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a data directory");
        DataDir(dir)
    }

    /// The bytes of every file in it.
    fn bytes(&self) -> u64 {
        fn walk(dir: &std::path::Path) -> u64 {
            std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => walk(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        }
        walk(&self.0)
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The extra arguments from `MEMORY_ARGS`.
fn memory_args() -> Vec<String> {
    std::env::var("MEMORY_ARGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

fn start(bin: &str, dir: &DataDir) -> Server {
    let mut args = vec![
        "--data-dir".to_owned(),
        dir.0.display().to_string(),
        "--max-sessions".to_owned(),
        "10000000".to_owned(),
    ];
    args.extend(memory_args());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start(bin, &args);
    assert!(
        server.addr.contains(':'),
        "{bin} did not start (does it take MEMORY_ARGS {:?}?)",
        memory_args()
    );
    server
}

/// `/metrics`, as text.
fn metrics(addr: &str) -> String {
    let (_, body) = Conn::open(addr).call("GET", "/metrics", "");
    String::from_utf8_lossy(&body).into_owned()
}

/// A sample's value, when the server exports it.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Waits until no session's history is in RAM (the gauge reads 0) and
/// the RSS has stopped falling, or `MEM_SETTLE_SECS` from a server without
/// the gauge; what was waited and the gauge's last value.
fn settle(server: &Server) -> (Duration, Option<f64>) {
    let started = Instant::now();
    let max = Duration::from_secs(env_num("MEM_SETTLE_MAX_SECS", 300) as u64);
    let resident = loop {
        let resident = metric(&metrics(&server.addr), "autopoiesis_sessions_resident");
        match resident {
            None => {
                std::thread::sleep(Duration::from_secs(env_num("MEM_SETTLE_SECS", 3) as u64));
                return (started.elapsed(), None);
            }
            Some(n) if n == 0.0 || started.elapsed() >= max => break resident,
            Some(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    // What else idleness frees (retained events) may lag the gauge by a
    // sweep or two.
    let quiet = Instant::now();
    let mut last = rss(server.child.id()).total;
    while quiet.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_secs(1));
        let now = rss(server.child.id()).total;
        if now + last / 100 >= last {
            break;
        }
        last = now;
    }
    (started.elapsed(), resident)
}

/// A 100-word message, about 600 bytes.
fn message(turn: usize) -> String {
    const WORDS: [&str; 20] = [
        "the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven",
        "wizards", "quietly", "hex", "jovial", "boxers", "under", "twelve", "amber", "lanterns",
    ];
    let mut text = format!("turn{turn}");
    for i in 1..100 {
        text.push(' ');
        text.push_str(WORDS[(i * 7 + turn) % WORDS.len()]);
    }
    text
}

/// A session id, as long as the server's own (32 hex digits).
fn session_id(i: usize) -> String {
    format!("{i:032x}")
}

/// `sessions × turns` chats, each session's turns back to back on one
/// connection, on a fresh server; then idle. Prints the phase's rows and
/// returns the server (and its directory) for a `coldread`.
fn history_phase(bin: &str, phase: &str, sessions: usize, turns: usize, load: &Load) -> Loaded {
    let dir = DataDir::new(phase);
    let server = start(bin, &dir);
    let pid = server.child.id();
    let before = rss(pid);
    let bodies: Arc<Vec<String>> = Arc::new(
        (0..turns)
            .map(|t| serde_json::json!({ "content": message(t) }).to_string())
            .collect(),
    );
    let Outcome {
        done,
        groups: loaded,
        took,
        capped,
    } = load.run(&server, sessions * turns, turns, move |i, conn| {
        let path = format!("/api/sessions/{}/chat", session_id(i / turns));
        conn.queue("POST", &path, &bodies[i % turns]);
    });
    let busy = rss(pid);
    let (waited, resident) = settle(&server);
    let after = rss(pid);
    let journal = dir.bytes();
    let per = |bytes: u64| bytes as f64 / loaded.max(1) as f64;
    row(phase, "sessions × turns", format!("{sessions} × {turns}"));
    row(
        phase,
        "turns done",
        format!(
            "{done} in {:.1} s ({:.0} turns/s){}",
            took.as_secs_f64(),
            done as f64 / took.as_secs_f64(),
            if capped {
                format!(
                    ", STOPPED at MEM_MAX_RSS_MIB after {loaded} sessions (per-session figures are over those)"
                )
            } else {
                String::new()
            }
        ),
    );
    row(phase, "RSS before", show_rss(before));
    row(phase, "RSS right after the last turn", show_rss(busy));
    row(
        phase,
        "idle wait",
        format!(
            "{:.1} s, autopoiesis_sessions_resident {}",
            waited.as_secs_f64(),
            resident.map_or("absent".to_owned(), |n| format!("{n}"))
        ),
    );
    row(phase, "RSS idle", show_rss(after));
    row(
        phase,
        "RSS per idle session",
        format!(
            "{:.0} B (anon {:.0} B)",
            per(after.total.saturating_sub(before.total)),
            per(after.anon.saturating_sub(before.anon))
        ),
    );
    row(
        phase,
        "journal on disk per session",
        format!("{:.0} B ({} in all)", per(journal), mib(journal)),
    );
    let mut total = after.total as f64;
    if capped {
        total =
            before.total as f64 + per(after.total.saturating_sub(before.total)) * sessions as f64;
        row(
            phase,
            "RSS idle, extrapolated to all sessions",
            format!("{:.0} MiB", total / (1024.0 * 1024.0)),
        );
    }
    Loaded {
        server,
        _dir: dir,
        sessions: loaded,
        total,
        capped,
    }
}

/// A server that [`history_phase`] loaded, idle.
struct Loaded {
    server: Server,
    /// Its data directory, removed when dropped (after the server, which
    /// is declared first).
    _dir: DataDir,
    /// Sessions with at least one turn.
    sessions: usize,
    /// Its RSS idle in bytes (extrapolated to every session asked for when
    /// the load was stopped at the cap).
    total: f64,
    capped: bool,
}

/// p50 / p99 / max of `samples`, in ms.
fn percentiles(mut samples: Vec<Duration>) -> String {
    if samples.is_empty() {
        return "no samples".to_owned();
    }
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let at = |p: usize| samples[((samples.len() - 1) * p / 100).min(samples.len() - 1)];
    format!(
        "p50 {:.3} / p99 {:.3} / max {:.3} ms ({} reads)",
        ms(at(50)),
        ms(at(99)),
        ms(*samples.last().expect("not empty")),
        samples.len()
    )
}

/// Reads the history of `reads` sessions of the `sessions` on the server,
/// picked at random, each twice in a row.
fn coldread_phase(server: &Server, sessions: usize, turns: usize) {
    let phase = "coldread";
    let reads = env_num("MEM_READS", 2000).min(sessions);
    // Distinct sessions by a partial Fisher-Yates shuffle, from xorshift64.
    let mut state = env_num("MEM_SEED", 0x9e37_79b9) as u64 | 1;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut order: Vec<usize> = (0..sessions).collect();
    for i in 0..reads {
        let j = i + (next() % (sessions - i) as u64) as usize;
        order.swap(i, j);
    }
    let text = metrics(&server.addr);
    let resident = metric(&text, "autopoiesis_sessions_resident");
    let loads_before = metric(&text, "autopoiesis_history_load_seconds_count");
    let load_sum_before = metric(&text, "autopoiesis_history_load_seconds_sum");
    let mut conn = Conn::open(&server.addr);
    let (mut cold, mut hot) = (Vec::new(), Vec::new());
    let mut wrong = 0;
    let mut bytes = 0;
    for &s in &order[..reads] {
        let path = format!("/api/sessions/{}/history", session_id(s));
        for times in [&mut cold, &mut hot] {
            let t = Instant::now();
            let (status, body) = conn.call("GET", &path, "");
            times.push(t.elapsed());
            const REQUEST: &[u8] = b"\"kind\":\"request\"";
            let requests = body
                .windows(REQUEST.len())
                .filter(|w| *w == REQUEST)
                .count();
            if status != 200 || requests != turns {
                wrong += 1;
            }
            bytes += body.len();
        }
    }
    let text = metrics(&server.addr);
    row(
        phase,
        "resident sessions before the reads",
        resident.map_or("absent".to_owned(), |n| format!("{n}")),
    );
    row(phase, "first read (cold)", percentiles(cold));
    row(phase, "read again right away (hot)", percentiles(hot));
    row(
        phase,
        "history bytes per read",
        format!("{:.0}", bytes as f64 / (2 * reads).max(1) as f64),
    );
    row(
        phase,
        "reads not 200 with every turn",
        format!("{wrong} of {}", 2 * reads),
    );
    match (
        loads_before,
        metric(&text, "autopoiesis_history_load_seconds_count"),
    ) {
        (Some(b), Some(a)) => {
            let sum = metric(&text, "autopoiesis_history_load_seconds_sum").unwrap_or(0.0)
                - load_sum_before.unwrap_or(0.0);
            let n = a - b;
            row(
                phase,
                "autopoiesis_history_load_seconds_count",
                format!(
                    "{a} ({n} during the reads, mean {:.3} ms)",
                    if n > 0.0 { sum / n * 1e3 } else { 0.0 }
                ),
            );
        }
        _ => row(phase, "autopoiesis_history_load_seconds_count", "absent"),
    }
}

fn empty_phase(bin: &str, load: &Load) {
    let phase = "empty";
    let n = env_num("MEM_EMPTY", 200_000);
    let dir = DataDir::new(phase);
    let server = start(bin, &dir);
    let pid = server.child.id();
    let before = rss(pid);
    // A few connections, many requests pipelined on each.
    let few = Load {
        threads: 2,
        conns: 2,
        depth: 64,
        max_rss: load.max_rss,
    };
    let Outcome {
        done, took, capped, ..
    } = few.run(&server, n, 1, |_, conn| {
        conn.queue("POST", "/api/sessions", "");
    });
    let after = rss(pid);
    let held = metric(&metrics(&server.addr), "autopoiesis_sessions").unwrap_or(f64::NAN);
    let per = |a: u64, b: u64| a.saturating_sub(b) as f64 / done.max(1) as f64;
    row(
        phase,
        "sessions created",
        format!(
            "{done} in {:.1} s ({:.0}/s), {held} held{}",
            took.as_secs_f64(),
            done as f64 / took.as_secs_f64(),
            if capped {
                ", STOPPED at MEM_MAX_RSS_MIB"
            } else {
                ""
            }
        ),
    );
    row(phase, "RSS before", show_rss(before));
    row(phase, "RSS after", show_rss(after));
    row(
        phase,
        "RSS per empty session",
        format!(
            "{:.0} B (anon {:.0} B)",
            per(after.total, before.total),
            per(after.anon, before.anon)
        ),
    );
    row(
        phase,
        "journal on disk per session",
        format!("{:.0} B", dir.bytes() as f64 / done.max(1) as f64),
    );
}

fn main() {
    let bin =
        std::env::var("AUTOPOIESIS_BIN").unwrap_or_else(|_| "target/release/autopoiesis".into());
    assert!(
        std::path::Path::new(&bin).exists(),
        "{bin} is missing: cargo build --release first"
    );
    let mut phases: Vec<String> = std::env::var("MEMORY_PHASES")
        .unwrap_or_else(|_| "empty,history,coldread".into())
        .split(',')
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect();
    if std::env::var("MEM_BIG").is_ok_and(|v| v == "1") && !phases.iter().any(|p| p == "big") {
        phases.push("big".into());
    }
    for p in &phases {
        assert!(
            ["empty", "history", "coldread", "big"].contains(&p.as_str()),
            "unknown phase {p} (empty, history, coldread, big)"
        );
    }
    let set: Vec<String> = ENV
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| format!("{k}='{v}'")))
        .collect();
    println!(
        "# reproduce: {}{}cargo bench --bench memory",
        set.join(" "),
        if set.is_empty() { "" } else { " " }
    );
    let load = Load::from_env();
    println!(
        "# server: {bin} serve --port 0 --data-dir TMP --max-sessions 10000000 {}",
        memory_args().join(" ")
    );
    println!(
        "# phases: {}; load {} threads × {} connections, {} pipelined; RSS cap {}; {} CPUs",
        phases.join(","),
        load.threads,
        load.conns,
        load.depth,
        mib(load.max_rss),
        common::cpus()
    );
    let has = |p: &str| phases.iter().any(|q| q == p);
    if has("empty") {
        empty_phase(&bin, &load);
    }
    if has("history") || has("coldread") {
        let turns = env_num("MEM_TURNS", 5);
        let loaded = history_phase(
            &bin,
            "history",
            env_num("MEM_HISTORY_SESSIONS", 20_000),
            turns,
            &load,
        );
        if has("coldread") {
            coldread_phase(&loaded.server, loaded.sessions, turns);
        }
    }
    if has("big") {
        let loaded = history_phase(
            &bin,
            "big",
            env_num("MEM_BIG_SESSIONS", 100_000),
            env_num("MEM_BIG_TURNS", 20),
            &load,
        );
        row(
            "big",
            "total RSS, all idle (goal ≤ 64 MiB)",
            format!(
                "{:.1} MiB{}",
                loaded.total / (1024.0 * 1024.0),
                if loaded.capped { " (extrapolated)" } else { "" }
            ),
        );
    }
}
