//! The command line as clap declares it: every option is a flag and a `GOREMOTECACHE_*`
//! variable, declared once here, grouped into `Args` structs by what uses them. Each command
//! takes only the groups it uses; [`super`] validates them into one configuration per command.

// The doc comments of the flags are their --help text, written for a terminal, not rustdoc.
#![allow(
    rustdoc::invalid_html_tags,
    rustdoc::bare_urls,
    rustdoc::broken_intra_doc_links
)]

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use super::values::{Fraction, parse_bound, parse_fraction, parse_size, parse_switch};
use crate::local::lock::LockType;
use crate::store::RemoteMode;

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

The options above are those of the go command's cache. Each subcommand takes its own options
after its name (goremotecache serve --help lists the server's).

The cache and lock directories must belong to you and not be writable by group or others
(see --trust-cache-dir).

Exit status: 0 on success; 2 for bad options or an untrusted directory; 1 for any other
failure.";

/// goremotecache's command line. Without a subcommand it takes the options of the go
/// command's cache ([`MainArgs`]); a subcommand takes its own, after its name, and none of
/// these (`goremotecache --cache-dir X clear-local` is refused: write
/// `goremotecache clear-local --cache-dir X`).
#[derive(Debug, Parser)]
#[command(
    name = "goremotecache",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = AFTER_HELP,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(flatten)]
    pub main: MainArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

impl Cli {
    /// Parses the process's arguments, or exits: status 2 for bad options, 0 after `--help`
    /// or `--version`.
    pub fn parse_args() -> Self {
        Self::try_parse_args(std::env::args_os()).unwrap_or_else(|err| err.exit())
    }

    /// Parses `args` (the program's name first). The `GOREMOTECACHE_*` variables of the main
    /// mode's options are read only without a subcommand: a subcommand takes none of those
    /// options, so a variable meant for the go command's cache (even a bad value) must not
    /// refuse it. The variables of a subcommand's own options apply as usual.
    pub fn try_parse_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        // First without the main mode's variables: if that names a subcommand, it is the answer.
        let without_env = Self::command().mut_args(|arg| arg.env(None));
        if let Ok(mut matches) = without_env.try_get_matches_from(&args)
            && matches.subcommand_name().is_some()
        {
            return Self::from_arg_matches_mut(&mut matches)
                .map_err(|err| err.format(&mut Self::command()));
        }
        // The main mode, or an error (which the full command states the same way).
        Self::try_parse_from(args).map_err(with_option_order_tip)
    }
}

/// An option before a subcommand is refused (`args_conflicts_with_subcommands`); the error
/// says where it goes instead.
fn with_option_order_tip(mut err: clap::Error) -> clap::Error {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if err.kind() == ErrorKind::ArgumentConflict
        && let Some(ContextValue::String(name)) = err.get(ContextKind::InvalidSubcommand)
    {
        let tip = format!(
            "a subcommand takes its options after its name: 'goremotecache {name} [OPTIONS]' \
             (see 'goremotecache {name} --help')"
        );
        err.insert(
            ContextKind::Suggested,
            ContextValue::StyledStrs(vec![tip.into()]),
        );
    }
    err
}

