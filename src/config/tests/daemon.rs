//! `daemon`, `connect`, `flush`, `status` and `warm`.

use super::*;

fn run(args: &[&str]) -> Result<Run, ConfigError> {
    let mut argv = vec!["goremotecache"];
    argv.extend_from_slice(args);
    Run::from_cli(Cli::try_parse_args(argv).unwrap())
}

fn daemon(args: &[&str]) -> Result<DaemonConfig, ConfigError> {
    match run(args)? {
        Run::Daemon(daemon) => Ok(*daemon),
        other => panic!("not the daemon: {other:?}"),
    }
}

fn control(args: &[&str]) -> Result<ControlConfig, ConfigError> {
    match run(args)? {
        Run::Control(control) => Ok(*control),
        other => panic!("not a control command: {other:?}"),
    }
}

#[test]
fn the_daemon_takes_the_builds_options_and_its_own() {
    let got = daemon(&[
        "daemon",
        "--s3-bucket",
        "b",
        "--namespace",
        "main",
        "--idle-exit",
        "90s",
        "--listen-plugin",
        "127.0.0.1:8322",
        "--stats-file",
        "/tmp/totals.json",
    ])
    .unwrap();
    let remote = got.build.remote.as_ref().unwrap();
    assert_eq!(remote.namespaces.own.as_ref().unwrap().as_str(), "main");
    assert_eq!(got.idle_exit, Some(Duration::from_secs(90)));
    assert_eq!(got.listen_plugin, Some("127.0.0.1:8322".parse().unwrap()));
    assert_eq!(
        got.build.stats_file,
        Some(PathBuf::from("/tmp/totals.json"))
    );
    assert!(!got.detached);
    // The default idle bound, and none.
    assert_eq!(
        daemon(&["daemon"]).unwrap().idle_exit,
        Some(Duration::from_secs(600))
    );
    assert_eq!(
        daemon(&["daemon", "--idle-exit", "off"]).unwrap().idle_exit,
        None
    );
    // Started by connect: the go command's --stats and --stats-file are the session's.
    let detached = daemon(&["daemon", "--detached", "--stats", "--stats-file", "/tmp/s"]).unwrap();
    assert!(!detached.build.stats);
    assert_eq!(detached.build.stats_file, None);
}

#[test]
fn the_plugin_port_must_be_on_loopback() {
    for bad in ["0.0.0.0:8322", "192.168.1.2:1", "localhost", "8322"] {
        let err = daemon(&["daemon", "--listen-plugin", bad]).unwrap_err();
        assert!(
            matches!(err, ConfigError::NotLoopback { .. }),
            "{bad}: {err}"
        );
    }
    assert!(daemon(&["daemon", "--listen-plugin", "[::1]:9"]).is_ok());
    assert_eq!(
        daemon(&["daemon", "--listen-plugin", ""])
            .unwrap()
            .listen_plugin,
        None
    );
}

#[test]
fn flush_and_status_without_a_remote_mean_every_daemon() {
    let flush = control(&["flush", "--cache-dir", "/tmp/c"]).unwrap();
    assert_eq!(flush.control, Control::Flush);
    assert!(flush.every_daemon());
    let status = control(&["status", "--json", "--s3-bucket", "b"]).unwrap();
    assert_eq!(status.control, Control::Status { json: true });
    assert!(!status.every_daemon(), "a build's options name its daemon");
    let socket = control(&["status", "--socket", "d.sock"]).unwrap();
    assert!(!socket.every_daemon());
    assert!(socket.socket.unwrap().is_absolute());
    // connect is always one build's session.
    let connect = control(&["connect", "--cache-dir", "/tmp/c"]).unwrap();
    assert_eq!(connect.control, Control::Connect);
    assert!(!connect.every_daemon());
}

#[test]
fn warm_needs_a_key_and_a_remote() {
    for args in [
        &["warm", "--s3-bucket", "b"][..],
        &["warm", "--prefetch-key", "k"],
        &[
            "warm",
            "--s3-bucket",
            "b",
            "--prefetch-key",
            "k",
            "--prefetch=off",
        ],
    ] {
        let err = control(args).unwrap_err();
        assert!(matches!(err, ConfigError::WarmNeedsKey), "{args:?}: {err}");
    }
    let warm = control(&["warm", "--s3-bucket", "b", "--prefetch-key", "ci-linux"]).unwrap();
    assert_eq!(warm.control, Control::Warm);
}

#[test]
fn the_module_proxy_listens_on_loopback_and_puts_an_http_server_first() {
    for bad in ["0.0.0.0:8323", "10.0.0.1:1", "localhost:8323"] {
        let err = daemon(&["daemon", "--goproxy-listen", bad]).unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::NotLoopback {
                    flag: "goproxy-listen",
                    ..
                }
            ),
            "{bad}: {err}"
        );
        assert!(err.to_string().contains("--goproxy-listen"), "{err}");
    }
    let options = [
        "daemon",
        "--goproxy-listen",
        "127.0.0.1:8323",
        "--goproxy-upstream",
        "http://127.0.0.1:9/up",
        "--goproxy-sumdb",
        "off",
    ];
    // Port 0 (the port is said on stderr) is not refused as a URL of our own.
    let mut any_port = options.to_vec();
    any_port[2] = "127.0.0.1:0";
    assert!(daemon(&any_port).unwrap().goproxy.is_some());
    let plain = daemon(&options).unwrap().goproxy.unwrap();
    assert_eq!(plain.listen, "127.0.0.1:8323".parse().unwrap());
    assert_eq!(plain.config.upstreams.to_string(), "http://127.0.0.1:9/up");
    let mut with_server = options.to_vec();
    with_server.extend([
        "--backend",
        "http",
        "--http-url",
        "http://cache.internal:8321/",
        "--http-token",
        "t@k/1",
    ]);
    let got = daemon(&with_server).unwrap().goproxy.unwrap();
    assert_eq!(
        got.config.upstreams.to_string(),
        "http://goremotecache:xxxxx@cache.internal:8321/mod|http://127.0.0.1:9/up"
    );
    // The token reaches the fetcher whole: percent-encoded in the URL, decoded by it.
    let Some(crate::goproxy::Upstream::Url(first)) = got.config.upstreams.get(0) else {
        panic!("not a URL first");
    };
    assert_eq!(
        first,
        "http://goremotecache:t%40k%2F1@cache.internal:8321/mod"
    );
    // Not in the fingerprint: a build's connect finds the daemon that serves the proxy.
    let build = daemon(&options[..1]).unwrap().build;
    assert_eq!(
        crate::daemon::place::Fingerprint::of(&build),
        crate::daemon::place::Fingerprint::of(&daemon(&options).unwrap().build)
    );
}
