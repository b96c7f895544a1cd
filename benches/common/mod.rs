//! Shared by the benchmarks: the clock the agents stamp tokens with, and
//! the latency of stamped tokens as a WebSocket client receives them.
#![allow(dead_code)]

/// CLOCK_MONOTONIC in ns: the clock Python's `time.monotonic_ns()` reads.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the struct we pass.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Reads frames until `done`; for each `token` whose content is the
/// agent's `monotonic_ns()` at write time, the delay to its receipt in µs,
/// sorted.
pub fn token_latencies_us<S: std::io::Read + std::io::Write>(
    ws: &mut tungstenite::WebSocket<S>,
) -> Vec<f64> {
    let mut lat = Vec::new();
    loop {
        let msg = ws.read().unwrap();
        let now = monotonic_ns();
        let tungstenite::Message::Text(t) = msg else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
        match v["op"].as_str() {
            Some("token") => {
                let sent: u64 = v["data"]["content"].as_str().unwrap().parse().unwrap();
                lat.push(now.saturating_sub(sent) as f64 / 1000.0);
            }
            Some("done") => break,
            other => panic!("unexpected {other:?}: {v}"),
        }
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    lat
}

/// `BIN serve --port 0 ARGS…`, killed when dropped; its address from the
/// `listening on` line.
pub struct Server {
    pub child: std::process::Child,
    pub addr: String,
}

impl Server {
    pub fn start(bin: &str, args: &[&str]) -> Server {
        Self::start_on(bin, args, None)
    }

    /// [`start`](Self::start) with the server pinned to `cpu` (when the
    /// machine has it), so its load and probes run elsewhere.
    pub fn start_on(bin: &str, args: &[&str], cpu: Option<usize>) -> Server {
        use std::io::BufRead;
        use std::os::unix::process::CommandExt;
        let mut cmd = std::process::Command::new(bin);
        if let Some(cpu) = cpu {
            // SAFETY: sched_setaffinity is async-signal-safe, and the set
            // is a local value.
            unsafe {
                cmd.pre_exec(move || {
                    pin_to(cpu);
                    Ok(())
                });
            }
        }
        let mut child = cmd
            .args(["serve", "--port", "0"])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(match std::env::var_os("BENCH_SERVER_LOG") {
                Some(path) => std::fs::File::create(path)
                    .map_or_else(|_| std::process::Stdio::null(), Into::into),
                None => std::process::Stdio::null(),
            })
            .spawn()
            .unwrap_or_else(|e| panic!("start {bin}: {e} (build it with cargo build --release)"));
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .trim_start_matches("listening on http://")
            .to_owned();
        Server { child, addr }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn connect(addr: &str) -> std::net::TcpStream {
    let c = std::net::TcpStream::connect(addr).unwrap();
    c.set_nodelay(true).unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_secs(120)))
        .unwrap();
    c
}

/// One request on a keep-alive connection; the status and body.
pub fn call(
    conn: &mut std::net::TcpStream,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, Vec<u8>) {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: b\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    std::io::Write::write_all(conn, req.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        std::io::Read::read_exact(conn, &mut byte).unwrap();
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).to_lowercase();
    let status = text[9..12].parse().unwrap();
    let len: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    let mut body = vec![0u8; len];
    std::io::Read::read_exact(conn, &mut body).unwrap();
    (status, body)
}

/// A number from the environment variable `key`, else `default`.
pub fn env_num(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Pins the calling thread (or, before exec, the process) to `cpu`; a
/// machine without it is left as it is.
pub fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the calls only read
    // it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// The number of CPUs this process may run on.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