/// The subcommands; without one, goremotecache serves the go command on stdin/stdout.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Run the HTTP cache server, the `http` backend of other machines (and of `docker
    /// build`s). It stores on --storage-dir, or in S3 with the --s3-* options.
    Serve(ServeCommand),
    /// Delete every entry, prefetch manifest and pack of the remote store's un-namespaced layout,
    /// of --namespace, or of all namespaces with --all-namespaces (asks for --yes first).
    ClearRemote(ClearRemoteArgs),
    /// Trim the local cache now, as the automatic trim does once a day (--trim-age,
    /// --max-cache-size), and say what was removed; --dry-run only says it.
    Trim(TrimCommand),
    /// Delete the S3 entries and prefetch manifests not modified for --older-than, except the
    /// entries that a recent manifest of any namespace lists (reports only, without --yes).
    GcRemote(GcRemoteArgs),
    /// Empty the local cache and lock directories. Refuses directories that goremotecache did
    /// not create (they carry its CACHEDIR.TAG).
    ClearLocal(ClearLocalArgs),
    /// Run one cache process for the go commands of this machine or CI job, on a unix
    /// socket: `GOCACHEPROG="goremotecache connect"` reaches it (and starts it if needed).
    /// Builds' `close` then does not wait for uploads: `goremotecache flush` at the end of the
    /// job does. Takes every option of the main mode (see docs/daemon.md).
    Daemon(DaemonCommand),
    /// The GOCACHEPROG that bridges the go command to the daemon of its options, starting
    /// one if none listens; if the daemon cannot be reached or dies, it goes on by itself.
    Connect(ControlCommand),
    /// Wait (up to --upload-wait) for every pending upload of the daemon of these options
    /// (given no remote options, of every daemon under --cache-dir), write the prefetch
    /// manifest, and say what was uploaded and dropped. The last step of a CI job.
    Flush(ControlCommand),
    /// Print the figures of the daemon of these options (given no remote options, of every
    /// daemon under --cache-dir): sessions, hits, uploads pending and done, prefetch.
    Status(StatusCommand),
    /// Start the daemon of these options if needed and begin prefetching the manifest of
    /// --prefetch-key at once, so that it runs while the job does other things.
    Warm(ControlCommand),
    /// Check the remote store with the options a build would use: configuration,
    /// credentials, reachability, write, read and delete of a probe entry, latency and
    /// throughput, and what the latency costs a warm build (see docs/doctor.md). Exit status
    /// 0 when the remote works for --remote-mode, 1 otherwise.
    Doctor(DoctorCommand),
    /// Print the version and the protocol commands this build answers.
    Version,
}

/// The options of the main mode, the go command's cache: every group but the server's.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct MainArgs {
    #[command(flatten)]
    pub local: LocalArgs,
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub namespaces: NamespaceArgs,
    #[command(flatten)]
    pub trim: TrimArgs,
    /// The automatic trim: at most once a day per cache directory, after the go command has
    /// had its last answer, remove what --trim-age and --max-cache-size say. `--trim=off`
    /// turns it off (`goremotecache trim` still trims when asked).
    #[arg(
        long = "trim",
        env = "GOREMOTECACHE_TRIM",
        value_name = "on|off",
        value_parser = parse_switch,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_value = "on",
        default_missing_value = "on"
    )]
    pub auto_trim: bool,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub s3: S3Args,
    #[command(flatten)]
    pub timeouts: TimeoutArgs,
}

/// `goremotecache serve`: the server's own options, its S3 storage, and the common ones.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct ServeCommand {
    #[command(flatten)]
    pub serve: ServeArgs,
    #[command(flatten)]
    pub goproxy: GoproxyArgs,
    #[command(flatten)]
    pub s3: S3Args,
    #[command(flatten)]
    pub timeouts: TimeoutArgs,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// `goremotecache clear-remote`: which store, and the confirmation.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct ClearRemoteArgs {
    /// Really delete.
    #[arg(long)]
    pub yes: bool,
    #[command(flatten)]
    pub namespaces: NamespaceSelectionArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub s3: S3Args,
    #[command(flatten)]
    pub timeouts: TimeoutArgs,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// `goremotecache trim`: which cache, by what rule, and whether only to say it.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct TrimCommand {
    /// Remove nothing: say what a trim would remove.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub trim: TrimArgs,
    #[command(flatten)]
    pub local: LocalArgs,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// `goremotecache gc-remote`: the age, the confirmation, and the bucket (the builds' own
