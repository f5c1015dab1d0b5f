//! `goremotecache serve --goproxy`, the module proxy (issue 14), driven by the real go
//! command, a module per topic: builds through it and from its storage alone ([`builds`]),
//! how its mutable answers follow the upstream and stand in for it ([`freshness`]), a private
//! module through `direct` ([`private`]), and what it refuses or never keeps ([`refusals`]).
//!
//! The upstream is `tests/testdata/testsumdb` ([`Upstream`]), built once per test process: a
//! module proxy over a GOPROXY layout ([`Layout`]) and a checksum database signed with a key
//! made at its start. The go command ([`Machine`]) runs with a fresh GOPATH per machine,
//! `GOSUMDB` set to that bare key (so that it asks the proxy for the database too). The go
//! command sends credentials (`.netrc`, or a user and password in GOPROXY's URL) over https
//! only, so most servers here speak plain http with `--allow-anonymous-read`, and one test
//! ([`refusals`]) gives the go command its token in a `.netrc` file over TLS.

use crate::support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

mod builds;
mod freshness;
mod private;
mod refusals;

/// The token every module proxy of these tests accepts.
const TOKEN: &str = "goproxy-token-0123456789abcdef";

/// The checksum database's name (testsumdb's default).
const SUMDB: &str = "sumdb.test";

/// The longest one go command may run before it is killed and its test failed.
pub(crate) const GO_BOUND: Duration = Duration::from_secs(120);

/// testsumdb, built once per test process with the go command's default module cache, where
/// CI's setup put golang.org/x/mod (`GOPROXY=off`: these tests never reach the internet).
pub(crate) fn testsumdb() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let go = support::go();
        let version = Command::new(go)
            .args(["env", "GOVERSION"])
            .env("GOTOOLCHAIN", "local")
            .output()
            .expect("running go env GOVERSION");
        let version = String::from_utf8_lossy(&version.stdout).trim().to_owned();
        let minor: u32 = (version.strip_prefix("go1."))
            .and_then(|rest| rest.split(['.', 'r', 'b']).next())
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        assert!(
            minor >= 26,
            "the module proxy's tests build tests/testdata/testsumdb, which needs Go 1.26 or \
             later; found {version}"
        );
        let dir = support::own_target_tmp_dir("testsumdb");
        std::fs::create_dir_all(&dir).unwrap();
        let bin = dir.join("testsumdb");
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata/testsumdb");
        let out = bounded(
            Command::new(go)
                .args(["build", "-o", bin.to_str().unwrap(), "."])
                .current_dir(&source)
                .env("GOPROXY", "off")
                .env("GOFLAGS", "-mod=readonly")
                .env("GOWORK", "off")
                .env("GOTOOLCHAIN", "local")
                .env("CGO_ENABLED", "0"),
            GO_BOUND,
        );
        assert!(
            out.status.success(),
            "building testsumdb failed (run `go mod download golang.org/x/mod@v0.43.0` \
             first, as .ci/run does):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        bin
    })
}

