//! Load: what a server costs per unit of work, over HTTP and WebSocket.
//!
//! Each phase gets a fresh server (on CPU 0 when the machine has two or
//! more; the load runs on the others) and reports the rate, the p99 of the
//! unit, and the server's own CPU time per unit (`cpu_us`, utime + stime of
//! its process tree from /proc): the figure that still compares servers
//! when the load, not the server, is what saturates.
//!
//! - `health`, `sessions`, `chat`: `LOAD_CLIENTS` (32) keep-alive
//!   connections, each sending `GET /api/health`, `POST /api/sessions`, or
//!   `POST /api/chat {"content":"hello world from the benchmark"}` (a new
//!   session per request) back to back for `LOAD_SECONDS` (8);
//! - `turns`: `LOAD_CLIENTS` WebSocket clients, each on its own session,
//!   sending `message` and reading to its `done`, back to back;
//! - `agui`: `LOAD_CLIENTS` clients, each on its own thread (session),
//!   posting `POST /api/ag-ui` runs of the chat's message back to back and
//!   reading each stream to its close (a new connection per run: the
//!   stream is close-delimited); the unit is a run;
//! - `fanout`: `FAN_CLIENTS` (100) WebSocket clients on one session, one of
//!   which sends 50 messages of 20 words, each after the last one's
//!   `done`; the unit is a frame delivered to a client;
//! - `hold`: `HOLD` (1 000) idle WebSockets; the server's RSS before and
//!   after, per WebSocket; also the idle RSS and the time to the first
//!   answer.
//!
//! ```text
//! cargo build --release && cargo bench --bench load
//! ```
//!
//! measures ours twice, durable (the default, `--fsync batch`) and
//! `--in-memory`. `LOAD_SERVER='NAME=COMMAND with {port}'` (several,
//! separated by `;`) measures other servers that speak this API the same
//! way, e.g. the original Python server. `LOAD_ADDR=HOST:PORT` drives a
//! server started by someone else (a proxy in front of several, as
//! `benches/scale_cores.sh` does; no CPU or memory figures then).
//! `LOAD_PHASES=health,turns` picks phases. Env: `AUTOPOIESIS_BIN` (default `target/release/autopoiesis`).
//! Numbers, never assertions.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

mod common;
use common::{env_num, pin_to};

/// The CPUs this process could run on at start, before it pinned itself.
static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

fn cpus() -> usize {
    *CPUS.get_or_init(common::cpus)
}

/// A server under load: its process (group leader), its address.
struct Target {
    /// None for a server started by someone else (`LOAD_ADDR`).
    child: Option<Child>,
    addr: String,
}

