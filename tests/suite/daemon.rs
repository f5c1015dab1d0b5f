//! `goremotecache daemon` and the commands that reach it (`connect`, `flush`, `status`, `warm`),
//! as running binaries, a module per topic: go builds through one daemon ([`builds`]), its life
//! from start to exit and what it reports ([`lifecycle`]), builds that survive a daemon that
//! dies or cannot be reached ([`faults`]), who may use its socket ([`security`]), its plain
//! GOCACHEPROG port ([`plugin`]), and its module proxy ([`goproxy`]).
//!
//! This file has what they share: [`Project`], a [`GoProject`] whose go commands run with
//! `GOCACHEPROG="goremotecache connect ..."` and which kills every daemon its machines started
//! when it is dropped (the daemons are detached: nothing else would); [`Foreground`], a daemon
//! run by the test itself; and the daemons' files. Uploads are kept pending by support's
//! proxy in `Mode::Hold`.
//!
//! Nothing here waits a fixed time for the daemon: whatever it does in the background is
//! polled for until [`DEADLINE`], which only a broken daemon reaches.

use crate::support;

use std::io::{BufRead, BufReader};
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::GoProject;
use support::s3::{S3Server, SECRET_KEY, credentials};

mod builds;
mod faults;
mod goproxy;
mod lifecycle;
mod plugin;
mod security;

/// How long a test waits for what a daemon does in the background (start, exit, uploads,
/// prefetch): far more than any of it takes, so that only a daemon that never does it fails.
const DEADLINE: Duration = Duration::from_secs(60);

/// What connect says, once, when a session goes on without the daemon.
const WITHOUT_DAEMON: &str = "goremotecache: connect: running without the daemon: ";

/// A [`GoProject`] whose go commands reach the cache through `goremotecache connect`
/// (`subcommand`; set it to `None` for a go command that runs goremotecache directly), with
/// the daemon's commands and files. Dropped, it kills the daemons of all its machines, and
/// after a failure it prints their logs.
pub struct Project {
    inner: GoProject,
}

impl Deref for Project {
    type Target = GoProject;
    fn deref(&self) -> &GoProject {
        &self.inner
    }
}

impl DerefMut for Project {
    fn deref_mut(&mut self) -> &mut GoProject {
        &mut self.inner
    }
}

impl Project {
    /// A module unique to this test (see [`GoProject::new`]), on the S3 store `server` under
    /// `prefix`.
    pub fn new(tag: &str, server: &S3Server, prefix: &str) -> Self {
        Self::on(GoProject::new(tag), server, prefix)
    }

    /// A module unique to this test with, besides [`GoProject::new`]'s packages, three that
    /// import nothing (`./tiny/...`): a cold build of those compiles three packages and needs
    /// nothing else, not even the runtime, so it takes a moment even on an empty store.
    pub fn tiny(tag: &str, server: &S3Server, prefix: &str) -> Self {
        let project = Self::new(tag, server, prefix);
        for name in ["a", "b", "c"] {
            let dir = project.module.join("tiny").join(name);
            std::fs::create_dir_all(&dir).unwrap();
            let code = format!(
                "package {name}\n\n// Tag makes this module's action IDs unique to one test.\n\
                 const Tag = {tag:?}\n\nfunc Twice(n int) int {{ return 2 * n }}\n"
            );
            std::fs::write(dir.join(format!("{name}.go")), code).unwrap();
        }
        project
    }

    /// The module whose entries [`support::warm_bucket`] holds: on a fresh machine, a build
    /// of it compiles nothing. Its files must not be changed.
    pub fn on_shared_module(server: &S3Server, prefix: &str) -> Self {
        Self::on(GoProject::on_shared_module(), server, prefix)
    }

    fn on(mut inner: GoProject, server: &S3Server, prefix: &str) -> Self {
        inner.subcommand = Some("connect");
        inner.args = server.args(prefix);
        inner.env = credentials(SECRET_KEY);
        // Daemons left behind by a test that failed hard exit by themselves soon.
        inner
            .env
            .push(("GOREMOTECACHE_IDLE_EXIT".into(), "60s".into()));
        Self { inner }
    }

