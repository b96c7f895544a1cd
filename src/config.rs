//! The command line (`lexopt`) and environment, turned into a [`Config`].
//!
//! Sans-IO: [`parse`] takes the arguments and an environment lookup, so the
//! tests drive it without touching the process. `main` prints what it returns.

use std::ffi::OsString;
use std::time::Duration;

mod help;

/// Everything `autopoiesis serve` can be told. Defaults are the contract's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub host: String,
    pub port: u16,
    /// `AUTOPOIESIS_API_KEY` when set and non-empty. Only ever read from the
    /// environment: a flag would show the key in `ps` output.
    pub api_key: Option<String>,
    /// Browser origins (`scheme://host[:port]`, or `*`) allowed besides the
    /// server's own; see the Origin policy in [`crate::api`].
    pub allowed_origins: Vec<String>,
    pub limits: Limits,
    pub agent: AgentConfig,
    /// Where sessions are kept; None = in memory only (`--in-memory`).
    pub data_dir: Option<std::path::PathBuf>,
    pub fsync: crate::journal::FsyncMode,
    /// `--access-log`, `--log-format`, `--metrics-public`.
    pub ops: Ops,
    /// `--id-from-header NAME`: sessions created without a client-given id
    /// take it from this header (a sharding proxy's request id).
    pub id_from_header: Option<String>,
    /// `--trusted-proxy ADDR`: proxies whose `X-Forwarded-For` the access
    /// log believes.
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

/// How the server reports on itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ops {
    /// One line per request or upgrade on stderr.
    pub access_log: bool,
    /// `--log-format json`: every log line is a JSON object.
    pub log_json: bool,
    /// `GET /metrics` needs no key even when auth is on.
    pub metrics_public: bool,
}

/// Most `--workers`: each worker is a process with three pipes.
pub const MAX_WORKERS: usize = 1024;

/// `--agent` and what each agent needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentChoice {
    Echo,
    Exec,
    OpenAi,
    /// Long-lived processes serving many turns (`--agent worker`).
    Worker,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentConfig {
    pub choice: AgentChoice,
    /// `--agent-cmd`, for `exec` and `worker` (run with `/bin/sh -c`).
    pub cmd: Option<String>,
    /// `--workers`: how many worker processes `worker` keeps running.
    pub workers: usize,
    /// `--worker-concurrency`: turns in flight per worker; more wait.
    pub worker_concurrency: usize,
    /// `--openai-base-url`, e.g. `http://127.0.0.1:11434/v1`.
    pub base_url: Option<String>,
    pub model: Option<String>,
    pub system_prompt: Option<String>,
    /// `OPENAI_API_KEY`, sent as `Authorization: Bearer`.
    pub openai_api_key: Option<String>,
    /// `--echo-delay-ms`: the echo agent emits one token per interval.
    pub echo_delay: Option<Duration>,
    /// `--turn-timeout`: an `exec` turn running longer is killed.
    pub turn_timeout: Duration,
    /// `--upstream-timeout`: an upstream silent this long fails the turn.
    pub upstream_timeout: Duration,
    /// Most bytes an agent may produce in one turn.
    pub max_output_bytes: usize,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            choice: AgentChoice::Echo,
            cmd: None,
            workers: 1,
            worker_concurrency: 16,
            base_url: None,
            model: None,
            system_prompt: None,
            openai_api_key: None,
            echo_delay: None,
            turn_timeout: Duration::from_secs(300),
            upstream_timeout: Duration::from_secs(60),
            max_output_bytes: 16 * 1024 * 1024,
        }
    }
}

