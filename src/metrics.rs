//! Prometheus metrics: plain integers in the loop's own state, rendered in
//! the text exposition format (`text/plain; version=0.0.4`) at scrape time.
//!
//! Counting is an integer add on the hot path: no allocation, no label
//! strings built per request (labels are `&'static str`s, and the table of
//! HTTP `(route, status)` pairs only grows by the few pairs that occur).
//! Histograms have fixed buckets. Two owners: the reactor keeps
//! [`TransportMetrics`] (requests, connections, events sent, closes, the
//! journal), the session table keeps [`TurnMetrics`]; the API's `/metrics`
//! handler asks both to write themselves into one [`Exposition`].

use std::fmt::Write as _;

/// The exposition format's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Prometheus' text format, written metric by metric.
#[derive(Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    pub fn new() -> Self {
        Exposition {
            out: String::with_capacity(4096),
        }
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.out.into_bytes()
    }

    /// `# HELP` and `# TYPE` lines of a metric family.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One sample line; label values are escaped.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"");
                for c in v.chars() {
                    match c {
                        '\\' => self.out.push_str("\\\\"),
                        '"' => self.out.push_str("\\\""),
                        '\n' => self.out.push_str("\\n"),
                        c => self.out.push(c),
                    }
                }
                self.out.push('"');
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// A family with a single unlabeled sample.
    pub fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.family(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0;
        for (bound, count) in h.bounds.iter().zip(&h.counts) {
            cumulative += count;
            self.sample(&bucket, &[("le", &format_bound(*bound))], cumulative);
        }
        self.sample(&bucket, &[("le", "+Inf")], h.count);
        self.sample(&format!("{name}_sum"), &[], h.sum);
        self.sample(&format!("{name}_count"), &[], h.count);
    }
}

fn format_bound(b: f64) -> String {
    // `0.005`, `1`, `2.5`: Prometheus' own client's formatting.
    let s = format!("{b}");
    if s.contains('.') || s.contains('e') {
        s
    } else {
        format!("{s}.0")
    }
}

/// A histogram with fixed buckets (upper bounds, in seconds).
#[derive(Clone, Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, value: f64) {
        if let Some(i) = self.bounds.iter().position(|&b| value <= b) {
            self.counts[i] += 1;
        }
        self.sum += value;
        self.count += 1;
    }

    pub fn count(&self) -> u64 {
        self.count
    }
}

/// Turn durations: a token stream of a local model runs seconds to minutes.
pub const TURN_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];
/// fsync: sub-millisecond on a good SSD, tens of ms on a Pi's SD card.
pub const FSYNC_BUCKETS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// One loop iteration: tens of µs normally; anything in the upper buckets
/// kept every other client waiting that long (what `benches/stall.rs`
/// provokes).
pub const LOOP_BUCKETS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
];

/// How a turn ended, as `autopoiesis_turns_total{outcome}` counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Done,
    Error,
    Cancelled,
    /// Ended asking a person to approve tool calls.
    ApprovalRequired,
}

/// What the session table counts.
#[derive(Clone, Debug)]
pub struct TurnMetrics {
    /// Turns running now and waiting now.
    pub running: u64,
    pub queued: u64,
    pub done: u64,
    pub error: u64,
    pub cancelled: u64,
    pub approval_required: u64,
    /// From a turn's start to its end (turns that ran).
    pub duration: Histogram,
    /// `token` events broadcast.
    pub tokens: u64,
    /// Sessions that dropped their retained events, idle without clients
    /// (`--retain-idle`).
    pub retained_dropped: u64,
    /// Cold histories read back from the journal, and those that could
    /// not be; how long each took, asked to answered.
    pub history_loads_ok: u64,
    pub history_loads_failed: u64,
    pub history_load: Histogram,
    /// Histories that left RAM after `--history-idle`.
    pub histories_evicted: u64,
}

impl Default for TurnMetrics {
    fn default() -> Self {
        TurnMetrics {
            running: 0,
            queued: 0,
            done: 0,
            error: 0,
            cancelled: 0,
            approval_required: 0,
            duration: Histogram::new(TURN_BUCKETS),
            tokens: 0,
            retained_dropped: 0,
            history_loads_ok: 0,
            history_loads_failed: 0,
            history_load: Histogram::new(FSYNC_BUCKETS),
            histories_evicted: 0,
        }
    }
}

