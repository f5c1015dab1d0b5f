//! The command line's tests: each command takes its own options, and they validate as before.

use std::path::{Path, PathBuf};

use crate::local::lock::LockType;
use clap::CommandFactory;
use clap::Parser;
use clap::error::ErrorKind;

use super::values::{parse_bound, parse_size, parse_switch};
use super::*;

#[test]
fn a_gcs_bucket_or_an_azure_container_turns_its_backend_on() {
    let cli = Cli::try_parse_from([
        "goremotecache",
        "--gcs-bucket",
        "g",
        "--gcs-prefix",
        "/ci/",
        "--gcs-endpoint",
        "http://127.0.0.1:4443/",
        "--gcs-anonymous",
    ])
    .unwrap();
    let remote = Config::from_args(&cli.main).unwrap().remote.unwrap();
    let StoreConfig::Gcs(gcs) = &remote.store else {
        panic!("{remote:?}")
    };
    assert_eq!(gcs.bucket, "g");
    assert_eq!(gcs.prefix, "ci");
    assert_eq!(gcs.endpoint.as_deref(), Some("http://127.0.0.1:4443"));
    assert!(gcs.anonymous);

    let cli = Cli::try_parse_from([
        "goremotecache",
        "--azblob-container",
        "c",
        "--azblob-account",
        "acct",
        "--azblob-prefix",
        "p",
    ])
    .unwrap();
    let remote = Config::from_args(&cli.main).unwrap().remote.unwrap();
    let StoreConfig::Azblob(az) = &remote.store else {
        panic!("{remote:?}")
    };
    assert_eq!(az.container, "c");
    assert_eq!(az.account.as_deref(), Some("acct"));
    assert_eq!(az.prefix, "p");
    assert_eq!(az.endpoint, None);

    // S3 first when both are set; --backend says which.
    let cli =
        Cli::try_parse_from(["goremotecache", "--s3-bucket", "b", "--gcs-bucket", "g"]).unwrap();
    let remote = Config::from_args(&cli.main).unwrap().remote.unwrap();
    assert!(matches!(remote.store, StoreConfig::S3(_)), "{remote:?}");
    let cli = Cli::try_parse_from(["goremotecache", "--backend", "gcs"]).unwrap();
    assert!(matches!(
        Config::from_args(&cli.main),
        Err(ConfigError::NoGcsBucket)
    ));
    let cli = Cli::try_parse_from([
        "goremotecache",
        "--gcs-bucket",
        "g",
        "--gcs-endpoint",
        "127.0.0.1:4443",
    ])
    .unwrap();
    let err = Config::from_args(&cli.main).unwrap_err().to_string();
    assert!(err.contains("--gcs-endpoint"), "{err}");
}

#[test]
fn a_bucket_turns_the_s3_backend_on() {
    let cli = Cli::try_parse_from([
        "goremotecache",
        "--s3-bucket",
        "b",
        "--s3-prefix",
        "/ci/go/",
    ])
    .unwrap();
    let remote = Config::from_args(&cli.main).unwrap().remote.unwrap();
    let StoreConfig::S3(s3) = &remote.store else {
        panic!("{remote:?}")
    };
    assert_eq!(s3.bucket, "b");
    assert_eq!(s3.prefix, "ci/go");
    assert_eq!(remote.mode, RemoteMode::ReadWrite);
    assert_eq!(remote.upload_wait, Duration::from_secs(30));
    let cli =
        Cli::try_parse_from(["goremotecache", "--s3-bucket", "b", "--backend", "disk"]).unwrap();
    assert_eq!(Config::from_args(&cli.main).unwrap().remote, None);
    let cli = Cli::try_parse_from(["goremotecache", "--backend", "s3"]).unwrap();
    assert!(matches!(
        Config::from_args(&cli.main),
        Err(ConfigError::NoBucket)
    ));
    let cli = Cli::try_parse_from([
        "goremotecache",
        "--s3-bucket",
        "b",
        "--s3-endpoint",
        "localhost:9000",
    ])
    .unwrap();
    assert!(matches!(
        Config::from_args(&cli.main),
        Err(ConfigError::BadEndpoint(_))
    ));
}

