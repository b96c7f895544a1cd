//! HTTP/1.1: the request state machine ([`request`]), chunked bodies
//! ([`chunked`]), response framing ([`response`]) and bodies produced a
//! slice at a time ([`body`]: a session's history). No sockets here.

pub mod body;
pub mod chunked;
pub mod request;
pub mod response;

pub use request::{Head, ParserLimits, Progress, Reject, Request, RequestParser};
pub use response::Response;