/// Runs `command` to its end, killing it after `bound` (and failing the test).
pub(crate) fn bounded(command: &mut Command, bound: Duration) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting a command");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stdout.read_to_end(&mut bytes);
        bytes
    });
    let err = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stderr.read_to_end(&mut bytes);
        bytes
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > bound {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{command:?} ran over {bound:?}:\n{}",
                String::from_utf8_lossy(&err.join().unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// A module: its path, version and files (`go.mod` among them).
struct Module<'a> {
    path: &'a str,
    version: &'a str,
    files: &'a [(&'a str, &'a str)],
}

const B_GO_MOD: &str = "module example.test/b\n\ngo 1.24\n";
const A_GO_MOD: &str = "module example.test/a\n\ngo 1.24\n\nrequire example.test/b v1.0.0\n";

/// `example.test/b` v1.0.0, and `example.test/a` v1.0.0 and v1.1.0, which need b.
const STANDARD: &[Module<'static>] = &[
    Module {
        path: "example.test/b",
        version: "v1.0.0",
        files: &[
            ("go.mod", B_GO_MOD),
            (
                "b.go",
                "package b\n\nfunc Word() string { return \"world\" }\n",
            ),
        ],
    },
    Module {
        path: "example.test/a",
        version: "v1.0.0",
        files: &[
            ("go.mod", A_GO_MOD),
            (
                "a.go",
                "package a\n\nimport \"example.test/b\"\n\nfunc Hello() string { return \"hello \" + b.Word() }\n",
            ),
        ],
    },
    Module {
        path: "example.test/a",
        version: "v1.1.0",
        files: &[
            ("go.mod", A_GO_MOD),
            (
                "a.go",
                "package a\n\nimport \"example.test/b\"\n\nfunc Hello() string { return \"hi \" + b.Word() }\n",
            ),
        ],
    },
];

/// `example.test/a` v1.2.0, which the tests of freshness add to a running upstream's layout.
const A_V1_2_0: Module<'static> = Module {
    path: "example.test/a",
    version: "v1.2.0",
    files: &[
        ("go.mod", A_GO_MOD),
        (
            "a.go",
            "package a\n\nimport \"example.test/b\"\n\nfunc Hello() string { return \"hey \" + b.Word() }\n",
        ),
    ],
};

/// A GOPROXY layout of module files, in a directory of its own.
struct Layout {
    dir: tempfile::TempDir,
}

impl Layout {
    /// An empty layout.
    fn empty() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A layout holding [`STANDARD`]: a copy of one made once per test process.
    fn standard() -> Self {
        static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
        let template = TEMPLATE.get_or_init(|| {
            let dir = support::own_target_tmp_dir("goproxy-layout");
            std::fs::create_dir_all(&dir).unwrap();
            for module in STANDARD {
                make_module(&dir, module);
            }
            dir
        });
        let layout = Self::empty();
        support::copy_tree(template, layout.path());
        layout
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Adds `module` (its files, and its version to the module's list).
    fn add(&self, module: &Module) {
        make_module(self.path(), module);
    }

    /// The bytes of a file of the layout (`example.test/b/@v/v1.0.0.zip`).
    fn file(&self, path: &str) -> Vec<u8> {
        std::fs::read(self.path().join(path)).unwrap()
    }
}

/// `testsumdb mkmod` of `module` into the layout at `out`.
fn make_module(out: &Path, module: &Module) {
    let src = tempfile::tempdir().unwrap();
    for (name, text) in module.files {
        std::fs::write(src.path().join(name), text).unwrap();
    }
    let made = bounded(
        Command::new(testsumdb()).args([
            "mkmod",
            "-out",
            out.to_str().unwrap(),
            "-mod",
            module.path,
            "-ver",
            module.version,
            "-src",
            src.path().to_str().unwrap(),
        ]),
        GO_BOUND,
    );
    assert!(
        made.status.success(),
        "mkmod: {}",
        String::from_utf8_lossy(&made.stderr)
    );
}

/// `testsumdb serve -proxy` on a layout: a module proxy with the checksum database of the
/// modules the layout held when it started, at `/sumdb/sumdb.test/`.
struct Upstream {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    url: String,
    /// The database's verifier key (`sumdb.test+<hash>+<key>`): GOSUMDB's value.
    key: String,
    /// The paths it was asked for, in order.
    requests: Arc<Mutex<Vec<String>>>,
}

impl Upstream {
    fn start(layout: &Layout) -> Self {
        let mut child = Command::new(testsumdb())
            .args(["serve", "-proxy", "-dir", layout.path().to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting testsumdb serve");
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (mut addr, mut key) = (None, None);
        for line in stdout.lines() {
            let line = line.unwrap();
            if let Some(value) = line.strip_prefix("ADDR=") {
                addr = Some(value.to_owned());
            } else if let Some(value) = line.strip_prefix("GOSUMDB_KEY=") {
                key = Some(value.to_owned());
            } else if line.starts_with("GOSUMDB=") {
                break;
            }
        }
        let (Some(addr), Some(key)) = (addr, key) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("testsumdb serve printed no ADDR= and GOSUMDB_KEY=");
        };
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let seen = Arc::clone(&requests);
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if let Some(path) = line.strip_prefix("REQ GET ") {
                    seen.lock().unwrap().push(path.to_owned());
                }
            }
        });
        Self {
            child,
            url: format!("http://{addr}"),
            key,
            requests,
        }
    }

