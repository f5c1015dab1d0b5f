//! The S3 tier driven over the protocol by a test client: concurrent gets of one key fetch
//! it once, in one process and across processes sharing a cache, and uploads stream
//! large bodies.

use crate::support;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use goremotecache::ids::OutputId;
use std::collections::BTreeSet;
use std::time::Duration;

use crate::gc_remote::namespaces::seed;

use support::proxy::{Mode, Proxy};
use support::s3::{S3Server, SECRET_KEY, credentials};
use support::{Client, action, pseudo_random};

fn client(server: &S3Server, dir: &std::path::Path, prefix: &str) -> Client {
    client_at(&server.endpoint, dir, prefix, &[])
}

fn client_at(endpoint: &str, dir: &std::path::Path, prefix: &str, extra: &[&str]) -> Client {
    support::s3_client(dir, support::s3::s3_args(endpoint, prefix), extra)
}

fn close(client: Client, id: i64) -> String {
    client.close(id)
}

#[test]
fn concurrent_gets_of_one_key_fetch_it_once() {
    let server = S3Server::start();
    let body = pseudo_random(5, 2 * 1024 * 1024);
    let first = tempfile::tempdir().unwrap();
    let mut writer = client(&server, first.path(), "once");
    writer.put(1, action(1), &body);
    writer.read().unwrap();
    let stderr = close(writer, 2);
    assert!(stderr.contains("uploads: 1 stored"), "{stderr}");
    assert_eq!(server.count("PUT"), 1);

    // Two processes on one fresh cache, each asking twice at once.
    let shared = tempfile::tempdir().unwrap();
    server.reset_counts();
    let mut a = client(&server, shared.path(), "once");
    let mut b = client(&server, shared.path(), "once");
    let mut both = Vec::new();
    both.extend(support::encode_request(
        1,
        &goremotecache::cacheprog::wire::Command::Get {
            action_id: action(1),
        },
    ));
    both.extend(support::encode_request(
        2,
        &goremotecache::cacheprog::wire::Command::Get {
            action_id: action(1),
        },
    ));
    a.send(&both);
    b.send(&both);
    for client in [&mut a, &mut b] {
        for _ in 0..2 {
            let answer = client.read().unwrap();
            assert_eq!(
                answer["OutputID"],
                B64.encode(OutputId::of(&body).0),
                "{answer}"
            );
            let served = std::fs::read(answer["DiskPath"].as_str().unwrap()).unwrap();
            assert!(served == body);
        }
    }
    close(a, 3);
    close(b, 3);
    assert_eq!(server.count("GET"), 1, "the key was fetched more than once");
}

#[test]
fn a_large_body_uploads_and_comes_back_whole() {
    let server = S3Server::start();
    // Incompressible and larger than what is uploaded from memory.
    let body = pseudo_random(6, 12 * 1024 * 1024 + 3);
    let first = tempfile::tempdir().unwrap();
    let mut writer = client(&server, first.path(), "large");
    writer.put(1, action(7), &body);
    writer.read().unwrap();
    let stderr = close(writer, 2);
    assert!(stderr.contains("uploads: 1 stored"), "{stderr}");
    assert!(
        stderr.contains("compression -") || stderr.contains("compression 1.00x"),
        "{stderr}"
    );

    let second = tempfile::tempdir().unwrap();
    let mut reader = client(&server, second.path(), "large");
    reader.get(1, action(7));
    let answer = reader.read().unwrap();
    assert_eq!(answer["Size"], body.len());
    assert!(std::fs::read(answer["DiskPath"].as_str().unwrap()).unwrap() == body);
    let stderr = close(reader, 2);
    assert!(stderr.contains("remote: 1 hits"), "{stderr}");
}

