//! The built-in chat page (`GET /`): one self-contained HTML file embedded
//! in the binary, and the strict `Content-Security-Policy` it is served
//! with.
//!
//! The page carries its script and style inline (no second request, no
//! build step, nothing fetched from elsewhere: the server often runs
//! offline). The policy allows exactly those two blocks, by their SHA-256
//! hashes computed once at start, and connections to the page's own origin.

use base64::Engine as _;
use sha2::Digest as _;

use crate::http::response::{Response, HTML};

/// The page, as written in `src/page/chat.html`.
pub const CHAT_HTML: &str = include_str!("chat.html");

/// The page's response parts, computed once (the reactor keeps them).
#[derive(Clone, Debug)]
pub struct ChatPage {
    csp: String,
}

impl Default for ChatPage {
    fn default() -> Self {
        Self::new()
    }
}

impl ChatPage {
    pub fn new() -> Self {
        ChatPage {
            csp: content_security_policy(CHAT_HTML),
        }
    }

    /// `200 text/html` with the page and its security headers.
    pub fn response(&self) -> Response {
        Response::typed(200, HTML, CHAT_HTML.as_bytes().to_vec())
            .with_header("content-security-policy", self.csp.clone())
            .with_header("x-content-type-options", "nosniff")
            .with_header("referrer-policy", "no-referrer")
            .with_header("cache-control", "no-cache")
    }
}

/// Nothing but the page's own inline `<script>` and `<style>` blocks (by
/// hash), and fetches and WebSockets to its own origin.
pub fn content_security_policy(html: &str) -> String {
    let scripts = inline_hashes(html, "script");
    let styles = inline_hashes(html, "style");
    format!(
        "default-src 'none'; script-src {scripts}; style-src {styles}; connect-src 'self'; \
         img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
}

/// `'sha256-…'` of every `<tag>…</tag>` body in `html`, space-separated
/// (`'none'` when there is none).
fn inline_hashes(html: &str, tag: &str) -> String {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(start) = rest.find(&open) {
        let body = &rest[start + open.len()..];
        let Some(end) = body.find(&close) else { break };
        let digest = sha2::Sha256::digest(&body.as_bytes()[..end]);
        let b64 = base64::engine::general_purpose::STANDARD.encode(digest);
        out.push(format!("'sha256-{b64}'"));
        rest = &body[end + close.len()..];
    }
    if out.is_empty() {
        "'none'".to_owned()
    } else {
        out.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_hashes_each_inline_block() {
        // sha256("") is 47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=.
        let csp = content_security_policy("<style></style><script></script><script>x</script>");
        assert!(csp.contains("style-src 'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='"));
        assert!(csp
            .contains("script-src 'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=' 'sha256-"));
        assert!(csp.starts_with("default-src 'none';"));
    }

    #[test]
    fn the_page_is_small_and_self_contained() {
        assert!(CHAT_HTML.len() <= 48 * 1024, "{} bytes", CHAT_HTML.len());
        // Nothing is fetched from another origin.
        for needle in ["http://", "https://", "//cdn", "<link", " src="] {
            assert!(!CHAT_HTML.contains(needle), "page contains {needle:?}");
        }
        let csp = ChatPage::new().csp;
        assert!(csp.contains("script-src 'sha256-"), "{csp}");
        assert!(!csp.contains("unsafe-"), "{csp}");
    }

    #[test]
    fn the_page_needs_nothing_the_policy_forbids() {
        // One hashed block each; anything else inline would be blocked.
        assert_eq!(CHAT_HTML.matches("<script").count(), 1);
        assert_eq!(CHAT_HTML.matches("<script>").count(), 1);
        assert_eq!(CHAT_HTML.matches("<style").count(), 1);
        assert_eq!(CHAT_HTML.matches("<style>").count(), 1);
        for needle in [
            " style=",
            " onclick=",
            " onload=",
            " oninput=",
            "javascript:",
            "eval(",
            // Model text becomes text nodes only: nothing parses markup.
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "DOMParser",
            "createContextualFragment",
        ] {
            assert!(!CHAT_HTML.contains(needle), "page contains {needle:?}");
        }
    }
}
