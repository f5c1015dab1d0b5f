//! Placeholders in `--s3-prefix`, `--namespace` and `--read-namespaces`: expanded before the
//! value is checked, in every command that takes the option. (The expander itself is tested
//! in `template/tests.rs`; `HOME` and `PATH` stand here for a set variable.)

use super::*;

fn run(args: &[&str]) -> Result<Run, ConfigError> {
    let mut argv = vec!["goremotecache"];
    argv.extend_from_slice(args);
    Run::from_cli(Cli::try_parse_from(argv).unwrap())
}

fn go_env(name: &str) -> String {
    let out = std::process::Command::new("go")
        .args(["env", name])
        .output()
        .expect("go must be on PATH for the tests");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn the_prefix_and_the_namespaces_are_expanded_then_checked() {
    let Ok(Run::Cache(config)) = run(&[
        "--s3-bucket",
        "b",
        "--s3-prefix",
        "/ci/{GOOS}-{GOARCH}/",
        "--namespace",
        "{GOVERSION}",
        "--read-namespaces",
        "main,{GOOS}",
    ]) else {
        panic!("refused")
    };
    let remote = config.remote.unwrap();
    let StoreConfig::S3(s3) = &remote.store else {
        panic!("{remote:?}")
    };
    assert_eq!(
        s3.prefix,
        format!("ci/{}-{}", go_env("GOOS"), go_env("GOARCH"))
    );
    let plan = remote.namespaces;
    assert_eq!(plan.own.unwrap().as_str(), go_env("GOVERSION"));
    let reads: Vec<_> = plan.reads.iter().map(|n| n.as_str().to_owned()).collect();
    assert_eq!(reads, ["main".to_owned(), go_env("GOOS")]);
}

#[test]
fn a_slash_from_a_variable_is_a_level_of_the_prefix_and_refused_in_a_namespace() {
    let home = std::env::var("HOME").expect("HOME is set");
    let Ok(Run::Serve(serve)) = run(&["serve", "--s3-bucket", "b", "--s3-prefix", "c{env.HOME}"])
    else {
        panic!("serve refused its prefix")
    };
    assert!(
        format!("{serve:?}").contains(&format!("prefix: \"c{home}\"")),
        "{serve:?}"
    );
    let err = run(&["--s3-bucket", "b", "--namespace", "x{env.PATH}"]).unwrap_err();
    assert!(
        matches!(
            err,
            ConfigError::Namespace {
                flag: "namespace",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn every_command_names_the_option_in_its_error() {
    for (args, flag) in [
        (
            &["--s3-bucket", "b", "--s3-prefix", "{GOHOSTOS}"][..],
            "s3-prefix",
        ),
        (
            &["serve", "--s3-bucket", "b", "--s3-prefix", "{GOOS"],
            "s3-prefix",
        ),
        (
            &[
                "--s3-bucket",
                "b",
                "--namespace",
                "pr-{env.GOREMOTECACHE_TEST_UNSET}",
            ],
            "namespace",
        ),
        (
            &["--s3-bucket", "b", "--read-namespaces", "main,{x}"],
            "read-namespaces",
        ),
        (
            &[
                "clear-remote",
                "--s3-bucket",
                "b",
                "--namespace",
                "{GOARCH}}",
            ],
            "namespace",
        ),
        (
            &[
                "gc-remote",
                "--older-than",
                "30d",
                "--s3-bucket",
                "b",
                "--s3-prefix",
                "}",
            ],
            "s3-prefix",
        ),
    ] {
        match run(args) {
            Err(ConfigError::Template { flag: got, .. }) => assert_eq!(got, flag, "{args:?}"),
            other => panic!("{args:?}: {other:?}"),
        }
    }
}
