//! `goremotecache doctor`: checks, with the options a build would use, whether the remote
//! store works and whether it pays off, and says each problem with its fix (docs/doctor.md).
//!
//! The checks run in order, each on what the ones before established: the configuration;
//! the local cache directory; the credentials found and where from; the store reachable (a
//! read of a key that cannot exist, which must be a miss); a probe entry written, read back
//! and deleted; the latency of 20 small reads and the throughput of one 8 MiB read; and from
//! those figures an estimate of what the latency costs a warm build with and without
//! prefetch. The probe entries are valid entries under keys no build asks for.
//!
//! Everything about the store goes through [`RemoteStore`] (unwrapped by the circuit breaker
//! and retries, so that each failure is seen as it is, but bounded by `--remote-timeout`).
//! What depends on the backend is small and in two matches: `probe_store` (the store, and
//! how to delete the probes if the backend can) and `about` (its name, its settings in
//! words, and where its credentials come from, described without the secret). A new backend
//! adds an arm to each.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::{DoctorConfig, RemoteConfig, StoreConfig};
use crate::ids::{ActionId, OutputId};
use crate::store::azblob::{self, AzblobConfig};
use crate::store::filter::KeyFilter;
use crate::store::format::{self, Header};
use crate::store::gcs::GcsConfig;
use crate::store::http::HttpStore;
use crate::store::inventory::Inventory;
use crate::store::timeout::Timeout;
use crate::store::{PutOutcome, RemoteError, RemoteMode, RemoteStore, Upload, entry_key};

/// Small reads timed for the latency figures.
pub const SAMPLES: usize = 20;
/// The size of the probe read for the throughput figure.
pub const LARGE: usize = 8 << 20;
/// The warm build of the estimate: packages, one remote entry each.
pub const PACKAGES: u64 = 1000;
/// The mean entry size the estimate assumes (a compiled package's archive).
pub const ENTRY_BYTES: u64 = 200 << 10;

/// One check: what was looked at, whether it is fine, and if not, what to do.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    /// Whether the exit status depends on it (a delete, say, is only reported).
    pub required: bool,
    pub detail: String,
    pub fix: Option<String>,
}

/// The measured figures and the estimate drawn from them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Figures {
    pub latency_median_ms: Option<f64>,
    pub latency_p90_ms: Option<f64>,
    /// What the latency reads read: `probe entry` or `missing key`.
    pub latency_of: Option<&'static str>,
    pub throughput_mib_s: Option<f64>,
    pub estimate: Option<Estimate>,
}

/// What the latency costs a warm build of [`PACKAGES`] packages (see docs/doctor.md).
#[derive(Debug, Clone, Serialize)]
pub struct Estimate {
    pub packages: u64,
    pub entry_bytes: u64,
    pub without_prefetch_s: f64,
    pub with_prefetch_s: f64,
    pub prefetch_concurrency: usize,
    /// Entries per prefetch request (1: one get each; a server's batches take up to 256).
    pub batch: usize,
    pub prefetch_on: bool,
}

/// Everything doctor found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub ok: bool,
    pub backend: &'static str,
    pub location: Option<String>,
    pub mode: Option<RemoteMode>,
    pub checks: Vec<Check>,
    pub figures: Figures,
}

impl Report {
    fn push(&mut self, check: Check) {
        self.checks.push(check);
    }
}

fn pass(name: &'static str, detail: impl Into<String>) -> Check {
    Check {
        name,
        ok: true,
        required: true,
        detail: detail.into(),
        fix: None,
    }
}

fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        name,
        ok: false,
        required: true,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

/// Runs every check. Call it inside a tokio runtime.
pub async fn run(config: &DoctorConfig) -> Report {
    let build = &config.build;
    let mut report = Report {
        ok: true,
        backend: "disk",
        location: None,
        mode: build.remote.as_ref().map(|r| r.mode),
        checks: Vec::new(),
        figures: Figures::default(),
    };
    report.push(configuration(config));
    report.push(cache_dir(config));
    if let Some(remote) = &build.remote {
        report.backend = about(&remote.store).name;
        remote_checks(remote, config, &mut report).await;
    }
    report.ok = report.checks.iter().all(|c| c.ok || !c.required);
    report
}

/// What doctor says about one backend: its name, its settings in words, its connect bound
/// and where its credentials come from (without the secret). With [`probe_store`], the only
/// code that depends on the backend: a new backend adds an arm to each.
struct About {
    name: &'static str,
    settings: String,
    connect_timeout: Duration,
    credentials: Check,
}

