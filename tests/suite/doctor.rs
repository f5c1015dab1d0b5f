//! `goremotecache doctor` as a running binary: against a working in-process S3 server, a wrong
//! secret, an endpoint where nothing listens, credentials without s3:ListBucket, an HTTP
//! server with a read-only token (in both remote modes), and no remote store at all. Each
//! checks the exit status and what the report says, through `--json` and the text.

use std::process::Command;

use serde_json::Value;

use crate::serve::{RO, Server};
use crate::support::bin;
use crate::support::s3::{BUCKET, Fault, S3Server, SECRET_KEY, bucket_args, credentials};

/// Runs `doctor` with `args` (cache and lock directories of its own) and `env`; returns the
/// exit code, stdout and stderr.
fn doctor(args: &[String], env: &[(String, String)]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(bin());
    command
        .arg("doctor")
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .arg("--lock-dir")
        .arg(dir.path().join("locks"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)));
    let out = command.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(args: &[String], env: &[(String, String)]) -> (i32, Value) {
    let mut args = args.to_vec();
    args.push("--json".into());
    let (code, stdout, stderr) = doctor(&args, env);
    let value = serde_json::from_str(&stdout)
        .unwrap_or_else(|err| panic!("not one JSON object ({err}): {stdout}\n{stderr}"));
    (code, value)
}

/// The check named `name`.
fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name:?} in {report}"))
}

fn s3(server: &S3Server, prefix: &str) -> Vec<String> {
    bucket_args(BUCKET, &server.endpoint, prefix)
}

#[test]
fn a_working_bucket_passes_with_figures_and_leaves_nothing() {
    let server = S3Server::start();
    let (code, report) = json(&s3(&server, "doc"), &credentials(SECRET_KEY));
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["ok"], true);
    assert_eq!(report["backend"], "s3");
    for name in [
        "configuration",
        "cache directory",
        "credentials",
        "reachable",
        "write",
        "read",
        "missing keys are misses",
        "latency",
        "throughput",
        "delete",
    ] {
        assert_eq!(check(&report, name)["ok"], true, "{name}: {report:#}");
    }
    let found = check(&report, "credentials")["detail"].as_str().unwrap();
    assert!(found.contains("AWS_ACCESS_KEY_ID (AKID…ACHE)"), "{found}");
    assert!(!found.contains(SECRET_KEY), "{found}");
    let figures = &report["figures"];
    let median = figures["latency_median_ms"].as_f64().unwrap();
    let p90 = figures["latency_p90_ms"].as_f64().unwrap();
    assert!(median > 0.0 && p90 >= median, "{figures}");
    assert_eq!(figures["latency_of"], "probe entry");
    assert!(
        figures["throughput_mib_s"].as_f64().unwrap() > 0.0,
        "{figures}"
    );
    let estimate = &figures["estimate"];
    assert_eq!(estimate["packages"], 1000);
    assert_eq!(estimate["prefetch_concurrency"], 32);
    assert!(
        estimate["without_prefetch_s"].as_f64().unwrap() > 0.0,
        "{estimate}"
    );
    // Asked after the probes are deleted: an empty prefix, whose misses are all instant.
    let filter = check(&report, "key filter");
    assert_eq!(filter["ok"], true, "{report:#}");
    assert!(
        (filter["detail"].as_str().unwrap()).contains("the store holds no entries yet"),
        "{filter}"
    );
    // The probes were deleted: nothing is left in the bucket.
    assert_eq!(server.entry_files(), Vec::<std::path::PathBuf>::new());
    // 1 missing-key read, 1 probe read, 20 timed reads, 1 large read.
    assert_eq!(server.count("GET"), 23);

    let (code, text, _) = doctor(&s3(&server, "doc"), &credentials(SECRET_KEY));
    println!("{text}");
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("ok   latency: 20 small reads: median "),
        "{text}"
    );
    assert!(
        text.contains("ms per request, a warm build of 1,000 packages spends about"),
        "{text}"
    );
    assert!(text.contains("waiting without prefetch"), "{text}");
    assert!(text.contains("with prefetch (32 gets at once"), "{text}");
    assert!(
        text.contains("the remote store s3://gocache/doc works"),
        "{text}"
    );
}

