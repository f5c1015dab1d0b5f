//! End to end with the real go command and an S3 store (the in-process s3s server): a fresh
//! machine gets its results from the bucket, modes do what they say, and no fault of the
//! store fails a build or gets a damaged entry served.

use crate::support;

use std::time::{Duration, Instant};

use support::GoProject;
use support::proxy::{Mode, Proxy};
use support::s3::{Fault, S3Server, SECRET_KEY, credentials, s3_args};
use support::{warm_bucket, warm_the_bucket};

fn project(tag: &str, server: &S3Server, prefix: &str) -> GoProject {
    let mut project = GoProject::new(tag);
    project.args = server.args(prefix);
    project.env = credentials(SECRET_KEY);
    project
}

/// A project on the shared module whose results are in `server`'s bucket under `prefix`, as
/// machine A leaves them after building and testing it (the local cache is empty: a machine of
/// its own).
fn warmed(server: &S3Server, prefix: &str) -> GoProject {
    warm_bucket(server, prefix);
    let mut project = GoProject::on_shared_module();
    project.args = server.args(prefix);
    project.env = credentials(SECRET_KEY);
    project
}

#[test]
fn a_fresh_machine_gets_every_result_from_the_bucket() {
    let server = S3Server::start();
    let mut project = warmed(&server, "ci");

    server.reset_counts();
    let build = project.build_on_fresh_machine("machine-b");
    assert_eq!(build.stat("remote.corrupt"), 0);
    assert_eq!(
        build.stat("remote.uploads"),
        0,
        "downloaded entries were uploaded again"
    );
    // One request per remote get, hit or miss.
    assert_eq!(
        server.count("GET"),
        build.stat("remote.hits") + build.stat("remote.misses"),
        "{:?}",
        build.stats
    );
    project.assert_tests_cached();
}

#[test]
fn prefixes_keep_caches_apart() {
    let server = S3Server::start();
    let mut project = warmed(&server, "team-a");
    project.switch_machine("other-team");
    project.args = server.args("team-b");
    let build = project.go(&["build", "-x", "./..."]);
    assert!(!build.compiles().is_empty(), "team-b got team-a's results");
    assert_eq!(build.stat("remote.hits"), 0, "{:?}", build.stats);
}

#[test]
fn read_only_never_uploads_and_write_only_never_reads() {
    let server = S3Server::start();
    let mut project = project("s3-modes", &server, "modes");
    project
        .args
        .extend(["--remote-mode".into(), "read-only".into()]);
    let build = project.go(&["build", "./..."]);
    assert_eq!(server.count("PUT"), 0, "read-only mode uploaded");
    assert_eq!(build.stat("remote.uploads"), 0);

    project.switch_machine("writer");
    project.args = server.args("modes");
    project
        .args
        .extend(["--remote-mode".into(), "write-only".into()]);
    server.reset_counts();
    let build = project.go(&["build", "./..."]);
    assert_eq!(
        server.count("GET"),
        0,
        "write-only mode read remote entries"
    );
    assert!(build.stat("remote.uploads") > 50, "{:?}", build.stats);
}

/// Damaged entries in the bucket are misses: the build compiles what it must, and what it
/// builds is right.
#[test]
fn damaged_entries_are_never_served() {
    let server = S3Server::start();
    let mut project = warmed(&server, "damaged");
    let files = server.entry_files();
    assert!(files.len() > 50);
    for (n, file) in files.iter().enumerate() {
        let mut bytes = std::fs::read(file).unwrap();
        match n % 3 {
            0 => bytes.truncate(bytes.len() / 2),
            1 if bytes.len() > 60 => {
                let last = bytes.len() - 1;
                bytes[last] ^= 0x01;
            }
            _ => bytes[0] = b'X',
        }
        std::fs::write(file, bytes).unwrap();
    }
    project.switch_machine("after-damage");
    let build = project.go(&["build", "./..."]);
    assert_eq!(build.stat("remote.hits"), 0, "{:?}", build.stats);
    assert!(build.stat("remote.corrupt") > 50, "{:?}", build.stats);
    assert_eq!(
        project.build_and_run_command("e2e-after-damage"),
        "TOTAL 9!\n"
    );
}

