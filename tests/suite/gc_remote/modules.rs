//! `gc-remote` and `clear-remote` and the module proxy's files (`<prefix>/mod/`), end to end
//! on the in-process S3 server: without `--modules` neither touches them, whatever the
//! namespace options (`mod/` is not under `ns/`, so it is never taken for a namespace); with
//! it, `clear-remote` deletes the module store's entries and lists and `gc-remote` deletes
//! the old ones only, each reported on a line of its own. The bucket is [`seed`]'s, plus the
//! module files of [`seed_modules`], written straight into the server's files where an
//! `ObjectStore` of `S3Config::for_modules` puts them.

use std::collections::BTreeMap;
use std::process::Output;
use std::time::Duration;

use goremotecache::cache::manifest::KeySource;
use goremotecache::store::{entry_key, manifest_key};

use super::namespaces::{put, seed};
use super::{DAY, gc_remote, objects, text};
use crate::support;
use crate::support::s3::{S3Server, SECRET_KEY, credentials, with_prefetch};

/// `goremotecache clear-remote` on `prefix` of the test bucket, with `extra` options.
fn clear_remote(server: &S3Server, prefix: &str, extra: &[&str]) -> Output {
    let mut command = std::process::Command::new(support::bin());
    command
        .arg("clear-remote")
        .args(with_prefetch(server.args(prefix)))
        .args(extra);
    for (key, value) in credentials(SECRET_KEY) {
        command.env(key, value);
    }
    command.output().unwrap()
}

/// Under `<prefix>/mod/`, with "old" 10 days and "recent" 1 hour:
/// - `zip-old`, `zip-recent`: immutable answers, at `mod/v1/<64 hex>` (the proxy's key is a
///   sha256 of the request's storage key; any 64 hex digits have the shape);
/// - `list-old`, `list-recent`: answers that change, at `mod/prefetch/v1/<64 hex>`;
/// - `odd-entry` (`mod/v1/notes.txt`) and `odd-list` (`mod/prefetch/v1/not-a-key`): old,
///   in the module store's folders but of neither shape;
/// - `outside` (`mod/example.com/x/@v/list`): old, outside the module store's folders.
fn seed_modules(server: &S3Server, prefix: &str) -> BTreeMap<&'static str, String> {
    let old = DAY * 10;
    let recent = Duration::from_secs(3600);
    let dir = format!("{prefix}/mod/");
    let list = |name: &str| format!("{dir}{}", manifest_key(&KeySource::explicit(name).key()));
    let mut keys = BTreeMap::new();
    for (name, key, age) in [
        (
            "zip-old",
            format!("{dir}{}", entry_key(&support::action(31))),
            old,
        ),
        (
            "zip-recent",
            format!("{dir}{}", entry_key(&support::action(32))),
            recent,
        ),
        ("list-old", list("example.com/x/@v/list"), old),
        ("list-recent", list("example.com/y/@latest"), recent),
        ("odd-entry", format!("{dir}v1/notes.txt"), old),
        ("odd-list", format!("{dir}prefetch/v1/not-a-key"), old),
        ("outside", format!("{dir}example.com/x/@v/list"), old),
    ] {
        put(server, &key, format!("module file {name}").as_bytes(), age);
        keys.insert(name, key);
    }
    keys
}

#[test]
fn without_modules_neither_command_touches_the_module_files() {
    let server = S3Server::start();
    seed(&server, "nsgc");
    let modules = seed_modules(&server, "nsgc");
    let module_files = objects(&server, "nsgc/mod/");
    assert_eq!(module_files.len(), modules.len());

    let collected = gc_remote(
        &server,
        "nsgc",
        &["--older-than", "5d", "--all-namespaces", "--yes"],
    );
    assert!(collected.status.success(), "{}", text(&collected.stderr));
    let report = text(&collected.stdout);
    // main and pr-1, never mod (nor .hidden, skipped as before).
    assert!(
        report.contains("the un-namespaced area and 2 namespaces:"),
        "{report}"
    );
    assert!(!report.contains("/mod"), "{report}");
    assert!(!report.contains("namespace mod"), "{report}");
    assert_eq!(objects(&server, "nsgc/mod/"), module_files);

    let cleared = clear_remote(&server, "nsgc", &["--all-namespaces", "--yes"]);
    assert!(cleared.status.success(), "{}", text(&cleared.stderr));
    let stdout = text(&cleared.stdout);
    assert!(
        stdout.contains(" entries, un-namespaced and in 2 namespaces\n"),
        "{stdout}"
    );
    assert!(!stdout.contains("mod"), "{stdout}");
    assert_eq!(objects(&server, "nsgc/mod/"), module_files);
}

