//! The command line: every option is a flag and a `GOREMOTECACHE_*` variable, declared once
//! here with clap, and validated once into a [`Config`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::fsutil::{Links, UntrustedDir, check_private_dir, private_dir};
use crate::local::lock::LockType;
use crate::store::http::HttpConfig;
use crate::store::s3::S3Config;
pub use crate::store::{RemoteMode, StoreConfig};

const ABOUT: &str = "A GOCACHEPROG build cache for the go command: local disk first, a shared remote store behind it";

const LONG_ABOUT: &str = "\
goremotecache is a GOCACHEPROG program: the go command (Go 1.24 and later) starts it and asks it
for build and test results over stdin/stdout. It keeps them on local disk, safely shared by
every go command on the machine.

Use it by setting GOCACHEPROG (the go command splits the value like a shell, so options may
follow the program):

    export GOCACHEPROG=goremotecache
    export GOCACHEPROG=\"goremotecache --stats --cache-dir /var/cache/goremotecache\"

Every option can also be set with the GOREMOTECACHE_* variable shown beside it, which is the
simplest way to configure it in CI.";

const AFTER_HELP: &str = "\
Examples:
    GOCACHEPROG=goremotecache go build ./...
    GOCACHEPROG=\"goremotecache --stats\" go test ./...
    goremotecache clear-local          empty the local cache

The cache and lock directories must belong to you and not be writable by group or others
(see --trust-cache-dir).

Exit status: 0 on success; 2 for bad options or an untrusted directory; 1 for any other
failure.";

/// goremotecache's command line.
#[derive(Debug, Parser)]
#[command(
    name = "goremotecache",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = AFTER_HELP
)]
pub struct Cli {
    #[command(flatten)]
    pub options: Options,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands; without one, goremotecache serves the go command on stdin/stdout.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Run the HTTP cache server: other machines (and `docker build`s) use it with
    /// `--backend http`. It stores on --storage-dir, or in S3 with the --s3-* options.
    Serve(ServeArgs),
    /// Delete every entry under the remote store's prefix (asks for --yes first).
    ClearRemote {
        /// Really delete.
        #[arg(long)]
        yes: bool,
    },
    /// Empty the local cache and lock directories. Refuses directories that goremotecache did
    /// not create (they carry its CACHEDIR.TAG).
    ClearLocal,
    /// Print the version and the protocol commands this build answers.
    Version,
}

