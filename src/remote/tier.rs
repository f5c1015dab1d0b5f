//! The remote tier as the cache uses it, whatever the backend: fetching an entry on a local
//! miss (verified before it is stored), write-behind uploads, the circuit breaker and the
//! remote figures.
//!
//! A fetch is one request. The entry's bytes stream from the network into a decoder on a
//! blocking thread, which writes the body to a temporary file in the cache while hashing it;
//! only a body whose size and sha256 match its header's OutputID is renamed into place, with
//! the header's put time. A corrupt, truncated or unreadable entry is a miss, counted, and
//! nothing of it is kept.
//!
//! Prefetch ([`crate::prefetch`]) runs here too: at start, the manifest of the build is
//! fetched and its entries pulled in, many at once (one request per entry on S3, batches on
//! the HTTP server). Every fetch, the go command's or a prefetch's, is registered while it
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

use super::http::HttpStore;
use super::s3::S3Store;
use super::{ByteStream, ReadOnly, RemoteError, RemoteStore, WriteOnly, batch};
use crate::config::{PrefetchConfig, RemoteConfig, RemoteMode, StoreConfig};
use crate::disk::{DiskCache, Entry, Spooled};
use crate::format::{self, FormatError};
use crate::health::Health;
use crate::prefetch::{KeySource, Manifest, Recorder};
use crate::protocol::{ActionId, BuildKey};
use crate::stats::{RemoteStats, Stats, add, nanos};
use crate::uploader::{Job, Uploader};

/// Chunks of an entry in flight between the network and the decoder.
const CHANNEL_CHUNKS: usize = 4;

/// The remote tier of one run.
#[derive(Debug)]
pub struct RemoteTier {
    store: Arc<dyn RemoteStore>,
    health: Arc<Health>,
    uploader: Uploader,
    reads: bool,
    writes: bool,
    /// Actions fetched in this run: never uploaded back.
    downloaded: Mutex<HashSet<ActionId>>,
    /// Keys whose remote entry was found damaged in this run: not asked for again.
    damaged: Mutex<HashSet<ActionId>>,
    /// Fetches running now, by key, with what they found once they end.
    in_flight: Mutex<HashMap<ActionId, watch::Receiver<Outcome>>>,
    prefetch: Option<Prefetch>,
    timeout: Duration,
    upload_wait: Duration,
    /// The largest decoded entry taken (`--max-entry-size`).
    max_entry_size: u64,
    stats: Arc<Stats>,
}

/// How a fetch that others may be waiting for ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Running,
    /// The entry is on local disk now.
    Found,
    /// The remote has no (usable) entry.
    Missing,
    /// The fetch failed; asking again may work.
    Failed,
}

/// A registered fetch of one key: ends with an [`Outcome`] (`Failed` if dropped unset).
struct Claim<'a> {
    tier: &'a RemoteTier,
    action: ActionId,
    tx: watch::Sender<Outcome>,
    outcome: Outcome,
}