    /// Sets an environment variable of the go command, goremotecache and its daemon.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.inner.env.retain(|(k, _)| k != key);
        self.inner.env.push((key.into(), value.into()));
    }

    /// `goremotecache SUBCOMMAND` with this machine's directories, the project's options and
    /// environment, and `extra`: its exit code, stdout and stderr.
    pub fn control(&self, subcommand: &str, extra: &[&str]) -> (i32, String, String) {
        let mut command = self.subcommand(subcommand);
        command.args(extra);
        support::outcome(&mut command)
    }

    /// `goremotecache SUBCOMMAND --cache-dir DIR --lock-dir DIR ARGS`, in the project's
    /// environment, not yet run.
    fn subcommand(&self, subcommand: &str) -> Command {
        let mut command = Command::new(support::bin());
        command
            .arg(subcommand)
            .arg("--cache-dir")
            .arg(&self.cache_dir)
            .arg("--lock-dir")
            .arg(&self.lock_dir)
            .args(&self.args)
            .env_remove("GOREMOTECACHE_CACHE_DIR")
            .env_remove("GOREMOTECACHE_LOCK_DIR");
        for (key, value) in &self.env {
            command.env(key, value);
        }
        command
    }

    /// `status --json` for this build's daemon: one object per daemon.
    pub fn status(&self) -> Vec<Value> {
        let (code, stdout, stderr) = self.control("status", &["--json"]);
        assert_eq!(code, 0, "status failed: {stderr}");
        json_lines(&stdout)
    }

    /// The one daemon that `status --json` lists.
    pub fn the_daemon(&self) -> Value {
        let status = self.status();
        assert_eq!(status.len(), 1, "one daemon expected: {status:?}");
        status.into_iter().next().unwrap()
    }

    /// The records of the daemons of this machine's cache directory.
    pub fn records(&self) -> Vec<Record> {
        records(&self.cache_dir)
    }

    /// The logs of every daemon this project's machines started, for failure messages.
    pub fn logs(&self) -> String {
        let mut text = String::new();
        for dir in daemon_dirs(self.root.path()) {
            for path in files_ending(&dir, ".log") {
                let log = std::fs::read_to_string(&path).unwrap_or_default();
                text += &format!("--- {}\n{log}", path.display());
            }
        }
        text
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("daemon logs:\n{}", self.logs());
        }
        for dir in daemon_dirs(self.root.path()) {
            for path in files_ending(&dir, ".json") {
                if let Some(record) = Record::read(&path) {
                    kill_daemon(record.pid, rustix::process::Signal::KILL);
                }
            }
        }
    }
}

/// Parses one JSON object per line.
pub fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|err| panic!("not JSON: {line:?}: {err}"))
        })
        .collect()
}

/// A figure of a `status --json` object or a stats file, by its dotted path.
pub fn figure(value: &Value, name: &str) -> u64 {
    let mut at = value;
    for part in name.split('.') {
        at = &at[part];
    }
    at.as_u64()
        .unwrap_or_else(|| panic!("no figure {name} in {value}"))
}

/// How often `stderr` says that connect runs without the daemon.
pub fn times_without_daemon(stderr: &str) -> usize {
    stderr.matches(WITHOUT_DAEMON).count()
}

/// A daemon's record, `<cache_dir>/daemon/<fp>.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub pid: u32,
    pub socket: PathBuf,
    pub fingerprint: String,
}

impl Record {
    /// The record at `path`; `None` if it is gone or not (yet) a record.
    fn read(path: &Path) -> Option<Self> {
        let value: Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        Some(Self {
            pid: u32::try_from(value["pid"].as_u64()?).ok()?,
            socket: PathBuf::from(value["socket"].as_str()?),
            fingerprint: value["fingerprint"].as_str()?.to_string(),
        })
    }
}

/// The records under `cache_dir`; each file there must be a complete record.
pub fn records(cache_dir: &Path) -> Vec<Record> {
    files_ending(&cache_dir.join("daemon"), ".json")
        .iter()
        .map(|path| {
            Record::read(path).unwrap_or_else(|| {
                panic!(
                    "{} is not a record: {:?}",
                    path.display(),
                    std::fs::read_to_string(path)
                )
            })
        })
        .collect()
}

/// The files in `dir` whose names end with `suffix`.
pub fn files_ending(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.to_string_lossy().ends_with(suffix))
        .collect();
    files.sort();
    files
}

/// The `daemon` directories of every machine under a project's root: `cache/daemon` and
/// `<machine>/cache/daemon`.
fn daemon_dirs(root: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![root.join("cache").join("daemon")];
    for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
        dirs.push(entry.path().join("cache").join("daemon"));
    }
    dirs.retain(|dir| dir.is_dir());
    dirs
}

/// Whether process `pid` runs (a zombie does not: nothing reaps the orphans on some machines).
pub fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

/// The session ID of process `pid` (the sixth field of its /proc stat).
pub fn session_id(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let (_, rest) = stat.rsplit_once(") ").unwrap();
    rest.split(' ').nth(3).unwrap().parse().unwrap()
}