/// Options shared by every mode.
#[derive(Debug, Clone, Args)]
pub struct Options {
    /// Directory of the local cache. Outputs are stored here and the go command reads them
    /// in place, so it must be on a local file system. It must belong to you and not be
    /// writable by group or others (see --trust-cache-dir). [default:
    /// $XDG_CACHE_HOME/goremotecache/cache, else ~/.cache/goremotecache/cache; without a
    /// usable home, <temp dir>/goremotecache-<uid>/cache]
    #[arg(
        long,
        env = "GOREMOTECACHE_CACHE_DIR",
        value_name = "DIR",
        global = true
    )]
    pub cache_dir: Option<PathBuf>,

    /// Directory of the lock files that let several goremotecache processes share one cache
    /// directory; checked like --cache-dir. [default: `locks` beside the default cache
    /// directory]
    #[arg(
        long,
        env = "GOREMOTECACHE_LOCK_DIR",
        value_name = "DIR",
        global = true
    )]
    pub lock_dir: Option<PathBuf>,

    /// How concurrent work on one key is serialized: `fslock` also excludes other processes
    /// sharing the lock directory (parallel go commands, gopls, linters); `memory` only
    /// within this process.
    #[arg(
        long,
        env = "GOREMOTECACHE_LOCK_TYPE",
        value_enum,
        default_value_t = LockType::Fslock,
        global = true
    )]
    pub lock_type: LockType,

    /// Use a cache, lock or storage directory even if another user owns it or group or
    /// others may write it. Only for a deliberate shared set-up whose users all trust each
    /// other: anyone who can write the directory can plant build results (object code that is
    /// linked into your binaries), delete yours, or hold your locks.
    #[arg(long, env = "GOREMOTECACHE_TRUST_CACHE_DIR", value_parser = parse_switch, global = true)]
    pub trust_cache_dir: bool,

    /// Hash every output before answering a get with it; a damaged one is a miss (and the
    /// go command's put replaces it). Costs reading every hit; like Go's gocacheverify.
    #[arg(long, env = "GOREMOTECACHE_VERIFY_HITS", value_parser = parse_switch)]
    pub verify_hits: bool,

    /// The largest entry (decoded size) taken from the remote store: an entry whose header
    /// says more is a miss, and its body is not downloaded. The server's option of the same
    /// name refuses such entries.
    #[arg(long, env = "GOREMOTECACHE_MAX_ENTRY_SIZE", value_name = "BYTES", default_value = "256MiB", value_parser = parse_size)]
    pub max_entry_size: u64,

    /// Log every request and decision on stderr.
    #[arg(long, env = "GOREMOTECACHE_DEBUG", global = true, value_parser = parse_switch)]
    pub debug: bool,

    /// Print a summary on stderr when the go command closes the session: gets, hits, misses,
    /// puts, bytes, time spent.
    #[arg(long, env = "GOREMOTECACHE_STATS", value_parser = parse_switch)]
    pub stats: bool,

    /// Write the same summary as JSON to PATH when the session ends.
    #[arg(long, env = "GOREMOTECACHE_STATS_FILE", value_name = "PATH")]
    pub stats_file: Option<PathBuf>,

    /// Where shared results live behind the local disk: `disk` (none), `s3`, or `http` (a
    /// `goremotecache serve` server). [default: s3 when --s3-bucket is set, http when
    /// --http-url is set, else disk]
    #[arg(long, env = "GOREMOTECACHE_BACKEND", value_enum, global = true)]
    pub backend: Option<Backend>,

    /// The S3 bucket. A directory bucket (`name--zone--x-s3`) uses S3 Express One Zone.
    #[arg(
        long,
        env = "GOREMOTECACHE_S3_BUCKET",
        value_name = "BUCKET",
        global = true
    )]
    pub s3_bucket: Option<String>,

    /// Key prefix for the entries in the bucket, so that several caches can share one.
    #[arg(
        long,
        env = "GOREMOTECACHE_S3_PREFIX",
        value_name = "PREFIX",
        default_value = "",
        global = true
    )]
    pub s3_prefix: String,

    /// Endpoint of an S3-compatible store (MinIO, Ceph, R2, GCS, garage), such as
    /// http://127.0.0.1:9000. [default: AWS]
    #[arg(
        long,
        env = "GOREMOTECACHE_S3_ENDPOINT",
        value_name = "URL",
        global = true
    )]
    pub s3_endpoint: Option<String>,

    /// The bucket's region. [default: AWS_REGION, AWS_DEFAULT_REGION, then us-east-1]
    #[arg(
        long,
        env = "GOREMOTECACHE_S3_REGION",
        value_name = "REGION",
        global = true
    )]
    pub s3_region: Option<String>,

    /// Put the bucket in the URL path (endpoint/bucket/key), as MinIO and Ceph usually need,
    /// instead of in the host name.
    #[arg(long, env = "GOREMOTECACHE_S3_FORCE_PATH_STYLE", value_parser = parse_switch, global = true)]
    pub s3_force_path_style: bool,

    /// Also ask the EC2 instance metadata service for credentials (off by default: off EC2 it
    /// can stall for seconds).
    #[arg(long, env = "GOREMOTECACHE_S3_INSTANCE_METADATA", value_parser = parse_switch, global = true)]
    pub s3_instance_metadata: bool,

    /// The URL of a `goremotecache serve` server, such as http://cache.internal:8321.
    #[arg(long, env = "GOREMOTECACHE_HTTP_URL", value_name = "URL")]
    pub http_url: Option<String>,

    /// The bearer token for the server (read-only or read-write, as the server says).
    #[arg(
        long,
        env = "GOREMOTECACHE_HTTP_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub http_token: Option<String>,

    /// A PEM file of certificate authorities to trust for --http-url, besides the system's
    /// (for a server with a private CA's certificate).
    #[arg(long, env = "GOREMOTECACHE_HTTP_CA_FILE", value_name = "PEM")]
    pub http_ca_file: Option<PathBuf>,

    /// `read-write`; `read-only` never uploads (untrusted builds such as pull requests from
    /// forks); `write-only` never reads remote entries (to refill a cache suspected bad).
    #[arg(long, env = "GOREMOTECACHE_REMOTE_MODE", value_enum, default_value_t = RemoteMode::ReadWrite)]
    pub remote_mode: RemoteMode,

    /// How long the end of a build may wait for pending uploads; what is left is dropped
    /// and counted.
    #[arg(long, env = "GOREMOTECACHE_UPLOAD_WAIT", value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub upload_wait: Duration,

    /// Uploads in flight at once.
    #[arg(long, env = "GOREMOTECACHE_UPLOAD_CONCURRENCY", value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    pub upload_concurrency: u16,

    /// Uploads waiting at most; past that, uploads are dropped (counted) rather than slow
    /// the build.
    #[arg(long, env = "GOREMOTECACHE_UPLOAD_QUEUE", value_name = "N", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub upload_queue: u32,

    /// Prefetch: right after the go command starts this program, fetch in parallel the remote
    /// entries that the last runs of the same build asked for, so that the go command finds
    /// them on local disk (see docs/prefetch.md). `--prefetch=off` turns it off.
    #[arg(
        long,
        env = "GOREMOTECACHE_PREFETCH",
        value_name = "on|off",
        value_parser = parse_switch,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_value = "on",
        default_missing_value = "on"
    )]
    pub prefetch: bool,

    /// What names "the same build" for prefetch, instead of the automatic key (working
    /// directory, the go command's arguments, GOOS, GOARCH, GOFLAGS, Go version, CI job).
    #[arg(long, env = "GOREMOTECACHE_PREFETCH_KEY", value_name = "TEXT")]
    pub prefetch_key: Option<String>,

    /// Prefetch requests in flight at once: entry gets on S3; on an HTTP server, batches of up
    /// to 256 entries, N/8 of them at once. About 1 MiB of memory per request in flight.
    #[arg(long, env = "GOREMOTECACHE_PREFETCH_CONCURRENCY", value_name = "N", default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    pub prefetch_concurrency: u16,

    /// Prefetch at most this many bytes (uncompressed) per run.
    #[arg(long, env = "GOREMOTECACHE_PREFETCH_MAX_BYTES", value_name = "BYTES", default_value = "2GiB", value_parser = parse_size)]
    pub prefetch_max_bytes: u64,

    /// Prefetch at most this many entries per run.
    #[arg(long, env = "GOREMOTECACHE_PREFETCH_MAX_ENTRIES", value_name = "N", default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub prefetch_max_entries: u32,

    /// Give up on one remote request (or a stalled transfer) after this long.
    #[arg(long, env = "GOREMOTECACHE_REMOTE_TIMEOUT", value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub remote_timeout: Duration,

    /// Give up connecting to the remote store after this long.
    #[arg(long, env = "GOREMOTECACHE_REMOTE_CONNECT_TIMEOUT", value_name = "DURATION", default_value = "2s", value_parser = humantime::parse_duration, global = true)]
    pub remote_connect_timeout: Duration,
}