impl Target {
    /// Starts `template` (`{port}` replaced by a free port) by `/bin/sh -c`
    /// in its own process group, pinned to CPU 0 when there are two or
    /// more, and waits until `GET /api/health` answers.
    fn start(template: &str) -> (Target, Duration) {
        if let Some(addr) = template.strip_prefix("addr:") {
            let addr = addr.to_owned();
            return (Target { child: None, addr }, Duration::ZERO);
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let cmd = template.replace("{port}", &port.to_string());
        let pin = cpus() > 1;
        let started = Instant::now();
        let mut command = Command::new("/bin/sh");
        command
            .args(["-c", &format!("exec {cmd}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        // SAFETY: sched_setaffinity is async-signal-safe; the set is local.
        unsafe {
            command.pre_exec(move || {
                if pin {
                    pin_to(0);
                }
                Ok(())
            });
        }
        let child = command.spawn().unwrap_or_else(|e| panic!("{cmd}: {e}"));
        let target = Target {
            child: Some(child),
            addr: format!("127.0.0.1:{port}"),
        };
        let deadline = started + Duration::from_secs(60);
        loop {
            if let Ok(mut c) = HttpClient::connect(&target.addr) {
                if c.request("GET", "/api/health", "").ok() == Some(200) {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "{cmd} never answered");
            std::thread::sleep(Duration::from_millis(5));
        }
        (target, started.elapsed())
    }

    /// Every process of the server's tree, from /proc.
    fn pids(&self) -> Vec<u32> {
        let Some(child) = &self.child else {
            return Vec::new();
        };
        let mut all = vec![child.id()];
        let mut i = 0;
        while i < all.len() {
            let tasks = format!("/proc/{}/task", all[i]);
            for task in std::fs::read_dir(tasks).into_iter().flatten().flatten() {
                let children = std::fs::read_to_string(task.path().join("children"));
                let children = children.unwrap_or_default();
                all.extend(
                    children
                        .split_whitespace()
                        .filter_map(|p| p.parse::<u32>().ok()),
                );
            }
            i += 1;
        }
        all
    }

    /// utime + stime of the tree, in µs.
    fn cpu_us(&self) -> f64 {
        // SAFETY: sysconf has no preconditions.
        let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let ticks: u64 = self
            .pids()
            .iter()
            .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
            .map(|stat| {
                // Fields after the command's closing parenthesis; utime and
                // stime are the 14th and 15th fields of the line.
                let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
                let f: Vec<&str> = rest.split_whitespace().collect();
                f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
                    + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
            })
            .sum();
        ticks as f64 * 1e6 / tick
    }

    /// VmRSS of the tree, in KiB.
    fn rss_kib(&self) -> u64 {
        self.pids()
            .iter()
            .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
            .filter_map(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .sum()
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            // SAFETY: signals the process group this struct started.
            unsafe {
                libc::kill(-(child.id() as i32), libc::SIGKILL);
            }
            let _ = child.wait();
        }
    }
}

/// A keep-alive HTTP/1.1 client with a buffered reader.
struct HttpClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl HttpClient {
    fn connect(addr: &str) -> std::io::Result<HttpClient> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(HttpClient {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    /// One request; its status once the whole response is read.
    fn request(&mut self, method: &str, path: &str, body: &str) -> std::io::Result<u16> {
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: load\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.writer.write_all(req.as_bytes())?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status = line.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        let mut len = 0usize;
        loop {
            line.clear();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let l = line.trim_end().to_ascii_lowercase();
            if l.is_empty() {
                break;
            }
            if let Some(v) = l.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; len];
        self.reader.read_exact(&mut body)?;
        Ok(status)
    }
}

type Ws = tungstenite::WebSocket<TcpStream>;

fn ws_connect(addr: &str, session: &str) -> Ws {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let url = format!("ws://{addr}/api/ws/{session}");
    tungstenite::client::client(url, stream)
        .expect("handshake")
        .0
}

fn send_message(ws: &mut Ws, content: &str) {
    let frame = serde_json::json!({"op": "message", "data": {"content": content}});
    ws.send(tungstenite::Message::text(frame.to_string()))
        .expect("send");
}

/// Reads frames until a `done`; how many frames that was.
fn read_to_done(ws: &mut Ws) -> u64 {
    let mut frames = 0;
    loop {
        let msg = ws.read().expect("read");
        let tungstenite::Message::Text(text) = msg else {
            continue;
        };
        frames += 1;
        let v: serde_json::Value = serde_json::from_str(text.as_str()).expect("JSON");
        match v["op"].as_str() {
            Some("done") => return frames,
            Some("error") => panic!("error frame: {v}"),
            _ => {}
        }
    }
}

fn p99_ms(mut samples: Vec<Duration>) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort();
    samples[(samples.len() * 99 / 100).min(samples.len() - 1)].as_secs_f64() * 1e3
}

/// `clients` threads run `unit` back to back for `seconds`; the units
/// done, the wall time, and every unit's duration.
fn closed_loop<C: Send + 'static>(
    clients: usize,
    seconds: u64,
    setup: impl Fn(usize) -> C + Send + Sync + 'static,
    unit: impl Fn(&mut C) + Send + Sync + 'static,
) -> (u64, Duration, Vec<Duration>) {
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(Barrier::new(clients + 1));
    let setup = Arc::new(setup);
    let unit = Arc::new(unit);
    let threads: Vec<_> = (0..clients)
        .map(|i| {
            let (stop, ready, setup, unit) =
                (stop.clone(), ready.clone(), setup.clone(), unit.clone());
            std::thread::spawn(move || {
                let mut state = setup(i);
                ready.wait();
                let mut times = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    unit(&mut state);
                    times.push(t.elapsed());
                }
                times
            })
        })
        .collect();
    ready.wait();
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in threads {
        all.extend(t.join().expect("a load thread"));
    }
    (all.len() as u64, started.elapsed(), all)
}

fn report(
    server: &str,
    phase: &str,
    units: u64,
    wall: Duration,
    p99: f64,
    cpu_us: f64,
    unit: &str,
) {
    let rate = units as f64 / wall.as_secs_f64();
    println!(
        "{server:<12} {phase:<9} {rate:>10.0} {unit}/s  p99 {p99:>7.2} ms  server {:>7.2} cpu_us/{unit}",
        cpu_us / units.max(1) as f64
    );
}

fn http_phase(
    template: &str,
    server: &str,
    phase: &str,
    method: &'static str,
    path: &'static str,
    body: &'static str,
) {
    let (target, _) = Target::start(template);
    let clients = env_num("LOAD_CLIENTS", 32);
    let seconds = env_num("LOAD_SECONDS", 8) as u64;
    let addr = target.addr.clone();
    let c0 = target.cpu_us();
    let (units, wall, times) = closed_loop(
        clients,
        seconds,
        move |_| HttpClient::connect(&addr).expect("connect"),
        move |c| {
            let status = c.request(method, path, body).expect("a response");
            assert!((200..300).contains(&status), "{method} {path}: {status}");
        },
    );
    let cpu = target.cpu_us() - c0;
    report(server, phase, units, wall, p99_ms(times), cpu, "req");
}

/// One AG-UI run on a new connection: the whole stream, to its close.
fn agui_run(addr: &str, body: &str) -> usize {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let req = format!(
        "POST /api/ag-ui HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("send");
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("the stream");
    assert!(
        out.starts_with(b"HTTP/1.1 200") && out.windows(12).any(|w| w == b"RUN_FINISHED"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    out.len()
}

fn agui_phase(template: &str, server: &str) {
    let (target, _) = Target::start(template);
    let clients = env_num("LOAD_CLIENTS", 32);
    let seconds = env_num("LOAD_SECONDS", 8) as u64;
    let addr = target.addr.clone();
    let c0 = target.cpu_us();
    let (units, wall, times) = closed_loop(
        clients,
        seconds,
        move |i| {
            let body = serde_json::json!({"threadId": format!("bench-{i}"), "runId": "run",
                "messages": [{"id": "m", "role": "user", "content": "hello world from the benchmark"}]});
            (addr.clone(), body.to_string())
        },
        |(addr, body)| {
            agui_run(addr, body);
        },
    );
    let cpu = target.cpu_us() - c0;
    report(server, "agui", units, wall, p99_ms(times), cpu, "run");
}

fn turns_phase(template: &str, server: &str) {
    let (target, _) = Target::start(template);
    let clients = env_num("LOAD_CLIENTS", 32);
    let seconds = env_num("LOAD_SECONDS", 8) as u64;
    let addr = target.addr.clone();
    let c0 = target.cpu_us();
    let (units, wall, times) = closed_loop(
        clients,
        seconds,
        move |i| ws_connect(&addr, &format!("load-turns-{i}")),
        |ws| {
            send_message(ws, "hello world from the benchmark");
            read_to_done(ws);
        },
    );
    let cpu = target.cpu_us() - c0;
    report(server, "turns", units, wall, p99_ms(times), cpu, "turn");
}

fn fanout_phase(template: &str, server: &str) {
    let (target, _) = Target::start(template);
    let clients = env_num("FAN_CLIENTS", 100);
    let messages = 50;
    let text = (0..20)
        .map(|i| format!("word{i}"))
        .collect::<Vec<_>>()
        .join(" ");
    // The receivers and the sender (this thread).
    let ready = Arc::new(Barrier::new(clients));
    let receivers: Vec<_> = (1..clients)
        .map(|_| {
            let (addr, ready) = (target.addr.clone(), ready.clone());
            std::thread::spawn(move || {
                let mut ws = ws_connect(&addr, "load-fanout");
                ready.wait();
                (0..messages).map(|_| read_to_done(&mut ws)).sum::<u64>()
            })
        })
        .collect();
    let mut sender = ws_connect(&target.addr, "load-fanout");
    ready.wait();
    let c0 = target.cpu_us();
    let started = Instant::now();
    let mut frames = 0;
    let mut times = Vec::new();
    for _ in 0..messages {
        let t = Instant::now();
        send_message(&mut sender, &text);
        frames += read_to_done(&mut sender);
        times.push(t.elapsed());
    }
    for r in receivers {
        frames += r.join().expect("a receiver");
    }
    let wall = started.elapsed();
    let cpu = target.cpu_us() - c0;
    report(server, "fanout", frames, wall, p99_ms(times), cpu, "frame");
}

fn hold_phase(template: &str, server: &str) {
    let (target, startup) = Target::start(template);
    let idle = target.rss_kib();
    let hold = env_num("HOLD", 1000);
    let held: Vec<Ws> = (0..hold)
        .map(|i| ws_connect(&target.addr, &format!("load-hold-{}", i % 10)))
        .collect();
    let loaded = target.rss_kib();
    println!(
        "{server:<12} hold      first answer {:.0} ms  idle RSS {idle} KiB  {} B per idle WebSocket ({hold} held)",
        startup.as_secs_f64() * 1e3,
        (loaded.saturating_sub(idle)) * 1024 / hold.max(1) as u64
    );
    drop(held);
}

fn main() {
    // Raise the open-files limit for the held WebSockets.
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    // With a server of our own on CPU 0, the load runs elsewhere; a server
    // started by someone else (LOAD_ADDR) is left to the caller to place.
    if cpus() > 1 && std::env::var_os("LOAD_ADDR").is_none() {
        pin_to(1);
    }
    let bin =
        std::env::var("AUTOPOIESIS_BIN").unwrap_or_else(|_| "target/release/autopoiesis".into());
    let servers: Vec<(String, String)> = if let Ok(addr) = std::env::var("LOAD_ADDR") {
        vec![(addr.clone(), format!("addr:{addr}"))]
    } else {
        match std::env::var("LOAD_SERVER") {
            Ok(list) => list
                .split(';')
                .filter_map(|s| s.trim().split_once('='))
                .map(|(n, c)| (n.trim().to_owned(), c.trim().to_owned()))
                .collect(),
            Err(_) => {
                assert!(
                    std::path::Path::new(&bin).exists(),
                    "{bin} is missing: cargo build --release first"
                );
                let dir =
                    std::env::temp_dir().join(format!("autopoiesis-load-{}", std::process::id()));
                vec![
                    (
                        "ours".to_owned(),
                        format!(
                            "{bin} serve --port {{port}} --data-dir {} --max-sessions 10000000",
                            dir.display()
                        ),
                    ),
                    (
                        "ours-mem".to_owned(),
                        format!("{bin} serve --port {{port}} --in-memory --max-sessions 10000000"),
                    ),
                ]
            }
        }
    };
    let phases = std::env::var("LOAD_PHASES")
        .unwrap_or_else(|_| "health,sessions,chat,turns,agui,fanout,hold".into());
    println!(
        "# load: {} CPUs; servers on CPU 0, load on the others; {} s per phase",
        cpus(),
        env_num("LOAD_SECONDS", 8)
    );
    for (name, template) in &servers {
        for phase in phases.split(',') {
            // A durable server starts on an empty data directory each phase.
            let template = template.clone();
            if let Some(dir) = template
                .split("--data-dir ")
                .nth(1)
                .and_then(|r| r.split(' ').next())
            {
                let _ = std::fs::remove_dir_all(dir);
            }
            match phase.trim() {
                "health" => http_phase(&template, name, "health", "GET", "/api/health", ""),
                "sessions" => http_phase(&template, name, "sessions", "POST", "/api/sessions", ""),
                "chat" => http_phase(
                    &template,
                    name,
                    "chat",
                    "POST",
                    "/api/chat",
                    r#"{"content":"hello world from the benchmark"}"#,
                ),
                "turns" => turns_phase(&template, name),
                "agui" => agui_phase(&template, name),
                "fanout" => fanout_phase(&template, name),
                "hold" => hold_phase(&template, name),
                other => panic!("unknown phase {other}"),
            }
        }
        if let Some(dir) = template
            .split("--data-dir ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
        {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
