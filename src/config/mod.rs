//! The command line, validated: one configuration per command. The clap declarations are in
//! `flags` (each command takes only the option groups it uses); this module turns them into
//! [`Config`] for the main mode, the go command's cache, and into what each subcommand gets
//! ([`Run`]). The directory defaults and checks are in `dirs`.

mod daemon;
mod dirs;
mod flags;
mod goproxy;
mod push;
mod template;
mod values;

use std::path::PathBuf;
use std::time::Duration;

use crate::fsutil::{Links, UntrustedDir, private_dir};
use crate::local::trim::{KEEP_RECENT, TrimPolicy};
use crate::store::azblob::AzblobConfig;
use crate::store::gcs::GcsConfig;
use crate::store::http::HttpConfig;
use crate::store::s3::{S3Config, S3Credentials};

pub use self::daemon::{Control, ControlConfig, DaemonConfig, DaemonGoproxy};
pub use self::dirs::{DefaultBase, LocalDirs};
pub use self::flags::{
    AzblobArgs, Backend, ClearLocalArgs, ClearRemoteArgs, Cli, ClientArgs, Command, CommonArgs,
    DoctorCommand, GcRemoteArgs, GcsArgs, GoproxyArgs, LocalArgs, MainArgs, NamespaceArgs,
    NamespaceSelectionArgs, S3Args, ServeArgs, ServeCommand, ServeTimeouts, StoreArgs, TimeoutArgs,
    TrimArgs, TrimCommand,
};
pub use self::goproxy::GoproxyConfig;
pub use self::push::MetricsPush;
pub use self::values::{Fraction, MaxSize};
use crate::ids::Namespace;
pub use crate::store::namespace::{NamespacePlan, Selection};
pub use crate::store::{RemoteMode, StoreConfig};

/// What this run of goremotecache does, with the configuration it needs, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Run {
    /// The main mode: the go command's cache on stdin/stdout.
    Cache(Box<Config>),
    /// `serve`: the HTTP cache server.
    Serve(Box<ServeConfig>),
    /// `trim`.
    Trim(TrimConfig),
    /// `clear-local`.
    ClearLocal(ClearLocalConfig),
    /// `clear-remote`.
    ClearRemote(Box<ClearRemoteConfig>),
    /// `gc-remote`.
    GcRemote(Box<GcRemoteConfig>),
    /// `daemon`.
    Daemon(Box<DaemonConfig>),
    /// `connect`, `flush`, `status`, `warm`.
    Control(Box<ControlConfig>),
    /// `doctor`.
    Doctor(Box<DoctorConfig>),
    /// `version`.
    Version,
}

impl Run {
    /// Validates the parsed command line, filling in defaults.
    pub fn from_cli(cli: Cli) -> Result<Self, ConfigError> {
        Ok(match cli.command {
            None => Self::Cache(Box::new(Config::from_args(&cli.main)?)),
            Some(Command::Serve(serve)) => Self::Serve(Box::new(ServeConfig {
                s3: s3_config(&serve.s3, &serve.timeouts)?,
                debug: serve.common.debug,
                trust_cache_dir: serve.common.trust_cache_dir,
                goproxy: serve.serve.goproxy.then_some(serve.goproxy),
                args: serve.serve,
            })),
            Some(Command::Trim(trim)) => Self::Trim(TrimConfig {
                dirs: LocalDirs::from_args(&trim.local, &trim.common)?,
                policy: trim_policy(&trim.trim)?,
                dry_run: trim.dry_run,
                debug: trim.common.debug,
            }),
            Some(Command::ClearLocal(clear)) => Self::ClearLocal(ClearLocalConfig {
                dirs: LocalDirs::from_args(&clear.local, &clear.common)?,
                debug: clear.common.debug,
            }),
            Some(Command::ClearRemote(clear)) => Self::ClearRemote(Box::new(ClearRemoteConfig {
                store: store_config(&clear.store, &clear.s3, &clear.timeouts)?,
                namespaces: selection(&clear.namespaces)?,
                modules: clear.namespaces.modules,
                timeout: clear.timeouts.remote_timeout,
                yes: clear.yes,
                debug: clear.common.debug,
            })),
            Some(Command::GcRemote(gc)) => {
                Self::GcRemote(Box::new(GcRemoteConfig::from_args(&gc)?))
            }
            Some(Command::Daemon(daemon)) => {
                Self::Daemon(Box::new(DaemonConfig::from_args(&daemon)?))
            }
            Some(Command::Connect(args)) => {
                Self::Control(Box::new(ControlConfig::from_args(Control::Connect, &args)?))
            }
            Some(Command::Flush(args)) => {
                Self::Control(Box::new(ControlConfig::from_args(Control::Flush, &args)?))
            }
            Some(Command::Warm(args)) => {
                Self::Control(Box::new(ControlConfig::from_args(Control::Warm, &args)?))
            }
            Some(Command::Status(args)) => Self::Control(Box::new(ControlConfig::status(&args)?)),
            Some(Command::Doctor(doctor)) => Self::Doctor(Box::new(DoctorConfig {
                build: Config::from_args(&doctor.main)?,
                prefetch_concurrency: usize::from(doctor.main.client.prefetch_concurrency),
                json: doctor.json,
            })),
            Some(Command::Version) => Self::Version,
        })
    }