#[test]
fn a_url_turns_the_http_backend_on() {
    let cli = Cli::try_parse_from([
        "goremotecache",
        "--http-url",
        "http://cache:8321/",
        "--http-token",
        "t",
    ])
    .unwrap();
    let remote = Config::from_args(&cli.main).unwrap().remote.unwrap();
    let StoreConfig::Http(http) = &remote.store else {
        panic!("{remote:?}")
    };
    assert_eq!(http.url, "http://cache:8321/");
    assert_eq!(http.token.as_deref(), Some("t"));
    let cli = Cli::try_parse_from(["goremotecache", "--backend", "http"]).unwrap();
    assert!(matches!(
        Config::from_args(&cli.main),
        Err(ConfigError::NoUrl)
    ));
    let cli = Cli::try_parse_from(["goremotecache", "--http-url", "cache:8321"]).unwrap();
    assert!(matches!(
        Config::from_args(&cli.main),
        Err(ConfigError::BadUrl(_))
    ));
}

#[test]
fn serve_time_bounds_must_be_longer_than_zero() {
    assert_eq!(parse_bound("500ms"), Ok(Duration::from_millis(500)));
    assert!(parse_bound("0s").is_err());
    assert!(parse_bound("soon").is_err());
    let err = Cli::try_parse_from(["goremotecache", "serve", "--write-timeout", "0s"]).unwrap_err();
    assert_eq!(err.exit_code(), 2);
}

#[test]
fn sizes_read_binary_units() {
    assert_eq!(parse_size("1048576"), Ok(1 << 20));
    assert_eq!(parse_size("256MiB"), Ok(256 << 20));
    assert_eq!(parse_size("1GiB"), Ok(1 << 30));
    assert!(parse_size("12 parsecs").is_err());
    assert!(parse_size("MiB").is_err());
}

#[test]
fn the_command_line_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn switches_read_the_usual_spellings() {
    for (text, value) in [
        ("1", true),
        ("Yes", true),
        ("on", true),
        ("", false),
        ("off", false),
        ("0", false),
    ] {
        assert_eq!(parse_switch(text), Ok(value), "{text:?}");
    }
    assert!(parse_switch("maybe").is_err());
}

#[test]
fn relative_directories_become_absolute() {
    let cli = Cli::try_parse_from(["goremotecache", "--cache-dir", "rel/cache"]).unwrap();
    let config = Config::from_args(&cli.main).unwrap();
    assert!(config.dirs.cache_dir.is_absolute());
    assert!(config.dirs.cache_dir.ends_with("rel/cache"));
    assert!(config.dirs.lock_dir.ends_with("locks"));
    assert_eq!(
        config.dirs.lock_dir.parent(),
        config.dirs.default_base.as_ref().map(|b| b.dir.as_path())
    );
    assert_eq!(config.dirs.lock_type, LockType::Fslock);
}

#[test]
fn options_may_follow_a_subcommand() {
    let cli = Cli::try_parse_from(["goremotecache", "clear-local", "--cache-dir", "/x/y"]).unwrap();
    assert!(matches!(cli.command, Some(Command::ClearLocal(_))));
    let Some(Command::ClearLocal(clear)) = cli.command else {
        unreachable!()
    };
    assert_eq!(clear.local.cache_dir.as_deref(), Some(Path::new("/x/y")));
}

#[test]
fn empty_paths_are_refused() {
    assert!(Cli::try_parse_from(["goremotecache", "--cache-dir", ""]).is_err());
    let mut args = Cli::try_parse_from(["goremotecache"]).unwrap().main;
    args.local.lock_dir = Some(PathBuf::new());
    assert!(matches!(
        Config::from_args(&args),
        Err(ConfigError::Empty { flag: "lock-dir" })
    ));
}

