//! `gc-remote` with namespaces, end to end on the in-process S3 server: a pull request's
//! recent manifest keeps the entries of main that it lists, `--namespace` collects that
//! namespace only, `--all-namespaces` reports each. The bucket is laid out by [`seed`], which
//! writes the objects straight into the server's files (the layout of docs/format.md) and
//! ages them by their modified times; `clear-remote`'s tests (tests/suite/s3_protocol.rs) use
//! it too.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use goremotecache::cache::manifest::{KeySource, Manifest};
use goremotecache::ids::{Namespace, OutputId};
use goremotecache::store::format::{Header, write_entry};
use goremotecache::store::{entry_key, manifest_key};

use super::{DAY, gc_remote, objects, text};
use crate::support;
use crate::support::s3::S3Server;

/// The folder of `namespace` below `prefix`: `nsgc/ns/main/`, `nsgc/`.
fn dir(prefix: &str, namespace: Option<&str>) -> String {
    match namespace {
        None => format!("{prefix}/"),
        Some(name) => format!("{prefix}/ns/{name}/"),
    }
}

pub(super) fn put(server: &S3Server, key: &str, bytes: &[u8], age: Duration) {
    let path = server.bucket_dir().join(key);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, bytes).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(SystemTime::now() - age)
        .unwrap();
}

/// Entry `n` (of [`support::action`]) in `namespace`, `age` old; its key in the bucket.
fn put_entry(
    server: &S3Server,
    prefix: &str,
    namespace: Option<&str>,
    n: u32,
    age: Duration,
) -> String {
    let body = format!("entry {n}");
    let header = Header {
        flags: 0,
        output_id: OutputId::of(body.as_bytes()),
        size: body.len() as u64,
        time: SystemTime::now() - age,
    };
    let mut bytes = Vec::new();
    write_entry(&header, &mut body.as_bytes(), &mut bytes).unwrap();
    let key = format!(
        "{}{}",
        dir(prefix, namespace),
        entry_key(&support::action(n))
    );
    put(server, &key, &bytes, age);
    key
}

/// The manifest of build `build`, stored in `home`, listing entries `(n, namespace)`, as a
/// build that read those namespaces writes it; its key in the bucket.
fn put_manifest(
    server: &S3Server,
    prefix: &str,
    home: Option<&str>,
    build: &str,
    lists: &[(u32, Option<&str>)],
    age: Duration,
) -> String {
    let parse = |name: &str| Namespace::parse(name).unwrap();
    let mut names = vec![home.map(parse)];
    let mut run = Vec::new();
    for &(n, namespace) in lists {
        let namespace = namespace.map(parse);
        if !names.contains(&namespace) {
            names.push(namespace.clone());
        }
        let index = names.iter().position(|known| *known == namespace);
        run.push((support::action(n), 8, index));
    }
    let source = KeySource::explicit(build);
    let home = home.map(parse);
    let bytes =
        Manifest::merge(None, &run, &names, &Default::default()).encode(&source, home.as_ref());
    let key = format!(
        "{}{}",
        dir(prefix, home.as_ref().map(Namespace::as_str)),
        manifest_key(&source.key())
    );
    put(server, &key, &bytes, age);
    key
}

/// The objects [`seed`] wrote, by name, as keys in the bucket.
pub(crate) struct Seeded(pub BTreeMap<&'static str, String>);

impl Seeded {
    pub(crate) fn keys(&self, names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|name| self.0[name].clone()).collect()
    }
}