    /// Refuses the directories this run would use if someone else could write them (see
    /// [`LocalDirs::check`]); the main mode creates its own first. Runs before the go command
    /// is answered: a refusal is exit status 2.
    pub fn check_dirs(&self) -> Result<(), UntrustedDir> {
        match self {
            Self::Cache(config) => config.dirs.check(true),
            Self::Daemon(daemon) => daemon.build.dirs.check(true),
            Self::Control(control) => control
                .build
                .dirs
                .check(control.control == Control::Connect),
            Self::ClearLocal(clear) => clear.dirs.check(false),
            Self::Trim(trim) => trim.dirs.check(false),
            Self::Serve(serve) => serve.check_dirs(),
            // doctor reports an untrusted directory as a failed check, with its fix.
            Self::ClearRemote(_) | Self::GcRemote(_) | Self::Doctor(_) | Self::Version => Ok(()),
        }
    }
}

/// The main mode's options, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The cache and lock directories, as `clear-local` gets them too.
    pub dirs: LocalDirs,
    pub verify_hits: bool,
    pub debug: bool,
    pub stats: bool,
    pub stats_file: Option<PathBuf>,
    /// `--metrics-push-url` and its labels and headers.
    pub metrics_push: Option<MetricsPush>,
    /// `--step-summary`, else `GITHUB_STEP_SUMMARY`.
    pub step_summary: Option<PathBuf>,
    /// `--log-file`.
    pub log_file: Option<PathBuf>,
    /// The automatic trim after each session; `None`: `--trim=off`.
    pub trim: Option<TrimPolicy>,
    /// `None`: the local disk only.
    pub remote: Option<RemoteConfig>,
}

/// Prefetch settings ([`crate::cache::prefetch`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefetchConfig {
    /// `--prefetch-key`; `None`: the automatic key.
    pub key: Option<String>,
    pub concurrency: usize,
    pub max_bytes: u64,
    pub max_entries: usize,
}

/// The remote tier's settings, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteConfig {
    pub store: StoreConfig,
    /// `--namespace`, `--read-namespaces`.
    pub namespaces: NamespacePlan,
    pub mode: RemoteMode,
    /// `None`: prefetch is off.
    pub prefetch: Option<PrefetchConfig>,
    pub upload_wait: Duration,
    pub upload_concurrency: usize,
    pub upload_queue: usize,
    pub timeout: Duration,
    /// The largest decoded entry taken from the store (`--max-entry-size`).
    pub max_entry_size: u64,
    /// Outputs smaller than this are not uploaded (`--upload-min-size`).
    pub upload_min_size: u64,
    /// The share of requests failed on purpose (`--remote-fault-rate`).
    pub fault_rate: Fraction,
    /// How long a key filter is trusted (`--instant-miss-max-age`); `None`: instant misses
    /// are off (`--instant-misses=off`).
    pub instant_misses: Option<Duration>,
}

/// `--instant-miss-max-age`'s default (its flag says "10m").
pub const DEFAULT_INSTANT_MISS_AGE: Duration = Duration::from_secs(600);

/// `serve`'s options, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeConfig {
    pub args: ServeArgs,
    /// The S3 storage, if a bucket is named (else `--storage-dir`).
    pub s3: Option<S3Config>,
    pub debug: bool,
    pub trust_cache_dir: bool,
    /// The module proxy's options, with `--goproxy`.
    pub goproxy: Option<GoproxyArgs>,
}