#[test]
fn non_utf8_paths_are_refused() {
    use std::os::unix::ffi::OsStrExt;
    let bad = std::ffi::OsStr::from_bytes(b"/tmp/\xff");
    let cli = Cli::try_parse_from([
        std::ffi::OsStr::new("goremotecache"),
        "--cache-dir".as_ref(),
        bad,
    ])
    .unwrap();
    assert!(matches!(
        Config::from_args(&cli.main),
        Err(ConfigError::NotUtf8 { .. })
    ));
}

/// `args` after the program's name, through the parser `main` uses.
fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_args(std::iter::once("goremotecache").chain(args.iter().copied()))
}

fn run(args: &[&str]) -> Run {
    Run::from_cli(parse(args).unwrap()).unwrap()
}

/// The help of `args` (which end with `--help`), as clap prints it.
fn help(args: &[&str]) -> String {
    let err = parse(args).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DisplayHelp);
    err.to_string()
}

/// The options of the main mode that no subcommand takes, with a value where they need one.
const CLIENT_ONLY: [&[&str]; 9] = [
    &["--verify-hits"],
    &["--stats"],
    &["--stats-file", "/s.json"],
    &["--remote-mode", "read-only"],
    &["--upload-wait", "1s"],
    &["--upload-concurrency", "2"],
    &["--upload-queue", "2"],
    &["--prefetch=off"],
    &["--prefetch-key", "k"],
];

fn refused(args: &[&str]) {
    let err = parse(args).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UnknownArgument, "{args:?}: {err}");
    assert_eq!(err.exit_code(), 2);
}

#[test]
fn serve_takes_its_own_options_its_s3_storage_and_the_common_ones() {
    let Run::Serve(serve) = run(&[
        "serve",
        "--storage-dir",
        "/srv/cache",
        "--max-entry-size",
        "1MiB",
        "--s3-bucket",
        "b",
        "--s3-prefix",
        "/p/",
        "--remote-timeout",
        "3s",
        "--remote-connect-timeout",
        "1s",
        "--debug",
        "--trust-cache-dir",
    ]) else {
        panic!("not serve")
    };
    assert_eq!(
        serve.args.storage_dir.as_deref(),
        Some(Path::new("/srv/cache"))
    );
    assert_eq!(serve.args.max_entry_size, 1 << 20);
    let s3 = serve.s3.as_ref().unwrap();
    assert_eq!((s3.bucket.as_str(), s3.prefix.as_str()), ("b", "p"));
    assert_eq!(s3.request_timeout, Duration::from_secs(3));
    assert_eq!(s3.connect_timeout, Duration::from_secs(1));
    assert!(serve.debug && serve.trust_cache_dir);
    let Run::Serve(serve) = run(&["serve"]) else {
        panic!("not serve")
    };
    assert_eq!(serve.s3, None);
    assert!(matches!(
        Run::from_cli(parse(&["serve", "--s3-bucket", "b", "--s3-endpoint", "minio"]).unwrap()),
        Err(ConfigError::BadEndpoint(_))
    ));

    for option in [
        &["--cache-dir", "/c"][..],
        &["--lock-dir", "/l"],
        &["--lock-type", "memory"],
        &["--backend", "s3"],
        &["--http-url", "http://h"],
        &["--http-token", "t"],
        &["--http-ca-file", "/ca.pem"],
    ]
    .into_iter()
    .chain(CLIENT_ONLY)
    {
        refused(&[&["serve"], option].concat());
    }
}

