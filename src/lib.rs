//! `autopoiesis serve`: the HTTP and WebSocket server of the autopoiesis
//! agent, on one thread running one hand-rolled `mio` reactor.
//!
//! Everything but [`reactor`] is sans-IO: it takes bytes or events and
//! returns bytes or actions, so unit tests and fuzz targets drive it without
//! sockets. The reactor is the thin shell that turns readiness into calls.
//!
//! This page is for whoever changes the server. For using it, see the
//! repository's `README.md` and `docs/` (the API reference is
//! `docs/api.md`; the design in prose, `docs/design.md`).
//!
//! # Module map
//!
//! | module | owns | called by |
//! |---|---|---|
//! | [`config`] | the command line and environment → [`config::Config`] | `main` |
//! | [`http`] | HTTP/1.1 request state machine, chunked bodies, response bytes, a body produced a slice at a time (`http::body`: a session's history, pulled as its socket takes it) | [`reactor`] (per connection), [`api`] (the history body), fuzz targets |
//! | [`ws`] | the upgrade handshake, server frame encoding, client ops | [`api`], [`reactor`], fuzz targets |
//! | [`service`] | the [`service::Service`] trait: what the reactor hands requests and messages to, and what it gets back | [`reactor`]; implemented by [`api`] and `examples/ws_echo.rs` |
//! | [`api`] | [`api::App`]: routing, auth, REST handlers, WebSocket ops, event streams (SSE), the approval routes and op, the AG-UI route, history requests that wait for a cold history (`api::history`), the sweep's schedule (`api::upkeep`) | [`reactor`] through [`service`] |
//! | [`approvals`] | tool calls waiting for a person: the agent's request read, the decisions checked, their bodies and events | [`agent`] (the request), [`turns`] (pending and resumed turns), [`api`] (deciding), [`journal`] (the `a` record) |
//! | [`agui`] | AG-UI, sans-IO: a `RunAgentInput` read (prompt or resume → decisions), and one run's translator from its turn's events to AG-UI frames | [`api`] (the input), `reactor::sse` (the run's stream), fuzz targets |
//! | [`page`] | the built-in chat page (`GET /`), embedded, and its Content-Security-Policy | [`api`] |
//! | [`docs`] | the API's documents, embedded: `GET /openapi.json`, `/asyncapi.json`, and `/docs` (a page rendering the first) | [`api`] |
//! | [`sessions`] | the session table: a directory of small entries (`sessions::map`: a slab in creation order, grown a step at a time) and what a session holds while in use; history, pending approvals, `seq`, subscribers, broadcast, retained events for resume; swept a budget at a time (`sessions::sweep`), written out for compaction (`sessions::snapshot`); cold histories' reads asked for and taken in (`sessions::cold`) | [`api`], [`turns`] |
//! | [`turns`] | per-session turn queue, the echo agent's stepwise streaming, cancel, the end of a turn (the agent's own messages, approvals asked), resumed turns | [`api`] |
//! | [`echo`] | the echo agent's word tokenizer | [`turns`] |
//! | [`events`] | server → client events, serialized once into one buffer holding the WebSocket frame and the SSE event; a session's events cut from shared chunks (`EventArena`) | [`sessions`], [`api`] |
//! | [`json`] | JSON strings and numbers written by hand on the hot paths, byte-for-byte what serde_json writes | [`events`], [`agent`] (history texts), [`journal`], [`http`] (status and length digits) |
//! | [`sink`] | [`sink::ConnId`] and the [`sink::Sink`] trait the core answers through | [`api`], [`turns`], [`reactor`] |
//! | [`journal`] | the append-only session journal: record framing with each history record linked to its session's previous one, replay, fsync policy, the compaction's new file (`journal::file`); a cold history read back along its links (`journal::chain`, sans-IO) | [`sessions`] (records), [`reactor`] (the file, the reader) |
//! | [`metrics`] | Prometheus counters, gauges and fixed-bucket histograms in the loop's own state, the exposition format, the process collector | [`sessions`] (turns), [`reactor`] (transport), [`api`] (`/metrics`) |
//! | [`log`] | log lines (text or JSON) and the access log | everything that logs |
//! | [`systemd`] | socket activation (`LISTEN_FDS`) and readiness (`NOTIFY_SOCKET`) without libsystemd | [`reactor`], `main` |
//! | [`clock`] | RFC 3339 timestamps (and `Stamp`, one in 8 bytes), epoch milliseconds, random session ids | [`sessions`], [`turns`], [`agui`] |
//! | [`fuzzing`] | fuzz harnesses, shared by `fuzz/` and the corpus replay test | `fuzz/` targets, `tests/fuzz_corpus.rs` |
//! | [`agent`] | agent events (with the agent's own `messages`), the `exec` JSON-lines protocol, the OpenAI stream decoder, history folding (thinking parts included) | [`turns`], [`reactor`] |
//! | [`reactor`] | the mio loop: listener, connection slab (HTTP, WebSocket, SSE, closing), agent processes and sockets, timers, signals | `main`, `examples/ws_echo.rs` |
//! | [`agent::worker`] | the `worker` protocol: `turn`/`cancel` lines out, the stdout decoder of interleaved turns' events | [`agent::worker_pool`], `reactor::workers`, fuzz targets |
//! | [`agent::worker_pool`] | `worker` scheduling: session → worker binding, concurrency, waiting turns, cancel lines, timeouts, output bound, restart back-off | `reactor::workers` |
//! | `reactor::conn`, `reactor::conn_sink` | the connection states (HTTP, WebSocket, SSE, closing) and their slab; the reactor's [`sink::Sink`] | the reactor's other parts |
//! | `reactor::http`, `reactor::websocket`, `reactor::sse` | one transport each: reading, handing to the service, switching protocols (`sse` also carries AG-UI runs) | [`reactor`] |
//! | `reactor::syncer`, `reactor::durability` | the journal's fsync in a helper thread (pipes in the same poll); acknowledgements held per connection until their records are durable | [`reactor`] (each iteration's end, the sink's barriers) |
//! | `reactor::history_reader` | cold histories read back from the journal by a helper thread (a channel each way, a pipe in the same poll to wake the loop) | [`reactor`] (each iteration's end, the reader's readiness, a compaction's switch) |
//! | `reactor::compaction` | the journal rewritten a step per iteration into a new file, then synced and renamed by a helper thread | [`reactor`] (each iteration's end) |
//! | `reactor::listener`, `reactor::shutdown` | accepting under the connection cap (and the open-file limit raised for it); signals: draining running turns, closing every client, the journal's last sync | [`reactor`] (the listener's and the signals' readiness) |
//! | `reactor::timers`, `reactor::access` | deadlines checked once a second; request accounting and the access log | [`reactor`] |
//! | `reactor::workers` | the worker processes: spawn, pipes, stdin queue, stdout read with backpressure, kill and reap, shutdown | [`reactor`] (the loop, the sink's agent starts and stops) |
//! | `reactor::agents` | the I/O half of the `exec` and `openai` agents: child processes and upstream sockets in the same poll, readiness turned into agent events | [`reactor`] |
//! | `reactor::child` | agent child processes: `/bin/sh -c` in its own group with registered pipes, stderr to the log, group kill | `reactor::agents`, `reactor::workers` |

// No unwrap/expect outside tests: a network input must never be able to
// panic the (single-threaded, panic = abort) server.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod agent;
pub mod agui;
pub mod api;
pub mod approvals;
pub mod clock;
pub mod config;
pub mod docs;
pub mod echo;
pub mod events;
pub mod fuzzing;
pub mod http;
pub mod journal;
pub mod json;
pub mod log;
pub mod metrics;
pub mod page;
pub mod reactor;
pub mod service;
pub mod sessions;
pub mod sink;
pub mod systemd;
pub mod turns;
pub mod ws;
