//! The cache that answers the go command: the local disk tier, the remote tier behind it
//! (optional), per-key locks and the run's statistics. The session ([`crate::cacheprog::session`]) only
//! sees the [`Handler`] interface.
//!
//! A get looks at the local disk first; a local miss asks the remote once, under the key's
//! lock, so that concurrent gets of one key (in this process or in others sharing the lock
//! directory) fetch it once. A put is stored on local disk and answered; its upload happens
//! behind it.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use crate::cacheprog::session::Handler;
use crate::cacheprog::wire::{BodyError, RequestError};
use crate::config::{Config, PrefetchConfig};
use crate::fsutil::{STALE_TEMP_AGE, explain_io};
use crate::ids::{ActionId, BuildKey, OutputId};
use crate::local::disk::{DiskCache, Entry, Spooled};
use crate::local::lock::Locker;

pub mod clear;
pub mod gc;
pub mod manifest;
pub mod misses;
pub mod prefetch;
pub mod push;
pub mod remote;
pub mod stats;
pub mod summary;
pub mod upload;

#[cfg(test)]
mod tests;

use manifest::KeySource;
use prefetch::Prefetcher;
use remote::RemoteTier;
use stats::Stats;
use upload::{Job, Pending};

/// Why a request could not be served.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot {action} under {}: {}", dir.display(), explain_io(source))]
    Io {
        action: &'static str,
        dir: PathBuf,
        source: io::Error,
    },
    #[error("put without a body has OutputID {0}, which is not the sha256 of empty content")]
    EmptyBodyMismatch(OutputId),
    #[error("internal error: {0}")]
    Internal(String),
}

impl CacheError {
    fn io(action: &'static str, dir: PathBuf, source: io::Error) -> Self {
        CacheError::Io {
            action,
            dir,
            source,
        }
    }
}

/// What the session needs to report at close.
#[derive(Debug, Clone, Default)]
pub struct ReportOptions {
    /// Print a summary on stderr.
    pub stats: bool,
    /// Write the figures as JSON here.
    pub stats_file: Option<PathBuf>,
    /// Push the figures here (`--metrics-push-url`).
    pub metrics_push: Option<crate::config::MetricsPush>,
    /// Append a Markdown table here (`--step-summary`, `GITHUB_STEP_SUMMARY`).
    pub step_summary: Option<PathBuf>,
}

impl ReportOptions {
    /// The report options of `config`.
    pub fn of(config: &Config) -> Self {
        Self {
            stats: config.stats,
            stats_file: config.stats_file.clone(),
            metrics_push: config.metrics_push.clone(),
            step_summary: config.step_summary.clone(),
        }
    }

    /// Reports a session's figures at its close, everywhere the options ask: the summary on
    /// stderr (`--stats`), the JSON file, the step summary, the metrics push (bounded by
    /// [`push::PUSH_TIMEOUT`]), and always one summary line for the log (`--log-file`).
    pub async fn publish(&self, report: &stats::Report) {
        tracing::info!("{}", report.one_line());
        if self.stats {
            eprint!("{report}");
        }
        if let Some(path) = &self.stats_file {
            report.write_json(path);
        }
        if let Some(path) = &self.step_summary {
            summary::append(path, report);
        }
        if let Some(push) = &self.metrics_push {
            push.push(report).await;
        }
    }
}

/// Where a run of `config` keeps its entries, for the start line of the log: the remote
/// store's location (`s3://bucket/prefix`, a server's URL) and mode, and the cache directory.
pub fn describe(config: &Config) -> String {
    let dir = config.dirs.cache_dir.display();
    let Some(remote) = &config.remote else {
        return format!("backend disk (local only), cache {dir}");
    };
    let backend = match &remote.store {
        crate::store::StoreConfig::S3(_) => "s3",
        crate::store::StoreConfig::Gcs(_) => "gcs",
        crate::store::StoreConfig::Azblob(_) => "azblob",
        crate::store::StoreConfig::Http(_) => "http",
    };
    let location = remote.store.location();
    let mode = match remote.mode {
        crate::store::RemoteMode::ReadWrite => "read-write",
        crate::store::RemoteMode::ReadOnly => "read-only",
        crate::store::RemoteMode::WriteOnly => "write-only",
    };
    let mut text = format!("backend {backend} {location} ({mode}), cache {dir}");
    if let Some(own) = &remote.namespaces.own {
        text += &format!(", namespace {}", own.as_str());
    }
    text
}

