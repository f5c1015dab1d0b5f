//! What doctor checks before it asks the store anything: the configuration in words, the
//! local cache directory, and where each backend's credentials come from (never the secret).
//! [`about`] is one of the two matches on the backend (the other is `probe::probe_store`).

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use crate::config::{DoctorConfig, StoreConfig};
use crate::store::RemoteMode;
use crate::store::azblob::{self, AzblobConfig};
use crate::store::gcs::GcsConfig;

use super::{Check, fail, pass};

/// What doctor says about one backend: its name, its settings in words, its connect bound
/// and where its credentials come from (without the secret). With `probe::probe_store`, the only
/// code that depends on the backend: a new backend adds an arm to each.
pub(super) struct About {
    pub(super) name: &'static str,
    pub(super) settings: String,
    pub(super) connect_timeout: Duration,
    pub(super) credentials: Check,
}

pub(super) fn about(store: &StoreConfig) -> About {
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
pub(super) fn configuration(config: &DoctorConfig) -> Check {
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
pub(super) fn cache_dir(config: &DoctorConfig) -> Check {
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