fn about(store: &StoreConfig) -> About {
    match store {
        StoreConfig::S3(s3) => {
            let mut text = format!("backend s3: bucket {}", s3.bucket);
            if !s3.prefix.is_empty() {
                let _ = write!(text, ", prefix {}", s3.prefix);
            }
            match &s3.endpoint {
                Some(endpoint) => {
                    let _ = write!(text, ", endpoint {endpoint}");
                }
                None => text.push_str(", AWS"),
            }
            let _ = write!(
                text,
                ", region {}",
                s3.region
                    .as_deref()
                    .unwrap_or("from AWS_REGION, else us-east-1")
            );
            if s3.force_path_style {
                text.push_str(", path-style");
            }
            About {
                name: "s3",
                settings: text,
                connect_timeout: s3.connect_timeout,
                credentials: s3_credentials(s3.static_credentials.is_some(), s3.instance_metadata),
            }
        }
        StoreConfig::Gcs(gcs) => About {
            name: "gcs",
            settings: format!(
                "backend gcs: bucket {}{}, {}",
                gcs.bucket,
                prefix_words(&gcs.prefix),
                gcs.endpoint
                    .as_deref()
                    .map_or("Google".to_string(), |e| format!("endpoint {e}"))
            ),
            connect_timeout: gcs.connect_timeout,
            credentials: gcs_credentials(gcs),
        },
        StoreConfig::Azblob(az) => About {
            name: "azblob",
            settings: format!(
                "backend azblob: container {}{}, account {}, {}",
                az.container,
                prefix_words(&az.prefix),
                az.account
                    .as_deref()
                    .unwrap_or("from the connection string"),
                az.endpoint.as_deref().map_or(
                    "endpoint ACCOUNT.blob.core.windows.net".to_string(),
                    |e| format!("endpoint {e}")
                )
            ),
            connect_timeout: az.connect_timeout,
            credentials: azblob_credentials(az),
        },
        StoreConfig::Http(http) => {
            let mut text = format!("backend http: server {}", http.url);
            if let Some(ca) = &http.ca_file {
                let _ = write!(text, ", CA file {}", ca.display());
            }
            let credentials = match &http.token {
                Some(token) => pass(
                    "credentials",
                    format!(
                        "a bearer token is set (--http-token or GOREMOTECACHE_HTTP_TOKEN, {} characters)",
                        token.chars().count()
                    ),
                ),
                None => pass(
                    "credentials",
                    "no token: only a server started with --allow-anonymous-read answers, and only reads",
                ),
            };
            About {
                name: "http",
                settings: text,
                connect_timeout: http.connect_timeout,
                credentials,
            }
        }
    }
}

/// `, prefix P`, or nothing for no prefix.
fn prefix_words(prefix: &str) -> String {
    match prefix {
        "" => String::new(),
        prefix => format!(", prefix {prefix}"),
    }
}

/// Where GCS credentials come from: none with `--gcs-anonymous`; else the key file of
/// GOOGLE_APPLICATION_CREDENTIALS, gcloud's application-default file, or (on Google Cloud
/// only) the VM's metadata server, in that order.
fn gcs_credentials(gcs: &GcsConfig) -> Check {
    if gcs.anonymous {
        return pass(
            "credentials",
            "none: --gcs-anonymous sends unsigned requests (an emulator, or a public bucket)",
        );
    }
    let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    if let Some(path) = std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS").filter(|v| !v.is_empty())
    {
        let path = Path::new(&path);
        return match path.is_file() {
            true => pass(
                "credentials",
                format!("GOOGLE_APPLICATION_CREDENTIALS ({})", path.display()),
            ),
            false => fail(
                "credentials",
                format!(
                    "GOOGLE_APPLICATION_CREDENTIALS names {}, which is not a file",
                    path.display()
                ),
                "point GOOGLE_APPLICATION_CREDENTIALS at a service account key file",
            ),
        };
    }
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
    let gcloud = match std::env::var_os("CLOUDSDK_CONFIG").filter(|v| !v.is_empty()) {
        Some(dir) => Some(std::path::PathBuf::from(dir)),
        None => home.map(|home| home.join(".config/gcloud")),
    }
    .map(|dir| dir.join("application_default_credentials.json"));
    match gcloud.filter(|file| file.is_file()) {
        Some(file) => pass(
            "credentials",
            format!(
                "gcloud's application-default credentials ({})",
                file.display()
            ),
        ),
        None if set("GCE_METADATA_HOST") => pass(
            "credentials",
            "none in files or variables: the metadata server of GCE_METADATA_HOST is asked",
        ),
        None => pass(
            "credentials",
            "none in files or variables: only the metadata server of a Google Cloud VM can give \
             some (off Google Cloud, set GOOGLE_APPLICATION_CREDENTIALS; the reachability check \
             below tells)",
        ),
    }
}

