//! `goremotecache serve` as a running binary: builds through it with the real go command (on
//! disk storage and on S3 storage), the auth matrix, the bad-input matrix, metrics, token
//! reload and shutdown.

use crate::support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use goremotecache::ids::OutputId;
use goremotecache::store::format::{self, Header};
use support::GoProject;
use support::s3::{S3Server, SECRET_KEY, credentials, with_prefetch};

const RW: &str = "rw-token-0123456789abcdef";
const RO: &str = "ro-token-0123456789abcdef";

/// A running server and its address.
struct Server {
    child: Child,
    addr: String,
    token_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(extra: &[&str], env: &[(String, String)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("tokens");
        std::fs::write(
            &token_file,
            format!("# test tokens\nrw {RW} writer\nro {RO}\n"),
        )
        .unwrap();
        let mut command = Command::new(support::bin());
        command
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
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

    fn on_disk(extra: &[&str]) -> (Self, tempfile::TempDir) {
        let storage = tempfile::tempdir().unwrap();
        let mut args = vec!["--storage-dir", storage.path().to_str().unwrap()];
        args.extend_from_slice(extra);
        (Self::start(&args, &[]), storage)
    }

    fn url(&self) -> String {
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

#[test]
fn a_fresh_machine_builds_from_a_server_on_disk() {
    let (server, _storage) = Server::on_disk(&[]);
    let mut project = GoProject::new("serve-disk");
    through(&mut project, &server, RW);
    let cold = project.go(&["build", "./..."]);
    assert!(cold.stat("remote.uploads") > 50, "{:?}", cold.stats);
    assert_eq!(cold.stat("remote.upload_errors"), 0, "{:?}", cold.stats);
    project.go(&["test", "./..."]);
    project.build_on_fresh_machine("machine-b");
    project.assert_tests_cached();
    // A read-only token reads but never writes.
    project.switch_machine("machine-c");
    through(&mut project, &server, RO);
    let read_only = project.go(&["build", "./..."]);
    assert!(read_only.remote_answers() > 50, "{:?}", read_only.stats);
    assert!(server.stop().success());
}

#[test]
fn a_fresh_machine_builds_from_a_server_on_s3() {
    let s3 = S3Server::start();
    // The server's storage options (prefetch is the client's business).
    let mut args: Vec<String> = with_prefetch(s3.args("served"));
    args.extend(["--max-entry-size".to_string(), "64MiB".to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start(&args, &credentials(SECRET_KEY));
    let mut project = GoProject::new("serve-s3");
    through(&mut project, &server, RW);
    project.go(&["build", "./..."]);
    assert!(s3.count("PUT") > 50, "nothing reached the bucket");
    project.build_on_fresh_machine("machine-b");
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

#[test]
fn prefetch_through_the_server_takes_a_few_batch_requests() {
    let (server, _storage) = Server::on_disk(&[]);
    let mut project = GoProject::new("serve-prefetch");
    through(&mut project, &server, RW);
    let cold = project.go(&["build", "./..."]);
    assert!(
        cold.stat("remote.prefetch.manifest_written") > 50,
        "{:?}",
        cold.stats
    );
    assert_eq!(
        metric(&server, "goremotecache_requests_total{method=\"POST\""),
        0
    );
    let hits_before = metric(
        &server,
        "goremotecache_requests_total{method=\"GET\",status=\"200\"}",
    );

    let build = project.build_on_fresh_machine("machine-b");
    let listed = build.stat("remote.prefetch.listed");
    assert!(build.stat("remote.prefetch.used") > 50, "{:?}", build.stats);
    let batches = metric(
        &server,
        "goremotecache_requests_total{method=\"POST\",status=\"200\"}",
    );
    assert!(
        batches >= 1 && batches <= listed.div_ceil(256),
        "{batches} batch requests for {listed} entries"
    );
    // Besides the batches: the manifest, and the gets that came before prefetch.
    let gets = metric(
        &server,
        "goremotecache_requests_total{method=\"GET\",status=\"200\"}",
    );
    assert_eq!(
        gets - hits_before,
        1 + build.stat("remote.hits"),
        "{:?}",
        build.stats
    );
}

#[test]
fn the_batch_endpoint_checks_its_input_and_frames_its_answer() {
    use goremotecache::ids::ActionId;
    use goremotecache::store::batch::Event;
    let (server, _storage) = Server::on_disk(&[]);
    let body = entry(&vec![7u8; 300_000]);
    assert_eq!(
        server.request("PUT", &key_path(KEY), Some(RW), &body).0,
        201
    );
    let absent = KEY.replace('0', "f");
    let ask = format!("{KEY}\n{absent}\n");
    assert_eq!(
        server.request("POST", "/v1/batch", None, ask.as_bytes()).0,
        401
    );
    for bad in [
        "not-a-key\n".to_string(),
        KEY.to_uppercase(),
        format!("{KEY}\n").repeat(1025),
    ] {
        let (status, _) = server.request("POST", "/v1/batch", Some(RO), bad.as_bytes());
        assert_eq!(status, 400, "{}", &bad[..bad.len().min(80)]);
    }
    let (status, answer) = server.request("POST", "/v1/batch", Some(RO), ask.as_bytes());
    assert_eq!(status, 200);
    let (events, data) = decode_batch(&answer);
    let key = ActionId::from_hex(KEY).unwrap();
    assert_eq!(
        events,
        vec![
            Event::Start(key),
            Event::End,
            Event::Missing(ActionId::from_hex(&absent).unwrap())
        ]
    );
    assert!(data == body, "the entry came back different");
}

#[test]
fn manifests_are_stored_replaced_and_guarded() {
    let (server, _storage) = Server::on_disk(&[]);
    let path = format!("/v1/prefetch/{KEY}");
    assert_eq!(server.request("GET", &path, Some(RO), b"").0, 404);
    assert_eq!(server.request("PUT", &path, Some(RO), b"first").0, 403);
    assert_eq!(server.request("PUT", &path, None, b"first").0, 401);
    assert_eq!(
        server
            .request("PUT", "/v1/prefetch/..%2F..%2Fx", Some(RW), b"x")
            .0,
        400
    );
    assert_eq!(server.request("PUT", &path, Some(RW), b"first").0, 204);
    assert_eq!(server.request("PUT", &path, Some(RW), b"second").0, 204);
    assert_eq!(
        server.request("GET", &path, Some(RO), b""),
        (200, b"second".to_vec())
    );
    let too_big = vec![0u8; goremotecache::store::MAX_MANIFEST + 1];
    assert_eq!(server.request("PUT", &path, Some(RW), &too_big).0, 413);
}

#[test]
fn the_auth_matrix() {
    let (server, _storage) = Server::on_disk(&[]);
    let path = key_path(KEY);
    let body = entry(b"an entry");
    // No token, an unknown token: 401 for everything.
    for token in [None, Some("not-a-known-token-at-all")] {
        assert_eq!(server.request("GET", &path, token, b"").0, 401, "{token:?}");
        assert_eq!(
            server.request("HEAD", &path, token, b"").0,
            401,
            "{token:?}"
        );
        assert_eq!(
            server.request("PUT", &path, token, &body).0,
            401,
            "{token:?}"
        );
    }
    // Read-only: reads, 403 on write.
    assert_eq!(server.request("GET", &path, Some(RO), b"").0, 404);
    assert_eq!(server.request("PUT", &path, Some(RO), &body).0, 403);
    // Read-write: creates, then finds it existing.
    assert_eq!(server.request("PUT", &path, Some(RW), &body).0, 201);
    assert_eq!(server.request("PUT", &path, Some(RW), &body).0, 200);
    let (status, got) = server.request("GET", &path, Some(RO), b"");
    assert_eq!(status, 200);
    assert_eq!(got, body);
    assert_eq!(server.request("HEAD", &path, Some(RW), b"").0, 200);
    // The health check needs no token.
    assert_eq!(
        server.request("GET", "/healthz", None, b""),
        (200, b"ok\n".to_vec())
    );
}

#[test]
fn anonymous_reads_are_an_explicit_choice() {
    let (server, _storage) = Server::on_disk(&["--allow-anonymous-read"]);
    let path = key_path(KEY);
    assert_eq!(server.request("GET", &path, None, b"").0, 404);
    assert_eq!(server.request("PUT", &path, None, &entry(b"x")).0, 401);
    assert_eq!(server.request("PUT", &path, Some(RW), &entry(b"x")).0, 201);
    assert_eq!(server.request("GET", &path, None, b"").0, 200);
}

#[test]
fn the_bad_input_matrix() {
    let (server, storage) = Server::on_disk(&["--max-entry-size", "64KiB"]);
    for key in [
        "0123",
        &KEY.to_uppercase(),
        &format!("{KEY}0"),
        "..%2F..%2Fetc%2Fpasswd",
        &format!("{}zz", &KEY[..62]),
    ] {
        let (status, _) = server.request("GET", &key_path(key), Some(RW), b"");
        assert!(status == 400 || status == 404, "{key}: {status}");
        if status == 404 {
            // Only a route that does not match at all may say 404; a key never reaches storage.
            assert!(key.contains('%'), "{key}");
        }
        assert_ne!(
            server
                .request("PUT", &key_path(key), Some(RW), &entry(b"x"))
                .0,
            201,
            "{key}"
        );
    }
    let (status, text) = server.request("PUT", &key_path(KEY), Some(RW), &vec![0u8; 70 * 1024]);
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&text));
    let (status, text) = server.request("PUT", &key_path(KEY), Some(RW), b"not an entry at all");
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&text).contains("rejected entry"));
    let mut damaged = entry(b"some output bytes");
    let last = damaged.len() - 1;
    damaged[last] ^= 1;
    assert_eq!(
        server.request("PUT", &key_path(KEY), Some(RW), &damaged).0,
        400
    );
    assert_eq!(
        server.request("GET", &key_path(KEY), Some(RW), b"").0,
        404,
        "a refused entry is visible"
    );
    let stored: Vec<_> = std::fs::read_dir(storage.path().join("v1"))
        .unwrap()
        .collect();
    assert!(stored.is_empty(), "refused entries were stored: {stored:?}");
}

#[test]
fn stalled_headers_are_cut_off() {
    let (server, _storage) = Server::on_disk(&["--idle-timeout", "3s"]);
    let mut stream = TcpStream::connect(&server.addr).unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let start = Instant::now();
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(3 + 15),
        "took {took:?}"
    );
}

#[test]
fn metrics_count_requests_hits_and_bytes() {
    let (server, _storage) = Server::on_disk(&[]);
    let body = entry(b"metered");
    server.request("PUT", &key_path(KEY), Some(RW), &body);
    server.request("GET", &key_path(KEY), Some(RW), b"");
    server.request("GET", &key_path(&KEY.replace('0', "1")), Some(RW), b"");
    let (status, text) = server.request("GET", "/metrics", None, b"");
    assert_eq!(status, 200);
    let text = String::from_utf8(text).unwrap();
    for expected in [
        "goremotecache_requests_total{method=\"PUT\",status=\"201\"} 1",
        "goremotecache_requests_total{method=\"GET\",status=\"200\"} 1",
        "goremotecache_requests_total{method=\"GET\",status=\"404\"} 1",
        "goremotecache_hits_total 1",
        "goremotecache_misses_total 1",
        &format!("goremotecache_received_bytes_total {}", body.len()),
        &format!("goremotecache_sent_bytes_total {}", body.len()),
        "goremotecache_storage_errors_total 0",
        "goremotecache_request_duration_seconds_bucket",
    ] {
        assert!(
            text.contains(expected),
            "metrics lack {expected:?}:\n{text}"
        );
    }
}

#[test]
fn sighup_reloads_tokens_and_sigterm_stops_cleanly() {
    let (server, _storage) = Server::on_disk(&[]);
    let new_token = "brand-new-token-0123456789";
    assert_eq!(
        server
            .request("GET", &key_path(KEY), Some(new_token), b"")
            .0,
        401
    );
    std::fs::write(&server.token_file, format!("ro {new_token}\n")).unwrap();
    Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while server
        .request("GET", &key_path(KEY), Some(new_token), b"")
        .0
        != 404
    {
        assert!(
            Instant::now() < deadline,
            "the new token was never accepted"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        server.request("GET", &key_path(KEY), Some(RW), b"").0,
        401,
        "the old token still works"
    );
    assert!(server.stop().success());
}

#[test]
fn serve_refuses_to_start_without_storage_or_tokens() {
    let out = Command::new(support::bin())
        .args(["serve", "--tokens", &format!("rw:{RW}")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("serve needs somewhere to store entries")
    );
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(support::bin())
        .args(["serve", "--storage-dir", dir.path().to_str().unwrap()])
        .env_remove("GOREMOTECACHE_TOKENS")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("serve needs tokens"));
}

/// An HTTP client (reqwest on rustls needs its crypto provider installed first).
fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
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

/// The server's peak resident memory, from /proc.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

/// 64 clients put and get entries of 100 bytes to 8 MiB for a bounded time; afterwards every
/// acknowledged put reads back byte for byte, and the server's memory stayed bounded.
#[test]
fn sixty_four_clients_under_load_lose_nothing() {
    use sha2::{Digest, Sha256};
    let (server, _storage) = Server::on_disk(&[]);
    let url = server.url();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let acked: Vec<(String, [u8; 32])> = runtime.block_on(async {
        let client = http_client();
        let deadline = Instant::now() + Duration::from_secs(8);
        let mut tasks = Vec::new();
        for worker in 0..64u64 {
            let client = client.clone();
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                let mut n = 0u64;
                while Instant::now() < deadline {
                    n += 1;
                    let seed = worker * 1_000_000 + n;
                    // Mostly small, now and then up to 8 MiB, as Go's outputs are.
                    let size = match seed % 10 {
                        0 => 1 << 20 | (seed as usize % (7 << 20)),
                        1..=3 => 64 * 1024 + (seed as usize % 200_000),
                        _ => 100 + (seed as usize % 4000),
                    };
                    let body = support::pseudo_random(seed, size);
                    let bytes = entry(&body);
                    let key = format!(
                        "{:064x}",
                        u128::from(seed as u32) << 64 | u128::from(worker)
                    );
                    let put = client
                        .put(format!("{url}/v1/ac/{key}"))
                        .bearer_auth(RW)
                        .body(bytes.clone())
                        .send()
                        .await
                        .unwrap();
                    if put.status().as_u16() == 201 {
                        acked.push((key.clone(), Sha256::digest(&bytes).into()));
                    }
                    if n.is_multiple_of(2) {
                        let (key, hash) = &acked[(n as usize / 2) % acked.len()];
                        read_back(&client, &url, key, hash).await;
                    }
                }
                acked
            }));
        }
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.unwrap());
        }
        // Every acknowledged put, read back after the load.
        for (key, hash) in &all {
            read_back(&client, &url, key, hash).await;
        }
        all
    });
    let rss = peak_rss(server.child.id());
    println!(
        "{} puts acknowledged and read back; server peak RSS {} MiB",
        acked.len(),
        rss >> 20
    );
    assert!(acked.len() > 200, "too little load: {} puts", acked.len());
    assert!(
        rss < 256 << 20,
        "the server's memory grew to {} MiB",
        rss >> 20
    );
}