#[test]
fn clear_local_takes_the_directories_and_the_common_options() {
    let Run::ClearLocal(clear) = run(&[
        "clear-local",
        "--cache-dir",
        "/c",
        "--lock-dir",
        "/l",
        "--lock-type",
        "memory",
        "--trust-cache-dir",
        "--debug",
    ]) else {
        panic!("not clear-local")
    };
    assert_eq!(clear.dirs.cache_dir, Path::new("/c"));
    assert_eq!(clear.dirs.lock_dir, Path::new("/l"));
    assert_eq!(clear.dirs.lock_type, LockType::Memory);
    assert_eq!(clear.dirs.default_base, None);
    assert!(clear.dirs.trust_cache_dir && clear.debug);
    // The same defaults as the main mode's.
    let Run::ClearLocal(clear) = run(&["clear-local", "--cache-dir", "rel/cache"]) else {
        panic!("not clear-local")
    };
    let Run::Cache(config) = run(&["--cache-dir", "rel/cache"]) else {
        panic!("not the cache")
    };
    assert_eq!(
        (
            &clear.dirs.cache_dir,
            &clear.dirs.lock_dir,
            &clear.dirs.default_base
        ),
        (
            &config.dirs.cache_dir,
            &config.dirs.lock_dir,
            &config.dirs.default_base
        )
    );
    let mut args = parse(&["clear-local"]).unwrap();
    let Some(Command::ClearLocal(clear)) = &mut args.command else {
        panic!("not clear-local")
    };
    clear.local.cache_dir = Some(PathBuf::new());
    assert!(matches!(
        Run::from_cli(args),
        Err(ConfigError::Empty { flag: "cache-dir" })
    ));

    for option in [
        &["--s3-bucket", "b"][..],
        &["--backend", "disk"],
        &["--http-url", "http://h"],
        &["--remote-timeout", "1s"],
        &["--listen", "127.0.0.1:1"],
        &["--storage-dir", "/s"],
        &["--max-entry-size", "1MiB"],
        &["--yes"],
    ]
    .into_iter()
    .chain(CLIENT_ONLY)
    {
        refused(&[&["clear-local"], option].concat());
    }
}

#[test]
fn clear_remote_takes_the_store_and_its_time_bounds() {
    let Run::ClearRemote(clear) = run(&[
        "clear-remote",
        "--yes",
        "--http-url",
        "http://cache:8321",
        "--http-token",
        "t",
        "--remote-timeout",
        "5s",
        "--debug",
    ]) else {
        panic!("not clear-remote")
    };
    assert!(clear.yes && clear.debug);
    assert_eq!(clear.timeout, Duration::from_secs(5));
    let Some(StoreConfig::Http(http)) = &clear.store else {
        panic!("{clear:?}")
    };
    assert_eq!(http.token.as_deref(), Some("t"));
    assert_eq!(http.request_timeout, Duration::from_secs(5));

    let Run::ClearRemote(clear) = run(&["clear-remote", "--s3-bucket", "b", "--s3-prefix", "x"])
    else {
        panic!("not clear-remote")
    };
    assert!(!clear.yes);
    assert!(matches!(&clear.store, Some(StoreConfig::S3(s3)) if s3.prefix == "x"));
    let Run::ClearRemote(clear) = run(&["clear-remote"]) else {
        panic!("not clear-remote")
    };
    assert_eq!(clear.store, None);
    assert!(matches!(
        Run::from_cli(parse(&["clear-remote", "--backend", "s3"]).unwrap()),
        Err(ConfigError::NoBucket)
    ));

    for option in [
        &["--cache-dir", "/c"][..],
        &["--lock-dir", "/l"],
        &["--lock-type", "memory"],
        &["--storage-dir", "/s"],
        &["--max-entry-size", "1MiB"],
    ]
    .into_iter()
    .chain(CLIENT_ONLY)
    {
        refused(&[&["clear-remote"], option].concat());
    }
}

#[test]
fn version_takes_no_options() {
    assert_eq!(run(&["version"]), Run::Version);
    refused(&["version", "--debug"]);
    refused(&["version", "--cache-dir", "/c"]);
}

