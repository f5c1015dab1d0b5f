//! Write-behind uploads: a put is answered once its output is on local disk, and the upload
//! to the remote store happens here, behind it.
//!
//! A bounded queue feeds at most `concurrency` uploads at a time. A full queue drops the
//! upload (counted) rather than slow the build. Each upload reads the local output file,
//! encodes it as an entry (zstd where it pays) and puts it with a conditional create, so an
//! existing key is never written again (the store retries a put that failed for a reason that
//! may pass, and stops taking them when its circuit breaker opens: [`crate::store`]). Small entries go in one request from memory; larger
//! ones are encoded to a temporary file and streamed from it, so no whole body is ever in
//! memory. At close, [`Uploader::finish`] gives pending uploads a bounded time, says on stderr
//! what it is waiting for when that takes over a second, and counts what it had to drop.

use std::io::{self, BufReader, Read, Seek};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use super::misses::MissFilters;
use super::stats::{RemoteStats, Stats, add, human_bytes, nanos};
use crate::ids::{ActionId, OutputId};
use crate::store::format::{self, FLAG_ZSTD, Header};
use crate::store::{PutOutcome, RemoteError, RemoteStore, Upload};
use crate::sync::lock;

/// Entries up to this size are uploaded from memory in one request.
pub const IN_MEMORY_MAX: u64 = 4 * 1024 * 1024;

/// One output to upload.
#[derive(Debug, Clone)]
pub struct Job {
    pub action: ActionId,
    pub output: OutputId,
    pub size: u64,
    pub time: SystemTime,
    /// The output file on local disk.
    pub path: PathBuf,
}

/// What a [`Uploader::drain`] still waits for.
#[derive(Debug, Clone, Copy)]
pub struct Pending {
    pub uploads: u64,
    pub bytes: u64,
    pub waited: Duration,
}

/// The upload queue and its workers.
#[derive(Debug)]
pub struct Uploader {
    queue: std::sync::Mutex<Option<mpsc::Sender<Job>>>,
    pending: Arc<AtomicU64>,
    pending_bytes: Arc<AtomicU64>,
    stats: Arc<Stats>,
    worker: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// `--upload-min-size`, shared with the tasks.
    min_size: Arc<AtomicU64>,
}

/// What the uploader shares with its tasks.
#[derive(Debug)]
struct Shared {
    store: Arc<dyn RemoteStore>,
    stats: Arc<Stats>,
    tmp_dir: PathBuf,
    pending: Arc<AtomicU64>,
    pending_bytes: Arc<AtomicU64>,
    /// Entries smaller than this (encoded) are not uploaded (`--upload-min-size`).
    min_size: Arc<AtomicU64>,
    /// Told what each upload found, for the key filter.
    misses: Option<Arc<MissFilters>>,
}

impl Uploader {
    /// Starts the workers on the current tokio runtime.
    pub fn start(
        store: Arc<dyn RemoteStore>,
        stats: Arc<Stats>,
        tmp_dir: PathBuf,
        concurrency: usize,
        queue: usize,
        misses: Option<Arc<MissFilters>>,
    ) -> Self {
        let (tx, mut rx) = mpsc::channel::<Job>(queue.max(1));
        let pending = Arc::new(AtomicU64::new(0));
        let pending_bytes = Arc::new(AtomicU64::new(0));
        let min_size = Arc::new(AtomicU64::new(0));
        let shared = Arc::new(Shared {
            store,
            stats: stats.clone(),
            tmp_dir,
            pending: pending.clone(),
            pending_bytes: pending_bytes.clone(),
            min_size: min_size.clone(),
            misses,
        });
        let limit = Arc::new(Semaphore::new(concurrency.max(1)));
        let worker = tokio::spawn(async move {
            let mut tasks = JoinSet::new();
            while let Some(job) = rx.recv().await {
                let permit = limit.clone().acquire_owned().await.expect("never closed");
                let shared = shared.clone();
                tasks.spawn(async move {
                    shared.upload(job).await;
                    drop(permit);
                });
                while tasks.try_join_next().is_some() {}
            }
            while tasks.join_next().await.is_some() {}
        });
        Self {
            queue: std::sync::Mutex::new(Some(tx)),
            pending,
            pending_bytes,
            stats,
            worker: std::sync::Mutex::new(Some(worker)),
            min_size,
        }
    }

    /// Skips the entries whose encoded size (header and body, as stored) is under `bytes`:
    /// they stay in the local cache only, counted as `uploads_small`.
    pub fn with_min_size(self, bytes: u64) -> Self {
        self.min_size.store(bytes, Ordering::Relaxed);
        self
    }