/// options, or the server's for `serve`'s S3 storage).
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct GcRemoteArgs {
    /// Delete entries and prefetch manifests last modified longer ago than this (such as
    /// 14d), except entries listed in a manifest modified since: what recent builds asked for
    /// stays, however old. A manifest's time lags its last use by up to a day, so choose more
    /// than the longest time between two runs of a build you want to keep, plus a day.
    #[arg(long, env = "GOREMOTECACHE_OLDER_THAN", value_name = "DURATION", value_parser = parse_bound)]
    pub older_than: Duration,

    /// Really delete; without it, only say what would be deleted and kept.
    #[arg(long)]
    pub yes: bool,
    #[command(flatten)]
    pub namespaces: NamespaceSelectionArgs,

    /// Refused: a server that stores in a directory bounds it itself (`serve --max-size`).
    /// Taken here so that gc-remote run with a server's options says so.
    #[arg(
        long,
        env = "GOREMOTECACHE_STORAGE_DIR",
        value_name = "DIR",
        hide = true
    )]
    pub storage_dir: Option<PathBuf>,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub s3: S3Args,
    #[command(flatten)]
    pub timeouts: TimeoutArgs,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Which namespaces of the remote store the go command's cache writes and reads (see
/// docs/ci.md). Checked by [`super`]: an empty value is none.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct NamespaceArgs {
    /// Write entries and prefetch manifests into this namespace of the remote store
    /// (<prefix>/ns/NAME/ in a bucket, /v1/ns/NAME/ on a server) and read it first. A name has
    /// 1 to 128 of A-Z a-z 0-9 . _ - and does not start with a dot: map a branch name such as
    /// feature/x yourself (${GITHUB_HEAD_REF//\//-}). Placeholders as in --s3-prefix
    /// ({GOOS}, {GOARCH}, {GOVERSION}, {env.NAME}) are expanded first, and the result must be
    /// such a name. [default: none, the un-namespaced layout, as before namespaces existed]
    #[arg(long, env = "GOREMOTECACHE_NAMESPACE", value_name = "NAME")]
    pub namespace: Option<String>,

    /// Also read these namespaces, in this order, after --namespace; never written. A pull
    /// request's build: --namespace pr-123 --read-namespaces main. A local miss asks them
    /// all at once and takes the first in this order that has the entry. Each name may hold
    /// placeholders as --namespace does.
    #[arg(long, env = "GOREMOTECACHE_READ_NAMESPACES", value_name = "A,B")]
    pub read_namespaces: Option<String>,
}

/// Which namespaces `clear-remote` and `gc-remote` work on.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct NamespaceSelectionArgs {
    /// Work on this namespace (placeholders as in the builds' --namespace). [default: the
    /// un-namespaced entries and manifests]
    #[arg(long, env = "GOREMOTECACHE_NAMESPACE", value_name = "NAME")]
    pub namespace: Option<String>,

    /// Work on the un-namespaced entries and manifests and on every namespace found under the
    /// prefix, and report each.
    #[arg(long)]
    pub all_namespaces: bool,

    /// Also work on the module files: the answers the module proxy (GOPROXY, see
    /// docs/goproxy.md) keeps under <prefix>/mod/ (.info, .mod, .zip, version lists),
    /// reported on their own line. It adds them to what the namespace options select; they
    /// are never part of a namespace and are left alone without this flag. An immutable
    /// module file's age is its upload time, not its last use, so gc-remote may delete a .zip
    /// still in use: the proxy fetches it from upstream again on the next request, which costs
    /// a download, never a wrong answer.
    #[arg(long)]
    pub modules: bool,
}

/// What a trim of the local cache removes (the main mode and `trim`).
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct TrimArgs {
    /// Remove action entries and outputs that no build used for longer than this (a use sets
    /// a file's time, to within an hour).
    #[arg(long, env = "GOREMOTECACHE_TRIM_AGE", value_name = "DURATION", default_value = "5d", value_parser = parse_bound)]
    pub trim_age: Duration,

    /// Past this size (disk space of the entries and outputs, as du counts it), remove the
    /// least recently used until the cache is at 90% of it. Files used within the last two
    /// hours are kept even then. [default: no bound]
    #[arg(long, env = "GOREMOTECACHE_MAX_CACHE_SIZE", value_name = "SIZE", value_parser = parse_size)]
    pub max_cache_size: Option<u64>,
}

