//! Shared by the integration tests: start the real binary on port 0, wait
//! for its `listening on` line, talk to it over real sockets.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use tungstenite::protocol::WebSocket;
use tungstenite::Message;

/// Generous bound for any single socket read in a test: a failure shows as
/// an error instead of a hang, and a loaded CI machine still passes.
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Server {
    pub child: Child,
    pub port: u16,
    _stdout: BufReader<ChildStdout>,
}

impl Server {
    pub fn start(args: &[&str]) -> Server {
        Server::start_with_env(args, &[])
    }

    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_autopoiesis"));
        cmd.arg("serve").arg("--port").arg("0").args(args);
        // Tests run in parallel: each keeps sessions in memory unless it
        // names its own data directory.
        if !args.contains(&"--data-dir") {
            cmd.arg("--in-memory");
        }
        cmd.env_remove("AUTOPOIESIS_API_KEY")
            .env_remove("AUTOPOIESIS_HOST")
            .env_remove("AUTOPOIESIS_PORT");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the server binary");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .expect("read the listening line");
        let port = line
            .trim()
            .strip_prefix("listening on http://127.0.0.1:")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .expect("port");
        Server {
            child,
            port,
            _stdout: stdout,
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr()).expect("connect");
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        s
    }

    /// One request on a new connection; returns the response.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> HttpResponse {
        let mut s = self.connect();
        s.write_all(&raw_request(method, path, body, headers))
            .unwrap();
        read_response(&mut s).expect("a response")
    }

    pub fn get(&self, path: &str) -> HttpResponse {
        self.request("GET", path, None, &[])
    }

    pub fn post(&self, path: &str, body: &str) -> HttpResponse {
        self.request("POST", path, Some(body), &[])
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        signal(&self.child, libc::SIGTERM);
        self.child.wait().expect("wait")
    }

    pub fn ws(&self, path: &str) -> Ws {
        self.ws_with(path, &[]).expect("websocket handshake")
    }

    pub fn ws_with(&self, path: &str, headers: &[(&str, &str)]) -> Result<Ws, tungstenite::Error> {
        use tungstenite::client::IntoClientRequest;
        let mut req = format!("ws://{}{}", self.addr(), path).into_client_request()?;
        for (k, v) in headers {
            req.headers_mut().insert(
                tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let stream = self.connect();
        match tungstenite::client::client(req, stream) {
            Ok((ws, _resp)) => Ok(ws),
            Err(tungstenite::HandshakeError::Failure(e)) => Err(e),
            Err(tungstenite::HandshakeError::Interrupted(_)) => {
                panic!("blocking handshake interrupted")
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns `cmd` (a `serve --port 0` command) with stdout piped, and waits
/// for its `listening on` line; returns the child and its port.
pub fn spawn_listening(cmd: &mut Command) -> (Child, u16) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the server binary");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read the listening line");
    let port = line
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    (child, port)
}

pub fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

pub type Ws = WebSocket<TcpStream>;

/// A fresh, empty directory for one test (under the system temp dir).
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "autopoiesis-test-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A reader that retries `EINTR`. A socket read with `SO_RCVTIMEO` set
/// fails with EINTR (never restarted) whenever a signal is queued to the
/// process, and a test binary that spawns short-lived servers from other
/// threads gets SIGCHLDs: glibc's posix_spawn blocks every signal in the
/// spawning thread until it returns, so an early-exiting child's SIGCHLD
/// is queued and wakes whichever thread is blocked in a read.
pub struct NoEintr<'a, R>(pub &'a mut R);

impl<R: Read> Read for NoEintr<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            match self.0.read(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }
}

pub fn raw_request(
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> Vec<u8> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    if let Some(b) = body {
        req.push_str(b);
    }
    req.into_bytes()
}

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Reads one response (head + Content-Length body) byte by byte from `s`,
/// so that pipelined responses after it stay in the socket. None on EOF
/// before any byte.
pub fn read_response(s: &mut impl Read) -> Option<HttpResponse> {
    let mut s = NoEintr(s);
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(0) if head.is_empty() => return None,
            Ok(0) => panic!(
                "EOF inside a response head: {:?}",
                String::from_utf8_lossy(&head)
            ),
            Ok(_) => head.push(byte[0]),
            Err(e) if head.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => {
                return None
            }
            Err(e) => panic!("reading a response: {e}"),
        }
    }
    let (status_line, headers) = split_head(&head);
    let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).expect("body");
    Some(HttpResponse {
        status,
        headers,
        body,
    })
}

