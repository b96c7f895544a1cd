//! HTTP/1.1: the request state machine ([`request`]), chunked bodies
//! ([`chunked`]) and response framing ([`response`]). No sockets here.

pub mod chunked;
pub mod request;
pub mod response;

pub use request::{Head, ParserLimits, Progress, Reject, Request, RequestParser};
pub use response::Response;