/// A server killed with SIGKILL while clients upload, restarted on the same directory:
/// every entry it serves is whole and verified.
#[test]
fn a_server_killed_during_uploads_serves_nothing_torn_after_restart() {
    use sha2::{Digest, Sha256};
    let storage = tempfile::tempdir().unwrap();
    let dir = storage.path().to_str().unwrap().to_string();
    let server = Server::start(&["--storage-dir", &dir], &[]);
    let url = server.url();
    let mut entries = Vec::new();
    for n in 0..24u64 {
        let body = support::pseudo_random(n, 3 << 20);
        entries.push((format!("{:064x}", u128::from(n) + 1), entry(&body)));
    }
    let sent = entries.clone();
    let uploader = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let client = http_client();
            let mut tasks = Vec::new();
            for (key, bytes) in sent {
                let client = client.clone();
                let url = url.clone();
                tasks.push(tokio::spawn(async move {
                    let _ = client
                        .put(format!("{url}/v1/ac/{key}"))
                        .bearer_auth(RW)
                        .body(bytes)
                        .send()
                        .await;
                }));
            }
            for task in tasks {
                let _ = task.await;
            }
        });
    });
    std::thread::sleep(Duration::from_millis(300));
    let mut server = server;
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    uploader.join().unwrap();
    drop(server);

    let restarted = Server::start(&["--storage-dir", &dir], &[]);
    let mut whole = 0;
    for (key, bytes) in &entries {
        let (status, got) = restarted.request("GET", &key_path(key), Some(RO), b"");
        match status {
            404 => {}
            200 => {
                assert_eq!(Sha256::digest(&got), Sha256::digest(bytes), "{key} is torn");
                whole += 1;
            }
            other => panic!("{key}: {other}"),
        }
    }
    println!(
        "after the kill: {whole} of {} entries whole, the rest absent",
        entries.len()
    );
}