/// Every bound the server enforces; each is a flag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_head_bytes: usize,
    pub max_body_bytes: usize,
    pub max_ws_message_bytes: usize,
    pub max_ws_output_bytes: usize,
    pub header_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub max_connections: usize,
    pub max_sessions: usize,
    pub max_queued_turns: usize,
    pub session_ttl: Option<Duration>,
    pub ws_ping_interval: Duration,
    pub ws_idle_timeout: Duration,
    /// Broadcast events kept per session for `?since=` resume.
    pub retain_events: usize,
    pub retain_bytes: usize,
    /// A session with no WebSocket or SSE client this long drops its
    /// retained events (None: never).
    pub retain_idle: Option<Duration>,
    /// A session with no client and no turn this long keeps only its
    /// directory entry in RAM; its history is read back from the journal
    /// when needed (None: never; always None with `--in-memory`).
    pub history_idle: Option<Duration>,
    /// How long running turns may finish after SIGTERM/SIGINT.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: 16 * 1024,
            max_body_bytes: 1024 * 1024,
            max_ws_message_bytes: 1024 * 1024,
            max_ws_output_bytes: 1024 * 1024,
            header_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(60),
            max_connections: 16_384,
            max_sessions: 100_000,
            max_queued_turns: 8,
            session_ttl: Some(Duration::from_secs(1800)),
            ws_ping_interval: Duration::from_secs(30),
            ws_idle_timeout: Duration::from_secs(60),
            retain_events: 1000,
            retain_bytes: 1024 * 1024,
            retain_idle: Some(Duration::from_secs(300)),
            history_idle: Some(Duration::from_secs(900)),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            host: "127.0.0.1".into(),
            port: 8420,
            api_key: None,
            allowed_origins: Vec::new(),
            limits: Limits::default(),
            agent: AgentConfig::default(),
            data_dir: None,
            fsync: crate::journal::FsyncMode::Batch,
            ops: Ops::default(),
            id_from_header: None,
            trusted_proxies: Vec::new(),
        }
    }
}

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Serve(Box<Config>),
    /// Print this text on stdout and exit 0.
    Help(&'static str),
    Version,
}

/// A usage error: printed on stderr with a hint, exit status 2.
#[derive(Debug, PartialEq, Eq)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub use help::{SERVE_HELP, TOP_HELP};

