//! What a person reads when the remote store fails: the real binary, driven over its pipes as
//! the go command drives it, against a missing bucket, a wrong secret, an endpoint where
//! nothing listens, and an HTTP server that does not know the token. Stderr must carry one
//! sentence with the cause and the fix, never OpenDAL's raw error (`S3Error { ..
//! request_id .. }`); with `--debug` the raw error is there too.

use crate::serve::{RW, Server};
use crate::support::s3::{ACCESS_KEY, BUCKET, S3Server, SECRET_KEY, bucket_args, credentials};
use crate::support::{Client, action};

/// Runs a session with `store_args` (prefetch off) that asks for three missing entries (enough to switch
/// off a store that fails transiently) and closes; returns stderr.
fn session(store_args: &[String], env: &[(String, String)], debug: bool) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut args: Vec<String> = vec![
        "--cache-dir".into(),
        dir.path().join("cache").to_str().unwrap().into(),
        "--lock-dir".into(),
        dir.path().join("locks").to_str().unwrap().into(),
        "--trim=off".into(),
    ];
    args.extend(store_args.iter().cloned());
    if debug {
        args.push("--debug".into());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut client = Client::start_with(&args, &env);
    for n in 1..=3 {
        client.get(i64::from(n), action(n));
        let answer = client.read().unwrap();
        assert_eq!(answer["Miss"], true, "{answer}");
    }
    client.close(9)
}

/// The warnings about the remote cache.
fn warnings(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.contains("warning: remote cache"))
        .collect()
}

fn assert_plain(stderr: &str, sentence: &str) {
    let warnings = warnings(stderr);
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(warnings[0].contains(sentence), "{stderr}");
    for raw in ["S3Error {", "request_id", "context:", "Parts {"] {
        assert!(
            !stderr.contains(raw),
            "raw detail {raw:?} on stderr: {stderr}"
        );
    }
}

#[test]
fn a_missing_bucket_says_create_it_or_check_the_options() {
    let server = S3Server::start();
    let args = bucket_args("no-such-bucket", &server.endpoint, "m");
    let stderr = session(&args, &credentials(SECRET_KEY), false);
    assert_plain(
        &stderr,
        "remote cache s3://no-such-bucket/m: not usable: the bucket does not exist (NoSuchBucket): \
         create it, or check --s3-bucket and --s3-region",
    );
    let debug = session(&args, &credentials(SECRET_KEY), true);
    assert!(debug.contains("S3Error {"), "{debug}");
    assert!(debug.contains("NoSuchBucket"), "{debug}");
}

#[test]
fn a_wrong_secret_names_the_secret() {
    let server = S3Server::start();
    let args = bucket_args(BUCKET, &server.endpoint, "m");
    let stderr = session(&args, &credentials("not-the-secret"), false);
    assert_plain(
        &stderr,
        "access denied: the secret access key is wrong (SignatureDoesNotMatch): check \
         AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
    );
    let debug = session(&args, &credentials("not-the-secret"), true);
    assert!(debug.contains("SignatureDoesNotMatch"), "{debug}");
    assert!(debug.contains("request_id"), "{debug}");
}

#[test]
fn an_unknown_key_id_is_said_as_such() {
    let server = S3Server::start();
    let args = bucket_args(BUCKET, &server.endpoint, "m");
    let mut env = credentials(SECRET_KEY);
    env[0].1 = format!("{ACCESS_KEY}X");
    let stderr = session(&args, &env, false);
    assert_plain(&stderr, "the access key ID is not known to the store");
}

#[test]
fn an_unreachable_endpoint_names_it_and_the_option() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let args = bucket_args(BUCKET, &endpoint, "m");
    let stderr = session(&args, &credentials(SECRET_KEY), false);
    assert_plain(
        &stderr,
        &format!(
            "nothing listens at {endpoint} (connection refused): check --s3-endpoint and that \
             the server is running"
        ),
    );
    let debug = session(&args, &credentials(SECRET_KEY), true);
    assert!(debug.contains("send http request"), "{debug}");
}

#[test]
fn a_bad_http_token_says_which_option() {
    let (server, _storage) = Server::on_disk(&[]);
    let args: Vec<String> = [
        "--prefetch=off",
        "--http-url",
        &server.url(),
        "--http-token",
        "not-a-token-the-server-knows",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let stderr = session(&args, &[], false);
    assert_plain(
        &stderr,
        "access denied: the server refused the token (401: a valid bearer token is needed): set \
         --http-token (GOREMOTECACHE_HTTP_TOKEN) to a token the server knows",
    );
    let debug = session(&args, &[], true);
    assert!(debug.contains("HTTP store answered 401"), "{debug}");
}

#[test]
fn an_untrusted_certificate_points_at_the_ca_option() {
    let certs = tempfile::tempdir().unwrap();
    let (_ca, cert, key) = crate::support::make_certificates(certs.path());
    let storage = tempfile::tempdir().unwrap();
    let server = Server::start(
        &[
            "--storage-dir",
            storage.path().to_str().unwrap(),
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        &[],
    );
    let https = format!("https://{}", server.addr);
    let args: Vec<String> = ["--prefetch=off", "--http-url", &https, "--http-token", RW]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let stderr = session(&args, &[], false);
    assert_plain(
        &stderr,
        &format!(
            "the certificate of {https} is not trusted (unknown issuer): give the server's CA \
             with --http-ca-file"
        ),
    );
}

#[test]
fn server_errors_and_timeouts_say_so_and_name_the_option() {
    use crate::support::s3::Fault;
    let server = S3Server::start();
    let mut args = bucket_args(BUCKET, &server.endpoint, "m");
    // The bucket is empty: without this, its key filter answers the misses with no request.
    args.push("--instant-misses=off".into());
    server.set_fault(Fault::Status(503));
    let stderr = session(&args, &credentials(SECRET_KEY), false);
    assert_plain(
        &stderr,
        "3 failures in a row, the last: unavailable: the store failed on its side (HTTP 503): \
         nothing to fix here if it passes; if it lasts, check the store's health",
    );

    server.set_fault(Fault::DelayMs(5_000));
    let mut slow = args.clone();
    slow.extend(["--remote-timeout".into(), "300ms".into()]);
    let stderr = session(&slow, &credentials(SECRET_KEY), false);
    assert_plain(&stderr, "3 failures in a row, the last: unavailable: ");
    let warning = warnings(&stderr)[0];
    println!("{warning}");
    assert!(
        warning.contains("(timeout") && warning.contains("raise --remote-timeout"),
        "{warning}"
    );
}