/// The remote tier behind the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// No remote tier: the local disk only.
    Disk,
    /// AWS S3, S3 Express One Zone, or an S3-compatible store.
    S3,
    /// A `goremotecache serve` server.
    Http,
}

/// Options of `goremotecache serve`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct ServeArgs {
    /// Address and port to listen on.
    #[arg(
        long,
        env = "GOREMOTECACHE_LISTEN",
        value_name = "ADDR",
        default_value = "127.0.0.1:8321"
    )]
    pub listen: std::net::SocketAddr,

    /// Store entries in this directory (otherwise in S3, with the --s3-* options).
    #[arg(long, env = "GOREMOTECACHE_STORAGE_DIR", value_name = "DIR")]
    pub storage_dir: Option<PathBuf>,

    /// A file of bearer tokens, one a line: `rw TOKEN` or `ro TOKEN` (see docs/http-api.md).
    /// Read again on SIGHUP.
    #[arg(long, env = "GOREMOTECACHE_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,

    /// Bearer tokens as `rw:TOKEN,ro:TOKEN` (in addition to --token-file).
    #[arg(
        long,
        env = "GOREMOTECACHE_TOKENS",
        value_name = "LIST",
        hide_env_values = true
    )]
    pub tokens: Option<String>,

    /// Let requests without a token read (GET and HEAD); writing always needs a token.
    #[arg(long, env = "GOREMOTECACHE_ALLOW_ANONYMOUS_READ", value_parser = parse_switch)]
    pub allow_anonymous_read: bool,

    /// The largest entry a PUT may send; larger ones get 413.
    #[arg(long, env = "GOREMOTECACHE_MAX_ENTRY_SIZE", value_name = "BYTES", default_value = "256MiB", value_parser = parse_size)]
    pub max_entry_size: u64,

    /// Connections served at once; more are closed.
    #[arg(
        long,
        env = "GOREMOTECACHE_MAX_CONNECTIONS",
        value_name = "N",
        default_value_t = 1024
    )]
    pub max_connections: usize,

    /// Serve HTTPS with this certificate chain (PEM); needs --tls-key.
    #[arg(
        long,
        env = "GOREMOTECACHE_TLS_CERT",
        value_name = "PEM",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM).
    #[arg(
        long,
        env = "GOREMOTECACHE_TLS_KEY",
        value_name = "PEM",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// Requests handled at once; more get 503.
    #[arg(
        long,
        env = "GOREMOTECACHE_MAX_IN_FLIGHT",
        value_name = "N",
        default_value_t = 512
    )]
    pub max_in_flight: usize,

    /// The time bounds on each connection.
    #[command(flatten)]
    pub timeouts: Box<ServeTimeouts>,
}