#[test]
fn without_a_subcommand_every_client_option_is_taken() {
    let mut args = vec!["--cache-dir", "/c", "--lock-dir", "/l", "--debug"];
    args.extend([
        "--trust-cache-dir",
        "--s3-bucket",
        "b",
        "--remote-timeout",
        "4s",
    ]);
    args.extend(CLIENT_ONLY.concat());
    let Run::Cache(config) = run(&args) else {
        panic!("not the cache")
    };
    assert!(config.verify_hits && config.stats && config.debug && config.dirs.trust_cache_dir);
    let remote = config.remote.unwrap();
    assert_eq!(remote.mode, RemoteMode::ReadOnly);
    assert_eq!(remote.prefetch, None);
    assert_eq!(remote.timeout, Duration::from_secs(4));
    assert_eq!(remote.upload_wait, Duration::from_secs(1));
    // The server's own options are not the main mode's.
    for option in [
        &["--listen", "127.0.0.1:1"][..],
        &["--storage-dir", "/s"],
        &["--yes"],
    ] {
        refused(option);
    }
}

#[test]
fn options_before_a_subcommand_are_refused_with_a_tip() {
    for args in [
        &["--cache-dir", "/x", "clear-local"][..],
        &["--debug", "serve"],
        &["--s3-bucket", "b", "clear-remote", "--yes"],
        &["--stats", "version"],
    ] {
        let err = parse(args).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ArgumentConflict, "{args:?}: {err}");
        assert_eq!(err.exit_code(), 2);
        let text = err.to_string();
        assert!(text.contains("cannot be used with"), "{text}");
        assert!(text.contains("takes its options after its name"), "{text}");
    }
}

#[test]
fn each_help_lists_only_the_options_of_its_command() {
    let serve = help(&["serve", "--help"]);
    for expected in [
        "--listen",
        "--storage-dir",
        "--s3-bucket",
        "--remote-timeout",
        "--debug",
    ] {
        assert!(
            serve.contains(expected),
            "serve --help lacks {expected}:\n{serve}"
        );
    }
    for unexpected in [
        "--cache-dir",
        "--lock-dir",
        "--lock-type",
        "--backend",
        "--prefetch",
    ] {
        assert!(
            !serve.contains(unexpected),
            "serve --help has {unexpected}:\n{serve}"
        );
    }
    let clear_local = help(&["clear-local", "--help"]);
    assert!(clear_local.contains("--cache-dir") && clear_local.contains("--lock-type"));
    for unexpected in ["--s3-bucket", "--backend", "--listen", "--stats"] {
        assert!(
            !clear_local.contains(unexpected),
            "{unexpected}:\n{clear_local}"
        );
    }
    let clear_remote = help(&["clear-remote", "--help"]);
    for expected in [
        "--yes",
        "--backend",
        "--s3-bucket",
        "--http-url",
        "--remote-timeout",
    ] {
        assert!(
            clear_remote.contains(expected),
            "{expected}:\n{clear_remote}"
        );
    }
    for unexpected in ["--cache-dir", "--prefetch", "--upload-wait", "--listen"] {
        assert!(
            !clear_remote.contains(unexpected),
            "{unexpected}:\n{clear_remote}"
        );
    }
    let main = help(&["--help"]);
    for expected in [
        "--cache-dir",
        "--backend",
        "--prefetch",
        "--s3-bucket",
        "serve --help",
    ] {
        assert!(main.contains(expected), "{expected}:\n{main}");
    }
    // The subcommands' descriptions name some of their options, but do not list them.
    for unexpected in ["--storage-dir <DIR>", "--listen <ADDR>"] {
        assert!(!main.contains(unexpected), "{unexpected}:\n{main}");
    }
}

#[test]
fn the_parser_main_uses_agrees_with_clap_without_variables() {
    // Without GOREMOTECACHE_* variables set, the two-step parse is clap's own.
    for args in [
        &[][..],
        &["--stats", "--cache-dir", "/c"],
        &["serve", "--listen", "127.0.0.1:1"],
        &["clear-local", "--cache-dir", "/c"],
        &["clear-remote", "--yes"],
        &["version"],
    ] {
        if std::env::vars().any(|(key, _)| key.starts_with("GOREMOTECACHE_")) {
            return;
        }
        let argv = [&["goremotecache"], args].concat();
        assert_eq!(
            format!("{:?}", Cli::try_parse_args(&argv).unwrap()),
            format!("{:?}", Cli::try_parse_from(&argv).unwrap())
        );
    }
}

