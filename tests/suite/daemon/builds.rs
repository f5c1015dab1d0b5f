//! Builds through the daemon with the real go command: a cold build, a warm one, the test
//! cache and `go list -export` on one machine, then a fresh machine after `flush`; and several
//! go commands at once, one of them started by a test of another, sharing one daemon.

use crate::support;

use std::path::PathBuf;
use std::process::Stdio;

use support::read_stats;
use support::s3::S3Server;

use super::{Flushed, Project, figure, kill_daemon, records, session_id, wait_gone};

#[test]
fn builds_through_the_daemon_reach_a_fresh_machine_after_flush() {
    let server = S3Server::start();
    // The standard library's entries are there already; the module's are not.
    support::warm_bucket(&server, "dbuild");
    let mut project = Project::new("daemon-build", &server, "dbuild");
    project.args.push("--stats".into());

    let cold = project.go(&["build", "-x", "./..."]);
    assert!(!cold.compiles().is_empty(), "a cold build must compile");
    assert!(cold.stat("puts") > 0, "{:?}", cold.stats);
    assert_eq!(cold.stat("put_errors"), 0, "{:?}", cold.stats);
    assert!(
        cold.stat("remote.hits") > 50,
        "the daemon's remote tier did not answer the misses: {:?}",
        cold.stats
    );
    let pid = cold.stat("daemon.pid") as u32;
    let record = project.records();
    assert_eq!(record.len(), 1, "{record:?}");
    assert_eq!(record[0].pid, pid);
    assert_eq!(
        session_id(pid),
        pid,
        "the daemon that connect started is not in a session of its own"
    );
    // --stats: the session's summary, and the daemon's line.
    let stderr = cold.stderr();
    let summary = format!("goremotecache: {} gets: ", cold.stat("gets"));
    assert!(stderr.contains(&summary), "{stderr}");
    assert!(
        stderr.contains(&format!("goremotecache: daemon: pid {pid} ")),
        "{stderr}"
    );

    let warm = project.go(&["build", "-x", "./..."]);
    assert_eq!(
        warm.compiles(),
        Vec::<String>::new(),
        "a warm build compiled"
    );
    assert!(warm.stat("hits") > 50, "{:?}", warm.stats);
    assert_eq!(warm.stat("daemon.pid") as u32, pid, "another daemon");

    let first = project.go(&["test", "./..."]);
    assert!(!first.stdout().contains("(cached)"), "{}", first.stdout());
    project.assert_tests_cached();

    let list = project.go(&[
        "list",
        "-export",
        "-f",
        "{{.ImportPath}} {{.Export}}",
        "./...",
    ]);
    let exports: Vec<PathBuf> = list
        .stdout()
        .lines()
        .filter_map(|line| line.split_once(' '))
        .filter(|(_, path)| !path.is_empty())
        .map(|(_, path)| PathBuf::from(path))
        .collect();
    assert!(exports.len() >= 3, "{}", list.stdout());

    // `flush` with only the cache directory: every daemon under it, here the one.
    let (code, stdout, stderr) = support::outcome(
        std::process::Command::new(support::bin())
            .args(["flush", "--cache-dir"])
            .arg(&project.cache_dir)
            .envs(project.env.iter().map(|(k, v)| (k, v))),
    );
    assert_eq!(code, 0, "flush failed: {stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one line per daemon: {stdout:?} {stderr}");
    let flushed = Flushed::parse(lines[0]);
    assert_eq!(flushed.socket, record[0].socket.to_str().unwrap());
    assert!(flushed.uploaded > 0, "{flushed:?}");
    assert_eq!(
        (flushed.dropped, flushed.failed, flushed.pending),
        (0, 0, 0),
        "{flushed:?} {stderr}"
    );

    // The daemon exits on SIGTERM; what `go list -export` printed is still there to read.
    kill_daemon(pid, rustix::process::Signal::TERM);
    wait_gone(pid, "the daemon exits on SIGTERM");
    for path in &exports {
        let bytes = std::fs::read(path).unwrap_or_else(|err| panic!("{path:?}: {err}"));
        assert!(!bytes.is_empty(), "{path:?} is empty");
    }

    // A new machine builds from the bucket: the module's packages were uploaded.
    let fresh = project.build_on_fresh_machine("machine-b");
    assert_ne!(fresh.stat("daemon.pid") as u32, pid, "{:?}", fresh.stats);
    project.assert_tests_cached();
}

/// A package whose test runs the go command itself, as code generators and integration tests
/// do: the nested go command finds GOCACHEPROG in its environment and connects too.
fn write_nested_package(project: &Project) {
    let dir = project.module.join("nested");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("nested.go"), "package nested\n").unwrap();
    std::fs::write(
        dir.join("nested_test.go"),
        "package nested\n\nimport (\n\t\"os\"\n\t\"os/exec\"\n\t\"testing\"\n)\n\n\
         func TestNestedBuild(t *testing.T) {\n\
         \tcmd := exec.Command(\"go\", \"build\", \"-o\", os.DevNull, \"example.com/e2e/cmd/e2e\")\n\
         \tcmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr\n\
         \tif err := cmd.Run(); err != nil {\n\t\tt.Fatalf(\"nested go build: %v\", err)\n\t}\n}\n",
    )
    .unwrap();
}

#[test]
fn four_go_commands_and_a_nested_one_share_one_daemon() {
    let server = S3Server::start();
    support::warm_bucket(&server, "dfour");
    let project = Project::new("daemon-four", &server, "dfour");
    write_nested_package(&project);

    // Four at once on a fresh machine: each of them may be the one to start the daemon.
    let children: Vec<_> = (0..4)
        .map(|_| {
            let (mut command, stats_file) = project.command(&["build", "./..."]);
            let child = command
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            (child, stats_file)
        })
        .collect();
    let mut pids = Vec::new();
    for (child, stats_file) in children {
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "a concurrent build failed:\n{stderr}\n{}",
            project.logs()
        );
        assert_eq!(super::times_without_daemon(&stderr), 0, "{stderr}");
        let stats = read_stats(&stats_file).expect("a stats file");
        pids.push(figure(&stats, "daemon.pid"));
    }
    let daemon = project.the_daemon();
    let pid = figure(&daemon, "pid");
    assert_eq!(pids, vec![pid; 4], "the builds did not share one daemon");
    assert!(figure(&daemon, "sessions_total") >= 4, "{daemon}");
    assert_eq!(records(&project.cache_dir).len(), 1);
    let before = figure(&daemon, "sessions_total");

    let test = project.go(&["test", "-count=1", "./nested"]);
    assert!(
        test.stdout().contains("ok  \texample.com/e2e/nested"),
        "{}\n{}",
        test.stdout(),
        test.stderr()
    );
    assert_eq!(super::times_without_daemon(&test.stderr()), 0);
    let daemon = project.the_daemon();
    assert_eq!(figure(&daemon, "pid"), pid, "another daemon");
    assert!(
        figure(&daemon, "sessions_total") >= before + 2,
        "the nested go command did not reach the daemon: {before} sessions before, then {daemon}"
    );
    assert_eq!(records(&project.cache_dir).len(), 1);
}
