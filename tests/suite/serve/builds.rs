//! Builds through the server with the real go command: on disk storage and on S3 storage,
//! with prefetch and its manifests.

use crate::support;

use support::GoProject;
use support::s3::{S3Server, SECRET_KEY, credentials, with_prefetch};

use super::{RO, RW, Server, metric, through};

#[test]
fn a_fresh_machine_builds_from_a_server_on_disk() {
    let (server, _storage) = Server::on_disk(&[]);
    let mut project = GoProject::new("serve-disk");
    through(&mut project, &server, RW);
    let cold = project.go(&["build", "./..."]);
    assert!(cold.stat("remote.uploads") > 50, "{:?}", cold.stats);
    assert_eq!(cold.stat("remote.upload_errors"), 0, "{:?}", cold.stats);
    // The server's key filter of an empty directory: every miss answered without a request.
    assert!(cold.stat("remote.instant_misses") > 50, "{:?}", cold.stats);
    assert_eq!(cold.stat("remote.misses"), 0, "{:?}", cold.stats);
    let gets = |status: &str| {
        let line = format!("goremotecache_requests_total{{method=\"GET\",status=\"{status}\"}}");
        metric(&server, &line)
    };
    // The filter, and the prefetch manifest that is not there yet.
    assert_eq!((gets("200"), gets("404")), (1, 1), "entries were asked for");
    project.go(&["test", "./..."]);
    let warm = project.build_on_fresh_machine("machine-b");
    // The filter it fetched holds everything machine A stored.
    assert!(warm.stat("remote.filter_keys") >= cold.stat("remote.uploads"));
    assert_eq!(warm.stat("remote.misses"), 0, "{:?}", warm.stats);
    assert_eq!(
        warm.stat("remote.instant_misses_wrong"),
        0,
        "{:?}",
        warm.stats
    );
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
    let cold = project.go(&["build", "./..."]);
    assert!(s3.count("PUT") > 50, "nothing reached the bucket");
    // No key filter on S3 storage (other replicas write there too): every miss asks.
    assert_eq!(cold.stat("remote.instant_misses"), 0, "{:?}", cold.stats);
    assert!(cold.stat("remote.misses") > 50, "{:?}", cold.stats);
    project.build_on_fresh_machine("machine-b");
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
        metric(
            &server,
            "goremotecache_requests_total{method=\"POST\",status=\"200\"}"
        ),
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
    // Besides the batches: the key filter, the manifest, and the gets that came before
    // prefetch.
    let gets = metric(
        &server,
        "goremotecache_requests_total{method=\"GET\",status=\"200\"}",
    );
    assert_eq!(
        gets - hits_before,
        2 + build.stat("remote.hits"),
        "{:?}",
        build.stats
    );
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

/// The token file of docs/ci.md: main's token writes main; the pull requests' token writes
/// `pr-*` and reads main.
const MAIN_TOKEN: &str = "main-token-0123456789abcdef";
const PRS_TOKEN: &str = "prs-token-0123456789abcdef";

#[test]
fn a_pull_request_builds_from_mains_namespace_and_cannot_write_it() {
    let storage = tempfile::tempdir().unwrap();
    let tokens = format!(
        "rw {MAIN_TOKEN} namespaces=main,release-*\nrw {PRS_TOKEN} namespaces=pr-*\nro {PRS_TOKEN} namespaces=main\n"
    );
    let server = Server::with_tokens(
        &tokens,
        &["--storage-dir", storage.path().to_str().unwrap()],
        &[],
    );
    let mains = || support::count_files(&storage.path().join("ns/main"));
    let mut project = GoProject::new("serve-namespaces");
    let job = |project: &mut GoProject, token: &str, namespace: &[&str]| {
        through(project, &server, token);
        project.args.extend(namespace.iter().map(|a| a.to_string()));
    };
    job(&mut project, MAIN_TOKEN, &["--namespace", "main"]);
    let cold = project.go(&["build", "./..."]);
    assert!(cold.stat("remote.uploads") > 50, "{:?}", cold.stats);
    assert_eq!(cold.stat("remote.upload_errors"), 0, "{:?}", cold.stats);
    let main_files = mains();
    assert!(main_files > 50);

    // A pull request on a fresh machine: main's results through the server.
    job(
        &mut project,
        PRS_TOKEN,
        &["--namespace", "pr-7", "--read-namespaces", "main"],
    );
    let pr = project.build_on_fresh_machine("pr-machine");
    assert!(
        pr.stat("remote.prefetch.used") > 0,
        "main's manifest was not used: {:?}",
        pr.stats
    );

    // The pull request's job claims to be main: reads work, every upload is refused.
    job(&mut project, PRS_TOKEN, &["--namespace", "main"]);
    project.switch_machine("pr-as-main");
    let text = project.module.join("text/text.go");
    let mut source = std::fs::read_to_string(&text).unwrap();
    source.push_str("\nfunc Poison() {}\n");
    std::fs::write(&text, source).unwrap();
    let poisoned = project.go(&["build", "./..."]);
    assert!(poisoned.remote_answers() > 0, "{:?}", poisoned.stats);
    assert_eq!(poisoned.stat("remote.uploads"), 0, "{:?}", poisoned.stats);
    assert_eq!(
        mains(),
        main_files,
        "the pull request's token wrote into main"
    );
    assert!(server.stop().success());
}
