//! The command line and environment, parsed.
use super::*;

fn run(args: &[&str], env: &[(&str, &str)]) -> Result<Command, UsageError> {
    let mut env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    env.push(("HOME".into(), "/home/test".into()));
    parse(args.iter().map(OsString::from), |k| {
        env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    })
}

fn serve(args: &[&str], env: &[(&str, &str)]) -> Config {
    match run(args, env) {
        Ok(Command::Serve(c)) => *c,
        other => panic!("expected serve, got {other:?}"),
    }
}

#[test]
fn defaults_are_the_contracts() {
    let c = serve(&["serve"], &[]);
    assert_eq!((c.host.as_str(), c.port), ("127.0.0.1", 8420));
    assert_eq!(c.api_key, None);
    assert_eq!(c.limits, Limits::default());
    assert_eq!(c.agent, AgentConfig::default());
    assert_eq!(c.fsync, crate::journal::FsyncMode::Batch);
    assert_eq!(
        c.data_dir,
        Some("/home/test/.local/state/autopoiesis".into())
    );
}

#[test]
fn durations_are_bounded() {
    for flag in [
        "--turn-timeout",
        "--header-timeout",
        "--keepalive-timeout",
        "--shutdown-grace",
        "--session-ttl",
        "--retain-idle",
        "--ws-idle-timeout",
        "--upstream-timeout",
    ] {
        let args = ["serve", flag, "18446744073709551615"].map(OsString::from);
        let err = parse(args, |_| None).unwrap_err();
        assert!(err.0.contains("at most"), "{flag}: {err}");
    }
    let c = serve(&["serve", "--turn-timeout", "315360000"], &[]);
    assert_eq!(c.agent.turn_timeout, Duration::from_secs(315_360_000));
}

#[test]
fn operations_flags() {
    let c = serve(
        &[
            "serve",
            "--access-log",
            "--log-format",
            "json",
            "--metrics-public",
            "--id-from-header",
            "X-Request-Id",
            "--trusted-proxy",
            "127.0.0.1",
        ],
        &[],
    );
    assert!(c.ops.access_log && c.ops.log_json && c.ops.metrics_public);
    assert_eq!(c.id_from_header.as_deref(), Some("X-Request-Id"));
    assert_eq!(
        c.trusted_proxies,
        ["127.0.0.1".parse::<std::net::IpAddr>().unwrap()]
    );
    let c = serve(&["serve"], &[]);
    assert_eq!(c.ops, Ops::default());
    assert_eq!(c.id_from_header, None);
    for bad in [
        &["serve", "--log-format", "xml"][..],
        &["serve", "--id-from-header", "X Request"][..],
        &["serve", "--id-from-header", ""][..],
        &["serve", "--trusted-proxy", "nginx.local"][..],
    ] {
        let args = bad.iter().map(OsString::from);
        assert!(parse(args, |_| None).is_err(), "{bad:?}");
    }
}

#[test]
fn data_dir_flags() {
    assert_eq!(serve(&["serve", "--in-memory"], &[]).data_dir, None);
    let c = serve(
        &["serve", "--data-dir", "/d", "--fsync", "always"],
        &[("AUTOPOIESIS_DATA_DIR", "/e")],
    );
    assert_eq!(
        (c.data_dir, c.fsync),
        (Some("/d".into()), crate::journal::FsyncMode::Always)
    );
    assert_eq!(
        serve(&["serve"], &[("AUTOPOIESIS_DATA_DIR", "/e")]).data_dir,
        Some("/e".into())
    );
    assert!(run(&["serve", "--fsync", "sometimes"], &[]).is_err());
    let c = serve(
        &["serve", "--retain-events", "3", "--shutdown-grace", "0"],
        &[],
    );
    assert_eq!(
        (c.limits.retain_events, c.limits.shutdown_grace),
        (3, Duration::ZERO)
    );
}

#[test]
fn flags_win_over_environment() {
    let env = [
        ("AUTOPOIESIS_HOST", "0.0.0.0"),
        ("AUTOPOIESIS_PORT", "9000"),
    ];
    let c = serve(&["serve"], &env);
    assert_eq!((c.host.as_str(), c.port), ("0.0.0.0", 9000));
    let c = serve(&["serve", "--host", "::1", "--port=0"], &env);
    assert_eq!((c.host.as_str(), c.port), ("::1", 0));
    // A bad value in the environment does not matter when a flag overrides it.
    let c = serve(
        &["serve", "--port", "1234"],
        &[("AUTOPOIESIS_PORT", "nope")],
    );
    assert_eq!(c.port, 1234);
}

#[test]
fn empty_api_key_means_no_auth() {
    assert_eq!(
        serve(&["serve"], &[("AUTOPOIESIS_API_KEY", "")]).api_key,
        None
    );
    let c = serve(&["serve"], &[("AUTOPOIESIS_API_KEY", "s3cret")]);
    assert_eq!(c.api_key.as_deref(), Some("s3cret"));
}

