//! The API: the auth and bad-input matrices, batches, manifests, metrics, the bearer scheme
//! and the entry header's size limit.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use goremotecache::ids::OutputId;
use goremotecache::store::format::{self, Header};

use super::{KEY, RO, RW, Server, decode_batch, entry, key_path};

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

/// A hit on a storage directory is answered with its `Content-Length` and its exact bytes,
/// for an entry read at once (a few KiB) and one streamed in several chunks (300 KiB);
/// both through one keep-alive connection, as a client's pool reuses it.
#[test]
fn a_hit_on_disk_is_sent_with_its_length() {
    let (server, _storage) = Server::on_disk(&[]);
    let small = entry(&[7u8; 1000]);
    let large: Vec<u8> = (0..300 * 1024u32).map(|i| (i % 251) as u8).collect();
    let large = entry(&large);
    let keys = [KEY.to_string(), KEY.replace('0', "2")];
    for (key, body) in keys.iter().zip([&small, &large]) {
        let (status, _) = server.request("PUT", &key_path(key), Some(RW), body);
        assert_eq!(status, 201);
    }
    let mut stream = TcpStream::connect(&server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
    for (key, body) in keys.iter().zip([&small, &large]) {
        write!(
            stream,
            "GET {} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {RO}\r\n\r\n",
            key_path(key)
        )
        .unwrap();
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
            head.push(line.trim_end().to_ascii_lowercase());
        }
        assert!(head[0].starts_with("http/1.1 200"), "{head:?}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head:?}"
        );
        assert!(
            !head.iter().any(|h| h.starts_with("transfer-encoding")),
            "{head:?}"
        );
        let mut got = vec![0u8; body.len()];
        reader.read_exact(&mut got).unwrap();
        assert!(got == *body, "the bytes of {key} differ from what was put");
    }
}