/// Where Azure credentials come from, in the order they are used.
fn azblob_credentials(az: &AzblobConfig) -> Check {
    let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    let found = if az.static_key.is_some() {
        "a fixed account key"
    } else if set(azblob::CONNECTION_STRING) {
        "AZURE_STORAGE_CONNECTION_STRING"
    } else if set(azblob::ACCOUNT_KEY) {
        "AZURE_STORAGE_KEY, with the account"
    } else if set(azblob::SAS_TOKEN) {
        "AZURE_STORAGE_SAS_TOKEN"
    } else {
        return pass(
            "credentials",
            "none of AZURE_STORAGE_CONNECTION_STRING, AZURE_STORAGE_KEY or \
             AZURE_STORAGE_SAS_TOKEN: Azure's default chain (a managed identity, workload \
             identity) is asked; the reachability check below tells",
        );
    };
    pass("credentials", found)
}

/// What the options say, in words.
fn configuration(config: &DoctorConfig) -> Check {
    let build = &config.build;
    let Some(remote) = &build.remote else {
        return pass(
            "configuration",
            format!(
                "no remote store: the local disk only ({}); set --s3-bucket or --http-url to share results between machines",
                build.dirs.cache_dir.display()
            ),
        );
    };
    let about = about(&remote.store);
    let mut detail = about.settings;
    let namespaces = &remote.namespaces;
    match &namespaces.own {
        Some(own) => {
            let _ = write!(detail, "; namespace {own}");
        }
        None => detail.push_str("; no namespace"),
    }
    if !namespaces.reads.is_empty() {
        let reads: Vec<&str> = namespaces.reads.iter().map(|n| n.as_str()).collect();
        let _ = write!(detail, ", also reading {}", reads.join(", "));
    }
    let mode = match remote.mode {
        RemoteMode::ReadWrite => "read-write",
        RemoteMode::ReadOnly => "read-only",
        RemoteMode::WriteOnly => "write-only",
    };
    let _ = write!(detail, "; mode {mode}");
    match &remote.prefetch {
        Some(prefetch) => {
            let _ = write!(detail, "; prefetch on ({} at once)", prefetch.concurrency);
        }
        None => detail.push_str("; prefetch off"),
    }
    let _ = write!(
        detail,
        "; uploads {} at once, waiting up to {}; timeouts {} per request, {} to connect",
        remote.upload_concurrency,
        humantime::format_duration(remote.upload_wait),
        humantime::format_duration(remote.timeout),
        humantime::format_duration(about.connect_timeout),
    );
    let _ = write!(detail, "; local cache {}", build.dirs.cache_dir.display());
    pass("configuration", detail)
}

/// The local cache directory: trusted, and writable (or creatable).
fn cache_dir(config: &DoctorConfig) -> Check {
    let dirs = &config.build.dirs;
    let dir = &dirs.cache_dir;
    if let Err(err) = dirs.check(false) {
        return fail(
            "cache directory",
            err.to_string(),
            "make the directory yours with mode 0700 (chmod go-w), choose another --cache-dir, or --trust-cache-dir for a deliberate shared set-up",
        );
    }
    if !dir.exists() {
        let parent = nearest_existing(dir);
        return match writable(&parent) {
            Ok(()) => pass(
                "cache directory",
                format!(
                    "{} does not exist yet; the first build creates it",
                    dir.display()
                ),
            ),
            Err(err) => fail(
                "cache directory",
                format!(
                    "{} does not exist and cannot be created under {}: {}",
                    dir.display(),
                    parent.display(),
                    crate::fsutil::explain_io(&err)
                ),
                "choose a writable --cache-dir on a local file system",
            ),
        };
    }
    match writable(dir) {
        Ok(()) => pass("cache directory", format!("{} is writable", dir.display())),
        Err(err) => fail(
            "cache directory",
            format!(
                "cannot write in {}: {}",
                dir.display(),
                crate::fsutil::explain_io(&err)
            ),
            "free space or fix the permissions, or choose another --cache-dir",
        ),
    }
}

fn nearest_existing(dir: &Path) -> std::path::PathBuf {
    let mut at = dir;
    while !at.exists() {
        match at.parent() {
            Some(parent) => at = parent,
            None => break,
        }
    }
    at.to_path_buf()
}

