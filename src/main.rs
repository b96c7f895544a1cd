//! `autopoiesis`: the command line around [`autopoiesis::reactor::Server`].

#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::process::ExitCode;

use autopoiesis::config::{self, Command};
use autopoiesis::reactor::Server;

fn main() -> ExitCode {
    let command = match config::parse(std::env::args_os().skip(1), |k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("autopoiesis: {e}\nTry 'autopoiesis serve --help'.");
            return ExitCode::from(2);
        }
    };
    let config = match command {
        Command::Help(text) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Command::Version => {
            println!("autopoiesis {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Command::Serve(config) => *config,
    };
    autopoiesis::log::set_json(config.ops.log_json);
    let auth = if config.api_key.is_some() {
        "on"
    } else {
        "off"
    };
    let mut server = match Server::bind(config) {
        Ok(s) => s,
        Err(e) => {
            autopoiesis::error!("{e}");
            return ExitCode::from(1);
        }
    };
    let addr = server.local_addr();
    // Tests and scripts wait for this line; flush it before serving.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening on http://{addr}");
    let _ = out.flush();
    drop(out);
    server.notify_ready();
    autopoiesis::info!("auth {auth}; pid {}", std::process::id());
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            autopoiesis::error!("event loop failed: {e}");
            ExitCode::from(1)
        }
    }
}
