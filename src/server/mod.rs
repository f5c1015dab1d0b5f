//! `goremotecache serve`: an HTTP cache server over the entry format, storing on a local
//! directory or in S3 (then it is a stateless front that can run as several replicas, and the
//! credential-holding sidecar for `docker build`).
//!
//! API (documented in `docs/http-api.md`): `GET`, `HEAD` and `PUT /v1/ac/<actionid-hex>`,
//! `POST /v1/batch` (many entries in one streamed answer, for prefetch), `GET` and `PUT
//! /v1/prefetch/<key-hex>` (prefetch manifests), `GET /healthz`, `GET /metrics`; the entry,
//! batch and manifest paths also as `/v1/ns/<NAME>/...`, in a namespace of their own (a
//! storage directory's `ns/<NAME>/`, a bucket's `<prefix>/ns/<NAME>/`). Bearer tokens are
//! read-only or read-write, for every namespace or for those their globs match. Keys other than 64 lowercase hex digits are refused
//! before anything else looks at them; a `PUT` body is spooled to a temporary file (never held
//! in memory), limited to `--max-entry-size` both in the bytes sent and in the size its header
//! says it decodes to (checked as soon as the header arrives, so a small zstd bomb never
//! reaches the decoder), and verified against its header before the store sees it. A storage
//! directory is bounded by `--max-size` ([`crate::store::bounded`]): least recently used
//! entries are deleted past it, and a `PUT` that finds no room gets 507.
//!
//! Every direction of a connection has a time bound
//! ([`ServeTimeouts`](crate::config::ServeTimeouts), see [`connection`]): a
//! request's headers, a stalled body, a stalled answer. Connections and the work in flight are
//! bounded in number; SIGTERM stops accepting, finishes what is in flight and exits.
//!
//! The files, each importing only from those after it: this one starts the server from its
//! options (storage, tokens and their reload on SIGHUP); `listen` accepts connections
//! ([`run`]), sets up TLS ([`tls_acceptor`]) and stops; `routes` has the [`router`] and its
//! handlers; `access` finds a request's namespace and checks its token for it; `state` is the
//! [`ServerState`] they share; [`storage`] is each namespace's storage; `body` reads a request
//! body within its bounds; `refusal` is the answer to a request refused; [`connection`]
//! bounds a connection in time; [`tokens`] and [`metrics`] are what their names say.

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::{GoproxyConfig, MaxSize};
use crate::fsutil::STALE_TEMP_AGE;
use crate::goproxy::http::Proxy;
use crate::goproxy::{EntryModStore, FetchError, Fetcher};
use crate::store::RemoteStore;
use crate::store::bounded::{BoundedDisk, DEFAULT_MAX_SIZE};
use crate::store::dir::DiskStore;

mod access;
mod answer;
mod body;
pub mod connection;
mod listen;
pub mod metrics;
mod refusal;
mod routes;
mod state;
pub mod storage;
pub mod tokens;

pub use listen::{DRAIN, HANDSHAKE_TIMEOUT, Limits, TlsError, run, serve_app, tls_acceptor};
pub use routes::router;
pub use state::ServerState;
pub use storage::Storage;

use metrics::Metrics;
use tokens::Tokens;

/// Why `serve` could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "serve needs somewhere to store entries: --storage-dir DIR, or --s3-bucket (with the other --s3-* options)"
    )]
    NoStorage,
    #[error(
        "serve needs tokens (--token-file or GOREMOTECACHE_TOKENS), or --allow-anonymous-read for a read-only cache"
    )]
    NoTokens,
    #[error(
        "--max-size bounds a --storage-dir; an S3 bucket is bounded by its lifecycle rules (unset GOREMOTECACHE_SERVE_MAX_SIZE)"
    )]
    MaxSizeWithS3,
    #[error("tokens: {0}")]
    Tokens(String),
    #[error("storage: {0}")]
    Storage(String),
    #[error("module proxy: {0}")]
    Goproxy(String),
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("listening on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: io::Error,
    },
}

impl ServeError {
    /// Whether the options are at fault (exit status 2), not the machine.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            ServeError::NoStorage
                | ServeError::NoTokens
                | ServeError::MaxSizeWithS3
                | ServeError::Tokens(_)
                | ServeError::Goproxy(_)
        )
    }
}