#[test]
fn gc_remote_takes_an_age_and_a_bucket_only() {
    let Run::GcRemote(gc) = run(&[
        "gc-remote",
        "--older-than",
        "14d",
        "--s3-bucket",
        "b",
        "--s3-prefix",
        "/ci/go/",
        "--remote-timeout",
        "5s",
    ]) else {
        panic!("not gc-remote")
    };
    assert_eq!(gc.older_than, Duration::from_secs(14 * 24 * 3600));
    let StoreConfig::S3(s3) = &gc.store else {
        panic!("{:?}", gc.store)
    };
    assert_eq!(s3.prefix, "ci/go");
    assert_eq!(s3.request_timeout, Duration::from_secs(5));
    assert!(!gc.yes);
    let Run::GcRemote(gc) = run(&[
        "gc-remote",
        "--older-than",
        "2s",
        "--yes",
        "--s3-bucket",
        "b",
    ]) else {
        panic!("not gc-remote")
    };
    assert!(gc.yes);

    let refused_by_config = |args: &[&str]| match Run::from_cli(parse(args).unwrap()) {
        Err(err @ ConfigError::GcNeedsBucket(_)) => err.to_string(),
        other => panic!("{args:?}: {other:?}"),
    };
    let http = refused_by_config(&[
        "gc-remote",
        "--older-than",
        "1d",
        "--http-url",
        "http://c:1",
    ]);
    assert!(
        http.contains("--max-size") && http.contains("--s3-*"),
        "{http}"
    );
    let dir = refused_by_config(&[
        "gc-remote",
        "--older-than",
        "1d",
        "--storage-dir",
        "/srv/cache",
        "--s3-bucket",
        "b",
    ]);
    assert!(dir.contains("serve --max-size"), "{dir}");
    let none = refused_by_config(&["gc-remote", "--older-than", "1d"]);
    assert!(none.contains("--s3-bucket"), "{none}");

    // The age is required and longer than zero.
    for args in [
        &["gc-remote", "--s3-bucket", "b"][..],
        &["gc-remote", "--older-than", "0s", "--s3-bucket", "b"],
        &["gc-remote", "--older-than", "soon", "--s3-bucket", "b"],
    ] {
        let err = parse(args).unwrap_err();
        assert_eq!(err.exit_code(), 2, "{args:?}: {err}");
    }
    let help = help(&["gc-remote", "--help"]);
    assert!(help.contains("--older-than <DURATION>"), "{help}");
    assert!(!help.contains("--storage-dir"), "{help}");
    assert!(!help.contains("--cache-dir"), "{help}");
}

mod daemon;
mod namespaces;
mod proptests;
mod templates;

