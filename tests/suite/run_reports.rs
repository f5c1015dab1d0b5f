//! What a run leaves for the people and tools around it, through the real go command: the
//! metrics pushed to a real Prometheus Pushgateway, the CI step summary, the log file; and the
//! options that shape what reaches the remote store: --upload-min-size and the testing aid
//! --remote-fault-rate.

use crate::support;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::GoProject;
use support::s3::{S3Server, SECRET_KEY, credentials};
use support::warm_bucket;

fn s3_project(tag: &str, server: &S3Server, prefix: &str) -> GoProject {
    let mut project = GoProject::new(tag);
    project.args = server.args(prefix);
    project.env = credentials(SECRET_KEY);
    project
}

/// A project on the shared module whose bucket (under `prefix`) holds what a cold build and
/// test uploaded ([`warm_bucket`]): its first build on a fresh machine compiles nothing.
fn warmed_project(server: &S3Server, prefix: &str) -> GoProject {
    warm_bucket(server, prefix);
    let mut project = GoProject::on_shared_module();
    project.args = server.args(prefix);
    project.env = credentials(SECRET_KEY);
    project
}

/// A real `prometheus-pushgateway` on a free loopback port, with its own storage; killed when
/// dropped.
struct Pushgateway {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Pushgateway {
    fn start() -> Self {
        let program = which("prometheus-pushgateway").expect(
            "prometheus-pushgateway is needed by this test: install Debian's \
             prometheus-pushgateway package (.ci/run does)",
        );
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new(program)
            .arg(format!("--web.listen-address={addr}"))
            .arg(format!(
                "--persistence.file={}",
                dir.path().join("pushgateway.data").display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting prometheus-pushgateway");
        let gateway = Self {
            child,
            addr,
            _dir: dir,
        };
        // Not a timed assertion: a bound on waiting for it to listen at all.
        let start = Instant::now();
        while curl(&format!("http://{}/-/ready", gateway.addr)).is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "prometheus-pushgateway did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        gateway
    }

    /// The `goremotecache_build_*` samples it serves: (name, labels, value).
    fn samples(&self) -> Vec<(String, String, f64)> {
        let text = curl(&format!("http://{}/metrics", self.addr)).expect("scraping the gateway");
        text.lines()
            .filter(|l| l.starts_with("goremotecache_build_"))
            .map(|line| {
                let (series, value) = line.rsplit_once(' ').unwrap();
                let (name, labels) = series.split_once('{').unwrap_or((series, ""));
                (name.to_string(), labels.to_string(), value.parse().unwrap())
            })
            .collect()
    }
}

impl Drop for Pushgateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|path| path.is_file())
    })
}