/// HTTP-level faults on every object GET: the build succeeds, compiles what it must, and
/// never stores what it could not verify: the bucket's objects are the same, byte for byte,
/// after the faulty builds, and a healed machine builds from them.
#[test]
fn http_faults_are_misses() {
    let server = S3Server::start();
    let mut project = warmed(&server, "faults");
    let snapshot = || -> std::collections::BTreeMap<std::path::PathBuf, Vec<u8>> {
        (server.entry_files().into_iter())
            .filter(|path| path.components().any(|c| c.as_os_str() == "v1"))
            .filter(|path| !path.ends_with("filter/v1/keys"))
            .map(|path| (path.clone(), std::fs::read(&path).unwrap()))
            .collect()
    };
    let before = snapshot();
    assert!(before.len() > 50, "{} entries", before.len());
    for (n, fault) in [Fault::Status(503), Fault::Truncate, Fault::Flip]
        .into_iter()
        .enumerate()
    {
        server.set_fault(fault);
        project.switch_machine(&format!("fault-{n}"));
        let build = project.go(&["build", "./..."]);
        assert_eq!(build.stat("remote.hits"), 0, "{fault:?}: {:?}", build.stats);
        let (errors, corrupt) = (build.stat("remote.errors"), build.stat("remote.corrupt"));
        assert!(errors + corrupt > 0, "{fault:?}: {:?}", build.stats);
    }
    server.set_fault(Fault::None);
    assert!(
        snapshot() == before,
        "the faulty builds changed the bucket's entries"
    );
    project.switch_machine("healed");
    let build = project.go(&["build", "-x", "./..."]);
    assert_eq!(
        build.compiles(),
        Vec::<String>::new(),
        "the bucket's entries were lost: {:?}",
        build.stats
    );
    assert!(build.stat("remote.hits") > 50, "{:?}", build.stats);
}

#[test]
fn an_unreachable_store_costs_one_warning() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut project = GoProject::new("s3-unreachable");
    project.args = s3_args(&format!("http://127.0.0.1:{port}"), "x");
    project.env = credentials(SECRET_KEY);
    let start = Instant::now();
    let build = project.go(&["build", "./..."]);
    let warnings = remote_warnings(&build);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("local cache only"), "{warnings:?}");
    assert!(start.elapsed() < Duration::from_secs(120));
    let warm = project.go(&["build", "-x", "./..."]);
    assert_eq!(
        warm.compiles(),
        Vec::<String>::new(),
        "the local cache did not work"
    );
}

#[test]
fn wrong_credentials_cost_one_warning() {
    let server = S3Server::start();
    let mut project = project("s3-denied", &server, "denied");
    project.env = credentials("not-the-secret");
    let build = project.go(&["build", "./..."]);
    let warnings = remote_warnings(&build);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("access denied"), "{warnings:?}");
    assert_eq!(server.count("PUT"), 0);
}

#[test]
fn a_store_killed_in_the_middle_of_a_build_does_not_fail_it() {
    let mut server = S3Server::start();
    let project = project("s3-killed", &server, "killed");
    let (mut command, _) = project.command(&["test", "./..."]);
    let child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Let the build get going, with uploads under way, then take the store away.
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.count("PUT") < 20 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    server.stop();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the build failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok  \texample.com/e2e/report"));
}

/// A store that accepts connections and never answers: the build goes on, slowed by one
/// timeout at most, and says so once.
#[test]
fn a_store_that_swallows_requests_does_not_stall_the_build() {
    let server = S3Server::start();
    let proxy = Proxy::start(&server.endpoint, Mode::Swallow);
    let mut project = GoProject::new("s3-swallow");
    project.args = s3_args(&proxy.endpoint, "swallow");
    project.args.extend([
        "--remote-timeout".into(),
        "2s".into(),
        "--upload-wait".into(),
        "5s".into(),
    ]);
    project.env = credentials(SECRET_KEY);
    let start = Instant::now();
    let build = project.go(&["build", "./..."]);
    let took = start.elapsed();
    let warnings = remote_warnings(&build);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(build.stat("remote.errors") >= 1, "{:?}", build.stats);
    // Three timeouts in a row switch the remote off; the rest is a local build.
    assert!(took < Duration::from_secs(90), "took {took:?}");
}

