//! The daemon's module proxy (`--goproxy-listen`): the go command's GOPROXY protocol on a
//! loopback TCP port, answered by [`Proxy`] over a [`TieredModStore`] (the cache directory's
//! `mod/`, with the daemon's S3 bucket behind it under `<prefix>/mod`), so that a fresh CI
//! machine gets its modules from the bucket and not from the internet.
//!
//! - **Who may ask.** The port is on loopback (the option refuses any other address) and a
//!   peer that is not a loopback address is closed unanswered. There is no token: anyone on
//!   the machine can read modules through it, as anyone could fetch them from the upstream.
//! - **Time bounds.** The server's ([`crate::server::connection`]), with the defaults of
//!   `serve` ([`ServeTimeouts::default`]): a connection that sends no complete request for
//!   the idle timeout is closed, and a client that reads nothing of its answer for the write
//!   timeout is cut off, so a client that never reads cannot hold the daemon. At most
//!   [`MAX_CONNECTIONS`] connections at once; more are closed at once.
//! - **Activity.** A request in flight, and module uploads pending, keep the daemon from its
//!   idle exit ([`ModuleProxy::idle_for`]), so it does not leave under a `go mod download`.
//! - **Stop.** On the daemon's stop, no new connection is taken, the requests in flight get
//!   [`DRAIN`], and the pending uploads get `--upload-wait` ([`ModuleProxy::finish`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::Uri;
use axum::response::Response;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::protocol::GoproxyStatus;
use crate::config::{DaemonGoproxy, RemoteConfig, ServeTimeouts};
use crate::goproxy::http::{Proxy, RequestCounts, RequestLabels};
use crate::goproxy::tiered::UploadCounts;
use crate::goproxy::{Fetcher, ModStore, TieredModStore};
use crate::server::{Limits, serve_app};
use crate::store::dir::DiskStore;
use crate::store::{StoreConfig, wrap};
use crate::sync::lock;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 128;
/// How long the requests in flight may take to finish when the daemon stops.
pub const DRAIN: Duration = Duration::from_secs(10);
/// The largest answer read back from the store when no remote sets `--max-entry-size`: the
/// go command's own limit on a module zip.
const MAX_ANSWER: u64 = 500 << 20;

/// The daemon's module proxy (see the module doc).
#[derive(Debug)]
pub struct ModuleProxy {
    proxy: Proxy,
    store: TieredModStore,
    counts: RequestCounts,
    addr: SocketAddr,
    /// Requests being answered now, and when the last one ended.
    in_flight: AtomicU64,
    last_request: std::sync::Mutex<Option<Instant>>,
    /// `direct`'s private module cache: removed when the proxy is dropped.
    _direct: Option<tempfile::TempDir>,
}

/// A request counted in flight while it lives.
struct InFlight<'a>(&'a ModuleProxy);

impl<'a> InFlight<'a> {
    fn new(proxy: &'a ModuleProxy) -> Self {
        proxy.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(proxy)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        *lock(&self.0.last_request) = Some(Instant::now());
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Binds the module proxy's port, at once, so that a port in use fails the daemon's start
/// with the option's name.
pub fn bind(goproxy: &DaemonGoproxy) -> anyhow::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(goproxy.listen)
        .with_context(|| format!("--goproxy-listen {}", goproxy.listen))?;
    listener
        .set_nonblocking(true)
        .context("preparing the module proxy's port")?;
    Ok(listener)
}

impl ModuleProxy {
    /// The proxy of `goproxy`, keeping answers in `<cache_dir>/mod/` and, for an S3 remote,
    /// in `<prefix>/mod` of its bucket (in the remote's mode: a read-only daemon uploads
    /// nothing); `addr` is where it listens. No network work happens here.
    pub fn open(
        goproxy: &DaemonGoproxy,
        cache_dir: &std::path::Path,
        remote: Option<&RemoteConfig>,
        addr: SocketAddr,
    ) -> anyhow::Result<Self> {
        let root = cache_dir.join(crate::store::s3::MODULES);
        let disk = DiskStore::open(&root).with_context(|| format!("{}", root.display()))?;
        if let Ok(n) = disk.sweep(crate::fsutil::STALE_TEMP_AGE)
            && n > 0
        {
            tracing::info!("removed {n} stale temporary files of the module proxy");
        }
        let max_size = remote.map_or(MAX_ANSWER, |r| r.max_entry_size);
        let remote_store = match remote {
            // An HTTP server's own proxy is first in the upstreams instead (DaemonGoproxy).
            Some(remote) => match remote.store.for_modules() {
                Some(modules) => Some(wrap(
                    modules
                        .objects()
                        .context("the module proxy's bucket")?
                        .context("the module proxy's bucket")?,
                    remote.mode,
                    remote.timeout,
                )),
                None => None,
            },
            None => None,
        };
        let config = &goproxy.config;
        let store = TieredModStore::new(disk, remote_store, config.list_ttl, max_size);
        // The cache server's proxy, first in the list of an HTTP backend, may have a private
        // CA's certificate.
        let ca_file = remote.and_then(|remote| match &remote.store {
            StoreConfig::Http(http) => http.ca_file.clone(),
            _ => None,
        });
        let (fetcher, direct) = Fetcher::for_proxy(
            config.upstreams.clone(),
            &config.noproxy,
            &store.spool_dir(),
            max_size,
            ca_file,
        )
        .context("the module proxy's fetcher")?;
        let counts = RequestCounts::default();
        let proxy = Proxy::new(
            Arc::new(store.clone()) as Arc<dyn ModStore>,
            store.location(),
            fetcher,
            config.list_ttl,
            config.sumdbs.clone(),
            counts.clone(),
        );
        Ok(Self {
            proxy,
            store,
            counts,
            addr,
            in_flight: AtomicU64::new(0),
            last_request: std::sync::Mutex::new(None),
            _direct: direct,
        })
    }

