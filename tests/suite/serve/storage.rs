//! What the server stores and how: many clients at once, a server killed during uploads,
//! things in the storage directory that are not entries, the directory's privacy, and a
//! `PUT` verified once and renamed into place.

use crate::support;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use goremotecache::config::ServeTimeouts;
use goremotecache::server::metrics::Metrics;
use goremotecache::server::tokens::Tokens;
use goremotecache::server::{ServerState, Storage, run};
use goremotecache::store::bounded::BoundedDisk;
use goremotecache::store::dir::DiskStore;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::{KEY, RO, RW, Server, entry, entry_file, http_client, key_path, read_back};

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

/// The files in the storage directory's `tmp/`.
fn spooled(storage: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(storage.join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

/// A `PUT` on disk storage is verified once: its body is spooled into the storage's own
/// `tmp/`, checked there, and that very file (the same inode) is renamed into place. The
/// store's `put`, which would copy it into a second temporary file and verify it again, is
/// never called (the stored file would be another inode), and no second temporary file
/// appears. The server runs in this process, so that the test can watch its spool while the
/// body is still arriving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_on_disk_storage_is_verified_once_and_its_spool_file_renamed_into_place() {
    let storage = tempfile::tempdir().unwrap();
    let disk = DiskStore::open(storage.path()).unwrap();
    let state = Arc::new(ServerState {
        storage: Storage::Disk(BoundedDisk::open(disk, None).unwrap().0),
        tokens: RwLock::new(Tokens::parse_list(&format!("rw:{RW},ro:{RO}")).unwrap()),
        anonymous_read: false,
        max_entry_size: 1 << 20,
        spool_dir: storage.path().join("tmp"),
        in_flight: Arc::new(Semaphore::new(8)),
        timeouts: ServeTimeouts {
            body: Duration::from_secs(30),
            write: Duration::from_secs(30),
            idle: Duration::from_secs(60),
        },
        metrics: Metrics::new(),
        goproxy: None,
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(run(listener, state, 16, None, async {
        let _ = stopped.await;
    }));
    let client = http_client();
    let key = "ab".repeat(32);

    // The body in two halves: between them, the spool file is there to be looked at.
    let body = entry(&vec![7u8; 200_000]);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(2);
    let put = tokio::spawn({
        let client = client.clone();
        let url = format!("{url}{}", key_path(&key));
        async move {
            let chunks = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|chunk| (chunk, rx))
            });
            client
                .put(url)
                .bearer_auth(RW)
                .body(reqwest::Body::wrap_stream(chunks))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    });
    let half = body.len() / 2;
    tx.send(Ok(Bytes::copy_from_slice(&body[..half])))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let spool = loop {
        let files = spooled(storage.path());
        if let [file] = &files[..]
            && std::fs::metadata(file).unwrap().len() == half as u64
        {
            break file.clone();
        }
        assert!(files.len() <= 1, "one spool file: {files:?}");
        assert!(
            Instant::now() < deadline,
            "the first half never reached the spool"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let inode = std::fs::metadata(&spool).unwrap().ino();
    tx.send(Ok(Bytes::copy_from_slice(&body[half..])))
        .await
        .unwrap();
    drop(tx);
    assert_eq!(put.await.unwrap(), 201);
    let stored = entry_file(storage.path(), &key);
    assert_eq!(
        std::fs::metadata(&stored).unwrap().ino(),
        inode,
        "the stored entry is the spooled file, not a copy"
    );
    assert_eq!(std::fs::read(&stored).unwrap(), body);
    assert!(spooled(storage.path()).is_empty(), "no temporary file left");
    read_back(&client, &url, &key, &Sha256::digest(&body).into()).await;

    // An existing entry is never replaced; a damaged one is refused and leaves nothing.
    let again = |body: Vec<u8>, key: String| {
        let client = client.clone();
        let url = format!("{url}{}", key_path(&key));
        async move {
            let answer = client.put(url).bearer_auth(RW).body(body).send().await;
            answer.unwrap().status().as_u16()
        }
    };
    assert_eq!(again(entry(b"other"), key.clone()).await, 200);
    assert_eq!(std::fs::read(&stored).unwrap(), body);
    let mut damaged = entry(b"damaged");
    let last = damaged.len() - 1;
    damaged[last] ^= 1;
    let other = "cd".repeat(32);
    assert_eq!(again(damaged, other.clone()).await, 400);
    assert!(!entry_file(storage.path(), &other).exists());
    assert!(spooled(storage.path()).is_empty(), "no temporary file left");

    let _ = stop.send(());
    server.await.unwrap();
}
