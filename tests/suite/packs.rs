//! Packs, end to end on the in-process S3 server: the run that writes a build's manifest
//! writes its pack, a fresh machine then builds from it in a few ranged GETs instead of one
//! GET per entry, a damaged entry in a pack is fetched on its own (never stored damaged),
//! and `clear-remote` and `gc-remote` delete packs.

use std::path::PathBuf;

use crate::support;

use goremotecache::store::pack::Toc;
use support::s3::{S3Server, SECRET_KEY, credentials, with_prefetch};
use support::{GoProject, outcome};

/// A project on the shared module with prefetch on, its local cache warm and the bucket
/// under `prefix` holding its entries (no manifest, no pack yet).
fn warm(server: &S3Server, prefix: &str) -> GoProject {
    support::warm_bucket(server, prefix);
    let mut project = GoProject::on_shared_module();
    project.args = with_prefetch(server.args(prefix));
    project.env = credentials(SECRET_KEY);
    support::warm_local_cache(&project);
    project
}

/// The packs stored under `prefix`.
fn packs(server: &S3Server, prefix: &str) -> Vec<PathBuf> {
    let dir = server.bucket_dir().join(prefix).join("pack").join("v1");
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| !p.to_string_lossy().contains(".s3s"))
                .collect()
        })
        .unwrap_or_default()
}

/// A warm run writes the manifest and the pack; the next run finds the pack fits and
/// writes nothing; a fresh machine compiles nothing and asks the server under 50 GETs.
#[test]
fn a_fresh_machine_builds_from_the_pack_in_few_requests() {
    let server = S3Server::start();
    let mut project = warm(&server, "packs");
    let first = project.go(&["build", "./..."]);
    assert!(
        first.stat("remote.prefetch.manifest_written") > 50,
        "{:?}",
        first.stats
    );
    let written = first.stat("remote.prefetch.pack.written");
    assert!(written > 50, "{:?}", first.stats);
    assert!(first.stat("remote.prefetch.pack.bytes_written") > 0);
    assert_eq!(packs(&server, "packs").len(), 1);
    let toc = Toc::parse(&std::fs::read(&packs(&server, "packs")[0]).unwrap()).unwrap();
    assert_eq!(toc.entries.len() as u64, written);

    // Same build, same manifest: the pack fits, nothing is written again.
    let again = project.go(&["build", "./..."]);
    assert_eq!(
        again.stat("remote.prefetch.pack.written"),
        0,
        "{:?}",
        again.stats
    );

    server.reset_counts();
    let fresh = project.build_on_fresh_machine("pack-fresh");
    let gets = server.count("GET");
    assert!(gets < 50, "{gets} GETs: {:?}", fresh.stats);
    let stat = |name: &str| fresh.stat(name);
    assert!(
        stat("remote.prefetch.pack.entries") > 50,
        "{:?}",
        fresh.stats
    );
    assert!(
        stat("remote.prefetch.pack.requests") < 10,
        "{:?}",
        fresh.stats
    );
    assert_eq!(stat("remote.prefetch.pack.damaged"), 0);
    assert_eq!(stat("remote.corrupt") + stat("remote.errors"), 0);
    assert_eq!(stat("remote.prefetch.errors"), 0, "{:?}", fresh.stats);
    assert_eq!(
        stat("remote.uploads"),
        0,
        "prefetched entries were uploaded"
    );
    assert_eq!(project.build_and_run_command("e2e-pack"), "TOTAL 9!\n");

    // clear-remote deletes the pack with the rest.
    let (code, stdout, stderr) = outcome(
        std::process::Command::new(support::bin())
            .arg("clear-remote")
            .arg("--yes")
            .args(&project.args)
            .envs(project.env.iter().map(|(k, v)| (k, v))),
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(packs(&server, "packs").is_empty(), "{stdout}");
}

/// One entry of the pack has a byte flipped: that entry is fetched on its own, the rest
/// from the pack; the build compiles nothing and runs right; nothing damaged is stored.
#[test]
fn a_damaged_pack_entry_is_fetched_on_its_own() {
    let server = S3Server::start();
    let mut project = warm(&server, "damaged");
    project.go(&["build", "./..."]);
    let pack = packs(&server, "damaged").pop().expect("a pack");
    let mut bytes = std::fs::read(&pack).unwrap();
    let toc = Toc::parse(&bytes).unwrap();
    let victim = toc.entries[toc.entries.len() / 2];
    let middle = (victim.offset + 60 + (victim.len - 60) / 2) as usize;
    bytes[middle] ^= 0x20;
    std::fs::write(&pack, &bytes).unwrap();

    let fresh = project.build_on_fresh_machine("pack-damaged");
    let stat = |name: &str| fresh.stat(name);
    assert_eq!(stat("remote.prefetch.pack.damaged"), 1, "{:?}", fresh.stats);
    assert!(
        stat("remote.prefetch.pack.entries") > 50,
        "{:?}",
        fresh.stats
    );
    assert_eq!(stat("remote.corrupt"), 0, "the entry itself is sound");
    assert_eq!(project.build_and_run_command("e2e-damaged"), "TOTAL 9!\n");
    project.assert_tests_cached();
}

/// `gc-remote` deletes the pack of a manifest it deletes, and reports it.
#[test]
fn gc_remote_deletes_the_packs_of_old_manifests() {
    let server = S3Server::start();
    let project = warm(&server, "gcpacks");
    project.go(&["build", "./..."]);
    let pack = packs(&server, "gcpacks").pop().expect("a pack");
    let manifest_dir = server.bucket_dir().join("gcpacks/prefetch/v1");
    let manifest = std::fs::read_dir(&manifest_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| !p.to_string_lossy().contains(".s3s"))
        .expect("a manifest");
    // Two hours old, with everything else: a gc of 1h deletes them all.
    for file in server.entry_files() {
        support::make_old(&file);
    }
    let run = |extra: &[&str]| {
        outcome(
            std::process::Command::new(support::bin())
                .args(["gc-remote", "--older-than", "1h"])
                .args(extra)
                .args(&project.args)
                .envs(project.env.iter().map(|(k, v)| (k, v))),
        )
    };
    let (code, stdout, stderr) = run(&[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("1 pack"), "{stdout}");
    assert!(pack.exists(), "a dry run deletes nothing");
    let (code, stdout, stderr) = run(&["--yes"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(!manifest.exists(), "{stdout}");
    assert!(!pack.exists(), "{stdout}");
}