impl TurnMetrics {
    pub fn ended(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Done => self.done += 1,
            Outcome::Error => self.error += 1,
            Outcome::Cancelled => self.cancelled += 1,
            Outcome::ApprovalRequired => self.approval_required += 1,
        }
    }

    /// `sessions` held, `resident` of them holding more than their
    /// directory entry in RAM.
    pub fn write(&self, sessions: usize, resident: usize, e: &mut Exposition) {
        e.single("autopoiesis_sessions", "gauge", "Sessions held.", sessions);
        e.single(
            "autopoiesis_sessions_resident",
            "gauge",
            "Sessions holding more than their directory entry in RAM (a history, retained events, a turn).",
            resident,
        );
        e.family(
            "autopoiesis_turns_total",
            "counter",
            "Turns ended, by outcome.",
        );
        for (outcome, n) in [
            ("done", self.done),
            ("error", self.error),
            ("cancelled", self.cancelled),
            ("approval_required", self.approval_required),
        ] {
            e.sample("autopoiesis_turns_total", &[("outcome", outcome)], n);
        }
        e.single(
            "autopoiesis_turns_running",
            "gauge",
            "Turns running now.",
            self.running,
        );
        e.single(
            "autopoiesis_turns_queued",
            "gauge",
            "Turns waiting for their session's running turn.",
            self.queued,
        );
        e.histogram(
            "autopoiesis_turn_duration_seconds",
            "Time from a turn's start to its end.",
            &self.duration,
        );
        e.single(
            "autopoiesis_tokens_total",
            "counter",
            "Token events broadcast.",
            self.tokens,
        );
        e.single(
            "autopoiesis_retained_dropped_total",
            "counter",
            "Sessions that dropped their retained events after --retain-idle without a client.",
            self.retained_dropped,
        );
        e.single(
            "autopoiesis_histories_evicted_total",
            "counter",
            "Histories that left RAM after --history-idle (read back from the journal when needed).",
            self.histories_evicted,
        );
        e.family(
            "autopoiesis_history_loads_total",
            "counter",
            "Cold histories read back from the journal, by outcome.",
        );
        for (outcome, n) in [
            ("ok", self.history_loads_ok),
            ("error", self.history_loads_failed),
        ] {
            e.sample(
                "autopoiesis_history_loads_total",
                &[("outcome", outcome)],
                n,
            );
        }
        e.histogram(
            "autopoiesis_history_load_seconds",
            "Time from a cold history's read being asked for to its answer.",
            &self.history_load,
        );
    }
}

/// Why the server closed a WebSocket client or event stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    Slow,
    Idle,
    TooBig,
    Protocol,
    Shutdown,
}

impl CloseReason {
    const ALL: [CloseReason; 5] = [
        CloseReason::Slow,
        CloseReason::Idle,
        CloseReason::TooBig,
        CloseReason::Protocol,
        CloseReason::Shutdown,
    ];

    fn label(self) -> &'static str {
        match self {
            CloseReason::Slow => "slow",
            CloseReason::Idle => "idle",
            CloseReason::TooBig => "too_big",
            CloseReason::Protocol => "protocol",
            CloseReason::Shutdown => "shutdown",
        }
    }

    /// The reason behind a close code the server sends (None: not one of
    /// the counted reasons, e.g. 4001 or a normal close).
    pub fn of_code(code: u16) -> Option<CloseReason> {
        use crate::ws::close;
        match code {
            close::POLICY => Some(CloseReason::Slow),
            close::TOO_BIG => Some(CloseReason::TooBig),
            close::PROTOCOL_ERROR | close::INVALID_PAYLOAD => Some(CloseReason::Protocol),
            _ => None,
        }
    }
}

/// Connections open now, by kind (counted at scrape time).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Connections {
    pub http: usize,
    pub websocket: usize,
    pub sse: usize,
}

