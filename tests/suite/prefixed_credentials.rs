//! `GOREMOTECACHE_AWS_*` credentials through the real go command: they win over `AWS_*` both
//! ways (right prefixed keys with wrong `AWS_*` ones work; wrong prefixed keys with right
//! `AWS_*` ones are refused), and a key ID without its secret stops goremotecache at start.

use std::process::Command;

use crate::support;

use support::GoProject;
use support::s3::{ACCESS_KEY, S3Server, SECRET_KEY, credentials};

/// A project whose `AWS_*` variables hold `aws_secret` and whose `GOREMOTECACHE_AWS_*` ones
/// hold `prefixed_secret` (both with the server's key ID).
fn project(server: &S3Server, tag: &str, aws_secret: &str, prefixed_secret: &str) -> GoProject {
    let mut project = GoProject::new(tag);
    project.args = server.args(tag);
    project.env = credentials(aws_secret);
    project.env.extend([
        ("GOREMOTECACHE_AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()),
        (
            "GOREMOTECACHE_AWS_SECRET_ACCESS_KEY".into(),
            prefixed_secret.into(),
        ),
    ]);
    project
}

fn denials(build: &support::GoRun) -> usize {
    let stderr = build.stderr();
    stderr
        .lines()
        .filter(|l| l.contains("remote cache") && l.contains("access denied"))
        .count()
}

#[test]
fn the_prefixed_credentials_are_used_when_both_are_set() {
    let server = S3Server::start();
    let mut project = project(&server, "prefixed-right", "not-the-secret", SECRET_KEY);
    let build = project.go(&["build", "./..."]);
    assert_eq!(denials(&build), 0, "{}", build.stderr());
    assert!(build.stat("remote.uploads") > 50, "{:?}", build.stats);
    assert!(server.count("PUT") > 50);
    project.build_on_fresh_machine("machine-b");
}

#[test]
fn wrong_prefixed_credentials_are_refused_though_aws_ones_are_right() {
    let server = S3Server::start();
    let project = project(&server, "prefixed-wrong", SECRET_KEY, "not-the-secret");
    let build = project.go(&["build", "./..."]);
    assert_eq!(denials(&build), 1, "{}", build.stderr());
    assert_eq!(build.stat("remote.uploads"), 0, "{:?}", build.stats);
    assert_eq!(server.count("PUT"), 0);
    assert!(server.entry_files().is_empty());
}

#[test]
fn a_key_id_without_its_secret_stops_goremotecache_at_start() {
    let server = S3Server::start();
    let project = project(&server, "prefixed-half", SECRET_KEY, SECRET_KEY);
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(support::bin())
        .args(&project.args)
        .args(["--cache-dir", dir.path().to_str().unwrap()])
        .envs(credentials(SECRET_KEY))
        .env("GOREMOTECACHE_AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env_remove("GOREMOTECACHE_AWS_SECRET_ACCESS_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(
            "goremotecache: GOREMOTECACHE_AWS_ACCESS_KEY_ID is set but \
             GOREMOTECACHE_AWS_SECRET_ACCESS_KEY is not: set both"
        ),
        "{stderr}"
    );
}
