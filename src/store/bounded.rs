//! A size-bounded [`DiskStore`]: the storage of `goremotecache serve --storage-dir` under
//! `--max-size`. Entries past the bound are deleted, least recently used (read or written)
//! first; the access order survives a restart.
//!
//! **The index.** An in-memory [`Index`] holds every entry's size and last access in
//! least-recently-used order. A `GET`, `HEAD` or batch hit and a `PUT` (stored, or found
//! there already) make an entry the most recent. Built at start by a scan of `v1/`: the
//! shards are listed in parallel and each entry's size and mtime read without following a
//! link; the order is the mtime order. A read refreshes its file's mtime (not its atime,
//! which `noatime` and `relatime` mounts do not keep), but at most once an hour
//! ([`REFRESH`]) per entry, so a hit costs no system call beyond the read; after a restart
//! the order is therefore exact to within an hour. Only entries count toward the bound:
//! prefetch manifests (one per build key, a few MiB at most) and the spool in `tmp/` do not,
//! and are never evicted.
//!
//! **Eviction.** When the entries' total passes the bound, a background thread deletes the
//! least recently used down to 90% of it ([`LOW_WATER`]), in small batches, so that requests
//! never wait for it. Deleting is `unlink` and nothing else: an entry is never truncated or
//! rewritten. A reader that opened the file before it was unlinked keeps reading the whole
//! entry through its descriptor (POSIX keeps an unlinked file's data until its last
//! descriptor closes); a reader that comes after finds nothing, a miss. So an entry being
//! read is never torn. An entry is taken out of the index before its file is unlinked, and a
//! hit on a key the index no longer holds does not put it back, so a put that races with the
//! deletion finds the old file (200, nothing written, and the entry goes a moment later, as
//! a cache's entries may) or none (201, indexed anew), never a file that the index does not
//! count. A file that cannot be deleted (permissions, a
//! read-only mount) keeps its place in the index; newer entries go in its stead, and the
//! thread tries it again a second later.
//!
//! **Admission.** A `PUT` reserves its size first ([`BoundedDisk::reserve`], from its
//! `Content-Length` before a byte is spooled): when the entries plus the puts in flight
//! would pass the bound by more than 10% ([`SLACK`]), eviction is behind (or stuck) and the
//! put is refused with [`RemoteError::Full`] (the server answers 507). So puts never take
//! the entries past 110% of the bound (a directory found larger at start can be, until
//! eviction has run), and the entries settle under it unless their files cannot be deleted.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;

use super::dir::{DiskStore, VerifiedEntry};
use super::lru::Index;
use super::{ByteStream, PutOutcome, RemoteError, RemoteStore, Upload};
use crate::ids::{ActionId, BuildKey};

/// `--max-size` when none is given: a bound that a new server on a small disk survives, and
/// that holds the working set of several branches of a large Go project (`go vet std` puts
/// about 770 MiB). sccache's local cache has the same default.
pub const DEFAULT_MAX_SIZE: u64 = 10 << 30;

/// Eviction stops at this share of the bound (percent).
pub const LOW_WATER: u64 = 90;

/// A put is refused when it would take the entries this far past the bound (percent).
pub const SLACK: u64 = 10;

/// A file's mtime is refreshed by a read at most this often (seconds), as in the local cache.
pub const REFRESH: u64 = crate::fsutil::USE_REFRESH.as_secs();

/// Entries unlinked per hold of the index's lock.
const BATCH: usize = 64;

/// Deletions that fail in one pass before the pass gives up and waits.
const MAX_FAILED: usize = 64;

/// Threads that scan the storage directory at start (at least; twice that on more cores).
const SCAN_THREADS: usize = 8;

/// How long the eviction thread waits before it looks again, woken or not.
const RECHECK: Duration = Duration::from_secs(1);

/// What the start-up scan found.
#[derive(Debug, Clone, Copy)]
pub struct Scan {
    pub entries: usize,
    pub bytes: u64,
    /// Files in `v1/` that are not entries (bad names, not regular files): left alone.
    pub skipped: usize,
    pub took: Duration,
}

/// The counters that `/metrics` shows.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub bytes: u64,
    pub entries: u64,
    pub evictions: u64,
    /// Seconds since the least recently used entry was read or written (0 when empty).
    pub oldest_access_age: u64,
}

#[derive(Debug, Default)]
struct State {
    index: Index,
    /// Bytes of puts admitted but not yet committed.
    reserved: u64,
    /// Bytes of entries taken out of the index by eviction whose files are not deleted yet
    /// (or could not be): still on disk, so still counted against the bound.
    leaving: u64,
}

