//! What a request path names: the route table of the contract, path
//! decoding, and where a stream resumes (`?since=`, `Last-Event-ID`).

use crate::http::Head;

/// A REST route; ids borrow from the (decoded) request path.
pub(super) enum Route<'a> {
    /// `/`: the built-in chat page.
    Page,
    Health,
    Metrics,
    Sessions,
    Session(&'a str),
    History(&'a str),
    Chat,
    /// `/api/sessions/{id}/chat`: a chat routed by its session.
    SessionChat(&'a str),
    /// `/api/sessions/{id}/events`: Server-Sent Events.
    Events(&'a str),
}

/// What a request path names: a REST route or the WebSocket endpoint.
pub(super) enum Target<'a> {
    Rest(Route<'a>),
    WebSocket(&'a str),
}

impl Route<'_> {
    pub(super) fn allowed(&self) -> &'static [&'static str] {
        match self {
            Route::Page | Route::Health | Route::Metrics | Route::History(_) | Route::Events(_) => {
                &["GET"]
            }
            Route::Sessions => &["GET", "POST"],
            Route::Session(_) => &["DELETE"],
            Route::Chat | Route::SessionChat(_) => &["POST"],
        }
    }

    /// Routes anyone may use: no key, no Origin check.
    pub(super) fn public(&self) -> bool {
        matches!(self, Route::Page | Route::Health)
    }

    /// The route's template, as metrics label it.
    pub(super) fn template(&self) -> &'static str {
        match self {
            Route::Page => "/",
            Route::Health => "/api/health",
            Route::Metrics => "/metrics",
            Route::Sessions => "/api/sessions",
            Route::Session(_) => "/api/sessions/{id}",
            Route::History(_) => "/api/sessions/{id}/history",
            Route::Chat => "/api/chat",
            Route::SessionChat(_) => "/api/sessions/{id}/chat",
            Route::Events(_) => "/api/sessions/{id}/events",
        }
    }
}

impl Target<'_> {
    pub(super) fn template(&self) -> &'static str {
        match self {
            Target::Rest(route) => route.template(),
            Target::WebSocket(_) => "/api/ws/{id}",
        }
    }
}

/// The route `path` (percent-decoded) names, without allocating.
pub(super) fn route(path: &str) -> Option<Target<'_>> {
    match path {
        "/" => return Some(Target::Rest(Route::Page)),
        "/metrics" => return Some(Target::Rest(Route::Metrics)),
        _ => {}
    }
    let rest = path.strip_prefix("/api/")?;
    // At most four segments matter (a fourth means no route).
    let mut parts = rest.split('/');
    let segments = (parts.next(), parts.next(), parts.next(), parts.next());
    let route = match segments {
        (Some("health"), None, ..) => Route::Health,
        (Some("sessions"), None, ..) => Route::Sessions,
        (Some("chat"), None, ..) => Route::Chat,
        (Some("sessions"), Some(id), None, _) if !id.is_empty() => Route::Session(id),
        (Some("sessions"), Some(id), Some("history"), None) if !id.is_empty() => Route::History(id),
        (Some("sessions"), Some(id), Some("chat"), None) if !id.is_empty() => {
            Route::SessionChat(id)
        }
        (Some("sessions"), Some(id), Some("events"), None) if !id.is_empty() => Route::Events(id),
        (Some("ws"), Some(id), None, _) if !id.is_empty() => return Some(Target::WebSocket(id)),
        _ => return None,
    };
    Some(Target::Rest(route))
}

/// The metrics label of a raw (still percent-encoded) request path.
pub fn template(raw_path: &str) -> &'static str {
    route(&percent_decode(raw_path)).map_or("other", |t| t.template())
}

/// `%XX` decoding of a request path (as ASGI servers hand it to FastAPI);
/// bytes that are not UTF-8 become U+FFFD, which no route or id accepts.
pub fn percent_decode(path: &str) -> std::borrow::Cow<'_, str> {
    if !path.contains('%') {
        return std::borrow::Cow::Borrowed(path);
    }
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    std::borrow::Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// Where an event stream resumes: `Last-Event-ID: N` (what `EventSource`
/// sends when it reconnects) or else `?since=N`. Err: the 400 message.
pub(super) fn resume_point(head: &Head) -> Result<Option<u64>, &'static str> {
    if let Some(value) = &head.last_event_id {
        let ok = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
        return match ok.then(|| value.parse::<u64>().ok()).flatten() {
            Some(n) => Ok(Some(n)),
            None => Err("Invalid Last-Event-ID"),
        };
    }
    match head.query.as_deref().and_then(since_param) {
        Some(Ok(n)) => Ok(Some(n)),
        Some(Err(())) => Err("Invalid since"),
        None => Ok(None),
    }
}

/// `since=N` from a query string: None when absent, Err when not a
/// non-negative integer.
pub fn since_param(query: &str) -> Option<Result<u64, ()>> {
    let value = query
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(k, _)| *k == "since")?
        .1;
    let ok = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
    Some(if ok {
        value.parse().map_err(|_| ())
    } else {
        Err(())
    })
}
