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
    /// `/api/sessions/{id}/approvals`: tool calls waiting for a decision.
    Approvals(&'a str),
    /// `/api/ag-ui`: a run of the AG-UI protocol.
    AgUi,
    /// `/openapi.json`, `/asyncapi.json`, `/docs`: the API's documents.
    OpenApi,
    AsyncApi,
    Docs,
}

/// Every route template the router serves and its methods, the WebSocket
/// endpoint included: what [`Route::allowed`] answers (and `Allow` lists),
/// and what the OpenAPI document must describe (a unit test checks both).
pub(crate) const ROUTES: &[(&str, &[&str])] = &[
    ("/", &["GET"]),
    ("/api/health", &["GET"]),
    ("/metrics", &["GET"]),
    ("/api/sessions", &["GET", "POST"]),
    ("/api/sessions/{id}", &["DELETE"]),
    ("/api/sessions/{id}/history", &["GET"]),
    ("/api/chat", &["POST"]),
    ("/api/sessions/{id}/chat", &["POST"]),
    ("/api/sessions/{id}/events", &["GET"]),
    ("/api/sessions/{id}/approvals", &["GET", "POST"]),
    ("/api/ag-ui", &["POST"]),
    ("/api/ws/{id}", &["GET"]),
    ("/openapi.json", &["GET"]),
    ("/asyncapi.json", &["GET"]),
    ("/docs", &["GET"]),
];

/// The methods of `template` in [`ROUTES`].
fn methods(template: &str) -> &'static [&'static str] {
    ROUTES
        .iter()
        .find(|(t, _)| *t == template)
        .map_or(&[], |(_, m)| m)
}

/// What a request path names: a REST route or the WebSocket endpoint.
pub(super) enum Target<'a> {
    Rest(Route<'a>),
    WebSocket(&'a str),
}

impl Route<'_> {
    pub(super) fn allowed(&self) -> &'static [&'static str] {
        methods(self.template())
    }

    /// Routes anyone may use: no key, no Origin check.
    pub(super) fn public(&self) -> bool {
        matches!(
            self,
            Route::Page | Route::Health | Route::OpenApi | Route::AsyncApi | Route::Docs
        )
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
            Route::Approvals(_) => "/api/sessions/{id}/approvals",
            Route::AgUi => "/api/ag-ui",
            Route::OpenApi => "/openapi.json",
            Route::AsyncApi => "/asyncapi.json",
            Route::Docs => "/docs",
        }
    }
}

impl Target<'_> {
    pub(super) fn allowed(&self) -> &'static [&'static str] {
        methods(self.template())
    }

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
        "/openapi.json" => return Some(Target::Rest(Route::OpenApi)),
        "/asyncapi.json" => return Some(Target::Rest(Route::AsyncApi)),
        "/docs" => return Some(Target::Rest(Route::Docs)),
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
        (Some("ag-ui"), None, ..) => Route::AgUi,
        (Some("sessions"), Some(id), None, _) if !id.is_empty() => Route::Session(id),
        (Some("sessions"), Some(id), Some("history"), None) if !id.is_empty() => Route::History(id),
        (Some("sessions"), Some(id), Some("chat"), None) if !id.is_empty() => {
            Route::SessionChat(id)
        }
        (Some("sessions"), Some(id), Some("events"), None) if !id.is_empty() => Route::Events(id),
        (Some("sessions"), Some(id), Some("approvals"), None) if !id.is_empty() => {
            Route::Approvals(id)
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Each template of [`ROUTES`] routes back to itself, once.
    #[test]
    fn the_route_table_is_what_the_router_serves() {
        for (i, (template, methods)) in ROUTES.iter().enumerate() {
            assert!(!methods.is_empty(), "{template}");
            assert!(
                ROUTES[..i].iter().all(|(t, _)| t != template),
                "{template} twice"
            );
            let path = template.replace("{id}", "abc");
            let target = route(&path).unwrap_or_else(|| panic!("{path} is not routed"));
            assert_eq!(target.template(), *template);
            if let Target::Rest(r) = target {
                assert_eq!(r.allowed(), *methods);
            }
        }
    }

    /// The OpenAPI document marks exactly the public routes as needing no
    /// key (`"security": []`).
    #[test]
    fn the_openapi_document_knows_which_routes_are_public() {
        let doc: serde_json::Value = serde_json::from_str(crate::docs::OPENAPI_JSON).expect("JSON");
        for (template, methods) in ROUTES {
            let public = match route(&template.replace("{id}", "abc")) {
                Some(Target::Rest(r)) => r.public(),
                _ => false,
            };
            for method in *methods {
                let op = &doc["paths"][template][method.to_ascii_lowercase()];
                let open = op.get("security") == Some(&serde_json::json!([]));
                assert_eq!(open, public, "{method} {template}");
            }
        }
    }
}