impl State {
    /// What the bound is checked against: the entries, those being deleted, and the puts
    /// in flight.
    fn committed(&self) -> u64 {
        self.index.bytes() + self.leaving + self.reserved
    }
}

/// A [`DiskStore`] with an index of its entries, bounded to `max` bytes when there is one.
#[derive(Debug)]
pub struct BoundedDisk {
    disk: DiskStore,
    max: Option<u64>,
    state: Mutex<State>,
    /// Set when the eviction thread should look now (shared with it, which holds the store
    /// itself only while it works, so that the thread ends with the store).
    wake: Arc<(Mutex<bool>, Condvar)>,
    evictions: AtomicU64,
}

/// Bytes admitted for one put; given back when dropped (the put is committed, or failed).
#[derive(Debug)]
pub struct Reservation {
    store: Arc<BoundedDisk>,
    len: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        crate::sync::lock(&self.store.state).reserved -= self.len;
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl BoundedDisk {
    /// Indexes the entries of `disk` (a scan of `v1/`) and starts the eviction thread when
    /// there is a bound. Blocking: call before serving.
    pub fn open(disk: DiskStore, max: Option<u64>) -> io::Result<(Arc<Self>, Scan)> {
        Self::open_with(disk, max, max.is_some())
    }

    /// [`BoundedDisk::open`], with or without the eviction thread (the tests call
    /// [`BoundedDisk::evict`] themselves).
    fn open_with(
        disk: DiskStore,
        max: Option<u64>,
        evict_thread: bool,
    ) -> io::Result<(Arc<Self>, Scan)> {
        let start = Instant::now();
        let (found, skipped) = scan(disk.root())?;
        let index = Index::from_scan(found);
        let scan = Scan {
            entries: index.len(),
            bytes: index.bytes(),
            skipped,
            took: start.elapsed(),
        };
        let store = Arc::new(Self {
            disk,
            max,
            state: Mutex::new(State {
                index,
                reserved: 0,
                leaving: 0,
            }),
            wake: Arc::new((Mutex::new(true), Condvar::new())),
            evictions: AtomicU64::new(0),
        });
        if evict_thread {
            let weak = Arc::downgrade(&store);
            let wake = store.wake.clone();
            std::thread::Builder::new()
                .name("goremotecache-evict".into())
                .spawn(move || evict_loop(weak, &wake))?;
        }
        Ok((store, scan))
    }

    /// The directory store underneath.
    pub fn disk(&self) -> &DiskStore {
        &self.disk
    }

    /// The bound, if there is one.
    pub fn max(&self) -> Option<u64> {
        self.max
    }

    /// What `/metrics` shows.
    pub fn usage(&self) -> Usage {
        let state = crate::sync::lock(&self.state);
        Usage {
            bytes: state.index.bytes() + state.leaving,
            entries: state.index.len() as u64,
            evictions: self.evictions.load(Ordering::Relaxed),
            oldest_access_age: state
                .index
                .oldest_access()
                .map_or(0, |at| unix_now().saturating_sub(at)),
        }
    }

    /// Admits a put of `len` bytes for `action`, or refuses it with [`RemoteError::Full`] when
    /// it would take the entries more than [`SLACK`]% past the bound. A key that has an entry
    /// already is admitted without reserving anything (its put will write nothing): one in
    /// the index, or one whose file is still there while eviction holds it out of the index
    /// (being deleted, or failing to be).
    pub fn reserve(
        self: &Arc<Self>,
        action: &ActionId,
        len: u64,
    ) -> Result<Reservation, RemoteError> {
        if crate::sync::lock(&self.state).index.get(action).is_some()
            || self.disk.size(action).is_some()
        {
            return Ok(Reservation {
                store: self.clone(),
                len: 0,
            });
        }
        let mut state = crate::sync::lock(&self.state);
        if let Some(max) = self.max {
            let limit = max.saturating_add(max / 100 * SLACK);
            let after = state.committed() + len;
            if after > limit {
                drop(state);
                self.wake();
                return Err(RemoteError::Full(format!(
                    "the storage is full: this entry would take it to {after} bytes, past its \
                     {max}-byte bound by more than {SLACK}%; deleting old entries is behind"
                )));
            }
        }
        state.reserved += len;
        Ok(Reservation {
            store: self.clone(),
            len,
        })
    }

    /// Commits a verified entry ([`DiskStore::commit_verified`]) under its reservation and
    /// records the write. Blocking.
    pub fn commit_verified(
        &self,
        action: &ActionId,
        verified: VerifiedEntry,
        reservation: Reservation,
    ) -> Result<PutOutcome, RemoteError> {
        let len = verified.len();
        let outcome = self.disk.commit_verified(action, verified)?;
        match outcome {
            PutOutcome::Stored => {
                let mut state = crate::sync::lock(&self.state);
                state.index.insert(*action, len, unix_now());
                let over = self.max.is_some_and(|max| state.index.bytes() > max);
                drop(state);
                if over {
                    self.wake();
                }
            }
            PutOutcome::Exists => self.accessed(action),
            PutOutcome::Skipped => {}
        }
        drop(reservation);
        Ok(outcome)
    }

    /// Records a read or write of an entry that exists; refreshes its file's mtime if that
    /// was last set [`REFRESH`] ago or more.
    fn accessed(&self, action: &ActionId) {
        let refresh = crate::sync::lock(&self.state)
            .index
            .access(action, unix_now(), REFRESH);
        if refresh == Some(true) {
            let path = self.disk.entry_path(action);
            if let Err(err) = crate::fsutil::touch(&path) {
                tracing::debug!("refreshing the mtime of {}: {err}", path.display());
            }
        }
    }

    fn wake(&self) {
        *crate::sync::lock(&self.wake.0) = true;
        self.wake.1.notify_one();
    }

    /// Deletes least recently used entries until the total is under [`LOW_WATER`]% of the
    /// bound. Returns how many were deleted, and whether the pass gave up on files it could
    /// not delete.
    pub fn evict(&self) -> (u64, bool) {
        let Some(max) = self.max else {
            return (0, false);
        };
        let low = max / 100 * LOW_WATER;
        let mut evicted = 0;
        // Entries that could not be deleted, out of the index until the pass ends: they
        // still take room, and newer entries that can be deleted go instead.
        let mut failed = Vec::new();
        let mut held = 0;
        {
            let state = crate::sync::lock(&self.state);
            if state.index.bytes() <= max {
                return (0, false);
            }
        }
        loop {
            let batch: Vec<_> = {
                let mut state = crate::sync::lock(&self.state);
                let batch: Vec<_> = std::iter::from_fn(|| {
                    (state.index.bytes() + held > low)
                        .then(|| state.index.pop_oldest())
                        .flatten()
                })
                .take(BATCH)
                .collect();
                state.leaving += batch.iter().map(|(_, meta)| meta.size).sum::<u64>();
                batch
            };
            if batch.is_empty() {
                break;
            }
            let mut gone = 0;
            for (action, meta) in batch {
                let path = self.disk.entry_path(&action);
                match fs::remove_file(&path) {
                    Ok(()) => {
                        evicted += 1;
                        gone += meta.size;
                    }
                    Err(err) if err.kind() == io::ErrorKind::NotFound => gone += meta.size,
                    Err(err) => {
                        if failed.is_empty() {
                            tracing::warn!("evicting {}: {err}", path.display());
                        }
                        held += meta.size;
                        failed.push((action, meta));
                    }
                }
            }
            crate::sync::lock(&self.state).leaving -= gone;
            if failed.len() >= MAX_FAILED {
                break;
            }
        }
        self.evictions.fetch_add(evicted, Ordering::Relaxed);
        let stuck = !failed.is_empty();
        let mut state = crate::sync::lock(&self.state);
        state.leaving -= held;
        for (action, meta) in failed {
            state.index.restore(action, meta);
        }
        (evicted, stuck)
    }
}

/// The eviction thread: waits to be woken (or [`RECHECK`]), evicts, and ends with the store.
fn evict_loop(store: Weak<BoundedDisk>, wake: &(Mutex<bool>, Condvar)) {
    loop {
        let Some(strong) = store.upgrade() else {
            return;
        };
        let (evicted, stuck) = strong.evict();
        drop(strong);
        if evicted > 0 {
            tracing::debug!("evicted {evicted} entries");
        }
        let (flag, condvar) = wake;
        let mut woken = crate::sync::lock(flag);
        if stuck {
            // Files that could not be deleted: not again at once, even if woken.
            *woken = false;
        }
        if !*woken {
            woken = condvar
                .wait_timeout(woken, RECHECK)
                .map_or_else(|err| err.into_inner().0, |(guard, _)| guard);
        }
        *woken = false;
    }
}

/// An entry found by the scan: key, size, mtime in nanoseconds.
type Found = (ActionId, u64, i64);

/// The entries under `<root>/v1/<xx>/`: key, size and mtime (nanoseconds), with the count of
/// files that are not entries. The shards are read by a few threads at once.
fn scan(root: &Path) -> io::Result<(Vec<Found>, usize)> {
    let mut shards: Vec<PathBuf> = Vec::new();
    for shard in fs::read_dir(root.join("v1"))? {
        let shard = shard?;
        if shard.file_type()?.is_dir() {
            shards.push(shard.path());
        }
    }
    // More threads than cores: a scan of a directory that is not in the page cache waits on
    // the disk for each inode, and a disk answers several reads at once.
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(SCAN_THREADS, 2 * SCAN_THREADS);
    let per = shards.len().div_ceil(threads).max(1);
    let parts: Vec<io::Result<(Vec<_>, usize)>> = std::thread::scope(|scope| {
        let workers: Vec<_> = shards
            .chunks(per)
            .map(|part| scope.spawn(move || scan_shards(part)))
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(io::Error::other("scan panicked")))
            })
            .collect()
    });
    let mut lists = Vec::with_capacity(parts.len());
    let mut skipped = 0;
    for part in parts {
        let (entries, skips) = part?;
        lists.push(entries);
        skipped += skips;
    }
    let mut found = Vec::with_capacity(lists.iter().map(Vec::len).sum());
    for list in lists {
        found.extend(list);
    }
    Ok((found, skipped))
}

