//! The remote tier as the cache uses it, whatever the store: fetching an entry on a local
//! miss (verified before it is stored), once per key however many ask; the upload decision;
//! the remote figures. Time bounds, retried uploads and the circuit breaker are wrappers
//! around the store ([`crate::store::open_store`]): this tier only asks whether the store is
//! still [`usable`](RemoteStore::usable).
//!
//! A fetch is one request. The entry's bytes stream from the network into a decoder on a
//! blocking thread, which writes the body to a temporary file in the cache while hashing it;
//! only a body whose size and sha256 match its header's OutputID is renamed into place, with
//! the header's put time. A corrupt, truncated or unreadable entry is a miss, counted, and
//! nothing of it is kept.
//!
//! Every fetch, the go command's or a prefetch's ([`super::prefetch`]), is registered while it
//! runs, so that a get of a key being prefetched waits for that fetch instead of asking again.
//! The go command's gets never queue behind prefetch work: a key that prefetch has not
//! started is fetched by the get itself.

use std::collections::{HashMap, HashSet};
use std::io::{self, BufWriter, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use futures::StreamExt;
use tokio::sync::{mpsc, watch};

use super::misses::MissFilters;
use super::stats::{RemoteStats, Stats, add, nanos};
use super::upload::{Job, Pending, Uploader};
use crate::config::RemoteConfig;
use crate::ids::ActionId;
use crate::local::disk::{DiskCache, Entry, Spooled};
use crate::store::format::{self, FormatError};
use crate::store::namespace::Namespaces;
use crate::store::{RemoteError, RemoteMode, RemoteStore};
use crate::sync::lock;

/// Chunks of an entry in flight between the network and the decoder.
const CHANNEL_CHUNKS: usize = 4;

/// The remote tier of one run.
#[derive(Debug)]
pub struct RemoteTier {
    /// The namespaces read, own first (one, the store itself, without namespaces).
    pub(super) namespaces: Namespaces,
    uploader: Uploader,
    pub(super) reads: bool,
    pub(super) writes: bool,
    /// Actions fetched in this run, with the namespace each was found in (an index into
    /// `namespaces`): never uploaded back.
    pub(super) downloaded: Mutex<HashMap<ActionId, usize>>,
    /// Keys whose remote entry was found damaged in this run: not asked for again.
    damaged: Mutex<HashSet<ActionId>>,
    /// Fetches running now, by key, with what they found once they end.
    in_flight: Mutex<HashMap<ActionId, watch::Receiver<Outcome>>>,
    /// The namespaces' key filters ([`super::misses`]), kept up to date at the end whether
    /// or not this run uses them.
    misses: Arc<MissFilters>,
    /// Whether a local miss that the filters rule out is answered at once.
    instant_misses: bool,

    pub(super) upload_wait: Duration,

    /// The largest decoded entry taken (`--max-entry-size`).
    pub(super) max_entry_size: u64,
    stats: Arc<Stats>,
}

/// How a fetch that others may be waiting for ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    Running,
    /// The entry is on local disk now.
    Found,
    /// The remote has no (usable) entry.
    Missing,
    /// The fetch failed; asking again may work.
    Failed,
}

/// A registered fetch of one key: ends with an [`Outcome`] (`Failed` if dropped unset).
pub(super) struct Claim<'a> {
    tier: &'a RemoteTier,
    pub(super) action: ActionId,
    tx: watch::Sender<Outcome>,
    outcome: Outcome,
}

impl Claim<'_> {
    pub(super) fn end(mut self, outcome: Outcome) {
        self.outcome = outcome;
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        lock(&self.tier.in_flight).remove(&self.action);
        let outcome = match self.outcome {
            Outcome::Running => Outcome::Failed,
            done => done,
        };
        self.tx.send_replace(outcome);
    }
}

/// Why a fetch stored nothing.
pub(super) enum FetchError {
    Remote(RemoteError),
    Corrupt(FormatError),
    Local(io::Error),
}

impl RemoteTier {
    /// Starts the tier (and its upload workers, on the current tokio runtime).
    pub fn start(
        config: &RemoteConfig,
        disk: &DiskCache,
        stats: Arc<Stats>,
    ) -> Result<Self, RemoteError> {
        let namespaces = Namespaces::open(
            &config.store,
            &config.namespaces,
            config.mode,
            config.timeout,
            config.fault_rate.0,
        )?;
        Ok(Self::with_namespaces(namespaces, config, disk, stats))
    }

