//! A daemon's life: started by connect and gone when idle, one per set of settings, the
//! uploads it still holds when it is told to stop or flushed, the figures `status` gives, and
//! the warm-up that `warm` and `daemon --prefetch-key` start.

use crate::support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::mpsc;

use rustix::process::Signal;
use std::time::Duration;

use support::proxy::{Mode, Proxy};
use support::s3::{S3Server, s3_args, with_prefetch};

use super::{
    DEADLINE, Flushed, Foreground, Project, assert_bucket_has_every_local_action, bucket_entries,
    eventually, figure, json_lines, kill_daemon, wait_gone,
};

#[test]
fn connect_starts_a_daemon_that_exits_when_idle() {
    let server = S3Server::start();
    let mut project = Project::tiny("daemon-idle", &server, "didle");
    project.set_env("GOREMOTECACHE_IDLE_EXIT", "2s");
    assert!(project.records().is_empty());

    let build = project.go(&["build", "./tiny/..."]);
    let stats = build.stats.as_ref().expect("a stats file");
    let pid = figure(stats, "daemon.pid") as u32;
    let socket = PathBuf::from(stats["daemon"]["socket"].as_str().expect("a socket"));
    let daemon_dir = project.cache_dir.join("daemon");
    assert_eq!(socket.parent(), Some(daemon_dir.as_path()), "{socket:?}");
    let fingerprint = socket.file_stem().unwrap().to_str().unwrap().to_string();
    assert!(
        fingerprint.len() == 16 && fingerprint.chars().all(|c| c.is_ascii_hexdigit()),
        "{socket:?}"
    );
    assert!(
        daemon_dir.join(format!("{fingerprint}.log")).is_file(),
        "connect started the daemon without its log"
    );

    wait_gone(pid, "the idle daemon exits");
    assert!(project.records().is_empty(), "its record stayed");
    assert!(
        std::fs::symlink_metadata(&socket).is_err(),
        "its socket stayed"
    );

    // In the foreground, an idle daemon exits with status 0.
    let mut daemon = Foreground::start(&project, &["--idle-exit", "1s"]).expect("daemon starts");
    assert!(daemon.wait().success(), "{}", daemon.stderr());
}

#[test]
fn one_daemon_serves_each_set_of_settings() {
    let server = S3Server::start();
    let project = Project::new("daemon-one", &server, "done");
    let first = Foreground::start(&project, &[]).expect("the first daemon starts");
    assert_eq!(
        first.socket.parent(),
        Some(&*project.cache_dir.join("daemon"))
    );

    // The same settings: the running daemon serves them.
    let (status, stderr) = Foreground::start(&project, &[])
        .err()
        .expect("a second daemon");
    assert!(status.success(), "{stderr}");
    let says = format!(
        "goremotecache: a daemon (pid {}) already serves {}",
        first.pid,
        first.socket.display()
    );
    assert!(stderr.contains(&says), "{stderr}");

    // Other settings (another prefix): a daemon of their own, with another socket.
    let mut other = Project::new("daemon-one-other", &server, "dother");
    other.cache_dir = project.cache_dir.clone();
    other.lock_dir = project.lock_dir.clone();
    let second = Foreground::start(&other, &[]).expect("a daemon for other settings");
    assert_ne!(second.socket, first.socket);
    assert_eq!(project.records().len(), 2);

    // Given only the cache directory, status and flush mean both.
    let only_dir = |subcommand: &str, extra: &[&str]| {
        let (code, stdout, stderr) = support::outcome(
            std::process::Command::new(support::bin())
                .arg(subcommand)
                .arg("--cache-dir")
                .arg(&project.cache_dir)
                .args(extra),
        );
        assert_eq!(code, 0, "{subcommand}: {stderr}");
        stdout
    };
    let mut pids: Vec<u64> = json_lines(&only_dir("status", &["--json"]))
        .iter()
        .map(|daemon| figure(daemon, "pid"))
        .collect();
    pids.sort();
    let mut expected = vec![u64::from(first.pid), u64::from(second.pid)];
    expected.sort();
    assert_eq!(pids, expected);
    let flushed = only_dir("flush", &[]);
    let mut sockets: Vec<String> = flushed
        .lines()
        .map(|line| Flushed::parse(line).socket)
        .collect();
    sockets.sort();
    let mut expected = vec![
        first.socket.display().to_string(),
        second.socket.display().to_string(),
    ];
    expected.sort();
    assert_eq!(sockets, expected, "{flushed}");

    for daemon in [first, second] {
        let socket = daemon.socket.clone();
        let (status, stderr) = daemon.terminate();
        assert!(status.success(), "{stderr}");
        assert!(
            std::fs::symlink_metadata(&socket).is_err(),
            "{socket:?} stayed"
        );
    }
    assert!(project.records().is_empty(), "{:?}", project.records());
    // None left: status says so, and flush too.
    assert_eq!(only_dir("status", &["--json"]), "");
    let (code, stdout, stderr) = project.control("status", &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        format!("{stdout}{stderr}").contains("no daemon is running"),
        "{stdout}{stderr}"
    );
    let (code, stdout, stderr) = project.control("flush", &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        format!("{stdout}{stderr}").contains("no daemon is running"),
        "{stdout}{stderr}"
    );
}

