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
//! **Admission.** A `PUT` reserves its size first ([`BoundedSpace::reserve`], from its
//! `Content-Length` before a byte is spooled): when the entries plus the puts in flight
//! would pass the bound by more than 10% ([`SLACK`]), eviction is behind (or stuck) and the
//! put is refused with [`RemoteError::Full`] (the server answers 507). So puts never take
//! the entries past 110% of the bound (a directory found larger at start can be, until
//! eviction has run), and the entries settle under it unless their files cannot be deleted.
//!
//! **Namespaces.** The un-namespaced entries are in the root's `v1/`, a namespace's in
//! `ns/<NAME>/v1/` ([`DiskStore::namespace`]); one index, one bound, one eviction thread and
//! one admission cover them all, so a namespace filled by one busy branch pushes out the
//! least recently used entries of every namespace, as one cache would. The index tells the
//! same action ID in two namespaces apart by its namespace's number ([`EntryKey`]). Each
//! namespace is used through a [`BoundedSpace`]: [`BoundedDisk::root`] for the un-namespaced
//! entries, [`BoundedDisk::namespace`] for a named one, whose directory is made only when
//! something is written to it (a read of a namespace that has none is a miss and makes
//! nothing).
//!
//! **Modules.** The module proxy's answers (`serve --goproxy`) are entries too, in `mod/`
//! ([`BoundedDisk::modules`], [`crate::goproxy::EntryModStore`]): one more space under the
//! same index and bound, so a zip fetched once and never asked for again leaves like an
//! unused build entry.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::dir::{DiskStore, NAMESPACES_DIR, VerifiedEntry};
use super::filter::KeyFilter;
use super::lru::Index;
use super::{PutOutcome, RemoteError};
use crate::ids::{ActionId, Namespace};

mod scan;
mod space;

pub use space::BoundedSpace;

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

/// An entry's key in the index: the number of its namespace (0: none, the root) and its
/// action ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryKey {
    space: u32,
    action: ActionId,
}

/// The directories of the namespaces known so far, by number; 0 is the root's.
#[derive(Debug)]
struct Spaces {
    dirs: Vec<Arc<DiskStore>>,
    numbers: HashMap<Namespace, u32>,
    /// The number of the module proxy's space (`mod/`), once it has a directory.
    modules: Option<u32>,
}

impl Spaces {
    /// The roots to scan: each namespace's number and directory.
    fn roots(&self) -> Vec<(u32, PathBuf)> {
        (0u32..)
            .zip(&self.dirs)
            .map(|(n, dir)| (n, dir.root().to_path_buf()))
            .collect()
    }
}