fn writable(dir: &Path) -> std::io::Result<()> {
    tempfile::Builder::new()
        .prefix(".doctor-")
        .tempfile_in(dir)
        .map(drop)
}

fn set(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty())
}

/// A key ID shown as its first four and last four characters.
fn masked(name: &str) -> String {
    let id = std::env::var(name).unwrap_or_default();
    match id.len() {
        0..=8 => "…".into(),
        n => format!("{}…{}", &id[..4], &id[n - 4..]),
    }
}

fn s3_credentials(fixed: bool, instance_metadata: bool) -> Check {
    if fixed {
        return pass("credentials", "fixed in the configuration");
    }
    let mut found = Vec::new();
    let session = |prefix: &str| match set(&format!("{prefix}SESSION_TOKEN")) {
        true => ", with a session token",
        false => "",
    };
    if set("GOREMOTECACHE_AWS_ACCESS_KEY_ID") && set("GOREMOTECACHE_AWS_SECRET_ACCESS_KEY") {
        found.push(format!(
            "GOREMOTECACHE_AWS_ACCESS_KEY_ID ({}) and GOREMOTECACHE_AWS_SECRET_ACCESS_KEY{}, which take precedence over AWS_*",
            masked("GOREMOTECACHE_AWS_ACCESS_KEY_ID"),
            session("GOREMOTECACHE_AWS_")
        ));
    }
    if set("AWS_ACCESS_KEY_ID") && set("AWS_SECRET_ACCESS_KEY") {
        found.push(format!(
            "AWS_ACCESS_KEY_ID ({}) and AWS_SECRET_ACCESS_KEY{}",
            masked("AWS_ACCESS_KEY_ID"),
            session("AWS_")
        ));
    } else if set("AWS_ACCESS_KEY_ID") != set("AWS_SECRET_ACCESS_KEY") {
        return fail(
            "credentials",
            "only one of AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY is set",
            "set both, or neither (to use a profile or web identity)",
        );
    }
    if set("AWS_WEB_IDENTITY_TOKEN_FILE") && set("AWS_ROLE_ARN") {
        found.push("web identity (AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN)".into());
    }
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
    let shared = std::env::var_os("AWS_SHARED_CREDENTIALS_FILE")
        .map(std::path::PathBuf::from)
        .or_else(|| home.as_ref().map(|h| h.join(".aws/credentials")));
    let config = std::env::var_os("AWS_CONFIG_FILE")
        .map(std::path::PathBuf::from)
        .or_else(|| home.as_ref().map(|h| h.join(".aws/config")));
    let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
    for file in [shared, config].into_iter().flatten() {
        if file.is_file() {
            found.push(format!("profile {profile} in {}", file.display()));
        }
    }
    let metadata = match instance_metadata {
        true => "; the EC2 instance metadata service is asked last (--s3-instance-metadata)",
        false => "; the EC2 instance metadata service is not asked (--s3-instance-metadata is off)",
    };
    match found.is_empty() {
        true if instance_metadata => pass(
            "credentials",
            format!("none in the environment or files{metadata}"),
        ),
        true => fail(
            "credentials",
            format!(
                "none found: no AWS_* credential variables, no profile file, no web identity{metadata}"
            ),
            "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or GOREMOTECACHE_AWS_*), a profile, web identity, or --s3-instance-metadata on EC2",
        ),
        false => pass(
            "credentials",
            format!("found, in order of use: {}{metadata}", found.join("; ")),
        ),
    }
}

/// The store the probes use (the own namespace's, unwrapped but time-bounded), and the way
/// to delete probe keys if the backend has one. The other match on the backend, with
/// [`about`].
#[allow(clippy::type_complexity)]
fn probe_store(
    remote: &RemoteConfig,
) -> Result<(Box<dyn RemoteStore>, Option<Box<dyn Inventory>>), RemoteError> {
    let config = remote.store.in_namespace(remote.namespaces.own.as_ref());
    if let StoreConfig::Http(http) = &config {
        return Ok((
            Box::new(Timeout::new(HttpStore::new(http)?, remote.timeout)),
            None,
        ));
    }
    match config.objects() {
        Some(store) => {
            let store = store?;
            Ok((
                Box::new(Timeout::new(store.clone(), remote.timeout)),
                Some(Box::new(store)),
            ))
        }
        None => Err(RemoteError::Other(format!("no probe for {config:?}"))),
    }
}

