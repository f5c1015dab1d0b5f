//! Prefetch, end to end: a fresh machine pulls in what the last build of the same build key
//! asked for, each entry is fetched once whether the go command or prefetch gets there first,
//! and what prefetch cannot use is a miss, never an error.

use crate::support;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use goremotecache::ids::OutputId;

use support::proxy::{Mode, Proxy};
use support::s3::{S3Server, SECRET_KEY, credentials, s3_args, with_prefetch};
use support::{Client, GoProject, action, pseudo_random};

fn project(tag: &str, server: &S3Server, prefix: &str) -> GoProject {
    let mut project = GoProject::new(tag);
    project.args = with_prefetch(server.args(prefix));
    project.env = credentials(SECRET_KEY);
    project
}

/// The manifests stored under `prefix`.
fn manifests(server: &S3Server, prefix: &str) -> Vec<std::path::PathBuf> {
    let dir = server.bucket_dir().join(prefix).join("prefetch").join("v1");
    std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

#[test]
fn a_fresh_machine_prefetches_what_the_last_build_asked_for() {
    let server = S3Server::start();
    let mut project = project("prefetch-fresh", &server, "pf");
    let cold = project.go(&["build", "./..."]);
    assert!(cold.stat("remote.uploads") > 50, "{:?}", cold.stats);
    assert_eq!(cold.stat("remote.prefetch.listed"), 0, "{:?}", cold.stats);
    assert!(
        cold.stat("remote.prefetch.manifest_written") > 50,
        "{:?}",
        cold.stats
    );
    project.go(&["test", "./..."]);
    // One manifest per build key: `go build ./...` and `go test ./...`.
    assert_eq!(manifests(&server, "pf").len(), 2);

    server.reset_counts();
    // `-x` only changes what the go command prints: the same key as `go build ./...`.
    let build = project.build_on_fresh_machine("machine-b");
    let stat = |name: &str| build.stat(name);
    assert!(stat("remote.prefetch.listed") > 50, "{:?}", build.stats);
    assert!(stat("remote.prefetch.used") > 50, "{:?}", build.stats);
    assert!(
        stat("remote.hits") < stat("remote.prefetch.used") / 4,
        "the gets did not find prefetched entries: {:?}",
        build.stats
    );
    assert_eq!(
        stat("remote.prefetch.wasted"),
        stat("remote.prefetch.fetched") - stat("remote.prefetch.used"),
        "{:?}",
        build.stats
    );
    assert_eq!(stat("remote.errors") + stat("remote.prefetch.errors"), 0);
    assert_eq!(
        stat("remote.uploads"),
        0,
        "prefetched entries were uploaded"
    );
    assert_each_entry_fetched_once(&server, &build);
    project.assert_tests_cached();
    assert_eq!(project.build_and_run_command("e2e-b"), "TOTAL 9!\n");

    // What machine B prefetched and never used (the cold run's put-only entries) left the
    // manifest at its end: the next fresh machine fetches nothing in vain.
    let wasted = stat("remote.prefetch.wasted");
    assert!(
        wasted > 0,
        "the cold run put nothing a warm build skips: {:?}",
        build.stats
    );
    assert!(
        stat("remote.prefetch.wasted_bytes") > 0,
        "{:?}",
        build.stats
    );
    let next = project.build_on_fresh_machine("machine-c");
    assert!(
        next.stat("remote.prefetch.wasted") * 10 < wasted,
        "{:?}",
        next.stats
    );
    // Machine B's manifest: what it used (at least what it did not waste of its own
    // manifest), and what it put (a few `-x` link steps).
    let kept = stat("remote.prefetch.listed") - wasted;
    let listed = next.stat("remote.prefetch.listed");
    assert!(
        (kept..=stat("hits") + stat("puts")).contains(&listed),
        "{listed} listed, {kept} kept: {:?}",
        next.stats
    );
}

/// A wrapper between the go command and goremotecache (GNU time, a shell script) does not
/// change the automatic key, though its own command line changes from run to run.
#[test]
fn a_wrapper_process_keeps_the_key() {
    use std::os::unix::fs::PermissionsExt;
    let server = S3Server::start();
    let mut project = project("prefetch-wrapper", &server, "wrapped");
    let wrapper = project.root.path().join("wrap.sh");
    std::fs::write(&wrapper, "#!/bin/sh\n\"$@\"\nexit $?\n").unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    project.wrapper = Some(wrapper);
    project.go(&["build", "./..."]);
    let build = project.build_on_fresh_machine("wrapped-b");
    assert!(
        build.stat("remote.prefetch.listed") > 50,
        "{:?}",
        build.stats
    );
    assert!(build.stat("remote.prefetch.used") > 50, "{:?}", build.stats);
}

fn client(endpoint: &str, dir: &std::path::Path, extra: &[&str]) -> Client {
    support::s3_client(dir, with_prefetch(s3_args(endpoint, "joins")), extra)
}

fn close(client: Client, id: i64) -> String {
    client.close(id)
}

/// Gets arrive while prefetch works through the same keys in the other order, over a slow
/// link: whoever starts an entry first fetches it, the other waits for it.
#[test]
fn gets_and_prefetch_fetch_each_entry_once() {
    const N: u32 = 120;
    let server = S3Server::start();
    let body = |n: u32| pseudo_random(u64::from(n), 100 + (n as usize * 997) % 40_000);
    let first = tempfile::tempdir().unwrap();
    let mut writer = client(&server.endpoint, first.path(), &["--prefetch-key", "joins"]);
    for n in 0..N {
        writer.put(i64::from(n), action(n), &body(n));
    }
    for _ in 0..N {
        assert!(writer.read().unwrap().get("Err").is_none());
    }
    let stderr = close(writer, i64::from(N));
    assert!(
        stderr.contains(&format!("manifest of {N} entries written")),
        "{stderr}"
    );

    // Entry by entry: without the pack the writer left (docs/prefetch.md, packs).
    for pack in server.entry_files() {
        if pack.to_string_lossy().contains("/joins/pack/") {
            std::fs::remove_file(pack).unwrap();
        }
    }
    let proxy = Proxy::start(
        &server.endpoint,
        Mode::Delay(std::time::Duration::from_millis(40)),
    );
    server.reset_counts();
    let fresh = tempfile::tempdir().unwrap();
    let mut reader = client(
        &proxy.endpoint,
        fresh.path(),
        &["--prefetch-key", "joins", "--prefetch-concurrency", "4"],
    );
    // One get at a time, as a go command with little to do, from the other end of the
    // manifest: the gets and prefetch meet in the middle.
    for n in (0..N).rev() {
        reader.get(i64::from(n), action(n));
        let answer = reader.read().unwrap();
        assert_eq!(answer["ID"], i64::from(n));
        assert_eq!(
            answer["OutputID"],
            B64.encode(OutputId::of(&body(n)).0),
            "{answer}"
        );
        let served = std::fs::read(answer["DiskPath"].as_str().unwrap()).unwrap();
        assert!(served == body(n), "entry {n} differs");
    }
    let stderr = close(reader, i64::from(N));
    // The manifest, the pack's table (none), each entry once.
    assert_eq!(
        server.count("GET"),
        2 + u64::from(N),
        "an entry was fetched twice: {stderr}"
    );
    assert!(
        stderr.contains("0 wasted (0 B), 0 missing, 0 errors"),
        "{stderr}"
    );
}

#[test]
fn prefetch_off_asks_for_no_manifest_and_writes_none() {
    let server = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let mut writer = client(&server.endpoint, dir.path(), &["--prefetch=off"]);
    // The get first: it waits for the key filter, which the empty bucket's listing gives
    // (a put's upload landing before that listing would leave the run without a filter).
    writer.get(1, action(2));
    writer.read().unwrap();
    writer.put(2, action(1), b"one");
    writer.read().unwrap();
    let stderr = close(writer, 3);
    assert!(!stderr.contains("prefetch:"), "{stderr}");
    // The put's upload, and no GET: the empty bucket's key filter answered the get.
    assert_eq!((server.count("PUT"), server.count("GET")), (1, 0));
    assert_eq!(server.count("FILTER PUT"), 1);
    assert!(manifests(&server, "joins").is_empty());
}

/// The manifest lists what the run used or stored: a get that missed and was never followed
/// by a put (a test result the go command does not cache) would be asked for in vain.
#[test]
fn a_miss_without_a_put_stays_out_of_the_manifest() {
    let server = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let mut writer = client(&server.endpoint, dir.path(), &["--prefetch-key", "misses"]);
    writer.put(1, action(1), b"one");
    writer.read().unwrap();
    writer.get(2, action(2));
    assert!(writer.read().unwrap().get("OutputID").is_none());
    writer.get(3, action(1));
    writer.read().unwrap();
    let stderr = close(writer, 4);
    assert!(stderr.contains("manifest of 1 entries written"), "{stderr}");
}

/// Entries that are damaged or gone when prefetch asks for them: counted, never stored, and
/// the build compiles what it must and is correct.
#[test]
fn damaged_and_missing_entries_are_misses() {
    let server = S3Server::start();
    let mut project = project("prefetch-damaged", &server, "damaged");
    project.go(&["build", "./..."]);
    let files: Vec<_> = server
        .entry_files()
        .into_iter()
        .filter(|f| !f.to_string_lossy().contains("/prefetch/"))
        .collect();
    assert!(files.len() > 50);
    for (n, file) in files.iter().enumerate() {
        let mut bytes = std::fs::read(file).unwrap();
        // Past the 60-byte header: a flipped byte of the body (or its compressed form).
        if n % 2 == 0 || bytes.len() <= 60 {
            std::fs::remove_file(file).unwrap();
        } else {
            let last = bytes.len() - 1;
            bytes[last] ^= 0x01;
            std::fs::write(file, bytes).unwrap();
        }
    }
    let flipped = files.iter().filter(|f| f.exists()).count() as u64;
    project.switch_machine("after-damage");
    let build = project.go(&["build", "./..."]);
    let stat = |name: &str| build.stat(name);
    assert_eq!(stat("remote.prefetch.fetched"), 0, "{:?}", build.stats);
    assert!(stat("remote.prefetch.missing") > 20, "{:?}", build.stats);
    assert!(stat("remote.corrupt") > 20, "{:?}", build.stats);
    // A key found damaged is remembered for the run: the go command's get of it does not
    // fetch it again.
    assert!(
        stat("remote.corrupt") <= flipped,
        "damaged entries were fetched again: {flipped} damaged, {:?}",
        build.stats
    );
    assert_eq!(stat("remote.hits"), 0, "{:?}", build.stats);
    assert_eq!(
        project.build_and_run_command("e2e-after-damage"),
        "TOTAL 9!\n"
    );
}

/// A manifest is data: one that lists every key twice is read once per key, leaves the remote
/// on, and is written again without the copies; the next run prefetches as usual.
#[test]
fn a_manifest_listing_keys_twice_is_read_once_and_repaired() {
    let server = S3Server::start();
    let mut project = project("prefetch-twice", &server, "twice");
    project.go(&["build", "./..."]);
    let files = manifests(&server, "twice");
    assert_eq!(files.len(), 1);
    let listed = support::list_every_key_twice(&files[0]);

    server.reset_counts();
    let build = project.build_on_fresh_machine("twice-b");
    let stat = |name: &str| build.stat(name);
    assert_eq!(stat("remote.prefetch.listed"), listed, "{:?}", build.stats);
    assert_eq!(
        stat("remote.errors") + stat("remote.prefetch.errors"),
        0,
        "{:?}",
        build.stats
    );
    assert_each_entry_fetched_once(&server, &build);
    let keys = support::manifest_keys(&files[0]);
    support::assert_distinct(&keys);
    // Every key once, but those prefetched in vain.
    assert!(keys.len() as u64 + stat("remote.prefetch.wasted") >= listed);

    let again = project.build_on_fresh_machine("twice-c");
    assert!(again.stat("remote.prefetch.used") > 50, "{:?}", again.stats);
}

/// Every entry was fetched once, by prefetch (from the pack or alone) or by a get, plus the
/// manifest and the pack's ranged GETs: the GETs the server saw since its counts were reset.
fn assert_each_entry_fetched_once(server: &S3Server, build: &support::GoRun) {
    let stat = |name: &str| build.stat(name);
    assert_eq!(
        server.count("GET"),
        1 + stat("remote.prefetch.pack.requests") + stat("remote.prefetch.fetched")
            - stat("remote.prefetch.pack.entries")
            + stat("remote.prefetch.missing")
            + stat("remote.hits")
            + stat("remote.misses"),
        "an entry was fetched twice: {:?}",
        build.stats
    );
}