/// Sends `signal` to the daemon `pid`, if it is still a running goremotecache (not a
/// recycled pid).
pub fn kill_daemon(pid: u32, signal: rustix::process::Signal) {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if alive(pid) && String::from_utf8_lossy(&cmdline).contains("goremotecache") {
        let pid = rustix::process::Pid::from_raw(pid as i32).expect("a positive pid");
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// Waits until process `pid` has exited.
pub fn wait_gone(pid: u32, what: &str) {
    eventually(what, || !alive(pid));
}

/// Calls `answers` until it says yes; panics after [`DEADLINE`].
pub fn eventually(what: &str, mut answers: impl FnMut() -> bool) {
    let start = Instant::now();
    while !answers() {
        assert!(
            start.elapsed() < DEADLINE,
            "{what}: not within {DEADLINE:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The entries (`<prefix>/v1/<actionid-hex>`) in the bucket, by action ID.
pub fn bucket_entries(server: &S3Server, prefix: &str) -> std::collections::BTreeSet<String> {
    names_in(&server.bucket_dir().join(prefix).join("v1"))
}

/// The action entries of a local cache (`a/<xx>/<actionid-hex>`), by action ID.
pub fn local_actions(cache_dir: &Path) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for shard in std::fs::read_dir(cache_dir.join("a")).into_iter().flatten() {
        out.extend(names_in(&shard.unwrap().path()));
    }
    out
}

fn names_in(dir: &Path) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name.len() == 64)
        .collect()
}

/// Requires every action of the local cache at `cache_dir` to be in the bucket.
pub fn assert_bucket_has_every_local_action(server: &S3Server, prefix: &str, cache_dir: &Path) {
    let local = local_actions(cache_dir);
    let bucket = bucket_entries(server, prefix);
    let missing: Vec<&String> = local.difference(&bucket).collect();
    assert!(
        missing.is_empty(),
        "{} of {} local entries are not in the bucket: {missing:?}",
        missing.len(),
        local.len()
    );
}

/// One line of `flush`'s stdout: `SOCKET: N uploaded, M dropped, K failed, L still pending`,
/// and perhaps more after a `; `.
#[derive(Debug, PartialEq, Eq)]
pub struct Flushed {
    pub socket: String,
    pub uploaded: u64,
    pub dropped: u64,
    pub failed: u64,
    pub pending: u64,
}

impl Flushed {
    pub fn parse(line: &str) -> Self {
        let figures_end = line.find("; ").unwrap_or(line.len());
        let (socket, figures) = line[..figures_end]
            .rsplit_once(": ")
            .unwrap_or_else(|| panic!("not a flush line: {line:?}"));
        let mut numbers = Vec::new();
        for (part, word) in
            figures
                .split(", ")
                .zip(["uploaded", "dropped", "failed", "still pending"])
        {
            let (n, rest) = part
                .split_once(' ')
                .unwrap_or_else(|| panic!("not a flush line: {line:?}"));
            assert_eq!(rest, word, "not a flush line: {line:?}");
            numbers.push(n.parse::<u64>().unwrap());
        }
        assert_eq!(numbers.len(), 4, "not a flush line: {line:?}");
        Self {
            socket: socket.to_string(),
            uploaded: numbers[0],
            dropped: numbers[1],
            failed: numbers[2],
            pending: numbers[3],
        }
    }
}

/// `goremotecache daemon` run by the test, in the foreground; killed when dropped.
pub struct Foreground {
    child: Child,
    pub pid: u32,
    pub socket: PathBuf,
    stderr: Arc<Mutex<String>>,
}

impl Foreground {
    /// Starts `goremotecache daemon` with the project's directories, options and environment
    /// and `extra`, and waits for it to say that it serves. If it exits first: its status and
    /// stderr.
    pub fn start(project: &Project, extra: &[&str]) -> Result<Self, (ExitStatus, String)> {
        let mut command = project.subcommand("daemon");
        command
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("starting the daemon");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready) = mpsc::channel();
        let reader = BufReader::new(child.stderr.take().unwrap());
        let text = stderr.clone();
        std::thread::spawn(move || {
            for line in reader.lines() {
                let Ok(line) = line else { break };
                text.lock().unwrap().push_str(&format!("{line}\n"));
                if let Some(ready) = ready_line(&line) {
                    let _ = ready_tx.send(ready);
                }
            }
        });
        match ready.recv_timeout(DEADLINE) {
            Ok((pid, socket)) => {
                assert_eq!(pid, child.id(), "the daemon names another pid");
                Ok(Self {
                    child,
                    pid,
                    socket,
                    stderr,
                })
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.wait().unwrap();
                let text = stderr.lock().unwrap().clone();
                Err((status, text))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the daemon did not say it serves within {DEADLINE:?}: {}",
                    stderr.lock().unwrap()
                );
            }
        }
    }

    /// What the daemon printed so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Sends SIGTERM and waits for the daemon to exit; returns its status and stderr.
    pub fn terminate(mut self) -> (ExitStatus, String) {
        kill_daemon(self.pid, rustix::process::Signal::TERM);
        let status = self.wait();
        // The reader thread ends with the daemon's stderr.
        eventually("the daemon's stderr ends", || {
            Arc::strong_count(&self.stderr) == 1
        });
        (status, self.stderr())
    }

    /// Waits for the daemon to exit.
    pub fn wait(&mut self) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "the daemon did not exit within {DEADLINE:?}: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Foreground {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The pid and socket of `goremotecache: daemon PID serving SOCKET`.
pub fn ready_line(line: &str) -> Option<(u32, PathBuf)> {
    let rest = line.strip_prefix("goremotecache: daemon ")?;
    let (pid, socket) = rest.split_once(" serving ")?;
    Some((pid.parse().ok()?, PathBuf::from(socket)))
}