/// A valid entry of `body` (uncompressed), as a build would upload it.
fn entry(body: &[u8]) -> Bytes {
    let header = Header {
        flags: 0,
        output_id: OutputId::of(body),
        size: body.len() as u64,
        time: SystemTime::now(),
    };
    let mut out = Vec::with_capacity(body.len() + format::HEADER_LEN);
    format::write_entry(&header, &mut &body[..], &mut out).expect("writing to memory");
    Bytes::from(out)
}

/// A key for `what`: the same on every run where the probes cannot be deleted (so that they
/// are not piled up), else fresh each run (so that concurrent doctors do not meet).
fn probe_key(what: &str, fresh: bool) -> ActionId {
    let mut hash = Sha256::new();
    hash.update(b"goremotecache doctor probe ");
    hash.update(what.as_bytes());
    if fresh {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        hash.update(nanos.to_le_bytes());
        hash.update(std::process::id().to_le_bytes());
    }
    ActionId(hash.finalize().into())
}

/// Reads the entry of `key` whole: `None` for a miss.
async fn read_all(store: &dyn RemoteStore, key: &ActionId) -> Result<Option<Vec<u8>>, RemoteError> {
    let Some(mut stream) = store.get(key).await? else {
        return Ok(None);
    };
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(Some(out))
}

