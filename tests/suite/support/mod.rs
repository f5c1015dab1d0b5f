//! Shared test support: a client that speaks the protocol to the real binary, and a harness
//! that runs the real go command against it on a generated module.

#![allow(dead_code)]

pub mod encode;
pub mod proxy;
pub mod s3;

pub use encode::encode_request;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};
use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use goremotecache::cacheprog::wire;
use goremotecache::ids::{ActionId, OutputId};
use serde_json::Value;

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_goremotecache")
}

/// A goremotecache process driven over its pipes, as the go command would.
pub struct Client {
    pub child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Client {
    /// Starts the binary with `args` and reads the handshake.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with(args, &[])
    }

    pub fn start_with(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(bin());
        command.args(args);
        for (key, value) in env {
            command.env(key, value);
        }
        Self::spawn(command)
    }

    /// Starts `command`, which runs the binary in some way, and reads the handshake.
    pub fn spawn(mut command: Command) -> Self {
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("starting goremotecache");
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).expect("reading the handshake");
        assert_eq!(
            line,
            "{\"ID\":0,\"KnownCommands\":[\"get\",\"put\",\"close\"]}\n"
        );
        Self {
            child,
            stdin,
            stdout,
        }
    }

    /// Starts the binary on the cache and lock directories under `dir`.
    pub fn on_dir(dir: &Path, extra: &[&str]) -> Self {
        let cache = dir.join("cache");
        let locks = dir.join("locks");
        let mut args = vec![
            "--cache-dir",
            cache.to_str().unwrap(),
            "--lock-dir",
            locks.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        Self::start(&args)
    }

    pub fn send(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        stdin.write_all(bytes).unwrap();
        stdin.flush().unwrap();
    }

    pub fn get(&mut self, id: i64, action: ActionId) {
        self.send(&encode_request(
            id,
            &wire::Command::Get { action_id: action },
        ));
    }

    /// Sends a put with its body, encoded as the go command does.
    pub fn put(&mut self, id: i64, action: ActionId, body: &[u8]) {
        let output = OutputId::of(body);
        self.send(&put_bytes(id, action, output, body));
    }

    pub fn close_request(&mut self, id: i64) {
        self.send(&encode_request(id, &wire::Command::Close));
    }

    /// Takes stdin, to write to it from another thread.
    pub fn take_stdin(&mut self) -> ChildStdin {
        self.stdin.take().expect("stdin is open")
    }

    /// Closes stdin (what `go list` and a dying go command do).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Reads one response line; `None` at end of output.
    pub fn read(&mut self) -> Option<Value> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line).unwrap() == 0 {
            return None;
        }
        Some(
            serde_json::from_str(&line)
                .unwrap_or_else(|err| panic!("bad response {line:?}: {err}")),
        )
    }

    /// Sends `close` with `id`, checks its answer and a successful exit; returns stderr.
    pub fn close(mut self, id: i64) -> String {
        self.close_request(id);
        assert_eq!(self.read().unwrap(), serde_json::json!({"ID": id}));
        let (status, stderr) = self.finish();
        assert!(status.success(), "{stderr}");
        stderr
    }

    /// Waits for the process to exit and returns its stderr.
    pub fn finish(mut self) -> (std::process::ExitStatus, String) {
        self.stdin = None;
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut self.stdout, &mut rest).unwrap();
        assert!(rest.is_empty(), "unexpected output after the end: {rest:?}");
        let output = self.child.wait_with_output().unwrap();
        (
            output.status,
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }
}

/// A goremotecache process on the cache and lock directories under `dir`, with `--stats`, the
/// test credentials, `store_args` (such as [`s3::s3_args`]) and `extra` options.
pub fn s3_client(dir: &std::path::Path, store_args: Vec<String>, extra: &[&str]) -> Client {
    let mut args: Vec<String> = vec![
        "--cache-dir".into(),
        dir.join("cache").to_str().unwrap().into(),
        "--lock-dir".into(),
        dir.join("locks").to_str().unwrap().into(),
        "--stats".into(),
    ];
    args.extend(store_args);
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env = s3::credentials(s3::SECRET_KEY);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Client::start_with(&args, &env)
}