/// A certificate for 127.0.0.1 signed by a CA of the test's own, made with openssl.
fn make_certificates(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=goremotecache test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(dir.join("ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

#[test]
fn tls_serves_https_and_the_http_backend_trusts_a_private_ca() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_certificates(certs.path());
    let storage = tempfile::tempdir().unwrap();
    let server = Server::start(
        &[
            "--storage-dir",
            storage.path().to_str().unwrap(),
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        &[],
    );
    let https = format!("https://{}", server.addr);
    // Plain HTTP to a TLS port gets no answer.
    assert!(std::panic::catch_unwind(|| server.request("GET", "/healthz", None, b"")).is_err());
    let curl = Command::new("curl")
        .args([
            "-sS",
            "--cacert",
            ca.to_str().unwrap(),
            &format!("{https}/healthz"),
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&curl.stdout),
        "ok\n",
        "{}",
        String::from_utf8_lossy(&curl.stderr)
    );

    let mut project = GoProject::new("serve-tls");
    project.args = vec![
        "--http-url".into(),
        https.clone(),
        "--http-token".into(),
        RW.into(),
        "--http-ca-file".into(),
        ca.to_str().unwrap().into(),
    ];
    let cold = project.go(&["build", "./..."]);
    assert!(cold.stat("remote.uploads") > 50, "{:?}", cold.stats);
    project.build_on_fresh_machine("tls-b");
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

#[test]
fn clients_that_pipeline_and_never_read_cannot_take_the_server_offline() {
    let (server, _storage) = Server::on_disk(&[
        "--max-connections",
        "4",
        "--write-timeout",
        "2s",
        "--idle-timeout",
        "3s",
    ]);
    // Thousands of unauthenticated requests on each connection, none of the 401s read: the
    // answers fill the socket buffers and the server's writes stall.
    let addr = server.addr.clone();
    let floods: Vec<_> = (0..4)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(&addr).unwrap();
                stream
                    .set_write_timeout(Some(Duration::from_secs(2)))
                    .unwrap();
                let many = format!("GET {} HTTP/1.1\r\nHost: x\r\n\r\n", key_path(KEY)).repeat(500);
                let deadline = Instant::now() + Duration::from_secs(60);
                // Until the server stops reading (its writes are stuck) or closes.
                while Instant::now() < deadline && stream.write_all(many.as_bytes()).is_ok() {}
                stream
            })
        })
        .collect();
    let mut floods: Vec<TcpStream> = floods.into_iter().map(|t| t.join().unwrap()).collect();
    // Bound: the write timeout, plus generous slack for a loaded machine.
    let took = eventually(Duration::from_secs(2 + 20), "/healthz answering", || {
        healthz_answers(&server)
    });
    println!("/healthz answered {took:?} after the floods stalled");
    for (n, stream) in floods.iter_mut().enumerate() {
        assert!(
            read_until_closed(stream, Duration::from_secs(15)).is_some(),
            "stuck connection {n} is still open"
        );
    }
}