#[derive(Debug, Default)]
struct State {
    index: Index<EntryKey>,
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

/// A [`DiskStore`] and its namespaces, with an index of their entries, bounded together to
/// `max` bytes when there is one.
#[derive(Debug)]
pub struct BoundedDisk {
    spaces: RwLock<Spaces>,
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
    /// Indexes the entries of `disk` and of its namespaces (a scan of `v1/` and every
    /// `ns/<NAME>/v1/`) and starts the eviction thread when there is a bound. Blocking: call
    /// before serving.
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
        let (names, not_namespaces) = disk.namespaces()?;
        let mut spaces = Spaces {
            dirs: vec![Arc::new(disk.clone())],
            numbers: HashMap::new(),
            modules: None,
        };
        for name in names {
            let number = spaces.dirs.len() as u32;
            spaces.dirs.push(Arc::new(disk.namespace(&name)?));
            spaces.numbers.insert(name, number);
        }
        if not_namespaces > 0 {
            tracing::warn!(
                "{not_namespaces} files in {} are not namespace directories: left alone",
                disk.root().join(NAMESPACES_DIR).display()
            );
        }
        let modules = disk.root().join(super::s3::MODULES);
        if fs::symlink_metadata(&modules).is_ok_and(|meta| meta.is_dir()) {
            spaces.modules = Some(spaces.dirs.len() as u32);
            spaces.dirs.push(Arc::new(disk.modules()?));
        }
        let (found, skipped) = scan::scan(&spaces.roots())?;
        let index = Index::from_scan(found);
        let scan = Scan {
            entries: index.len(),
            bytes: index.bytes(),
            skipped: skipped + not_namespaces,
            took: start.elapsed(),
        };
        let store = Arc::new(Self {
            spaces: RwLock::new(spaces),
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

    /// The un-namespaced entries.
    pub fn root(self: &Arc<Self>) -> BoundedSpace {
        BoundedSpace::new(self.clone(), 0, self.dir(0))
    }

    /// The entries of `namespace`, if it has a directory: else `None`, or, with `create`, its
    /// directory made now (`ns/<NAME>/`, [`DiskStore::namespace`]). Blocking the first time a
    /// namespace is used (a few `mkdir`s); after that a look-up in a map.
    pub fn namespace(
        self: &Arc<Self>,
        namespace: &Namespace,
        create: bool,
    ) -> io::Result<Option<BoundedSpace>> {
        if let Some(space) = self.opened(namespace) {
            return Ok(Some(space));
        }
        let root = self.dir(0);
        // Only real directories count: a symlink in the place of `ns/` or `ns/<NAME>/` is
        // never read through (and `DiskStore::namespace` replaces it on a write).
        let on_disk = || {
            let spaces = root.root().join(NAMESPACES_DIR);
            [spaces.clone(), spaces.join(namespace.as_str())]
                .iter()
                .all(|dir| fs::symlink_metadata(dir).is_ok_and(|meta| meta.is_dir()))
        };
        if !create && !on_disk() {
            return Ok(None);
        }
        let mut spaces = crate::sync::write(&self.spaces);
        let number = match spaces.numbers.get(namespace) {
            Some(&number) => number,
            None => {
                let number = spaces.dirs.len() as u32;
                spaces.dirs.push(Arc::new(root.namespace(namespace)?));
                spaces.numbers.insert(namespace.clone(), number);
                number
            }
        };
        let dir = spaces.dirs[number as usize].clone();
        Ok(Some(BoundedSpace::new(self.clone(), number, dir)))
    }

    /// The module proxy's answers (`mod/`, [`DiskStore::modules`]), made now if they have no
    /// directory yet: bounded, evicted and counted with the entries of every namespace.
    /// Blocking the first time.
    pub fn modules(self: &Arc<Self>) -> io::Result<BoundedSpace> {
        let mut spaces = crate::sync::write(&self.spaces);
        let number = match spaces.modules {
            Some(number) => number,
            None => {
                let number = spaces.dirs.len() as u32;
                let dir = spaces.dirs[0].modules()?;
                spaces.dirs.push(Arc::new(dir));
                spaces.modules = Some(number);
                number
            }
        };
        let dir = spaces.dirs[number as usize].clone();
        Ok(BoundedSpace::new(self.clone(), number, dir))
    }

    /// The entries of `namespace` if it was used already (never blocks on the disk).
    pub fn opened(self: &Arc<Self>, namespace: &Namespace) -> Option<BoundedSpace> {
        let spaces = crate::sync::read(&self.spaces);
        let &number = spaces.numbers.get(namespace)?;
        let dir = spaces.dirs[number as usize].clone();
        Some(BoundedSpace::new(self.clone(), number, dir))
    }

    /// The directory store of namespace number `space`.
    fn dir(&self, space: u32) -> Arc<DiskStore> {
        crate::sync::read(&self.spaces).dirs[space as usize].clone()
    }

    /// The key filter of namespace number `space`'s entries, as they are now (entries being
    /// written are not in it until they are committed).
    pub fn key_filter(&self, space: u32) -> KeyFilter {
        let fingerprints: Vec<u32> = {
            let state = crate::sync::lock(&self.state);
            (state.index.keys())
                .filter(|key| key.space == space)
                .map(|key| KeyFilter::fingerprint(&key.action))
                .collect()
        };
        KeyFilter::of_fingerprints(fingerprints, SystemTime::now())
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

    /// Admits a put of `len` bytes for `key` (whose directory is `disk`), or refuses it with
    /// [`RemoteError::Full`] when it would take the entries more than [`SLACK`]% past the
    /// bound. A key that has an entry already is admitted without reserving anything (its
    /// put will write nothing): one in the index, or one whose file is still there while
    /// eviction holds it out of the index (being deleted, or failing to be).
    fn reserve(
        self: &Arc<Self>,
        key: EntryKey,
        disk: &DiskStore,
        len: u64,
    ) -> Result<Reservation, RemoteError> {
        if crate::sync::lock(&self.state).index.get(&key).is_some()
            || disk.size(&key.action).is_some()
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
    fn commit_verified(
        &self,
        key: EntryKey,
        disk: &DiskStore,
        verified: VerifiedEntry,
        reservation: Reservation,
    ) -> Result<PutOutcome, RemoteError> {
        let len = verified.len();
        let outcome = disk.commit_verified(&key.action, verified)?;
        self.stored(key, disk, outcome, len);
        drop(reservation);
        Ok(outcome)
    }

    /// Records what a put of `len` bytes for `key` did.
    fn stored(&self, key: EntryKey, disk: &DiskStore, outcome: PutOutcome, len: u64) {
        match outcome {
            PutOutcome::Stored => {
                let mut state = crate::sync::lock(&self.state);
                state.index.insert(key, len, unix_now());
                let over = self.max.is_some_and(|max| state.index.bytes() > max);
                drop(state);
                if over {
                    self.wake();
                }
            }
            PutOutcome::Exists => self.accessed(key, disk),
            PutOutcome::Skipped => {}
        }
    }

    /// Whether a put of `len` more bytes for `key` would pass the bound by more than
    /// [`SLACK`]% (for puts that are not reserved ahead).
    fn would_overflow(&self, key: &EntryKey, len: u64) -> bool {
        let state = crate::sync::lock(&self.state);
        self.max.is_some_and(|max| {
            state.index.get(key).is_none()
                && state.committed() + len > max.saturating_add(max / 100 * SLACK)
        })
    }

    /// Records a read or write of an entry that exists; refreshes its file's mtime if that
    /// was last set [`REFRESH`] ago or more.
    fn accessed(&self, key: EntryKey, disk: &DiskStore) {
        let refresh = crate::sync::lock(&self.state)
            .index
            .access(&key, unix_now(), REFRESH);
        if refresh == Some(true) {
            let path = disk.entry_path(&key.action);
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
            for (key, meta) in batch {
                let path = self.dir(key.space).entry_path(&key.action);
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
                        failed.push((key, meta));
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
        for (key, meta) in failed {
            state.index.restore(key, meta);
        }
        (evicted, stuck)
    }

    /// Indexes every namespace's entries again (after a clear). Blocking.
    fn rescan(&self) -> io::Result<()> {
        let roots = crate::sync::read(&self.spaces).roots();
        let (found, _) = scan::scan(&roots)?;
        crate::sync::lock(&self.state).index = Index::from_scan(found);
        Ok(())
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

#[cfg(test)]
mod tests;
