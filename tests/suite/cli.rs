//! The command line as a user meets it: help, version, environment variables, stats and
//! clear-local, each through the real binary.

use crate::support;

use std::process::Command;

use support::{Client, action, bin};

fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = Command::new(bin());
    command.args(args).envs(env.iter().copied());
    support::outcome(&mut command)
}

#[test]
fn help_explains_every_option_and_how_to_set_gocacheprog() {
    let (code, help, _) = run(&["--help"], &[]);
    assert_eq!(code, 0);
    for expected in [
        "GOCACHEPROG=goremotecache",
        "--cache-dir",
        "GOREMOTECACHE_CACHE_DIR",
        "--lock-dir",
        "GOREMOTECACHE_LOCK_DIR",
        "--lock-type",
        "GOREMOTECACHE_LOCK_TYPE",
        "--trust-cache-dir",
        "GOREMOTECACHE_TRUST_CACHE_DIR",
        "--verify-hits",
        "GOREMOTECACHE_VERIFY_HITS",
        "--max-entry-size",
        "GOREMOTECACHE_MAX_ENTRY_SIZE",
        "--debug",
        "GOREMOTECACHE_DEBUG",
        "--stats",
        "GOREMOTECACHE_STATS",
        "--stats-file",
        "GOREMOTECACHE_STATS_FILE",
        "clear-local",
        "clear-remote",
        "version",
        "--backend",
        "GOREMOTECACHE_BACKEND",
        "--s3-bucket",
        "GOREMOTECACHE_S3_BUCKET",
        "--s3-prefix",
        "--s3-endpoint",
        "--s3-region",
        "--s3-force-path-style",
        "--s3-instance-metadata",
        "--remote-mode",
        "GOREMOTECACHE_REMOTE_MODE",
        "--upload-wait",
        "--upload-concurrency",
        "--upload-queue",
        "--remote-timeout",
        "--remote-connect-timeout",
    ] {
        assert!(
            help.contains(expected),
            "--help lacks {expected:?}:\n{help}"
        );
    }
}

#[test]
fn s3_options_are_checked_before_the_handshake() {
    let (code, out, err) = run(&["--backend", "s3"], &[]);
    assert_eq!(code, 2);
    assert_eq!(
        out, "",
        "a handshake was written before the options were refused"
    );
    assert!(err.contains("--backend s3 needs a bucket"), "{err}");
    let (code, _, err) = run(&["--s3-bucket", "b", "--s3-endpoint", "minio:9000"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("is not a URL"), "{err}");
    let (code, _, err) = run(&["--upload-wait", "soon"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("soon"), "{err}");
}

#[test]
fn version_names_the_release_and_the_protocol() {
    let (code, out, _) = run(&["version"], &[]);
    assert_eq!(code, 0);
    assert_eq!(
        out,
        format!(
            "goremotecache {} (GOCACHEPROG protocol commands: get, put, close)\n",
            env!("CARGO_PKG_VERSION")
        )
    );
}

#[test]
fn bad_options_exit_2_with_a_message() {
    let (code, _, err) = run(&["--lock-type", "bogus"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("invalid value 'bogus'"), "{err}");
    let (code, _, err) = run(&[], &[("GOREMOTECACHE_LOCK_TYPE", "sometimes")]);
    assert_eq!(code, 2);
    assert!(err.contains("sometimes"), "{err}");
}

#[test]
fn environment_variables_configure_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("env-cache");
    let stats = dir.path().join("stats.json");
    let locks = dir.path().join("env-locks");
    let mut client = Client::start_with(
        &[],
        &[
            ("GOREMOTECACHE_CACHE_DIR", cache.to_str().unwrap()),
            ("GOREMOTECACHE_LOCK_DIR", locks.to_str().unwrap()),
            ("GOREMOTECACHE_LOCK_TYPE", "memory"),
            ("GOREMOTECACHE_STATS", "true"),
            ("GOREMOTECACHE_STATS_FILE", stats.to_str().unwrap()),
        ],
    );
    client.put(1, action(1), b"from the environment");
    let answer = client.read().unwrap();
    assert!(
        answer["DiskPath"]
            .as_str()
            .unwrap()
            .starts_with(cache.to_str().unwrap())
    );
    client.get(2, action(1));
    client.get(3, action(2));
    client.read().unwrap();
    client.read().unwrap();
    client.close_request(4);
    client.read().unwrap();
    let (status, stderr) = client.finish();
    assert!(status.success());
    assert!(
        stderr.contains("2 gets: 1 hits (50.0%), 1 misses"),
        "{stderr}"
    );
    assert!(!locks.exists(), "memory locks created the lock directory");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&stats).unwrap()).unwrap();
    assert_eq!(report["gets"], 2);
    assert_eq!(report["hits"], 1);
    assert_eq!(report["puts"], 1);
    assert_eq!(report["put_bytes"], 20);
    assert!(report["peak_rss_bytes"].as_u64().unwrap() > 0);
}