/// Under `prefix`, with "old" 10 days and "recent" 1 hour:
/// - un-namespaced: entries `r1` (old), `r2` (recent); `root-manifest` (old, lists r2);
/// - main: entries `m1`, `m2`, `m3` (old), `m4` (recent); `main-manifest` (old, lists m2);
///   `main-notes` (old, neither an entry nor a manifest);
/// - pr-1: entries `p1` (old), `p2` (recent); `pr-manifest` (recent, lists main's m1, its own
///   p2, and m3 in pr-1, where it is not);
/// - `bad`: an old object in a folder of `ns/` whose name is not a namespace name;
/// - `elsewhere`: an old entry of namespace main under another prefix.
pub(crate) fn seed(server: &S3Server, prefix: &str) -> Seeded {
    let old = DAY * 10;
    let recent = Duration::from_secs(3600);
    let mut keys = BTreeMap::new();
    let main = Some("main");
    let pr = Some("pr-1");
    for (name, namespace, n, age) in [
        ("r1", None, 1, old),
        ("r2", None, 2, recent),
        ("m1", main, 11, old),
        ("m2", main, 12, old),
        ("m3", main, 13, old),
        ("m4", main, 14, recent),
        ("p1", pr, 21, old),
        ("p2", pr, 22, recent),
    ] {
        keys.insert(name, put_entry(server, prefix, namespace, n, age));
    }
    for (name, home, build, lists, age) in [
        ("root-manifest", None, "root", vec![(2, None)], old),
        ("main-manifest", main, "main", vec![(12, main)], old),
        (
            "pr-manifest",
            pr,
            "pr",
            vec![(11, main), (22, pr), (13, pr)],
            recent,
        ),
    ] {
        keys.insert(name, put_manifest(server, prefix, home, build, &lists, age));
    }
    for (name, key) in [
        ("main-notes", format!("{prefix}/ns/main/v1/notes.txt")),
        ("bad", format!("{prefix}/ns/.hidden/v1/{}", "0".repeat(64))),
    ] {
        put(server, &key, b"not ours", old);
        keys.insert(name, key);
    }
    keys.insert("elsewhere", put_entry(server, "other", main, 11, old));
    Seeded(keys)
}

#[test]
fn every_namespace_is_reported_and_a_dry_run_deletes_nothing() {
    let server = S3Server::start();
    let seeded = seed(&server, "nsgc");
    let before = objects(&server, "");
    let dry = gc_remote(&server, "nsgc", &["--older-than", "5d", "--all-namespaces"]);
    assert!(dry.status.success(), "{}", text(&dry.stderr));
    let report = text(&dry.stdout);
    for expected in [
        "s3://gocache/nsgc, the un-namespaced area and 2 namespaces: entries and prefetch",
        // r1; root-manifest.
        "\ns3://gocache/nsgc:\n  to delete: 1 entry (",
        // m2, m3 (m1 is listed by pr-1's manifest); main-manifest; main-notes is kept.
        "\ns3://gocache/nsgc (namespace main):\n  to delete: 2 entries (",
        "  kept: 1 other object (",
        // p1.
        "\ns3://gocache/nsgc (namespace pr-1):\n  to delete: 1 entry (",
        "\ntotal:\n  to delete: 4 entries (",
        "skipped: s3://gocache/nsgc/ns/.hidden/, not a namespace",
        "dry run: nothing was deleted",
    ] {
        assert!(report.contains(expected), "{expected:?} in:\n{report}");
    }
    let main = report
        .split("(namespace main):\n")
        .nth(1)
        .unwrap_or_else(|| panic!("{report}"));
    assert!(
        main.contains("  kept: 1 entry (") && main.contains(") older but listed in a recent"),
        "m1: {report}"
    );
    assert_eq!(
        objects(&server, ""),
        before,
        "the dry run deleted something"
    );
    assert!(seeded.0.values().all(|key| before.contains(key)));
}