async fn remote_checks(remote: &RemoteConfig, config: &DoctorConfig, report: &mut Report) {
    report.push(about(&remote.store).credentials);
    let (store, deleter) = match probe_store(remote) {
        Ok(opened) => opened,
        Err(err) => {
            report.push(fail(
                "store",
                err.to_string(),
                "fix the options named above",
            ));
            return;
        }
    };
    let store = store.as_ref();
    report.location = Some(store.location());
    let reads = remote.mode != RemoteMode::WriteOnly;
    let writes = remote.mode != RemoteMode::ReadOnly;

    // Reachable: a key that cannot exist must be a miss.
    let missing = probe_key("missing", true);
    let started = Instant::now();
    let miss = read_all(store, &missing).await;
    let miss_took = started.elapsed();
    let trap_suspect = match &miss {
        Ok(None) => {
            report.push(pass(
                "reachable",
                format!(
                    "{} answered a read of a missing key with a miss in {}",
                    store.location(),
                    ms(miss_took)
                ),
            ));
            false
        }
        Ok(Some(_)) => {
            report.push(fail(
                "reachable",
                "a read of a key no one writes returned an entry",
                "check that the endpoint is an S3 store or a goremotecache server",
            ));
            return;
        }
        Err(RemoteError::Denied(why)) if why.contains("AccessDenied") => {
            // Decided once the probe has been read: the ListBucket trap, or no read at all.
            true
        }
        Err(err) => {
            let mut check = failure("reachable", "", err);
            check.required = reads || writes;
            report.push(check);
            return;
        }
    };

    // Write, read, delete a small probe entry.
    let body = b"goremotecache doctor probe: a valid entry under a key no build asks for\n";
    let small = probe_key("small", deleter.is_some());
    let small_entry = entry(body);
    let mut written = false;
    if writes {
        match store.put(&small, Upload::Bytes(small_entry.clone())).await {
            Ok(PutOutcome::Stored | PutOutcome::Exists) => {
                written = true;
                report.push(pass(
                    "write",
                    format!("wrote a probe entry ({} bytes)", small_entry.len()),
                ));
            }
            Ok(PutOutcome::Skipped) => report.push(fail(
                "write",
                "the token may only read: the server refused the probe entry (403)",
                "use a read-write token (--http-token), or --remote-mode read-only for builds that should not upload",
            )),
            Err(err) => report.push(failure("write", "writing the probe entry", &err)),
        }
    } else {
        report.push(pass(
            "write",
            "not tried: --remote-mode read-only never writes",
        ));
    }
    let mut probe_read = false;
    if written {
        match read_all(store, &small).await {
            Ok(Some(bytes)) if bytes == small_entry[..] || verifies(&bytes) => {
                probe_read = true;
                report.push(pass("read", "read the probe entry back, intact"));
            }
            Ok(Some(_)) => report.push(fail(
                "read",
                "the probe entry came back different from what was written",
                "check that nothing between here and the store rewrites objects (a proxy, a compressing gateway)",
            )),
            Ok(None) => report.push(fail(
                "read",
                "the probe entry just written is not there",
                "check that the store is not a caching proxy that drops writes, and --namespace",
            )),
            Err(err) => {
                let mut check = failure("read", "reading the probe entry", &err);
                check.required = reads;
                report.push(check);
            }
        }
    }
    if trap_suspect {
        let (detail, fix) = match probe_read {
            true => (
                "a read of a missing key is refused (403 AccessDenied) while the probe entry reads fine: \
                 the credentials lack s3:ListBucket, so S3 answers every miss with 403 and the cache \
                 would switch the store off at the first miss",
                "grant s3:ListBucket on the bucket (arn:aws:s3:::BUCKET, not BUCKET/*)",
            ),
            false => (
                "reads are refused (403 AccessDenied)",
                "grant s3:GetObject and s3:ListBucket on the bucket",
            ),
        };
        let mut check = fail("missing keys are misses", detail, fix);
        check.required = reads;
        report.push(check);
    } else if matches!(miss, Ok(None)) {
        report.push(pass(
            "missing keys are misses",
            "a read of a missing key is a miss (404), as the cache needs",
        ));
    }

    // Latency: 20 small reads, of the probe entry if there is one, else of the missing key.
    let sample_key = if probe_read { small } else { missing };
    if reads && !trap_suspect {
        let mut times = Vec::with_capacity(SAMPLES);
        let mut failed = None;
        for _ in 0..SAMPLES {
            let started = Instant::now();
            match read_all(store, &sample_key).await {
                Ok(_) => times.push(started.elapsed()),
                Err(err) => {
                    failed = Some(err);
                    break;
                }
            }
        }
        match failed {
            None => {
                times.sort();
                let median = times[SAMPLES / 2].as_secs_f64() * 1000.0;
                let p90 = times[SAMPLES * 9 / 10].as_secs_f64() * 1000.0;
                report.figures.latency_median_ms = Some(round2(median));
                report.figures.latency_p90_ms = Some(round2(p90));
                report.figures.latency_of = Some(match probe_read {
                    true => "probe entry",
                    false => "missing key",
                });
                report.push(pass(
                    "latency",
                    format!("{SAMPLES} small reads: median {median:.1} ms, p90 {p90:.1} ms"),
                ));
            }
            Some(err) => report.push(failure("latency", "a timed read failed", &err)),
        }
    }

    // Throughput: one 8 MiB entry, written, read back, deleted.
    let large = probe_key("large", deleter.is_some());
    let mut large_written = false;
    if written && reads {
        let body: Vec<u8> = (0..LARGE)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let large_entry = entry(&body);
        match store.put(&large, Upload::Bytes(large_entry.clone())).await {
            Ok(PutOutcome::Stored | PutOutcome::Exists) => {
                large_written = true;
                let started = Instant::now();
                match read_all(store, &large).await {
                    Ok(Some(bytes)) if bytes.len() == large_entry.len() => {
                        let took = started.elapsed().as_secs_f64().max(1e-6);
                        let rate = bytes.len() as f64 / took / f64::from(1u32 << 20);
                        report.figures.throughput_mib_s = Some(round2(rate));
                        report.push(pass(
                            "throughput",
                            format!(
                                "one 8 MiB read in {} ms: {rate:.1} MiB/s",
                                (took * 1000.0).round()
                            ),
                        ));
                    }
                    Ok(_) => report.push(fail(
                        "throughput",
                        "the 8 MiB probe entry came back incomplete",
                        "check the store's object size limits and any proxy in between",
                    )),
                    Err(err) => {
                        report.push(failure("throughput", "reading the 8 MiB probe entry", &err))
                    }
                }
            }
            Ok(PutOutcome::Skipped) => {}
            Err(err) => {
                let mut check = failure("throughput", "writing the 8 MiB probe entry", &err);
                // A store full for now refuses big writes: not a broken store.
                check.required = !matches!(err, RemoteError::Full(_));
                report.push(check);
            }
        }
    }

    // Delete what was written.
    let mut keys = Vec::new();
    if written {
        keys.push(small);
    }
    if large_written {
        keys.push(large);
    }
    if !keys.is_empty() {
        let listed: Vec<String> = keys.iter().map(entry_key).collect();
        let mut check = match &deleter {
            Some(deleter) => match deleter.delete(&listed).await {
                Ok(()) => pass(
                    "delete",
                    format!("deleted the probe entries ({})", listed.join(", ")),
                ),
                Err(err) => fail(
                    "delete",
                    format!("the probe entries are left ({}): {err}", listed.join(", ")),
                    "builds never delete, but gc-remote and clear-remote need s3:DeleteObject; delete the probes by hand or let a lifecycle rule expire them",
                ),
            },
            None => Check {
                name: "delete",
                ok: true,
                required: false,
                detail: format!(
                    "this backend has no delete: the probe entries are left on the server ({}; the same keys on every run), and its eviction removes them in time",
                    listed.join(", ")
                ),
                fix: None,
            },
        };
        check.required = false;
        report.push(check);
    }

    report.push(key_filter(store, remote).await);

    report.figures.estimate = estimate(
        &report.figures,
        remote,
        config.prefetch_concurrency,
        store.batch_limit(),
    );
}

