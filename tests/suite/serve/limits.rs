//! The server's bounds: stalled headers and bodies, connection limits and clients that never
//! read, idle connections, batch answers nobody reads, TLS, token reload and shutdown, and the
//! options it refuses to start without.

use crate::support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use support::GoProject;

use super::{KEY, RO, RW, Server, entry, eventually, healthz_answers, key_path, read_until_closed};

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
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("serve needs somewhere to store entries")
    );
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(support::bin())
        .args(["serve", "--storage-dir", dir.path().to_str().unwrap()])
        .env_remove("GOREMOTECACHE_TOKENS")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("serve needs tokens"));
}

#[test]
fn tls_serves_https_and_the_http_backend_trusts_a_private_ca() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = support::make_certificates(certs.path());
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
