//! Namespaces on the server: tokens scoped to them (the scope matrix, a read outside the
//! scope that says nothing of what is there, bad token lines refused at start and on
//! reload), bad names refused before anything else, each namespace's own entries, batches
//! and manifests on a storage directory, one `--max-size` over them all (eviction across
//! namespaces, and the scan of a restart), and S3 storage under `<prefix>/ns/<NAME>/`.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use goremotecache::ids::ActionId;
use goremotecache::store::batch::Event;
use support::s3::{S3Server, SECRET_KEY, credentials, with_prefetch};

use super::{KEY, RO, RW, Server, decode_batch, entry, eventually, metric};

/// `rw`, namespace `main` only.
const MAIN: &str = "rw-main-0123456789abcdef";
/// `rw`, the namespaces `pr-*`.
const PRS: &str = "rw-prs-0123456789abcdef";
/// `ro`, every namespace and the un-namespaced paths.
const READ_ALL: &str = "ro-all-0123456789abcdef";

fn scoped_tokens() -> String {
    format!(
        "# scoped\nrw {MAIN} namespaces=main # CI on main\nrw {PRS} namespaces=pr-*\n\
         ro {READ_ALL} namespaces=*\nrw {RW}\nro {RO}\n"
    )
}

fn scoped_server() -> (Server, tempfile::TempDir) {
    let storage = tempfile::tempdir().unwrap();
    let dir = storage.path().to_str().unwrap();
    let server = Server::with_tokens(&scoped_tokens(), &["--storage-dir", dir], &[]);
    (server, storage)
}

/// The path of `key` in namespace `ns` (`""`: no namespace).
fn ac(ns: &str, key: &str) -> String {
    match ns {
        "" => format!("/v1/ac/{key}"),
        ns => format!("/v1/ns/{ns}/ac/{key}"),
    }
}