    /// The paths asked for so far that contain `part`.
    fn requests_for(&self, part: &str) -> Vec<String> {
        let requests = self.requests.lock().unwrap();
        requests
            .iter()
            .filter(|p| p.contains(part))
            .cloned()
            .collect()
    }

    /// The paths asked for that contain `part`, once there are at least `count` of them: the
    /// upstream logs a request before it answers, but the thread that reads its log may not
    /// have read the line yet when the answer is back. Panics after ten seconds.
    fn requests_seen(&self, part: &str, count: usize) -> Vec<String> {
        let start = Instant::now();
        loop {
            let seen = self.requests_for(part);
            if seen.len() >= count {
                return seen;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the upstream saw {seen:?}, not {count} requests for {part:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `goremotecache serve --goproxy` on a storage directory of its own.
struct ProxyServer {
    child: Child,
    addr: String,
    /// `https` with `--tls-cert`, else `http`.
    scheme: &'static str,
    storage: tempfile::TempDir,
}

impl ProxyServer {
    /// A server whose upstreams are `upstream` (GOPROXY syntax), with the token [`TOKEN`]
    /// and anonymous reads, the database [`SUMDB`], `extra` options and `env` over the
    /// test's environment.
    fn start(upstream: &str, extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::on(tempfile::tempdir().unwrap(), upstream, extra, env)
    }

    /// A server on `storage` (another server's, after [`ProxyServer::stop_keeping`]).
    fn on(
        storage: tempfile::TempDir,
        upstream: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let mut args = vec!["--allow-anonymous-read"];
        args.extend_from_slice(extra);
        Self::started(storage, upstream, &args, env)
    }

    /// A server as [`ProxyServer::start`]'s that reads only with the token.
    fn start_private(upstream: &str, extra: &[&str]) -> Self {
        Self::started(tempfile::tempdir().unwrap(), upstream, extra, &[])
    }

    fn started(
        storage: tempfile::TempDir,
        upstream: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        // A free port rather than port 0: `serve --goproxy --listen 127.0.0.1:0` refuses to
        // start (it checks the upstreams against its own URL before it has a port).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut command = Command::new(support::bin());
        command
            .args([
                "serve",
                "--storage-dir",
                storage.path().to_str().unwrap(),
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--tokens",
                &format!("rw:{TOKEN}"),
                "--goproxy",
                "--goproxy-upstream",
                upstream,
                "--goproxy-sumdb",
                SUMDB,
            ])
            .args(extra)
            .env_remove("GOREMOTECACHE_ALLOW_ANONYMOUS_READ")
            .env("GOTOOLCHAIN", "local")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("starting goremotecache serve");
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        let mut seen = String::new();
        while !line.contains("serving ") {
            line.clear();
            if stderr.read_line(&mut line).unwrap() == 0 {
                let _ = child.wait();
                panic!("serve --goproxy exited before serving:\n{seen}");
            }
            seen.push_str(&line);
        }
        let addr = line
            .split("serving ")
            .nth(1)
            .and_then(|rest| rest.split("://").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .map(|addr| addr.trim_end_matches(':').to_owned())
            .unwrap_or_else(|| {
                let _ = child.kill();
                let _ = child.wait();
                panic!("no address in {line:?}")
            });
        // Drained, so that the server never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        let scheme = if extra.contains(&"--tls-cert") {
            "https"
        } else {
            "http"
        };
        Self {
            child,
            addr,
            scheme,
            storage,
        }
    }

    /// GOPROXY's value for this server.
    fn url(&self) -> String {
        format!("{}://{}/mod", self.scheme, self.addr)
    }

    /// Stops the server and hands back its storage directory.
    fn stop_keeping(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let storage = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.storage, storage)
    }

    /// One GET of `path` with the header lines `headers` (each ending in CRLF), the path
    /// sent as it is; returns the status and the body.
    fn get(&self, path: &str, headers: &str) -> (u16, Vec<u8>) {
        let mut stream = TcpStream::connect(&self.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let head = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n{headers}\r\n",
            self.addr
        );
        stream.write_all(head.as_bytes()).unwrap();
        let mut answer = Vec::new();
        // A cut-off answer is still an answer to look at.
        let _ = stream.read_to_end(&mut answer);
        let body_at = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(answer.len(), |p| p + 4);
        let head = String::from_utf8_lossy(&answer[..body_at]).to_ascii_lowercase();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("GET {path}: no status in {head:?}"));
        let body = &answer[body_at..];
        let body = if head.contains("transfer-encoding: chunked") {
            dechunk(body)
        } else {
            body.to_vec()
        };
        (status, body)
    }

    /// A GET with the token.
    fn get_with_token(&self, path: &str) -> (u16, Vec<u8>) {
        self.get(path, &format!("Authorization: Bearer {TOKEN}\r\n"))
    }

    /// The count of `goremotecache_goproxy_requests_total` with `kind` and `result`.
    fn requests(&self, kind: &str, result: &str) -> u64 {
        let (status, text) = self.get("/metrics", "");
        assert_eq!(status, 200, "GET /metrics");
        let kind = format!("kind=\"{kind}\"");
        let result = format!("result=\"{result}\"");
        String::from_utf8(text)
            .unwrap()
            .lines()
            .filter(|line| line.starts_with("goremotecache_goproxy_requests_total{"))
            .filter(|line| line.contains(&kind) && line.contains(&result))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|n| n as u64)
            .sum()
    }
}

impl Drop for ProxyServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Decodes an HTTP/1.1 chunked body (as far as it goes: a cut-off one is returned cut off).
fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = body.windows(2).position(|w| w == b"\r\n") {
        let Some(size) = std::str::from_utf8(&body[..line_end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
        else {
            break;
        };
        body = &body[line_end + 2..];
        if size == 0 {
            break;
        }
        let size = size.min(body.len());
        out.extend_from_slice(&body[..size]);
        body = &body[(size + 2).min(body.len())..];
    }
    out
}

/// One machine's go command: a fresh GOPATH (module cache, checksum database cache), GOPROXY
/// and GOSUMDB as the test sets them.
struct Machine {
    dir: tempfile::TempDir,
    /// GOPROXY's value.
    goproxy: String,
    /// GOSUMDB's value.
    gosumdb: String,
    /// More variables (GONOSUMDB).
    env: Vec<(String, String)>,
}

impl Machine {
    /// A machine whose go command uses `goproxy` and verifies against `sumdb_key` (bare, so
    /// that it asks the proxy for the database).
    fn new(goproxy: &str, sumdb_key: &str) -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            goproxy: goproxy.to_owned(),
            gosumdb: sumdb_key.to_owned(),
            env: Vec::new(),
        }
    }

    /// A go command in `dir`.
    fn command(&self, dir: &Path, args: &[&str]) -> Command {
        let mut command = Command::new(support::go());
        command
            .args(args)
            .current_dir(dir)
            .env("GOPATH", self.dir.path().join("gopath"))
            .env("GOMODCACHE", self.dir.path().join("gopath/pkg/mod"))
            .env("GOCACHE", shared_gocache())
            .env("GOPROXY", &self.goproxy)
            .env("GOSUMDB", &self.gosumdb)
            .env("NETRC", "/dev/null")
            .env("GOTOOLCHAIN", "local")
            .env("GOENV", "off")
            .env("GOFLAGS", "-modcacherw")
            .env("GOWORK", "off")
            .env("GO111MODULE", "on")
            .env("CGO_ENABLED", "0")
            .env_remove("GOCACHEPROG")
            .env_remove("GOPRIVATE")
            .env_remove("GONOPROXY")
            .env_remove("GONOSUMDB")
            .env_remove("GOINSECURE")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }

    /// Runs the go command in `dir`; returns its output, successful or not.
    fn try_go(&self, dir: &Path, args: &[&str]) -> Output {
        bounded(&mut self.command(dir, args), GO_BOUND)
    }

    /// Runs the go command in `dir` and requires it to succeed; returns its stdout.
    fn go(&self, dir: &Path, args: &[&str]) -> String {
        let out = self.try_go(dir, args);
        assert!(
            out.status.success(),
            "go {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// A directory of this machine with no module in it, for `go mod download` and `go
    /// list -m` of a module by path.
    fn outside(&self) -> PathBuf {
        let dir = self.dir.path().join("outside");
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// The versions of `module` that `go list -m -versions` lists. The go command reads the
    /// newest version's go.mod for retractions, and a version added to a running upstream's
    /// layout is in no checksum database: `GONOSUMDB` for the module.
    fn versions(&self, module: &str) -> Vec<String> {
        let args = ["list", "-m", "-versions", module];
        let out = bounded(
            self.command(&self.outside(), &args)
                .env("GONOSUMDB", module),
            GO_BOUND,
        );
        assert!(
            out.status.success(),
            "go {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = String::from_utf8(out.stdout).unwrap();
        out.split_whitespace().skip(1).map(str::to_owned).collect()
    }

    /// The files of the module cache's download directory for `module` (`v1.0.0.zip`, ...).
    fn downloaded(&self, module: &str) -> Vec<String> {
        let dir = self
            .dir
            .path()
            .join("gopath/pkg/mod/cache/download")
            .join(module)
            .join("@v");
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// A copy of the main module `example.test/app` (which needs a v1.1.0) on this machine,
    /// with no go.sum: the go command fetches and verifies every checksum.
    fn app(&self) -> PathBuf {
        let dir = self.dir.path().join("app");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("go.mod"),
            "module example.test/app\n\ngo 1.24\n\nrequire example.test/a v1.1.0\n\n\
             require example.test/b v1.0.0 // indirect\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("main.go"),
            "package main\n\nimport (\n\t\"os\"\n\n\t\"example.test/a\"\n)\n\n\
             func main() { os.Stdout.WriteString(a.Hello() + \"\\n\") }\n",
        )
        .unwrap();
        dir
    }

    /// Fetches the app's modules (`go mod tidy`, which verifies and writes go.sum), builds
    /// it and runs it: it must print `hi world`.
    fn build_app(&self) -> PathBuf {
        let app = self.app();
        self.go(&app, &["mod", "tidy"]);
        let exe = self.dir.path().join("app-bin");
        self.go(&app, &["build", "-o", exe.to_str().unwrap(), "."]);
        let out = bounded(&mut Command::new(&exe), GO_BOUND);
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hi world\n");
        app
    }
}

/// The go command's build cache that every machine of these tests shares: what they test is
/// where modules come from, not what is compiled, and one cache compiles the standard
/// library once per test process.
fn shared_gocache() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| support::own_target_tmp_dir("goproxy-gocache"))
}

/// A module proxy over [`STANDARD`], its upstream and the server in front of it.
struct Standard {
    /// Kept for as long as its upstream serves it.
    _layout: Layout,
    upstream: Upstream,
    server: ProxyServer,
}

impl Standard {
    /// The standard layout, its upstream, and a server with `extra` options on it.
    fn start(extra: &[&str]) -> Self {
        let layout = Layout::standard();
        let upstream = Upstream::start(&layout);
        let server = ProxyServer::start(&upstream.url, extra, &[]);
        Self {
            _layout: layout,
            upstream,
            server,
        }
    }

    /// A fresh machine using the server.
    fn machine(&self) -> Machine {
        Machine::new(&self.server.url(), &self.upstream.key)
    }
}