/// A unix socket path has at most 107 bytes: a daemon whose default socket path would be
/// longer listens in the user's runtime directory instead, and is found from its record.
#[test]
fn a_socket_path_too_long_moves_to_the_runtime_dir() {
    use std::os::unix::fs::PermissionsExt;
    let server = S3Server::start();
    let mut project = Project::new("daemon-long", &server, "dlong");
    let runtime_dir = project.root.path().join("run");
    std::fs::create_dir(&runtime_dir).unwrap();
    std::fs::set_permissions(&runtime_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    project.set_env("XDG_RUNTIME_DIR", runtime_dir.to_str().unwrap());
    project.cache_dir = project.root.path().join("c".repeat(100));
    let daemon = Foreground::start(&project, &[]).expect("daemon starts");
    assert!(
        daemon.socket.starts_with(runtime_dir.join("goremotecache")),
        "{:?}",
        daemon.socket
    );
    assert!(daemon.socket.as_os_str().len() <= 107);
    let records = project.records();
    assert_eq!(records.len(), 1, "the record is in the daemon directory");
    assert_eq!(records[0].socket, daemon.socket);

    // A session through it: connect finds it from the settings.
    let mut args = vec![
        "connect".to_string(),
        "--cache-dir".into(),
        project.cache_dir.display().to_string(),
        "--lock-dir".into(),
        project.lock_dir.display().to_string(),
    ];
    args.extend(project.args.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env: Vec<(&str, &str)> = (project.env.iter())
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut session = support::Client::start_with(&args, &env);
    session.put(1, support::action(1), b"through a short socket");
    assert!(session.read().unwrap().get("Err").is_none());
    let stderr = session.close(2);
    assert_eq!(super::times_without_daemon(&stderr), 0, "{stderr}");
    assert_eq!(figure(&project.the_daemon(), "sessions_total"), 1);
    let socket = daemon.socket.clone();
    let (status, stderr) = daemon.terminate();
    assert!(status.success(), "{stderr}");
    assert!(
        std::fs::symlink_metadata(&socket).is_err(),
        "{socket:?} stayed"
    );
}

/// A project whose daemon writes to the bucket only, through a proxy that holds every
/// connection: a cold build of `./tiny/...` puts a few entries, and their uploads stay
/// pending until the test lets them through (`gate.set_mode(Mode::Delay(ZERO))`).
fn with_uploads_held(tag: &str, prefix: &str) -> (S3Server, Proxy, Project) {
    let server = S3Server::start();
    let gate = Proxy::start(&server.endpoint, Mode::Hold);
    let mut project = Project::tiny(tag, &server, prefix);
    project.args = s3_args(&gate.endpoint, prefix);
    project.args.extend(
        [
            "--remote-mode",
            "write-only",
            "--remote-timeout",
            "60s",
            "--upload-wait",
            "60s",
        ]
        .map(String::from),
    );
    (server, gate, project)
}

#[test]
fn sigterm_finishes_the_pending_uploads() {
    let (server, gate, project) = with_uploads_held("daemon-sigterm", "dterm");
    let before = bucket_entries(&server, "dterm");
    let build = project.go(&["build", "./tiny/..."]);
    assert!(build.stat("puts") > 0, "{:?}", build.stats);
    assert!(
        build.stat("daemon.uploads_pending") > 0,
        "the session's close waited for the uploads: {:?}",
        build.stats
    );
    let daemon = project.the_daemon();
    assert!(figure(&daemon, "uploads_pending") > 0, "{daemon}");

    let pid = build.stat("daemon.pid") as u32;
    kill_daemon(pid, Signal::TERM);
    gate.set_mode(Mode::Delay(Duration::ZERO));
    wait_gone(pid, "the daemon exits after its uploads");
    assert_bucket_has_every_local_action(&server, "dterm", &project.cache_dir);
    assert!(bucket_entries(&server, "dterm").len() > before.len());
}

#[test]
fn flush_waits_for_the_uploads_and_says_what_it_did() {
    let (server, gate, project) = with_uploads_held("daemon-flush", "dflush");
    let before = bucket_entries(&server, "dflush");
    // A cold build, then a warm one, which puts nothing. (A warm build of a command would
    // put its link's entry again, as the go command does without a daemon too: that entry
    // would be uploaded twice, and counted so.)
    let builds = [
        project.go(&["build", "./tiny/..."]),
        project.go(&["build", "./tiny/..."]),
    ];
    assert!(builds[0].stat("puts") > 0, "{:?}", builds[0].stats);
    assert!(builds[1].stat("hits") > 0, "{:?}", builds[1].stats);
    assert_eq!(builds[1].stat("puts"), 0, "{:?}", builds[1].stats);

    // The daemon's figures are those of the two sessions.
    let daemon = project.the_daemon();
    assert_eq!(figure(&daemon, "sessions"), 0, "{daemon}");
    assert_eq!(figure(&daemon, "sessions_total"), 2, "{daemon}");
    for name in ["gets", "hits", "misses", "puts"] {
        let sessions: u64 = builds.iter().map(|b| b.stat(name)).sum();
        assert_eq!(
            figure(&daemon, name),
            sessions,
            "{name}: status says {daemon}, the sessions' stats files {:?} and {:?}",
            builds[0].stats,
            builds[1].stats
        );
    }
    assert_eq!(figure(&daemon, "remote_hits"), 0, "{daemon}");
    assert!(figure(&daemon, "uploads_pending") > 0, "{daemon}");
    assert_eq!(figure(&daemon, "uploads_done"), 0, "{daemon}");

    // flush waits: it is still at work when the store opens.
    let mut flush = project
        .subcommand("flush")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (line_tx, lines) = mpsc::channel();
    let stderr = BufReader::new(flush.stderr.take().unwrap());
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        for line in stderr.lines().map_while(Result::ok) {
            text.push_str(&format!("{line}\n"));
            let _ = line_tx.send(());
        }
        text
    });
    let progress = lines.recv_timeout(DEADLINE);
    gate.set_mode(Mode::Delay(Duration::ZERO));
    let out = flush.wait_with_output().unwrap();
    let stderr = reader.join().unwrap();
    assert!(
        progress.is_ok(),
        "flush said nothing while the uploads were held: {stderr}"
    );
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout:?} {stderr}");
    let flushed = Flushed::parse(lines[0]);
    assert_eq!(flushed.socket, daemon["socket"].as_str().unwrap());
    assert_eq!(
        (flushed.dropped, flushed.failed, flushed.pending),
        (0, 0, 0),
        "{flushed:?} {stderr}"
    );

    // What it says is what reached the bucket.
    assert_bucket_has_every_local_action(&server, "dflush", &project.cache_dir);
    let added = bucket_entries(&server, "dflush").len() - before.len();
    assert_eq!(flushed.uploaded, added as u64, "{flushed:?}");
    let daemon = project.the_daemon();
    assert_eq!(figure(&daemon, "uploads_pending"), 0, "{daemon}");
    assert_eq!(
        figure(&daemon, "uploads_done"),
        flushed.uploaded,
        "{daemon}"
    );
    assert_eq!(figure(&daemon, "uploads_dropped"), 0, "{daemon}");
    assert_eq!(figure(&daemon, "upload_errors"), 0, "{daemon}");
}

