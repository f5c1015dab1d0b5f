//! Prefetch: at start, the manifest of this build ([`super::manifest`]) is fetched and its
//! entries pulled into the local cache, many at once (one request per entry on S3, batches
//! on the HTTP server); at close, what this run asked for is merged into the manifest and
//! written back. Each entry goes through the remote tier's fetch-once registry
//! ([`super::remote`]), so a get of a key being prefetched waits for that fetch, and a key
//! prefetch has not started is fetched by the get itself.
//!
//! On a store that keeps packs (S3, GCS, Azure), the entries that the build's pack holds come
//! from it in a few ranged GETs instead of one GET each (`pack`); the pack is written after
//! the manifest, when it is missing or stale: by a direct session once stdout is closed.

mod pack;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::watch;

use super::manifest::{KeySource, Manifest, Recorder};
use super::remote::{Claim, EntryWriter, FetchError, Outcome, RemoteTier};
use super::stats::{add, nanos};
use crate::config::PrefetchConfig;
use crate::ids::{ActionId, BuildKey};
use crate::local::disk::{DiskCache, Entry};
use crate::store::pack::Toc;
use crate::store::{ByteStream, RemoteError, batch};
use crate::sync::lock;

/// Prefetch for one run, on the remote tier.
#[derive(Debug)]
pub struct Prefetcher {
    tier: Arc<RemoteTier>,
    config: PrefetchConfig,
    source: KeySource,
    key: BuildKey,
    recorder: Recorder,
    /// The manifest found at start, with the index of the namespace it was found in: `None`
    /// until the lookup ends.
    loaded: watch::Sender<Option<Option<(usize, Manifest)>>>,
    /// Entries that prefetch stored and the go command has not asked for yet.
    unused: Mutex<HashSet<ActionId>>,
    /// Entries prefetch stored that the go command had not asked for when prefetch stopped:
    /// left out of the manifest written then, so that no later run fetches them in vain.
    wasted: Mutex<HashSet<ActionId>>,
    /// The prefetch work, stopped at close.
    task: Mutex<Option<tokio::task::AbortHandle>>,
    /// How many entries the recorder held when the manifest was last written (a daemon
    /// writes it at each `flush` and at exit: again only if the run recorded more).
    written: Mutex<Option<usize>>,
    /// The local cache, from [`Prefetcher::start`] (the pack is written from it).
    disk: OnceLock<DiskCache>,
    /// The table of contents of the own namespace's pack: found at start, or written.
    own_toc: Mutex<Option<Toc>>,
    /// The manifest whose pack is still to be written, after the go command has its last
    /// answer ([`Prefetcher::finish_leaving_pack`]).
    pack_due: Mutex<Option<Manifest>>,
}

/// The entries of a prefetch that a batch request is fetching: claims by key.
type Claims<'a> = HashMap<ActionId, Claim<'a>>;

impl Prefetcher {
    /// Prefetch on `tier` with these settings, for the build that `source` names
    /// ([`Prefetcher::source_for`]).
    pub fn new(tier: Arc<RemoteTier>, config: PrefetchConfig, source: KeySource) -> Self {
        let key = source.key();
        tracing::debug!(key = %key, "prefetch key from {}", source.describe());
        tier.remote_stats()
            .prefetch_on
            .store(true, Ordering::Relaxed);
        Self {
            tier,
            config,
            source,
            key,
            recorder: Recorder::default(),
            loaded: watch::Sender::new(None),
            unused: Mutex::new(HashSet::new()),
            wasted: Mutex::new(HashSet::new()),
            task: Mutex::new(None),
            written: Mutex::new(None),
            disk: OnceLock::new(),
            own_toc: Mutex::new(None),
            pack_due: Mutex::new(None),
        }
    }

    /// What names this process's build: `--prefetch-key`, else the automatic key.
    pub fn source_for(config: &PrefetchConfig) -> KeySource {
        match &config.key {
            Some(text) => KeySource::explicit(text),
            None => KeySource::automatic(),
        }
    }

    /// The build key whose manifest this prefetch reads and writes.
    pub fn key(&self) -> &BuildKey {
        &self.key
    }

    /// What the key was made of, on one line.
    pub fn describe(&self) -> String {
        self.source.describe()
    }

    /// Starts prefetching for this run's build key, in the background. Call once, right
    /// after the handshake.
    pub fn start(self: &Arc<Self>, disk: &DiskCache) {
        let _ = self.disk.set(disk.clone());
        // The manifest lookup runs to its end even if the run ends first: the manifest
        // written at close merges with it.
        let this = self.clone();
        let lookup = tokio::spawn(async move { this.load_manifest().await });
        if !self.tier.reads {
            return;
        }
        let this = self.clone();
        let disk = disk.clone();
        let work = tokio::spawn(async move {
            if let Ok(Some((_, manifest))) = lookup.await {
                this.prefetch_entries(&disk, manifest).await;
            }
        });
        *lock(&self.task) = Some(work.abort_handle());
    }