/// Sends the head of a request announcing a body of 1000 bytes and 10 of them, then nothing;
/// returns the answer's status and how long it took to come.
fn stall_body(server: &Server, method: &str, path: &str, token: &str) -> (u16, Duration) {
    let mut stream = TcpStream::connect(&server.addr).unwrap();
    let start = Instant::now();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Length: 1000\r\n\r\n0123456789"
    )
    .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: no status in {text:?}"));
    (status, start.elapsed())
}

#[test]
fn stalled_bodies_are_cut_off_on_every_endpoint_that_takes_one() {
    let (server, _storage) = Server::on_disk(&["--body-timeout", "2s"]);
    for (method, path, token) in [
        ("POST", "/v1/batch".to_string(), RO),
        ("PUT", format!("/v1/prefetch/{KEY}"), RW),
        ("PUT", key_path(KEY), RW),
    ] {
        let (status, took) = stall_body(&server, method, &path, token);
        assert_eq!(status, 408, "{method} {path}");
        assert!(
            took >= Duration::from_secs(2) && took < Duration::from_secs(2 + 15),
            "{method} {path}: cut off after {took:?}"
        );
    }
}

#[test]
fn batch_answers_nobody_reads_give_their_in_flight_places_back() {
    let (server, _storage) = Server::on_disk(&[
        "--max-in-flight",
        "2",
        "--write-timeout",
        "2s",
        "--idle-timeout",
        "5s",
    ]);
    // 64 MiB an answer, more than the socket buffers can take (a receive buffer may grow to
    // 32 MiB, a send buffer to 4 MiB), so that the answers stall. One entry, valid for any
    // key, stored under 16 keys.
    let keys: Vec<String> = (1..=16u64).map(|n| format!("{n:064x}")).collect();
    let body = entry(&support::pseudo_random(1, 4 << 20));
    for key in &keys {
        assert_eq!(
            server.request("PUT", &key_path(key), Some(RW), &body).0,
            201
        );
    }
    let ask = keys.join("\n");
    let mut stuck: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut stream = TcpStream::connect(&server.addr).unwrap();
            write!(
                stream,
                "POST /v1/batch HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {RO}\r\n\
                 Content-Length: {}\r\n\r\n{ask}",
                ask.len()
            )
            .unwrap();
            // Its status line, and nothing more: the answer has started, so it holds its
            // in-flight place.
            let mut status = [0u8; 12];
            stream.read_exact(&mut status).unwrap();
            assert_eq!(&status, b"HTTP/1.1 200");
            stream
        })
        .collect();
    // Both places held by answers nobody reads: everything else is busy, until the write
    // timeout frees them.
    let busy = server.request("GET", &key_path(&keys[0]), Some(RO), b"").0;
    println!("GET while the unread batches hold the places: {busy}");
    let other = KEY.replace('0', "e");
    let took = eventually(Duration::from_secs(2 + 20), "GET answering", || {
        server.request("GET", &key_path(&keys[0]), Some(RO), b"").0 == 200
    });
    println!("GET answered {took:?} after the unread batches took their places");
    assert_eq!(
        server
            .request("PUT", &key_path(&other), Some(RW), &entry(b"x"))
            .0,
        201
    );
    // The unread answers were cut off, not sent whole.
    for (n, stream) in stuck.iter_mut().enumerate() {
        let got = read_until_closed(stream, Duration::from_secs(15))
            .unwrap_or_else(|| panic!("unread batch {n} is still open"));
        assert!(
            got < keys.len() * body.len(),
            "unread batch {n} was sent whole"
        );
    }
}

