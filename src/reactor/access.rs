//! Accounting of answered requests: `autopoiesis_http_requests_total` and
//! the access log (`--access-log`), at the moment a response (or an
//! upgrade, or an event stream's head) is queued.

use std::net::{IpAddr, SocketAddr};
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
    /// The client's address from `X-Forwarded-For` when the peer is a
    /// `--trusted-proxy` (access log only).
    pub client: Option<IpAddr>,
}

impl RequestLog {
    /// A request the parser refused before it had a method and path.
    pub fn unparsed(started: Instant) -> Self {
        RequestLog {
            route: "other",
            line: None,
            started,
            client: None,
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
        let peer = match request.client {
            Some(ip) => Some(ip.to_string()),
            None => peer.map(|p| p.to_string()),
        };
        log::access(&Access {
            peer: peer.as_deref(),
            method,
            path,
            status,
            bytes,
            us: now.saturating_duration_since(request.started).as_micros(),
        });
    }
}

/// The client behind trusted proxies: walking `X-Forwarded-For` from the
/// right (the entry the nearest proxy appended), the first address that is
/// not itself a trusted proxy. None when the peer is not trusted (its
/// header could say anything) or the header names no such address.
pub fn forwarded_client(
    peer: Option<SocketAddr>,
    forwarded_for: Option<&str>,
    trusted: &[IpAddr],
) -> Option<IpAddr> {
    let peer = peer?.ip();
    if !trusted.contains(&peer) {
        return None;
    }
    forwarded_for?
        .rsplit(',')
        .map(|a| a.trim().parse::<IpAddr>())
        .map_while(Result::ok)
        .find(|ip| !trusted.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_counts_only_from_trusted_proxies() {
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let peer = Some(SocketAddr::new(proxy, 4000));
        let stranger = Some("192.0.2.9:4000".parse().unwrap());
        let xff = Some("198.51.100.7, 203.0.113.5");
        let client = |p, x, t: &[IpAddr]| forwarded_client(p, x, t).map(|ip| ip.to_string());
        assert_eq!(client(peer, xff, &[proxy]).as_deref(), Some("203.0.113.5"));
        // The nearest hop is another trusted proxy: one further left.
        let chain = [proxy, "203.0.113.5".parse().unwrap()];
        assert_eq!(client(peer, xff, &chain).as_deref(), Some("198.51.100.7"));
        assert_eq!(client(stranger, xff, &[proxy]), None);
        assert_eq!(client(peer, None, &[proxy]), None);
        assert_eq!(client(peer, Some("garbage"), &[proxy]), None);
        assert_eq!(client(peer, xff, &[]), None);
    }
}