impl ServeConfig {
    /// Refuses (creating it if missing) a storage directory that someone else could write,
    /// unless `--trust-cache-dir`.
    pub fn check_dirs(&self) -> Result<(), UntrustedDir> {
        match &self.args.storage_dir {
            Some(dir) if !self.trust_cache_dir => {
                private_dir(dir, "storage directory", Links::Follow)
            }
            _ => Ok(()),
        }
    }
}

/// `doctor`'s options, validated: the build's configuration, checked rather than used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DoctorConfig {
    pub build: Config,
    /// `--prefetch-concurrency`, for the estimate (also when `--prefetch=off`).
    pub prefetch_concurrency: usize,
    /// `--json`: one JSON object instead of the text report.
    pub json: bool,
}

/// `clear-local`'s options, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClearLocalConfig {
    pub dirs: LocalDirs,
    pub debug: bool,
}

/// `trim`'s options, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrimConfig {
    pub dirs: LocalDirs,
    pub policy: TrimPolicy,
    /// `--dry-run`: say what would be removed, remove nothing.
    pub dry_run: bool,
    pub debug: bool,
}

/// `clear-remote`'s options, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClearRemoteConfig {
    /// `None`: no remote store is named.
    pub store: Option<StoreConfig>,
    /// `--namespace`, `--all-namespaces`.
    pub namespaces: Selection,
    /// `--modules`: the module proxy's files too (a bucket or container only, like
    /// `--all-namespaces`).
    pub modules: bool,
    /// `--remote-timeout`, for each request.
    pub timeout: Duration,
    /// `--yes`: really delete.
    pub yes: bool,
    pub debug: bool,
}

/// `gc-remote`'s options, validated: it works on a bucket or container (S3, GCS, Azure
/// Blob), never on an HTTP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcRemoteConfig {
    /// Not [`StoreConfig::Http`].
    pub store: StoreConfig,
    /// `--namespace`, `--all-namespaces`.
    pub namespaces: Selection,
    /// `--modules`: collect the module proxy's files too.
    pub modules: bool,
    /// `--older-than`: longer than zero.
    pub older_than: Duration,
    /// `--yes`: really delete.
    pub yes: bool,
    pub debug: bool,
}

impl GcRemoteConfig {
    fn from_args(gc: &GcRemoteArgs) -> Result<Self, ConfigError> {
        if gc.storage_dir.is_some() {
            return Err(ConfigError::GcNeedsBucket(
                "a server's --storage-dir is bounded by the server itself (serve --max-size)",
            ));
        }
        let store = match store_config(&gc.store, &gc.s3, &gc.timeouts)? {
            Some(StoreConfig::Http(_)) => {
                return Err(ConfigError::GcNeedsBucket(
                    "an HTTP server has no listing to collect from: run gc-remote with the \
                     server's own --s3-* options if it stores in S3 (a server with \
                     --storage-dir bounds its directory itself with --max-size)",
                ));
            }
            Some(store) => store,
            None => {
                return Err(ConfigError::GcNeedsBucket(
                    "set --s3-bucket (and --s3-prefix), --gcs-bucket or --azblob-container as \
                     the builds or the server use them",
                ));
            }
        };
        Ok(Self {
            store,
            namespaces: selection(&gc.namespaces)?,
            modules: gc.namespaces.modules,
            older_than: gc.older_than,
            yes: gc.yes,
            debug: gc.common.debug,
        })
    }
}