#[test]
fn stats_are_off_unless_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let mut client = Client::start_with(
        &["--cache-dir", dir.path().join("c").to_str().unwrap()],
        &[("GOREMOTECACHE_STATS", "false")],
    );
    client.close_request(1);
    client.read().unwrap();
    let (status, stderr) = client.finish();
    assert!(status.success());
    assert_eq!(stderr, "");
}

#[test]
fn debug_logs_each_request() {
    let dir = tempfile::tempdir().unwrap();
    let mut client = Client::on_dir(dir.path(), &["--debug"]);
    client.get(1, action(3));
    client.read().unwrap();
    client.close_request(2);
    client.read().unwrap();
    let (_, stderr) = client.finish();
    let expected = format!("goremotecache: debug: get action={} hit=false", action(3));
    assert!(stderr.contains(&expected), "{stderr}");
}

#[test]
fn clear_local_empties_the_cache_it_created() {
    let dir = tempfile::tempdir().unwrap();
    let mut client = Client::on_dir(dir.path(), &[]);
    client.put(1, action(1), &support::pseudo_random(1, 5000));
    client.read().unwrap();
    client.close_request(2);
    client.read().unwrap();
    client.finish();

    let cache = dir.path().join("cache");
    let locks = dir.path().join("locks");
    let args = [
        "clear-local",
        "--cache-dir",
        cache.to_str().unwrap(),
        "--lock-dir",
        locks.to_str().unwrap(),
    ];
    let (code, out, err) = run(&args, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        // The entry, its output, and the trim's trim.txt.
        out.contains(&format!("{}: removed 3 files (5.0 KiB)", cache.display())),
        "{out}"
    );
    assert!(
        out.contains(&format!("{}: removed", locks.display())),
        "{out}"
    );

    // The cleared cache misses, and works again.
    let mut client = Client::on_dir(dir.path(), &[]);
    client.get(1, action(1));
    assert_eq!(client.read().unwrap()["Miss"], true);
    client.put(2, action(1), b"again");
    assert!(client.read().unwrap()["DiskPath"].is_string());
    client.close_request(3);
    client.read().unwrap();
    client.finish();
}

#[test]
fn clear_local_refuses_directories_it_did_not_create() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("precious.txt"), b"keep me").unwrap();
    let (code, _, err) = run(
        &["clear-local", "--cache-dir", dir.path().to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 1);
    assert!(err.contains("refusing to clear"), "{err}");
    assert!(dir.path().join("precious.txt").exists());

    for dangerous in [
        "/",
        std::env::var("HOME")
            .unwrap_or_else(|_| "/root".into())
            .as_str(),
    ] {
        let (code, _, err) = run(&["clear-local", "--cache-dir", dangerous], &[]);
        assert_eq!(code, 1, "{dangerous}");
        assert!(err.contains("refusing to clear"), "{err}");
    }
}

#[test]
fn the_terminal_hint_stays_off_the_go_commands_stderr() {
    // stdin is not a terminal here, so the hint must not appear on the go command's stderr.
    let dir = tempfile::tempdir().unwrap();
    let mut client = Client::on_dir(dir.path(), &[]);
    client.close_stdin();
    let (status, stderr) = client.finish();
    assert!(status.success());
    assert!(
        !stderr.contains("meant to be started by the go command"),
        "{stderr}"
    );
}

#[test]
fn serve_help_lists_only_the_servers_options() {
    let (code, help, _) = run(&["serve", "--help"], &[]);
    assert_eq!(code, 0);
    for expected in [
        "--listen",
        "--storage-dir",
        "GOREMOTECACHE_STORAGE_DIR",
        "--token-file",
        "--max-entry-size",
        "--s3-bucket",
        "GOREMOTECACHE_S3_BUCKET",
        "--s3-endpoint",
        "--remote-timeout",
        "--remote-connect-timeout",
        "--debug",
        "--trust-cache-dir",
    ] {
        assert!(
            help.contains(expected),
            "serve --help lacks {expected:?}:\n{help}"
        );
    }
    for unexpected in [
        "--cache-dir",
        "--lock-dir",
        "--lock-type",
        "--backend",
        "--prefetch",
        "--http-url",
        "--remote-mode",
        "--upload-wait",
        "--stats",
        "--verify-hits",
    ] {
        assert!(
            !help.contains(unexpected),
            "serve --help has {unexpected:?}:\n{help}"
        );
    }
    // The main help lists the client's options, and says where the server's are.
    let (code, help, _) = run(&["--help"], &[]);
    assert_eq!(code, 0);
    assert!(help.contains("serve --help"), "{help}");
    assert!(!help.contains("--storage-dir <DIR>"), "{help}");
    assert!(!help.contains("--listen <ADDR>"), "{help}");
}