/// The tiered cache.
#[derive(Debug)]
pub struct Cache {
    disk: DiskCache,
    locks: Locker,
    stats: Arc<Stats>,
    report: ReportOptions,
    remote: Option<Arc<RemoteTier>>,
    /// The prefetch settings, when the remote tier is on and `--prefetch` is not off.
    prefetch_config: Option<PrefetchConfig>,
    /// Started once, when the build key is known ([`Cache::start_prefetch`]).
    prefetch: OnceLock<Arc<Prefetcher>>,
}

/// What [`Cache::start_prefetch`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrefetchStart {
    /// Prefetch of this key's manifest began.
    Started(BuildKey),
    /// A prefetch had begun already, of this key: it goes on.
    Already(BuildKey),
    /// No remote tier, or `--prefetch=off`.
    Off,
}

/// What a [`Cache::flush`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flushed {
    /// Uploads still pending when `--upload-wait` ran out: they go on.
    pub left: u64,
    /// Entries in the manifest written (0: none written, or unchanged).
    pub manifest_written: u64,
}

impl Cache {
    /// Opens the cache that `config` describes. Never fails: a cache directory that cannot be
    /// created is said once on stderr, and then every get misses and every put fails with a
    /// clear message, which is what the go command can act on. A remote store that cannot be
    /// set up is said once too, and the cache works on local disk alone. Call it inside a
    /// tokio runtime: the remote tier's upload workers start here, and prefetch of this
    /// process's build key.
    pub fn open(config: &Config) -> Self {
        let cache = Self::open_idle(config);
        if let Some(prefetch) = &cache.prefetch_config {
            cache.start_prefetch(Prefetcher::source_for(prefetch));
        }
        cache
    }

    /// As [`Cache::open`], but prefetch waits for [`Cache::start_prefetch`]: a daemon learns
    /// the build key from its first session, or from `warm`.
    pub fn open_idle(config: &Config) -> Self {
        let disk = DiskCache::at(&config.dirs.cache_dir).verifying_hits(config.verify_hits);
        match disk.prepare() {
            Ok(()) => {
                let sweeper = disk.clone();
                // Not on the request path: a killed process's leftovers can wait.
                std::thread::spawn(move || {
                    if let Ok(n) = sweeper.sweep_tmp(STALE_TEMP_AGE)
                        && n > 0
                    {
                        tracing::debug!("removed {n} stale temporary files");
                    }
                });
            }
            Err(err) => tracing::warn!(
                "{}",
                CacheError::io("create the cache directory", disk.root().to_path_buf(), err)
            ),
        }
        let stats = Arc::new(Stats::with_remote(config.remote.is_some()));
        let remote = config.remote.as_ref().and_then(|remote| {
            RemoteTier::start(remote, &disk, stats.clone())
                .map_err(|err| {
                    tracing::warn!("remote cache {err}; going on with the local cache only");
                })
                .ok()
                .map(Arc::new)
        });
        if let Some(remote) = &remote {
            remote.start_filters();
        }
        let prefetch_config =
            (remote.as_ref()).and_then(|_| config.remote.as_ref()?.prefetch.clone());
        Self {
            disk,
            locks: Locker::new(config.dirs.lock_type, &config.dirs.lock_dir),
            stats,
            report: ReportOptions::of(config),
            remote,
            prefetch_config,
            prefetch: OnceLock::new(),
        }
    }

    /// Starts prefetching the manifest of the build that `source` names, unless a prefetch
    /// has begun already (the first key wins; later sessions share it).
    pub fn start_prefetch(&self, source: KeySource) -> PrefetchStart {
        let (Some(remote), Some(config)) = (&self.remote, &self.prefetch_config) else {
            return PrefetchStart::Off;
        };
        let mut started = false;
        let prefetcher = self.prefetch.get_or_init(|| {
            started = true;
            let prefetcher = Arc::new(Prefetcher::new(remote.clone(), config.clone(), source));
            prefetcher.start(&self.disk);
            prefetcher
        });
        let key = *prefetcher.key();
        match started {
            true => PrefetchStart::Started(key),
            false => PrefetchStart::Already(key),
        }
    }