/// Parses `args` (without the program name) with `env` as the environment.
pub fn parse<I, E>(args: I, env: E) -> Result<Command, UsageError>
where
    I: IntoIterator<Item = OsString>,
    E: Fn(&str) -> Option<String>,
{
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_args(args);
    match parser.next().map_err(usage)? {
        Some(Long("help") | Short('h')) => return Ok(Command::Help(TOP_HELP)),
        Some(Long("version") | Short('V')) => return Ok(Command::Version),
        Some(Value(cmd)) if cmd == "serve" => {}
        Some(Value(cmd)) => {
            return Err(UsageError(format!(
                "unknown command '{}'",
                cmd.to_string_lossy()
            )))
        }
        Some(other) => return Err(usage(other.unexpected())),
        None => {
            return Err(UsageError(
                "missing command: try 'autopoiesis serve'".into(),
            ))
        }
    }

    let mut config = Config::default();
    if let Some(host) = env("AUTOPOIESIS_HOST").filter(|h| !h.is_empty()) {
        config.host = host;
    }
    config.api_key = env("AUTOPOIESIS_API_KEY").filter(|k| !k.is_empty());
    let env_origins: Vec<String> = env("AUTOPOIESIS_ALLOWED_ORIGINS")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .map(str::to_owned)
        .collect();
    let mut flag_origins = Vec::new();
    let mut data_dir = env("AUTOPOIESIS_DATA_DIR")
        .filter(|d| !d.is_empty())
        .map(std::path::PathBuf::from);
    let mut in_memory = false;
    let a = &mut config.agent;
    let nonempty = |k: &str| env(k).filter(|v| !v.is_empty());
    let mut agent_name = nonempty("AUTOPOIESIS_AGENT").unwrap_or_else(|| "echo".into());
    a.cmd = nonempty("AUTOPOIESIS_AGENT_CMD");
    a.base_url = nonempty("AUTOPOIESIS_OPENAI_BASE_URL");
    a.model = nonempty("AUTOPOIESIS_MODEL");
    a.openai_api_key = nonempty("OPENAI_API_KEY");

    let mut port_flag = false;
    let l = &mut config.limits;
    while let Some(arg) = parser.next().map_err(usage)? {
        match arg {
            Long("help") | Short('h') => return Ok(Command::Help(SERVE_HELP)),
            Long("version") | Short('V') => return Ok(Command::Version),
            Long("host") => config.host = parser.value().map_err(usage)?.string().map_err(usage)?,
            Long("port") => {
                config.port = number(&mut parser, "--port")?;
                port_flag = true;
            }
            Long("max-head-bytes") => l.max_head_bytes = positive(&mut parser, "--max-head-bytes")?,
            Long("max-body-bytes") => l.max_body_bytes = number(&mut parser, "--max-body-bytes")?,
            Long("max-ws-message-bytes") => {
                l.max_ws_message_bytes = positive(&mut parser, "--max-ws-message-bytes")?
            }
            Long("max-ws-output-bytes") => {
                l.max_ws_output_bytes = positive(&mut parser, "--max-ws-output-bytes")?
            }
            Long("header-timeout") => l.header_timeout = seconds(&mut parser, "--header-timeout")?,
            Long("keepalive-timeout") => {
                l.keepalive_timeout = seconds(&mut parser, "--keepalive-timeout")?
            }
            Long("max-connections") => {
                l.max_connections = positive(&mut parser, "--max-connections")?
            }
            Long("max-sessions") => l.max_sessions = positive(&mut parser, "--max-sessions")?,
            Long("max-queued-turns") => {
                l.max_queued_turns = number(&mut parser, "--max-queued-turns")?
            }
            Long("session-ttl") => {
                let ttl = seconds_or_zero(&mut parser, "--session-ttl")?;
                l.session_ttl = (ttl > 0).then(|| Duration::from_secs(ttl));
            }
            Long("ws-ping-interval") => {
                l.ws_ping_interval = seconds(&mut parser, "--ws-ping-interval")?
            }
            Long("ws-idle-timeout") => {
                l.ws_idle_timeout = seconds(&mut parser, "--ws-idle-timeout")?
            }
            Long("agent") => agent_name = parser.value().map_err(usage)?.string().map_err(usage)?,
            Long("agent-cmd") => {
                a.cmd = Some(parser.value().map_err(usage)?.string().map_err(usage)?)
            }
            Long("openai-base-url") => {
                a.base_url = Some(parser.value().map_err(usage)?.string().map_err(usage)?)
            }
            Long("model") => {
                a.model = Some(parser.value().map_err(usage)?.string().map_err(usage)?)
            }
            Long("system-prompt") => {
                a.system_prompt = Some(parser.value().map_err(usage)?.string().map_err(usage)?)
            }
            Long("workers") => {
                a.workers = positive(&mut parser, "--workers")?;
                if a.workers > MAX_WORKERS {
                    return Err(UsageError(format!(
                        "--workers must be at most {MAX_WORKERS}"
                    )));
                }
            }
            Long("worker-concurrency") => {
                a.worker_concurrency = positive(&mut parser, "--worker-concurrency")?
            }
            Long("turn-timeout") => a.turn_timeout = seconds(&mut parser, "--turn-timeout")?,
            Long("upstream-timeout") => {
                a.upstream_timeout = seconds(&mut parser, "--upstream-timeout")?
            }
            Long("echo-delay-ms") => {
                let ms = seconds_or_zero(&mut parser, "--echo-delay-ms")?;
                a.echo_delay = (ms > 0).then(|| Duration::from_millis(ms));
            }
            Long("data-dir") => data_dir = Some(parser.value().map_err(usage)?.into()),
            Long("in-memory") => in_memory = true,
            Long("fsync") => {
                let mode = parser.value().map_err(usage)?.string().map_err(usage)?;
                config.fsync = match mode.as_str() {
                    "always" => crate::journal::FsyncMode::Always,
                    "batch" => crate::journal::FsyncMode::Batch,
                    "never" => crate::journal::FsyncMode::Never,
                    other => {
                        return Err(UsageError(format!(
                            "invalid value '{other}' for --fsync: expected always, batch or never"
                        )))
                    }
                }
            }
            Long("retain-events") => l.retain_events = number(&mut parser, "--retain-events")?,
            Long("retain-bytes") => l.retain_bytes = number(&mut parser, "--retain-bytes")?,
            Long("retain-idle") => {
                let idle = seconds_or_zero(&mut parser, "--retain-idle")?;
                l.retain_idle = (idle > 0).then(|| Duration::from_secs(idle));
            }
            Long("history-idle") => {
                let idle = seconds_or_zero(&mut parser, "--history-idle")?;
                l.history_idle = (idle > 0).then(|| Duration::from_secs(idle));
            }
            Long("shutdown-grace") => {
                l.shutdown_grace =
                    Duration::from_secs(seconds_or_zero(&mut parser, "--shutdown-grace")?)
            }
            Long("allowed-origin") => {
                flag_origins.push(parser.value().map_err(usage)?.string().map_err(usage)?)
            }
            Long("access-log") => config.ops.access_log = true,
            Long("trusted-proxy") => {
                let addr = parser.value().map_err(usage)?.string().map_err(usage)?;
                let ip = addr.parse().map_err(|_| {
                    UsageError(format!(
                        "invalid address '{addr}' for --trusted-proxy: expected an IP address"
                    ))
                })?;
                config.trusted_proxies.push(ip);
            }
            Long("id-from-header") => {
                let name = parser.value().map_err(usage)?.string().map_err(usage)?;
                let token = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
                if !token {
                    return Err(UsageError(format!(
                        "invalid header name '{name}' for --id-from-header"
                    )));
                }
                config.id_from_header = Some(name);
            }
            Long("metrics-public") => config.ops.metrics_public = true,
            Long("log-format") => {
                let format = parser.value().map_err(usage)?.string().map_err(usage)?;
                config.ops.log_json = match format.as_str() {
                    "text" => false,
                    "json" => true,
                    other => {
                        return Err(UsageError(format!(
                            "invalid value '{other}' for --log-format: expected text or json"
                        )))
                    }
                }
            }
            other => return Err(usage(other.unexpected())),
        }
    }
    config.allowed_origins = if flag_origins.is_empty() {
        env_origins
    } else {
        flag_origins
    };
    config.data_dir = if in_memory {
        // No journal to read a history back from: all of it stays in RAM.
        config.limits.history_idle = None;
        None
    } else {
        let dir = data_dir.or_else(|| crate::journal::default_data_dir(&env));
        Some(dir.ok_or_else(|| {
            UsageError("no data directory: set --data-dir DIR (or HOME), or --in-memory".into())
        })?)
    };
    let a = &mut config.agent;
    a.choice = match agent_name.as_str() {
        "echo" => AgentChoice::Echo,
        "exec" => AgentChoice::Exec,
        "openai" => AgentChoice::OpenAi,
        "worker" => AgentChoice::Worker,
        other => {
            return Err(UsageError(format!(
                "unknown agent '{other}': expected echo, exec, openai or worker"
            )))
        }
    };
    match a.choice {
        AgentChoice::Exec if a.cmd.is_none() => {
            return Err(UsageError(
                "--agent exec needs --agent-cmd 'PROGRAM ARGS'".into(),
            ))
        }
        AgentChoice::Worker if a.cmd.is_none() => {
            return Err(UsageError(
                "--agent worker needs --agent-cmd 'PROGRAM ARGS'".into(),
            ))
        }
        AgentChoice::OpenAi => {
            let url = a
                .base_url
                .as_deref()
                .ok_or_else(|| UsageError("--agent openai needs --openai-base-url".into()))?;
            crate::agent::openai::parse_base_url(url).map_err(UsageError)?;
            if a.model.is_none() {
                return Err(UsageError("--agent openai needs --model".into()));
            }
        }
        _ => {}
    }
    // Checked only when no flag overrides it: flags win over the environment.
    if !port_flag {
        if let Some(port) = env("AUTOPOIESIS_PORT").filter(|p| !p.is_empty()) {
            config.port = port
                .parse()
                .map_err(|_| UsageError(format!("invalid AUTOPOIESIS_PORT '{port}'")))?;
        }
    }
    Ok(Command::Serve(Box::new(config)))
}

