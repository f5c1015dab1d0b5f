//! A build never fails because of the daemon: one killed at any point of a build, one stopped
//! (SIGTERM) in the middle of one, or one that cannot be reached at all, leaves the session to
//! go on by itself (and say so, once).

use crate::support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::process::Signal;
use support::s3::{Fault, S3Server};

use super::{
    DEADLINE, Project, Record, alive, files_ending, kill_daemon, times_without_daemon, wait_gone,
};

/// When to kill the daemon during a build.
#[derive(Debug, Clone, Copy)]
enum KillAt {
    /// As soon as its record is there: while it starts, before or as connect reaches it.
    Start,
    /// Once the store has seen this many object GETs: the build is under way.
    Gets(u64),
    /// SIGTERM once the store has seen this many object GETs: the daemon stops, ending the
    /// sessions still open.
    Term(u64),
}

/// Kills the daemon of `cache_dir` at `point`; returns its pid, or `None` if `done` came
/// first (the build ended before that point).
fn kill_at(cache_dir: &Path, server: &S3Server, point: KillAt, done: &AtomicBool) -> Option<u32> {
    let start = Instant::now();
    while !done.load(Ordering::SeqCst) && start.elapsed() < DEADLINE {
        let record = files_ending(&cache_dir.join("daemon"), ".json")
            .first()
            .and_then(|path| Record::read(path));
        let (due, signal) = match point {
            KillAt::Start => (true, Signal::KILL),
            KillAt::Gets(n) => (server.count("GET") >= n, Signal::KILL),
            KillAt::Term(n) => (server.count("GET") >= n, Signal::TERM),
        };
        if let Some(record) = record.filter(|_| due) {
            kill_daemon(record.pid, signal);
            return Some(record.pid);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    None
}

/// Sets its flag when dropped, even by a panic.
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[test]
fn a_daemon_killed_during_a_build_leaves_the_build_whole() {
    let server = S3Server::start();
    support::warm_bucket(&server, "dkill");
    // Every object GET is answered late, so that a build lasts long enough to be cut into.
    server.set_fault(Fault::DelayMs(25));
    let mut project = Project::on_shared_module(&server, "dkill");
    let mut killed = Vec::new();
    let points = [
        KillAt::Start,
        KillAt::Gets(5),
        KillAt::Gets(40),
        KillAt::Term(20),
    ];
    for (n, point) in points.into_iter().enumerate() {
        project.switch_machine(&format!("kill-{n}"));
        server.reset_counts();
        let cache_dir = project.cache_dir.clone();
        let done = AtomicBool::new(false);
        let (pid, (build, printed)) = std::thread::scope(|scope| {
            let killer = scope.spawn(|| kill_at(&cache_dir, &server, point, &done));
            let ended = SetOnDrop(&done);
            let result = project.build_and_run(&format!("e2e-{n}"));
            drop(ended);
            (killer.join().unwrap(), result)
        });
        let pid = pid.unwrap_or_else(|| {
            panic!(
                "{point:?}: the build ended before the daemon was killed ({} GETs): {:?}",
                server.count("GET"),
                build.stats
            )
        });
        wait_gone(pid, "the killed daemon is gone");
        assert_eq!(printed, "TOTAL 9!\n", "{point:?}: {}", build.stderr());
        assert_eq!(
            times_without_daemon(&build.stderr()),
            1,
            "{point:?}: connect must say once that it runs without the daemon:\n{}",
            build.stderr()
        );
        killed.push(pid);
    }

    // The dead daemon's socket and record are still there: the next build starts a new one.
    let after = project.go(&["build", "./..."]);
    assert_eq!(
        times_without_daemon(&after.stderr()),
        0,
        "{}",
        after.stderr()
    );
    let pid = after.stat("daemon.pid") as u32;
    assert!(!killed.contains(&pid), "{pid} was killed");
    assert!(alive(pid));
}

#[test]
fn a_daemon_that_cannot_be_reached_leaves_the_session_direct() {
    let server = S3Server::start();
    let mut project = Project::tiny("daemon-unreachable", &server, "dunreach");
    let plain = project.root.path().join("plain-file");
    std::fs::write(&plain, "not a socket\n").unwrap();
    let cases = [
        ("a regular file as its directory", plain.join("daemon.sock")),
        ("a regular file at its path", plain.clone()),
    ];
    for (n, (what, socket)) in cases.iter().enumerate() {
        project.switch_machine(&format!("unreachable-{n}"));
        // A prefix of its own: the store has nothing for the build yet.
        project.args = server.args(&format!("dunreach-{n}"));
        project
            .args
            .extend(["--socket".to_string(), socket.display().to_string()]);
        let build = project.go(&["build", "./tiny/..."]);
        assert_eq!(
            times_without_daemon(&build.stderr()),
            1,
            "{what}: connect must say once that it runs without the daemon:\n{}",
            build.stderr()
        );
        let stats = build.stats.as_ref().expect("a stats file");
        assert!(stats["daemon"].is_null(), "{what}: {stats}");
        // The session used the store by itself: it looked (the empty prefix's key filter
        // answered its misses), and uploaded what it built.
        assert!(build.stat("remote.instant_misses") > 0, "{what}: {stats}");
        assert!(build.stat("remote.uploads") > 0, "{what}: {stats}");
        assert_eq!(
            std::fs::read(&plain).unwrap(),
            b"not a socket\n",
            "{what}: the file was replaced"
        );
    }
}
