//! Instant misses, end to end on S3: a cold build on an empty bucket asks the store for no
//! entry; the runs keep the bucket's key filter, so a fresh machine still finds everything;
//! a key that the filter lacks costs a compile, counted, never a wrong result; `gc-remote`
//! writes the filter of what it keeps and `clear-remote` deletes it.

use crate::support;

use std::path::PathBuf;

use goremotecache::store::filter::KeyFilter;
use support::GoProject;
use support::s3::{S3Server, SECRET_KEY, credentials};

fn project(tag: &str, server: &S3Server, prefix: &str) -> GoProject {
    let mut project = GoProject::new(tag);
    project.args = server.args(prefix);
    project.env = credentials(SECRET_KEY);
    project
}

fn filter_path(server: &S3Server, prefix: &str) -> PathBuf {
    server.bucket_dir().join(prefix).join("filter/v1/keys")
}

fn stored_filter(server: &S3Server, prefix: &str) -> KeyFilter {
    let bytes = std::fs::read(filter_path(server, prefix)).expect("a key filter in the bucket");
    KeyFilter::decode(&bytes).unwrap()
}

#[test]
fn a_cold_build_asks_an_empty_bucket_for_nothing_and_a_fresh_machine_finds_everything() {
    let server = S3Server::start();
    let mut project = project("instant-cold", &server, "im");
    let cold = project.go(&["build", "./..."]);
    let stat = |name: &str| cold.stat(name);
    assert!(stat("remote.instant_misses") > 50, "{:?}", cold.stats);
    assert_eq!(
        stat("remote.misses") + stat("remote.hits"),
        0,
        "{:?}",
        cold.stats
    );
    // The filter (none yet) and the listing that finds the bucket empty, and the same two at
    // close before the filter is written: no GET of an entry.
    assert_eq!(server.count("GET"), 0);
    assert_eq!(server.count("FILTER GET"), 2);
    assert_eq!(server.count("LIST"), 2);
    assert_eq!(server.count("FILTER PUT"), 1);
    let uploads = stat("remote.uploads");
    assert!(uploads > 50, "{:?}", cold.stats);
    assert_eq!(stat("remote.filter_written"), uploads, "{:?}", cold.stats);
    let filter = stored_filter(&server, "im");
    assert_eq!(filter.len() as u64, uploads);

    // A fresh machine: every key machine A stored is in the filter, so each get of one is
    // asked, and hits (`build_on_fresh_machine` checks that nothing is compiled); the few
    // that no machine stored (`-x` changes some link steps) are instant misses.
    let warm = project.build_on_fresh_machine("machine-b");
    assert_eq!(warm.stat("remote.misses"), 0, "{:?}", warm.stats);
    assert_eq!(
        warm.stat("remote.instant_misses_wrong"),
        0,
        "{:?}",
        warm.stats
    );
    assert_eq!(warm.stat("remote.filter_keys"), uploads, "{:?}", warm.stats);

    // An edit: machine C compiles the changed packages (instant misses: right) and adds them.
    let source = project.module.join("mathx/mathx.go");
    let mut code = std::fs::read_to_string(&source).unwrap();
    code.push_str("\n// an edit\n");
    std::fs::write(&source, code).unwrap();
    project.switch_machine("machine-c");
    let edited = project.go(&["build", "./..."]);
    assert!(
        edited.stat("remote.instant_misses") > 0,
        "{:?}",
        edited.stats
    );
    assert!(edited.stat("remote.hits") > 50, "{:?}", edited.stats);
    assert_eq!(
        edited.stat("remote.instant_misses_wrong"),
        0,
        "{:?}",
        edited.stats
    );
    assert!(stored_filter(&server, "im").covers(&filter));
    assert!(stored_filter(&server, "im").len() > filter.len());

    // The filter loses machine C's keys (a writer that did not keep it): machine D compiles
    // them again, says so, and the result is right.
    std::fs::write(filter_path(&server, "im"), filter.encode()).unwrap();
    project.switch_machine("machine-d");
    let (wrong, output) = project.build_and_run("e2e-d");
    assert_eq!(output, "TOTAL 9!\n");
    assert!(
        wrong.stat("remote.instant_misses_wrong") > 0,
        "{:?}",
        wrong.stats
    );
    assert!(
        wrong.stat("remote.instant_misses_wrong") <= wrong.stat("remote.uploads_existing"),
        "{:?}",
        wrong.stats
    );
    // Its keys are back in the filter: the next machine asks for them, and compiles nothing.
    let healed = project.build_on_fresh_machine("machine-e");
    assert_eq!(
        healed.stat("remote.instant_misses_wrong"),
        0,
        "{:?}",
        healed.stats
    );
}

#[test]
fn instant_misses_off_asks_for_every_miss_and_still_keeps_the_filter() {
    let server = S3Server::start();
    let mut project = project("instant-off", &server, "off");
    project.args.push("--instant-misses=off".into());
    let cold = project.go(&["build", "./..."]);
    assert_eq!(cold.stat("remote.instant_misses"), 0, "{:?}", cold.stats);
    let misses = cold.stat("remote.misses");
    assert!(misses > 50, "{:?}", cold.stats);
    assert_eq!(server.count("GET"), misses);
    assert_eq!(
        stored_filter(&server, "off").len() as u64,
        cold.stat("remote.uploads")
    );
}

#[test]
fn gc_remote_writes_the_filter_of_what_it_keeps_and_clear_remote_deletes_it() {
    let server = S3Server::start();
    support::warm_bucket(&server, "gcf");
    // The template bucket was filled by runs that kept a filter; this one starts without.
    let _ = std::fs::remove_file(filter_path(&server, "gcf"));
    let entries = (server.entry_files().iter())
        .filter(|path| path.to_string_lossy().contains("/gcf/v1/"))
        .count();
    assert!(entries > 50);
    let run = |command: &str, extra: &[&str]| {
        let mut cmd = std::process::Command::new(support::bin());
        cmd.arg(command)
            .args(support::s3::with_prefetch(server.args("gcf")))
            .args(extra);
        cmd.envs(credentials(SECRET_KEY));
        let output = cmd.output().unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let dry = run("gc-remote", &["--older-than", "30d"]);
    assert!(
        !filter_path(&server, "gcf").exists(),
        "a dry run wrote: {dry}"
    );
    let swept = run("gc-remote", &["--older-than", "30d", "--yes"]);
    assert!(
        swept.contains(&format!("key filters written: 1 ({entries} keys kept)")),
        "{swept}"
    );
    assert_eq!(stored_filter(&server, "gcf").len(), entries);
    run("clear-remote", &["--yes"]);
    assert!(!filter_path(&server, "gcf").exists());
}