#[test]
fn clear_remote_asks_first_then_deletes_its_prefix_only() {
    let server = S3Server::start();
    for (prefix, n) in [("keep", 1), ("drop", 2), ("drop", 3)] {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = client(&server, dir.path(), prefix);
        writer.put(1, action(n), format!("entry {n}").as_bytes());
        writer.read().unwrap();
        close(writer, 2);
    }
    let run = |extra: &[&str]| {
        let mut command = std::process::Command::new(support::bin());
        command
            .arg("clear-remote")
            .args(support::s3::with_prefetch(server.args("drop")))
            .args(extra);
        for (key, value) in credentials(SECRET_KEY) {
            command.env(key, value);
        }
        command.output().unwrap()
    };
    let refused = run(&[]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("run again with --yes"));
    // The entries, not the key filters their runs wrote.
    let entries = || {
        (server.entry_files().iter())
            .filter(|path| !path.ends_with("filter/v1/keys"))
            .count()
    };
    assert_eq!(entries(), 3);
    let done = run(&["--yes"]);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&done.stdout),
        "s3://gocache/drop: deleted 2 entries\n"
    );
    assert_eq!(entries(), 1);
    assert!(!server.bucket_dir().join("drop/filter/v1/keys").exists());
}

/// `clear-remote` on `prefix` of the test bucket, with `extra` options.
fn clear_remote(server: &S3Server, prefix: &str, extra: &[&str]) -> std::process::Output {
    let mut command = std::process::Command::new(support::bin());
    command
        .arg("clear-remote")
        .args(support::s3::with_prefetch(server.args(prefix)))
        .args(extra);
    for (key, value) in credentials(SECRET_KEY) {
        command.env(key, value);
    }
    command.output().unwrap()
}

