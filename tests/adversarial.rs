//! Clients that misbehave, against the real binary over real sockets:
//! slowloris, thousands of idle WebSockets, a reader that never reads,
//! EMFILE on accept, garbage after the upgrade, connect-then-reset floods,
//! cross-site origins. Every wait is bounded.

mod common;
use common::*;

use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// User + system CPU time of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    // Fields after the command name (which may hold spaces) start after ')'.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Raises this process's soft open-file limit to the hard limit.
fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    lim.rlim_cur
}

/// Waits (bounded) until `check` holds, polling every 20 ms.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + IO_TIMEOUT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn slowloris_is_cut_off_at_the_header_timeout_while_others_are_served() {
    let s = Server::start(&["--header-timeout", "2"]);
    let mut slow = s.connect();
    let mut writer = slow.try_clone().unwrap();
    let started = Instant::now();
    // One byte every 250 ms, never finishing the head; stops when the
    // server has closed the socket.
    let trickle = std::thread::spawn(move || {
        for b in b"GET /api/health HTTP/1.1\r\nX-Slow: "
            .iter()
            .chain(std::iter::repeat(&b'a'))
        {
            if writer.write_all(&[*b]).is_err() || started.elapsed() > IO_TIMEOUT {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    });
    // Meanwhile other clients are served at once.
    for _ in 0..5 {
        assert_eq!(s.get("/api/health").status, 200);
    }
    let r = read_response(&mut slow).expect("a 408 for the slow client");
    assert_eq!(r.status, 408);
    assert!(closed_by_server(&mut slow));
    trickle.join().unwrap();
}

#[test]
fn ten_thousand_idle_websockets() {
    let have = raise_nofile();
    let n: usize = 10_000;
    assert!(
        have as usize > n + 100,
        "open-file hard limit {have} is too low for this test"
    );
    let s = Server::start(&[]);
    let pid = s.child.id();
    // A first client and a turn, so the idle figure includes the warmed-up allocator.
    let mut first = s.ws("/api/ws/hold-0");
    send_json(
        &mut first,
        json!({"op": "message", "data": {"content": "warm up"}}),
    );
    until_done(&mut first);
    let idle = rss_kib(pid);

    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        clients.push(s.ws(&format!("/api/ws/hold-{}", i % 100)));
    }
    // Every client is subscribed: a turn on one session reaches its 100 clients.
    send_json(
        &mut clients[0],
        json!({"op": "message", "data": {"content": "to all"}}),
    );
    for c in clients.iter_mut().step_by(100) {
        assert_eq!(until_done(c).last().unwrap()["data"]["content"], "to all");
    }
    let held = rss_kib(pid);
    let per_conn = (held.saturating_sub(idle)) * 1024 / n as u64;
    eprintln!("10k websockets: idle {idle} KiB, holding {held} KiB, {per_conn} B per connection");
    // About 1.7 KB measured (a 1 KiB read buffer, the connection's state,
    // its slab and subscriber entries); room for allocator slack, but a
    // return to 4 KiB read buffers (4.7 KB) fails.
    assert!(per_conn < 3 * 1024, "{per_conn} B per idle WebSocket");

    for mut c in clients {
        let _ = c.close(None);
        let _ = c.flush();
    }
    eventually("server lets go of every connection", || open_fds(pid) < 64);
    // Memory goes back near idle: most of what the connections took is
    // returned (the server trims its heap on its next timer tick).
    let target = idle + (held - idle) / 4;
    eventually("RSS back near idle after the connections close", || {
        rss_kib(pid) < target
    });
    eprintln!("10k websockets: after closing all, {} KiB", rss_kib(pid));
    // And it still serves.
    assert_eq!(s.get("/api/health").status, 200);
}

#[test]
fn a_websocket_that_never_reads_is_closed_and_memory_stays_flat() {
    let s = Server::start(&[]);
    let pid = s.child.id();
    let mut reader = s.ws("/api/ws/flood");
    let stuck = s.ws("/api/ws/flood"); // never reads
    send_json(
        &mut reader,
        json!({"op": "message", "data": {"content": "warm up"}}),
    );
    until_done(&mut reader);
    let before = rss_kib(pid);
    let mut peak = before;
    // Eight turns of 1 MiB of short words: about 17 MB of frames each.
    let words = "ab ".repeat(349_000);
    let mut tokens = 0;
    for _ in 0..8 {
        send_json(
            &mut reader,
            json!({"op": "message", "data": {"content": words}}),
        );
        tokens += until_done(&mut reader).len() - 1;
        peak = peak.max(rss_kib(pid));
    }
    assert_eq!(tokens, 8 * 349_000, "the reading client got every token");
    eprintln!("slow reader: RSS before {before} KiB, peak {peak} KiB");
    // The history keeps each prompt and reply (about 16 MiB for 8 turns),
    // the session retains its last events for resume (1 MiB plus one
    // frame), and a turn's own buffers (prompt, reply, the 1 MiB `done`
    // frame) come and go, and glibc keeps some of what they freed; beyond
    // that, nothing may pile up for the stuck client, whose backlog alone
    // would be 8 x 17 MB.
    let history_kib = 8 * 2 * words.len() as u64 / 1024;
    assert!(
        peak < before + history_kib + 32 * 1024,
        "server RSS grew from {before} to {peak} KiB ({history_kib} KiB of history)"
    );
    // The stuck client was closed: its connection ends. If the kernel had
    // room for it, the last frame is a close with 1008 (a client that reads
    // nothing at all may not get that far: the server lingers 2 s, then drops it).
    let mut tcp = stuck.into_inner();
    let mut tail = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match NoEintr(&mut tcp).read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                tail.extend_from_slice(&buf[..n]);
                let keep = tail.len().saturating_sub(64);
                tail.drain(..keep);
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("stuck client never closed: {e}"),
        }
    }
    if let Some(close_at) = tail.iter().rposition(|&b| b == 0x88) {
        if tail.len() >= close_at + 4
            && tail[close_at + 1] < 126
            && close_at + 2 + usize::from(tail[close_at + 1]) == tail.len()
        {
            assert_eq!(&tail[close_at + 2..close_at + 4], &1008u16.to_be_bytes());
        }
    }
}