fn scan_shards(shards: &[PathBuf]) -> io::Result<(Vec<Found>, usize)> {
    use std::os::unix::fs::MetadataExt;
    let mut found = Vec::new();
    let mut skipped = 0;
    for shard in shards {
        let prefix = shard.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let listing = match fs::read_dir(shard) {
            Ok(listing) => listing,
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err),
        };
        for file in listing {
            let file = file?;
            let name = file.file_name();
            let id = name
                .to_str()
                .filter(|name| name.starts_with(prefix))
                .and_then(ActionId::from_key);
            // `DirEntry::metadata` does not follow a symlink.
            let meta = match (id, file.metadata()) {
                (Some(id), Ok(meta)) if meta.file_type().is_file() => (id, meta),
                (_, Err(err)) if err.kind() == io::ErrorKind::NotFound => continue,
                _ => {
                    skipped += 1;
                    continue;
                }
            };
            let (id, meta) = meta;
            // Nanoseconds fit an i64 until 2262.
            let mtime = meta
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.mtime_nsec());
            found.push((id, meta.len(), mtime));
        }
    }
    Ok((found, skipped))
}

#[async_trait]
impl RemoteStore for BoundedDisk {
    async fn get(&self, action: &ActionId) -> Result<Option<ByteStream>, RemoteError> {
        let found = self.disk.get(action).await?;
        if found.is_some() {
            self.accessed(action);
        }
        Ok(found)
    }

