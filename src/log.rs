//! Log lines on stderr: `autopoiesis: …` text, or with `--log-format json`
//! one JSON object per line (`{"ts","level","msg",…}`), and the access log
//! (`--access-log`). Nothing here ever sees an API key, a query string or
//! a body: callers pass the path without its query.
//!
//! The format is a process-wide switch set once at start; the server is
//! one thread, so a relaxed atomic is all it needs (no lock).

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;

static JSON: AtomicBool = AtomicBool::new(false);

/// `--log-format json`: every line from now on is a JSON object.
pub fn set_json(on: bool) {
    JSON.store(on, Ordering::Relaxed);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warn => "warning",
            Level::Error => "error",
        }
    }
}

/// Writes one log line.
pub fn write(level: Level, message: std::fmt::Arguments) {
    let line = format_line(level, &message.to_string(), JSON.load(Ordering::Relaxed));
    emit(&line);
}

/// The line for `message`, text or JSON, with its newline.
pub fn format_line(level: Level, message: &str, json: bool) -> String {
    if json {
        #[derive(Serialize)]
        struct Line<'a> {
            ts: String,
            level: &'static str,
            msg: &'a str,
        }
        let line = Line {
            ts: crate::clock::now_rfc3339(),
            level: level.as_str(),
            msg: message,
        };
        let mut out = serde_json::to_string(&line).unwrap_or_default();
        out.push('\n');
        out
    } else {
        match level {
            Level::Info => format!("autopoiesis: {message}\n"),
            _ => format!("autopoiesis: {}: {message}\n", level.as_str()),
        }
    }
}

/// One request (or upgrade) as the access log records it.
#[derive(Debug, Serialize)]
pub struct Access<'a> {
    /// The client's address (the peer, or the client behind a trusted proxy).
    pub peer: Option<&'a str>,
    pub method: &'a str,
    /// Without the query string.
    pub path: &'a str,
    pub status: u16,
    /// Bytes of the response (head and body; for an upgrade or an event
    /// stream, its head).
    pub bytes: usize,
    /// From the request's first byte to its response being queued.
    pub us: u128,
}

/// Writes an access-log line.
pub fn access(entry: &Access) {
    emit(&format_access(entry, JSON.load(Ordering::Relaxed)));
}

pub fn format_access(entry: &Access, json: bool) -> String {
    // The path is the client's text: keep it on one line and printable.
    let path: String = entry
        .path
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    let peer = entry.peer.unwrap_or("-");
    if json {
        #[derive(Serialize)]
        struct Line<'a> {
            ts: String,
            level: &'static str,
            msg: &'static str,
            peer: &'a str,
            method: &'a str,
            path: &'a str,
            status: u16,
            bytes: usize,
            us: u128,
        }
        let line = Line {
            ts: crate::clock::now_rfc3339(),
            level: "info",
            msg: "access",
            peer,
            method: entry.method,
            path: &path,
            status: entry.status,
            bytes: entry.bytes,
            us: entry.us,
        };
        let mut out = serde_json::to_string(&line).unwrap_or_default();
        out.push('\n');
        out
    } else {
        format!(
            "autopoiesis: access {peer} {} {path} {} {}B {}us\n",
            entry.method, entry.status, entry.bytes, entry.us
        )
    }
}

fn emit(line: &str) {
    // One write per line, so lines from this process never interleave.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// `info!("…", args)`: a log line at level info.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Info, format_args!($($arg)*)) };
}

/// `warn!("…", args)`: a log line at level warning.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Warn, format_args!($($arg)*)) };
}

/// `error!("…", args)`: a log line at level error.
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Error, format_args!($($arg)*)) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_json_lines() {
        assert_eq!(
            format_line(Level::Info, "hello", false),
            "autopoiesis: hello\n"
        );
        assert_eq!(
            format_line(Level::Warn, "careful", false),
            "autopoiesis: warning: careful\n"
        );
        let json = format_line(Level::Error, "a \"quoted\"\nline", true);
        assert!(json.ends_with("}\n") && json.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["level"], "error");
        assert_eq!(v["msg"], "a \"quoted\"\nline");
        assert!(v["ts"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn access_lines() {
        let entry = Access {
            peer: Some("127.0.0.1:5000"),
            method: "GET",
            path: "/api/sessions/a\nb/history",
            status: 200,
            bytes: 42,
            us: 17,
        };
        assert_eq!(
            format_access(&entry, false),
            "autopoiesis: access 127.0.0.1:5000 GET /api/sessions/a?b/history 200 42B 17us\n"
        );
        let v: serde_json::Value = serde_json::from_str(&format_access(&entry, true)).unwrap();
        assert_eq!(v["msg"], "access");
        assert_eq!(v["peer"], "127.0.0.1:5000");
        assert_eq!(v["status"], 200);
        assert_eq!(v["path"], "/api/sessions/a?b/history");
    }
}
