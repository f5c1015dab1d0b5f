//! `goremotecache serve` as a running binary, a module per topic: go builds through it
//! ([`builds`]), its API's auth and bad-input matrices, batches, manifests and metrics
//! ([`api`]), what it stores and how ([`storage`]), its storage under `--max-size`
//! ([`bound`]), its bounds: time, connections, TLS, reload and shutdown ([`limits`]), and
//! namespaces with the tokens scoped to them ([`namespaces`]). This file has the [`Server`]
//! harness they share.

use crate::support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use goremotecache::ids::OutputId;
use goremotecache::store::format::{self, Header};
use support::GoProject;

mod api;
mod bound;
mod builds;
mod limits;
mod namespaces;
mod storage;

pub(crate) const RW: &str = "rw-token-0123456789abcdef";
pub(crate) const RO: &str = "ro-token-0123456789abcdef";

/// A running server and its address.
pub(crate) struct Server {
    child: Child,
    pub(crate) addr: String,
    token_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    /// A server with the tokens [`RW`] and [`RO`].
    pub(crate) fn start(extra: &[&str], env: &[(String, String)]) -> Self {
        let tokens = format!("# test tokens\nrw {RW} # writer\nro {RO}\n");
        Self::with_tokens(&tokens, extra, env)
    }

    /// A server with the token file `tokens`.
    fn with_tokens(tokens: &str, extra: &[&str], env: &[(String, String)]) -> Self {
        Self::listening_at("127.0.0.1:0", tokens, extra, env)
    }

    /// [`Server::start`] on `listen` (the address of a server that was killed: one started
    /// again).
    pub(crate) fn start_at(listen: &str, extra: &[&str], env: &[(String, String)]) -> Self {
        let tokens = format!("# test tokens\nrw {RW} # writer\nro {RO}\n");
        Self::listening_at(listen, &tokens, extra, env)
    }