/// An option whose value cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--{flag}: {path} is not valid UTF-8; the go command needs cache paths as text")]
    NotUtf8 { flag: &'static str, path: String },
    #[error("--{flag}: cannot resolve {path} against the current directory: {source}")]
    NoCurrentDir {
        flag: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("--{flag}: the path is empty")]
    Empty { flag: &'static str },
    #[error(
        "--trim-age must be at least 2h: a file used within the last hour may carry a time up to an hour old, and must not be removed under the build using it"
    )]
    TrimAgeTooShort,
    #[error("--backend s3 needs a bucket: set --s3-bucket or GOREMOTECACHE_S3_BUCKET")]
    NoBucket,
    #[error("--backend gcs needs a bucket: set --gcs-bucket or GOREMOTECACHE_GCS_BUCKET")]
    NoGcsBucket,
    #[error(
        "--backend azblob needs a container: set --azblob-container or GOREMOTECACHE_AZBLOB_CONTAINER"
    )]
    NoAzblobContainer,
    #[error(
        "--backend azblob needs the storage account: set --azblob-account (or AZURE_STORAGE_ACCOUNT), --azblob-endpoint, or AZURE_STORAGE_CONNECTION_STRING"
    )]
    NoAzblobAccount,
    #[error("--{flag} {value:?} is not a URL: write it as http://host:port or https://host")]
    BadStoreEndpoint { flag: &'static str, value: String },
    #[error("--backend http needs the server's URL: set --http-url or GOREMOTECACHE_HTTP_URL")]
    NoUrl,
    #[error("--http-url {0:?} is not a URL: write it as http://host:port or https://host")]
    BadUrl(String),
    #[error("--s3-endpoint {0:?} is not a URL: write it as http://host:port or https://host")]
    BadEndpoint(String),
    #[error("--{flag}: {reason}")]
    Namespace { flag: &'static str, reason: String },
    #[error("--{flag} {value:?}: {reason}")]
    Template {
        flag: &'static str,
        value: String,
        reason: String,
    },
    #[error(
        "--namespace and --all-namespaces: give one (GOREMOTECACHE_NAMESPACE counts as --namespace)"
    )]
    NamespaceAndAll,
    #[error(
        "--{flag} {addr:?}: give a loopback address and port such as 127.0.0.1:8322 (anyone who can reach the port could use it)"
    )]
    NotLoopback { flag: &'static str, addr: String },
    #[error("the module proxy: {0}")]
    Goproxy(String),
    #[error(
        "warm needs --prefetch-key (or GOREMOTECACHE_PREFETCH_KEY), a remote store and prefetch on: it names the build whose manifest to prefetch; give the builds the same key"
    )]
    WarmNeedsKey,
    #[error(
        "{set} is set but {unset} is not: set both GOREMOTECACHE_AWS_ACCESS_KEY_ID and GOREMOTECACHE_AWS_SECRET_ACCESS_KEY, or neither to use the AWS_* credentials"
    )]
    HalfCredentials {
        set: &'static str,
        unset: &'static str,
    },
    #[error("gc-remote works on a bucket (S3, GCS) or an Azure container: {0}")]
    GcNeedsBucket(&'static str),
    #[error("--{flag}: {reason}")]
    MetricsPush { flag: &'static str, reason: String },
}

impl Config {
    /// Validates the main mode's options, filling in defaults.
    pub fn from_args(args: &MainArgs) -> Result<Self, ConfigError> {
        Ok(Self {
            dirs: LocalDirs::from_args(&args.local, &args.common)?,
            verify_hits: args.client.verify_hits,
            debug: args.common.debug,
            stats: args.client.stats,
            stats_file: args.client.stats_file.clone(),
            metrics_push: MetricsPush::from_args(&args.client)?,
            step_summary: (args.client.step_summary.clone())
                .or_else(|| std::env::var_os("GITHUB_STEP_SUMMARY").map(PathBuf::from))
                .filter(|p| !p.as_os_str().is_empty()),
            log_file: (args.client.log_file.clone()).filter(|p| !p.as_os_str().is_empty()),
            trim: match args.auto_trim {
                true => Some(trim_policy(&args.trim)?),
                false => None,
            },
            remote: remote_config(args)?,
        })
    }
}

fn trim_policy(args: &TrimArgs) -> Result<TrimPolicy, ConfigError> {
    if args.trim_age < KEEP_RECENT {
        return Err(ConfigError::TrimAgeTooShort);
    }
    Ok(TrimPolicy {
        max_age: args.trim_age,
        max_size: args.max_cache_size,
    })
}

fn remote_config(args: &MainArgs) -> Result<Option<RemoteConfig>, ConfigError> {
    let Some(store) = store_config(&args.store, &args.s3, &args.timeouts)? else {
        return Ok(None);
    };
    let client = &args.client;
    Ok(Some(RemoteConfig {
        store,
        namespaces: namespace_plan(&args.namespaces)?,
        mode: client.remote_mode,
        prefetch: client.prefetch.then(|| PrefetchConfig {
            key: client.prefetch_key.clone().filter(|k| !k.is_empty()),
            concurrency: usize::from(client.prefetch_concurrency),
            max_bytes: client.prefetch_max_bytes,
            max_entries: client.prefetch_max_entries as usize,
        }),
        upload_wait: client.upload_wait,
        upload_concurrency: usize::from(client.upload_concurrency),
        upload_queue: client.upload_queue as usize,
        timeout: args.timeouts.remote_timeout,
        max_entry_size: client.max_entry_size,
        upload_min_size: client.upload_min_size,
        fault_rate: client.remote_fault_rate.unwrap_or_default(),
        instant_misses: client.instant_misses.then_some(client.instant_miss_max_age),
    }))
}

/// The remote store that the options name; `None` for the `disk` backend (the default when
/// neither a bucket nor a URL is set).
pub fn store_config(
    store: &StoreArgs,
    s3: &S3Args,
    timeouts: &TimeoutArgs,
) -> Result<Option<StoreConfig>, ConfigError> {
    let bucket = s3.s3_bucket.as_deref().filter(|b| !b.is_empty());
    let url = store.http_url.clone().filter(|u| !u.is_empty());
    let gcs_bucket = store.gcs.gcs_bucket.as_deref().filter(|b| !b.is_empty());
    let container = store.azblob.azblob_container.as_deref();
    let container = container.filter(|c| !c.is_empty());
    let backend = store.backend.unwrap_or(if bucket.is_some() {
        Backend::S3
    } else if gcs_bucket.is_some() {
        Backend::Gcs
    } else if container.is_some() {
        Backend::Azblob
    } else if url.is_some() {
        Backend::Http
    } else {
        Backend::Disk
    });
    Ok(Some(match backend {
        Backend::Disk => return Ok(None),
        Backend::S3 => StoreConfig::S3(s3_config(s3, timeouts)?.ok_or(ConfigError::NoBucket)?),
        Backend::Gcs => StoreConfig::Gcs(gcs_config(&store.gcs, timeouts)?),
        Backend::Azblob => StoreConfig::Azblob(azblob_config(&store.azblob, timeouts)?),
        Backend::Http => {
            let url = url.ok_or(ConfigError::NoUrl)?;
            if !is_url(&url) {
                return Err(ConfigError::BadUrl(url));
            }
            StoreConfig::Http(HttpConfig {
                url,
                token: store.http_token.clone().filter(|t| !t.is_empty()),
                ca_file: store.http_ca_file.clone(),
                connect_timeout: timeouts.remote_connect_timeout,
                request_timeout: timeouts.remote_timeout,
                namespace: None,
            })
        }
    }))
}

/// `--namespace` and `--read-namespaces`: empty values are none; the own namespace and
/// repeats are dropped from the reads.
fn namespace_plan(args: &NamespaceArgs) -> Result<NamespacePlan, ConfigError> {
    let own = namespace("namespace", args.namespace.as_deref())?;
    let mut reads: Vec<Namespace> = Vec::new();
    for name in args.read_namespaces.as_deref().unwrap_or("").split(',') {
        if let Some(name) = namespace("read-namespaces", Some(name))?
            && Some(&name) != own.as_ref()
            && !reads.contains(&name)
        {
            reads.push(name);
        }
    }
    Ok(NamespacePlan { own, reads })
}

/// Which namespaces `clear-remote` or `gc-remote` works on.
fn selection(args: &NamespaceSelectionArgs) -> Result<Selection, ConfigError> {
    match (
        namespace("namespace", args.namespace.as_deref())?,
        args.all_namespaces,
    ) {
        (Some(_), true) => Err(ConfigError::NamespaceAndAll),
        (Some(name), false) => Ok(Selection::One(name)),
        (None, true) => Ok(Selection::All),
        (None, false) => Ok(Selection::Unnamespaced),
    }
}

/// A namespace name from `--flag`, its placeholders expanded, checked; empty (or only
/// spaces) is none.
fn namespace(flag: &'static str, value: Option<&str>) -> Result<Option<Namespace>, ConfigError> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(name) => Namespace::parse(&template::expand(flag, name)?)
            .map(Some)
            .map_err(|reason| ConfigError::Namespace { flag, reason }),
    }
}