/// The time bounds of every connection of `serve` (part of [`ServeArgs`]; boxed there so
/// that the `serve` command stays small beside the others): no client, with a token or
/// without, holds a connection or an in-flight place longer than these allow without making
/// progress. What each covers exactly is in `server::connection`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Args)]
pub struct ServeTimeouts {
    /// A request body that sends nothing for this long gets 408 and its connection is closed.
    #[arg(long = "body-timeout", env = "GOREMOTECACHE_BODY_TIMEOUT", value_name = "DURATION", default_value = "30s", value_parser = parse_bound)]
    pub body: Duration,

    /// A client that reads nothing of an answer for this long is disconnected, and what the
    /// answer held (its connection, its --max-in-flight place) is freed.
    #[arg(long = "write-timeout", env = "GOREMOTECACHE_WRITE_TIMEOUT", value_name = "DURATION", default_value = "30s", value_parser = parse_bound)]
    pub write: Duration,

    /// A connection that sends no complete request headers for this long, new or idle after
    /// an answer, is closed.
    #[arg(long = "idle-timeout", env = "GOREMOTECACHE_IDLE_TIMEOUT", value_name = "DURATION", default_value = "60s", value_parser = parse_bound)]
    pub idle: Duration,
}

/// A time bound: a duration such as `30s` or `500ms`, longer than zero (a zero bound would
/// cut every connection at once).
fn parse_bound(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(duration) if duration.is_zero() => Err("must be longer than 0s".into()),
        Ok(duration) => Ok(duration),
        Err(err) => Err(err.to_string()),
    }
}

/// `1048576`, `64KiB`, `256MiB`, `1GiB`.
fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size such as 256MiB"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit {other:?}: use B, KiB, MiB or GiB"
            ));
        }
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| format!("{text:?} is too large"))
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
    pub mode: RemoteMode,
    /// `None`: prefetch is off.
    pub prefetch: Option<PrefetchConfig>,
    pub upload_wait: Duration,
    pub upload_concurrency: usize,
    pub upload_queue: usize,
    pub timeout: Duration,
    /// The largest decoded entry taken from the store (`--max-entry-size`).
    pub max_entry_size: u64,
}

