//! A module proxy for the tests of [`super::fetch`] and [`super::cache`] (and two helpers for
//! the stores' tests, [`body`] and [`read`]): an HTTP/1.1 server on
//! `127.0.0.1:0`, written on a bare socket so that it can misbehave on purpose (answer 500,
//! send fewer bytes than its `Content-Length`, go away). It serves a map of path to status
//! and body, answers 404 for anything else, counts the requests for each path, and closes
//! every connection after one answer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::sync::lock;

/// How the server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// From the map.
    Normal,
    /// 500 to everything.
    Fail,
    /// The mapped status and headers, then half the body and a closed connection.
    Truncate,
}

#[derive(Debug, Default)]
struct State {
    routes: HashMap<String, (u16, Vec<u8>)>,
    hits: HashMap<String, usize>,
    mode: Option<Mode>,
    delay: Duration,
}

/// A running server; stopped when dropped.
#[derive(Debug)]
pub struct Upstream {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(answer(socket, shared.clone()));
            }
        });
        Upstream { addr, state, task }
    }

    /// `http://127.0.0.1:<port>` followed by `prefix` (`""` or `/some/path`).
    pub fn url(&self, prefix: &str) -> String {
        format!("http://{}{prefix}", self.addr)
    }

    /// Serves `body` with `status` at `path` (the full path, from `/`).
    pub fn set(&self, path: &str, status: u16, body: &[u8]) {
        lock(&self.state)
            .routes
            .insert(path.to_owned(), (status, body.to_vec()));
    }

    pub fn set_mode(&self, mode: Mode) {
        lock(&self.state).mode = Some(mode);
    }

    /// Waits this long before each answer.
    pub fn set_delay(&self, delay: Duration) {
        lock(&self.state).delay = delay;
    }

    /// Requests seen for `path`.
    pub fn hits(&self, path: &str) -> usize {
        lock(&self.state).hits.get(path).copied().unwrap_or(0)
    }

    /// Requests seen in all.
    pub fn total_hits(&self) -> usize {
        lock(&self.state).hits.values().sum()
    }

    /// Stops accepting connections: a request after this fails to connect.
    pub async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(mut socket: tokio::net::TcpStream, state: Arc<Mutex<State>>) {
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let line = String::from_utf8_lossy(&request);
    let path = line.split(' ').nth(1).unwrap_or("").to_owned();
    let (status, body, mode, delay) = {
        let mut state = lock(&state);
        *state.hits.entry(path.clone()).or_default() += 1;
        let (status, body) = state
            .routes
            .get(&path)
            .cloned()
            .unwrap_or((404, b"not found".to_vec()));
        (
            status,
            body,
            state.mode.unwrap_or(Mode::Normal),
            state.delay,
        )
    };
    tokio::time::sleep(delay).await;
    let (status, body) = match mode {
        Mode::Fail => (500, b"upstream is broken".to_vec()),
        _ => (status, body),
    };
    let head = format!(
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = socket.write_all(head.as_bytes()).await;
    let sent = match mode {
        Mode::Truncate => &body[..body.len() / 2],
        _ => &body[..],
    };
    let _ = socket.write_all(sent).await;
    let _ = socket.shutdown().await;
}

/// A fetched body of `bytes`, spooled in `dir` (for the stores' tests).
pub fn body(dir: &std::path::Path, bytes: &[u8]) -> super::Body {
    use std::io::Write;
    let mut file = tempfile::NamedTempFile::new_in(dir).unwrap();
    file.write_all(bytes).unwrap();
    super::Body {
        file,
        len: bytes.len() as u64,
    }
}

/// A stored answer's bytes, checked against its length.
pub fn read(stored: super::Stored) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    let mut body = stored.body;
    body.read_to_end(&mut out).unwrap();
    assert_eq!(out.len() as u64, stored.len);
    out
}