#[test]
fn connections_reset_by_the_store_do_not_fail_the_build() {
    let server = S3Server::start();
    let proxy = Proxy::start(&server.endpoint, Mode::Reset);
    let mut project = GoProject::new("s3-reset");
    project.args = s3_args(&proxy.endpoint, "reset");
    project.env = credentials(SECRET_KEY);
    let build = project.go(&["test", "./..."]);
    assert!(build.stdout().contains("ok  \texample.com/e2e/report"));
    assert!(build.stat("remote.errors") >= 1, "{:?}", build.stats);
    assert_eq!(build.stat("remote.hits"), 0);
}

/// Through a link with 20 ms of round trip, a fresh machine still gets everything.
#[test]
fn a_slow_link_still_serves_a_fresh_machine() {
    let server = S3Server::start();
    let proxy = Proxy::start(&server.endpoint, Mode::Delay(Duration::from_millis(20)));
    let mut project = warmed(&server, "slow");
    project.args = s3_args(&proxy.endpoint, "slow");
    let build = project.build_on_fresh_machine("slow-b");
    assert_eq!(build.stat("remote.errors"), 0, "{:?}", build.stats);
    proxy.set_mode(Mode::Reset);
    project.switch_machine("slow-c");
    let build = project.go(&["build", "./..."]);
    assert_eq!(build.stat("remote.hits"), 0);
}

/// A fresh machine builds from a bucket in an S3 server of another implementation than the
/// in-process one (moto, from PyPI): `scripts/test-external-s3.sh` starts it, creates the
/// bucket, and runs this test with GOREMOTECACHE_TEST_S3_ENDPOINT, GOREMOTECACHE_TEST_S3_BUCKET
/// and the server's credentials in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.
#[test]
#[ignore = "needs an external S3 server: run scripts/test-external-s3.sh"]
fn an_external_s3_server_serves_a_fresh_machine() {
    let endpoint = std::env::var("GOREMOTECACHE_TEST_S3_ENDPOINT")
        .expect("GOREMOTECACHE_TEST_S3_ENDPOINT names the external S3 server");
    let bucket = std::env::var("GOREMOTECACHE_TEST_S3_BUCKET").unwrap_or_else(|_| "gocache".into());
    let prefix = format!("external-{}", std::process::id());
    let mut project = GoProject::new("s3-external");
    project.args =
        support::s3::with_prefetch(support::s3::bucket_args(&bucket, &endpoint, &prefix));
    warm_the_bucket(&project);
    project.build_on_fresh_machine("external-b");
    project.assert_tests_cached();
}

