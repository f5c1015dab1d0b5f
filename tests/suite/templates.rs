//! Placeholders in `--s3-prefix` through the real go command: the entries land under the
//! expanded prefix (the go command's target and version, a variable), a fresh machine with
//! the same template hits them, and an unset variable stops goremotecache at start (exit 2)
//! with a message naming the option.

use std::process::Command;

use crate::support;

use support::GoProject;
use support::s3::{S3Server, SECRET_KEY, credentials};

/// What the go command reports for `names`, one value each.
fn go_env(names: &[&str]) -> Vec<String> {
    let out = Command::new(support::go())
        .arg("env")
        .args(names)
        .env("GOTOOLCHAIN", "local")
        .output()
        .expect("running go env");
    assert!(out.status.success(), "go env failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

const TEMPLATE: &str = "tmpl/{GOOS}-{GOARCH}/{GOVERSION}/{env.GOREMOTECACHE_TEST_JOB}";

fn project(server: &S3Server, tag: &str, job: &str) -> GoProject {
    let mut project = GoProject::new(tag);
    project.args = server.args(TEMPLATE);
    project.env = credentials(SECRET_KEY);
    project
        .env
        .push(("GOREMOTECACHE_TEST_JOB".into(), job.into()));
    project
}

#[test]
fn a_templated_prefix_puts_the_entries_under_the_expanded_prefix() {
    let server = S3Server::start();
    let [goos, goarch, goversion] = &go_env(&["GOOS", "GOARCH", "GOVERSION"])[..] else {
        panic!("go env")
    };
    let expanded = format!("tmpl/{goos}-{goarch}/{goversion}/job-7");
    let mut project = project(&server, "templates", "job-7");
    let build = project.go(&["build", "./..."]);
    assert!(build.stat("remote.uploads") > 50, "{:?}", build.stats);
    // Every object (the entries, and the key filter the run keeps) under the expanded prefix.
    let entries = server.entry_files();
    let under = server.bucket_dir().join(&expanded);
    assert!(
        !entries.is_empty() && entries.iter().all(|file| file.starts_with(&under)),
        "entries outside {}: {entries:?}",
        under.display()
    );

    // A fresh machine naming the expanded prefix itself gets every result.
    project.args = server.args(&expanded);
    project.build_on_fresh_machine("plain-prefix");

    // The same template with another value of the variable is another cache.
    project.switch_machine("other-job");
    project.args = server.args(TEMPLATE);
    project
        .env
        .retain(|(name, _)| name != "GOREMOTECACHE_TEST_JOB");
    project
        .env
        .push(("GOREMOTECACHE_TEST_JOB".into(), "job-8".into()));
    let build = project.go(&["build", "./..."]);
    assert_eq!(build.stat("remote.hits"), 0, "{:?}", build.stats);
    assert!(
        server
            .bucket_dir()
            .join(expanded.replace("job-7", "job-8"))
            .is_dir()
    );
}

#[test]
fn an_unset_variable_stops_goremotecache_at_start() {
    let server = S3Server::start();
    let project = project(&server, "templates-unset", "unused");
    let want = "--s3-prefix \"tmpl/{GOOS}-{GOARCH}/{GOVERSION}/{env.GOREMOTECACHE_TEST_JOB}\": \
                {env.GOREMOTECACHE_TEST_JOB}: the variable GOREMOTECACHE_TEST_JOB is unset or empty";

    // Through the go command: the build fails and shows goremotecache's message.
    let (mut go, _) = project.command(&["build", "./..."]);
    go.env_remove("GOREMOTECACHE_TEST_JOB");
    let out = go.output().expect("running go");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "go built without its cache");
    assert!(stderr.contains(want), "{stderr}");

    // The program itself, as the go command starts it: exit status 2, nothing on stdout.
    let out = Command::new(support::bin())
        .args(&project.args)
        .args(["--cache-dir", project.cache_dir.to_str().unwrap()])
        .env_remove("GOREMOTECACHE_TEST_JOB")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!("goremotecache: {want}")),
        "{stderr}"
    );
    assert_eq!(server.count("GET") + server.count("PUT"), 0);
}