    /// The prefetch, once started.
    pub fn prefetcher(&self) -> Option<&Arc<Prefetcher>> {
        self.prefetch.get()
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The remote tier, when there is one.
    pub fn remote(&self) -> Option<&Arc<RemoteTier>> {
        self.remote.as_ref()
    }

    /// Whether a local miss may be filled from the remote tier.
    pub fn reads_remote(&self) -> bool {
        self.remote.as_ref().is_some_and(|r| r.reads())
    }

    /// Where the output `id` is (or would be) on local disk.
    pub fn output_path(&self, id: &OutputId) -> PathBuf {
        self.disk.output_path(id)
    }

    /// Looks an action up on local disk only.
    pub fn get_local(&self, action_id: &ActionId) -> Result<Option<Entry>, CacheError> {
        self.disk.get(action_id).map_err(|err| {
            CacheError::io("read an action entry", self.disk.root().to_path_buf(), err)
        })
    }

    /// Counts a get answered with `hit` (the output's size; `None`: a miss): statistics and
    /// the prefetch manifest. For this cache's own gets, and for those another process
    /// answered from this cache's disk (`connect`, for the daemon).
    pub fn note_local_get(&self, action_id: ActionId, hit: Option<u64>, took: Duration) {
        self.stats.record_get(hit, took);
        if let Some(prefetch) = self.prefetch.get() {
            prefetch.note_get(action_id, hit);
        }
    }

    /// Stores a put's output and entry on local disk (counted), without the remote tier:
    /// what to upload is returned, for [`Cache::after_put`] here or in a daemon, with whether
    /// the output was on disk already.
    pub async fn put_local(
        &self,
        action_id: ActionId,
        output_id: OutputId,
        body: Option<Spooled>,
    ) -> Result<(Job, bool), CacheError> {
        let start = Instant::now();
        let _guard = self.locks.lock(&output_id.0).await;
        let disk = self.disk.clone();
        let stored = blocking(move || store(&disk, &action_id, output_id, body)).await;
        match &stored {
            Ok(stored) => {
                tracing::debug!(
                    action = %action_id,
                    output = %output_id,
                    size = stored.size,
                    already = stored.already,
                    "put"
                );
                self.stats
                    .record_put(stored.size, stored.already, start.elapsed());
            }
            Err(_) => self.stats.record_put_error(start.elapsed()),
        }
        stored.map(|stored| {
            let job = Job {
                action: action_id,
                output: output_id,
                size: stored.size,
                time: stored.time,
                path: stored.path,
            };
            (job, stored.already)
        })
    }

    /// What follows a put stored on local disk: the prefetch manifest notes it and the
    /// remote tier uploads it, behind the build.
    pub fn after_put(&self, job: Job) {
        if let Some(prefetch) = self.prefetch.get() {
            prefetch.note_put(job.action, job.size);
        }
        if let Some(remote) = &self.remote {
            remote.upload_later(job);
        }
    }

    /// Counts a put that another process stored on this cache's disk (`connect`, for the
    /// daemon), then uploads it as [`Cache::after_put`] does.
    pub fn note_local_put(&self, job: Job, already: bool, took: Duration) {
        self.stats.record_put(job.size, already, took);
        self.after_put(job);
    }

    /// The end of a CI job's builds (a daemon's `flush`): waits up to `wait` for
    /// the uploads queued so far, saying how it goes, and writes the prefetch manifest. The
    /// cache stays open.
    pub async fn flush(
        &self,
        wait: Duration,
        progress: &mut (dyn FnMut(Pending) + Send),
    ) -> Flushed {
        let manifest = async {
            if let Some(prefetch) = self.prefetch.get() {
                prefetch.finish().await;
            }
        };
        let uploads = async {
            match &self.remote {
                Some(remote) => remote.drain(wait, progress).await,
                None => 0,
            }
        };
        let ((), left) = tokio::join!(manifest, uploads);
        Flushed {
            left,
            manifest_written: (self.remote.as_ref()).map_or(0, |r| {
                r.remote_stats().manifest_written.load(Ordering::Relaxed)
            }),
        }
    }

    /// The end of the run: prefetch stops and writes its manifest while the uploads get
    /// their `--upload-wait`.
    pub async fn finish(&self) {
        self.finish_leaving_pack().await;
        self.write_due_pack().await;
    }

    /// As [`Cache::finish`], but a prefetch pack that is due is left for
    /// [`Cache::write_due_pack`] (a direct session writes it once stdout is closed).
    async fn finish_leaving_pack(&self) {
        let uploads = async {
            if let Some(remote) = &self.remote {
                remote.finish().await;
            }
        };
        let manifest = async {
            if let Some(prefetch) = self.prefetch.get() {
                prefetch.finish_leaving_pack().await;
            }
        };
        tokio::join!(uploads, manifest);
    }

    /// Whether the session left a prefetch pack to write ([`Cache::write_due_pack`]).
    pub fn pack_due(&self) -> bool {
        self.prefetch.get().is_some_and(|p| p.pack_due())
    }

    /// Writes the prefetch pack the session's close left, after the go command's last
    /// answer.
    pub async fn write_due_pack(&self) {
        if let Some(prefetch) = self.prefetch.get() {
            prefetch.write_due_pack().await;
        }
    }

    /// Counts a get's outcome (and notes a hit for the prefetch manifest).
    pub fn record_get(
        &self,
        action_id: &ActionId,
        found: &Result<Option<Entry>, CacheError>,
        start: Instant,
    ) {
        match found {
            Ok(entry) => {
                tracing::debug!(action = %action_id, hit = entry.is_some(), "get");
                self.note_local_get(*action_id, entry.as_ref().map(|e| e.size), start.elapsed());
            }
            Err(err) => {
                tracing::debug!(action = %action_id, "get failed: {err}");
                self.stats.record_get_error(start.elapsed());
            }
        }
    }

    /// A get that missed locally: the remote is asked once, under the key's lock. Another
    /// task or process may have fetched the key while this one waited for the lock, so the
    /// disk is asked again first.
    async fn get_through(&self, action_id: ActionId) -> Result<Option<Entry>, CacheError> {
        let read_disk = || {
            let disk = self.disk.clone();
            blocking(move || {
                disk.get(&action_id).map_err(|err| {
                    CacheError::io("read an action entry", disk.root().to_path_buf(), err)
                })
            })
        };
        let Some(remote) = self.remote.as_ref().filter(|r| r.reads()) else {
            return read_disk().await;
        };
        let _guard = self.locks.lock(&action_id.0).await;
        if let Some(entry) = read_disk().await? {
            return Ok(Some(entry));
        }
        Ok(remote.fetch(&self.disk, action_id).await)
    }
}

/// What storing a put did.
#[derive(Debug)]
struct Stored {
    path: PathBuf,
    size: u64,
    /// The output was on disk already.
    already: bool,
    time: SystemTime,
}

/// Stores a put's output, then its action entry (in that order, so that an entry never
/// names a missing output).
fn store(
    disk: &DiskCache,
    action: &ActionId,
    output: OutputId,
    body: Option<Spooled>,
) -> Result<Stored, CacheError> {
    let dir = || disk.root().to_path_buf();
    let (size, stored) = match body {
        Some(body) => (body.size, disk.store_output(body)),
        None if output == OutputId::of(&[]) => (0, disk.store_empty_output()),
        None => return Err(CacheError::EmptyBodyMismatch(output)),
    };
    let (path, already) = stored.map_err(|err| CacheError::io("store an output", dir(), err))?;
    let time = SystemTime::now();
    disk.write_entry(action, &output, size, time)
        .map_err(|err| CacheError::io("store an action entry", dir(), err))?;
    Ok(Stored {
        path,
        size,
        already,
        time,
    })
}

/// Runs blocking file work off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, CacheError> + Send + 'static,
) -> Result<T, CacheError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| CacheError::Internal(err.to_string()))?
}

