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
    project.go(&["test", "./..."]);
    project.build_on_fresh_machine("machine-b");
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
    project.go(&["build", "./..."]);
    assert!(s3.count("PUT") > 50, "nothing reached the bucket");
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
        metric(&server, "goremotecache_requests_total{method=\"POST\""),
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
    // Besides the batches: the manifest, and the gets that came before prefetch.
    let gets = metric(
        &server,
        "goremotecache_requests_total{method=\"GET\",status=\"200\"}",
    );
    assert_eq!(
        gets - hits_before,
        1 + build.stat("remote.hits"),
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