#[test]
fn idle_keep_alive_connections_are_closed() {
    let (server, _storage) = Server::on_disk(&["--idle-timeout", "2s"]);
    let mut stream = TcpStream::connect(&server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let start = Instant::now();
    // Two requests on the connection: it is kept alive between them.
    for _ in 0..2 {
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut answer = Vec::new();
        let mut buf = [0u8; 1024];
        while !answer.ends_with(b"\r\n\r\nok\n") {
            let n = stream.read(&mut buf).unwrap();
            assert!(n > 0, "closed before answering");
            answer.extend_from_slice(&buf[..n]);
        }
    }
    assert_eq!(
        read_until_closed(&mut stream, Duration::from_secs(2 + 15)),
        Some(0),
        "the idle connection is still open"
    );
    let took = start.elapsed();
    assert!(took >= Duration::from_secs(2), "closed after {took:?}");
}

#[test]
fn the_bearer_scheme_is_case_insensitive() {
    let (server, _storage) = Server::on_disk(&[]);
    let path = key_path(KEY);
    let lower = format!("Authorization: bearer {RW}\r\n");
    let upper = format!("Authorization: BEARER {RO}\r\n");
    assert_eq!(
        server
            .try_request("PUT", &path, &lower, &entry(b"x"))
            .unwrap()
            .0,
        201
    );
    assert_eq!(
        server.try_request("GET", &path, &upper, b"").unwrap().0,
        200
    );
    let basic = format!("Authorization: Basic {RO}\r\n");
    assert_eq!(
        server.try_request("GET", &path, &basic, b"").unwrap().0,
        401
    );
}

#[test]
fn a_key_asked_many_times_in_one_batch_is_answered_once() {
    use goremotecache::ids::ActionId;
    use goremotecache::store::batch::Event;
    let (server, _storage) = Server::on_disk(&[]);
    let body = entry(&vec![3u8; 100_000]);
    assert_eq!(
        server.request("PUT", &key_path(KEY), Some(RW), &body).0,
        201
    );
    let ask = format!("{KEY}\n").repeat(1024);
    let (status, answer) = server.request("POST", "/v1/batch", Some(RO), ask.as_bytes());
    assert_eq!(status, 200);
    let (events, data) = decode_batch(&answer);
    let key = ActionId::from_hex(KEY).unwrap();
    assert_eq!(events, vec![Event::Start(key), Event::End]);
    assert!(data == body, "the entry came back different");
}

#[test]
fn an_entry_whose_header_claims_more_than_the_limit_is_refused_by_its_header() {
    let (server, storage) = Server::on_disk(&["--max-entry-size", "1MiB"]);
    let plain = vec![0u8; 64 * 1024];
    let header = Header {
        flags: format::FLAG_ZSTD,
        output_id: OutputId::of(&plain),
        size: 1 << 30,
        time: std::time::SystemTime::now(),
    };
    let mut bomb = header.encode().to_vec();
    bomb.extend(zstd::encode_all(&plain[..], 3).unwrap());
    assert!(bomb.len() < 1 << 20);
    let (status, text) = server.request("PUT", &key_path(KEY), Some(RW), &bomb);
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&text));
    assert_eq!(server.request("GET", &key_path(KEY), Some(RO), b"").0, 404);
    // Refused as soon as the header is in: the rest of the announced body never comes, and
    // the answer does not wait for it (the body timeout is the default 30 s).
    let mut stream = TcpStream::connect(&server.addr).unwrap();
    write!(
        stream,
        "PUT {} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {RW}\r\n\
         Content-Length: {}\r\n\r\n",
        key_path(KEY),
        bomb.len()
    )
    .unwrap();
    stream.write_all(&bomb[..format::HEADER_LEN]).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let stored: Vec<_> = std::fs::read_dir(storage.path().join("v1"))
        .map(|dir| dir.collect())
        .unwrap_or_default();
    assert!(stored.is_empty(), "the entry was stored: {stored:?}");
}