/// The bytes of a put request and its body line.
pub fn put_bytes(id: i64, action: ActionId, output: OutputId, body: &[u8]) -> Vec<u8> {
    let mut bytes = encode_request(
        id,
        &wire::Command::Put {
            action_id: action,
            output_id: output,
            body_size: body.len() as u64,
        },
    );
    if !body.is_empty() {
        bytes.push(b'"');
        bytes.extend_from_slice(B64.encode(body).as_bytes());
        bytes.extend_from_slice(b"\"\n");
    }
    bytes
}

/// Runs `command` to its end with stdin closed; returns its exit code (-1 for a signal),
/// stdout and stderr.
pub fn outcome(command: &mut Command) -> (i32, String, String) {
    let out = command
        .stdin(Stdio::null())
        .output()
        .expect("running the command");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Sets a file's modification time two hours back: older than the start-up sweep's hour.
pub fn make_old(path: &Path) {
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(old)
        .unwrap();
}

/// The keys a stored prefetch manifest (zstd-compressed text) lists, in its order.
pub fn manifest_keys(path: &Path) -> Vec<String> {
    manifest_text(path)
        .lines()
        .filter_map(|line| line.split(' ').next().filter(|key| key.len() == 64))
        .map(str::to_string)
        .collect()
}

/// Rewrites a stored prefetch manifest with every entry line twice (a damaged or hand-made
/// manifest); returns how many entries it listed.
pub fn list_every_key_twice(path: &Path) -> u64 {
    let text = manifest_text(path);
    let mut doubled = String::new();
    let mut listed = 0;
    for line in text.lines() {
        doubled.push_str(&format!("{line}\n"));
        if line.split(' ').next().is_some_and(|key| key.len() == 64) {
            doubled.push_str(&format!("{line}\n"));
            listed += 1;
        }
    }
    std::fs::write(path, zstd::bulk::compress(doubled.as_bytes(), 3).unwrap()).unwrap();
    listed
}

fn manifest_text(path: &Path) -> String {
    let bytes = zstd::stream::decode_all(&std::fs::read(path).unwrap()[..]).unwrap();
    String::from_utf8(bytes).unwrap()
}

/// Asserts that `keys` names no key twice.
pub fn assert_distinct(keys: &[String]) {
    let distinct: std::collections::HashSet<&String> = keys.iter().collect();
    assert_eq!(distinct.len(), keys.len(), "a key is listed twice");
}

/// A deterministic action ID.
pub fn action(n: u32) -> ActionId {
    let mut id = [0u8; 32];
    id[..4].copy_from_slice(&n.to_be_bytes());
    id[31] = 0xa5;
    ActionId(id)
}

/// Deterministic pseudo-random bytes.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// The go command, checked once: the tests need Go 1.24 or later.
pub fn go() -> &'static str {
    static GO: OnceLock<String> = OnceLock::new();
    GO.get_or_init(|| {
        let go = std::env::var("GO").unwrap_or_else(|_| "go".into());
        let out = Command::new(&go)
            .args(["env", "GOVERSION"])
            .env("GOTOOLCHAIN", "local")
            .output()
            .unwrap_or_else(|err| panic!("these tests need the go command (1.24 or later): {err}"));
        let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let minor: u32 = version
            .strip_prefix("go1.")
            .and_then(|rest| rest.split(['.', 'r', 'b']).next())
            .and_then(|m| m.parse().ok())
            .unwrap_or_else(|| panic!("cannot read the go version from {version:?}"));
        assert!(
            minor >= 24,
            "these tests need Go 1.24 or later, found {version}"
        );
        go
    })
}

