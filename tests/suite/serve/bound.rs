//! A storage directory under `--max-size`: `go build std` through a bound smaller than its
//! entries (the directory stays under it, evictions counted, a fresh machine builds correct
//! results from what is left, nothing torn); the access order kept across restarts; 507 when
//! old entries cannot be deleted fast enough (here: not at all), which the go command's
//! build takes as failed uploads and goes on; the option's checks.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use support::GoProject;

use super::{RW, Server, entry, entry_file, eventually, key_path, metric, through};

/// The entry files under `storage/v1/`: path and size.
fn entries(storage: &Path) -> Vec<(PathBuf, u64)> {
    let mut found = Vec::new();
    let Ok(shards) = std::fs::read_dir(storage.join("v1")) else {
        return found;
    };
    for shard in shards.flatten() {
        for file in std::fs::read_dir(shard.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(meta) = file.metadata() {
                found.push((file.path(), meta.len()));
            }
        }
    }
    found
}

fn stored_bytes(storage: &Path) -> u64 {
    entries(storage).iter().map(|(_, len)| len).sum()
}

/// Every entry file is a whole, intact entry (header, size, sha256), and no spool file is
/// left behind.
fn assert_nothing_torn(storage: &Path) {
    for (path, _) in entries(storage) {
        let file = std::fs::File::open(&path).unwrap();
        goremotecache::store::format::read_entry(
            &mut std::io::BufReader::new(file),
            &mut std::io::sink(),
        )
        .unwrap_or_else(|err| panic!("{} is torn: {err}", path.display()));
    }
    let spool: Vec<_> = std::fs::read_dir(storage.join("tmp")).unwrap().collect();
    assert!(spool.is_empty(), "spool files left: {spool:?}");
}

