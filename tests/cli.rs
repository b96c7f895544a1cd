//! The command line of the real binary: help, version, usage errors, bind
//! failures, flags against the environment, and SIGTERM.

mod common;
use common::*;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The binary with none of its environment variables inherited.
fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_autopoiesis"));
    cmd.env_remove("AUTOPOIESIS_API_KEY")
        .env_remove("AUTOPOIESIS_HOST")
        .env_remove("AUTOPOIESIS_PORT")
        // Servers started here run in parallel: each gets its own data dir.
        .env("AUTOPOIESIS_DATA_DIR", temp_dir("cli"))
        .stdin(Stdio::null());
    cmd
}

/// Waits for `child` to exit, at most `limit`; kills it and panics after.
fn wait_bounded(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs the binary with `args` (and `env`) to completion, bounded.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = bin();
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn the binary");
    // Drain both pipes on threads so a chatty child can never block.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let status = wait_bounded(&mut child, IO_TIMEOUT, &format!("autopoiesis {args:?}"));
    Output {
        status,
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A server started by hand (for environment-only configurations); killed
/// on drop.
struct Spawned {
    child: Child,
    port: u16,
}

impl Spawned {
    /// Starts `autopoiesis <args>` with `env` and waits (bounded) for its
    /// `listening on` line.
    fn start(args: &[&str], env: &[(&str, &str)]) -> Spawned {
        let mut cmd = bin();
        cmd.args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn the server");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            // Keep the pipe open (and drained) for the server's lifetime.
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let line = match rx.recv_timeout(IO_TIMEOUT) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("no listening line within {IO_TIMEOUT:?}");
            }
        };
        let Some(port) = line
            .trim()
            .strip_prefix("listening on http://127.0.0.1:")
            .and_then(|p| p.parse().ok())
        else {
            let status = wait_bounded(&mut child, IO_TIMEOUT, "a server that did not start");
            panic!("unexpected first line {line:?}, exit status {status}");
        };
        Spawned { child, port }
    }

    fn health(&self) -> serde_json::Value {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.write_all(&raw_request("GET", "/api/health", None, &[]))
            .unwrap();
        let r = read_response(&mut s).expect("a response");
        assert_eq!(r.status, 200);
        r.json()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn assert_health(r: &HttpResponse) {
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ok");
}

// ------------------------------------------------------------ help, version

#[test]
fn serve_help_exits_0_and_lists_the_flags() {
    for flag in ["--help", "-h"] {
        let out = run(&["serve", flag], &[]);
        assert!(out.status.success(), "serve {flag}: {:?}", out.status);
        let help = text(&out.stdout);
        for needle in [
            "--port",
            "--host",
            "--max-head-bytes",
            "--max-body-bytes",
            "--header-timeout",
            "--keepalive-timeout",
            "--max-connections",
            "AUTOPOIESIS_PORT",
            "AUTOPOIESIS_API_KEY",
        ] {
            assert!(
                help.contains(needle),
                "serve {flag} does not mention {needle}:\n{help}"
            );
        }
        assert!(out.stderr.is_empty(), "stderr: {}", text(&out.stderr));
    }
}

#[test]
fn top_level_help_exits_0_and_names_serve() {
    let out = run(&["--help"], &[]);
    assert!(out.status.success(), "{:?}", out.status);
    let help = text(&out.stdout);
    assert!(help.contains("serve"), "{help}");
    assert!(help.contains("Usage"), "{help}");
}

#[test]
fn version_prints_the_crate_version() {
    let expected = format!("autopoiesis {}\n", env!("CARGO_PKG_VERSION"));
    for args in [&["--version"][..], &["-V"], &["serve", "--version"]] {
        let out = run(args, &[]);
        assert!(out.status.success(), "{args:?}: {:?}", out.status);
        assert_eq!(text(&out.stdout), expected, "{args:?}");
        assert!(
            out.stderr.is_empty(),
            "{args:?} stderr: {}",
            text(&out.stderr)
        );
    }
}

// ------------------------------------------------------------- usage errors

fn assert_usage_error(args: &[&str], env: &[(&str, &str)]) {
    let out = run(args, env);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{args:?} {env:?}: status {:?}, stderr {}",
        out.status,
        text(&out.stderr)
    );
    let err = text(&out.stderr);
    assert!(!err.trim().is_empty(), "{args:?}: no message on stderr");
    assert!(err.starts_with("autopoiesis: "), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    assert!(
        out.stdout.is_empty(),
        "{args:?}: stdout {}",
        text(&out.stdout)
    );
}

#[test]
fn unknown_flag_is_a_usage_error() {
    assert_usage_error(&["serve", "--bogus"], &[]);
    assert_usage_error(&["--bogus"], &[]);
    let out = run(&["serve", "--bogus"], &[]);
    assert!(
        text(&out.stderr).contains("--bogus"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn bad_port_values_are_usage_errors() {
    for value in ["x", "70000", "-1", ""] {
        assert_usage_error(&["serve", "--port", value], &[]);
    }
    let out = run(&["serve", "--port", "70000"], &[]);
    assert!(text(&out.stderr).contains("70000"), "{}", text(&out.stderr));
    // A flag without its value.
    assert_usage_error(&["serve", "--port"], &[]);
}

#[test]
fn bad_limit_values_are_usage_errors() {
    assert_usage_error(&["serve", "--header-timeout", "0"], &[]);
    assert_usage_error(&["serve", "--max-connections", "0"], &[]);
    assert_usage_error(&["serve", "--max-body-bytes", "lots"], &[]);
}

#[test]
fn missing_or_unknown_command_is_a_usage_error() {
    assert_usage_error(&[], &[]);
    assert_usage_error(&["frobnicate"], &[]);
    assert_usage_error(&["serve", "extra"], &[]);
}

#[test]
fn bogus_env_port_without_a_flag_is_a_usage_error() {
    assert_usage_error(&["serve"], &[("AUTOPOIESIS_PORT", "nope")]);
}

// ------------------------------------------------------------- bind failure

#[test]
fn bind_failure_exits_1_with_one_line_naming_the_port() {
    let server = Server::start(&[]);
    let port = server.port.to_string();
    let out = run(&["serve", "--port", &port], &[]);
    let err = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "status {:?}, stderr {err}",
        out.status
    );
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line on stderr, got {err:?}");
    assert_eq!(err.lines().count(), 1, "blank lines on stderr: {err:?}");
    assert!(
        lines[0].contains(&port),
        "stderr does not name port {port}: {err:?}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        !text(&out.stdout).contains("listening"),
        "stdout: {}",
        text(&out.stdout)
    );
    // The first server is unaffected.
    assert_health(&server.get("/api/health"));
}

// --------------------------------------------------- flags and environment

#[test]
fn env_port_0_picks_a_free_port() {
    let server = Spawned::start(&["serve"], &[("AUTOPOIESIS_PORT", "0")]);
    assert_ne!(server.port, 0);
    assert_ne!(
        server.port, 8420,
        "AUTOPOIESIS_PORT=0 was ignored (default port)"
    );
    assert_eq!(server.health()["status"], "ok");
}

#[test]
fn port_flag_beats_an_unbindable_env_port() {
    // Port 1 is privileged (and in any case not the port asked for).
    let server = Server::start_with_env(&[], &[("AUTOPOIESIS_PORT", "1")]);
    assert_ne!(server.port, 1);
    assert_ne!(server.port, 0);
    assert_health(&server.get("/api/health"));
}

#[test]
fn port_flag_beats_a_bogus_env_port() {
    // "Flags win over environment": with --port given, AUTOPOIESIS_PORT is
    // not used, so its value must not matter.
    let server = Spawned::start(&["serve", "--port", "0"], &[("AUTOPOIESIS_PORT", "nope")]);
    assert_ne!(server.port, 0);
    assert_eq!(server.health()["status"], "ok");
}

#[test]
fn host_flag_beats_env_host() {
    let server = Spawned::start(
        &["serve", "--host", "127.0.0.1", "--port", "0"],
        &[("AUTOPOIESIS_HOST", "no-such-host.invalid")],
    );
    assert_eq!(server.health()["status"], "ok");
}

#[test]
fn env_api_key_is_used() {
    let server = Server::start_with_env(&[], &[("AUTOPOIESIS_API_KEY", "s3cret")]);
    assert_eq!(server.get("/api/sessions").status, 401);
    let r = server.request("GET", "/api/sessions", None, &[("X-API-Key", "s3cret")]);
    assert_eq!(r.status, 200);
    assert_health(&server.get("/api/health"));
}

// ------------------------------------------------------------------ signals

/// Kills `pid` with SIGKILL unless `done` fires within the limit, so that a
/// server that ignores SIGTERM fails the test instead of hanging it.
fn watchdog(pid: u32, limit: Duration) -> mpsc::Sender<()> {
    let (tx, rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
            // SAFETY: kill(2) on our own child, not yet reaped (the test is
            // still blocked in wait()).
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
    });
    tx
}

#[test]
fn sigterm_with_an_idle_connection_exits_0() {
    let mut server = Server::start(&[]);
    let mut idle = server.connect();
    idle.write_all(&raw_request("GET", "/api/health", None, &[]))
        .unwrap();
    let r = read_response(&mut idle).expect("a response");
    assert_health(&r);
    assert!(r.header("connection").is_none(), "{:?}", r.headers);

    let done = watchdog(server.child.id(), IO_TIMEOUT);
    let status = server.terminate();
    let _ = done.send(());
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
    // The idle connection was closed by the server, not left hanging.
    let mut buf = [0u8; 16];
    let r = NoEintr(&mut idle).read(&mut buf);
    assert!(
        matches!(r, Ok(0)) || matches!(&r, Err(e) if e.kind() == ErrorKind::ConnectionReset),
        "the idle connection was not closed: {r:?}"
    );
}

#[test]
fn sigterm_closes_an_idle_connection_before_exiting() {
    let server = Server::start(&[]);
    let mut idle = server.connect();
    idle.write_all(&raw_request("GET", "/api/health", None, &[]))
        .unwrap();
    assert_health(&read_response(&mut idle).expect("a response"));
    signal(&server.child, libc::SIGTERM);
    // The server shuts the idle connection: EOF (within the read timeout).
    let mut buf = [0u8; 16];
    let n = NoEintr(&mut idle)
        .read(&mut buf)
        .expect("EOF, not a timeout");
    assert_eq!(n, 0, "unexpected bytes {:?}", &buf[..n]);
    drop(idle);
    let mut server = server;
    let done = watchdog(server.child.id(), IO_TIMEOUT);
    let status = server.child.wait().expect("wait");
    let _ = done.send(());
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
}

#[test]
fn sigint_exits_0() {
    let mut server = Server::start(&[]);
    assert_health(&server.get("/api/health"));
    let done = watchdog(server.child.id(), IO_TIMEOUT);
    signal(&server.child, libc::SIGINT);
    let status = server.child.wait().expect("wait");
    let _ = done.send(());
    assert!(status.success(), "exit status after SIGINT: {status:?}");
}