#[test]
fn options_before_a_subcommand_are_refused_with_a_tip() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let (code, out, err) = run(
        &["--cache-dir", cache.to_str().unwrap(), "clear-local"],
        &[],
    );
    assert_eq!(code, 2, "{err}");
    assert_eq!(out, "");
    assert!(
        err.contains("the subcommand 'clear-local' cannot be used with"),
        "{err}"
    );
    assert!(err.contains("goremotecache clear-local [OPTIONS]"), "{err}");
    let (code, _, err) = run(&["--debug", "serve"], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("'serve' cannot be used with"), "{err}");
}

#[test]
fn an_option_of_the_main_mode_is_refused_by_a_subcommand() {
    for args in [
        &["serve", "--cache-dir", "/tmp/x"][..],
        &["serve", "--prefetch=off"],
        &["clear-local", "--s3-bucket", "b"],
        &["clear-remote", "--upload-wait", "1s"],
        &["version", "--debug"],
    ] {
        let (code, _, err) = run(args, &[]);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains("unexpected argument"), "{args:?}: {err}");
    }
}

#[test]
fn variables_apply_to_every_command_that_takes_the_option() {
    // A cache made by the main mode, cleared through the variables.
    let dir = tempfile::tempdir().unwrap();
    let mut client = Client::on_dir(dir.path(), &[]);
    client.put(1, action(1), b"cleared through the environment");
    client.read().unwrap();
    client.close_request(2);
    client.read().unwrap();
    client.finish();
    let cache = dir.path().join("cache");
    let locks = dir.path().join("locks");
    let env = [
        ("GOREMOTECACHE_CACHE_DIR", cache.to_str().unwrap()),
        ("GOREMOTECACHE_LOCK_DIR", locks.to_str().unwrap()),
    ];
    let (code, out, err) = run(&["clear-local"], &env);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("{}: removed 3 files", cache.display())),
        "{out}"
    );

    // S3 options reach both serve and clear-remote.
    let env = [
        ("GOREMOTECACHE_S3_BUCKET", "b"),
        ("GOREMOTECACHE_S3_ENDPOINT", "minio:9000"),
    ];
    for command in ["serve", "clear-remote"] {
        let (code, _, err) = run(&[command], &env);
        assert_eq!(code, 2, "{command}: {err}");
        assert!(err.contains("is not a URL"), "{command}: {err}");
    }
}

#[test]
fn variables_of_options_a_subcommand_does_not_take_do_not_refuse_it() {
    // Values the main mode refuses (an empty path, unknown words), as a CI file might leave.
    let env = [
        ("GOREMOTECACHE_CACHE_DIR", ""),
        ("GOREMOTECACHE_LOCK_TYPE", "sometimes"),
        ("GOREMOTECACHE_UPLOAD_WAIT", "soon"),
        ("GOREMOTECACHE_PREFETCH", "maybe"),
        ("GOREMOTECACHE_REMOTE_MODE", "sideways"),
        ("GOREMOTECACHE_TRIM_AGE", "1h"),
    ];
    let (code, _, err) = run(&[], &env);
    assert_eq!(code, 2, "the main mode took them: {err}");

    let (code, out, err) = run(&["version"], &env);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("goremotecache "), "{out}");

    let storage = tempfile::tempdir().unwrap();
    let (code, _, err) = run(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--storage-dir",
            storage.path().to_str().unwrap(),
        ],
        &env,
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("serve needs tokens"), "{err}");

    let (code, _, err) = run(&["clear-remote"], &env);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no remote store is configured"), "{err}");

    // clear-local takes the directories (a valid one here) and nothing else of the main mode.
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("never-made");
    let mut env = env.to_vec();
    env[0].1 = cache.to_str().unwrap();
    env[1].1 = "memory";
    let (code, out, err) = run(&["clear-local"], &env);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("{}: does not exist", cache.display())),
        "{out}"
    );
}
