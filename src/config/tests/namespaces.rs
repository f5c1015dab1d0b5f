//! `--namespace`, `--read-namespaces` and `--all-namespaces`.

use super::*;

fn plan(args: &[&str]) -> Result<NamespacePlan, ConfigError> {
    let mut argv = vec!["goremotecache", "--s3-bucket", "b"];
    argv.extend_from_slice(args);
    let cli = Cli::try_parse_from(argv).unwrap();
    Config::from_args(&cli.main).map(|config| config.remote.unwrap().namespaces)
}

fn name(name: &str) -> Namespace {
    Namespace::parse(name).unwrap()
}

#[test]
fn namespaces_are_checked_and_the_reads_keep_their_order_once_each() {
    assert_eq!(plan(&[]).unwrap(), NamespacePlan::default());
    let got = plan(&[
        "--namespace",
        "pr-7",
        "--read-namespaces",
        "main, release-1.2,,main,pr-7",
    ])
    .unwrap();
    assert_eq!(got.own, Some(name("pr-7")));
    assert_eq!(got.reads, vec![name("main"), name("release-1.2")]);
    // Empty values (a CI template's unset variable) are none.
    let got = plan(&["--namespace", "", "--read-namespaces", ""]).unwrap();
    assert_eq!(got, NamespacePlan::default());
    // Reading without a namespace of its own: writes stay un-namespaced.
    let got = plan(&["--read-namespaces", "main"]).unwrap();
    assert_eq!((got.own, got.reads), (None, vec![name("main")]));
    for bad in [
        &["--namespace", "feature/x"][..],
        &["--namespace", ".."],
        &["--read-namespaces", "main,a b"],
    ] {
        let err = plan(bad).unwrap_err();
        assert!(
            matches!(err, ConfigError::Namespace { .. }),
            "{bad:?}: {err}"
        );
    }
    let err = plan(&["--namespace", "feature/x"]).unwrap_err().to_string();
    assert!(
        err.starts_with("--namespace: namespace \"feature/x\""),
        "{err}"
    );
    assert!(err.contains("feature-x"), "says how to map it: {err}");
}

#[test]
fn maintenance_commands_take_one_namespace_or_all() {
    let selection = |args: &[&str]| {
        let mut argv = vec!["goremotecache", "clear-remote", "--s3-bucket", "b"];
        argv.extend_from_slice(args);
        match Run::from_cli(Cli::try_parse_from(argv).unwrap()) {
            Ok(Run::ClearRemote(clear)) => Ok(clear.namespaces),
            Ok(_) => unreachable!(),
            Err(err) => Err(err),
        }
    };
    assert_eq!(selection(&[]).unwrap(), Selection::Unnamespaced);
    assert_eq!(
        selection(&["--namespace", "main"]).unwrap(),
        Selection::One(name("main"))
    );
    assert_eq!(selection(&["--all-namespaces"]).unwrap(), Selection::All);
    assert!(matches!(
        selection(&["--all-namespaces", "--namespace", "main"]),
        Err(ConfigError::NamespaceAndAll)
    ));
    assert!(matches!(
        selection(&["--namespace", "a/b"]),
        Err(ConfigError::Namespace { .. })
    ));
    let argv = [
        "goremotecache",
        "gc-remote",
        "--s3-bucket",
        "b",
        "--older-than",
        "14d",
        "--all-namespaces",
    ];
    match Run::from_cli(Cli::try_parse_from(argv).unwrap()).unwrap() {
        Run::GcRemote(gc) => assert_eq!(gc.namespaces, Selection::All),
        _ => unreachable!(),
    }
}

#[test]
fn modules_are_added_by_their_own_flag_only() {
    let run = |args: &[&str]| Run::from_cli(Cli::try_parse_from(args).unwrap()).unwrap();
    let bucket = ["--s3-bucket", "b"];
    for (extra, modules) in [(&[][..], false), (&["--modules"][..], true)] {
        let clear = [&["goremotecache", "clear-remote"][..], &bucket, extra].concat();
        match run(&clear) {
            Run::ClearRemote(clear) => assert_eq!(clear.modules, modules),
            _ => unreachable!(),
        }
        let gc = [
            &["goremotecache", "gc-remote", "--older-than", "14d"][..],
            &bucket,
            extra,
        ];
        match run(&gc.concat()) {
            Run::GcRemote(gc) => {
                assert_eq!(gc.modules, modules);
                assert_eq!(
                    gc.namespaces,
                    Selection::Unnamespaced,
                    "adds, selects no namespace"
                );
            }
            _ => unreachable!(),
        }
    }
    // Words, whatever the wrapping.
    let help = help(&["gc-remote", "--help"])
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    for expected in [
        "--modules",
        "docs/goproxy.md",
        "upload time",
        "never a wrong answer",
    ] {
        assert!(help.contains(expected), "{expected}:\n{help}");
    }
}
