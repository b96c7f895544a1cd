//! Response bytes: status line, the few headers we send, body.

use super::body::Spliced;

pub const JSON: &str = "application/json";
pub const HTML: &str = "text/html; charset=utf-8";

/// A response the API layer produced, not yet framed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    /// Headers beyond Content-Type / Content-Length / Connection.
    pub headers: Vec<(&'static str, String)>,
    /// JSON, or empty (204).
    pub body: Vec<u8>,
    /// The rest of the body, after `body`, produced a slice at a time as
    /// the socket takes it (a long history): see [`Spliced`].
    pub rest: Option<Box<Spliced>>,
}

impl Response {
    /// A JSON body with `status`.
    pub fn json(status: u16, body: Vec<u8>) -> Self {
        Response {
            status,
            content_type: JSON,
            headers: Vec::new(),
            body,
            rest: None,
        }
    }

    /// A body of another type (the chat page, documents, metrics).
    pub fn typed(status: u16, content_type: &'static str, body: Vec<u8>) -> Self {
        Response {
            status,
            content_type,
            headers: Vec::new(),
            body,
            rest: None,
        }
    }

    /// FastAPI's error shape `{"detail": "<message>"}`.
    pub fn detail(status: u16, message: &str) -> Self {
        let body =
            serde_json::to_vec(&serde_json::json!({ "detail": message })).unwrap_or_default();
        Response::json(status, body)
    }

    /// Adds `rest` to the body, after it, produced as the socket takes it.
    pub fn with_rest(mut self, rest: Spliced) -> Self {
        self.rest = Some(Box::new(rest));
        self
    }

    /// The whole body in one buffer (for tests).
    pub fn full_body(&self) -> Vec<u8> {
        let mut out = self.body.clone();
        if let Some(rest) = &self.rest {
            out.extend_from_slice(&rest.to_vec());
        }
        out
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// The head and `body` as bytes ([`rest`](Self::rest) follows them). `keep_alive: false` adds `Connection: close`.
    pub fn encode(&self, keep_alive: bool) -> Vec<u8> {
        // Pieces appended, no `write!`: this runs for every response, and
        // `fmt` was a tenth of a health check's instructions (callgrind).
        let mut out = Vec::with_capacity(128 + self.body.len());
        out.extend_from_slice(b"HTTP/1.1 ");
        crate::json::push_u64(&mut out, u64::from(self.status));
        out.push(b' ');
        out.extend_from_slice(reason(self.status).as_bytes());
        out.extend_from_slice(b"\r\n");
        // 204 and 304 carry neither a body nor its headers (RFC 9110 §8.6).
        if self.status != 204 {
            out.extend_from_slice(b"content-type: ");
            out.extend_from_slice(self.content_type.as_bytes());
            out.extend_from_slice(b"\r\ncontent-length: ");
            let len = self.body.len() + self.rest.as_ref().map_or(0, |r| r.remaining());
            crate::json::push_u64(&mut out, len as u64);
            out.extend_from_slice(b"\r\n");
        }
        for (name, value) in &self.headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if !keep_alive {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if self.status != 204 {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

/// The interim response to `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        421 => "Misdirected Request",
        422 => "Unprocessable Entity",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_json_with_length_and_close() {
        let bytes = Response::detail(404, "Not Found").encode(false);
        let text = String::from_utf8(bytes).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 22\r\n\
             connection: close\r\n\r\n{\"detail\":\"Not Found\"}"
        );
    }

    #[test]
    fn no_content_has_no_body_headers() {
        let text = String::from_utf8(Response::json(204, Vec::new()).encode(true)).unwrap();
        assert_eq!(text, "HTTP/1.1 204 No Content\r\n\r\n");
    }
}
