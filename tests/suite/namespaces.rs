//! Namespaces, end to end on S3: a pull request reads main's cache and writes only into its
//! own namespace; the own namespace wins over the read ones; a miss asks them all at once;
//! a pull request's first run prefetches what main's last run used.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::support;

use support::s3::{Fault, S3Server, SECRET_KEY, credentials, with_prefetch};
use support::{GoProject, action, s3_client};

/// The objects stored under `dir` (a namespace's directory in the bucket), by path, with
/// their size and modification time.
fn objects(dir: &Path) -> BTreeMap<PathBuf, (u64, SystemTime)> {
    fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, (u64, SystemTime)>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                walk(&path, out);
            } else if !path.to_string_lossy().contains(".s3s") {
                out.insert(path, (meta.len(), meta.modified().unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, &mut out);
    out
}

fn namespace_args(server: &S3Server, own: &str, reads: &str) -> Vec<String> {
    let mut args = with_prefetch(server.args("nsci"));
    args.extend(["--namespace".to_string(), own.to_string()]);
    if !reads.is_empty() {
        args.extend(["--read-namespaces".to_string(), reads.to_string()]);
    }
    args
}

/// The per-namespace figures of a run: name -> (hits, prefetched).
fn by_namespace(run: &support::GoRun) -> BTreeMap<String, (u64, u64)> {
    let stats = run.stats.as_ref().expect("stats");
    (stats["remote"]["namespaces"].as_array())
        .expect("per-namespace figures")
        .iter()
        .map(|n| {
            let count = |field: &str| n[field].as_u64().unwrap();
            let name = n["name"].as_str().unwrap().to_string();
            (name, (count("hits"), count("prefetched")))
        })
        .collect()
}

#[test]
fn a_pull_request_reads_mains_cache_and_writes_only_its_own() {
    let server = S3Server::start();
    let main_dir = server.bucket_dir().join("nsci/ns/main");
    let pr_dir = server.bucket_dir().join("nsci/ns/pr-1");
    let mut project = GoProject::new("namespaces-pr");
    project.env = credentials(SECRET_KEY);

    // main's build and tests, in main.
    project.args = namespace_args(&server, "main", "");
    let main_build = project.go(&["build", "./..."]);
    assert!(
        main_build.stat("remote.uploads") > 50,
        "{:?}",
        main_build.stats
    );
    project.go(&["test", "./..."]);
    let mains = objects(&main_dir);
    assert!(mains.len() > 50, "main's entries are under ns/main/");
    assert!(
        objects(&server.bucket_dir().join("nsci/v1")).is_empty(),
        "nothing un-namespaced"
    );

    // A pull request's first run, on a fresh machine: main's results, prefetched from
    // main's manifest of the same build key.
    project.args = namespace_args(&server, "pr-1", "main");
    let first = project.build_on_fresh_machine("pr-machine-a");
    assert!(
        first.stat("remote.prefetch.used") > 0,
        "main's manifest was not used: {:?}",
        first.stats
    );
    let counts = by_namespace(&first);
    assert_eq!(counts["pr-1"], (0, 0), "{counts:?}");
    assert!(counts["main"].0 + counts["main"].1 > 50, "{counts:?}");
    project.assert_tests_cached();

    // The pull request changes one package: compiled, and uploaded into pr-1 only.
    let text = project.module.join("text/text.go");
    let mut source = std::fs::read_to_string(&text).unwrap();
    source.push_str("\nfunc Whisper(s string) string { return strings.ToLower(s) }\n");
    std::fs::write(&text, source).unwrap();
    let changed = project.go(&["build", "-x", "./..."]);
    assert!(
        changed
            .compiles()
            .iter()
            .any(|l| l.contains("example.com/e2e/text")),
        "the changed package was not compiled: {:?}",
        changed.compiles()
    );
    assert!(changed.stat("remote.uploads") > 0, "{:?}", changed.stats);
    project.go(&["test", "./..."]);
    assert_eq!(objects(&main_dir), mains, "main's namespace was written");
    let prs = objects(&pr_dir);
    assert!(
        prs.keys().any(|p| p.starts_with(pr_dir.join("v1"))),
        "no entry in pr-1: {prs:?}"
    );
    assert!(
        prs.keys().any(|p| p.starts_with(pr_dir.join("prefetch"))),
        "the pull request wrote no manifest of its own"
    );

    // A second fresh machine of the same pull request: nothing to compile; the changed
    // package comes from pr-1, the rest from main.
    let second = project.build_on_fresh_machine("pr-machine-b");
    let counts = by_namespace(&second);
    assert!(counts["pr-1"].0 + counts["pr-1"].1 > 0, "{counts:?}");
    assert!(counts["main"].0 + counts["main"].1 > 50, "{counts:?}");
    // Its own manifest lists main's entries too: those come from main's pack (a few ranged
    // reads), not one GET each.
    assert!(
        second.stat("remote.prefetch.pack.entries") > 50,
        "main's pack was not read: {:?}",
        second.stats
    );
    project.assert_tests_cached();
    assert_eq!(objects(&main_dir), mains, "main's namespace was written");

    // main itself does not see the pull request's change.
    project.args = namespace_args(&server, "main", "");
    project.switch_machine("main-machine-b");
    let main_again = project.go(&["build", "-x", "./..."]);
    assert!(
        (main_again.compiles().iter()).any(|l| l.contains("example.com/e2e/text")),
        "main used the pull request's package: {:?}",
        main_again.compiles()
    );
}

#[test]
fn the_own_namespace_wins_over_the_read_ones() {
    let server = S3Server::start();
    let root = tempfile::tempdir().unwrap();
    let store = |own: &str, reads: &str| {
        let mut args = server.args("prec");
        args.extend(["--namespace".into(), own.into()]);
        if !reads.is_empty() {
            args.extend(["--read-namespaces".into(), reads.into()]);
        }
        args
    };
    // The same action ID, with different outputs, in main and in pr-1.
    for (own, body) in [("main", &b"main's output"[..]), ("pr-1", b"pr-1's output")] {
        let mut client = s3_client(&root.path().join(own), store(own, ""), &[]);
        client.put(1, action(7), body);
        assert_eq!(client.read().unwrap()["ID"], 1);
        client.close(2);
    }
    let got = |machine: &str, own: &str, reads: &str| -> Vec<u8> {
        let mut client = s3_client(&root.path().join(machine), store(own, reads), &[]);
        client.get(1, action(7));
        let answer = client.read().unwrap();
        let path = answer["DiskPath"]
            .as_str()
            .unwrap_or_else(|| panic!("{answer}"));
        let body = std::fs::read(path).unwrap();
        client.close(2);
        body
    };
    assert_eq!(got("a", "pr-1", "main"), b"pr-1's output");
    assert_eq!(got("b", "pr-2", "main"), b"main's output");
    assert_eq!(got("c", "pr-2", "pr-1,main"), b"pr-1's output");
    assert_eq!(got("d", "pr-2", "main,pr-1"), b"main's output");
}

#[test]
fn a_miss_asks_every_namespace_at_once() {
    let server = S3Server::start();
    let root = tempfile::tempdir().unwrap();
    let mut args = server.args("wide");
    args.extend(["--namespace", "pr-1", "--read-namespaces", "main,release"].map(String::from));
    // The bucket is empty: without this, its key filters answer the miss with no request.
    args.push("--instant-misses=off".into());
    // A far-away store: every object GET is answered 40 ms late.
    server.set_fault(Fault::DelayMs(40));
    let mut client = s3_client(root.path(), args, &[]);
    server.reset_counts();
    client.get(1, action(9));
    let answer = client.read().unwrap();
    assert_eq!(answer["Miss"], true, "{answer}");
    assert_eq!(server.count("GET"), 3, "one GET per namespace");
    assert_eq!(
        server.most_gets_at_once(),
        3,
        "the namespaces were asked one after another"
    );
    let stderr = client.close(2);
    assert!(
        stderr.contains("remote: 0 hits, 1 misses, 0 errors"),
        "{stderr}"
    );
}