/// A raw socket upgraded to a WebSocket on `path` (the 101 read), for
/// tests that write frames tungstenite's client would refuse to send.
pub fn raw_ws(s: &Server, path: &str) -> TcpStream {
    let mut c = s.connect();
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    c.write_all(head.as_bytes()).expect("write the upgrade");
    assert_eq!(read_response(&mut c).expect("a 101").status, 101);
    c
}

/// The first line and the headers of an HTTP head (request or response).
pub fn split_head(head: &[u8]) -> (String, Vec<(String, String)>) {
    let text = std::str::from_utf8(head).expect("ASCII head");
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or_default().to_owned();
    let headers = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l.split_once(':').expect("header line");
            (k.trim().to_owned(), v.trim().to_owned())
        })
        .collect();
    (first, headers)
}

/// True when the server has closed `s` (EOF or reset) with nothing more to read.
pub fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match NoEintr(s).read(&mut buf) {
        Ok(0) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        Ok(_) => false,
    }
}

/// The next text frame as JSON, skipping pings and pongs.
pub fn next_json(ws: &mut Ws) -> serde_json::Value {
    loop {
        match read_frame(ws).expect("a frame") {
            Message::Text(t) => return serde_json::from_str(t.as_str()).expect("JSON text frame"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// `ws.read()`, retried on EINTR (see [`NoEintr`]); tungstenite keeps a
/// partial frame buffered, so calling again is safe.
pub fn read_frame(ws: &mut Ws) -> Result<Message, tungstenite::Error> {
    loop {
        match ws.read() {
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::Interrupted => {
                continue
            }
            other => return other,
        }
    }
}

pub fn send_json(ws: &mut Ws, value: serde_json::Value) {
    ws.send(Message::text(value.to_string())).expect("send");
}

/// Reads frames until `done` (inclusive); returns them all.
pub fn until_done(ws: &mut Ws) -> Vec<serde_json::Value> {
    until_op(ws, "done")
}

/// Reads frames up to and including the first whose op is `op`.
pub fn until_op(ws: &mut Ws, op: &str) -> Vec<serde_json::Value> {
    let mut frames = Vec::new();
    loop {
        let f = next_json(ws);
        let stop = f["op"] == op;
        frames.push(f);
        if stop {
            return frames;
        }
    }
}

/// The close frame's code, reading past anything before it.
pub fn close_code(ws: &mut Ws) -> u16 {
    loop {
        match read_frame(ws) {
            Ok(Message::Close(Some(frame))) => return frame.code.into(),
            Ok(Message::Close(None)) => return 1005,
            Ok(_) => continue,
            Err(e) => panic!("connection ended without a close frame: {e}"),
        }
    }
}

/// Every process: (pid, state, ppid, process group), from /proc.
pub fn processes() -> Vec<(u32, char, u32, u32)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command name (which may hold spaces) start after ')'.
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        let num = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(0)
        };
        let state = fields.first().and_then(|f| f.chars().next()).unwrap_or('?');
        out.push((pid, state, num(1), num(2)));
    }
    out
}

/// VmRSS of `pid` in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Waits (bounded, polling every 20 ms) until `probe` finds nothing;
/// fails naming `what` and what was still found.
pub fn until_empty<T: std::fmt::Debug>(what: &str, mut probe: impl FnMut() -> Vec<T>) {
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    loop {
        let left = probe();
        if left.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: still {left:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes `POST /api/sessions/{id}/chat` with `content` on `c`, without
/// reading the answer (the turn runs meanwhile).
pub fn send_routed_chat(c: &mut TcpStream, id: &str, content: &str) {
    let body = serde_json::json!({ "content": content }).to_string();
    let path = format!("/api/sessions/{id}/chat");
    c.write_all(&raw_request("POST", &path, Some(&body), &[]))
        .expect("write a chat");
}