#[test]
fn prefixed_credentials_need_both_keys_and_take_the_token() {
    fn from(vars: &[(&str, &str)]) -> Result<Option<S3Credentials>, ConfigError> {
        prefixed_credentials(|name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        })
    }
    assert_eq!(from(&[]).unwrap(), None);
    // A token alone, or empty values (a CI file's unset secret), are none.
    let none = from(&[
        ("GOREMOTECACHE_AWS_SESSION_TOKEN", "t"),
        ("GOREMOTECACHE_AWS_ACCESS_KEY_ID", ""),
        ("GOREMOTECACHE_AWS_SECRET_ACCESS_KEY", ""),
    ]);
    assert_eq!(none.unwrap(), None);
    let got = from(&[
        ("GOREMOTECACHE_AWS_ACCESS_KEY_ID", "id"),
        ("GOREMOTECACHE_AWS_SECRET_ACCESS_KEY", "secret"),
        ("GOREMOTECACHE_AWS_SESSION_TOKEN", "token"),
        ("AWS_ACCESS_KEY_ID", "other"),
    ])
    .unwrap()
    .unwrap();
    assert_eq!(
        (got.access_key_id.as_str(), got.secret_access_key.as_str()),
        ("id", "secret")
    );
    assert_eq!(got.session_token.as_deref(), Some("token"));
    assert!(!format!("{got:?}").contains("secret"), "{got:?}");
    let err = from(&[("GOREMOTECACHE_AWS_ACCESS_KEY_ID", "id")]).unwrap_err();
    assert!(
        err.to_string().starts_with(
            "GOREMOTECACHE_AWS_ACCESS_KEY_ID is set but GOREMOTECACHE_AWS_SECRET_ACCESS_KEY is not"
        ),
        "{err}"
    );
    let err = from(&[
        ("GOREMOTECACHE_AWS_SECRET_ACCESS_KEY", "s"),
        ("GOREMOTECACHE_AWS_SESSION_TOKEN", "t"),
    ])
    .unwrap_err();
    assert!(
        matches!(
            err,
            ConfigError::HalfCredentials {
                set: "GOREMOTECACHE_AWS_SECRET_ACCESS_KEY",
                unset: "GOREMOTECACHE_AWS_ACCESS_KEY_ID"
            }
        ),
        "{err}"
    );
}

#[test]
fn the_run_report_and_upload_options_are_validated() {
    let config = |args: &[&str]| {
        let mut all = vec!["goremotecache", "--s3-bucket", "b"];
        all.extend_from_slice(args);
        Config::from_args(&Cli::try_parse_from(all).unwrap().main)
    };
    let parsed = config(&[
        "--upload-min-size",
        "4KiB",
        "--remote-fault-rate",
        "0.25",
        "--step-summary",
        "/tmp/summary.md",
        "--log-file",
        "/tmp/log",
        "--metrics-push-url",
        "http://127.0.0.1:9091/metrics/job/x",
        "--metrics-push-labels",
        "repo=api,branch=main",
        "--metrics-push-headers",
        "Authorization: Bearer t",
    ])
    .unwrap();
    let remote = parsed.remote.as_ref().unwrap();
    assert_eq!(remote.upload_min_size, 4096);
    assert_eq!(remote.fault_rate, Fraction(0.25));
    assert_eq!(parsed.step_summary, Some(PathBuf::from("/tmp/summary.md")));
    assert_eq!(parsed.log_file, Some(PathBuf::from("/tmp/log")));
    let push = parsed.metrics_push.unwrap();
    assert_eq!(push.labels.len(), 2);
    assert_eq!(
        push.headers,
        vec![("Authorization".to_string(), "Bearer t".to_string())]
    );
    // Defaults: everything uploaded, no faults.
    let plain = config(&[]).unwrap();
    assert_eq!(plain.remote.as_ref().unwrap().upload_min_size, 0);
    assert_eq!(plain.remote.as_ref().unwrap().fault_rate, Fraction(0.0));

    for bad in ["1.5", "-0.1", "NaN", "half"] {
        let arg = format!("--remote-fault-rate={bad}");
        let err = Cli::try_parse_from(["goremotecache", arg.as_str()]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ValueValidation, "{bad}");
    }
    for (flag, value) in [
        ("--metrics-push-url", "ftp://host/x"),
        ("--metrics-push-url", "pushgateway:9091"),
        ("--metrics-push-labels", "__name__=x"),
        ("--metrics-push-headers", "NoColon"),
    ] {
        let mut args = vec![flag, value];
        if flag != "--metrics-push-url" {
            args.extend(["--metrics-push-url", "http://h:9091/metrics/job/x"]);
        }
        assert!(
            matches!(config(&args), Err(ConfigError::MetricsPush { .. })),
            "{flag} {value}"
        );
    }
}