/// What the reactor counts.
#[derive(Clone, Debug)]
pub struct TransportMetrics {
    /// `(route template, status) → requests`; a handful of entries.
    http: Vec<(&'static str, u16, u64)>,
    pub ws_received: u64,
    pub events_ws: u64,
    pub events_sse: u64,
    closed: [u64; 5],
    pub journal_bytes: u64,
    pub fsync: Histogram,
    /// Each loop iteration's time, from the readiness it woke for to its
    /// last write, and the longest one since start (Redis' `LATENCY`).
    iterations: Histogram,
    longest_iteration: f64,
}

impl Default for TransportMetrics {
    fn default() -> Self {
        TransportMetrics {
            http: Vec::new(),
            ws_received: 0,
            events_ws: 0,
            events_sse: 0,
            closed: [0; 5],
            journal_bytes: 0,
            fsync: Histogram::new(FSYNC_BUCKETS),
            iterations: Histogram::new(LOOP_BUCKETS),
            longest_iteration: 0.0,
        }
    }
}

impl TransportMetrics {
    /// A loop iteration that took `seconds`.
    pub fn iteration(&mut self, seconds: f64) {
        self.iterations.observe(seconds);
        self.longest_iteration = self.longest_iteration.max(seconds);
    }

    pub fn request(&mut self, route: &'static str, status: u16) {
        match self
            .http
            .iter_mut()
            .find(|(r, s, _)| *s == status && *r == route)
        {
            Some(entry) => entry.2 += 1,
            None => self.http.push((route, status, 1)),
        }
    }

    pub fn closed(&mut self, reason: CloseReason) {
        self.closed[reason as usize] += 1;
    }

    /// Requests counted for `route` with `status` (for tests).
    pub fn requests(&self, route: &str, status: u16) -> u64 {
        self.http
            .iter()
            .find(|(r, s, _)| *r == route && *s == status)
            .map_or(0, |e| e.2)
    }