#[test]
fn a_wrong_secret_fails_and_names_the_secret() {
    let server = S3Server::start();
    let (code, report) = json(&s3(&server, "doc"), &credentials("not-the-secret"));
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["ok"], false);
    let reachable = check(&report, "reachable");
    assert_eq!(reachable["ok"], false);
    let detail = reachable["detail"].as_str().unwrap();
    assert!(
        detail.contains("the secret access key is wrong (SignatureDoesNotMatch)"),
        "{detail}"
    );
    assert!(
        reachable["fix"]
            .as_str()
            .unwrap()
            .contains("AWS_SECRET_ACCESS_KEY"),
        "{reachable}"
    );
    assert_eq!(server.count("PUT"), 0);
}

#[test]
fn an_unreachable_endpoint_fails_with_the_endpoint_named() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let args = bucket_args(BUCKET, &endpoint, "doc");
    let (code, report) = json(&args, &credentials(SECRET_KEY));
    assert_eq!(code, 1, "{report:#}");
    let reachable = check(&report, "reachable");
    assert_eq!(reachable["ok"], false);
    assert!(
        reachable["detail"].as_str().unwrap().contains(&format!(
            "nothing listens at {endpoint} (connection refused)"
        )),
        "{reachable}"
    );
    // It stops there: no figures.
    assert!(report["figures"]["latency_median_ms"].is_null());
}

#[test]
fn credentials_without_list_bucket_are_caught() {
    let server = S3Server::start();
    server.set_fault(Fault::DenyMissing);
    let (code, report) = json(&s3(&server, "doc"), &credentials(SECRET_KEY));
    assert_eq!(code, 1, "{report:#}");
    let trap = check(&report, "missing keys are misses");
    assert_eq!(trap["ok"], false, "{report:#}");
    assert!(
        trap["detail"].as_str().unwrap().contains("s3:ListBucket"),
        "{trap}"
    );
    assert!(
        trap["fix"]
            .as_str()
            .unwrap()
            .contains("grant s3:ListBucket on the bucket"),
        "{trap}"
    );
    // The probe itself could be written and read.
    assert_eq!(check(&report, "write")["ok"], true);
    assert_eq!(check(&report, "read")["ok"], true);
}

#[test]
fn a_read_only_token_passes_reads_and_fails_the_write_unless_the_mode_says_so() {
    let (server, _storage) = Server::on_disk(&[]);
    let args: Vec<String> = ["--http-url", &server.url(), "--http-token", RO]
        .iter()
        .map(|s| s.to_string())
        .collect();
    println!("{}", doctor(&args, &[]).1);
    let (code, report) = json(&args, &[]);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(check(&report, "reachable")["ok"], true);
    let write = check(&report, "write");
    assert_eq!(write["ok"], false);
    assert!(
        write["detail"].as_str().unwrap().contains("may only read"),
        "{write}"
    );
    assert!(
        write["fix"]
            .as_str()
            .unwrap()
            .contains("--remote-mode read-only"),
        "{write}"
    );
    assert_eq!(check(&report, "latency")["ok"], true);
    assert_eq!(report["figures"]["latency_of"], "missing key");
    let credentials = check(&report, "credentials")["detail"].as_str().unwrap();
    assert!(
        credentials.contains("a bearer token is set"),
        "{credentials}"
    );
    assert!(!credentials.contains(RO), "{credentials}");

    // Read-only mode: the build never writes, so the token is enough.
    let mut read_only = args.clone();
    read_only.extend(["--remote-mode".into(), "read-only".into()]);
    let (code, report) = json(&read_only, &[]);
    assert_eq!(code, 0, "{report:#}");
    assert!(
        check(&report, "write")["detail"]
            .as_str()
            .unwrap()
            .contains("not tried"),
        "{report:#}"
    );
    // The server has batches: the estimate says so.
    assert_eq!(report["figures"]["estimate"]["batch"], 256);
}