/// A switch's value from a variable: `1`/`0`, `true`/`false`, `yes`/`no`, `on`/`off`, and
/// empty for off (so that `GOREMOTECACHE_STATS=` in a CI file turns it off, not the build).
fn parse_switch(value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" | "y" | "t" => Ok(true),
        "" | "0" | "false" | "no" | "off" | "n" | "f" => Ok(false),
        other => Err(format!(
            "{other:?} is not a switch value: use true or false"
        )),
    }
}

/// Options, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Absolute and valid UTF-8 (it is sent to the go command in JSON).
    pub cache_dir: PathBuf,
    pub lock_dir: PathBuf,
    /// The default location's own directory, when the cache or lock directory is the
    /// default: goremotecache creates it, so it is checked as well.
    pub default_base: Option<DefaultBase>,
    pub trust_cache_dir: bool,
    pub verify_hits: bool,
    pub lock_type: LockType,
    pub debug: bool,
    pub stats: bool,
    pub stats_file: Option<PathBuf>,
    /// `None`: the local disk only.
    pub remote: Option<RemoteConfig>,
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
    #[error("--backend s3 needs a bucket: set --s3-bucket or GOREMOTECACHE_S3_BUCKET")]
    NoBucket,
    #[error("--backend http needs the server's URL: set --http-url or GOREMOTECACHE_HTTP_URL")]
    NoUrl,
    #[error("--http-url {0:?} is not a URL: write it as http://host:port or https://host")]
    BadUrl(String),
    #[error("--s3-endpoint {0:?} is not a URL: write it as http://host:port or https://host")]
    BadEndpoint(String),
}

/// Where the default cache and lock directories live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultBase {
    pub dir: PathBuf,
    /// A symlink is fine in the user's home (they put it there); in the shared temp
    /// directory it was put there by someone else.
    pub links: Links,
}

impl DefaultBase {
    /// The user's cache directory as Go's own cache finds it: `$XDG_CACHE_HOME` if set
    /// (absolute), else `$HOME/.cache`; where there is no usable home (unset, missing, or
    /// not the user's own), a directory in the temp directory named with the user ID.
    pub fn find() -> Self {
        let absolute = |var: &str| {
            std::env::var_os(var)
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
        };
        let home_cache = absolute("XDG_CACHE_HOME").or_else(|| {
            absolute("HOME")
                .filter(|home| {
                    use std::os::unix::fs::MetadataExt;
                    std::fs::metadata(home)
                        .is_ok_and(|m| m.is_dir() && m.uid() == rustix::process::geteuid().as_raw())
                })
                .map(|home| home.join(".cache"))
        });
        match home_cache {
            Some(dir) => Self {
                dir: dir.join("goremotecache"),
                links: Links::Follow,
            },
            None => Self {
                dir: std::env::temp_dir().join(format!(
                    "goremotecache-{}",
                    rustix::process::geteuid().as_raw()
                )),
                links: Links::Refuse,
            },
        }
    }
}

impl Config {
    /// Validates the options, filling in defaults.
    pub fn from_options(options: &Options) -> Result<Self, ConfigError> {
        let default_base =
            (options.cache_dir.is_none() || options.lock_dir.is_none()).then(DefaultBase::find);
        let base = default_base
            .as_ref()
            .map(|b| b.dir.clone())
            .unwrap_or_default();
        let cache_dir = resolve_dir(
            "cache-dir",
            options.cache_dir.as_deref(),
            &base.join("cache"),
        )?;
        let lock_dir = resolve_dir("lock-dir", options.lock_dir.as_deref(), &base.join("locks"))?;
        Ok(Self {
            cache_dir,
            lock_dir,
            default_base,
            trust_cache_dir: options.trust_cache_dir,
            verify_hits: options.verify_hits,
            lock_type: options.lock_type,
            debug: options.debug,
            stats: options.stats,
            stats_file: options.stats_file.clone(),
            remote: remote_config(options)?,
        })
    }

