//! AG-UI (docs.ag-ui.com, protocol 1.0), sans-IO: `POST /api/ag-ui` takes
//! a `RunAgentInput` ([`input`]) and answers with the run as an AG-UI event
//! stream ([`stream`]), translated from the run's turn's own broadcast
//! events. The API handler ([`crate::api`]) queues the turn; the reactor
//! hands the stream every event of that turn and writes what comes out.
//!
//! Interrupts (tool approvals) are shaped as pydantic-ai's own AG-UI
//! adapter shapes them, so a front end written for it works unchanged:
//! interrupt ids are `int-<tool_call_id>`, and a resume's payload is
//! `{"approved", "editedArgs"?, "reason"?}`.

pub mod input;
pub mod stream;

pub use input::{parse_input, resume_decisions, Ask, RunInput};
pub use stream::RunStream;