#[test]
fn a_server_with_a_write_token_passes_and_says_what_it_left() {
    let (server, _storage) = Server::on_disk(&[]);
    let args: Vec<String> = [
        "--http-url",
        &server.url(),
        "--http-token",
        crate::serve::RW,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (code, report) = json(&args, &[]);
    assert_eq!(code, 0, "{report:#}");
    let delete = check(&report, "delete");
    assert_eq!(delete["required"], false);
    assert!(
        delete["detail"].as_str().unwrap().contains("no delete"),
        "{delete}"
    );
    assert!(report["figures"]["throughput_mib_s"].as_f64().is_some());
    // The server makes its key filter from its storage: the probes it kept are in it.
    let filter = check(&report, "key filter");
    assert_eq!(filter["ok"], true, "{report:#}");
    assert!(
        (filter["detail"].as_str().unwrap()).contains(" keys, made "),
        "{filter}"
    );
}

/// A prefix with entries and no key filter: every miss asks the store, which doctor reports
/// (without failing) with the fix.
#[test]
fn a_bucket_with_entries_and_no_key_filter_is_reported_with_the_fix() {
    let server = S3Server::start();
    let entry = server
        .bucket_dir()
        .join("nofilter/v1")
        .join("ab".repeat(32));
    std::fs::create_dir_all(entry.parent().unwrap()).unwrap();
    std::fs::write(&entry, b"an entry of an older build").unwrap();
    let (code, report) = json(&s3(&server, "nofilter"), &credentials(SECRET_KEY));
    assert_eq!(code, 0, "not required: {report:#}");
    assert_eq!(report["ok"], true, "{report:#}");
    let filter = check(&report, "key filter");
    assert_eq!(
        (&filter["ok"], &filter["required"]),
        (&false.into(), &false.into())
    );
    assert!(
        (filter["detail"].as_str().unwrap()).contains("has entries but no key filter"),
        "{filter}"
    );
    assert!(
        (filter["fix"].as_str().unwrap()).contains("gc-remote --yes"),
        "{filter}"
    );
}

#[test]
fn without_a_remote_store_it_checks_the_disk_and_passes() {
    let (code, text, stderr) = doctor(&[], &[]);
    assert_eq!(code, 0, "{text}{stderr}");
    assert!(
        text.contains("no remote store: the local disk only"),
        "{text}"
    );
    assert!(text.contains("ok   cache directory"), "{text}");
}

#[test]
fn a_bad_option_is_exit_status_2() {
    let args: Vec<String> = ["--s3-bucket", "b", "--s3-endpoint", "not-a-url"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let (code, _, stderr) = doctor(&args, &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--s3-endpoint"), "{stderr}");
}

/// The same checks on Azure Blob (Azurite): the right key passes every check with figures and
/// says where the key came from; a wrong key fails the reachability check with the Azure
/// sentence.
#[test]
fn an_azure_container_is_checked_like_a_bucket() {
    use crate::support::emulators::{AZURE_ACCOUNT, AZURE_CONTAINER, AZURE_KEY, Emulator};
    let emulator = Emulator::azurite();
    let args: Vec<String> = [
        "--backend",
        "azblob",
        "--azblob-container",
        AZURE_CONTAINER,
        "--azblob-prefix",
        "doc",
        "--azblob-account",
        AZURE_ACCOUNT,
        "--azblob-endpoint",
        &emulator.endpoint,
    ]
    .map(String::from)
    .to_vec();
    let key = |key: &str| vec![("AZURE_STORAGE_KEY".to_string(), key.to_string())];

    let (code, report) = json(&args, &key(AZURE_KEY));
    assert_eq!(code, 0, "{report:#}");
    assert!(
        check(&report, "configuration")["detail"]
            .as_str()
            .unwrap()
            .starts_with("backend azblob: container gocache, prefix doc"),
        "{report:#}"
    );
    assert!(
        check(&report, "credentials")["detail"]
            .as_str()
            .unwrap()
            .contains("AZURE_STORAGE_KEY"),
        "{report:#}"
    );
    for name in [
        "reachable",
        "write",
        "read",
        "missing keys are misses",
        "delete",
    ] {
        assert_eq!(check(&report, name)["ok"], true, "{name}: {report:#}");
    }
    assert!(
        report["figures"]["latency_median_ms"].is_number(),
        "{report:#}"
    );

    // Valid base64, not the account's key.
    let wrong = "bm90LXRoZS1rZXktbm90LXRoZS1rZXktbm90LXRoZS1rZXk=";
    let (code, report) = json(&args, &key(wrong));
    assert_eq!(code, 1, "{report:#}");
    let reachable = check(&report, "reachable");
    assert_eq!(reachable["ok"], false, "{report:#}");
    assert!(
        reachable["fix"]
            .as_str()
            .unwrap()
            .contains("AZURE_STORAGE_KEY"),
        "{reachable}"
    );
}