fn other_key(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

#[test]
fn the_scope_matrix() {
    let (server, _storage) = scoped_server();
    let put = |ns: &str, token: &str, body: &[u8]| {
        server.request("PUT", &ac(ns, KEY), Some(token), body).0
    };
    let get = |ns: &str, token: &str| server.request("GET", &ac(ns, KEY), Some(token), b"").0;
    let body = entry(b"scoped");
    // rw main: main only.
    assert_eq!(put("pr-1", MAIN, &body), 403);
    assert_eq!(put("", MAIN, &body), 403);
    assert_eq!(put("main", MAIN, &body), 201);
    assert_eq!(get("main", MAIN), 200);
    // rw pr-*: any pr-, not main, not the un-namespaced paths.
    assert_eq!(put("pr-7", PRS, &body), 201);
    assert_eq!(put("main", PRS, &body), 403);
    assert_eq!(put("", PRS, &body), 403);
    assert_eq!(get("", PRS), 403);
    assert_eq!(put("pr-", PRS, &body), 201);
    assert_eq!(put("pr", PRS, &body), 403);
    // No scope: everything, namespaced or not.
    assert_eq!(put("", RW, &body), 201);
    assert_eq!(put("release-1", RW, &body), 201);
    assert_eq!(get("pr-7", RW), 200);
    assert_eq!(get("main", RO), 200);
    assert_eq!(put("other", RO, &body), 403);
    // ro *: reads everything, writes nothing.
    for ns in ["", "main", "pr-7", "release-1"] {
        assert_eq!(get(ns, READ_ALL), 200, "{ns:?}");
        let head = server.request("HEAD", &ac(ns, KEY), Some(READ_ALL), b"");
        assert_eq!(head.0, 200, "{ns:?}");
        assert_eq!(put(ns, READ_ALL, &body), 403, "{ns:?}");
    }
    assert_eq!(
        server.request("PUT", &ac("x", KEY), Some(READ_ALL), &body),
        (403, b"this token may only read\n".to_vec())
    );
    // No token, or an unknown one: 401 in a namespace too.
    assert_eq!(server.request("GET", &ac("main", KEY), None, b"").0, 401);
    let unknown = "not-a-known-token-at-all";
    assert_eq!(put("main", unknown, &body), 401);
}

/// Outside its scope a token learns nothing of what is there: the same 403 and body for an
/// entry, a batch and a manifest that exist and for ones that do not.
#[test]
fn a_read_outside_the_scope_does_not_say_what_is_there() {
    let (server, _storage) = scoped_server();
    let missing = other_key(0xee);
    assert_eq!(
        server
            .request("PUT", &ac("pr-7", KEY), Some(PRS), &entry(b"there"))
            .0,
        201
    );
    let manifest = format!("/v1/ns/pr-7/prefetch/{KEY}");
    assert_eq!(
        server.request("PUT", &manifest, Some(PRS), b"manifest").0,
        204
    );
    let refused = |method: &str, path: &str, body: &[u8]| {
        let (status, answer) = server.request(method, path, Some(MAIN), body);
        assert_eq!(status, 403, "{method} {path}");
        answer
    };
    let there = refused("GET", &ac("pr-7", KEY), b"");
    assert_eq!(there, b"this token may not use namespace pr-7\n");
    assert_eq!(refused("GET", &ac("pr-7", &missing), b""), there);
    assert_eq!(
        refused("GET", &ac("pr-8", KEY), b""),
        b"this token may not use namespace pr-8\n"
    );
    assert_eq!(
        refused("HEAD", &ac("pr-7", KEY), b""),
        refused("HEAD", &ac("pr-7", &missing), b"")
    );
    let batch = "/v1/ns/pr-7/batch";
    assert_eq!(refused("POST", batch, format!("{KEY}\n").as_bytes()), there);
    assert_eq!(
        refused("POST", batch, format!("{missing}\n").as_bytes()),
        there
    );
    assert_eq!(refused("GET", &manifest, b""), there);
    assert_eq!(
        refused("GET", &format!("/v1/ns/pr-7/prefetch/{missing}"), b""),
        there
    );
    // The un-namespaced paths are outside a scope without `*`.
    assert_eq!(
        refused("GET", &ac("", KEY), b""),
        b"this token may only use namespaces (/v1/ns/<NAME>/...)\n"
    );
    // And the owner of the scope sees them.
    assert_eq!(
        server.request("GET", &manifest, Some(PRS), b""),
        (200, b"manifest".to_vec())
    );
}

/// A bad namespace name is 400 before anything else: with no token, with any method, on
/// every route; and nothing is made outside the storage directory.
#[test]
fn bad_namespace_names_are_refused_first() {
    let (server, storage) = scoped_server();
    let long = "x".repeat(129);
    for name in [
        "..",
        "%2e%2e",
        ".",
        "a%2Fb",
        "..%2F..%2Fescaped",
        ".hidden",
        "a%20b",
        &long,
    ] {
        for (method, path) in [
            ("GET", ac(name, KEY)),
            ("HEAD", ac(name, KEY)),
            ("PUT", ac(name, KEY)),
            ("POST", format!("/v1/ns/{name}/batch")),
            ("GET", format!("/v1/ns/{name}/prefetch/{KEY}")),
            ("PUT", format!("/v1/ns/{name}/prefetch/{KEY}")),
        ] {
            for token in [None, Some(RW)] {
                let (status, body) = server.request(method, &path, token, &entry(b"x"));
                assert_eq!(status, 400, "{method} {path} {token:?}");
                if method != "HEAD" {
                    let text = String::from_utf8_lossy(&body);
                    assert!(text.starts_with("namespace "), "{method} {path}: {text}");
                }
            }
        }
    }
    // The longest name is fine; a bad key in a good namespace is still a key's 400.
    let longest = "x".repeat(128);
    assert_eq!(
        server.request("GET", &ac(&longest, KEY), Some(RW), b"").0,
        404
    );
    assert_eq!(
        server.request("GET", &ac("main", "nope"), Some(RW), b"").0,
        400
    );
    let outside = storage.path().parent().unwrap().join("escaped");
    assert!(!outside.exists());
    let made: Vec<String> = std::fs::read_dir(storage.path().join("ns"))
        .map(|dir| {
            dir.map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        made.is_empty(),
        "namespaces made by refused requests: {made:?}"
    );
}

/// A token file with a mistyped or empty scope refuses to start, with status 2 and the line.
#[test]
fn bad_scopes_in_the_token_file_refuse_to_start() {
    let storage = tempfile::tempdir().unwrap();
    for (line, says) in [
        ("namespace=main", "\"namespace=main\" after the token"),
        ("namespaces=", "at least one glob"),
        ("namespaces=a/b", "'/' is not allowed"),
    ] {
        let tokens = storage.path().join("tokens");
        std::fs::write(&tokens, format!("rw {RW}\nrw {MAIN} {line}\n")).unwrap();
        let out = Command::new(support::bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--storage-dir"])
            .arg(storage.path().join("data"))
            .arg("--token-file")
            .arg(&tokens)
            .env_remove("GOREMOTECACHE_TOKENS")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{line}: {stderr}");
        assert!(stderr.contains("line 2: "), "{line}: {stderr}");
        assert!(stderr.contains(says), "{line}: {stderr}");
        assert!(!stderr.contains(MAIN), "the token in {stderr}");
    }
}

/// SIGHUP with a bad scope keeps the old tokens; a good one applies the new scopes.
#[test]
fn a_reload_with_a_bad_scope_keeps_the_old_tokens() {
    let (server, _storage) = scoped_server();
    let new = "brand-new-token-0123456789";
    let hangup = || {
        Command::new("kill")
            .args(["-HUP", &server.child.id().to_string()])
            .status()
            .unwrap();
    };
    std::fs::write(
        &server.token_file,
        format!("rw {new}\nrw {MAIN} namespace=main\n"),
    )
    .unwrap();
    hangup();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        server.request("GET", &ac("main", KEY), Some(new), b"").0,
        401
    );
    assert_eq!(
        server.request("GET", &ac("main", KEY), Some(MAIN), b"").0,
        404
    );
    assert_eq!(
        server.request("GET", &ac("pr-1", KEY), Some(MAIN), b"").0,
        403
    );

    std::fs::write(&server.token_file, format!("ro {new} namespaces=pr-*\n")).unwrap();
    hangup();
    eventually(Duration::from_secs(10), "the reload", || {
        server.request("GET", &ac("pr-1", KEY), Some(new), b"").0 == 404
    });
    assert_eq!(
        server.request("GET", &ac("main", KEY), Some(new), b"").0,
        403
    );
    assert_eq!(
        server.request("GET", &ac("main", KEY), Some(MAIN), b"").0,
        401
    );
}

/// The entry files of every namespace of a storage directory, and of none.
fn entry_files(storage: &Path) -> Vec<PathBuf> {
    let mut roots = vec![storage.to_path_buf()];
    if let Ok(spaces) = std::fs::read_dir(storage.join("ns")) {
        roots.extend(spaces.map(|space| space.unwrap().path()));
    }
    let mut files = Vec::new();
    for root in roots {
        for shard in std::fs::read_dir(root.join("v1")).into_iter().flatten() {
            for file in std::fs::read_dir(shard.unwrap().path()).unwrap() {
                files.push(file.unwrap().path());
            }
        }
    }
    files.sort();
    files
}

#[test]
fn each_namespace_has_its_own_entries_batches_and_manifests() {
    let (server, storage) = Server::on_disk(&[]);
    let bodies: Vec<(&str, Vec<u8>)> = ["", "a", "b"]
        .iter()
        .map(|ns| (*ns, entry(format!("the entry of {ns:?}").as_bytes())))
        .collect();
    for (ns, body) in &bodies {
        assert_eq!(server.request("PUT", &ac(ns, KEY), Some(RW), body).0, 201);
    }
    // The same action ID, three entries.
    for (ns, body) in &bodies {
        assert_eq!(
            server.request("GET", &ac(ns, KEY), Some(RO), b""),
            (200, body.clone()),
            "{ns:?}"
        );
    }
    let root = storage.path();
    let file = |dir: &Path| dir.join("v1").join(&KEY[..2]).join(KEY);
    assert_eq!(std::fs::read(file(root)).unwrap(), bodies[0].1);
    assert_eq!(
        std::fs::read(file(&root.join("ns/a"))).unwrap(),
        bodies[1].1
    );
    assert_eq!(
        std::fs::read(file(&root.join("ns/b"))).unwrap(),
        bodies[2].1
    );
    assert_eq!(entry_files(root).len(), 3);

    // A batch answers from its namespace only.
    let only_in_b = other_key(0xb0);
    assert_eq!(
        server
            .request("PUT", &ac("b", &only_in_b), Some(RW), &entry(b"b only"))
            .0,
        201
    );
    let ask = format!("{KEY}\n{only_in_b}\n");
    let (status, answer) = server.request("POST", "/v1/ns/a/batch", Some(RO), ask.as_bytes());
    assert_eq!(status, 200);
    let (events, data) = decode_batch(&answer);
    let id = |hex: &str| ActionId::from_hex(hex).unwrap();
    assert_eq!(
        events,
        [
            Event::Start(id(KEY)),
            Event::End,
            Event::Missing(id(&only_in_b))
        ]
    );
    assert!(data == bodies[1].1);
    let (_, answer) = server.request("POST", "/v1/ns/b/batch", Some(RO), ask.as_bytes());
    let (events, _) = decode_batch(&answer);
    assert_eq!(events.iter().filter(|e| matches!(e, Event::End)).count(), 2);

    // Manifests too, beside each namespace's entries.
    let manifest = |ns: &str| match ns {
        "" => format!("/v1/prefetch/{KEY}"),
        ns => format!("/v1/ns/{ns}/prefetch/{KEY}"),
    };
    assert_eq!(
        server.request("PUT", &manifest("a"), Some(RW), b"of a").0,
        204
    );
    assert_eq!(
        server.request("PUT", &manifest("b"), Some(RW), b"of b").0,
        204
    );
    assert_eq!(server.request("GET", &manifest(""), Some(RO), b"").0, 404);
    assert_eq!(
        server.request("GET", &manifest("a"), Some(RO), b""),
        (200, b"of a".to_vec())
    );
    assert_eq!(
        std::fs::read(root.join("ns/b/prefetch").join(KEY)).unwrap(),
        b"of b"
    );

    // Reading a namespace that has nothing makes nothing.
    assert_eq!(
        server.request("GET", &ac("never", KEY), Some(RO), b"").0,
        404
    );
    assert_eq!(
        server.request("HEAD", &ac("never", KEY), Some(RO), b"").0,
        404
    );
    assert_eq!(
        server.request("GET", &manifest("never"), Some(RO), b"").0,
        404
    );
    let (_, answer) = server.request("POST", "/v1/ns/never/batch", Some(RO), ask.as_bytes());
    assert_eq!(decode_batch(&answer).0.len(), 2, "two misses");
    assert!(!root.join("ns/never").exists());
    // Counted under the same request series as the paths without a namespace.
    assert!(
        metric(
            &server,
            "goremotecache_requests_total{method=\"POST\",status=\"200\"}"
        ) >= 3
    );
}

/// goremotecache's own HTTP backend, set to a namespace, talks to the namespaced paths.
#[test]
fn the_http_backend_in_a_namespace_reaches_that_namespace() {
    use goremotecache::store::http::{HttpConfig, HttpStore};
    use goremotecache::store::{PutOutcome, RemoteStore, Upload};
    let (server, storage) = Server::on_disk(&[]);
    let namespace = goremotecache::ids::Namespace::parse("feature-x").unwrap();
    let store = HttpStore::new(&HttpConfig {
        url: server.url(),
        token: Some(RW.into()),
        ca_file: None,
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(30),
        namespace: Some(namespace),
    })
    .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let action = ActionId::from_hex(KEY).unwrap();
    let body = entry(b"through the backend");
    let put = runtime.block_on(store.put(&action, Upload::Bytes(body.clone().into())));
    assert_eq!(put.unwrap(), PutOutcome::Stored);
    let file = storage
        .path()
        .join("ns/feature-x/v1")
        .join(&KEY[..2])
        .join(KEY);
    assert_eq!(std::fs::read(file).unwrap(), body);
    assert_eq!(server.request("GET", &ac("", KEY), Some(RO), b"").0, 404);
    assert_eq!(
        runtime.block_on(store.head(&action)).unwrap(),
        Some(body.len() as u64)
    );
}

/// An entry of about 100 KB (incompressible), different for each `n`.
fn big_entry(n: u64) -> Vec<u8> {
    entry(&support::pseudo_random(n, 100_000))
}

/// One `--max-size` over every namespace: the same keys in two namespaces are two entries;
/// eviction takes the least recently used across both; a restart's scan finds them all.
#[test]
fn one_bound_over_every_namespace() {
    let storage = tempfile::tempdir().unwrap();
    let dir = storage.path().to_str().unwrap();
    let one = big_entry(0).len() as u64;
    // Eleven and a half entries: only the twelfth passes it, and eviction (to 90%) leaves ten.
    let bound = (11 * one + one / 2).to_string();
    let args = ["--storage-dir", dir, "--max-size", &bound];
    let keys: Vec<String> = (1..=6).map(other_key).collect();
    let server = Server::start(&args, &[]);
    for ns in ["a", "b"] {
        for (n, key) in keys.iter().enumerate() {
            let body = big_entry(n as u64);
            let status = server.request("PUT", &ac(ns, key), Some(RW), &body).0;
            assert_eq!(status, 201, "{ns} {n}");
            // Distinct mtimes, in the order written.
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    // Twelve entries (six keys twice): the two least recently used, a's first two, go.
    eventually(Duration::from_secs(20), "eviction", || {
        metric(&server, "goremotecache_evictions_total") == 2
    });
    for (n, key) in keys.iter().enumerate() {
        let expect_a = if n < 2 { 404 } else { 200 };
        let get = |ns: &str| server.request("GET", &ac(ns, key), Some(RO), b"").0;
        assert_eq!(get("a"), expect_a, "a {n}");
        assert_eq!(get("b"), 200, "b {n}");
    }
    assert_eq!(metric(&server, "goremotecache_storage_entries"), 10);
    assert_eq!(metric(&server, "goremotecache_storage_bytes"), 10 * one);
    assert!(server.stop().success());

    // A restart scans every namespace.
    let on_disk = entry_files(storage.path());
    assert_eq!(on_disk.len(), 10);
    let bytes: u64 = on_disk
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    let server = Server::start(&args, &[]);
    assert_eq!(metric(&server, "goremotecache_storage_entries"), 10);
    assert_eq!(metric(&server, "goremotecache_storage_bytes"), bytes);
    // And bounds them together still: two entries in a third namespace push out the two
    // oldest, a's next two.
    for (n, key) in keys.iter().enumerate().take(2) {
        let body = big_entry(100 + n as u64);
        let status = server.request("PUT", &ac("c", key), Some(RW), &body).0;
        assert_eq!(status, 201);
    }
    eventually(
        Duration::from_secs(20),
        "eviction after the restart",
        || metric(&server, "goremotecache_evictions_total") == 2,
    );
    let get = |ns: &str, key: &str| server.request("GET", &ac(ns, key), Some(RO), b"").0;
    assert_eq!(get("a", &keys[2]), 404);
    assert_eq!(get("a", &keys[3]), 404);
    assert_eq!(get("a", &keys[4]), 200);
    assert_eq!(get("c", &keys[0]), 200);
    assert_eq!(metric(&server, "goremotecache_storage_entries"), 10);
}

/// On S3 storage a namespace's objects are under `<prefix>/ns/<NAME>/`.
#[test]
fn s3_storage_keeps_a_namespace_under_its_prefix() {
    let s3 = S3Server::start();
    // The server's storage options (prefetch is the client's business).
    let args = with_prefetch(s3.args("served"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::with_tokens(&scoped_tokens(), &args, &credentials(SECRET_KEY));
    let in_main = entry(b"in main");
    let bare = entry(b"without a namespace");
    assert_eq!(
        server
            .request("PUT", &ac("main", KEY), Some(MAIN), &in_main)
            .0,
        201
    );
    assert_eq!(
        server
            .request("PUT", &ac("main", KEY), Some(MAIN), &in_main)
            .0,
        200
    );
    assert_eq!(server.request("PUT", &ac("", KEY), Some(RW), &bare).0, 201);
    assert_eq!(
        server.request("PUT", &ac("pr-1", KEY), Some(MAIN), &bare).0,
        403
    );
    let manifest = format!("/v1/ns/main/prefetch/{KEY}");
    assert_eq!(server.request("PUT", &manifest, Some(MAIN), b"m").0, 204);
    let bucket = s3.bucket_dir();
    assert_eq!(
        std::fs::read(bucket.join("served/ns/main/v1").join(KEY)).unwrap(),
        in_main
    );
    assert_eq!(
        std::fs::read(bucket.join("served/v1").join(KEY)).unwrap(),
        bare
    );
    assert_eq!(
        std::fs::read(bucket.join("served/ns/main/prefetch/v1").join(KEY)).unwrap(),
        b"m"
    );
    let mut keys: Vec<String> = s3
        .entry_files()
        .iter()
        .map(|f| {
            f.strip_prefix(&bucket)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            format!("served/ns/main/prefetch/v1/{KEY}"),
            format!("served/ns/main/v1/{KEY}"),
            format!("served/v1/{KEY}"),
        ]
    );
    assert_eq!(
        server.request("GET", &ac("main", KEY), Some(READ_ALL), b""),
        (200, in_main)
    );
    assert_eq!(
        server.request("GET", &ac("", KEY), Some(READ_ALL), b""),
        (200, bare)
    );
    assert_eq!(
        server
            .request("GET", &ac("pr-1", KEY), Some(READ_ALL), b"")
            .0,
        404
    );
    assert_eq!(
        server.request("GET", &manifest, Some(READ_ALL), b""),
        (200, b"m".to_vec())
    );
}