/// The body of a successful GET of `url`.
fn curl(url: &str) -> Option<String> {
    let out = Command::new("curl")
        .args(["-sf", "--max-time", "10", url])
        .output()
        .expect("running curl");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn metrics_push_reaches_a_real_pushgateway_with_the_runs_figures() {
    let gateway = Pushgateway::start();
    let server = S3Server::start();
    let mut project = s3_project("metrics-push", &server, "push");
    project.args.extend([
        "--metrics-push-url".into(),
        format!("http://{}/metrics/job/gobuild", gateway.addr),
        "--metrics-push-labels".into(),
        "repo=e2e,branch=main".into(),
    ]);
    let build = project.go(&["build", "./..."]);
    assert_eq!(build.stderr(), "", "the push said something");
    let samples = gateway.samples();
    let value = |name: &str| {
        let (_, labels, value) = samples
            .iter()
            .find(|(n, _, _)| n == &format!("goremotecache_build_{name}"))
            .unwrap_or_else(|| panic!("no goremotecache_build_{name} in {samples:?}"));
        for label in ["repo=\"e2e\"", "branch=\"main\"", "job=\"gobuild\""] {
            assert!(labels.contains(label), "{name} lacks {label}: {labels}");
        }
        *value
    };
    for (metric, stat) in [
        ("gets_total", "gets"),
        ("hits_total", "hits"),
        ("misses_total", "misses"),
        ("puts_total", "puts"),
        ("put_bytes_total", "put_bytes"),
        ("remote_hits_total", "remote.hits"),
        ("remote_misses_total", "remote.misses"),
        ("remote_errors_total", "remote.errors"),
        ("uploads_total", "remote.uploads"),
        ("upload_bytes_total", "remote.bytes_up"),
    ] {
        assert_eq!(
            value(metric),
            build.stat(stat) as f64,
            "{metric} differs from the stats file's {stat}"
        );
    }
    assert!(build.stat("gets") > 0 && build.stat("remote.uploads") > 0);
}

#[test]
fn an_unreachable_push_url_is_one_warning_and_the_build_succeeds() {
    // Port 1 on loopback: nothing listens, the connection is refused.
    let mut project = GoProject::on_shared_module();
    support::warm_local_cache(&project);
    project.args = vec![
        "--metrics-push-url".into(),
        "http://127.0.0.1:1/metrics/job/gobuild".into(),
    ];
    let build = project.go(&["build", "./..."]);
    let lines: Vec<&str> = build
        .output
        .stderr
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| std::str::from_utf8(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("goremotecache: warning: metrics push to http://127.0.0.1:1/"),
        "{lines:?}"
    );
    assert!(build.stat("gets") > 0);
}

#[test]
fn a_bad_push_label_or_header_is_refused_at_start() {
    for (flag, value, said) in [
        ("--metrics-push-labels", "1repo=x", "--metrics-push-labels"),
        ("--metrics-push-labels", "repo", "--metrics-push-labels"),
        (
            "--metrics-push-headers",
            "Bad Name: x",
            "--metrics-push-headers",
        ),
    ] {
        let (code, _, stderr) = support::outcome(Command::new(support::bin()).args([
            "--metrics-push-url",
            "http://127.0.0.1:9091/metrics/job/x",
            flag,
            value,
        ]));
        assert_eq!(code, 2, "{flag} {value}: {stderr}");
        assert!(stderr.contains(said), "{stderr}");
    }
}

/// The cells of the data rows of the Markdown tables in `text`.
fn table_rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| hits"))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

#[test]
fn each_run_appends_its_table_to_the_step_summary() {
    let server = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let summary = dir.path().join("step-summary.md");
    std::fs::write(&summary, "# Build\n").unwrap();
    // A fresh machine on a warm bucket, then a warm local cache: different figures per run.
    let mut project = warmed_project(&server, "summary");
    project.env.push((
        "GITHUB_STEP_SUMMARY".into(),
        summary.to_str().unwrap().into(),
    ));
    let first = project.go(&["build", "./..."]);
    assert!(first.stat("remote.hits") > 0, "{:?}", first.stats);
    let second = project.go(&["build", "./..."]);
    assert!(second.stat("hits") > 0, "{:?}", second.stats);
    assert_eq!(second.stat("remote.hits"), 0, "{:?}", second.stats);

    let text = std::fs::read_to_string(&summary).unwrap();
    assert!(
        text.starts_with("# Build\n"),
        "the file was not appended to"
    );
    let rows = table_rows(&text);
    assert_eq!(rows.len(), 2, "{text}");
    for (row, run) in rows.iter().zip([&first, &second]) {
        assert_eq!(row[0], run.stat("hits").to_string(), "hits: {text}");
        assert_eq!(row[1], run.stat("misses").to_string(), "misses: {text}");
        assert_eq!(
            row[2],
            run.stat("remote.hits").to_string(),
            "remote hits: {text}"
        );
        assert_eq!(
            row[6],
            run.stat("remote.uploads").to_string(),
            "uploads: {text}"
        );
    }
    assert_eq!(text.matches("#### goremotecache: ").count(), 2, "{text}");
}

/// The lines of the log file, each checked for its time and process ID; returns the pids
/// and the messages.
fn log_lines(path: &Path) -> Vec<(u32, String)> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .map(|line| {
            // 2026-11-30T11:30:00.123Z goremotecache[1234]: info: message
            let (time, rest) = line.split_once(' ').unwrap();
            assert!(
                time.len() == 24 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
                "{line}"
            );
            let rest = rest
                .strip_prefix("goremotecache[")
                .unwrap_or_else(|| panic!("{line}"));
            let (pid, message) = rest.split_once("]: ").unwrap();
            (pid.parse().unwrap(), message.to_string())
        })
        .collect()
}

#[test]
fn the_log_file_has_each_runs_start_and_summary_and_stderr_stays_quiet() {
    let server = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("goremotecache.log");
    let mut project = warmed_project(&server, "logged");
    project
        .args
        .extend(["--log-file".into(), log.to_str().unwrap().into()]);
    let first = project.go(&["build", "./..."]);
    assert_eq!(first.stderr(), "");
    let after_one = log_lines(&log);
    project.switch_machine("second");
    let second = project.go(&["build", "./..."]);
    assert_eq!(second.stderr(), "");
    let lines = log_lines(&log);
    assert_eq!(
        &lines[..after_one.len()],
        &after_one[..],
        "the file was not appended to"
    );

    let starts: Vec<&(u32, String)> = (lines.iter())
        .filter(|(_, m)| {
            m.starts_with("info: goremotecache ") && m.contains(" started: backend s3 s3://")
        })
        .collect();
    let ends: Vec<&(u32, String)> = (lines.iter())
        .filter(|(_, m)| m.starts_with("info: run ended: "))
        .collect();
    assert_eq!(starts.len(), 2, "{lines:#?}");
    assert_eq!(ends.len(), 2, "{lines:#?}");
    assert_ne!(starts[0].0, starts[1].0, "two runs, two processes");
    assert_eq!(starts[0].0, ends[0].0);
    assert_eq!(starts[1].0, ends[1].0);
    assert!(starts[0].1.contains("/logged"), "{}", starts[0].1);
    let expected = format!(
        "info: run ended: {} gets, {} hits, {} misses, {} puts; remote {} hits",
        second.stat("gets"),
        second.stat("hits"),
        second.stat("misses"),
        second.stat("puts"),
        second.stat("remote.hits")
    );
    assert!(
        ends[1].1.starts_with(&expected),
        "{} vs {expected}",
        ends[1].1
    );
}