fn is_url(text: &str) -> bool {
    text.starts_with("http://") || text.starts_with("https://")
}

/// The S3 settings, if a bucket is named (also the storage of `serve`).
pub fn s3_config(s3: &S3Args, timeouts: &TimeoutArgs) -> Result<Option<S3Config>, ConfigError> {
    let Some(bucket) = s3.s3_bucket.clone().filter(|b| !b.is_empty()) else {
        return Ok(None);
    };
    let endpoint = s3.s3_endpoint.clone().filter(|e| !e.is_empty());
    if let Some(endpoint) = &endpoint
        && !is_url(endpoint)
    {
        return Err(ConfigError::BadEndpoint(endpoint.clone()));
    }
    Ok(Some(S3Config {
        bucket,
        prefix: template::expand("s3-prefix", &s3.s3_prefix)?
            .trim_matches('/')
            .to_string(),
        endpoint,
        region: s3.s3_region.clone().filter(|r| !r.is_empty()),
        force_path_style: s3.s3_force_path_style,
        instance_metadata: s3.s3_instance_metadata,
        connect_timeout: timeouts.remote_connect_timeout,
        request_timeout: timeouts.remote_timeout,
        static_credentials: prefixed_credentials(|name| std::env::var(name).ok())?,
    }))
}

/// The S3 credentials of `GOREMOTECACHE_AWS_ACCESS_KEY_ID`, `..._SECRET_ACCESS_KEY` and
/// `..._SESSION_TOKEN`, asked before the `AWS_*` ones, so that a CI job can keep its keys out
/// of the names that AWS SDKs in the tests read by themselves (docs/s3.md). Empty is unset; a
/// key ID without its secret (or the reverse) is an error, not a fall back to `AWS_*`. A
/// session token alone is ignored, as the AWS chain ignores one without keys.
pub fn prefixed_credentials(
    var: impl Fn(&str) -> Option<String>,
) -> Result<Option<S3Credentials>, ConfigError> {
    const ID: &str = "GOREMOTECACHE_AWS_ACCESS_KEY_ID";
    const SECRET: &str = "GOREMOTECACHE_AWS_SECRET_ACCESS_KEY";
    let get = |name: &str| var(name).filter(|value| !value.is_empty());
    match (get(ID), get(SECRET)) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(ConfigError::HalfCredentials {
            set: ID,
            unset: SECRET,
        }),
        (None, Some(_)) => Err(ConfigError::HalfCredentials {
            set: SECRET,
            unset: ID,
        }),
        (Some(access_key_id), Some(secret_access_key)) => Ok(Some(S3Credentials {
            access_key_id,
            secret_access_key,
            session_token: get("GOREMOTECACHE_AWS_SESSION_TOKEN"),
        })),
    }
}