    /// `--upload-min-size`.
    pub fn min_size(&self) -> u64 {
        self.min_size.load(Ordering::Relaxed)
    }

    fn remote_stats(&self) -> &RemoteStats {
        self.stats
            .remote
            .as_ref()
            .expect("an uploader has remote stats")
    }

    /// Queues an upload; drops it (counted) if the queue is full or closed.
    pub fn enqueue(&self, job: Job) {
        let stats = self.remote_stats();
        let size = job.size;
        let queue = lock(&self.queue);
        let Some(tx) = queue.as_ref() else {
            add(&stats.uploads_dropped, 1);
            return;
        };
        let now = self.pending.fetch_add(1, Ordering::SeqCst) + 1;
        self.pending_bytes.fetch_add(size, Ordering::SeqCst);
        stats.queue_high_water.fetch_max(now, Ordering::Relaxed);
        if tx.try_send(job).is_err() {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            self.pending_bytes.fetch_sub(size, Ordering::SeqCst);
            add(&stats.uploads_dropped, 1);
        }
    }

    /// Uploads queued or in flight, and their bytes.
    pub fn pending(&self) -> (u64, u64) {
        (
            self.pending.load(Ordering::SeqCst),
            self.pending_bytes.load(Ordering::SeqCst),
        )
    }