/// The keys of the objects in the bucket.
fn bucket_keys(server: &S3Server) -> BTreeSet<String> {
    let bucket = server.bucket_dir();
    server
        .entry_files()
        .iter()
        .map(|path| {
            path.strip_prefix(&bucket)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// What `clear-remote` with `extra` deleted from the bucket of [`seed`], and its stdout.
fn cleared(server: &S3Server, extra: &[&str]) -> (BTreeSet<String>, String) {
    let before = bucket_keys(server);
    let done = clear_remote(server, "nsgc", extra);
    assert!(done.status.success(), "{}", text(&done.stderr));
    let gone = before.difference(&bucket_keys(server)).cloned().collect();
    (gone, text(&done.stdout))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn clear_remote_without_a_namespace_leaves_every_namespace_alone() {
    let server = S3Server::start();
    let seeded = seed(&server, "nsgc");
    let refused = clear_remote(&server, "nsgc", &[]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = text(&refused.stderr);
    assert!(
        stderr.contains("of s3://gocache/nsgc, the un-namespaced ones only (nothing in its"),
        "{stderr}"
    );
    let (gone, stdout) = cleared(&server, &["--yes"]);
    assert_eq!(gone, seeded.keys(&["r1", "r2", "root-manifest"]));
    assert_eq!(stdout, "s3://gocache/nsgc: deleted 3 entries\n");
}

#[test]
fn clear_remote_of_one_namespace_deletes_its_objects_only() {
    let server = S3Server::start();
    let seeded = seed(&server, "nsgc");
    let before = bucket_keys(&server);
    let refused = clear_remote(&server, "nsgc", &["--namespace", "pr-1"]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = text(&refused.stderr);
    assert!(
        stderr.contains("of s3://gocache/nsgc (namespace pr-1); run again with --yes"),
        "{stderr}"
    );
    assert_eq!(bucket_keys(&server), before);
    let (gone, stdout) = cleared(&server, &["--namespace", "pr-1", "--yes"]);
    assert_eq!(gone, seeded.keys(&["p1", "p2", "pr-manifest"]));
    assert_eq!(
        stdout,
        "s3://gocache/nsgc (namespace pr-1): deleted 3 entries\n"
    );
}

#[test]
fn clear_remote_of_every_namespace_reports_each() {
    let server = S3Server::start();
    let seeded = seed(&server, "nsgc");
    let before = bucket_keys(&server);
    let refused = clear_remote(&server, "nsgc", &["--all-namespaces"]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = text(&refused.stderr);
    assert!(
        stderr.contains(
            "under s3://gocache/nsgc, un-namespaced and in the namespaces main, pr-1; run again"
        ),
        "{stderr}"
    );
    assert_eq!(bucket_keys(&server), before);

    let (gone, stdout) = cleared(&server, &["--all-namespaces", "--yes"]);
    let names = seeded.0.keys().copied();
    let kept = ["bad", "elsewhere"];
    let all: Vec<&str> = names.filter(|name| !kept.contains(name)).collect();
    assert_eq!(gone, seeded.keys(&all));
    assert_eq!(
        stdout,
        "s3://gocache/nsgc: deleted 3 entries\n\
         s3://gocache/nsgc (namespace main): deleted 6 entries\n\
         s3://gocache/nsgc (namespace pr-1): deleted 3 entries\n\
         s3://gocache/nsgc/ns/.hidden/: skipped, not a namespace \
         (namespace \".hidden\": a name must not start with '.')\n\
         total: deleted 12 entries, un-namespaced and in 2 namespaces\n"
    );
}

/// Puts `count` small entries and closes, through a link that adds `delay` to each round trip.
fn put_many_then_close(endpoint: &str, count: u32, extra: &[&str]) -> (String, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let stats_file = dir.path().join("stats.json");
    let mut args = vec![
        "--stats-file",
        stats_file.to_str().unwrap(),
        "--upload-concurrency",
        "1",
    ];
    args.extend_from_slice(extra);
    let mut writer = client_at(endpoint, dir.path(), "slow", &args);
    for n in 0..count {
        writer.put(
            i64::from(n) + 1,
            action(100 + n),
            format!("entry {n}").as_bytes(),
        );
    }
    for _ in 0..count {
        assert!(writer.read().unwrap()["DiskPath"].is_string());
    }
    let stderr = close(writer, i64::from(count) + 1);
    let stats = serde_json::from_slice(&std::fs::read(&stats_file).unwrap()).unwrap();
    (stderr, stats)
}

#[test]
fn close_waits_for_uploads_and_says_so() {
    let server = S3Server::start();
    let proxy = Proxy::start(&server.endpoint, Mode::Delay(Duration::from_millis(150)));
    // One upload at a time, 150 ms or more each: 12 take about two seconds.
    let (stderr, stats) = put_many_then_close(&proxy.endpoint, 12, &[]);
    assert!(stderr.contains("goremotecache: waiting for "), "{stderr}");
    assert!(stderr.contains("uploads finished in"), "{stderr}");
    assert_eq!(stats["remote"]["uploads"], 12, "{stats}");
    assert_eq!(stats["remote"]["uploads_dropped"], 0, "{stats}");
    assert!(
        stats["remote"]["close_wait_seconds"].as_f64().unwrap() > 1.0,
        "{stats}"
    );
    assert!(
        stats["remote"]["queue_high_water"].as_u64().unwrap() >= 2,
        "{stats}"
    );
}

#[test]
fn uploads_past_the_wait_are_dropped_and_counted() {
    let server = S3Server::start();
    let proxy = Proxy::start(&server.endpoint, Mode::Delay(Duration::from_millis(400)));
    let (stderr, stats) = put_many_then_close(&proxy.endpoint, 20, &["--upload-wait", "1s"]);
    assert!(
        stderr.contains("uploads not finished after 1s were dropped"),
        "{stderr}"
    );
    assert!(!stderr.contains("uploads finished in"), "{stderr}");
    let dropped = stats["remote"]["uploads_dropped"].as_u64().unwrap();
    let stored = stats["remote"]["uploads"].as_u64().unwrap();
    assert!(dropped > 0, "{stats}");
    assert_eq!(dropped + stored, 20, "{stats}");
}