#[test]
fn a_log_file_path_that_is_a_symlink_is_refused_once_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("elsewhere");
    std::fs::write(&target, "").unwrap();
    let link = dir.path().join("goremotecache.log");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let mut project = GoProject::on_shared_module();
    support::warm_local_cache(&project);
    project.args = vec!["--log-file".into(), link.to_str().unwrap().into()];
    let build = project.go(&["build", "./..."]);
    let stderr = build.stderr();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("is a symbolic link"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&target).unwrap(),
        "",
        "written through the link"
    );
}

#[test]
fn upload_min_size_keeps_small_entries_local() {
    let server = S3Server::start();
    let mut project = s3_project("upload-min-size", &server, "min");
    project
        .args
        .extend(["--upload-min-size".into(), "4KiB".into()]);
    let build = project.go(&["build", "./..."]);
    let small = build.stat("remote.uploads_small");
    assert!(small > 0, "nothing was skipped: {:?}", build.stats);
    assert!(build.stat("remote.uploads") > 0, "{:?}", build.stats);
    // The entries, not the prefetch manifest, pack or key filter (objects of their own,
    // never skipped).
    let entries: Vec<PathBuf> = (server.entry_files().into_iter())
        .filter(|path| path.to_string_lossy().contains("/min/v1/"))
        .collect();
    assert_eq!(entries.len() as u64, build.stat("remote.uploads"));
    for entry in &entries {
        let len = std::fs::metadata(entry).unwrap().len();
        assert!(len >= 4096, "{} has {len} bytes", entry.display());
    }
}

#[test]
fn fault_rate_one_fails_every_remote_request_and_the_build_still_works() {
    let server = S3Server::start();
    let mut project = warmed_project(&server, "faulty");
    project
        .args
        .extend(["--remote-fault-rate".into(), "1.0".into()]);
    server.reset_counts();
    let (build, printed) = project.build_and_run("e2e");
    assert_eq!(printed, "TOTAL 9!\n");
    assert_eq!(build.stat("remote.hits"), 0, "{:?}", build.stats);
    assert!(build.stat("remote.errors") > 0, "{:?}", build.stats);
    assert_eq!(build.stat("remote.uploads"), 0, "{:?}", build.stats);
    // The faults are injected before the request: the store saw none.
    assert_eq!(server.count("GET") + server.count("PUT"), 0);
}

#[test]
fn connect_reports_its_own_session_and_its_daemon_logs_to_the_same_file() {
    let server = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let summary = dir.path().join("step-summary.md");
    let log = dir.path().join("goremotecache.log");
    let mut project = crate::daemon::Project::new("connect-reports", &server, "connect");
    project.set_env("GITHUB_STEP_SUMMARY", summary.to_str().unwrap());
    project.set_env("GOREMOTECACHE_LOG_FILE", log.to_str().unwrap());
    let build = project.go(&["build", "./..."]);
    assert!(build.stat("gets") > 0, "{:?}", build.stats);

    let text = std::fs::read_to_string(&summary).unwrap();
    let rows = table_rows(&text);
    assert_eq!(
        rows.len(),
        1,
        "one session, one table (the daemon adds none): {text}"
    );
    assert_eq!(rows[0][0], build.stat("hits").to_string(), "{text}");
    assert_eq!(rows[0][1], build.stat("misses").to_string(), "{text}");

    let lines = log_lines(&log);
    let connect = (lines.iter())
        .find(|(_, m)| m.contains(" started: connect, backend s3 s3://"))
        .unwrap_or_else(|| panic!("no connect start line: {lines:#?}"));
    assert!(
        (lines.iter()).any(|(pid, m)| *pid == connect.0 && m.starts_with("info: run ended: ")),
        "no summary line of the connect process: {lines:#?}"
    );
    assert!(
        (lines.iter()).any(|(pid, m)| *pid != connect.0 && m.contains(" started: daemon on ")),
        "no start line of the daemon: {lines:#?}"
    );
}