    /// Refuses the cache and lock directories if another user owns them or group or others
    /// may write them (unless `--trust-cache-dir`); with `create`, first creates those that
    /// are missing (mode 0700). Runs before the go command is answered: a refusal is exit
    /// status 2. A directory that cannot be created is left to the cache, which says so and
    /// goes on (every get a miss, every put a clear error).
    pub fn check_dirs(&self, create: bool) -> Result<(), UntrustedDir> {
        if self.trust_cache_dir {
            return Ok(());
        }
        let check = |dir: &Path, what, links| {
            if create {
                check_created_dir(dir, what, links)
            } else if std::fs::symlink_metadata(dir).is_ok() {
                check_private_dir(dir, what, links)
            } else {
                Ok(())
            }
        };
        if let Some(base) = &self.default_base {
            check(&base.dir, "goremotecache's directory", base.links)?;
        }
        let mut dirs = vec![(&self.cache_dir, "cache directory")];
        if self.lock_type == LockType::Fslock {
            dirs.push((&self.lock_dir, "lock directory"));
        }
        for (dir, what) in dirs {
            // Inside the default location, its rule for symlinks; a named directory may be one.
            let links = match &self.default_base {
                Some(base) if dir.parent() == Some(base.dir.as_path()) => base.links,
                _ => Links::Follow,
            };
            check(dir, what, links)?;
        }
        Ok(())
    }
}

/// Creates `dir` (0700) if it is missing and checks it; one that cannot be created is not an
/// error here.
fn check_created_dir(dir: &Path, what: &'static str, links: Links) -> Result<(), UntrustedDir> {
    match private_dir(dir, what, links) {
        Err(UntrustedDir::Io { source, .. }) if !dir.exists() => {
            tracing::debug!("cannot create {}: {source}", dir.display());
            Ok(())
        }
        other => other,
    }
}

fn remote_config(options: &Options) -> Result<Option<RemoteConfig>, ConfigError> {
    let bucket = options.s3_bucket.clone().filter(|b| !b.is_empty());
    let url = options.http_url.clone().filter(|u| !u.is_empty());
    let backend = options.backend.unwrap_or(match (&bucket, &url) {
        (Some(_), _) => Backend::S3,
        (None, Some(_)) => Backend::Http,
        (None, None) => Backend::Disk,
    });
    let store = match backend {
        Backend::Disk => return Ok(None),
        Backend::S3 => StoreConfig::S3(s3_config(options)?.ok_or(ConfigError::NoBucket)?),
        Backend::Http => {
            let url = url.ok_or(ConfigError::NoUrl)?;
            if !is_url(&url) {
                return Err(ConfigError::BadUrl(url));
            }
            StoreConfig::Http(HttpConfig {
                url,
                token: options.http_token.clone().filter(|t| !t.is_empty()),
                ca_file: options.http_ca_file.clone(),
                connect_timeout: options.remote_connect_timeout,
                request_timeout: options.remote_timeout,
            })
        }
    };
    Ok(Some(RemoteConfig {
        store,
        mode: options.remote_mode,
        prefetch: options.prefetch.then(|| PrefetchConfig {
            key: options.prefetch_key.clone().filter(|k| !k.is_empty()),
            concurrency: usize::from(options.prefetch_concurrency),
            max_bytes: options.prefetch_max_bytes,
            max_entries: options.prefetch_max_entries as usize,
        }),
        upload_wait: options.upload_wait,
        upload_concurrency: usize::from(options.upload_concurrency),
        upload_queue: options.upload_queue as usize,
        timeout: options.remote_timeout,
        max_entry_size: options.max_entry_size,
    }))
}

fn is_url(text: &str) -> bool {
    text.starts_with("http://") || text.starts_with("https://")
}

/// The S3 settings, if a bucket is named (also the storage of `serve`).
pub fn s3_config(options: &Options) -> Result<Option<S3Config>, ConfigError> {
    let Some(bucket) = options.s3_bucket.clone().filter(|b| !b.is_empty()) else {
        return Ok(None);
    };
    let endpoint = options.s3_endpoint.clone().filter(|e| !e.is_empty());
    if let Some(endpoint) = &endpoint
        && !is_url(endpoint)
    {
        return Err(ConfigError::BadEndpoint(endpoint.clone()));
    }
    Ok(Some(S3Config {
        bucket,
        prefix: options.s3_prefix.trim_matches('/').to_string(),
        endpoint,
        region: options.s3_region.clone().filter(|r| !r.is_empty()),
        force_path_style: options.s3_force_path_style,
        instance_metadata: options.s3_instance_metadata,
        connect_timeout: options.remote_connect_timeout,
        request_timeout: options.remote_timeout,
        static_credentials: None,
    }))
}