/// The warnings that a build printed about the remote cache.
fn remote_warnings(build: &support::GoRun) -> Vec<String> {
    build
        .stderr()
        .lines()
        .filter(|l| l.contains("remote cache"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn missing_credentials_cost_one_clear_warning() {
    let server = S3Server::start();
    let mut project = project("s3-no-credentials", &server, "nocreds");
    project.env = vec![
        ("AWS_ACCESS_KEY_ID".into(), String::new()),
        ("AWS_SECRET_ACCESS_KEY".into(), String::new()),
        (
            "AWS_CONFIG_FILE".into(),
            "/nonexistent/goremotecache-test".into(),
        ),
        (
            "AWS_SHARED_CREDENTIALS_FILE".into(),
            "/nonexistent/goremotecache-test".into(),
        ),
        ("AWS_WEB_IDENTITY_TOKEN_FILE".into(), String::new()),
        ("HOME".into(), project.root.path().to_str().unwrap().into()),
    ];
    let build = project.go(&["build", "./..."]);
    let warnings = remote_warnings(&build);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("no usable AWS credentials"),
        "{warnings:?}"
    );
    assert!(
        warnings[0].len() < 600,
        "the warning is a wall of text: {}",
        warnings[0]
    );
    assert_eq!(server.count("GET") + server.count("PUT"), 0);
}

#[test]
fn a_missing_bucket_costs_one_warning() {
    let server = S3Server::start();
    let mut project = project("s3-no-bucket", &server, "nobucket");
    let at = project
        .args
        .iter()
        .position(|a| a == "--s3-bucket")
        .unwrap();
    project.args[at + 1] = "no-such-bucket".into();
    let build = project.go(&["build", "./..."]);
    let warnings = remote_warnings(&build);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("s3://no-such-bucket"), "{warnings:?}");
    let warm = project.go(&["build", "-x", "./..."]);
    assert_eq!(
        warm.compiles(),
        Vec::<String>::new(),
        "the local cache did not work"
    );
}

/// A small zstd frame can claim, or decode to, gigabytes. An entry whose header says more than
/// `--max-entry-size` is a miss before its body is downloaded; one whose body decodes past
/// its header's size is a miss that stores nothing.
#[test]
fn entries_that_decode_past_the_bound_are_misses() {
    use goremotecache::ids::OutputId;
    use goremotecache::store::format::{FLAG_ZSTD, Header};
    use std::io::Read;
    use support::{action, pseudo_random};

    let server = S3Server::start();
    let writer_dir = tempfile::tempdir().unwrap();
    let args = server.args("bounds");
    let mut writer = support::s3_client(writer_dir.path(), args.clone(), &[]);
    for n in 1..=3 {
        writer.put(i64::from(n), action(n), b"small");
        assert!(writer.read().unwrap()["Err"].is_null());
    }
    writer.close(4);
    let file_of = |n: u32| {
        let hex = action(n).to_hex();
        server
            .entry_files()
            .into_iter()
            .find(|f| f.ends_with(&hex))
            .unwrap_or_else(|| panic!("no entry file for {hex}"))
    };
    let header = |flags, size| Header {
        flags,
        output_id: OutputId([7; 32]),
        size,
        time: std::time::SystemTime::now(),
    };
    // 1: a header that claims 1 GiB, before 8 MiB of body that would not be read.
    let mut claims_a_lot = header(0, 1 << 30).encode().to_vec();
    claims_a_lot.extend(pseudo_random(3, 8 << 20));
    std::fs::write(file_of(1), &claims_a_lot).unwrap();
    // 2: a header that says 1 KiB before a frame that decodes to 64 MiB.
    let mut bomb = header(FLAG_ZSTD, 1024).encode().to_vec();
    zstd::stream::copy_encode(std::io::repeat(0).take(64 << 20), &mut bomb, 1).unwrap();
    assert!(bomb.len() < 64 << 10, "{}", bomb.len());
    std::fs::write(file_of(2), &bomb).unwrap();

    let reader_dir = tempfile::tempdir().unwrap();
    let stats = reader_dir.path().join("stats.json");
    let mut reader = support::s3_client(
        reader_dir.path(),
        args,
        &["--stats-file", stats.to_str().unwrap()],
    );
    for n in 1..=3 {
        reader.get(i64::from(n), action(n));
        let answer = reader.read().unwrap();
        assert_eq!(answer["Miss"] == true, n != 3, "entry {n}: {answer}");
    }
    reader.close(4);
    let stats: serde_json::Value = serde_json::from_slice(&std::fs::read(&stats).unwrap()).unwrap();
    let down = stats["remote"]["bytes_down"].as_u64().unwrap();
    assert!(
        down < 4 << 20,
        "{down} bytes downloaded: the oversized entry's body was read"
    );
    assert_eq!(stats["remote"]["hits"], 1, "{stats}");
    assert_eq!(stats["remote"]["corrupt"], 1, "{stats}");
    let mut stored = 0;
    for entry in walk(&reader_dir.path().join("cache")) {
        stored += std::fs::metadata(entry).unwrap().len();
    }
    assert!(stored < 64 << 10, "{stored} bytes stored in the cache");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