impl Claim<'_> {
    fn end(mut self, outcome: Outcome) {
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

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Prefetch state of one run.
#[derive(Debug)]
struct Prefetch {
    config: PrefetchConfig,
    source: KeySource,
    key: BuildKey,
    recorder: Recorder,
    /// The manifest found at start: `None` until the lookup ends.
    loaded: watch::Sender<Option<Option<Manifest>>>,
    /// Entries that prefetch stored and the go command has not asked for yet.
    unused: Mutex<HashSet<ActionId>>,
    /// The prefetch work, stopped at close.
    task: Mutex<Option<tokio::task::AbortHandle>>,
}

/// Builds the store that `config` names, wrapped for its mode. No network or credential
/// work happens here.
pub fn open_store(config: &RemoteConfig) -> Result<Arc<dyn RemoteStore>, RemoteError> {
    match &config.store {
        StoreConfig::S3(s3) => Ok(with_mode(S3Store::new(s3)?, config.mode)),
        StoreConfig::Http(http) => Ok(with_mode(HttpStore::new(http)?, config.mode)),
    }
}

fn with_mode<S: RemoteStore>(store: S, mode: RemoteMode) -> Arc<dyn RemoteStore> {
    match mode {
        RemoteMode::ReadWrite => Arc::new(store),
        RemoteMode::ReadOnly => Arc::new(ReadOnly(store)),
        RemoteMode::WriteOnly => Arc::new(WriteOnly(store)),
    }
}

enum FetchError {
    Remote(RemoteError),
    Corrupt(FormatError),
    Local(io::Error),
}

/// The entries of a prefetch that a batch request is fetching: claims by key.
type Claims<'a> = HashMap<ActionId, Claim<'a>>;

impl RemoteTier {
    /// Starts the tier (and its upload workers, on the current tokio runtime).
    pub fn start(
        config: &RemoteConfig,
        disk: &DiskCache,
        stats: Arc<Stats>,
    ) -> Result<Self, RemoteError> {
        let store = open_store(config)?;
        Ok(Self::with_store(store, config, disk, stats))
    }

    /// Starts the tier on a given store (tests pass wrapped stores).
    pub fn with_store(
        store: Arc<dyn RemoteStore>,
        config: &RemoteConfig,
        disk: &DiskCache,
        stats: Arc<Stats>,
    ) -> Self {
        let health = Arc::new(Health::new(store.location()));
        let uploader = Uploader::start(
            store.clone(),
            health.clone(),
            stats.clone(),
            disk.tmp_dir().to_path_buf(),
            config.upload_concurrency,
            config.upload_queue,
        );
        let reads = config.mode != RemoteMode::WriteOnly;
        if let Some(remote) = &stats.remote {
            remote.prefetch_on.store(
                config.prefetch.is_some(),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        let prefetch = config.prefetch.clone().map(|prefetch| {
            let source = match &prefetch.key {
                Some(text) => KeySource::explicit(text),
                None => KeySource::automatic(),
            };
            let key = source.key();
            tracing::debug!(key = %key, "prefetch key from {}", source.describe());
            Prefetch {
                config: prefetch,
                source,
                key,
                recorder: Recorder::default(),
                loaded: watch::Sender::new(None),
                unused: Mutex::new(HashSet::new()),
                task: Mutex::new(None),
            }
        });
        Self {
            store,
            health,
            uploader,
            reads,
            writes: config.mode != RemoteMode::ReadOnly,
            downloaded: Mutex::new(HashSet::new()),
            damaged: Mutex::new(HashSet::new()),
            in_flight: Mutex::new(HashMap::new()),
            prefetch,
            timeout: config.timeout,
            upload_wait: config.upload_wait,
            max_entry_size: config.max_entry_size,
            stats,
        }
    }

    fn remote_stats(&self) -> &RemoteStats {
        self.stats
            .remote
            .as_ref()
            .expect("a remote tier has remote stats")
    }

    /// Whether a local miss should ask the remote.
    pub fn reads(&self) -> bool {
        self.reads && self.health.usable()
    }

    /// Registers a fetch of `action`, or says who is fetching it already.
    fn claim(&self, action: ActionId) -> Result<Claim<'_>, watch::Receiver<Outcome>> {
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

    /// One get of the entry, counted as the go command's.
    async fn fetch_entry(&self, disk: &DiskCache, action: ActionId) -> Option<Entry> {
        let stats = self.remote_stats();
        match self.try_fetch(disk, action).await {
            Ok(Some(entry)) => {
                add(&stats.hits, 1);
                self.health.success();
                lock(&self.downloaded).insert(action);
                Some(entry)
            }
            Ok(None) => {
                add(&stats.misses, 1);
                self.health.success();
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
    fn fetch_failed(&self, action: ActionId, err: FetchError) {
        let stats = self.remote_stats();
        match err {
            FetchError::Corrupt(err) => {
                lock(&self.damaged).insert(action);
                self.health.success();
                if let FormatError::TooLarge { .. } = err {
                    tracing::debug!(action = %action, "remote entry skipped: {err}");
                } else {
                    add(&stats.corrupt, 1);
                    tracing::warn!(
                        "remote entry for {action} is damaged ({err}); treated as a miss"
                    );
                }
            }
            FetchError::Remote(err) => {
                add(&stats.errors, 1);
                tracing::debug!(action = %action, "remote get failed: {err}");
                self.health.failure(&err);
            }
            FetchError::Local(err) => {
                tracing::debug!(action = %action, "storing a fetched entry failed: {err}");
            }
        }
    }

    fn stalled(&self) -> RemoteError {
        RemoteError::Transient(format!(
            "no answer for {}",
            humantime::format_duration(self.timeout)
        ))
    }

    /// The next piece of an answer: it must come within the timeout (a large entry on a slow
    /// link may take longer in all, as long as it does not stall).
    async fn next_piece(&self, stream: &mut ByteStream) -> Option<Result<Bytes, RemoteError>> {
        match tokio::time::timeout(self.timeout, stream.next()).await {
            Ok(piece) => piece,
            Err(_) => Some(Err(RemoteError::Transient(format!(
                "the answer stalled for {}",
                humantime::format_duration(self.timeout)
            )))),
        }
    }

    async fn try_fetch(
        &self,
        disk: &DiskCache,
        action: ActionId,
    ) -> Result<Option<Entry>, FetchError> {
        let opened = tokio::time::timeout(self.timeout, self.store.get(&action)).await;
        let Some(mut stream) = opened
            .map_err(|_| FetchError::Remote(self.stalled()))?
            .map_err(FetchError::Remote)?
        else {
            return Ok(None);
        };
        let mut writer =
            EntryWriter::start(disk, action, self.max_entry_size).map_err(FetchError::Local)?;
        let mut received = 0u64;
        let mut failed = None;
        while let Some(piece) = self.next_piece(&mut stream).await {
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
        writer.finish().await.map(Some)
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
        if !self.health.usable() {
            add(&self.remote_stats().uploads_dropped, 1);
            return;
        }
        if self
            .downloaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&job.action)
        {
            return;
        }
        self.uploader.enqueue(job);
    }

    /// At the end of the run: stops prefetching, records what this run asked for, and gives
    /// pending uploads their time.
    pub async fn finish(&self) {
        if let Some(prefetch) = &self.prefetch {
            if let Some(task) = lock(&prefetch.task).take() {
                task.abort();
            }
            // Unused entries that prefetch stored (not those cut off in flight).
            let downloaded = lock(&self.downloaded);
            let wasted = lock(&prefetch.unused)
                .iter()
                .filter(|action| downloaded.contains(action))
                .count() as u64;
            drop(downloaded);
            self.remote_stats()
                .prefetch_wasted
                .store(wasted, std::sync::atomic::Ordering::Relaxed);
        }
        tokio::join!(
            self.uploader.finish(self.upload_wait),
            self.write_manifest()
        );
    }

    /// Notes a get of the go command: a hit goes into the manifest, and may have used a
    /// prefetched entry. A miss does not: if the go command then stores the output, its put
    /// records it; if not (a test result that cannot be cached), no store will ever have it,
    /// and prefetch would ask for it in vain on every run.
    pub fn note_get(&self, action: ActionId, hit: Option<u64>) {
        let (Some(prefetch), Some(size)) = (&self.prefetch, hit) else {
            return;
        };
        prefetch.recorder.note(action, Some(size));
        if lock(&prefetch.unused).remove(&action) {
            add(&self.remote_stats().prefetch_used, 1);
        }
    }

    /// Notes a put of the go command (for the manifest).
    pub fn note_put(&self, action: ActionId, size: u64) {
        if let Some(prefetch) = &self.prefetch {
            prefetch.recorder.note(action, Some(size));
        }
    }

    /// Starts prefetching for this run's build key, in the background. Call once, right
    /// after the handshake.
    pub fn start_prefetch(self: &Arc<Self>, disk: &DiskCache) {
        let Some(prefetch) = &self.prefetch else {
            return;
        };
        // The manifest lookup runs to its end even if the run ends first: the manifest
        // written at close merges with it.
        let tier = self.clone();
        let lookup = tokio::spawn(async move { tier.load_manifest().await });
        if !self.reads {
            return;
        }
        let tier = self.clone();
        let disk = disk.clone();
        let work = tokio::spawn(async move {
            if let Ok(Some(manifest)) = lookup.await {
                tier.prefetch_entries(&disk, manifest).await;
            }
        });
        *lock(&prefetch.task) = Some(work.abort_handle());
    }

    fn prefetch_state(&self) -> &Prefetch {
        self.prefetch.as_ref().expect("prefetch is on")
    }

    /// Looks the manifest up; any failure is no manifest.
    async fn load_manifest(&self) -> Option<Manifest> {
        let prefetch = self.prefetch_state();
        let found = tokio::time::timeout(self.timeout, self.store.get_manifest(&prefetch.key))
            .await
            .unwrap_or_else(|_| Err(self.stalled()));
        let manifest = match found {
            Ok(Some(bytes)) => Manifest::decode(&bytes)
                .inspect_err(|err| {
                    tracing::warn!("the prefetch manifest {} is unusable: {err}", prefetch.key)
                })
                .ok(),
            Ok(None) => None,
            Err(err) => {
                tracing::debug!("looking up the prefetch manifest failed: {err}");
                None
            }
        };
        tracing::debug!(
            key = %prefetch.key,
            entries = manifest.as_ref().map(|m| m.entries.len()),
            "prefetch manifest"
        );
        prefetch.loaded.send_replace(Some(manifest.clone()));
        manifest
    }

    /// Pulls the manifest's entries into the local cache, within the budget, in its order.
    async fn prefetch_entries(&self, disk: &DiskCache, manifest: Manifest) {
        let start = Instant::now();
        let prefetch = self.prefetch_state();
        let stats = self.remote_stats();
        add(&stats.prefetch_listed, manifest.entries.len() as u64);
        let mut budget = prefetch.config.max_bytes;
        let wanted: Vec<ActionId> = manifest
            .entries
            .iter()
            .filter(|entry| entry.size <= self.max_entry_size)
            .take(prefetch.config.max_entries)
            .take_while(|entry| match budget.checked_sub(entry.size) {
                Some(left) => {
                    budget = left;
                    true
                }
                None => false,
            })
            .map(|entry| entry.action)
            .collect();
        let wanted_len = wanted.len();
        let local = disk.clone();
        let Ok(todo) = tokio::task::spawn_blocking(move || {
            wanted
                .into_iter()
                .filter(|action| !local.has_entry(action))
                .collect::<Vec<_>>()
        })
        .await
        else {
            return;
        };
        add(&stats.prefetch_local, (wanted_len - todo.len()) as u64);
        let concurrency = prefetch.config.concurrency;
        match self.store.batch_limit() {
            0 => {
                futures::stream::iter(todo)
                    .for_each_concurrent(concurrency, |action| self.prefetch_one(disk, action))
                    .await
            }
            limit => {
                let batches: Vec<Vec<ActionId>> =
                    todo.chunks(limit).map(<[ActionId]>::to_vec).collect();
                futures::stream::iter(batches)
                    .for_each_concurrent((concurrency / 8).max(1), |keys| {
                        self.prefetch_batch(disk, keys)
                    })
                    .await
            }
        }
        add(&stats.prefetch_nanos, nanos(start.elapsed()));
    }

    /// Notes that prefetch starts receiving `action`'s entry. It is counted as unused from
    /// now, before it can appear on disk, so that a get that finds it there at once counts it
    /// as used.
    fn prefetch_begins(&self, action: ActionId) {
        lock(&self.prefetch_state().unused).insert(action);
    }

    /// Counts an entry that prefetch stored, and ends its claim.
    fn prefetched(&self, claim: Claim<'_>, entry: &Entry) {
        let stats = self.remote_stats();
        add(&stats.prefetch_fetched, 1);
        add(&stats.prefetch_bytes, entry.size);
        lock(&self.downloaded).insert(claim.action);
        claim.end(Outcome::Found);
    }

    /// Counts and says a prefetch that failed, and ends its claim: a damaged entry is a miss
    /// for the gets waiting on it; another failure lets them ask themselves.
    fn prefetch_error(&self, claim: Claim<'_>, err: FetchError) {
        add(&self.remote_stats().prefetch_errors, 1);
        let outcome = match err {
            FetchError::Corrupt(_) => Outcome::Missing,
            _ => Outcome::Failed,
        };
        self.fetch_failed(claim.action, err);
        self.prefetch_failed(claim, outcome);
    }

    /// Ends the claim of an entry that prefetch did not store.
    fn prefetch_failed(&self, claim: Claim<'_>, outcome: Outcome) {
        lock(&self.prefetch_state().unused).remove(&claim.action);
        claim.end(outcome);
    }

    /// Prefetches one entry, unless it is being fetched or the remote is off.
    async fn prefetch_one(&self, disk: &DiskCache, action: ActionId) {
        if !self.health.usable() {
            return;
        }
        let Ok(claim) = self.claim(action) else {
            return;
        };
        if let Ok(Some(_)) = disk.get(&action) {
            claim.end(Outcome::Found);
            return;
        }
        let stats = self.remote_stats();
        self.prefetch_begins(action);
        match self.try_fetch(disk, action).await {
            Ok(Some(entry)) => {
                self.health.success();
                self.prefetched(claim, &entry);
            }
            Ok(None) => {
                add(&stats.prefetch_missing, 1);
                self.prefetch_failed(claim, Outcome::Missing);
            }
            Err(err) => self.prefetch_error(claim, err),
        }
    }

    /// Prefetches up to a batch of entries in one request; those being fetched already are
    /// left out.
    async fn prefetch_batch(&self, disk: &DiskCache, keys: Vec<ActionId>) {
        if !self.health.usable() {
            return;
        }
        // Each key is asked once: a second copy of a key finds it claimed by the first.
        let mut claims: Claims<'_> = HashMap::with_capacity(keys.len());
        let keys: Vec<ActionId> = keys
            .into_iter()
            .filter(|action| match self.claim(*action) {
                Ok(claim) => {
                    claims.insert(*action, claim);
                    true
                }
                Err(_) => false,
            })
            .collect();
        if keys.is_empty() {
            return;
        }
        let stats = self.remote_stats();
        let opened = tokio::time::timeout(self.timeout, self.store.get_batch(&keys))
            .await
            .unwrap_or_else(|_| Err(self.stalled()));
        let mut stream = match opened {
            Ok(stream) => stream,
            Err(err) => {
                add(&stats.prefetch_errors, claims.len() as u64);
                tracing::debug!("a prefetch batch of {} failed: {err}", keys.len());
                self.health.failure(&err);
                return;
            }
        };
        match self.read_batch(disk, &mut stream, &mut claims).await {
            Ok(()) => self.health.success(),
            Err(err) => {
                tracing::debug!("a prefetch batch ended early: {err}");
                self.health.failure(&err);
            }
        }
        // Keys the answer did not settle: failed (a get asks for them itself).
        add(&stats.prefetch_errors, claims.len() as u64);
    }

    /// Reads a batch answer, storing each entry as it completes and settling its claim.
    async fn read_batch<'a>(
        &'a self,
        disk: &DiskCache,
        stream: &mut ByteStream,
        claims: &mut Claims<'a>,
    ) -> Result<(), RemoteError> {
        let stats = self.remote_stats();
        let protocol = |err: String| RemoteError::Other(format!("batch answer: {err}"));
        let mut decoder = batch::Decoder::new();
        let mut current: Option<(ActionId, EntryWriter)> = None;
        while let Some(piece) = self.next_piece(stream).await {
            let piece = piece?;
            add(&stats.bytes_down, piece.len() as u64);
            decoder.push(&piece);
            while let Some(event) = decoder.next_event().map_err(protocol)? {
                match event {
                    batch::Event::Start(action) => {
                        if current.is_some() || !claims.contains_key(&action) {
                            return Err(protocol(format!("unexpected entry {action}")));
                        }
                        let writer = EntryWriter::start(disk, action, self.max_entry_size)
                            .map_err(|err| RemoteError::Other(format!("local: {err}")))?;
                        self.prefetch_begins(action);
                        current = Some((action, writer));
                    }
                    batch::Event::Data(bytes) => match &mut current {
                        Some((_, writer)) => {
                            writer.send(bytes).await;
                        }
                        None => return Err(protocol("data outside an entry".into())),
                    },
                    batch::Event::End => {
                        let Some((action, writer)) = current.take() else {
                            return Err(protocol("end outside an entry".into()));
                        };
                        let claim = claims.remove(&action).expect("checked at its start");
                        match writer.finish().await {
                            Ok(entry) => self.prefetched(claim, &entry),
                            Err(err) => self.prefetch_error(claim, err),
                        }
                    }
                    batch::Event::Missing(action) => {
                        if let Some(claim) = claims.remove(&action) {
                            add(&stats.prefetch_missing, 1);
                            claim.end(Outcome::Missing);
                        }
                    }
                    batch::Event::Failed(action, reason) => {
                        if let Some((_, writer)) = current.take_if(|(a, _)| *a == action) {
                            writer.abort().await;
                        }
                        if let Some(claim) = claims.remove(&action) {
                            add(&stats.prefetch_errors, 1);
                            tracing::debug!(action = %action, "prefetch: the server failed: {reason}");
                            self.prefetch_failed(claim, Outcome::Failed);
                        }
                    }
                }
            }
        }
        if let Some((action, writer)) = current {
            writer.abort().await;
            lock(&self.prefetch_state().unused).remove(&action);
        }
        if !decoder.at_frame_boundary() {
            return Err(RemoteError::Transient(
                "the batch answer was cut off".into(),
            ));
        }
        Ok(())
    }

    /// Writes this run's manifest: merged with the one found at start, unless nothing changed,
    /// the run asked for nothing, or this run may not write.
    async fn write_manifest(&self) {
        let Some(prefetch) = &self.prefetch else {
            return;
        };
        let run = prefetch.recorder.take();
        if run.is_empty() || !self.writes || !self.health.usable() {
            return;
        }
        // The lookup started with the run; it is bounded by the remote timeout.
        let mut loaded = prefetch.loaded.subscribe();
        let previous = match loaded.wait_for(Option::is_some).await {
            Ok(found) => found.clone().flatten(),
            Err(_) => None,
        };
        let manifest = Manifest::merge(previous.as_ref(), &run);
        if manifest.same_as(previous.as_ref()) {
            return;
        }
        let bytes = Bytes::from(manifest.encode(&prefetch.source));
        let put = tokio::time::timeout(self.timeout, self.store.put_manifest(&prefetch.key, bytes))
            .await
            .unwrap_or_else(|_| Err(self.stalled()));
        match put {
            Ok(()) => add(
                &self.remote_stats().manifest_written,
                manifest.entries.len() as u64,
            ),
            Err(err) => tracing::debug!("writing the prefetch manifest failed: {err}"),
        }
    }
}

/// An entry being received: its bytes go to a decoder on a blocking thread, which stores the
/// entry in the cache if it verifies.
struct EntryWriter {
    tx: mpsc::Sender<Result<Bytes, ()>>,
    decoder: tokio::task::JoinHandle<Result<Entry, FetchError>>,
}

impl EntryWriter {
    /// Starts receiving `action`'s entry, whose decoded body may have at most `max_size`
    /// bytes.
    fn start(disk: &DiskCache, action: ActionId, max_size: u64) -> io::Result<Self> {
        let spool = disk.spool_file()?;
        let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
        let target = disk.clone();
        let decoder = tokio::task::spawn_blocking(move || {
            decode_and_store(&target, action, max_size, spool, rx)
        });
        Ok(Self { tx, decoder })
    }

    /// Passes bytes on; `false` once the decoder has given up (the entry is bad).
    async fn send(&mut self, bytes: Bytes) -> bool {
        self.tx.send(Ok(bytes)).await.is_ok()
    }

    /// The transfer failed: nothing is stored.
    async fn abort(self) {
        let _ = self.tx.send(Err(())).await;
        drop(self.tx);
        let _ = self.decoder.await;
    }

    /// The transfer is complete: the stored entry, if it verified.
    async fn finish(self) -> Result<Entry, FetchError> {
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