fn entry_file(storage: &std::path::Path, key: &str) -> std::path::PathBuf {
    storage.join("v1").join(&key[..2]).join(key)
}

/// FIFOs, directories and symlinks where entries should be: a 404 on GET and HEAD alike, never
/// a worker thread blocked in `open` (the server keeps answering), and the next PUT replaces
/// them.
#[test]
fn things_that_are_not_entry_files_are_misses_that_puts_replace() {
    let (server, storage) = Server::on_disk(&[]);
    let body = entry(b"the real entry");
    let outside = storage.path().join("outside");
    std::fs::write(&outside, &body).unwrap();
    let keys: Vec<String> = (0..4).map(|n| format!("{n:02x}{}", &KEY[2..])).collect();
    for key in &keys {
        assert_eq!(
            server.request("PUT", &key_path(key), Some(RW), &body).0,
            201
        );
    }
    let plant = |key: &str, kind: usize| {
        let path = entry_file(storage.path(), key);
        std::fs::remove_file(&path).unwrap();
        match kind {
            0 | 1 => assert!(
                Command::new("mkfifo")
                    .arg(&path)
                    .status()
                    .unwrap()
                    .success()
            ),
            2 => std::fs::create_dir(&path).unwrap(),
            _ => std::os::unix::fs::symlink(&outside, &path).unwrap(),
        }
    };
    for (n, key) in keys.iter().enumerate() {
        plant(key, n);
    }
    // More FIFO reads than the server has worker threads, at once.
    std::thread::scope(|scope| {
        let readers: Vec<_> = (0..4)
            .map(|n| {
                let (server, key) = (&server, &keys[n % 2]);
                scope.spawn(move || server.request("GET", &key_path(key), Some(RO), b"").0)
            })
            .collect();
        for reader in readers {
            assert_eq!(reader.join().unwrap(), 404);
        }
    });
    assert_eq!(server.request("GET", "/healthz", None, b"").0, 200);
    for key in &keys {
        assert_eq!(
            server.request("GET", &key_path(key), Some(RO), b"").0,
            404,
            "{key}"
        );
        assert_eq!(
            server.request("HEAD", &key_path(key), Some(RO), b"").0,
            404,
            "{key}"
        );
        assert_eq!(
            server.request("PUT", &key_path(key), Some(RW), &body).0,
            201,
            "{key}"
        );
        let (status, got) = server.request("GET", &key_path(key), Some(RO), b"");
        assert_eq!((status, got == body), (200, true), "{key}");
        assert!(
            std::fs::symlink_metadata(entry_file(storage.path(), key))
                .unwrap()
                .is_file()
        );
    }
    assert_eq!(std::fs::read(&outside).unwrap(), body);
}