/// The key filter that makes misses instant (docs/prefetch.md): its keys and age, or why
/// misses ask the store. Never required: without a filter builds work, only slower to miss.
async fn key_filter(store: &dyn RemoteStore, remote: &RemoteConfig) -> Check {
    const NAME: &str = "key filter";
    let off = match remote.instant_misses {
        Some(_) => "",
        None => " (instant misses are off here: --instant-misses=on uses it)",
    };
    let mut check = match store.get_filter().await {
        Ok(Some(bytes)) => match KeyFilter::decode(&bytes) {
            Ok(filter) if filter.is_empty() => pass(
                NAME,
                format!(
                    "the store holds no entries yet: the first build's misses are instant, and it begins the filter{off}"
                ),
            ),
            Ok(filter) => {
                let age = SystemTime::now()
                    .duration_since(filter.made())
                    .unwrap_or_default();
                pass(
                    NAME,
                    format!(
                        "{} keys, made {} ago: a miss of any other key is answered without asking the store{off}",
                        group(filter.len() as u64),
                        rough_age(age)
                    ),
                )
            }
            Err(err) => fail(
                NAME,
                format!("the stored key filter is unusable ({err}): every miss asks the store"),
                "run `goremotecache gc-remote --yes` to write a new one",
            ),
        },
        Ok(None) if store.clients_keep_filter() => fail(
            NAME,
            "none: the store has entries but no key filter, so every miss asks the store",
            "run `goremotecache gc-remote --yes` once to write it; builds keep it up to date after that",
        ),
        Ok(None) => pass(NAME, "this store keeps none: every miss asks it"),
        Err(err) => failure(NAME, "reading the key filter", &err),
    };
    check.required = false;
    check
}

/// Whether `bytes` is a well-formed entry whose body matches its header (a store may hand
/// back the same entry with another put time, when the probe existed already).
fn verifies(bytes: &[u8]) -> bool {
    let mut body = Vec::new();
    match format::read_entry(&mut &bytes[..], &mut body) {
        Ok(header) => header.output_id == OutputId::of(&body),
        Err(_) => false,
    }
}

/// The fix part of a store error: the sentence after its last `: ` (the explanations put
/// the fix there), else a pointer to --debug.
/// The explained sentence of `err` ([`crate::store::explain`]) split into its cause and its
/// fix, so that a check prints the fix once, on its own line.
fn cause_and_fix(err: &RemoteError) -> (String, String) {
    let text = err.to_string();
    match text.rsplit_once("): ") {
        Some((cause, fix)) => (format!("{cause})"), fix.to_string()),
        None => (
            text,
            "run again with --debug for the store's own answer".into(),
        ),
    }
}

/// A failed check for `err`, met while `doing` ("writing the probe entry", or nothing).
fn failure(name: &'static str, doing: &str, err: &RemoteError) -> Check {
    let (cause, fix) = cause_and_fix(err);
    match doing {
        "" => fail(name, cause, fix),
        doing => fail(name, format!("{doing}: {cause}"), fix),
    }
}