/// `goremotecache serve`: builds the server from its options, binds, and serves until
/// SIGTERM or Ctrl-C. SIGHUP reads the token file again. Tokens that do not parse end the
/// process at once with status 2, as other bad configuration does (`main` gives every other
/// error of `serve` status 1).
pub fn serve(
    args: &crate::config::ServeArgs,
    s3: Option<crate::store::s3::S3Config>,
    goproxy: Option<&crate::config::GoproxyArgs>,
) -> Result<(), ServeError> {
    let tokens = load_tokens(args)?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls_acceptor(cert, key)?),
        _ => None,
    };
    if tokens.is_empty() && !args.allow_anonymous_read {
        return Err(ServeError::NoTokens);
    }
    let own_url = format!(
        "{}://{}/mod",
        if tls.is_some() { "https" } else { "http" },
        args.listen
    );
    // With port 0 the port is not known yet: no URL of ours to refuse in the list.
    let own_url = (args.listen.port() != 0).then_some(own_url);
    let goproxy = goproxy
        .map(|options| GoproxyConfig::resolve(options, own_url.as_deref()))
        .transpose()
        .map_err(ServeError::Goproxy)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("goremotecache-serve")
        .build()
        .map_err(|err| ServeError::Storage(format!("starting the runtime: {err}")))?;
    runtime.block_on(async {
        let s3_modules = s3.as_ref().map(|s3| s3.for_modules());
        let (storage, spool_dir, _spool_guard): (Storage, PathBuf, Option<tempfile::TempDir>) =
            match (&args.storage_dir, s3) {
                (Some(dir), _) => {
                    let store = DiskStore::open(dir)
                        .map_err(|err| ServeError::Storage(format!("{}: {err}", dir.display())))?;
                    if let Ok(n) = store.sweep(STALE_TEMP_AGE)
                        && n > 0
                    {
                        tracing::info!("removed {n} stale temporary files");
                    }
                    let spool = dir.join("tmp");
                    let bounded = open_bounded(store, args.max_size).map_err(|err| {
                        ServeError::Storage(format!("indexing {}: {err}", dir.display()))
                    })?;
                    (Storage::Disk(bounded), spool, None)
                }
                (None, Some(_)) if args.max_size.is_some() => {
                    return Err(ServeError::MaxSizeWithS3);
                }
                (None, Some(s3)) => {
                    let store = s3
                        .open()
                        .map_err(|err| ServeError::Storage(err.to_string()))?;
                    // A namespace's objects are under `<prefix>/ns/<NAME>/`: a client of its own.
                    let storage = Storage::stores(Arc::new(store), move |namespace| {
                        let store = s3.in_namespace(namespace).open()?;
                        Ok(Arc::new(store) as Arc<dyn RemoteStore>)
                    });
                    let spool = tempfile::Builder::new()
                        .prefix("goremotecache-serve-")
                        .tempdir()
                        .map_err(|err| ServeError::Storage(format!("a spool directory: {err}")))?;
                    (storage, spool.path().to_path_buf(), Some(spool))
                }
                (None, None) => return Err(ServeError::NoStorage),
            };
        let metrics = match storage {
            Storage::Disk(_) => Metrics::with_storage(),
            Storage::Stores(_) => Metrics::new(),
        };
        // Kept until the server stops: `direct`'s private module cache.
        let (proxy, _direct_guard) = match goproxy {
            Some(config) => {
                let store: Arc<dyn RemoteStore> = match (&storage, s3_modules) {
                    (Storage::Disk(disk), _) => Arc::new(
                        disk.modules()
                            .map_err(|err| ServeError::Storage(format!("mod/: {err}")))?,
                    ),
                    (_, Some(s3)) => Arc::new(
                        s3.open()
                            .map_err(|err| ServeError::Storage(err.to_string()))?,
                    ),
                    (Storage::Stores(_), None) => return Err(ServeError::NoStorage),
                };
                let (proxy, guard) = goproxy_on(store, &spool_dir, config, args, &metrics)?;
                eprintln!("goremotecache: {}", proxy.describe());
                (Some(proxy), guard)
            }
            None => (None, None),
        };
        let listener = TcpListener::bind(args.listen)
            .await
            .map_err(|source| ServeError::Bind {
                addr: args.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| ServeError::Bind {
            addr: args.listen,
            source,
        })?;
        // Listening for SIGHUP before saying "serving": a SIGHUP that came between the two
        // would otherwise end the process (its default action).
        let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        eprintln!(
            "goremotecache: serving {}://{addr} from {}: {} tokens, anonymous reads {}",
            if tls.is_some() { "https" } else { "http" },
            storage.location(),
            tokens.len(),
            if args.allow_anonymous_read {
                "allowed"
            } else {
                "refused"
            }
        );
        let state = Arc::new(ServerState {
            metrics,
            goproxy: proxy,
            storage,
            tokens: RwLock::new(tokens),
            anonymous_read: args.allow_anonymous_read,
            max_entry_size: args.max_entry_size,
            spool_dir,
            in_flight: Arc::new(Semaphore::new(args.max_in_flight.max(1))),
            timeouts: *args.timeouts,
        });
        if let Some(hangups) = hangups {
            tokio::spawn(reload_on_hangup(args.clone(), state.clone(), hangups));
        }
        run(
            listener,
            state,
            args.max_connections,
            tls,
            listen::shutdown_signal(),
        )
        .await;
        eprintln!("goremotecache: server stopped");
        Ok(())
    })
}

