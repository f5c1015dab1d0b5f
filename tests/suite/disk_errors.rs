//! A cache directory on a full or read-only file system: puts fail with a clear message, gets
//! miss, nothing half-written is left, and the process keeps serving.
//!
//! Each test mounts a small tmpfs in a private mount namespace (`unshare -m`, which needs
//! root or user namespaces, as CI and the development machines have), so nothing leaks
//! into the machine's mounts even if the test dies.

use crate::support;

use std::process::Command;

use support::{Client, action, bin, pseudo_random};

/// Runs the binary on a cache in a fresh tmpfs of `size`, after `setup` (shell commands run
/// with `$D` the mount point).
fn on_tmpfs(size: &str, setup: &str) -> (Client, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        "set -e; D={dir}; mount -t tmpfs -o size={size} tmpfs \"$D\"; {setup}; \
         exec {bin} --cache-dir \"$D/cache\" --lock-dir \"$D/locks\" --stats",
        dir = dir.path().display(),
        bin = bin(),
    );
    let mut command = Command::new("unshare");
    command.args(["--mount", "--propagation", "private", "sh", "-c", &script]);
    (Client::spawn(command), dir)
}

#[test]
fn a_full_disk_fails_the_put_clearly_and_keeps_serving() {
    let (mut client, _dir) = on_tmpfs("1m", "true");
    let big = pseudo_random(1, 3 * 1024 * 1024);
    client.put(1, action(1), &big);
    let answer = client.read().unwrap();
    let err = answer["Err"].as_str().unwrap_or_else(|| panic!("{answer}"));
    assert!(err.contains("disk is full"), "{err}");

    // The failed body's space is given back: a small put fits, and the big one is a miss.
    let small = pseudo_random(2, 10_000);
    client.put(2, action(2), &small);
    let stored = client.read().unwrap();
    assert!(stored["DiskPath"].is_string(), "{stored}");
    client.get(3, action(1));
    assert_eq!(client.read().unwrap()["Miss"], true);
    client.get(4, action(2));
    assert_eq!(client.read().unwrap()["Size"], 10_000);
    client.close_request(5);
    client.read().unwrap();
    let (status, stderr) = client.finish();
    assert!(status.success());
    assert!(stderr.contains("disk is full"), "{stderr}");
    assert!(stderr.contains("1 errors"), "{stderr}");
}

#[test]
fn a_read_only_cache_fails_puts_clearly_and_misses_gets() {
    // The cache exists with an entry, then the file system becomes read-only.
    let setup = format!(
        "printf '{put}' | {bin} --cache-dir \"$D/cache\" --lock-dir \"$D/locks\" >/dev/null; \
         mount -o remount,ro \"$D\"",
        put = String::from_utf8(support::put_bytes(
            1,
            action(1),
            goremotecache::ids::OutputId::of(b"kept"),
            b"kept"
        ))
        .unwrap()
        .replace('\n', "\\n"),
        bin = bin(),
    );
    let (mut client, _dir) = on_tmpfs("1m", &setup);
    client.get(1, action(1));
    let kept = client.read().unwrap();
    assert_eq!(kept["Size"], 4, "{kept}");
    client.put(2, action(2), b"new output");
    let answer = client.read().unwrap();
    let err = answer["Err"].as_str().unwrap_or_else(|| panic!("{answer}"));
    assert!(err.contains("read-only"), "{err}");
    client.get(3, action(2));
    assert_eq!(client.read().unwrap()["Miss"], true);
    client.close_request(4);
    client.read().unwrap();
    let (status, stderr) = client.finish();
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("read-only"), "{stderr}");
}

#[test]
fn a_cache_directory_that_cannot_be_created_is_said_at_start() {
    let (mut client, _dir) = on_tmpfs("1m", "mount -o remount,ro \"$D\"");
    client.get(1, action(1));
    assert_eq!(client.read().unwrap()["Miss"], true);
    client.put(2, action(1), b"x");
    assert!(client.read().unwrap()["Err"].is_string());
    client.close_request(3);
    client.read().unwrap();
    let (status, stderr) = client.finish();
    assert!(status.success());
    assert!(
        stderr.contains("cannot store output under")
            || stderr.contains("cannot create the cache directory"),
        "{stderr}"
    );
    assert!(stderr.contains("read-only"), "{stderr}");
}