/// A `tmp/` in the storage directory that is a symlink is replaced at start, and the old files
/// in the directory it pointed to are left alone; a storage directory others may write is
/// refused before the server starts.
#[test]
fn the_storage_directory_is_private_and_its_links_are_not_followed() {
    let storage = tempfile::tempdir().unwrap();
    let victim = tempfile::tempdir().unwrap();
    let precious = victim.path().join("precious");
    std::fs::write(&precious, b"x").unwrap();
    support::make_old(&precious);
    std::os::unix::fs::symlink(victim.path(), storage.path().join("tmp")).unwrap();
    let server = Server::start(&["--storage-dir", storage.path().to_str().unwrap()], &[]);
    assert_eq!(
        server
            .request("PUT", &key_path(KEY), Some(RW), &entry(b"x"))
            .0,
        201
    );
    assert!(precious.exists(), "the start-up sweep followed tmp/");
    assert_eq!(std::fs::read_dir(victim.path()).unwrap().count(), 1);
    assert!(
        std::fs::symlink_metadata(storage.path().join("tmp"))
            .unwrap()
            .is_dir()
    );
    drop(server);

    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(storage.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let (code, _, stderr) = support::outcome(
        Command::new(support::bin())
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--tokens",
                &format!("rw:{RW}"),
            ])
            .args(["--storage-dir", storage.path().to_str().unwrap()]),
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("storage directory"), "{stderr}");
    assert!(stderr.contains("chmod go-w"), "{stderr}");
}