    async fn put(&self, action: &ActionId, entry: Upload) -> Result<PutOutcome, RemoteError> {
        // Not the server's path (it commits a verified spool file); for completeness: the
        // same admission, then the directory's own put.
        let len = entry.len();
        {
            let state = crate::sync::lock(&self.state);
            if let Some(max) = self.max
                && state.index.get(action).is_none()
                && state.committed() + len > max.saturating_add(max / 100 * SLACK)
            {
                return Err(RemoteError::Full("the storage is full".into()));
            }
        }
        let outcome = self.disk.put(action, entry).await?;
        match outcome {
            PutOutcome::Stored => {
                let size = self.disk.size(action).unwrap_or(len);
                crate::sync::lock(&self.state)
                    .index
                    .insert(*action, size, unix_now());
                self.wake();
            }
            PutOutcome::Exists => self.accessed(action),
            PutOutcome::Skipped => {}
        }
        Ok(outcome)
    }

    async fn head(&self, action: &ActionId) -> Result<Option<u64>, RemoteError> {
        let found = self.disk.head(action).await?;
        if found.is_some() {
            self.accessed(action);
        }
        Ok(found)
    }

    async fn clear(&self, progress: &(dyn Fn(u64) + Send + Sync)) -> Result<u64, RemoteError> {
        let deleted = self.disk.clear(progress).await;
        let (found, _) =
            scan(self.disk.root()).map_err(|err| RemoteError::Other(format!("storage: {err}")))?;
        crate::sync::lock(&self.state).index = Index::from_scan(found);
        deleted
    }

    fn location(&self) -> String {
        self.disk.location()
    }

    async fn get_manifest(&self, key: &BuildKey) -> Result<Option<Bytes>, RemoteError> {
        self.disk.get_manifest(key).await
    }

    async fn put_manifest(&self, key: &BuildKey, manifest: Bytes) -> Result<(), RemoteError> {
        self.disk.put_manifest(key, manifest).await
    }
}

#[cfg(test)]
mod tests;