/// A generated Go module and the directories of one goremotecache cache, with helpers to
/// run the go command through it.
pub struct GoProject {
    pub root: tempfile::TempDir,
    pub module: PathBuf,
    pub cache_dir: PathBuf,
    pub lock_dir: PathBuf,
    gocache: PathBuf,
    runs: std::cell::Cell<u32>,
    /// More goremotecache options (a remote store's).
    pub args: Vec<String>,
    /// More environment for the go command and goremotecache.
    pub env: Vec<(String, String)>,
    /// A program that runs goremotecache (`wrapper goremotecache ARGS`), as CI setups do.
    pub wrapper: Option<PathBuf>,
}

/// What one go command printed, and goremotecache's figures for it.
pub struct GoRun {
    pub output: Output,
    pub stats: Option<Value>,
}

impl GoRun {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    /// A figure from the stats file; `remote.hits` reaches into the remote section.
    pub fn stat(&self, name: &str) -> u64 {
        self.stat_if_any(name)
            .unwrap_or_else(|| panic!("no {name} in stats: {:?}", self.stats))
    }

    /// A figure that only some runs have (`remote.prefetch.used` when prefetch is on).
    pub fn stat_if_any(&self, name: &str) -> Option<u64> {
        let mut value = self.stats.as_ref();
        for part in name.split('.') {
            value = value.and_then(|v| v.get(part));
        }
        value.and_then(Value::as_u64)
    }

    /// Gets answered from the remote store: fetched by the get itself, or by prefetch.
    pub fn remote_answers(&self) -> u64 {
        self.stat("remote.hits") + self.stat_if_any("remote.prefetch.used").unwrap_or(0)
    }

    /// The lines of `-x` output that run one of `tools` (`compile`, `asm`, `vet`, `link`).
    pub fn tool_runs(&self, tools: &[&str]) -> Vec<String> {
        self.stderr()
            .lines()
            .filter(|l| tools.iter().any(|tool| l.contains(&format!("/{tool} "))))
            .map(str::to_owned)
            .collect()
    }

    /// The compiler and assembler runs in `-x` output: a fully cached build has none. (A
    /// `go build` of a main package links again even with Go's own cache.)
    pub fn compiles(&self) -> Vec<String> {
        self.tool_runs(&["compile", "asm"])
    }
}

impl GoProject {
    /// A module of several packages with tests, unique to this test (`tag` goes into the
    /// code, so no two tests share action IDs for the module's own packages).
    pub fn new(tag: &str) -> Self {
        let root = tempfile::tempdir().unwrap();
        let module = root.path().join("mod");
        write_module(&module, tag);
        let project = Self {
            cache_dir: root.path().join("cache"),
            lock_dir: root.path().join("locks"),
            gocache: root.path().join("gocache"),
            module,
            root,
            runs: std::cell::Cell::new(0),
            args: Vec::new(),
            env: Vec::new(),
            wrapper: None,
        };
        std::fs::create_dir_all(&project.gocache).unwrap();
        project
    }

    /// A project on the module that every test starting from a warm bucket shares
    /// ([`s3::warm_bucket`]): the go command's action IDs include a package's directory, so
    /// the bucket's entries are this module's only where it stays where it is. Its files must
    /// not be changed.
    pub fn on_shared_module() -> Self {
        static MODULE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
        let module = MODULE.get_or_init(|| {
            let dir = own_target_tmp_dir("shared-module");
            write_module(&dir, "shared");
            dir
        });
        let mut project = Self::new("unused");
        project.module = module.clone();
        project
    }

    /// Moves to a new machine: fresh local cache, lock and GOCACHE directories (the module
    /// stays where it is, as a CI checkout does).
    pub fn switch_machine(&mut self, name: &str) {
        let dir = self.root.path().join(name);
        self.cache_dir = dir.join("cache");
        self.lock_dir = dir.join("locks");
        self.gocache = dir.join("gocache");
        std::fs::create_dir_all(&self.gocache).unwrap();
    }