#[test]
fn limits_are_flags() {
    let c = serve(
        &[
            "serve",
            "--max-head-bytes",
            "1024",
            "--max-body-bytes",
            "10",
            "--session-ttl",
            "0",
            "--header-timeout",
            "3",
            "--max-connections",
            "5",
        ],
        &[],
    );
    assert_eq!(c.limits.max_head_bytes, 1024);
    assert_eq!(c.limits.max_body_bytes, 10);
    assert_eq!(c.limits.session_ttl, None);
    assert_eq!(c.limits.header_timeout, Duration::from_secs(3));
    assert_eq!(c.limits.max_connections, 5);
    assert_eq!(c.limits.retain_idle, Some(Duration::from_secs(300)));
    let c = serve(&["serve", "--retain-idle", "0"], &[]);
    assert_eq!(c.limits.retain_idle, None);
    let c = serve(&["serve", "--retain-idle", "7"], &[]);
    assert_eq!(c.limits.retain_idle, Some(Duration::from_secs(7)));
}

#[test]
fn allowed_origins_from_flags_or_env() {
    let env = [("AUTOPOIESIS_ALLOWED_ORIGINS", "http://a, http://b")];
    assert_eq!(
        serve(&["serve"], &env).allowed_origins,
        ["http://a", "http://b"]
    );
    let c = serve(
        &[
            "serve",
            "--allowed-origin",
            "http://c",
            "--allowed-origin=*",
        ],
        &env,
    );
    assert_eq!(c.allowed_origins, ["http://c", "*"]);
}

#[test]
fn agents() {
    assert_eq!(serve(&["serve"], &[]).agent.choice, AgentChoice::Echo);
    let c = serve(
        &[
            "serve",
            "--agent",
            "exec",
            "--agent-cmd",
            "python3 agent.py",
        ],
        &[],
    );
    assert_eq!(
        (c.agent.choice, c.agent.cmd.as_deref()),
        (AgentChoice::Exec, Some("python3 agent.py"))
    );
    let env = [
        ("AUTOPOIESIS_AGENT", "openai"),
        ("AUTOPOIESIS_OPENAI_BASE_URL", "http://127.0.0.1:1/v1"),
        ("AUTOPOIESIS_MODEL", "m"),
    ];
    assert_eq!(serve(&["serve"], &env).agent.choice, AgentChoice::OpenAi);
    assert!(
        run(&["serve", "--agent", "exec"], &[]).is_err(),
        "exec without a command"
    );
    assert!(
        run(&["serve", "--agent", "openai", "--model", "m"], &[]).is_err(),
        "openai without a URL"
    );
    let https = [
        "serve",
        "--agent",
        "openai",
        "--model",
        "m",
        "--openai-base-url",
        "https://api.example/v1",
    ];
    assert!(run(&https, &[]).unwrap_err().0.contains("no TLS"));
    assert!(run(&["serve", "--agent", "magic"], &[]).is_err());
    let c = serve(
        &[
            "serve",
            "--agent",
            "worker",
            "--agent-cmd",
            "python3 w.py",
            "--workers",
            "3",
            "--worker-concurrency",
            "4",
        ],
        &[],
    );
    assert_eq!(
        (c.agent.choice, c.agent.workers, c.agent.worker_concurrency),
        (AgentChoice::Worker, 3, 4)
    );
    assert!(
        run(&["serve", "--agent", "worker"], &[]).is_err(),
        "worker without a command"
    );
    for bad in [
        ["--workers", "0"],
        ["--workers", "5000"],
        ["--worker-concurrency", "0"],
    ] {
        let args = [
            "serve",
            "--agent",
            "worker",
            "--agent-cmd",
            "w",
            bad[0],
            bad[1],
        ];
        assert!(run(&args, &[]).is_err(), "{bad:?}");
    }
    let c = serve(&["serve", "--echo-delay-ms", "5"], &[]);
    assert_eq!(c.agent.echo_delay, Some(Duration::from_millis(5)));
}

#[test]
fn help_and_version() {
    assert_eq!(run(&["--version"], &[]), Ok(Command::Version));
    assert_eq!(
        run(&["serve", "--help"], &[]),
        Ok(Command::Help(SERVE_HELP))
    );
    assert_eq!(run(&["-h"], &[]), Ok(Command::Help(TOP_HELP)));
}

#[test]
fn usage_errors() {
    for bad in [
        &["serve", "--bogus"][..],
        &["serve", "--port", "70000"],
        &["serve", "--port", "x"],
        &["serve", "--port"],
        &["serve", "--header-timeout", "0"],
        &["serve", "extra"],
        &["frobnicate"],
        &[],
    ] {
        assert!(run(bad, &[]).is_err(), "{bad:?} should be a usage error");
    }
    assert!(run(&["serve"], &[("AUTOPOIESIS_PORT", "nope")]).is_err());
}
