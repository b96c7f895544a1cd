//! The API's machine-readable documents, embedded in the binary and served
//! as they are written: `GET /openapi.json` (OpenAPI 3.1, every REST route),
//! `GET /asyncapi.json` (AsyncAPI 3.0, the WebSocket and the event stream)
//! and `GET /docs` (a self-contained page that renders the OpenAPI
//! document). None of them needs the key.
//!
//! Unit tests keep them true: the OpenAPI `paths` are exactly the router's
//! [`ROUTES`](crate::api) with their methods, every `$ref` resolves, and
//! both documents carry the crate's version. `tests/ops/run.sh` validates
//! them with the reference validators and fuzzes the live server against
//! the OpenAPI document with schemathesis.

use std::sync::OnceLock;

use crate::http::response::{Response, HTML, JSON};

/// The OpenAPI document, as written in `src/docs/openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("openapi.json");
/// The AsyncAPI document, as written in `src/docs/asyncapi.json`.
pub const ASYNCAPI_JSON: &str = include_str!("asyncapi.json");
/// The page that renders the OpenAPI document (`src/docs/docs.html`).
pub const DOCS_HTML: &str = include_str!("docs.html");

/// `200 application/json` with the OpenAPI document.
pub fn openapi() -> Response {
    document(OPENAPI_JSON)
}

/// `200 application/json` with the AsyncAPI document.
pub fn asyncapi() -> Response {
    document(ASYNCAPI_JSON)
}

fn document(text: &str) -> Response {
    Response::typed(200, JSON, text.as_bytes().to_vec())
        .with_header("x-content-type-options", "nosniff")
        .with_header("cache-control", "no-cache")
}

/// `200 text/html`: the docs page, with a policy as strict as the chat
/// page's (its one inline script and style by hash, fetches to its own
/// origin only).
pub fn page() -> Response {
    static CSP: OnceLock<String> = OnceLock::new();
    let csp = CSP.get_or_init(|| crate::page::content_security_policy(DOCS_HTML));
    Response::typed(200, HTML, DOCS_HTML.as_bytes().to_vec())
        .with_header("content-security-policy", csp.clone())
        .with_header("x-content-type-options", "nosniff")
        .with_header("referrer-policy", "no-referrer")
        .with_header("cache-control", "no-cache")
}

#[cfg(test)]
mod tests;