    /// The GOCACHEPROG value for this project's cache, writing stats to `stats_file`.
    pub fn gocacheprog(&self, stats_file: &Path) -> String {
        let mut line = match &self.wrapper {
            Some(wrapper) => format!("{} ", wrapper.display()),
            None => String::new(),
        };
        line += &format!(
            "{} --cache-dir {} --lock-dir {} --stats-file {}",
            bin(),
            self.cache_dir.display(),
            self.lock_dir.display(),
            stats_file.display()
        );
        for arg in &self.args {
            line.push(' ');
            line.push_str(arg);
        }
        line
    }

    /// A go command in the module directory, configured to use only this project's caches.
    pub fn command(&self, args: &[&str]) -> (Command, PathBuf) {
        let n = self.runs.get() + 1;
        self.runs.set(n);
        let stats_file = self.root.path().join(format!("stats-{n}.json"));
        let mut command = Command::new(go());
        command
            .args(args)
            .current_dir(&self.module)
            .env("GOCACHEPROG", self.gocacheprog(&stats_file))
            .env("GOCACHE", &self.gocache)
            .env("GOTOOLCHAIN", "local")
            .env("GOFLAGS", "-mod=mod")
            .env("GOPROXY", "off")
            .env("GOWORK", "off")
            .env("GO111MODULE", "on")
            .env("CGO_ENABLED", "0")
            .env_remove("GOREMOTECACHE_CACHE_DIR")
            .env_remove("GOREMOTECACHE_LOCK_DIR")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_PROFILE");
        for (key, value) in &self.env {
            command.env(key, value);
        }
        (command, stats_file)
    }

    /// Builds the module's command and runs it: what a build from cached packages must
    /// print is `TOTAL 9!`.
    pub fn build_and_run_command(&self, name: &str) -> String {
        let exe = self.root.path().join(name);
        self.go(&["build", "-o", exe.to_str().unwrap(), "./cmd/e2e"]);
        let out = Command::new(&exe)
            .output()
            .expect("running the built command");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Moves to the fresh machine `name` and builds there: everything must come from the
    /// remote store, so nothing is compiled. Returns the build.
    pub fn build_on_fresh_machine(&mut self, name: &str) -> GoRun {
        self.switch_machine(name);
        let build = self.go(&["build", "-x", "./..."]);
        assert_eq!(
            build.compiles(),
            Vec::<String>::new(),
            "machine {name} compiled"
        );
        assert!(build.remote_answers() > 50, "{:?}", build.stats);
        build
    }

    /// Runs `go test ./...` and requires every package's result to come from the cache.
    pub fn assert_tests_cached(&self) {
        let test = self.go(&["test", "./..."]);
        for pkg in ["mathx", "report", "text"] {
            let line = format!("ok  \texample.com/e2e/{pkg}\t(cached)");
            assert!(
                test.stdout().contains(&line),
                "missing {line:?} in:\n{}",
                test.stdout()
            );
        }
    }

    /// Runs the go command and requires it to succeed.
    pub fn go(&self, args: &[&str]) -> GoRun {
        let (mut command, stats_file) = self.command(args);
        let output = command.output().expect("running go");
        assert!(
            output.status.success(),
            "go {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let stats = std::fs::read(&stats_file)
            .ok()
            .map(|bytes| serde_json::from_slice(&bytes).expect("stats file is JSON"));
        GoRun { output, stats }
    }
}

/// Writes a module with four packages, tests in three, and a command.
fn write_module(dir: &Path, tag: &str) {
    let files = [
        ("go.mod", "module example.com/e2e\n\ngo 1.24\n".to_string()),
        (
            "text/text.go",
            format!(
                "package text\n\nimport \"strings\"\n\n// Tag makes this module's action IDs unique to one test.\nconst Tag = {tag:?}\n\nfunc Shout(s string) string {{ return strings.ToUpper(s) + \"!\" }}\n"
            ),
        ),
        (
            "text/text_test.go",
            "package text\n\nimport \"testing\"\n\nfunc TestShout(t *testing.T) {\n\tif got := Shout(\"hi\"); got != \"HI!\" {\n\t\tt.Fatalf(\"Shout = %q\", got)\n\t}\n}\n".to_string(),
        ),
        (
            "mathx/mathx.go",
            "package mathx\n\nimport \"strconv\"\n\nfunc Sum(xs ...int) int {\n\tn := 0\n\tfor _, x := range xs {\n\t\tn += x\n\t}\n\treturn n\n}\n\nfunc Itoa(n int) string { return strconv.Itoa(n) }\n".to_string(),
        ),
        (
            "mathx/mathx_test.go",
            "package mathx\n\nimport \"testing\"\n\nfunc TestSum(t *testing.T) {\n\tif Sum(1, 2, 3) != 6 {\n\t\tt.Fatal(\"Sum\")\n\t}\n}\n".to_string(),
        ),
        (
            "report/report.go",
            "package report\n\nimport (\n\t\"example.com/e2e/mathx\"\n\t\"example.com/e2e/text\"\n)\n\nfunc Line(xs ...int) string { return text.Shout(\"total \" + mathx.Itoa(mathx.Sum(xs...))) }\n".to_string(),
        ),
        (
            "report/report_test.go",
            "package report\n\nimport \"testing\"\n\nfunc TestLine(t *testing.T) {\n\tif got := Line(1, 2); got != \"TOTAL 3!\" {\n\t\tt.Fatalf(\"Line = %q\", got)\n\t}\n}\n".to_string(),
        ),
        (
            "cmd/e2e/main.go",
            "package main\n\nimport (\n\t\"os\"\n\n\t\"example.com/e2e/report\"\n)\n\nfunc main() { os.Stdout.WriteString(report.Line(4, 5) + \"\\n\") }\n".to_string(),
        ),
    ];
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
}

/// The regular files below `dir`, however deep (0 if it does not exist).
pub fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => count_files(&entry.path()),
            Ok(kind) if kind.is_file() => 1,
            _ => 0,
        })
        .sum()
}