/// `goremotecache clear-local`: which directories.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct ClearLocalArgs {
    #[command(flatten)]
    pub local: LocalArgs,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Options of every command that runs something.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct CommonArgs {
    /// Log every request and decision on stderr.
    #[arg(long, env = "GOREMOTECACHE_DEBUG", value_parser = parse_switch)]
    pub debug: bool,

    /// Use a cache, lock or storage directory even if another user owns it or group or
    /// others may write it. Only for a deliberate shared set-up whose users all trust each
    /// other: anyone who can write the directory can plant build results (object code that is
    /// linked into your binaries), delete yours, or hold your locks.
    #[arg(long, env = "GOREMOTECACHE_TRUST_CACHE_DIR", value_parser = parse_switch)]
    pub trust_cache_dir: bool,
}

/// The local cache's directories and locks (the main mode and `clear-local`).
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct LocalArgs {
    /// Directory of the local cache. Outputs are stored here and the go command reads them
    /// in place, so it must be on a local file system. It must belong to you and not be
    /// writable by group or others (see --trust-cache-dir). [default:
    /// $XDG_CACHE_HOME/goremotecache/cache, else ~/.cache/goremotecache/cache; without a
    /// usable home, <temp dir>/goremotecache-<uid>/cache]
    #[arg(long, env = "GOREMOTECACHE_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Directory of the lock files that let several goremotecache processes share one cache
    /// directory; checked like --cache-dir. [default: `locks` beside the default cache
    /// directory]
    #[arg(long, env = "GOREMOTECACHE_LOCK_DIR", value_name = "DIR")]
    pub lock_dir: Option<PathBuf>,

    /// How concurrent work on one key is serialized: `fslock` also excludes other processes
    /// sharing the lock directory (parallel go commands, gopls, linters); `memory` only
    /// within this process.
    #[arg(
        long,
        env = "GOREMOTECACHE_LOCK_TYPE",
        value_enum,
        default_value_t = LockType::Fslock
    )]
    pub lock_type: LockType,
}