    fn listening_at(listen: &str, tokens: &str, extra: &[&str], env: &[(String, String)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("tokens");
        std::fs::write(&token_file, tokens).unwrap();
        let mut command = Command::new(support::bin());
        command
            .args([
                "serve",
                "--listen",
                listen,
                "--token-file",
                token_file.to_str().unwrap(),
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        // Warnings may come first (a storage directory repaired at start, say).
        let mut line = String::new();
        while !line.contains("serving ") {
            line.clear();
            if stderr.read_line(&mut line).unwrap() == 0 {
                break;
            }
        }
        let addr = line
            .split("serving ")
            .nth(1)
            .and_then(|rest| rest.split("://").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| {
                // Not left running behind a failed test.
                let _ = child.kill();
                let _ = child.wait();
                panic!("no address in {line:?}")
            })
            .trim_end_matches(':')
            .to_string();
        // Keep draining stderr so the server never blocks on it.
        std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = stderr.read_to_string(&mut rest);
            rest
        });
        Self {
            child,
            addr,
            token_file,
            _dir: dir,
        }
    }

    pub(crate) fn on_disk(extra: &[&str]) -> (Self, tempfile::TempDir) {
        let storage = tempfile::tempdir().unwrap();
        let mut args = vec!["--storage-dir", storage.path().to_str().unwrap()];
        args.extend_from_slice(extra);
        (Self::start(&args, &[]), storage)
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// One request; returns the status and the body.
    fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &[u8],
    ) -> (u16, Vec<u8>) {
        let auth = token.map(|token| format!("Authorization: Bearer {token}\r\n"));
        self.try_request(method, path, auth.as_deref().unwrap_or(""), body)
            .unwrap_or_else(|err| panic!("{method} {path}: {err}"))
    }

    /// One request with extra header lines (each ending in CRLF); an error when the server
    /// closes the connection without an answer.
    fn try_request(
        &self,
        method: &str,
        path: &str,
        headers: &str,
        body: &[u8],
    ) -> std::io::Result<(u16, Vec<u8>)> {
        let mut stream = TcpStream::connect(&self.addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n{headers}\
             Content-Length: {}\r\n\r\n",
            self.addr,
            body.len()
        );
        stream.write_all(head.as_bytes())?;
        // The server may answer before the whole body is sent (a 413 from `Content-Length`)
        // and close: its answer is still there to read.
        let _ = stream.write_all(body);
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        let text = String::from_utf8_lossy(&answer);
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("no status in {text:?}")))?;
        let body_at = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(answer.len(), |p| p + 4);
        let chunked = text[..body_at]
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        let body = &answer[body_at..];
        Ok((
            status,
            if chunked {
                dechunk(body)
            } else {
                body.to_vec()
            },
        ))
    }

    fn stop(mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        self.child.wait().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Decodes an HTTP/1.1 chunked body.
fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("a chunk size line");
        let size =
            usize::from_str_radix(std::str::from_utf8(&body[..line_end]).unwrap().trim(), 16)
                .unwrap();
        body = &body[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

fn entry(body: &[u8]) -> Vec<u8> {
    let header = Header {
        flags: 0,
        output_id: OutputId::of(body),
        size: body.len() as u64,
        time: std::time::SystemTime::now(),
    };
    let mut out = Vec::new();
    format::write_entry(&header, &mut &body[..], &mut out).unwrap();
    out
}

const KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn key_path(key: &str) -> String {
    format!("/v1/ac/{key}")
}

fn through(project: &mut GoProject, server: &Server, token: &str) {
    project.args = vec![
        "--http-url".into(),
        server.url(),
        "--http-token".into(),
        token.into(),
    ];
}

/// The value of one metric line of the server's `/metrics`, 0 if absent.
fn metric(server: &Server, line_start: &str) -> u64 {
    let (status, text) = server.request("GET", "/metrics", None, b"");
    assert_eq!(status, 200);
    String::from_utf8(text)
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix(line_start)?.trim().parse().ok())
        .unwrap_or(0)
}

/// An HTTP client (reqwest on rustls needs its crypto provider installed first).
fn http_client() -> reqwest::Client {
    goremotecache::store::install_crypto_provider();
    reqwest::Client::new()
}

/// GETs `key` and requires it to be there with the sha256 `hash`.
async fn read_back(client: &reqwest::Client, url: &str, key: &str, hash: &[u8; 32]) {
    use sha2::{Digest, Sha256};
    let got = client
        .get(format!("{url}/v1/ac/{key}"))
        .bearer_auth(RO)
        .send()
        .await
        .unwrap();
    assert_eq!(
        got.status().as_u16(),
        200,
        "{key} was acknowledged but is gone"
    );
    let got = got.bytes().await.unwrap();
    assert_eq!(
        &<[u8; 32]>::from(Sha256::digest(&got)),
        hash,
        "{key} differs from its put"
    );
}

/// Calls `answers` until it says yes; panics after `bound`. Returns how long it took.
fn eventually(bound: Duration, what: &str, mut answers: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !answers() {
        assert!(start.elapsed() < bound, "{what}: not within {bound:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

/// Whether the server closed `stream`: what it sent is read up to the end (or a reset),
/// waiting at most `bound`. Returns the bytes read, `None` if the connection is still open.
fn read_until_closed(stream: &mut TcpStream, bound: Duration) -> Option<usize> {
    stream.set_read_timeout(Some(bound)).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Some(total),
            Ok(n) => total += n,
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None;
            }
            // A reset: the server closed with our unread requests still in its buffer.
            Err(_) => return Some(total),
        }
    }
}

fn healthz_answers(server: &Server) -> bool {
    matches!(server.try_request("GET", "/healthz", "", b""), Ok((200, _)))
}

fn entry_file(storage: &std::path::Path, key: &str) -> std::path::PathBuf {
    storage.join("v1").join(&key[..2]).join(key)
}

/// A whole batch answer: its events but the data, and the data of all entries, in order.
fn decode_batch(answer: &[u8]) -> (Vec<goremotecache::store::batch::Event>, Vec<u8>) {
    use goremotecache::store::batch::{Decoder, Event};
    let mut decoder = Decoder::new();
    decoder.push(answer);
    let mut events = Vec::new();
    let mut data = Vec::new();
    while let Some(event) = decoder.next_event().unwrap() {
        match event {
            Event::Data(bytes) => data.extend_from_slice(&bytes),
            other => events.push(other),
        }
    }
    assert!(
        decoder.at_frame_boundary(),
        "the answer ends inside a frame"
    );
    (events, data)
}