/// A directory `NAME-<pid>` of this test process under Cargo's temp directory for tests,
/// empty; those of test processes that are gone are removed first.
pub fn own_target_tmp_dir(name: &str) -> PathBuf {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    for entry in std::fs::read_dir(base).into_iter().flatten().flatten() {
        let file_name = entry.file_name();
        let pid = (file_name.to_str())
            .and_then(|n| n.strip_prefix(name)?.strip_prefix('-')?.parse::<u32>().ok());
        if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let dir = base.join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Puts into `server`'s bucket, under `prefix`, what machine A leaves there after `go build
/// ./...` and `go test ./...` of [`GoProject::on_shared_module`]: built once per test binary
/// and copied into each test's own bucket, so that tests that start from a warm bucket do not
/// each compile the module and the standard library first.
pub fn warm_bucket(server: &s3::S3Server, prefix: &str) {
    static TEMPLATE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let template = TEMPLATE.get_or_init(|| {
        let builder = s3::S3Server::start();
        let mut project = GoProject::on_shared_module();
        project.args = builder.args("warm");
        project.env = s3::credentials(s3::SECRET_KEY);
        let build = project.go(&["build", "./..."]);
        assert!(build.stat("remote.uploads") > 50, "{:?}", build.stats);
        assert_eq!(build.stat("remote.upload_errors"), 0, "{:?}", build.stats);
        assert_eq!(build.stat("remote.uploads_dropped"), 0, "{:?}", build.stats);
        let test = project.go(&["test", "./..."]);
        assert_eq!(test.stat("remote.upload_errors"), 0, "{:?}", test.stats);
        let dir = own_target_tmp_dir("warm-bucket");
        copy_tree(&builder.bucket_dir().join("warm"), &dir);
        dir
    });
    copy_tree(template, &server.bucket_dir().join(prefix));
}

/// Copies the files below `from` to the same places below `to`.
fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