/// How the go command's cache uses its remote store (the main mode only).
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct ClientArgs {
    /// Hash every output before answering a get with it; a damaged one is a miss (and the
    /// go command's put replaces it). Costs reading every hit; like Go's gocacheverify.
    #[arg(long, env = "GOREMOTECACHE_VERIFY_HITS", value_parser = parse_switch)]
    pub verify_hits: bool,

    /// The largest entry (decoded size) taken from the remote store: an entry whose header
    /// says more is a miss, and its body is not downloaded. The server's option of the same
    /// name refuses such entries.
    #[arg(long, env = "GOREMOTECACHE_MAX_ENTRY_SIZE", value_name = "BYTES", default_value = "256MiB", value_parser = parse_size)]
    pub max_entry_size: u64,

    /// Print a summary on stderr when the go command closes the session: gets, hits, misses,
    /// puts, bytes, time spent.
    #[arg(long, env = "GOREMOTECACHE_STATS", value_parser = parse_switch)]
    pub stats: bool,

    /// Write the same summary as JSON to PATH when the session ends.
    #[arg(long, env = "GOREMOTECACHE_STATS_FILE", value_name = "PATH")]
    pub stats_file: Option<PathBuf>,

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

    /// Instant misses: fetch the store's key filter right after the go command starts this
    /// program (`goremotecache serve` makes one of its storage directory; in a bucket, the
    /// runs keep one, at <prefix>/filter/v1/keys), and answer a local miss whose key the
    /// filter rules out at once, without asking the store. A cold build then waits for no
    /// round trip per miss. An entry stored after the filter was made may be missed (it is
    /// compiled again, never wrong); see docs/prefetch.md. `--instant-misses=off` asks the
    /// store for every local miss.
    #[arg(
        long,
        env = "GOREMOTECACHE_INSTANT_MISSES",
        value_name = "on|off",
        value_parser = parse_switch,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_value = "on",
        default_missing_value = "on"
    )]
    pub instant_misses: bool,

    /// How long a key filter is trusted after it was fetched; it is fetched again after half
    /// of it, and once it is older, local misses ask the store again.
    #[arg(long, env = "GOREMOTECACHE_INSTANT_MISS_MAX_AGE", value_name = "DURATION", default_value = "10m", value_parser = humantime::parse_duration)]
    pub instant_miss_max_age: Duration,

    /// Do not upload an entry whose output (the go command's file, before compression) is
    /// smaller than this: it stays in the local cache only, and is counted as skipped in the
    /// stats. Small outputs cost a request each for little build time. [default: 0, upload
    /// everything]
    #[arg(long, env = "GOREMOTECACHE_UPLOAD_MIN_SIZE", value_name = "BYTES", default_value = "0", value_parser = parse_size)]
    pub upload_min_size: u64,

    /// A testing aid: make this fraction (0.0 to 1.0) of the remote store's requests fail
    /// on purpose, as a network error would, before they are sent, to try how builds, retries
    /// and the circuit breaker cope with a flaky store. Never set it for real builds.
    /// [default: 0.0]
    #[arg(long, env = "GOREMOTECACHE_REMOTE_FAULT_RATE", value_name = "P", value_parser = parse_fraction)]
    pub remote_fault_rate: Option<Fraction>,

    /// At the end of each run, push the --stats figures (as goremotecache_build_* metrics)
    /// to this URL with an HTTP PUT of Prometheus text: a Pushgateway's
    /// http://HOST:9091/metrics/job/NAME, or VictoriaMetrics'
    /// http://HOST:8428/api/v1/import/prometheus. Bounded by 5 seconds; a failed push is one
    /// warning on stderr, never a failed build.
    #[arg(long, env = "GOREMOTECACHE_METRICS_PUSH_URL", value_name = "URL")]
    pub metrics_push_url: Option<String>,

    /// Labels added to every pushed sample: name=value pairs separated by commas, such as
    /// repo=api,branch=main. A name has A-Z a-z 0-9 _ and does not start with a digit or
    /// with __.
    #[arg(
        long,
        env = "GOREMOTECACHE_METRICS_PUSH_LABELS",
        value_name = "K=V,..."
    )]
    pub metrics_push_labels: Option<String>,

    /// HTTP headers sent with the push, for its authentication: 'Name: value' pairs
    /// separated by commas, such as 'Authorization: Bearer TOKEN'. A value cannot hold a
    /// comma.
    #[arg(
        long,
        env = "GOREMOTECACHE_METRICS_PUSH_HEADERS",
        value_name = "'NAME: VALUE,...'",
        hide_env_values = true
    )]
    pub metrics_push_headers: Option<String>,

    /// Append a Markdown table of the run's figures (hits, misses, remote hits, bytes down
    /// and up, time waited on the remote, uploads, prefetch used) to this file at the end of
    /// each run. [default: $GITHUB_STEP_SUMMARY when set, so that GitHub Actions shows it on
    /// the job's page]
    #[arg(long, env = "GOREMOTECACHE_STEP_SUMMARY", value_name = "PATH")]
    pub step_summary: Option<PathBuf>,

    /// Write goremotecache's messages to this file instead of stderr: appended, one line
    /// each with the UTC time and the process ID, and a start line and a summary line for
    /// every run, so that the file shows each run even when nothing went wrong (for tools
    /// that hide the go command's stderr, such as golangci-lint). --debug detail goes there
    /// too. The file must be a regular file of yours (not a symbolic link); it is created if
    /// missing.
    #[arg(long, env = "GOREMOTECACHE_LOG_FILE", value_name = "PATH")]
    pub log_file: Option<PathBuf>,
}