#[test]
fn emfile_on_accept_does_not_spin_and_service_resumes() {
    // The server gets 40 descriptors and cannot raise them.
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_autopoiesis"));
    cmd.args(["serve", "--port", "0", "--in-memory"])
        .env_remove("AUTOPOIESIS_API_KEY");
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit is async-signal-safe; nothing else runs in pre_exec.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 40,
                rlim_max: 40,
            };
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            Ok(())
        });
    }
    let (mut child, port) = spawn_listening(cmd.stderr(std::process::Stdio::null()));
    let pid = child.id();
    let connect = || {
        let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        c
    };
    // Fill its descriptors; later connections wait in the listen backlog.
    let mut held: Vec<TcpStream> = (0..60).map(|_| connect()).collect();
    eventually("accepts hit EMFILE", || open_fds(pid) >= 39);
    let t0 = cpu_ticks(pid);
    let wall = Instant::now();
    std::thread::sleep(Duration::from_secs(2)); // the measurement window, not a synchronisation
    let used = cpu_ticks(pid) - t0;
    let ticks_per_s = 100; // USER_HZ on Linux
    let window = wall.elapsed().as_secs_f64() * ticks_per_s as f64;
    // A loop spinning on accept would use the whole window.
    assert!(
        (used as f64) < window * 0.25,
        "server used {used} of {window:.0} ticks while at EMFILE"
    );
    // Free the descriptors: the server accepts the waiting ones and serves again.
    held.clear();
    let mut c = connect();
    c.write_all(&raw_request("GET", "/api/health", None, &[]))
        .unwrap();
    assert_eq!(
        read_response(&mut c).expect("served after EMFILE").status,
        200
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn garbage_after_the_upgrade_closes_only_that_client() {
    let s = Server::start(&[]);
    let mut good = s.ws("/api/ws/g");
    let mut c = raw_ws(&s, "/api/ws/g");
    // An unmasked frame with reserved bits and opcode, then noise.
    c.write_all(&[0xF3, 0x05, b'h', b'e', b'l', b'l', b'o', 0, 1, 2, 3])
        .unwrap();
    let mut all = Vec::new();
    let _ = NoEintr(&mut c).read_to_end(&mut all);
    assert!(all.len() >= 4 && all[0] == 0x88, "a close frame: {all:?}");
    assert_eq!(&all[2..4], &1002u16.to_be_bytes());
    send_json(
        &mut good,
        json!({"op": "message", "data": {"content": "still here"}}),
    );
    assert_eq!(until_done(&mut good).len(), 3);
}

#[test]
fn a_thousand_connect_then_reset_clients() {
    let s = Server::start(&[]);
    let pid = s.child.id();
    let baseline = open_fds(pid);
    for i in 0..1000 {
        let mut c = TcpStream::connect(s.addr()).unwrap();
        if i % 2 == 0 {
            let _ = c.write_all(b"POST /api/chat HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"con");
        }
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setsockopt on our own socket with a properly sized struct.
        unsafe {
            libc::setsockopt(
                c.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                &linger as *const libc::linger as *const libc::c_void,
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
        }
        drop(c); // RST
    }
    assert_eq!(s.get("/api/health").status, 200);
    eventually("every reset connection is released", || {
        open_fds(pid) <= baseline + 1
    });
}

#[test]
fn cross_site_origins_are_refused_without_a_key() {
    let s = Server::start(&["--allowed-origin", "http://ui.example"]);
    let host = s.addr();
    let same = format!("http://{host}");
    let chat = Some(r#"{"content":"x"}"#);
    // `request` sends `Host: test`, so its same-origin page is http://test.
    let r = s.request(
        "POST",
        "/api/chat",
        chat,
        &[
            ("Origin", "http://evil.example"),
            ("Content-Type", "text/plain"),
        ],
    );
    assert_eq!(
        (r.status, r.json()),
        (403, json!({"detail": "Origin not allowed"}))
    );
    assert_eq!(
        s.request("POST", "/api/chat", chat, &[("Origin", "http://test")])
            .status,
        200
    );
    assert_eq!(
        s.request(
            "POST",
            "/api/chat",
            chat,
            &[("Origin", "http://ui.example")]
        )
        .status,
        200
    );
    let err = s
        .ws_with("/api/ws/o", &[("Origin", "http://evil.example")])
        .unwrap_err();
    match err {
        tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 403),
        other => panic!("expected 403, got {other:?}"),
    }
    assert!(s.ws_with("/api/ws/o", &[("Origin", &same)]).is_ok());
    // With a key set, the key is the protection and any origin may connect.
    let keyed = Server::start_with_env(&[], &[("AUTOPOIESIS_API_KEY", "k")]);
    let r = keyed.request(
        "GET",
        "/api/sessions",
        None,
        &[("Origin", "http://evil.example"), ("X-API-Key", "k")],
    );
    assert_eq!(r.status, 200);
}