fn usage(e: lexopt::Error) -> UsageError {
    UsageError(e.to_string())
}

fn number<T: std::str::FromStr>(p: &mut lexopt::Parser, flag: &str) -> Result<T, UsageError> {
    let raw = p.value().map_err(usage)?;
    let text = raw.to_string_lossy();
    text.parse().map_err(|_| {
        UsageError(format!(
            "invalid value '{text}' for {flag}: expected a whole number"
        ))
    })
}

fn positive(p: &mut lexopt::Parser, flag: &str) -> Result<usize, UsageError> {
    match number::<usize>(p, flag)? {
        0 => Err(UsageError(format!("{flag} must be at least 1"))),
        n => Ok(n),
    }
}

/// Longest duration any flag takes (ten years): deadlines are `Instant`s,
/// and a sum past what an `Instant` holds would abort the server later.
const MAX_SECONDS: u64 = 10 * 365 * 24 * 3600;

fn seconds(p: &mut lexopt::Parser, flag: &str) -> Result<Duration, UsageError> {
    match seconds_or_zero(p, flag)? {
        0 => Err(UsageError(format!("{flag} must be at least 1 second"))),
        n => Ok(Duration::from_secs(n)),
    }
}

/// A number of seconds, 0 allowed, at most [`MAX_SECONDS`].
fn seconds_or_zero(p: &mut lexopt::Parser, flag: &str) -> Result<u64, UsageError> {
    match number::<u64>(p, flag)? {
        n if n > MAX_SECONDS => Err(UsageError(format!(
            "{flag} is at most {MAX_SECONDS} seconds (ten years)"
        ))),
        n => Ok(n),
    }
}

#[cfg(test)]
mod tests;
