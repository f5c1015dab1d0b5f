//! `daemon --goproxy-listen`: the daemon's module proxy, used by the real go command. The
//! upstream is our Go helper `tests/testdata/testsumdb` serving a module it made (`serve
//! -proxy`, without its checksum database: the daemon's test runs with `GOSUMDB=off`, and the
//! server's tests cover checksum databases). A first machine's `go mod download` goes through
//! its daemon to the upstream and the answers reach the bucket; with the upstream gone, a fresh
//! machine's daemon serves the same download from the bucket.

use crate::support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};

use serde_json::Value;
use support::s3::S3Server;
use support::{bin, go};

use super::{DEADLINE, Foreground, Project, eventually};

const MODULE: &str = "example.test/greet";
const VERSION: &str = "v1.0.0";

/// Runs `command` to its end within the goproxy suite's bound (killed past it); returns its
/// exit status, stdout and stderr.
fn bounded(command: &mut Command) -> (ExitStatus, String, String) {
    let out = crate::goproxy::bounded(command, crate::goproxy::GO_BOUND);
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The testsumdb helper, built once per test process by the goproxy suite.
fn testsumdb() -> &'static Path {
    crate::goproxy::testsumdb()
}

/// The helper serving a module layout as a proxy; killed when dropped.
struct Upstream {
    child: Child,
    url: String,
}

impl Upstream {
    /// A layout with [`MODULE`] at [`VERSION`] in `dir`, served.
    fn start(dir: &Path) -> Self {
        let src = dir.join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("go.mod"), format!("module {MODULE}\n\ngo 1.24\n")).unwrap();
        std::fs::write(
            src.join("greet.go"),
            "package greet\n\nfunc Hello() string { return \"hello\" }\n",
        )
        .unwrap();
        let layout = dir.join("layout");
        let (status, _, stderr) = bounded(
            Command::new(testsumdb())
                .args(["mkmod", "-out"])
                .arg(&layout)
                .args(["-mod", MODULE, "-ver", VERSION, "-src"])
                .arg(&src),
        );
        assert!(status.success(), "testsumdb mkmod: {stderr}");
        let mut child = Command::new(testsumdb())
            .args(["serve", "-proxy", "-dir"])
            .arg(&layout)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting testsumdb serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("ADDR=") {
                    let _ = tx.send(addr.to_owned());
                }
            }
        });
        let addr = rx.recv_timeout(DEADLINE).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("testsumdb serve did not say its address");
        });
        Self {
            child,
            url: format!("http://{addr}"),
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port that was free a moment ago.
fn free_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// `go mod download -json MODULE@VERSION` through the proxy at `addr`, in a fresh GOPATH
/// under `dir`: the download's JSON.
fn download(dir: &Path, addr: &str) -> Value {
    let gopath = dir.join("gopath");
    let (status, stdout, stderr) = bounded(
        Command::new(go())
            .args(["mod", "download", "-json", &format!("{MODULE}@{VERSION}")])
            .current_dir(dir)
            .env("GOPATH", &gopath)
            .env("GOCACHE", dir.join("gocache"))
            .env("GOPROXY", format!("http://{addr}/mod"))
            .env("GOSUMDB", "off")
            .env("GOFLAGS", "-modcacherw")
            .env("GOTOOLCHAIN", "local")
            .env("GOENV", "off")
            .env_remove("GOMODCACHE")
            .env_remove("GOPRIVATE")
            .env_remove("GONOPROXY")
            .env_remove("GONOSUMDB"),
    );
    assert!(
        status.success(),
        "go mod download failed: {stdout}\n{stderr}"
    );
    let json: Value = serde_json::from_str(&stdout).unwrap();
    assert!(json["Error"].is_null(), "{json}");
    let zip = json["Zip"].as_str().expect("a zip path");
    assert!(Path::new(zip).starts_with(&gopath), "{zip}");
    assert!(Path::new(zip).is_file(), "{zip}");
    json
}

/// The module proxy's figures in the daemon's status.
fn proxy_status(project: &Project) -> Value {
    project.the_daemon()["goproxy"].clone()
}

/// The files in `dir` and its subdirectories.
fn files_under(dir: &Path) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            n += files_under(&entry.path());
        } else if kind.is_file() {
            n += 1;
        }
    }
    n
}