#[test]
fn gc_remote_with_modules_deletes_the_old_module_files_only() {
    let server = S3Server::start();
    let seeded = seed(&server, "nsgc");
    let modules = seed_modules(&server, "nsgc");
    let before = objects(&server, "");

    let dry = gc_remote(&server, "nsgc", &["--older-than", "5d", "--modules"]);
    assert!(dry.status.success(), "{}", text(&dry.stderr));
    let report = text(&dry.stdout);
    for expected in [
        "s3://gocache/nsgc, the un-namespaced area, 0 namespaces and the module files: \
         entries, prefetch manifests and module files last modified before",
        // r1; root-manifest: as without --modules.
        "\ns3://gocache/nsgc:\n  to delete: 1 entry (",
        "\ns3://gocache/nsgc/mod (module files):\n  to delete: 1 immutable module file (",
        "), 1 list (",
        "  kept: 1 immutable module file (",
        // odd-entry and odd-list; outside is not even listed.
        "  kept: 2 other objects (",
        "\ntotal:\n  to delete: 2 entries (",
        "dry run: nothing was deleted",
    ] {
        assert!(report.contains(expected), "{expected:?} in:\n{report}");
    }
    assert_eq!(
        objects(&server, ""),
        before,
        "the dry run deleted something"
    );

    let done = gc_remote(
        &server,
        "nsgc",
        &["--older-than", "5d", "--modules", "--yes"],
    );
    assert!(done.status.success(), "{}", text(&done.stderr));
    let summary = text(&done.stdout);
    for expected in [
        "\ns3://gocache/nsgc: deleted 1 entry and 1 manifest (",
        "\ns3://gocache/nsgc/mod (module files): deleted 1 immutable module file and 1 list (",
        "\ntotal: deleted 2 entries and 2 manifests (",
    ] {
        assert!(summary.contains(expected), "{expected:?} in:\n{summary}");
    }
    let after = objects(&server, "");
    let gone: Vec<&String> = before.difference(&after).collect();
    let mut expected = vec![
        &seeded.0["r1"],
        &seeded.0["root-manifest"],
        &modules["zip-old"],
        &modules["list-old"],
    ];
    expected.sort();
    assert_eq!(gone, expected);
}

#[test]
fn clear_remote_with_modules_deletes_the_module_store_too() {
    let server = S3Server::start();
    let seeded = seed(&server, "nsgc");
    let modules = seed_modules(&server, "nsgc");
    let before = objects(&server, "");

    let refused = clear_remote(&server, "nsgc", &["--modules"]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = text(&refused.stderr);
    assert!(
        stderr.contains(
            "(nothing in its namespaces), and every module file under s3://gocache/nsgc/mod; \
             run again with --yes"
        ),
        "{stderr}"
    );
    assert_eq!(objects(&server, ""), before);

    let done = clear_remote(&server, "nsgc", &["--modules", "--yes"]);
    assert!(done.status.success(), "{}", text(&done.stderr));
    // Everything in the module store's v1/ and prefetch/, whatever its shape or age.
    assert_eq!(
        text(&done.stdout),
        "s3://gocache/nsgc: deleted 3 entries\n\
         s3://gocache/nsgc/mod (module files): deleted 6 entries\n"
    );
    let after = objects(&server, "");
    let gone: Vec<&String> = before.difference(&after).collect();
    let mut expected = seeded
        .0
        .iter()
        .filter(|(name, _)| ["r1", "r2", "root-manifest"].contains(name))
        .chain(modules.iter().filter(|(name, _)| **name != "outside"))
        .map(|(_, key)| key)
        .collect::<Vec<_>>();
    expected.sort();
    assert_eq!(gone, expected);
    assert!(after.contains(&modules["outside"]));

    // With every namespace, the total counts the module files too (none are left): main's 6
    // objects and pr-1's 3.
    let all = clear_remote(&server, "nsgc", &["--all-namespaces", "--modules", "--yes"]);
    assert!(all.status.success(), "{}", text(&all.stderr));
    let stdout = text(&all.stdout);
    assert!(
        stdout.contains("s3://gocache/nsgc/mod (module files): deleted 0 entries\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "total: deleted 9 entries, un-namespaced and in 2 namespaces and the module files\n"
        ),
        "{stdout}"
    );
}