    /// Notes a get of the go command: a hit goes into the manifest, and may have used a
    /// prefetched entry. A miss does not: if the go command then stores the output, its put
    /// records it; if not (a test result that cannot be cached), no store will ever have it,
    /// and prefetch would ask for it in vain on every run.
    pub fn note_get(&self, action: ActionId, hit: Option<u64>) {
        let Some(size) = hit else {
            return;
        };
        self.recorder
            .note(action, Some(size), self.tier.found_in(&action));
        if lock(&self.unused).remove(&action) {
            add(&self.tier.remote_stats().prefetch_used, 1);
        }
    }

    /// Notes a put of the go command (for the manifest).
    pub fn note_put(&self, action: ActionId, size: u64) {
        self.recorder.note(action, Some(size), Some(0));
    }

    /// At the end of the run (or of a CI job's builds, on a daemon's `flush`): stops
    /// prefetching and writes what this run asked for so far. It may be called again: the
    /// manifest is written again only if more was recorded since.
    pub async fn finish(&self) {
        self.finish_leaving_pack().await;
        self.write_due_pack().await;
    }

    /// As [`Prefetcher::finish`], but the pack (building it re-encodes every entry, and
    /// uploading it takes a while) is left for [`Prefetcher::write_due_pack`], which a
    /// direct session calls once the go command has its last answer and stdout is closed.
    pub async fn finish_leaving_pack(&self) {
        self.stop();
        if let Some(manifest) = self.write_manifest().await {
            *lock(&self.pack_due) = Some(manifest);
        }
    }

    /// Whether a pack is waiting to be written.
    pub fn pack_due(&self) -> bool {
        lock(&self.pack_due).is_some()
    }

    /// Writes the pack that [`Prefetcher::finish_leaving_pack`] left, if it is due, bounded
    /// by `--upload-wait`.
    pub async fn write_due_pack(&self) {
        let Some(manifest) = lock(&self.pack_due).take() else {
            return;
        };
        let wait = self.tier.upload_wait;
        if tokio::time::timeout(wait, self.write_pack(&manifest))
            .await
            .is_err()
        {
            tracing::debug!("the prefetch pack was not written within --upload-wait");
        }
    }

    /// Looks the manifest up, in the own namespace and then in each read namespace, and at
    /// the same time the own namespace's pack; any failure is no manifest (or no pack).
    async fn load_manifest(&self) -> Option<(usize, Manifest)> {
        let prefetch = self;
        let namespaces = &self.tier.namespaces;
        let (found, own_toc) =
            tokio::join!(namespaces.get_manifest(&prefetch.key), self.load_toc(0));
        *lock(&self.own_toc) = own_toc;
        let manifest = match found {
            Ok(Some((index, bytes))) => Manifest::decode(&bytes, namespaces.name(index))
                .inspect_err(|err| {
                    tracing::warn!("the prefetch manifest {} is unusable: {err}", prefetch.key)
                })
                .ok()
                .map(|manifest| (index, manifest)),
            Ok(None) => None,
            Err(err) => {
                tracing::debug!("looking up the prefetch manifest failed: {err}");
                None
            }
        };
        tracing::debug!(
            key = %prefetch.key,
            entries = manifest.as_ref().map(|(_, m)| m.entries.len()),
            namespace = ?manifest.as_ref().map(|(index, _)| namespaces.name(*index)),
            "prefetch manifest"
        );
        prefetch.loaded.send_replace(Some(manifest.clone()));
        manifest
    }

