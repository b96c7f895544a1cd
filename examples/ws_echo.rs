//! A WebSocket echo server on the server's own reactor: the target of the
//! Autobahn|Testsuite (`tests/autobahn/run.sh`).
//!
//! It runs the same reactor, connection state machine, handshake and
//! WebSocket code as `autopoiesis serve`; only the [`Service`] differs:
//! every path upgrades, and every text or binary message comes back as it
//! came. Messages up to 16 MiB.
//!
//! ```text
//! cargo build --release --example ws_echo
//! target/release/examples/ws_echo --port 9001    # 0 = any free port
//! ```

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use autopoiesis::config::Config;
use autopoiesis::http::{Request, Response};
use autopoiesis::reactor::Server;
use autopoiesis::service::{HttpOutcome, Service, Upgrade};
use autopoiesis::sink::{ConnId, Sink};
use autopoiesis::ws;

/// Autobahn's largest messages (case 9.1.6, 9.2.6) are 16 MiB.
const MAX_MESSAGE: usize = 16 << 20;

struct Echo;

impl Service for Echo {
    fn handle_http(
        &mut self,
        req: Request,
        _from: ConnId,
        _now: Instant,
        _sink: &mut dyn Sink,
    ) -> HttpOutcome {
        if !req.head.upgrade_websocket {
            return HttpOutcome::Respond(
                Response::detail(426, "WebSocket only").with_header("upgrade", "websocket"),
            );
        }
        match ws::check_handshake(&req.head) {
            Ok(accept) => HttpOutcome::Upgrade(Upgrade {
                session_id: String::new(),
                response: ws::switching_protocols(&accept, None),
                authorized: true,
                since: None,
            }),
            Err(refusal) => HttpOutcome::Respond(refusal),
        }
    }

    fn subscribed(&mut self, _: ConnId, _: &str, _: Option<u64>, _: Instant, _: &mut dyn Sink) {}

    fn unsubscribed(&mut self, _: ConnId, _: &str, _: Instant) {}

    fn ws_text(&mut self, conn: ConnId, _: &str, text: &str, _: Instant, sink: &mut dyn Sink) {
        sink.send(conn, &ws::data_frame(ws::OPCODE_TEXT, text.as_bytes()));
    }

    fn ws_binary(&mut self, conn: ConnId, _: &str, data: &[u8], sink: &mut dyn Sink) {
        sink.send(conn, &ws::data_frame(ws::OPCODE_BINARY, data));
    }
}

fn main() -> ExitCode {
    let mut port = 9001u16;
    let mut args = lexopt::Parser::from_env();
    while let Ok(Some(arg)) = args.next() {
        match arg {
            lexopt::Arg::Long("port") => {
                match args
                    .value()
                    .ok()
                    .and_then(|v| v.into_string().ok()?.parse().ok())
                {
                    Some(p) => port = p,
                    None => return usage(),
                }
            }
            _ => return usage(),
        }
    }
    let mut config = Config {
        port,
        ..Config::default()
    };
    config.limits.max_ws_message_bytes = MAX_MESSAGE;
    // A client that sends many large messages before reading its echoes
    // must not be cut off by the output bound meant for chat clients.
    config.limits.max_ws_output_bytes = 4 * MAX_MESSAGE;
    let mut server = match Server::with_service(config, Box::new(Echo)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ws_echo: {e}");
            return ExitCode::from(1);
        }
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening on http://{}", server.local_addr());
    let _ = out.flush();
    drop(out);
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ws_echo: {e}");
            ExitCode::from(1)
        }
    }
}

fn usage() -> ExitCode {
    eprintln!("usage: ws_echo [--port N]");
    ExitCode::from(2)
}