#[test]
fn a_pull_requests_recent_manifest_keeps_mains_old_entries_it_lists() {
    let server = S3Server::start();
    let seeded = seed(&server, "nsgc");
    let before = objects(&server, "");
    let done = gc_remote(
        &server,
        "nsgc",
        &["--older-than", "5d", "--namespace", "main", "--yes"],
    );
    assert!(done.status.success(), "{}", text(&done.stderr));
    let report = text(&done.stdout);
    assert!(
        report.starts_with("s3://gocache/nsgc (namespace main): entries and prefetch"),
        "{report}"
    );
    assert!(
        report.contains("read: 1 recent manifest (") && report.contains("of other namespaces"),
        "pr-1's manifest is read: {report}"
    );
    assert!(
        report.contains("s3://gocache/nsgc (namespace main): deleted 2 entries and 1 manifest ("),
        "{report}"
    );
    let after = objects(&server, "");
    let gone: BTreeSet<String> = before.difference(&after).cloned().collect();
    assert_eq!(gone, seeded.keys(&["m2", "m3", "main-manifest"]));

    // The un-namespaced area then: r1 and its old manifest; nothing under ns/.
    let done = gc_remote(&server, "nsgc", &["--older-than", "5d", "--yes"]);
    assert!(done.status.success(), "{}", text(&done.stderr));
    let report = text(&done.stdout);
    assert!(
        report.contains("s3://gocache/nsgc: deleted 1 entry and 1 manifest ("),
        "{report}"
    );
    assert!(
        !report.contains("other object"),
        "ns/ is not other: {report}"
    );
    let gone: BTreeSet<String> = after.difference(&objects(&server, "")).cloned().collect();
    assert_eq!(gone, seeded.keys(&["r1", "root-manifest"]));
}

/// The same rule with manifests the real client writes: main's build stores entries 0 to 4;
/// ten days later a pull request's build in `pr-1` reads 0 to 2 from main. Collecting main
/// keeps those three and deletes 3, 4 and main's old manifest.
#[test]
fn the_manifest_a_pull_request_build_writes_keeps_mains_entries() {
    let server = S3Server::start();
    let client = |dir: &std::path::Path, extra: &[&str]| {
        support::s3_client(dir, support::s3::with_prefetch(server.args("real")), extra)
    };
    let main_dir = tempfile::tempdir().unwrap();
    let mut main = client(
        main_dir.path(),
        &["--namespace", "main", "--prefetch-key", "main"],
    );
    for n in 0..5u32 {
        main.put(
            i64::from(n),
            support::action(n),
            format!("entry {n}").as_bytes(),
        );
        assert!(main.read().unwrap().get("Err").is_none());
    }
    let stderr = main.close(100);
    assert!(stderr.contains("manifest of 5 entries written"), "{stderr}");
    let main_entries = objects(&server, "real/ns/main/v1/");
    let main_manifest = objects(&server, "real/ns/main/prefetch/v1/");
    // The pack written with main's manifest goes with it.
    let main_pack = objects(&server, "real/ns/main/pack/v1/");
    assert_eq!((main_entries.len(), main_manifest.len()), (5, 1));
    assert_eq!(main_pack.len(), 1);
    for path in server.entry_files() {
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(SystemTime::now() - DAY * 10)
            .unwrap();
    }

    let pr_dir = tempfile::tempdir().unwrap();
    let mut pr = client(
        pr_dir.path(),
        &[
            "--namespace",
            "pr-1",
            "--read-namespaces",
            "main",
            "--prefetch-key",
            "pr",
        ],
    );
    for n in 0..3u32 {
        pr.get(i64::from(n), support::action(n));
        let answer = pr.read().unwrap();
        assert!(answer["DiskPath"].is_string(), "entry {n}: {answer}");
    }
    let stderr = pr.close(100);
    assert!(stderr.contains("manifest of 3 entries written"), "{stderr}");
    assert_eq!(objects(&server, "real/ns/pr-1/prefetch/v1/").len(), 1);
    assert!(objects(&server, "real/ns/pr-1/v1/").is_empty(), "{stderr}");

    let before = objects(&server, "");
    let done = gc_remote(
        &server,
        "real",
        &["--older-than", "5d", "--namespace", "main", "--yes"],
    );
    assert!(done.status.success(), "{}", text(&done.stderr));
    let report = text(&done.stdout);
    assert!(
        report.contains("kept: 3 entries (") && report.contains("older but listed"),
        "{report}"
    );
    let gone: BTreeSet<String> = before.difference(&objects(&server, "")).cloned().collect();
    let mut expected: BTreeSet<String> = [3u32, 4]
        .iter()
        .map(|&n| format!("real/ns/main/{}", entry_key(&support::action(n))))
        .collect();
    expected.extend(main_manifest);
    expected.extend(main_pack);
    assert_eq!(gone, expected, "{report}");
}