    /// Starts the tier on a given store, wrapped as it should be (tests pass stores of their
    /// own).
    pub fn with_store(
        store: Arc<dyn RemoteStore>,
        config: &RemoteConfig,
        disk: &DiskCache,
        stats: Arc<Stats>,
    ) -> Self {
        Self::with_namespaces(Namespaces::single(store), config, disk, stats)
    }

    /// Starts the tier on given namespaces' stores.
    pub fn with_namespaces(
        namespaces: Namespaces,
        config: &RemoteConfig,
        disk: &DiskCache,
        stats: Arc<Stats>,
    ) -> Self {
        if let Some(remote) = &stats.remote {
            remote.name_namespaces(namespaces.names());
        }
        let misses = Arc::new(MissFilters::new(
            namespaces.names().len(),
            (config.instant_misses).unwrap_or(crate::config::DEFAULT_INSTANT_MISS_AGE),
            stats.clone(),
        ));
        let uploader = Uploader::start(
            namespaces.own().clone(),
            stats.clone(),
            disk.tmp_dir().to_path_buf(),
            config.upload_concurrency,
            config.upload_queue,
            Some(misses.clone()),
        )
        .with_min_size(config.upload_min_size);
        let reads = config.mode != RemoteMode::WriteOnly;
        Self {
            instant_misses: reads && config.instant_misses.is_some(),
            misses,
            namespaces,
            uploader,
            reads,
            writes: config.mode != RemoteMode::ReadOnly,
            downloaded: Mutex::new(HashMap::new()),
            damaged: Mutex::new(HashSet::new()),
            in_flight: Mutex::new(HashMap::new()),
            upload_wait: config.upload_wait,
            max_entry_size: config.max_entry_size,
            stats,
        }
    }

    pub(super) fn remote_stats(&self) -> &RemoteStats {
        self.stats
            .remote
            .as_ref()
            .expect("a remote tier has remote stats")
    }

    /// The own namespace's store: the one written.
    pub(super) fn store(&self) -> &Arc<dyn RemoteStore> {
        self.namespaces.own()
    }

    /// Whether a local miss should ask the remote.
    pub fn reads(&self) -> bool {
        self.reads && self.namespaces.usable()
    }

    /// The namespace (an index into `namespaces`) that `action` was fetched from in this run.
    pub(super) fn found_in(&self, action: &ActionId) -> Option<usize> {
        lock(&self.downloaded).get(action).copied()
    }

    /// Notes an entry fetched from the namespace at `index`, by a get or prefetch.
    pub(super) fn fetched_from(&self, action: ActionId, index: usize, prefetch: bool) {
        lock(&self.downloaded).insert(action, index);
        self.remote_stats().count_in_namespace(index, prefetch);
    }