/// The module proxy on `store`, spooling in `spool`, counting into `metrics`; with the
/// private module cache of `direct`, when the list has `direct` or GONOPROXY names modules
/// (removed when the guard is dropped).
fn goproxy_on(
    store: Arc<dyn RemoteStore>,
    spool: &std::path::Path,
    config: GoproxyConfig,
    args: &crate::config::ServeArgs,
    metrics: &Metrics,
) -> Result<(Proxy, Option<tempfile::TempDir>), ServeError> {
    let location = store.location();
    let (fetcher, guard) = Fetcher::for_proxy(
        config.upstreams,
        &config.noproxy,
        spool,
        args.max_entry_size,
        None,
    )
    .map_err(|err| match err {
        err @ FetchError::Spool { .. } => ServeError::Storage(err.to_string()),
        err => ServeError::Goproxy(err.to_string()),
    })?;
    let answers = EntryModStore::new(store, spool, args.max_entry_size);
    let proxy = Proxy::new(
        Arc::new(answers),
        location,
        fetcher,
        config.list_ttl,
        config.sumdbs,
        metrics.goproxy.clone(),
    );
    Ok((proxy, guard))
}

/// The storage directory's index and bound (`--max-size`, [`DEFAULT_MAX_SIZE`] unless
/// given), over every namespace, built by a scan of their entries, which is said on stderr.
fn open_bounded(disk: DiskStore, max_size: Option<MaxSize>) -> io::Result<Arc<BoundedDisk>> {
    let max = match max_size {
        None => Some(DEFAULT_MAX_SIZE),
        Some(MaxSize::Bytes(bytes)) => Some(bytes),
        Some(MaxSize::Off) => None,
    };
    let (store, scan) = BoundedDisk::open(disk, max)?;
    let bound = match max {
        Some(max) => format!("bound {max} bytes"),
        None => "no bound (--max-size off)".into(),
    };
    eprintln!(
        "goremotecache: storage: {} entries, {} bytes, indexed in {:.3}s; {bound}",
        scan.entries,
        scan.bytes,
        scan.took.as_secs_f64()
    );
    if scan.skipped > 0 {
        tracing::warn!(
            "{} files in the storage directory are not entries: not counted",
            scan.skipped
        );
    }
    Ok(store)
}

fn load_tokens(args: &crate::config::ServeArgs) -> Result<Tokens, ServeError> {
    let mut tokens = Tokens::default();
    if let Some(path) = &args.token_file {
        let text = std::fs::read_to_string(path)
            .map_err(|err| ServeError::Tokens(format!("{}: {err}", path.display())))?;
        tokens.extend(
            Tokens::parse_file(&text)
                .map_err(|err| ServeError::Tokens(format!("{}: {err}", path.display())))?,
        );
    }
    if let Some(list) = &args.tokens {
        tokens.extend(
            Tokens::parse_list(list)
                .map_err(|err| ServeError::Tokens(format!("GOREMOTECACHE_TOKENS: {err}")))?,
        );
    }
    Ok(tokens)
}

/// Reads the tokens again on each SIGHUP; a file that does not parse keeps the old tokens.
async fn reload_on_hangup(
    args: crate::config::ServeArgs,
    state: Arc<ServerState>,
    mut hangups: tokio::signal::unix::Signal,
) {
    while hangups.recv().await.is_some() {
        match load_tokens(&args) {
            Ok(tokens) => {
                let count = tokens.len();
                *crate::sync::write(&state.tokens) = tokens;
                eprintln!("goremotecache: tokens reloaded: {count} tokens");
            }
            Err(err) => eprintln!("goremotecache: keeping the old tokens: {err}"),
        }
    }
}