/// Which remote store: the backend and the HTTP server's options (the main mode and
/// `clear-remote`; the S3 options are [`S3Args`]).
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct StoreArgs {
    /// Where shared results live behind the local disk: `disk` (none), `s3`, `gcs`, `azblob`,
    /// or `http` (a `goremotecache serve` server). [default: s3 when --s3-bucket is set, gcs
    /// when --gcs-bucket is set, azblob when --azblob-container is set, http when --http-url
    /// is set, else disk]
    #[arg(long, env = "GOREMOTECACHE_BACKEND", value_enum)]
    pub backend: Option<Backend>,

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

    #[command(flatten)]
    pub gcs: GcsArgs,
    #[command(flatten)]
    pub azblob: AzblobArgs,
}

/// The Google Cloud Storage bucket of `--backend gcs` (see docs/gcs-azure.md).
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct GcsArgs {
    /// The GCS bucket. Credentials come from GOOGLE_APPLICATION_CREDENTIALS, gcloud's
    /// application-default login, or the VM's service account.
    #[arg(long, env = "GOREMOTECACHE_GCS_BUCKET", value_name = "BUCKET")]
    pub gcs_bucket: Option<String>,

    /// Object name prefix for the entries in the bucket, so that several caches can share one.
    /// It takes the placeholders of --s3-prefix ({GOOS}, {GOARCH}, {GOVERSION}, {env.NAME}).
    #[arg(
        long,
        env = "GOREMOTECACHE_GCS_PREFIX",
        value_name = "PREFIX",
        default_value = ""
    )]
    pub gcs_prefix: String,

    /// Another GCS endpoint: an emulator (http://127.0.0.1:4443) or a Private Service
    /// Connect endpoint. [default: https://storage.googleapis.com]
    #[arg(long, env = "GOREMOTECACHE_GCS_ENDPOINT", value_name = "URL")]
    pub gcs_endpoint: Option<String>,

    /// Send unsigned requests and look up no credentials: for an emulator such as
    /// fake-gcs-server, or a public bucket read with --remote-mode read-only.
    #[arg(long, env = "GOREMOTECACHE_GCS_ANONYMOUS", value_parser = parse_switch)]
    pub gcs_anonymous: bool,
}

/// The Azure Blob Storage container of `--backend azblob` (see docs/gcs-azure.md).
/// Credentials: AZURE_STORAGE_CONNECTION_STRING, AZURE_STORAGE_KEY, AZURE_STORAGE_SAS_TOKEN,
/// then Azure's usual chain (service principal, workload identity, Azure CLI, managed
/// identity).
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct AzblobArgs {
    /// The blob container. Credentials: AZURE_STORAGE_KEY (the account's key),
    /// AZURE_STORAGE_SAS_TOKEN, AZURE_STORAGE_CONNECTION_STRING, or Azure's usual chain
    /// (service principal, workload identity, Azure CLI login, managed identity).
    #[arg(long, env = "GOREMOTECACHE_AZBLOB_CONTAINER", value_name = "CONTAINER")]
    pub azblob_container: Option<String>,

    /// Blob name prefix for the entries in the container, so that several caches can share
    /// one. It takes the placeholders of --s3-prefix ({GOOS}, {GOARCH}, {GOVERSION},
    /// {env.NAME}).
    #[arg(
        long,
        env = "GOREMOTECACHE_AZBLOB_PREFIX",
        value_name = "PREFIX",
        default_value = ""
    )]
    pub azblob_prefix: String,

    /// The storage account. [default: AZURE_STORAGE_ACCOUNT, or the connection string's]
    #[arg(long, env = "GOREMOTECACHE_AZBLOB_ACCOUNT", value_name = "ACCOUNT")]
    pub azblob_account: Option<String>,

    /// The Blob service endpoint: Azurite's http://127.0.0.1:10000/devstoreaccount1, or
    /// another cloud's. [default: https://ACCOUNT.blob.core.windows.net, or the connection
    /// string's]
    #[arg(long, env = "GOREMOTECACHE_AZBLOB_ENDPOINT", value_name = "URL")]
    pub azblob_endpoint: Option<String>,
}