#[test]
fn go_builds_through_a_bound_smaller_than_their_entries() {
    const MAX: u64 = 4 << 20;
    let (server, storage) = Server::on_disk(&["--max-size", "4MiB"]);
    // The storage directory, sampled while the build runs: its peak, and its largest entry.
    let stop = Arc::new(AtomicBool::new(false));
    let (peak, largest) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let sampler = std::thread::spawn({
        let (stop, peak, largest) = (stop.clone(), peak.clone(), largest.clone());
        let dir = storage.path().to_path_buf();
        move || {
            while !stop.load(Ordering::Relaxed) {
                let found = entries(&dir);
                let total = found.iter().map(|(_, len)| len).sum();
                peak.fetch_max(total, Ordering::Relaxed);
                let big = found.iter().map(|(_, len)| *len).max().unwrap_or(0);
                largest.fetch_max(big, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    });
    let mut project = GoProject::new("serve-bound");
    through(&mut project, &server, RW);
    let cold = project.go(&["build", "./..."]);
    let module = project.go(&["test", "./..."]);
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();

    let uploaded = cold.stat("remote.bytes_up") + module.stat("remote.bytes_up");
    assert!(uploaded > 2 * MAX, "the builds put only {uploaded} bytes");
    let (peak, largest) = (
        peak.load(Ordering::Relaxed),
        largest.load(Ordering::Relaxed),
    );
    println!(
        "go build and go test put {} MiB through a 4 MiB bound; the directory peaked at {:.1} MiB",
        uploaded >> 20,
        peak as f64 / f64::from(1 << 20)
    );
    // Puts are admitted up to 110% while deletion catches up; a sample walks the
    // directory as it changes, so it may count one entry more.
    assert!(
        peak <= MAX + MAX / 10 + largest,
        "the directory reached {peak} bytes"
    );
    // Settled: under the bound, and the figures are the directory's.
    eventually(Duration::from_secs(20), "eviction settles", || {
        stored_bytes(storage.path()) <= MAX
    });
    let on_disk = entries(storage.path());
    assert_eq!(
        metric(&server, "goremotecache_storage_bytes"),
        on_disk.iter().map(|(_, len)| len).sum::<u64>()
    );
    assert_eq!(
        metric(&server, "goremotecache_storage_entries"),
        on_disk.len() as u64
    );
    let evictions = metric(&server, "goremotecache_evictions_total");
    assert!(evictions > 100, "{evictions} evictions");
    // A few puts may be refused when several large ones arrive together (the bound's 10%
    // is 0.4 MiB, and some entries are larger): they are the client's upload errors, and
    // nothing else failed.
    let refused = metric(
        &server,
        "goremotecache_requests_total{method=\"PUT\",status=\"507\"}",
    );
    let upload_errors = cold.stat("remote.upload_errors") + module.stat("remote.upload_errors");
    assert_eq!(upload_errors, refused, "{:?}", cold.stats);
    assert!(refused < 50, "{refused} puts refused");
    println!("{refused} puts refused with 507, {evictions} entries evicted");
    assert_nothing_torn(storage.path());

    // A fresh machine tests and builds from what is left: the most recent entries (of the
    // tests) come from the server, evicted ones are compiled again, and the program is right.
    project.switch_machine("bound-b");
    let fresh = project.go(&["test", "./..."]);
    assert!(fresh.remote_answers() > 0, "{:?}", fresh.stats);
    assert_eq!(fresh.stat("remote.corrupt"), 0, "{:?}", fresh.stats);
    assert_eq!(project.build_and_run_command("e2e-b").trim(), "TOTAL 9!");
    assert!(server.stop().success());
    assert_nothing_torn(storage.path());
}

/// An entry key in shard `shard` (two hex digits).
fn key_in(shard: &str, n: u64) -> String {
    format!("{shard}{n:062x}")
}

/// An entry of about 100 KB, different for each `n`.
fn big_entry(n: u64) -> Vec<u8> {
    entry(&support::pseudo_random(n, 100_000))
}

fn set_mtime(path: &Path, at: SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(at)
        .unwrap();
}

/// The order is rebuilt from the files' mtimes at start, and a read refreshes an old file's
/// mtime, so that a restart keeps what was read recently and evicts what was not.
#[test]
fn a_restart_keeps_the_access_order() {
    let storage = tempfile::tempdir().unwrap();
    let dir = storage.path().to_str().unwrap();
    let args = ["--storage-dir", dir, "--max-size", "1MiB"];
    let keys: Vec<String> = (0..11).map(|n| key_in(&format!("{n:02x}"), n)).collect();

    let server = Server::start(&args, &[]);
    for (n, key) in keys[..8].iter().enumerate() {
        let (status, _) = server.request("PUT", &key_path(key), Some(RW), &big_entry(n as u64));
        assert_eq!(status, 201);
    }
    assert!(server.stop().success());
    // Written hours ago, key 0 first.
    let now = SystemTime::now();
    for (n, key) in keys[..8].iter().enumerate() {
        let age = Duration::from_secs(10 * 3600 - n as u64 * 60);
        set_mtime(&entry_file(storage.path(), key), now - age);
    }

    // Read after a restart: key 0 becomes the most recent, on disk too.
    let server = Server::start(&args, &[]);
    assert_eq!(metric(&server, "goremotecache_storage_entries"), 8);
    let oldest = metric(&server, "goremotecache_storage_oldest_access_age_seconds");
    assert!(
        (35_000..37_000).contains(&oldest),
        "oldest access {oldest}s ago"
    );
    let (status, _) = server.request("GET", &key_path(&keys[0]), Some(RW), b"");
    assert_eq!(status, 200);
    assert!(server.stop().success());
    let mtime = std::fs::metadata(entry_file(storage.path(), &keys[0]))
        .unwrap()
        .modified()
        .unwrap();
    assert!(now.duration_since(mtime).unwrap_or_default() < Duration::from_secs(600));

    // After another restart, three more entries pass the bound: the two least recently
    // used go (keys 1 and 2), not key 0, which was read.
    let server = Server::start(&args, &[]);
    for (n, key) in keys.iter().enumerate().skip(8) {
        let (status, _) = server.request("PUT", &key_path(key), Some(RW), &big_entry(n as u64));
        assert_eq!(status, 201);
    }
    eventually(Duration::from_secs(20), "eviction", || {
        metric(&server, "goremotecache_evictions_total") == 2
    });
    let present: Vec<bool> = keys
        .iter()
        .map(|key| entry_file(storage.path(), key).exists())
        .collect();
    let mut expected = [true; 11];
    expected[1] = false;
    expected[2] = false;
    assert_eq!(present, expected);
    assert_eq!(metric(&server, "goremotecache_storage_entries"), 9);
    assert_eq!(
        metric(&server, "goremotecache_storage_bytes"),
        stored_bytes(storage.path())
    );
    for key in [&keys[1], &keys[2]] {
        assert_eq!(server.request("GET", &key_path(key), Some(RW), b"").0, 404);
    }
    assert_nothing_torn(storage.path());
}

/// Makes the files of a directory impossible to delete until dropped: `chattr +i` for root
/// (whom permissions do not stop; .ci/run installs it), read-only permissions for anyone else.
/// A machine where neither works fails the test rather than skip it.
struct Jam(PathBuf);

impl Jam {
    fn new(dir: &Path) -> Self {
        let root = rustix::process::geteuid().is_root();
        let done = if root {
            Command::new("chattr").arg("+i").arg(dir).status()
        } else {
            Command::new("chmod").arg("0555").arg(dir).status()
        };
        match done {
            Ok(status) if status.success() => Self(dir.to_path_buf()),
            other => panic!(
                "cannot make {}'s files undeletable (chattr +i as root, chmod 0555 otherwise): {other:?}",
                dir.display()
            ),
        }
    }
}

impl Drop for Jam {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
        let _ = Command::new("chmod").arg("0700").arg(&self.0).status();
    }
}

/// When old entries cannot be deleted (here a directory stored without a bound and then
/// served with one, its files undeletable), puts past 110% of the bound get 507; a go build
/// through it takes them as failed uploads and goes on (the remote is not switched off: its
/// reads go on); once deleting works again, so do puts.
#[test]
fn a_put_gets_507_when_old_entries_cannot_be_deleted_and_the_build_goes_on() {
    let storage = tempfile::tempdir().unwrap();
    let dir = storage.path().to_str().unwrap();
    let unbounded = Server::start(&["--storage-dir", dir, "--max-size", "off"], &[]);
    for n in 0..12 {
        let put = unbounded.request("PUT", &key_path(&key_in("00", n)), Some(RW), &big_entry(n));
        assert_eq!(put.0, 201);
    }
    assert!(unbounded.stop().success());
    let jam = Jam::new(&storage.path().join("v1").join("00"));
    // 1.2 MB stored under a 1 MiB bound, and none of it can go.
    let server = Server::start(&["--storage-dir", dir, "--max-size", "1MiB"], &[]);
    let put = |key: &str, n: u64| server.request("PUT", &key_path(key), Some(RW), &big_entry(n));
    let (status, body) = put(&key_in("11", 12), 12);
    assert_eq!(status, 507, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("full"));
    // A key that is there already is still answered.
    assert_eq!(put(&key_in("00", 1), 1).0, 200);
    assert_eq!(metric(&server, "goremotecache_storage_entries"), 12);

    let mut project = GoProject::new("serve-bound-507");
    through(&mut project, &server, RW);
    let build = project.go(&["build", "./..."]);
    let stat = |name: &str| build.stat(name);
    assert!(stat("remote.upload_errors") > 10, "{:?}", build.stats);
    assert_eq!(stat("remote.uploads"), 0, "{:?}", build.stats);
    assert_eq!(stat("remote.uploads_dropped"), 0, "{:?}", build.stats);
    assert!(
        !build.stderr().contains("local cache only"),
        "the remote was switched off: {}",
        build.stderr()
    );
    // Every get of the build was answered by the server or by its key filter (a switched-off
    // remote is neither asked nor looked up).
    let misses = metric(&server, "goremotecache_misses_total");
    assert_eq!(misses, stat("remote.misses"), "{:?}", build.stats);
    assert!(
        misses + stat("remote.instant_misses") > 10,
        "{:?}",
        build.stats
    );

    drop(jam);
    eventually(Duration::from_secs(20), "puts taken again", || {
        put(&key_in("11", 12), 12).0 == 201
    });
    eventually(Duration::from_secs(20), "eviction settles", || {
        stored_bytes(storage.path()) <= 1 << 20
    });
    assert!(metric(&server, "goremotecache_evictions_total") >= 3);
    // The oldest went first.
    assert!(!entry_file(storage.path(), &key_in("00", 0)).exists());
    assert!(entry_file(storage.path(), &key_in("11", 12)).exists());
    assert_nothing_torn(storage.path());
}

#[test]
fn max_size_is_checked() {
    for (value, says) in [("0", "larger than 0"), ("ten", "not a size")] {
        let (code, _, stderr) = support::outcome(
            Command::new(support::bin())
                .args([
                    "serve",
                    "--storage-dir",
                    "/nonexistent",
                    "--max-size",
                    value,
                ])
                .env_remove("GOREMOTECACHE_SERVE_MAX_SIZE"),
        );
        assert_eq!(code, 2, "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
    }
    // Not for S3 storage, where it would bound nothing.
    let (code, _, stderr) = support::outcome(
        Command::new(support::bin())
            .args([
                "serve",
                "--s3-bucket",
                "b",
                "--tokens",
                "rw:0123456789abcdef0123",
            ])
            .env("GOREMOTECACHE_SERVE_MAX_SIZE", "1GiB"),
    );
    assert_ne!(code, 0, "{stderr}");
    assert!(stderr.contains("lifecycle"), "{stderr}");
}