    /// Waits up to `wait` for the uploads queued so far, without closing the queue (a
    /// daemon's `flush`: builds may queue more afterwards). `progress` hears what is still
    /// pending about once a second. Returns how many are still pending at the end: they go on.
    pub async fn drain(&self, wait: Duration, progress: &mut (dyn FnMut(Pending) + Send)) -> u64 {
        let start = Instant::now();
        let mut next_report = start + Duration::from_secs(1);
        loop {
            let (uploads, bytes) = self.pending();
            let now = Instant::now();
            if uploads == 0 || now >= start + wait {
                return uploads;
            }
            if now >= next_report {
                progress(Pending {
                    uploads,
                    bytes,
                    waited: start.elapsed(),
                });
                next_report += Duration::from_secs(1);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Closes the queue and waits up to `wait` for pending uploads, telling stderr what it
    /// waits for after the first second. What is left then is dropped and counted.
    pub async fn finish(&self, wait: Duration) {
        drop(lock(&self.queue).take());
        let Some(mut worker) = lock(&self.worker).take() else {
            return;
        };
        let start = Instant::now();
        let deadline = start + wait;
        let mut said = false;
        loop {
            let tick =
                Duration::from_secs(1).min(deadline.saturating_duration_since(Instant::now()));
            match tokio::time::timeout(tick, &mut worker).await {
                Ok(_) => {
                    if said {
                        crate::logging::say(
                            tracing::Level::INFO,
                            &format!("uploads finished in {:.1}s", start.elapsed().as_secs_f64()),
                        );
                    }
                    break;
                }
                Err(_) if Instant::now() >= deadline => {
                    worker.abort();
                    let left = self.pending.swap(0, Ordering::SeqCst);
                    add(&self.remote_stats().uploads_dropped, left);
                    crate::logging::say(
                        tracing::Level::WARN,
                        &format!(
                            "{left} uploads not finished after {} were dropped (raise --upload-wait to wait longer)",
                            humantime::format_duration(wait)
                        ),
                    );
                    break;
                }
                Err(_) => {
                    let left = self.pending.load(Ordering::SeqCst);
                    let bytes = self.pending_bytes.load(Ordering::SeqCst);
                    crate::logging::say(
                        tracing::Level::INFO,
                        &format!(
                            "waiting for {left} uploads ({}) to finish, {}s so far",
                            human_bytes(bytes),
                            start.elapsed().as_secs()
                        ),
                    );
                    said = true;
                }
            }
        }
        add(
            &self.remote_stats().close_wait_nanos,
            nanos(start.elapsed()),
        );
    }
}

impl Shared {
    fn stats(&self) -> &RemoteStats {
        self.stats
            .remote
            .as_ref()
            .expect("an uploader has remote stats")
    }

    async fn upload(&self, job: Job) {
        let size = job.size;
        let outcome = self.try_upload(&job).await;
        if let (Some(misses), Ok((found, _))) = (&self.misses, &outcome) {
            misses.uploaded(job.action, *found);
        }
        let stats = self.stats();
        match outcome {
            Ok((PutOutcome::Stored, sent)) => {
                add(&stats.uploads, 1);
                add(&stats.bytes_up, sent);
                add(&stats.raw_bytes_up, size);
            }
            Ok((PutOutcome::Exists, _)) => add(&stats.uploads_existing, 1),
            Ok((PutOutcome::Skipped, _)) => {}
            Err(UploadError::Small(sent)) => {
                tracing::debug!(action = %job.action, size = sent, "not uploaded: under --upload-min-size");
                add(&stats.uploads_small, 1);
            }
            Err(UploadError::Off) => add(&stats.uploads_dropped, 1),
            Err(UploadError::Local(err)) => {
                // The output went away (clear-local) or cannot be read: nothing to upload.
                tracing::debug!(action = %job.action, "upload skipped: {err}");
                add(&stats.uploads_dropped, 1);
            }
            Err(UploadError::Remote(err)) => {
                tracing::debug!(action = %job.action, "upload failed: {err}");
                add(&stats.upload_errors, 1);
            }
        }
        self.pending.fetch_sub(1, Ordering::SeqCst);
        self.pending_bytes.fetch_sub(size, Ordering::SeqCst);
    }

    async fn try_upload(&self, job: &Job) -> Result<(PutOutcome, u64), UploadError> {
        if !self.store.usable() {
            return Err(UploadError::Off);
        }
        let encode_job = job.clone();
        let tmp_dir = self.tmp_dir.clone();
        // `_temp` keeps a large entry's temporary file until the upload is done.
        let (upload, _temp) = tokio::task::spawn_blocking(move || encode(&encode_job, &tmp_dir))
            .await
            .map_err(|err| UploadError::Local(io::Error::other(err.to_string())))?
            .map_err(UploadError::Local)?;
        let sent = upload.len();
        if sent < self.min_size.load(Ordering::Relaxed) {
            return Err(UploadError::Small(sent));
        }
        match self.store.put(&job.action, upload).await {
            Ok(outcome) => Ok((outcome, sent)),
            // Switched off while this upload waited: dropped, not another error.
            Err(RemoteError::SwitchedOff) => Err(UploadError::Off),
            Err(err) => Err(UploadError::Remote(err)),
        }
    }
}

#[derive(Debug)]
enum UploadError {
    /// The remote tier is switched off for this run.
    Off,
    /// The entry, of this many bytes, is under `--upload-min-size`.
    Small(u64),
    Local(io::Error),
    Remote(RemoteError),
}

/// Encodes the entry for `job` from its local file: in memory when small, else into a
/// temporary file (returned too, so that it lives until the upload is done).
fn encode(
    job: &Job,
    tmp_dir: &std::path::Path,
) -> io::Result<(Upload, Option<tempfile::NamedTempFile>)> {
    let (header, mut body) = open_entry(job)?;
    if job.size <= IN_MEMORY_MAX {
        let mut out = Vec::with_capacity(format::HEADER_LEN + job.size as usize / 2);
        format::write_entry(&header, &mut body, &mut out)?;
        return Ok((Upload::Bytes(Bytes::from(out)), None));
    }
    let mut temp = tempfile::Builder::new()
        .prefix("upload-")
        .tempfile_in(tmp_dir)?;
    let len = format::write_entry(
        &header,
        &mut body,
        &mut io::BufWriter::new(temp.as_file_mut()),
    )?;
    Ok((
        Upload::File {
            path: temp.path().to_path_buf(),
            len,
        },
        Some(temp),
    ))
}

/// Writes the entry for `job`, from its local file, to `out` exactly as an upload of it
/// sends it (a pack holds entries this way: [`super::pack`]). Returns the bytes written.
pub(super) fn encode_to(job: &Job, out: &mut impl io::Write) -> io::Result<u64> {
    let (header, mut body) = open_entry(job)?;
    format::write_entry(&header, &mut body, out)
}

/// Opens `job`'s local file, checks its size, and decides the entry's header (compressed
/// when a sample says it pays): the header, with the body ready to read from its start.
fn open_entry(job: &Job) -> io::Result<(Header, BufReader<std::fs::File>)> {
    let mut file = crate::fsutil::open_regular(&job.path)?
        .ok_or_else(|| io::Error::other(format!("{} is not a regular file", job.path.display())))?;
    let len = file.metadata()?.len();
    if len != job.size {
        return Err(io::Error::other(format!(
            "{} has {len} bytes, expected {}",
            job.path.display(),
            job.size
        )));
    }
    let mut sample = vec![0u8; (job.size as usize).min(format::SAMPLE_LEN)];
    file.read_exact(&mut sample)?;
    file.rewind()?;
    let header = Header {
        flags: if format::compression_pays(job.size, &sample) {
            FLAG_ZSTD
        } else {
            0
        },
        output_id: job.output,
        size: job.size,
        time: job.time,
    };
    Ok((header, BufReader::with_capacity(256 * 1024, file)))
}