fn resolve_dir(
    flag: &'static str,
    given: Option<&Path>,
    default: &Path,
) -> Result<PathBuf, ConfigError> {
    let path = given.unwrap_or(default);
    if path.as_os_str().is_empty() {
        return Err(ConfigError::Empty { flag });
    }
    let absolute = std::path::absolute(path).map_err(|source| ConfigError::NoCurrentDir {
        flag,
        path: path.display().to_string(),
        source,
    })?;
    if absolute.to_str().is_none() {
        return Err(ConfigError::NotUtf8 {
            flag,
            path: absolute.display().to_string(),
        });
    }
    Ok(absolute)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

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
        let remote = Config::from_options(&cli.options).unwrap().remote.unwrap();
        let StoreConfig::S3(s3) = &remote.store else {
            panic!("{remote:?}")
        };
        assert_eq!(s3.bucket, "b");
        assert_eq!(s3.prefix, "ci/go");
        assert_eq!(remote.mode, RemoteMode::ReadWrite);
        assert_eq!(remote.upload_wait, Duration::from_secs(30));
        let cli = Cli::try_parse_from(["goremotecache", "--s3-bucket", "b", "--backend", "disk"])
            .unwrap();
        assert_eq!(Config::from_options(&cli.options).unwrap().remote, None);
        let cli = Cli::try_parse_from(["goremotecache", "--backend", "s3"]).unwrap();
        assert!(matches!(
            Config::from_options(&cli.options),
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
            Config::from_options(&cli.options),
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
        let remote = Config::from_options(&cli.options).unwrap().remote.unwrap();
        let StoreConfig::Http(http) = &remote.store else {
            panic!("{remote:?}")
        };
        assert_eq!(http.url, "http://cache:8321/");
        assert_eq!(http.token.as_deref(), Some("t"));
        let cli = Cli::try_parse_from(["goremotecache", "--backend", "http"]).unwrap();
        assert!(matches!(
            Config::from_options(&cli.options),
            Err(ConfigError::NoUrl)
        ));
        let cli = Cli::try_parse_from(["goremotecache", "--http-url", "cache:8321"]).unwrap();
        assert!(matches!(
            Config::from_options(&cli.options),
            Err(ConfigError::BadUrl(_))
        ));
    }

    #[test]
    fn serve_time_bounds_must_be_longer_than_zero() {
        assert_eq!(parse_bound("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_bound("0s").is_err());
        assert!(parse_bound("soon").is_err());
        let err =
            Cli::try_parse_from(["goremotecache", "serve", "--write-timeout", "0s"]).unwrap_err();
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
        let config = Config::from_options(&cli.options).unwrap();
        assert!(config.cache_dir.is_absolute());
        assert!(config.cache_dir.ends_with("rel/cache"));
        assert!(config.lock_dir.ends_with("locks"));
        assert_eq!(
            config.lock_dir.parent(),
            config.default_base.as_ref().map(|b| b.dir.as_path())
        );
        assert_eq!(config.lock_type, LockType::Fslock);
    }

    #[test]
    fn options_may_follow_a_subcommand() {
        let cli =
            Cli::try_parse_from(["goremotecache", "clear-local", "--cache-dir", "/x/y"]).unwrap();
        assert_eq!(cli.command, Some(Command::ClearLocal));
        assert_eq!(cli.options.cache_dir.as_deref(), Some(Path::new("/x/y")));
    }

    #[test]
    fn empty_paths_are_refused() {
        assert!(Cli::try_parse_from(["goremotecache", "--cache-dir", ""]).is_err());
        let mut options = Cli::try_parse_from(["goremotecache"]).unwrap().options;
        options.lock_dir = Some(PathBuf::new());
        assert!(matches!(
            Config::from_options(&options),
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
            Config::from_options(&cli.options),
            Err(ConfigError::NotUtf8 { .. })
        ));
    }
}
