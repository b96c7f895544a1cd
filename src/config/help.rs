//! The `--help` texts: every flag, its environment variable and default.

pub const TOP_HELP: &str = "\
autopoiesis: the HTTP and WebSocket server of the autopoiesis agent

Usage: autopoiesis serve [OPTIONS]
       autopoiesis --version

Commands:
  serve    run the server (see `autopoiesis serve --help`)
";

pub const SERVE_HELP: &str = "\
Usage: autopoiesis serve [OPTIONS]

Runs the HTTP and WebSocket server (one thread, one mio reactor).
Flags win over the environment.

Options:
  --host HOST                 bind address [env AUTOPOIESIS_HOST] (default 127.0.0.1)
  --port PORT                 bind port, 0 = any free port [env AUTOPOIESIS_PORT] (default 8420)
  --max-head-bytes N          request line + headers limit, over it 431 (default 16384)
  --max-body-bytes N          request body limit, over it 413 (default 1048576)
  --max-ws-message-bytes N    WebSocket message limit, over it close 1009 (default 1048576)
  --max-ws-output-bytes N     unsent output per WebSocket, over it close 1008 (default 1048576)
  --header-timeout SECS       time to send a complete request head, then 408 (default 10)
  --keepalive-timeout SECS    idle keep-alive connections are closed after this (default 60)
  --max-connections N         open connections; the next one gets 503 and is closed (default 16384)
  --max-sessions N            sessions held; creating one more gets 503 (default 100000)
  --max-queued-turns N        turns waiting per session, past it busy / 429 (default 8)
  --session-ttl SECS          drop sessions with no client and no activity, 0 = never (default 1800)
  --ws-ping-interval SECS     ping a silent WebSocket client after this (default 30)
  --ws-idle-timeout SECS      close a WebSocket client silent this long (default 60)
  --allowed-origin ORIGIN     a browser origin (e.g. http://localhost:5173) allowed to call
                              the server when no API key is set; repeatable; '*' allows any
                              [env AUTOPOIESIS_ALLOWED_ORIGINS, comma-separated]
  --agent echo|exec|openai|worker
                              what answers messages [env AUTOPOIESIS_AGENT] (default echo)
  --agent-cmd 'PROGRAM ARGS'  exec: the program run per turn; worker: the long-lived program
                              serving many turns; by /bin/sh -c [env AUTOPOIESIS_AGENT_CMD]
  --workers N                 worker: how many worker processes to keep running (default 1)
  --worker-concurrency K      worker: turns in flight per worker, more wait (default 16)
  --openai-base-url URL       openai: http://host:port/v1 of an OpenAI-compatible server
                              [env AUTOPOIESIS_OPENAI_BASE_URL]; OPENAI_API_KEY is sent if set
  --model NAME                openai: the model [env AUTOPOIESIS_MODEL]
  --system-prompt TEXT        openai: a system message before the history
  --turn-timeout SECS         exec, worker: end a turn after this (default 300)
  --upstream-timeout SECS     openai: fail a turn whose upstream is silent this long (default 60)
  --echo-delay-ms N           echo: one token every N ms, a simulated slow model (default 0)
  --data-dir DIR              where sessions are kept [env AUTOPOIESIS_DATA_DIR]
                              (default $XDG_STATE_HOME/autopoiesis, else ~/.local/state/autopoiesis)
  --in-memory                 keep sessions in memory only, as the original server did
  --fsync always|batch|never  when the journal is forced to disk (default batch)
  --retain-events N           broadcast events kept per session for ?since= resume (default 1000)
  --retain-bytes N            ... and at most this many bytes of them (default 1048576)
  --retain-idle SECS          drop them once a session has had no client this long, 0 = never (default 300)
  --history-idle SECS         a session with no client and no turn this long keeps its history
                              in the journal only, read back when needed, 0 = never (default 900)
  --shutdown-grace SECS       on SIGTERM/SIGINT, running turns get this long to finish (default 10)
  --access-log                log one line per request or upgrade to stderr (peer, method,
                              path without query, status, bytes, microseconds)
  --log-format text|json      every log line as text or as one JSON object (default text)
  --metrics-public            GET /metrics needs no key even when AUTOPOIESIS_API_KEY is set
  --id-from-header NAME       a session created without an id takes it from header NAME
                              (e.g. X-Request-Id from a sharding proxy) when valid and free;
                              POST /api/chat naming a session this instance lacks gets 421
  --trusted-proxy ADDR        a proxy (IP) whose X-Forwarded-For names the client in the
                              access log; repeatable
  -h, --help                  print this help
  -V, --version               print the version

Environment:
  AUTOPOIESIS_API_KEY         when set and non-empty, every route but GET /api/health, the
                              chat page and the API documents needs it as X-API-Key or
                              Authorization: Bearer (WebSocket: also the subprotocol
                              autopoiesis.key.<KEY>)
  NOTIFY_SOCKET               systemd: READY=1 once listening, STOPPING=1 on shutdown
  LISTEN_FDS, LISTEN_PID      systemd socket activation: serve the passed socket (fd 3)
                              instead of binding --host/--port
";