    /// Registers a fetch of `action`, or says who is fetching it already.
    pub(super) fn claim(&self, action: ActionId) -> Result<Claim<'_>, watch::Receiver<Outcome>> {
        let mut in_flight = lock(&self.in_flight);
        if let Some(running) = in_flight.get(&action) {
            return Err(running.clone());
        }
        let (tx, rx) = watch::channel(Outcome::Running);
        in_flight.insert(action, rx);
        Ok(Claim {
            tier: self,
            action,
            tx,
            outcome: Outcome::Running,
        })
    }

    /// Fetches `action`'s entry into the local cache for a get of the go command, or waits
    /// for the fetch of it that is running. Every failure is a miss (`None`).
    pub async fn fetch(&self, disk: &DiskCache, action: ActionId) -> Option<Entry> {
        let start = Instant::now();
        let found = self.fetch_or_join(disk, action).await;
        add(&self.remote_stats().wait_nanos, nanos(start.elapsed()));
        found
    }

    async fn fetch_or_join(&self, disk: &DiskCache, action: ActionId) -> Option<Entry> {
        if lock(&self.damaged).contains(&action) {
            return None;
        }
        // A fetch that failed may be asked again once, by this get itself.
        for _ in 0..2 {
            let claim = match self.claim(action) {
                Ok(claim) => claim,
                Err(mut running) => {
                    let outcome = match running.wait_for(|o| *o != Outcome::Running).await {
                        Ok(outcome) => *outcome,
                        Err(_) => Outcome::Failed,
                    };
                    match outcome {
                        Outcome::Found => match disk.get(&action) {
                            Ok(Some(entry)) => return Some(entry),
                            _ => continue,
                        },
                        Outcome::Missing => return None,
                        Outcome::Running | Outcome::Failed => continue,
                    }
                }
            };
            // A fetch may have ended between the caller's look at the disk and the claim.
            if let Ok(Some(entry)) = disk.get(&action) {
                claim.end(Outcome::Found);
                return Some(entry);
            }
            let found = self.fetch_entry(disk, action).await;
            claim.end(if found.is_some() {
                Outcome::Found
            } else {
                Outcome::Missing
            });
            return found;
        }
        None
    }

    /// One get of the entry, counted as the go command's, unless the key filters rule the
    /// key out.
    async fn fetch_entry(&self, disk: &DiskCache, action: ActionId) -> Option<Entry> {
        if self.instant_misses && self.misses.rules_out(&action).await {
            return None;
        }
        let stats = self.remote_stats();
        match self.try_fetch(disk, action, None).await {
            Ok(Some((index, entry))) => {
                add(&stats.hits, 1);
                self.fetched_from(action, index, false);
                Some(entry)
            }
            Ok(None) => {
                add(&stats.misses, 1);
                None
            }
            Err(err) => {
                if matches!(err, FetchError::Corrupt(_)) {
                    add(&stats.misses, 1);
                }
                self.fetch_failed(action, err);
                None
            }
        }
    }

    /// Counts and says a failed fetch.
    pub(super) fn fetch_failed(&self, action: ActionId, err: FetchError) {
        let stats = self.remote_stats();
        match err {
            FetchError::Corrupt(err) => {
                lock(&self.damaged).insert(action);
                if let FormatError::TooLarge { .. } = err {
                    tracing::debug!(action = %action, "remote entry skipped: {err}");
                } else {
                    add(&stats.corrupt, 1);
                    tracing::warn!(
                        "remote entry for {action} is damaged ({err}); treated as a miss"
                    );
                }
            }
            // The breaker switched the store off since this get looked: not another error.
            FetchError::Remote(RemoteError::SwitchedOff) => {}
            FetchError::Remote(err) => {
                add(&stats.errors, 1);
                tracing::debug!(action = %action, "remote get failed: {err}");
            }
            FetchError::Local(err) => {
                tracing::debug!(action = %action, "storing a fetched entry failed: {err}");
            }
        }
    }

    /// Fetches `action`'s entry from the namespace at index `from`, or with `None` from the
    /// first namespace in order that has it (all are asked at once). Returns the namespace's
    /// index with the stored entry.
    pub(super) async fn try_fetch(
        &self,
        disk: &DiskCache,
        action: ActionId,
        from: Option<usize>,
    ) -> Result<Option<(usize, Entry)>, FetchError> {
        let found = match from {
            Some(index) => (self.namespaces.store(index).get(&action).await)
                .map(|found| found.map(|stream| (index, stream))),
            None => self.namespaces.get(&action).await,
        };
        let Some((index, mut stream)) = found.map_err(FetchError::Remote)? else {
            return Ok(None);
        };
        let mut writer =
            EntryWriter::start(disk, action, self.max_entry_size).map_err(FetchError::Local)?;
        let mut received = 0u64;
        let mut failed = None;
        while let Some(piece) = stream.next().await {
            match piece {
                Ok(bytes) => {
                    received += bytes.len() as u64;
                    if !writer.send(bytes).await {
                        break; // the decoder gave up: the entry is bad
                    }
                }
                Err(err) => {
                    failed = Some(err);
                    break;
                }
            }
        }
        add(&self.remote_stats().bytes_down, received);
        if let Some(err) = failed {
            writer.abort().await;
            return Err(FetchError::Remote(err));
        }
        writer.finish().await.map(|entry| Some((index, entry)))
    }

    /// Queues the upload of an output that was just stored locally, unless it came from the
    /// remote in this run, is over `--max-entry-size`, or the mode or the remote's health
    /// says no.
    pub fn upload_later(&self, job: Job) {
        if !self.writes {
            return;
        }
        // No store of ours takes it (the server answers 413), and no reader would.
        if job.size > self.max_entry_size {
            tracing::debug!(action = %job.action, size = job.size, "not uploaded: over --max-entry-size");
            return;
        }
        if !self.store().usable() {
            add(&self.remote_stats().uploads_dropped, 1);
            return;
        }
        if lock(&self.downloaded).contains_key(&job.action) {
            return;
        }
        // The entry is never larger than its output and header: one that small would be
        // skipped after encoding anyway (`--upload-min-size`).
        if job.size + (format::HEADER_LEN as u64) < self.uploader.min_size() {
            add(&self.remote_stats().uploads_small, 1);
            return;
        }
        self.uploader.enqueue(job);
    }

    /// Waits up to `wait` for the uploads queued so far, leaving the queue open (see
    /// [`Uploader::drain`]); returns how many are still pending.
    /// Fetches the key filters now and as they age (also with instant misses off: the run
    /// keeps the own namespace's filter at its end). Call once, right after the handshake.
    pub fn start_filters(&self) {
        self.misses.start(self.namespaces.clone());
    }

    /// Waits up to `wait` for the uploads queued so far (a daemon's flush), then adds what
    /// they stored to the key filter.
    pub async fn drain(&self, wait: Duration, progress: &mut (dyn FnMut(Pending) + Send)) -> u64 {
        let left = self.uploader.drain(wait, progress).await;
        self.misses.write(self.store().as_ref()).await;
        left
    }

    /// Where the entries are written (the own namespace's store).
    pub fn location(&self) -> String {
        self.store().location()
    }

    /// Uploads queued or in flight, and their bytes.
    pub fn pending_uploads(&self) -> (u64, u64) {
        self.uploader.pending()
    }

    /// At the end of the run: gives pending uploads their time.
    pub async fn finish(&self) {
        self.uploader.finish(self.upload_wait).await;
        self.misses.stop();
        self.misses.write(self.store().as_ref()).await;
    }
}