/// A prefetch manifest that lists every key twice (a damaged or hand-made one) is data, not
/// protocol: the remote stays on, each key is asked once, the manifest is written again
/// without the copies, and the next run prefetches as usual.
#[test]
fn a_manifest_listing_keys_twice_leaves_the_remote_on() {
    let (server, storage) = Server::on_disk(&[]);
    let mut project = GoProject::new("serve-manifest-twice");
    through(&mut project, &server, RW);
    project.go(&["build", "./..."]);
    let manifests: Vec<_> = std::fs::read_dir(storage.path().join("prefetch"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(manifests.len(), 1);
    let listed = support::list_every_key_twice(&manifests[0]);

    let build = project.build_on_fresh_machine("twice-b");
    let stat = |name: &str| build.stat(name);
    assert_eq!(stat("remote.prefetch.listed"), listed, "{:?}", build.stats);
    assert!(stat("remote.prefetch.used") > 50, "{:?}", build.stats);
    assert_eq!(
        stat("remote.errors") + stat("remote.prefetch.errors"),
        0,
        "{:?}",
        build.stats
    );
    support::assert_distinct(&support::manifest_keys(&manifests[0]));

    let again = project.build_on_fresh_machine("twice-c");
    assert!(again.stat("remote.prefetch.used") > 50, "{:?}", again.stats);
    assert_eq!(again.stat("remote.errors"), 0, "{:?}", again.stats);
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