/// The S3 bucket: the remote store of the main mode and `clear-remote`, the storage of
/// `serve`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct S3Args {
    /// The S3 bucket. A directory bucket (`name--zone--x-s3`) uses S3 Express One Zone.
    #[arg(long, env = "GOREMOTECACHE_S3_BUCKET", value_name = "BUCKET")]
    pub s3_bucket: Option<String>,

    /// Key prefix for the entries in the bucket, so that several caches can share one. It may
    /// hold {GOOS}, {GOARCH}, {GOVERSION} (the go command's target and version) and
    /// {env.NAME} (the variable NAME, which must be set): ci/{GOOS}-{GOARCH}. A '/' in a
    /// value is one more level of the key (see docs/ci.md).
    #[arg(
        long,
        env = "GOREMOTECACHE_S3_PREFIX",
        value_name = "PREFIX",
        default_value = ""
    )]
    pub s3_prefix: String,

    /// Endpoint of an S3-compatible store (MinIO, Ceph, R2, GCS, garage), such as
    /// http://127.0.0.1:9000. [default: AWS]
    #[arg(long, env = "GOREMOTECACHE_S3_ENDPOINT", value_name = "URL")]
    pub s3_endpoint: Option<String>,

    /// The bucket's region. [default: AWS_REGION, AWS_DEFAULT_REGION, then us-east-1]
    #[arg(long, env = "GOREMOTECACHE_S3_REGION", value_name = "REGION")]
    pub s3_region: Option<String>,

    /// Put the bucket in the URL path (endpoint/bucket/key), as MinIO and Ceph usually need,
    /// instead of in the host name.
    #[arg(long, env = "GOREMOTECACHE_S3_FORCE_PATH_STYLE", value_parser = parse_switch)]
    pub s3_force_path_style: bool,

    /// Also ask the EC2 instance metadata service for credentials (off by default: off EC2 it
    /// can stall for seconds).
    #[arg(long, env = "GOREMOTECACHE_S3_INSTANCE_METADATA", value_parser = parse_switch)]
    pub s3_instance_metadata: bool,
}

/// The time bounds of every request to a remote store (S3 or an HTTP server), wherever one is
/// used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Args)]
pub struct TimeoutArgs {
    /// Give up on one remote request (or a stalled transfer) after this long.
    #[arg(long, env = "GOREMOTECACHE_REMOTE_TIMEOUT", value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub remote_timeout: Duration,

    /// Give up connecting to the remote store after this long.
    #[arg(long, env = "GOREMOTECACHE_REMOTE_CONNECT_TIMEOUT", value_name = "DURATION", default_value = "2s", value_parser = humantime::parse_duration)]
    pub remote_connect_timeout: Duration,
}

/// The remote tier behind the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// No remote tier: the local disk only.
    Disk,
    /// AWS S3, S3 Express One Zone, or an S3-compatible store.
    S3,
    /// Google Cloud Storage (its JSON API).
    Gcs,
    /// Azure Blob Storage.
    Azblob,
    /// A `goremotecache serve` server.
    Http,
}

mod daemon;
mod doctor;
mod goproxy;
mod serve;
pub use daemon::{ControlCommand, DaemonCommand, SocketArgs, StatusCommand};
pub use doctor::DoctorCommand;
pub use goproxy::GoproxyArgs;
pub use serve::{ServeArgs, ServeTimeouts};