    /// Pulls the manifest's entries into the local cache, within the budget, in its order:
    /// each from the pack of its namespace if that holds it (all packs at once), the others
    /// one by one or in batches.
    async fn prefetch_entries(&self, disk: &DiskCache, manifest: Manifest) {
        let start = Instant::now();
        let prefetch = self;
        let stats = self.tier.remote_stats();
        add(&stats.prefetch_listed, manifest.entries.len() as u64);
        let mut budget = prefetch.config.max_bytes;
        let namespaces = &self.tier.namespaces;
        // Each entry from the namespace it is in; those of a namespace this run does not read
        // are left out.
        let wanted: Vec<(ActionId, usize)> = manifest
            .entries
            .iter()
            .filter(|entry| entry.size <= self.tier.max_entry_size)
            .filter_map(|entry| Some((entry, namespaces.index_of(entry.namespace.as_ref())?)))
            .take(prefetch.config.max_entries)
            .take_while(|(entry, _)| match budget.checked_sub(entry.size) {
                Some(left) => {
                    budget = left;
                    true
                }
                None => false,
            })
            .map(|(entry, index)| (entry.action, index))
            .collect();
        let wanted_len = wanted.len();
        let local = disk.clone();
        let Ok(todo) = tokio::task::spawn_blocking(move || {
            wanted
                .into_iter()
                .filter(|(action, _)| !local.has_entry(action))
                .collect::<Vec<_>>()
        })
        .await
        else {
            return;
        };
        add(&stats.prefetch_local, (wanted_len - todo.len()) as u64);
        let todo = self.prefetch_from_packs(disk, todo).await;
        let concurrency = prefetch.config.concurrency;
        match self.tier.store().batch_limit() {
            0 => {
                futures::stream::iter(todo)
                    .for_each_concurrent(concurrency, |(action, index)| {
                        self.prefetch_one(disk, action, index)
                    })
                    .await
            }
            limit => {
                futures::stream::iter(batches(todo, limit))
                    .for_each_concurrent((concurrency / 8).max(1), |(index, keys)| {
                        self.prefetch_batch(disk, index, keys)
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
        lock(&self.unused).insert(action);
    }

    /// Counts an entry that prefetch stored from the namespace at `index`, and ends its
    /// claim.
    fn prefetched(&self, claim: Claim<'_>, entry: &Entry, index: usize) {
        let stats = self.tier.remote_stats();
        add(&stats.prefetch_fetched, 1);
        add(&stats.prefetch_bytes, entry.size);
        self.tier.fetched_from(claim.action, index, true);
        claim.end(Outcome::Found);
    }

    /// Counts and says a prefetch that failed, and ends its claim: a damaged entry is a miss
    /// for the gets waiting on it; another failure lets them ask themselves.
    fn prefetch_error(&self, claim: Claim<'_>, err: FetchError) {
        add(&self.tier.remote_stats().prefetch_errors, 1);
        let outcome = match err {
            FetchError::Corrupt(_) => Outcome::Missing,
            _ => Outcome::Failed,
        };
        self.tier.fetch_failed(claim.action, err);
        self.prefetch_failed(claim, outcome);
    }

    /// Ends the claim of an entry that prefetch did not store.
    fn prefetch_failed(&self, claim: Claim<'_>, outcome: Outcome) {
        lock(&self.unused).remove(&claim.action);
        claim.end(outcome);
    }

    /// Prefetches one entry from the namespace at `index`, unless it is being fetched or the
    /// namespace's store is off.
    async fn prefetch_one(&self, disk: &DiskCache, action: ActionId, index: usize) {
        if !self.tier.namespaces.store(index).usable() {
            return;
        }
        let Ok(claim) = self.tier.claim(action) else {
            return;
        };
        if let Ok(Some(_)) = disk.get(&action) {
            claim.end(Outcome::Found);
            return;
        }
        let stats = self.tier.remote_stats();
        self.prefetch_begins(action);
        match self.tier.try_fetch(disk, action, Some(index)).await {
            Ok(Some((index, entry))) => self.prefetched(claim, &entry, index),
            Ok(None) => {
                add(&stats.prefetch_missing, 1);
                self.prefetch_failed(claim, Outcome::Missing);
            }
            Err(err) => self.prefetch_error(claim, err),
        }
    }

    /// Prefetches up to a batch of entries of the namespace at `index` in one request; those
    /// being fetched already are left out.
    async fn prefetch_batch(&self, disk: &DiskCache, index: usize, keys: Vec<ActionId>) {
        let store = self.tier.namespaces.store(index);
        if !store.usable() {
            return;
        }
        // Each key is asked once: a second copy of a key finds it claimed by the first.
        let mut claims: Claims<'_> = HashMap::with_capacity(keys.len());
        let keys: Vec<ActionId> = keys
            .into_iter()
            .filter(|action| match self.tier.claim(*action) {
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
        let stats = self.tier.remote_stats();
        let mut stream = match store.get_batch(&keys).await {
            Ok(stream) => stream,
            Err(err) => {
                add(&stats.prefetch_errors, claims.len() as u64);
                tracing::debug!("a prefetch batch of {} failed: {err}", keys.len());
                return;
            }
        };
        if let Err(err) = self.read_batch(disk, index, &mut stream, &mut claims).await {
            tracing::debug!("a prefetch batch ended early: {err}");
        }
        // Keys the answer did not settle: failed (a get asks for them itself).
        add(&stats.prefetch_errors, claims.len() as u64);
    }

    /// Reads a batch answer, storing each entry as it completes and settling its claim.
    async fn read_batch<'a>(
        &'a self,
        disk: &DiskCache,
        index: usize,
        stream: &mut ByteStream,
        claims: &mut Claims<'a>,
    ) -> Result<(), RemoteError> {
        let stats = self.tier.remote_stats();
        let protocol = |err: String| RemoteError::Other(format!("batch answer: {err}"));
        let mut decoder = batch::Decoder::new();
        let mut current: Option<(ActionId, EntryWriter)> = None;
        while let Some(piece) = stream.next().await {
            let piece = piece?;
            add(&stats.bytes_down, piece.len() as u64);
            decoder.push(&piece);
            while let Some(event) = decoder.next_event().map_err(protocol)? {
                match event {
                    batch::Event::Start(action) => {
                        if current.is_some() || !claims.contains_key(&action) {
                            return Err(protocol(format!("unexpected entry {action}")));
                        }
                        let writer = EntryWriter::start(disk, action, self.tier.max_entry_size)
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
                            Ok(entry) => self.prefetched(claim, &entry, index),
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
            lock(&self.unused).remove(&action);
        }
        if !decoder.at_frame_boundary() {
            return Err(RemoteError::Transient(
                "the batch answer was cut off".into(),
            ));
        }
        Ok(())
    }

    /// Writes this run's manifest: merged with the one found at start, unless the run asked
    /// for nothing, this run may not write, or nothing changed and the stored manifest was
    /// written within [`REFRESH`](super::manifest::REFRESH). An older one is written again,
    /// so that its time in the store says when a build last used it: `gc-remote` keeps the
    /// entries of recent ones.
    /// Returns the manifest as it is now (written or unchanged), for the pack; `None` when
    /// nothing was to be written.
    async fn write_manifest(&self) -> Option<Manifest> {
        let prefetch = self;
        let run = prefetch.recorder.snapshot();
        if run.is_empty() || !self.tier.writes || !self.tier.store().usable() {
            return None;
        }
        if *lock(&self.written) == Some(run.len()) {
            return None;
        }
        // The lookup started with the run; the store bounds it by the remote timeout.
        let mut loaded = prefetch.loaded.subscribe();
        let previous = match loaded.wait_for(Option::is_some).await {
            Ok(found) => found.clone().flatten(),
            Err(_) => None,
        };
        // A manifest found in a read namespace is not this namespace's own: always written.
        let previous = previous.map(|(home, manifest)| (home == 0, manifest));
        let own_previous = previous.as_ref().filter(|(own, _)| *own).map(|(_, m)| m);
        let names = self.tier.namespaces.names();
        let wasted = lock(&self.wasted).clone();
        let manifest = Manifest::merge(previous.as_ref().map(|(_, m)| m), &run, names, &wasted);
        if manifest.same_as(own_previous)
            && own_previous.is_some_and(|p| !p.needs_refresh(SystemTime::now()))
        {
            return Some(manifest);
        }
        let bytes = Bytes::from(manifest.encode(&prefetch.source, names[0].as_ref()));
        match self.tier.store().put_manifest(&prefetch.key, bytes).await {
            Ok(()) => {
                *lock(&self.written) = Some(run.len());
                self.tier
                    .remote_stats()
                    .manifest_written
                    .store(manifest.entries.len() as u64, Ordering::Relaxed);
                Some(manifest)
            }
            Err(err) => {
                tracing::debug!("writing the prefetch manifest failed: {err}");
                None
            }
        }
    }

    /// Stops prefetch work at close and counts the entries it stored that nobody used (not
    /// those cut off in flight), with their bytes (as the manifest found at start lists them).
    fn stop(&self) {
        if let Some(task) = lock(&self.task).take() {
            task.abort();
        }
        let downloaded = lock(&self.tier.downloaded);
        let wasted: HashSet<ActionId> = lock(&self.unused)
            .iter()
            .filter(|action| downloaded.contains_key(action))
            .copied()
            .collect();
        drop(downloaded);
        let bytes = match &*self.loaded.borrow() {
            Some(Some((_, manifest))) => (manifest.entries.iter())
                .filter(|entry| wasted.contains(&entry.action))
                .map(|entry| entry.size)
                .sum(),
            _ => 0,
        };
        let stats = self.tier.remote_stats();
        stats
            .prefetch_wasted
            .store(wasted.len() as u64, Ordering::Relaxed);
        stats.prefetch_wasted_bytes.store(bytes, Ordering::Relaxed);
        *lock(&self.wasted) = wasted;
    }
}

/// The batches to ask for `todo` (each entry with its namespace's index), at most `limit`
/// keys each and one namespace each, in about the order of `todo`.
fn batches(todo: Vec<(ActionId, usize)>, limit: usize) -> Vec<(usize, Vec<ActionId>)> {
    let mut filling: HashMap<usize, Vec<ActionId>> = HashMap::new();
    let mut batches = Vec::new();
    for (action, index) in todo {
        let batch = filling.entry(index).or_default();
        batch.push(action);
        if batch.len() == limit {
            batches.push((index, std::mem::take(batch)));
        }
    }
    let mut rest: Vec<_> = filling.into_iter().filter(|(_, b)| !b.is_empty()).collect();
    rest.sort_by_key(|(index, _)| *index);
    batches.extend(rest);
    batches
}
