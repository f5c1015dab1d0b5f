//! The placeholders and their errors, from a fixed environment.

use std::cell::Cell;
use std::collections::HashMap;

use super::*;

/// A fixed environment; `go env` answers from `go` and counts its runs.
struct Fake {
    vars: HashMap<&'static str, &'static str>,
    go: Result<HashMap<&'static str, &'static str>, String>,
    go_runs: Cell<u32>,
}

impl Fake {
    fn new(vars: &[(&'static str, &'static str)]) -> Self {
        Self {
            vars: vars.iter().copied().collect(),
            go: Ok([
                ("GOOS", "plan9"),
                ("GOARCH", "arm"),
                ("GOVERSION", "go1.99.1"),
            ]
            .into_iter()
            .collect()),
            go_runs: Cell::new(0),
        }
    }
}

impl Source for Fake {
    fn var(&self, name: &str) -> Option<String> {
        self.vars
            .get(name)
            .filter(|v| !v.is_empty())
            .map(|v| v.to_string())
    }

    fn go_env(&self, name: &str) -> Result<String, String> {
        self.go_runs.set(self.go_runs.get() + 1);
        match &self.go {
            Ok(values) => Ok(values[name].to_string()),
            Err(err) => Err(err.clone()),
        }
    }
}

fn expand(value: &str, source: &Fake) -> Result<String, String> {
    expand_from("s3-prefix", value, source).map_err(|err| err.to_string())
}

#[test]
fn every_placeholder_takes_the_environment_first() {
    let env = Fake::new(&[
        ("GOOS", "linux"),
        ("GOARCH", "amd64"),
        ("GOVERSION", "go1.26.8"),
        ("BRANCH", "main"),
    ]);
    assert_eq!(
        expand("ci/{GOOS}-{GOARCH}/{GOVERSION}/{env.BRANCH}", &env).unwrap(),
        "ci/linux-amd64/go1.26.8/main"
    );
    assert_eq!(
        env.go_runs.get(),
        0,
        "go env ran though the environment had all"
    );
}

#[test]
fn go_placeholders_missing_from_the_environment_come_from_go_env() {
    let env = Fake::new(&[("GOOS", "darwin")]);
    assert_eq!(
        expand("{GOOS}.{GOARCH}.{GOVERSION}", &env).unwrap(),
        "darwin.arm.go1.99.1"
    );
    assert_eq!(env.go_runs.get(), 2);
}

#[test]
fn text_without_braces_is_kept_and_nothing_is_looked_up() {
    let mut env = Fake::new(&[]);
    env.go = Err("no go here".into());
    for value in ["", "ci/go", "a.b-c_d/e", "/x/"] {
        assert_eq!(expand(value, &env).unwrap(), value);
    }
    assert_eq!(env.go_runs.get(), 0);
}

#[test]
fn a_placeholder_can_repeat_and_stand_anywhere() {
    let env = Fake::new(&[("GOOS", "linux"), ("A", "x/y")]);
    assert_eq!(expand("{GOOS}{GOOS}", &env).unwrap(), "linuxlinux");
    // A `/` in a value stays: the option's own check decides (see the namespace tests).
    assert_eq!(expand("{env.A}", &env).unwrap(), "x/y");
}

#[test]
fn errors_name_the_option_the_value_and_the_fix() {
    let env = Fake::new(&[("EMPTY", "")]);
    let cases = [
        (
            "ci/{GOHOSTOS}",
            "unknown placeholder {GOHOSTOS}: use {GOOS}",
        ),
        ("ci/{goos}", "unknown placeholder {goos}"),
        ("ci/{}", "unknown placeholder {}"),
        (
            "ci/{env.UNSET_FOR_SURE}",
            "the variable UNSET_FOR_SURE is unset or empty",
        ),
        ("ci/{env.EMPTY}", "the variable EMPTY is unset or empty"),
        (
            "ci/{env.}",
            "{env.}: an environment variable's name has only",
        ),
        (
            "ci/{env.A-B}",
            "{env.A-B}: an environment variable's name has only",
        ),
        ("ci/{GOOS", "a '{' is not closed"),
        ("ci/{GOOS{GOARCH}", "a '{' is not closed"),
        ("ci/GOOS}", "a '}' without its '{'"),
    ];
    for (value, want) in cases {
        let err = expand(value, &env).unwrap_err();
        assert!(
            err.starts_with(&format!("--s3-prefix {value:?}: ")),
            "{value}: {err}"
        );
        assert!(err.contains(want), "{value}: {err}");
    }
}

#[test]
fn a_failed_go_env_is_an_error_that_says_what_to_set() {
    let mut env = Fake::new(&[]);
    env.go = Err("cannot run go: not found".into());
    let err = expand("{GOARCH}", &env).unwrap_err();
    assert!(
        err.contains("GOARCH is not in the environment")
            && err.contains("cannot run go: not found")
            && err.contains("set GOARCH or put go on PATH"),
        "{err}"
    );
}

#[test]
fn the_process_environment_gives_what_the_go_command_on_path_reports() {
    // Under `cargo test` GOOS may or may not be set; either way the value is the target.
    let want = std::process::Command::new("go")
        .args(["env", "GOOS", "GOARCH", "GOVERSION"])
        .output()
        .expect("go must be on PATH for the tests");
    let want = String::from_utf8(want.stdout).unwrap().replace('\n', " ");
    let got = super::expand("namespace", "{GOOS} {GOARCH} {GOVERSION} ").unwrap();
    assert_eq!(got, want);
}