impl Handler for Cache {
    type Error = CacheError;

    fn spool_file(&self) -> io::Result<tempfile::NamedTempFile> {
        self.disk.spool_file()
    }

    fn get_now(&self, action_id: ActionId) -> Option<Result<Option<Entry>, CacheError>> {
        // A local lookup is a few system calls; its answer is final unless it is a miss that
        // the remote may fill, which needs waiting.
        let start = Instant::now();
        let found = self.disk.get(&action_id).map_err(|err| {
            CacheError::io("read an action entry", self.disk.root().to_path_buf(), err)
        });
        if matches!(found, Ok(None)) && self.remote.as_ref().is_some_and(|r| r.reads()) {
            return None;
        }
        self.record_get(&action_id, &found, start);
        Some(found)
    }

    async fn get(&self, action_id: ActionId) -> Result<Option<Entry>, CacheError> {
        let start = Instant::now();
        let found = self.get_through(action_id).await;
        self.record_get(&action_id, &found, start);
        found
    }

    async fn put(
        &self,
        action_id: ActionId,
        output_id: OutputId,
        body: Option<Spooled>,
    ) -> Result<PathBuf, CacheError> {
        let (job, _) = self.put_local(action_id, output_id, body).await?;
        let path = job.path.clone();
        self.after_put(job);
        Ok(path)
    }

    fn refused(&self, err: &RequestError) {
        match err {
            // The body could not be written locally: a failed put, not a bad request.
            RequestError::BadBody {
                reason: BodyError::Store(_),
                ..
            } => self.stats.record_put_error(Duration::ZERO),
            _ => self.stats.record_bad_request(),
        }
    }

    async fn close(&self) {
        self.finish_leaving_pack().await;
        self.report.publish(&self.stats.report()).await;
    }
}
