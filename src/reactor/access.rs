//! Accounting of answered requests: `autopoiesis_http_requests_total` and
//! the access log (`--access-log`), at the moment a response (or an
//! upgrade, or an event stream's head) is queued.

use std::net::SocketAddr;
use std::time::Instant;

use crate::log::{self, Access};
use crate::metrics::TransportMetrics;

/// What is remembered of a request until its response is queued.
#[derive(Debug)]
pub struct RequestLog {
    /// The route template (`/api/sessions/{id}/history`, `other`).
    pub route: &'static str,
    /// Method and path without the query; kept only with `--access-log`.
    pub line: Option<(String, String)>,
    /// When its first byte arrived.
    pub started: Instant,
}

impl RequestLog {
    /// A request the parser refused before it had a method and path.
    pub fn unparsed(started: Instant) -> Self {
        RequestLog {
            route: "other",
            line: None,
            started,
        }
    }
}

/// Counts the answered request and, with `access_log`, writes its line
/// (timed to now, not to the loop iteration's clock).
pub fn record(
    metrics: &mut TransportMetrics,
    access_log: bool,
    peer: Option<SocketAddr>,
    request: &RequestLog,
    status: u16,
    bytes: usize,
) {
    metrics.request(request.route, status);
    if access_log {
        let now = Instant::now();
        let (method, path) = request
            .line
            .as_ref()
            .map_or(("-", "-"), |(m, p)| (m.as_str(), p.as_str()));
        log::access(&Access {
            peer,
            method,
            path,
            status,
            bytes,
            us: now.saturating_duration_since(request.started).as_micros(),
        });
    }
}