/// The model of docs/doctor.md: without prefetch each package's entry is one request the
/// go command waits for, one after another; with prefetch they go `concurrency` (or, with
/// batches, `concurrency / 8` batches) at once. Both add the bytes at the measured
/// throughput.
fn estimate(
    figures: &Figures,
    remote: &RemoteConfig,
    concurrency: usize,
    batch_limit: usize,
) -> Option<Estimate> {
    let latency = figures.latency_median_ms? / 1000.0;
    let (batch, in_flight) = match batch_limit {
        0 => (1, concurrency.max(1)),
        limit => (limit, (concurrency / 8).max(1)),
    };
    let requests = PACKAGES.div_ceil(batch as u64);
    let rounds = requests.div_ceil(in_flight as u64);
    let transfer = figures
        .throughput_mib_s
        .map(|rate| (PACKAGES * ENTRY_BYTES) as f64 / (rate * f64::from(1u32 << 20)))
        .unwrap_or(0.0);
    let without = PACKAGES as f64 * latency + transfer;
    Some(Estimate {
        packages: PACKAGES,
        entry_bytes: ENTRY_BYTES,
        without_prefetch_s: round2(without),
        with_prefetch_s: round2(rounds as f64 * latency + transfer),
        prefetch_concurrency: concurrency,
        batch,
        prefetch_on: remote.prefetch.is_some(),
    })
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// An age in the largest unit that keeps it at 2 or more: "45s", "10m", "3h", "12d".
fn rough_age(age: Duration) -> String {
    let secs = age.as_secs();
    match secs {
        0..120 => format!("{secs}s"),
        120..7_200 => format!("{}m", secs / 60),
        7_200..172_800 => format!("{}h", secs / 3_600),
        _ => format!("{}d", secs / 86_400),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for check in &self.checks {
            let mark = match (check.ok, check.required) {
                (true, _) => "ok  ",
                (false, true) => "FAIL",
                (false, false) => "warn",
            };
            writeln!(f, "{mark} {}: {}", check.name, check.detail)?;
            if let Some(fix) = &check.fix {
                writeln!(f, "     fix: {fix}")?;
            }
        }
        if let Some(estimate) = &self.figures.estimate {
            let latency = self.figures.latency_median_ms.unwrap_or_default();
            let latency = match latency < 10.0 {
                true => format!("{latency:.1}"),
                false => format!("{latency:.0}"),
            };
            writeln!(
                f,
                "\nat {latency} ms per request, a warm build of {} packages spends about {:.1} s waiting without prefetch,",
                group(estimate.packages),
                estimate.without_prefetch_s
            )?;
            let how = match estimate.batch {
                1 => format!("{} gets at once", estimate.prefetch_concurrency),
                n => format!(
                    "batches of up to {n}, {} at once",
                    (estimate.prefetch_concurrency / 8).max(1)
                ),
            };
            let throughput = match self.figures.throughput_mib_s {
                Some(rate) => format!(
                    "{} KiB entries at {rate:.0} MiB/s",
                    estimate.entry_bytes >> 10
                ),
                None => "transfer time not measured".into(),
            };
            writeln!(
                f,
                "and about {:.1} s with prefetch ({how}; {throughput}){}",
                estimate.with_prefetch_s,
                match estimate.prefetch_on {
                    true => "",
                    false => "; prefetch is off here: --prefetch=on turns it on",
                }
            )?;
        }
        let verdict = match (self.ok, self.location.as_deref()) {
            (true, Some(location)) => format!("\nthe remote store {location} works"),
            (true, None) => "\nno remote store: the local disk only".into(),
            (false, Some(location)) => {
                format!("\nthe remote store {location} does not work as configured: see FAIL above")
            }
            (false, None) => "\nthe local cache is not usable: see FAIL above".into(),
        };
        writeln!(f, "{verdict}")
    }
}

/// 1000 as `1,000`.
fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_follows_the_documented_model() {
        let figures = Figures {
            latency_median_ms: Some(34.0),
            throughput_mib_s: Some(100.0),
            ..Figures::default()
        };
        let remote = crate::config::Config::from_args(&test_args())
            .unwrap()
            .remote
            .unwrap();
        let gets = estimate(&figures, &remote, 32, 0).unwrap();
        // 1000 gets one after another, plus 1000 × 200 KiB at 100 MiB/s.
        let transfer = 1000.0 * 200.0 / 1024.0 / 100.0;
        assert_eq!(gets.without_prefetch_s, round2(34.0 + transfer));
        // 1000 gets, 32 at once: 32 rounds of 34 ms, plus the same bytes.
        assert_eq!(gets.with_prefetch_s, round2(32.0 * 0.034 + transfer));
        // Batches of 256, 4 at once: 4 requests, one round.
        let batches = estimate(&figures, &remote, 32, 256).unwrap();
        assert_eq!(batches.with_prefetch_s, round2(0.034 + transfer));
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(999), "999");
    }

    fn test_args() -> crate::config::MainArgs {
        crate::config::Cli::try_parse_args(["goremotecache", "--s3-bucket", "b"])
            .map(|cli| cli.main)
            .unwrap_or_else(|err| panic!("{err}"))
    }

    #[test]
    fn fixes_are_taken_from_the_explained_sentence() {
        let err = RemoteError::Config(
            "the bucket does not exist (NoSuchBucket): create it, or check --s3-bucket".into(),
        );
        assert_eq!(
            cause_and_fix(&err),
            (
                "not usable: the bucket does not exist (NoSuchBucket)".to_string(),
                "create it, or check --s3-bucket".to_string()
            )
        );
    }
}