#[test]
fn a_fresh_machine_gets_its_modules_from_the_bucket() {
    let server = S3Server::start();
    let prefix = "goproxy";
    let work = tempfile::tempdir().unwrap();
    let upstream = Upstream::start(&work.path().join("upstream"));

    let first = Project::new("goproxy-first", &server, prefix);
    let port = free_port();
    let daemon = Foreground::start(
        &first,
        &[
            "--goproxy-listen",
            &port,
            "--goproxy-upstream",
            &upstream.url,
            "--goproxy-sumdb",
            "off",
        ],
    )
    .unwrap_or_else(|(status, stderr)| panic!("the daemon exited ({status}): {stderr}"));
    // Said on stderr just after the socket's line.
    eventually("the daemon says its GOPROXY", || {
        daemon
            .stderr()
            .contains(&format!("GOPROXY=http://{port}/mod"))
    });
    let machine_a = work.path().join("a");
    std::fs::create_dir_all(&machine_a).unwrap();
    let json = download(&machine_a, &port);
    assert_eq!(json["Version"], VERSION);
    let status = proxy_status(&first);
    assert_eq!(status["address"], format!("http://{port}/mod"), "{status}");
    assert!(status["fetched"].as_u64().unwrap() >= 3, "{status}");
    // The answers are kept on this machine's disk and, uploaded behind them, in the bucket.
    assert!(files_under(&first.cache_dir.join("mod/v1")) >= 3);
    let bucket_modules = server.bucket_dir().join(prefix).join("mod").join("v1");
    eventually("the module answers reach the bucket", || {
        files_under(&bucket_modules) >= 3
    });
    let (status, stderr) = daemon.terminate();
    assert!(status.success(), "{stderr}");
    drop(upstream);

    // A fresh machine: another cache directory, a new GOPATH, no upstream.
    let second = Project::new("goproxy-second", &server, prefix);
    let port = free_port();
    let _daemon = Foreground::start(
        &second,
        &[
            "--goproxy-listen",
            &port,
            "--goproxy-upstream",
            &upstream_gone(),
            "--goproxy-sumdb",
            "off",
        ],
    )
    .unwrap_or_else(|(status, stderr)| panic!("the daemon exited ({status}): {stderr}"));
    let machine_b = work.path().join("b");
    std::fs::create_dir_all(&machine_b).unwrap();
    download(&machine_b, &port);
    let status = proxy_status(&second);
    assert_eq!(status["fetched"], 0, "{status}");
    assert!(status["hits"].as_u64().unwrap() >= 3, "{status}");
    assert!(files_under(&second.cache_dir.join("mod/v1")) >= 3);
}

/// An upstream where nothing listens: a port that was just free.
fn upstream_gone() -> String {
    format!("http://{}", free_port())
}

#[test]
fn the_module_proxy_listens_on_loopback_only() {
    let dir = tempfile::tempdir().unwrap();
    for addr in ["0.0.0.0:8323", "192.0.2.1:8323"] {
        let mut command = Command::new(bin());
        command
            .args(["daemon", "--goproxy-listen", addr, "--cache-dir"])
            .arg(dir.path().join("cache"))
            .arg("--lock-dir")
            .arg(dir.path().join("locks"))
            .env_remove("GOREMOTECACHE_CACHE_DIR")
            .env_remove("GOREMOTECACHE_LOCK_DIR");
        let (status, _, stderr) = bounded(&mut command);
        assert_eq!(status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("--goproxy-listen") && stderr.contains("loopback"),
            "{stderr}"
        );
    }
}

#[test]
fn a_module_proxy_is_not_silently_missing_when_a_daemon_already_runs() {
    let server = S3Server::start();
    let project = Project::new("goproxy-taken", &server, "goproxytaken");
    // As a build's `connect` would have started it: without the proxy.
    let _running = Foreground::start(&project, &[])
        .unwrap_or_else(|(status, stderr)| panic!("the daemon exited ({status}): {stderr}"));
    let port = free_port();
    let (status, stderr) = Foreground::start(
        &project,
        &[
            "--goproxy-listen",
            &port,
            "--goproxy-upstream",
            "off",
            "--goproxy-sumdb",
            "off",
        ],
    )
    .err()
    .expect("a second daemon started beside the first");
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("already serves") && stderr.contains("--goproxy-listen"),
        "{stderr}"
    );
}