/// An optional endpoint flag's value, checked to be a URL; empty is none.
fn endpoint(flag: &'static str, value: &Option<String>) -> Result<Option<String>, ConfigError> {
    match value.as_deref().filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(value) if is_url(value) => Ok(Some(value.trim_end_matches('/').to_string())),
        Some(value) => Err(ConfigError::BadStoreEndpoint {
            flag,
            value: value.to_string(),
        }),
    }
}

/// The GCS settings of `--backend gcs`.
fn gcs_config(gcs: &GcsArgs, timeouts: &TimeoutArgs) -> Result<GcsConfig, ConfigError> {
    let bucket = gcs.gcs_bucket.clone().filter(|b| !b.is_empty());
    Ok(GcsConfig {
        bucket: bucket.ok_or(ConfigError::NoGcsBucket)?,
        prefix: template::expand("gcs-prefix", &gcs.gcs_prefix)?
            .trim_matches('/')
            .to_string(),
        endpoint: endpoint("gcs-endpoint", &gcs.gcs_endpoint)?,
        anonymous: gcs.gcs_anonymous,
        connect_timeout: timeouts.remote_connect_timeout,
        request_timeout: timeouts.remote_timeout,
    })
}

/// The Azure Blob settings of `--backend azblob`. Without an account or endpoint, the
/// connection string must name them.
fn azblob_config(az: &AzblobArgs, timeouts: &TimeoutArgs) -> Result<AzblobConfig, ConfigError> {
    let container = az.azblob_container.clone().filter(|c| !c.is_empty());
    let account = az
        .azblob_account
        .clone()
        .filter(|a| !a.is_empty())
        .or_else(|| {
            std::env::var(crate::store::azblob::ACCOUNT)
                .ok()
                .filter(|a| !a.is_empty())
        });
    let endpoint = endpoint("azblob-endpoint", &az.azblob_endpoint)?;
    let connection_string =
        std::env::var_os(crate::store::azblob::CONNECTION_STRING).is_some_and(|v| !v.is_empty());
    if account.is_none() && endpoint.is_none() && !connection_string {
        return Err(ConfigError::NoAzblobAccount);
    }
    Ok(AzblobConfig {
        container: container.ok_or(ConfigError::NoAzblobContainer)?,
        prefix: template::expand("azblob-prefix", &az.azblob_prefix)?
            .trim_matches('/')
            .to_string(),
        account,
        endpoint,
        connect_timeout: timeouts.remote_connect_timeout,
        request_timeout: timeouts.remote_timeout,
        static_key: None,
    })
}

#[cfg(test)]
mod tests;