/// Polls the one daemon's status until its prefetch has fetched every entry its manifest
/// lists; returns the prefetch figures.
fn prefetched(project: &Project) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    eventually("the prefetch fetches the manifest's entries", || {
        last = project.the_daemon();
        let prefetch = &last["prefetch"];
        prefetch.is_object()
            && figure(prefetch, "listed") > 50
            && figure(prefetch, "fetched") == figure(prefetch, "listed")
    });
    last["prefetch"].clone()
}

#[test]
fn warm_prefetches_a_fresh_machine_before_its_build() {
    const KEY: &str = "daemon-warm-key";
    let server = S3Server::start();
    support::warm_bucket(&server, "dwarm");
    let mut project = Project::on_shared_module(&server, "dwarm");
    project.args = with_prefetch(server.args("dwarm"));
    project
        .args
        .extend(["--prefetch-key", KEY].map(String::from));
    // The last build of the key, on another machine, wrote its manifest.
    project.subcommand = None;
    let last = project.go(&["build", "./..."]);
    project.subcommand = Some("connect");
    assert!(
        last.stat("remote.prefetch.manifest_written") > 50,
        "{:?}",
        last.stats
    );
    // Status names the key as its manifest's object does (the hash of the key's text).
    let manifests = super::names_in(&server.bucket_dir().join("dwarm/prefetch/v1"));
    assert_eq!(manifests.len(), 1, "{manifests:?}");
    let manifest = manifests.first().unwrap().as_str();

    project.switch_machine("warmed");
    let (code, stdout, stderr) = project.control("warm", &[]);
    assert_eq!(code, 0, "warm failed: {stdout}{stderr}");
    let prefetch = prefetched(&project);
    assert_eq!(prefetch["key"], manifest, "{prefetch}");
    // No build yet: all of it is the warm-up's, which goes on.
    let warm_up = &prefetch["warm_up"];
    assert_eq!(warm_up["build_began"], false, "{prefetch}");
    assert_eq!(figure(warm_up, "fetched"), figure(&prefetch, "fetched"));
    let pid = figure(&project.the_daemon(), "pid");

    let build = project.go(&["build", "-x", "./..."]);
    assert_eq!(build.compiles(), Vec::<String>::new(), "the build compiled");
    assert!(build.stat("hits") > 50, "{:?}", build.stats);
    assert_eq!(
        build.stat("remote.hits"),
        0,
        "the build fetched what prefetch had fetched: {:?}",
        build.stats
    );
    assert_eq!(build.stat("daemon.pid"), pid, "{:?}", build.stats);
    // The warm-up is counted apart: what was fetched before the build began.
    let status = project.the_daemon();
    let warm_up = &status["prefetch"]["warm_up"];
    assert_eq!(warm_up["build_began"], true, "{status}");
    assert_eq!(figure(warm_up, "fetched"), figure(&prefetch, "listed"));
    assert!(figure(warm_up, "bytes") > 0, "{status}");

    // `daemon --prefetch-key` starts the same prefetch as it starts.
    project.switch_machine("started-warm");
    let daemon = Foreground::start(&project, &[]).expect("daemon starts");
    let prefetch = prefetched(&project);
    assert_eq!(prefetch["key"], manifest, "{prefetch}");
    assert_eq!(prefetch["warm_up"]["build_began"], false, "{prefetch}");
    let (status, stderr) = daemon.terminate();
    assert!(status.success(), "{stderr}");
}
