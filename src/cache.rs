//! The cache that answers the go command: the local disk tier, per-key locks and the run's
//! statistics. Remote tiers slot in behind the disk here; the session ([`crate::session`])
//! only sees the [`Handler`] interface.

use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use crate::config::Config;
use crate::disk::{DiskCache, Entry, Spooled, explain_io};
use crate::lock::Locker;
use crate::protocol::{ActionId, BodyError, OutputId, RequestError};
use crate::session::Handler;
use crate::stats::Stats;

/// How old a leftover temporary file must be before it is removed at start-up.
const TMP_SWEEP_AGE: Duration = Duration::from_secs(3600);

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
}

/// The tiered cache.
#[derive(Debug)]
pub struct Cache {
    disk: DiskCache,
    locks: Locker,
    stats: Stats,
    report: ReportOptions,
}

impl Cache {
    /// Opens the cache that `config` describes. Never fails: a cache directory that cannot be
    /// created is said once on stderr, and then every get misses and every put fails with a
    /// clear message, which is what the go command can act on.
    pub fn open(config: &Config) -> Self {
        let disk = DiskCache::at(&config.cache_dir);
        match disk.prepare() {
            Ok(()) => {
                let sweeper = disk.clone();
                // Not on the request path: a killed process's leftovers can wait.
                std::thread::spawn(move || {
                    if let Ok(n) = sweeper.sweep_tmp(TMP_SWEEP_AGE)
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
        Self {
            disk,
            locks: Locker::new(config.lock_type, &config.lock_dir),
            stats: Stats::new(),
            report: ReportOptions {
                stats: config.stats,
                stats_file: config.stats_file.clone(),
            },
        }
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    fn record_get(
        &self,
        action_id: &ActionId,
        found: &Result<Option<Entry>, CacheError>,
        start: Instant,
    ) {
        match found {
            Ok(entry) => {
                tracing::debug!(action = %action_id, hit = entry.is_some(), "get");
                let size = entry.as_ref().map(|e| e.size);
                self.stats.record_get(size, start.elapsed());
            }
            Err(err) => {
                tracing::debug!(action = %action_id, "get failed: {err}");
                self.stats.record_get_error(start.elapsed());
            }
        }
    }
}

/// Stores a put's output, then its action entry (in that order, so that an entry never
/// names a missing output). Returns the output's path, its size and whether it was there.
fn store(
    disk: &DiskCache,
    action: &ActionId,
    output: OutputId,
    body: Option<Spooled>,
) -> Result<(PathBuf, u64, bool), CacheError> {
    let dir = || disk.root().to_path_buf();
    let (size, stored) = match body {
        Some(body) => (body.size, disk.store_output(body)),
        None if output == OutputId::of(&[]) => (0, disk.store_empty_output()),
        None => return Err(CacheError::EmptyBodyMismatch(output)),
    };
    let (path, already) = stored.map_err(|err| CacheError::io("store an output", dir(), err))?;
    disk.write_entry(action, &output, size, SystemTime::now())
        .map_err(|err| CacheError::io("store an action entry", dir(), err))?;
    Ok((path, size, already))
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
    fn spool_file(&self) -> io::Result<tempfile::NamedTempFile> {
        self.disk.spool_file()
    }

    fn get_now(&self, action_id: ActionId) -> Option<Result<Option<Entry>, CacheError>> {
        // The disk is the only tier: its answer is final, and a lookup is a few system calls.
        let start = Instant::now();
        let found = self.disk.get(&action_id).map_err(|err| {
            CacheError::io("read an action entry", self.disk.root().to_path_buf(), err)
        });
        self.record_get(&action_id, &found, start);
        Some(found)
    }

    async fn get(&self, action_id: ActionId) -> Result<Option<Entry>, CacheError> {
        let start = Instant::now();
        let disk = self.disk.clone();
        let found = blocking(move || {
            disk.get(&action_id).map_err(|err| {
                CacheError::io("read an action entry", disk.root().to_path_buf(), err)
            })
        })
        .await;
        self.record_get(&action_id, &found, start);
        found
    }

    async fn put(
        &self,
        action_id: ActionId,
        output_id: OutputId,
        body: Option<Spooled>,
    ) -> Result<PathBuf, CacheError> {
        let start = Instant::now();
        let _guard = self.locks.lock(&output_id.0).await;
        let disk = self.disk.clone();
        let stored = blocking(move || store(&disk, &action_id, output_id, body)).await;
        match &stored {
            Ok((_, size, already)) => {
                tracing::debug!(action = %action_id, output = %output_id, size, already, "put");
                self.stats.record_put(*size, *already, start.elapsed())
            }
            Err(_) => self.stats.record_put_error(start.elapsed()),
        }
        stored.map(|(path, _, _)| path)
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
        let report = self.stats.report();
        if self.report.stats {
            eprint!("{report}");
        }
        if let Some(path) = &self.report.stats_file {
            let json = serde_json::to_vec_pretty(&report).expect("the report serializes");
            if let Err(err) = std::fs::write(path, json) {
                tracing::warn!("cannot write stats file {}: {err}", path.display());
            }
        }
    }
}