/// An entry being received: its bytes go to a decoder on a blocking thread, which stores the
/// entry in the cache if it verifies.
pub(super) struct EntryWriter {
    tx: mpsc::Sender<Result<Bytes, ()>>,
    decoder: tokio::task::JoinHandle<Result<Entry, FetchError>>,
}

impl EntryWriter {
    /// Starts receiving `action`'s entry, whose decoded body may have at most `max_size`
    /// bytes.
    pub(super) fn start(disk: &DiskCache, action: ActionId, max_size: u64) -> io::Result<Self> {
        let spool = disk.spool_file()?;
        let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
        let target = disk.clone();
        let decoder = tokio::task::spawn_blocking(move || {
            decode_and_store(&target, action, max_size, spool, rx)
        });
        Ok(Self { tx, decoder })
    }

    /// Passes bytes on; `false` once the decoder has given up (the entry is bad).
    pub(super) async fn send(&mut self, bytes: Bytes) -> bool {
        self.tx.send(Ok(bytes)).await.is_ok()
    }

    /// The transfer failed: nothing is stored.
    pub(super) async fn abort(self) {
        let _ = self.tx.send(Err(())).await;
        drop(self.tx);
        let _ = self.decoder.await;
    }

    /// The transfer is complete: the stored entry, if it verified.
    pub(super) async fn finish(self) -> Result<Entry, FetchError> {
        drop(self.tx);
        self.decoder
            .await
            .map_err(|err| FetchError::Local(io::Error::other(err.to_string())))?
    }
}

/// Decodes an entry arriving on `chunks` into `spool`, and stores it if it verifies.
fn decode_and_store(
    disk: &DiskCache,
    action: ActionId,
    max_size: u64,
    mut spool: tempfile::NamedTempFile,
    chunks: mpsc::Receiver<Result<Bytes, ()>>,
) -> Result<Entry, FetchError> {
    let mut input = ChannelReader {
        chunks,
        current: Bytes::new(),
    };
    let header = {
        let mut out = BufWriter::with_capacity(64 * 1024, spool.as_file_mut());
        let header = format::read_entry_within(&mut input, &mut out, max_size)
            .map_err(FetchError::Corrupt)?;
        out.flush().map_err(FetchError::Local)?;
        header
    };
    let (disk_path, _) = disk
        .store_output(Spooled {
            file: spool,
            size: header.size,
            output_id: header.output_id,
        })
        .map_err(FetchError::Local)?;
    disk.write_entry(&action, &header.output_id, header.size, header.time)
        .map_err(FetchError::Local)?;
    Ok(Entry {
        output_id: header.output_id,
        size: header.size,
        time: header.time,
        disk_path,
    })
}

/// Reads the chunks that the network side sends; an `Err` chunk is a failed transfer.
struct ChannelReader {
    chunks: mpsc::Receiver<Result<Bytes, ()>>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.chunks.blocking_recv() {
                Some(Ok(bytes)) => self.current = bytes,
                Some(Err(())) => return Err(io::Error::other("the transfer failed")),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}