    pub fn write(&self, connections: Connections, e: &mut Exposition) {
        e.family(
            "autopoiesis_connections",
            "gauge",
            "Open connections, by kind.",
        );
        for (kind, n) in [
            ("http", connections.http),
            ("websocket", connections.websocket),
            ("sse", connections.sse),
        ] {
            e.sample("autopoiesis_connections", &[("kind", kind)], n);
        }
        e.family(
            "autopoiesis_http_requests_total",
            "counter",
            "HTTP requests answered (upgrades and event streams included), by route template and status.",
        );
        let mut rows = self.http.clone();
        rows.sort_unstable();
        for (route, status, n) in rows {
            let status = status.to_string();
            e.sample(
                "autopoiesis_http_requests_total",
                &[("route", route), ("status", &status)],
                n,
            );
        }
        e.single(
            "autopoiesis_websocket_messages_received_total",
            "counter",
            "WebSocket text and binary messages received.",
            self.ws_received,
        );
        e.family(
            "autopoiesis_events_sent_total",
            "counter",
            "Session events delivered, one per client, by transport.",
        );
        e.sample(
            "autopoiesis_events_sent_total",
            &[("transport", "websocket")],
            self.events_ws,
        );
        e.sample(
            "autopoiesis_events_sent_total",
            &[("transport", "sse")],
            self.events_sse,
        );
        e.family(
            "autopoiesis_clients_closed_total",
            "counter",
            "WebSocket clients and event streams the server closed, by reason.",
        );
        for reason in CloseReason::ALL {
            e.sample(
                "autopoiesis_clients_closed_total",
                &[("reason", reason.label())],
                self.closed[reason as usize],
            );
        }
        e.single(
            "autopoiesis_journal_bytes",
            "gauge",
            "Size of the session journal.",
            self.journal_bytes,
        );
        e.histogram(
            "autopoiesis_journal_fsync_seconds",
            "Time the journal's fsyncs took.",
            &self.fsync,
        );
        e.histogram(
            "autopoiesis_loop_iteration_seconds",
            "Time each event-loop iteration took; every other client waits that long.",
            &self.iterations,
        );
        e.single(
            "autopoiesis_loop_iteration_max_seconds",
            "gauge",
            "The longest event-loop iteration since start.",
            self.longest_iteration,
        );
    }
}

/// The process collector's metrics, read from `/proc/self` at scrape time.
pub fn write_process(e: &mut Exposition) {
    let page = page_size();
    let ticks = clock_ticks();
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after ')'.
    let fields: Vec<&str> = stat
        .rfind(')')
        .map(|i| stat[i + 2..].split(' ').collect())
        .unwrap_or_default();
    let field = |n: usize| -> f64 {
        fields
            .get(n)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // stat(5): utime is field 14, stime 15, starttime 22, rss 24 (1-based;
    // `fields` starts at field 3).
    let cpu = (field(11) + field(12)) / ticks;
    let rss = field(21) * page;
    let start = boot_time() + field(19) / ticks;
    e.single(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        cpu,
    );
    e.single(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        rss,
    );
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count);
    e.single(
        "process_open_fds",
        "gauge",
        "Number of open file descriptors.",
        fds,
    );
    e.single(
        "process_max_fds",
        "gauge",
        "Maximum number of open file descriptors.",
        max_fds(),
    );
    e.single(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        start,
    );
}

fn page_size() -> f64 {
    // SAFETY: sysconf reads a constant.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as f64
    } else {
        4096.0
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf reads a constant.
    let n = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if n > 0 {
        n as f64
    } else {
        100.0
    }
}

fn boot_time() -> f64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

fn max_fds() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loop_iterations_are_a_histogram_and_a_maximum() {
        let mut m = TransportMetrics::default();
        for seconds in [0.00005, 0.003, 0.0002] {
            m.iteration(seconds);
        }
        let mut e = Exposition::new();
        m.write(
            Connections {
                http: 0,
                websocket: 0,
                sse: 0,
            },
            &mut e,
        );
        let text = String::from_utf8(e.into_bytes()).unwrap();
        assert!(
            text.contains("autopoiesis_loop_iteration_seconds_count 3\n"),
            "{text}"
        );
        assert!(text.contains("autopoiesis_loop_iteration_seconds_bucket{le=\"0.001\"} 2\n"));
        assert!(text.contains("autopoiesis_loop_iteration_seconds_bucket{le=\"0.005\"} 3\n"));
        assert!(text.contains("autopoiesis_loop_iteration_max_seconds 0.003\n"));
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Histogram::new(&[0.1, 1.0]);
        for v in [0.05, 0.5, 0.5, 5.0] {
            h.observe(v);
        }
        let mut e = Exposition::new();
        e.histogram("t_seconds", "Help.", &h);
        let text = String::from_utf8(e.into_bytes()).unwrap();
        assert!(text.contains("t_seconds_bucket{le=\"0.1\"} 1\n"), "{text}");
        assert!(text.contains("t_seconds_bucket{le=\"1.0\"} 3\n"), "{text}");
        assert!(text.contains("t_seconds_bucket{le=\"+Inf\"} 4\n"), "{text}");
        assert!(text.contains("t_seconds_count 4\n"), "{text}");
        assert!(text.contains("t_seconds_sum 6.05\n"), "{text}");
    }

    #[test]
    fn request_counts_by_route_and_status() {
        let mut m = TransportMetrics::default();
        m.request("/api/health", 200);
        m.request("/api/health", 200);
        m.request("other", 404);
        assert_eq!(m.requests("/api/health", 200), 2);
        assert_eq!(m.requests("other", 404), 1);
        let mut e = Exposition::new();
        m.write(Connections::default(), &mut e);
        let text = String::from_utf8(e.into_bytes()).unwrap();
        assert!(text
            .contains("autopoiesis_http_requests_total{route=\"/api/health\",status=\"200\"} 2\n"));
        assert!(text.contains("autopoiesis_clients_closed_total{reason=\"too_big\"} 0\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        let mut e = Exposition::new();
        e.sample("m", &[("v", "a\"b\\c\nd")], 1);
        assert_eq!(
            String::from_utf8(e.into_bytes()).unwrap(),
            "m{v=\"a\\\"b\\\\c\\nd\"} 1\n"
        );
    }
}
