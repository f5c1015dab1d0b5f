//! End to end with the real go command: builds, tests, vet and list through goremotecache on
//! a generated module, each test with caches of its own.

use crate::support;

use std::path::Path;
use std::process::Stdio;

use support::GoProject;

#[test]
fn a_cold_build_stores_and_a_warm_build_compiles_nothing() {
    let project = GoProject::new("build");
    let cold = project.go(&["build", "-x", "./..."]);
    assert!(!cold.compiles().is_empty(), "a cold build must compile");
    assert!(
        cold.stat("puts") > 50,
        "cold build stored little: {:?}",
        cold.stats
    );
    assert_eq!(cold.stat("put_errors"), 0);

    let warm = project.go(&["build", "-x", "./..."]);
    assert_eq!(
        warm.compiles(),
        Vec::<String>::new(),
        "a warm build compiled"
    );
    assert!(warm.stat("hits") > 50, "{:?}", warm.stats);

    // The binary built from cached packages runs.
    assert_eq!(project.build_and_run_command("e2e-bin"), "TOTAL 9!\n");
}

#[test]
fn test_results_are_cached_until_the_test_cache_is_cleaned() {
    let project = GoProject::new("test");
    let first = project.go(&["test", "./..."]);
    assert!(!first.stdout().contains("(cached)"), "{}", first.stdout());
    assert!(
        first.stdout().contains("ok  \texample.com/e2e/report"),
        "{}",
        first.stdout()
    );

    project.assert_tests_cached();

    project.go(&["clean", "-testcache"]);
    let third = project.go(&["test", "-x", "./..."]);
    assert!(
        !third.stdout().contains("(cached)"),
        "tests did not run again:\n{}",
        third.stdout()
    );
    assert_eq!(
        third.compiles(),
        Vec::<String>::new(),
        "packages were compiled again"
    );

    let fourth = project.go(&["test", "./..."]);
    assert!(fourth.stdout().contains("(cached)"), "{}", fourth.stdout());
}

#[test]
fn go_list_export_paths_outlive_the_cache_program() {
    let project = GoProject::new("list");
    project.go(&["build", "./..."]);
    let list = project.go(&[
        "list",
        "-export",
        "-f",
        "{{.ImportPath}} {{.Export}}",
        "./...",
    ]);
    let mut checked = 0;
    for line in list.stdout().lines() {
        let (pkg, path) = line.split_once(' ').unwrap();
        if path.is_empty() {
            continue;
        }
        let path = Path::new(path);
        assert!(path.is_absolute(), "{pkg}: {path:?}");
        assert!(
            path.starts_with(&project.cache_dir),
            "{pkg}: {path:?} is not in the cache"
        );
        assert!(
            path.extension().is_none(),
            "{pkg}: {path:?} has an extension"
        );
        let meta = std::fs::metadata(path).unwrap_or_else(|err| panic!("{pkg}: {path:?}: {err}"));
        assert!(meta.len() > 0);
        checked += 1;
    }
    assert!(checked >= 3, "too few export paths:\n{}", list.stdout());
}

#[test]
fn go_vet_runs_through_the_cache() {
    let project = GoProject::new("vet");
    let first = project.go(&["vet", "-x", "./..."]);
    assert!(first.stat("puts") > 0);
    assert!(!first.tool_runs(&["vet"]).is_empty(), "vet did not run");
    let second = project.go(&["vet", "-x", "./..."]);
    assert_eq!(
        second.tool_runs(&["compile", "asm", "vet"]),
        Vec::<String>::new()
    );
    assert!(second.stat("hits") > 0);
}

#[test]
fn four_builds_at_once_share_one_cache() {
    let project = GoProject::new("parallel");
    let children: Vec<_> = (0..4)
        .map(|_| {
            let (mut command, _) = project.command(&["build", "./..."]);
            command
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "a concurrent build failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let warm = project.go(&["build", "-x", "./..."]);
    assert_eq!(
        warm.compiles(),
        Vec::<String>::new(),
        "a warm build compiled"
    );
}
