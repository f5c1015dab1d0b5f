//! End to end with the real go command on the GCS and Azure Blob backends, against the real
//! emulators (fake-gcs-server and Azurite, `support::emulators`): a cold build on machine A
//! uploads, and machine B, with a fresh cache directory, gets every result from the store
//! and compiles nothing. Also: a wrong Azure key is one clear warning and a build that still
//! works, and `gc-remote` collects an Azure container.

use crate::support;

use std::time::Duration;

use support::GoProject;
use support::emulators::{AZURE_ACCOUNT, AZURE_CONTAINER, AZURE_KEY, Emulator, GCS_BUCKET};

fn gcs_args(emulator: &Emulator, prefix: &str) -> Vec<String> {
    [
        "--backend",
        "gcs",
        "--gcs-bucket",
        GCS_BUCKET,
        "--gcs-prefix",
        prefix,
        "--gcs-endpoint",
        &emulator.endpoint,
        "--gcs-anonymous",
    ]
    .map(String::from)
    .to_vec()
}

/// The Azurite container, the key passed as Azure's own variable (as CI jobs do).
fn azblob_project(tag: &str, emulator: &Emulator, key: &str) -> GoProject {
    let mut project = GoProject::new(tag);
    project.args = [
        "--backend",
        "azblob",
        "--azblob-container",
        AZURE_CONTAINER,
        "--azblob-prefix",
        "ci",
        "--azblob-account",
        AZURE_ACCOUNT,
        "--azblob-endpoint",
        &emulator.endpoint,
    ]
    .map(String::from)
    .to_vec();
    project.env = vec![("AZURE_STORAGE_KEY".into(), key.into())];
    project
}

/// Machine A builds and tests cold, uploading everything (as the S3 tests' warm bucket);
/// machine B builds from the store alone.
fn cold_then_fresh_machine(project: &mut GoProject) {
    support::warm_the_bucket(project);

    // Asserts that nothing is compiled and that more than 50 answers came from the store.
    let fresh = project.build_on_fresh_machine("machine-b");
    assert_eq!(fresh.stat("remote.corrupt"), 0, "{:?}", fresh.stats);
    assert_eq!(fresh.stat("remote.errors"), 0, "{:?}", fresh.stats);
    assert_eq!(
        fresh.stat("remote.uploads"),
        0,
        "downloaded entries were uploaded again"
    );
}

/// `goremotecache gc-remote` with `args` on the project's store and in its environment;
/// requires success and returns what it printed.
fn gc_remote(project: &GoProject, args: &[&str]) -> String {
    let (code, stdout, stderr) = support::outcome(
        std::process::Command::new(support::bin())
            .arg("gc-remote")
            .args(args)
            .args(&project.args)
            .envs(project.env.iter().map(|(k, v)| (k, v))),
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    stdout
}

#[test]
fn gcs_a_fresh_machine_builds_from_the_bucket() {
    let emulator = Emulator::fake_gcs();
    let mut project = GoProject::new("gcs-e2e");
    project.args = gcs_args(&emulator, "ci");
    cold_then_fresh_machine(&mut project);
    assert_eq!(project.build_and_run_command("gcs-e2e"), "TOTAL 9!\n");

    // gc-remote lists the bucket and reads its manifests (its report; its deletes are
    // tested on Azurite: fake-gcs-server's batch answers are not GCS's).
    let stdout = gc_remote(&project, &["--older-than", "1d"]);
    assert!(stdout.contains("gs://gocache/ci"), "{stdout}");
    assert!(stdout.contains("to delete: 0 entries"), "{stdout}");
    assert!(stdout.contains("dry run"), "{stdout}");
}

/// A fresh machine builds from the container; then `gc-remote` lists and deletes on Azure
/// Blob as on S3 (blob batch deletes): everything older than a second goes, and the next
/// fresh machine finds nothing.
#[test]
fn azblob_a_fresh_machine_builds_from_the_container_until_gc_remote_collects_it() {
    let emulator = Emulator::azurite();
    let mut project = azblob_project("azblob-e2e", &emulator, AZURE_KEY);
    cold_then_fresh_machine(&mut project);
    assert_eq!(project.build_and_run_command("azblob-e2e"), "TOTAL 9!\n");

    // Everything was uploaded before the first build ended: one second on, all of it is
    // older than --older-than 1s.
    std::thread::sleep(Duration::from_millis(1500));
    let stdout = gc_remote(&project, &["--older-than", "1s", "--yes"]);
    assert!(stdout.contains("azblob://gocache/ci"), "{stdout}");
    assert!(stdout.contains("deleted "), "{stdout}");

    project.switch_machine("after-gc");
    let after = project.go(&["build", "-x", "./..."]);
    assert_eq!(after.stat("remote.hits"), 0, "{:?}", after.stats);
    assert!(!after.compiles().is_empty());
}

/// A wrong account key: Azurite refuses the signature, the store is switched off after one
/// clear warning, and the build compiles and works.
#[test]
fn azblob_a_wrong_key_is_one_warning_and_a_working_build() {
    let emulator = Emulator::azurite();
    // Valid base64, not the account's key.
    let wrong = "bm90LXRoZS1rZXktbm90LXRoZS1rZXktbm90LXRoZS1rZXk=";
    let project = azblob_project("azblob-wrong-key", &emulator, wrong);
    let build = project.go(&["build", "-x", "./..."]);
    assert!(build.output.status.success(), "{}", build.stderr());
    assert!(!build.compiles().is_empty());
    let warnings: Vec<String> = build
        .stderr()
        .lines()
        .filter(|l| l.contains("remote cache"))
        .map(str::to_owned)
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("azblob://gocache/ci") && warnings[0].contains("access denied"),
        "{warnings:?}"
    );
    assert_eq!(build.stat("remote.hits"), 0, "{:?}", build.stats);
    assert_eq!(build.stat("remote.uploads"), 0, "{:?}", build.stats);
}