    /// One line for the daemon's log.
    pub fn describe(&self) -> String {
        format!(
            "GOPROXY=http://{}/mod: {}",
            self.addr,
            self.proxy.describe()
        )
    }

    /// Whether no request has been in flight for `bound` and no upload is pending.
    pub fn idle_for(&self, bound: Duration) -> bool {
        self.in_flight.load(Ordering::SeqCst) == 0
            && self.store.uploads().pending == 0
            && lock(&self.last_request).is_none_or(|last| last.elapsed() >= bound)
    }

    /// Gives the pending uploads up to `wait`; returns how many are left.
    pub async fn finish(&self, wait: Duration) -> u64 {
        self.store.finish(wait).await
    }

    /// The figures for `status`.
    pub fn status(&self) -> GoproxyStatus {
        const KINDS: [&str; 7] = ["info", "mod", "zip", "list", "latest", "sumdb", "invalid"];
        let count = |result: &'static str| -> u64 {
            KINDS
                .iter()
                .map(|kind| {
                    self.counts
                        .get_or_create(&RequestLabels { kind, result })
                        .get()
                })
                .sum()
        };
        let UploadCounts {
            pending,
            done,
            failed,
            dropped,
        } = self.store.uploads();
        let hits = count("hit");
        let fetched = count("miss");
        let fallbacks = count("fallback");
        let not_found = count("not_found");
        let errors = count("upstream_error") + count("bad_request");
        GoproxyStatus {
            address: format!("http://{}/mod", self.addr),
            requests: hits + fetched + fallbacks + not_found + errors + count("local"),
            hits,
            fetched,
            fallbacks,
            not_found,
            errors,
            uploads_pending: pending,
            uploads_done: done,
            uploads_failed: failed,
            uploads_dropped: dropped,
        }
    }

    /// Serves `listener` until `stop` says true, then gives the requests in flight [`DRAIN`].
    pub async fn serve(
        self: Arc<Self>,
        listener: std::net::TcpListener,
        mut stop: watch::Receiver<bool>,
    ) {
        let listener = match TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(err) => {
                tracing::warn!("the module proxy's port: {err}");
                return;
            }
        };
        let app = Router::new()
            .route("/mod/{*path}", get(answer))
            .route("/healthz", get(|| async { "ok\n" }))
            .with_state(self.clone());
        let limits = Limits {
            max_connections: MAX_CONNECTIONS,
            timeouts: ServeTimeouts::default(),
            drain: DRAIN,
            loopback_only: true,
        };
        let stopped = async move {
            let _ = stop.wait_for(|stop| *stop).await;
        };
        serve_app(listener, app, limits, None, stopped).await;
    }
}

/// `GET /mod/<path>`, the path as it came (not percent-decoded: see
/// [`crate::goproxy::Request::parse`]).
async fn answer(State(proxy): State<Arc<ModuleProxy>>, uri: Uri) -> Response {
    let _in_flight = InFlight::new(&proxy);
    let raw = uri.path().strip_prefix("/mod/").unwrap_or_default();
    proxy.proxy.answer(raw).await
}
