//! The daemon's module store: [`TieredModStore`], the local cache directory's `mod/` in front
//! of the daemon's remote tier, as the build cache is. The local disk is the authority; the
//! remote stands behind it, and a remote failure is a miss, never a failed answer.
//!
//! **Local layout.** `<cache-dir>/mod/` is a storage directory ([`DiskStore`]) holding
//! answers in the entry format ([`EntryModStore`]): immutable answers in `v1/<xx>/<hex>`,
//! changing ones in `prefetch/<hex>`, under the sha256 names that the bucket uses too. Not plain
//! files named by the request path, because the trim needs a file's
//! mtime to mean "last used", and a plain file's mtime is the age that the TTL of a changing
//! answer counts from; here that age is in the entry's header, so a hit can refresh the mtime
//! ([`fsutil::touch_if_older`], at most hourly) without making a stale list look fresh. The
//! fixed two-level layout is also what the trim ([`crate::local::trim`]) walks, and an object
//! is copied between the tiers byte for byte, its put time with it.
//!
//! **Get.** Local first. A miss (or a damaged local copy, which is removed) asks the remote;
//! what it has is verified, stored locally, then served from there. A changing answer that is
//! held locally but older than the TTL is also looked up in the remote, and the remote's copy
//! replaces it when it is newer (another machine fetched it since).
//!
//! **Put.** Locally, then uploaded to the remote in the background, from the local file:
//! the answer is not held up by the bucket. At most [`UPLOAD_CONCURRENCY`] uploads run at once
//! and [`UPLOAD_QUEUE`] wait; past that an upload is dropped and counted (the answer is on
//! local disk; the next machine that misses it fetches it upstream). A failed upload is logged
//! and counted. [`TieredModStore::finish`] gives the pending ones a bounded time at the
//! daemon's stop. A local put that fails fails the put (the cache then serves the fetched
//! answer unstored, as for any store), and nothing is uploaded for it.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

use super::body::Body;
use super::cache::{ModStore, Stored};
use super::entry_store::{EntryModStore, digest};
use crate::fsutil;
use crate::ids::{ActionId, BuildKey};
use crate::store::dir::DiskStore;
use crate::store::{RemoteStore, Upload, format};

/// Uploads to the remote that run at once.
pub const UPLOAD_CONCURRENCY: usize = 4;
/// Uploads that may wait for a place; more are dropped.
pub const UPLOAD_QUEUE: usize = 256;

/// The module store of the daemon (see the module doc).
#[derive(Debug, Clone)]
pub struct TieredModStore {
    disk: DiskStore,
    local: EntryModStore,
    remote: Option<Arc<dyn RemoteStore>>,
    /// The TTL of changing answers: a local one older than this is looked up remotely too.
    list_ttl: Duration,
    max_size: u64,
    uploads: Arc<Uploads>,
}

/// The background uploads: their bounds and counts.
#[derive(Debug)]
struct Uploads {
    /// A place in the queue (running or waiting).
    queue: Arc<Semaphore>,
    running: Arc<Semaphore>,
    pending: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
}

/// The remote tier's figures, for `status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UploadCounts {
    pub pending: u64,
    pub done: u64,
    pub failed: u64,
    pub dropped: u64,
}

impl TieredModStore {
    /// The store on `disk` (the cache directory's `mod/`), with `remote` behind it when the
    /// daemon has a remote module store; changing answers fresh for `list_ttl`; no answer over
    /// `max_size` bytes is read back.
    pub fn new(
        disk: DiskStore,
        remote: Option<Arc<dyn RemoteStore>>,
        list_ttl: Duration,
        max_size: u64,
    ) -> Self {
        let local = EntryModStore::new(Arc::new(disk.clone()), &Self::spool_of(&disk), max_size);
        Self {
            disk,
            local,
            remote,
            list_ttl,
            max_size,
            uploads: Arc::new(Uploads {
                queue: Arc::new(Semaphore::new(UPLOAD_QUEUE)),
                running: Arc::new(Semaphore::new(UPLOAD_CONCURRENCY)),
                pending: AtomicU64::new(0),
                done: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
            }),
        }
    }

    /// The directory for temporary files: the storage directory's `tmp/`, on the same file
    /// system as the answers (and the fetcher's spool, so a fetched body is put by a rename).
    pub fn spool_dir(&self) -> PathBuf {
        Self::spool_of(&self.disk)
    }

    fn spool_of(disk: &DiskStore) -> PathBuf {
        disk.root().join("tmp")
    }

    /// Where the answers are, for messages.
    pub fn location(&self) -> String {
        match &self.remote {
            Some(remote) => format!("{} and {}", self.disk.location(), remote.location()),
            None => self.disk.location(),
        }
    }

    /// The background uploads' figures.
    pub fn uploads(&self) -> UploadCounts {
        let u = &self.uploads;
        UploadCounts {
            pending: u.pending.load(Ordering::SeqCst),
            done: u.done.load(Ordering::SeqCst),
            failed: u.failed.load(Ordering::SeqCst),
            dropped: u.dropped.load(Ordering::SeqCst),
        }
    }

    /// Waits up to `wait` for the pending uploads; returns how many are left.
    pub async fn finish(&self, wait: Duration) -> u64 {
        let deadline = Instant::now() + wait;
        loop {
            let pending = self.uploads.pending.load(Ordering::SeqCst);
            if pending == 0 || Instant::now() >= deadline {
                return pending;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The local file of `key`'s answer.
    fn local_file(&self, name: [u8; 32], mutable: bool) -> PathBuf {
        if mutable {
            self.disk.manifest_file(&BuildKey(name))
        } else {
            self.disk.entry_path(&ActionId(name))
        }
    }

    /// The local answer; a damaged one is removed and is a miss.
    async fn get_local(&self, key: &str, file: &Path) -> io::Result<Option<Stored>> {
        match self.local.get(key).await {
            Ok(Some(stored)) => {
                // A use, for the trim; a failure only makes the trim see it as older.
                if let Ok(Some(meta)) = fsutil::regular_meta(file)
                    && let Err(err) = fsutil::touch_if_older(file, &meta)
                {
                    tracing::debug!("refreshing {}: {err}", file.display());
                }
                Ok(Some(stored))
            }
            Ok(None) => Ok(None),
            Err(err) if err.kind() == io::ErrorKind::InvalidInput => Err(err),
            Err(err) => {
                tracing::warn!(
                    key,
                    "a damaged module proxy answer in the local cache, removed: {err}"
                );
                if let Err(err) = fsutil::remove_any(file) {
                    tracing::warn!("removing {}: {err}", file.display());
                }
                Ok(None)
            }
        }
    }

    /// Copies `key`'s answer from the remote into the local store and reads it from there;
    /// a changing answer only if it is newer than `newer_than`. A remote failure or a damaged
    /// object is logged and is `None`.
    async fn copy_from_remote(
        &self,
        remote: &Arc<dyn RemoteStore>,
        key: &str,
        name: [u8; 32],
        mutable: bool,
        newer_than: Option<SystemTime>,
    ) -> io::Result<Option<Stored>> {
        let copied = if mutable {
            self.copy_manifest(remote, name, newer_than).await
        } else {
            self.copy_entry(remote, name).await
        };
        match copied {
            Ok(true) => {}
            Ok(false) => return Ok(None),
            Err(err) => {
                tracing::warn!(key, "the module proxy's remote store: {err}");
                return Ok(None);
            }
        }
        self.get_local(key, &self.local_file(name, mutable)).await
    }

    /// An immutable answer's entry, streamed into the local `tmp/` and committed there after
    /// it is verified (header, size, sha256). Whether there is one now.
    async fn copy_entry(&self, remote: &Arc<dyn RemoteStore>, name: [u8; 32]) -> io::Result<bool> {
        let action = ActionId(name);
        let Some(mut stream) = remote.get(&action).await.map_err(io::Error::other)? else {
            return Ok(false);
        };
        let temp = self.disk.temp_file()?;
        let mut out = tokio::fs::File::from_std(temp.as_file().try_clone()?);
        while let Some(chunk) = stream.next().await {
            out.write_all(&chunk.map_err(io::Error::other)?).await?;
        }
        out.flush().await?;
        let disk = self.disk.clone();
        tokio::task::spawn_blocking(move || disk.commit(&action, temp))
            .await
            .map_err(io::Error::other)?
            .map_err(io::Error::other)?;
        Ok(true)
    }

    /// A changing answer's manifest, verified and stored locally if it is newer than
    /// `newer_than`. Whether it was.
    async fn copy_manifest(
        &self,
        remote: &Arc<dyn RemoteStore>,
        name: [u8; 32],
        newer_than: Option<SystemTime>,
    ) -> io::Result<bool> {
        let key = BuildKey(name);
        let Some(bytes) = remote.get_manifest(&key).await.map_err(io::Error::other)? else {
            return Ok(false);
        };
        let header = format::read_entry_within(&mut &bytes[..], &mut io::sink(), self.max_size)
            .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err.to_string()))?;
        if newer_than.is_some_and(|local| header.time <= local) {
            return Ok(false);
        }
        self.disk
            .put_manifest(&key, bytes)
            .await
            .map_err(io::Error::other)?;
        Ok(true)
    }

    /// Uploads the local file of `key` to `remote` in the background, within the bounds.
    fn upload(&self, remote: Arc<dyn RemoteStore>, key: &str, name: [u8; 32], mutable: bool) {
        let uploads = self.uploads.clone();
        let Ok(place) = uploads.queue.clone().try_acquire_owned() else {
            uploads.dropped.fetch_add(1, Ordering::SeqCst);
            tracing::warn!(
                key,
                "module proxy: {UPLOAD_QUEUE} uploads waiting; not uploaded"
            );
            return;
        };
        uploads.pending.fetch_add(1, Ordering::SeqCst);
        let path = self.local_file(name, mutable);
        let key = key.to_owned();
        tokio::spawn(async move {
            let running = uploads.running.clone().acquire_owned().await;
            let result = async {
                if mutable {
                    let bytes = tokio::fs::read(&path).await?;
                    remote
                        .put_manifest(&BuildKey(name), bytes.into())
                        .await
                        .map_err(io::Error::other)
                } else {
                    let len = tokio::fs::metadata(&path).await?.len();
                    remote
                        .put(&ActionId(name), Upload::File { path, len })
                        .await
                        .map(drop)
                        .map_err(io::Error::other)
                }
            }
            .await;
            match result {
                Ok(()) => uploads.done.fetch_add(1, Ordering::SeqCst),
                Err(err) => {
                    tracing::warn!(key, "uploading a module proxy answer: {err}");
                    uploads.failed.fetch_add(1, Ordering::SeqCst)
                }
            };
            drop(running);
            uploads.pending.fetch_sub(1, Ordering::SeqCst);
            drop(place);
        });
    }
}

#[async_trait]
impl ModStore for TieredModStore {
    async fn get(&self, key: &str) -> io::Result<Option<Stored>> {
        let mutable = EntryModStore::mutable(key)?;
        let name = digest(key);
        let file = self.local_file(name, mutable);
        let local = self.get_local(key, &file).await?;
        let Some(remote) = &self.remote else {
            return Ok(local);
        };
        match local {
            Some(stored) if !mutable => Ok(Some(stored)),
            Some(stored) => {
                let fresh = SystemTime::now()
                    .duration_since(stored.modified)
                    .is_ok_and(|age| age < self.list_ttl);
                if fresh {
                    return Ok(Some(stored));
                }
                let newer = self
                    .copy_from_remote(remote, key, name, true, Some(stored.modified))
                    .await?;
                Ok(newer.or(Some(stored)))
            }
            None => {
                self.copy_from_remote(remote, key, name, mutable, None)
                    .await
            }
        }
    }

    async fn put(&self, key: &str, body: Body) -> io::Result<()> {
        let mutable = EntryModStore::mutable(key)?;
        self.local.put(key, body).await?;
        if let Some(remote) = &self.remote {
            self.upload(remote.clone(), key, digest(key), mutable);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RemoteError;
    use crate::store::memory::{Faults, MemoryStore};

    use crate::goproxy::testserver::{body, read};

    fn tiered(root: &std::path::Path, remote: &Arc<MemoryStore>, ttl: Duration) -> TieredModStore {
        let disk = DiskStore::open(root).unwrap();
        TieredModStore::new(disk, Some(remote.clone()), ttl, 1 << 30)
    }

    const ZIP: &str = "example.com/m/@v/v1.0.0.zip";
    const LIST: &str = "example.com/m/@v/list";

    #[tokio::test]
    async fn a_put_is_uploaded_and_a_fresh_machine_gets_it_from_the_remote() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let remote = Arc::new(MemoryStore::new());
        let first = tiered(a.path(), &remote, Duration::from_secs(60));
        let zip: Vec<u8> = (0..200_000).map(|i| (i % 251) as u8).collect();
        first
            .put(ZIP, body(&first.spool_dir(), &zip))
            .await
            .unwrap();
        first
            .put(LIST, body(&first.spool_dir(), b"v1.0.0\n"))
            .await
            .unwrap();
        assert_eq!(first.finish(Duration::from_secs(10)).await, 0);
        assert_eq!(first.uploads().done, 2);
        assert!(remote.entry(&ActionId(digest(ZIP))).is_some());

        // Another cache directory: both come from the remote and are then held locally.
        let second = tiered(b.path(), &remote, Duration::from_secs(60));
        assert_eq!(read(second.get(ZIP).await.unwrap().unwrap()), zip);
        let list = second.get(LIST).await.unwrap().unwrap();
        let first_list = first.get(LIST).await.unwrap().unwrap();
        // The put time travels with the answer: a copy does not restart its TTL.
        assert_eq!(list.modified, first_list.modified);
        assert_eq!(read(list), b"v1.0.0\n");
        let gets = remote.requests.gets();
        assert!(second.get(ZIP).await.unwrap().is_some());
        assert_eq!(
            remote.requests.gets(),
            gets,
            "a local hit asks nothing of the remote"
        );
        // Nothing is uploaded back for a copy, and the local files are where the trim looks.
        assert_eq!(second.uploads(), UploadCounts::default());
        assert!(
            second
                .local_file(digest(ZIP), false)
                .starts_with(b.path().join("v1"))
        );
        assert!(second.local_file(digest(LIST), true).is_file());
    }

    #[tokio::test]
    async fn a_failing_remote_is_a_miss_and_never_fails_a_put() {
        let a = tempfile::tempdir().unwrap();
        let remote = Arc::new(MemoryStore::new());
        let store = tiered(a.path(), &remote, Duration::from_secs(60));
        remote.set_faults(Faults {
            error: Some(RemoteError::Other("the bucket is down".into())),
            ..Faults::default()
        });
        assert!(store.get(ZIP).await.unwrap().is_none());
        store
            .put(ZIP, body(&store.spool_dir(), b"zip bytes"))
            .await
            .unwrap();
        assert_eq!(store.finish(Duration::from_secs(10)).await, 0);
        assert_eq!(store.uploads().failed, 1);
        assert_eq!(read(store.get(ZIP).await.unwrap().unwrap()), b"zip bytes");
    }

    #[tokio::test]
    async fn a_damaged_remote_object_is_a_miss_and_is_not_kept() {
        let a = tempfile::tempdir().unwrap();
        let remote = Arc::new(MemoryStore::new());
        let store = tiered(a.path(), &remote, Duration::from_secs(60));
        let mut entry = format::encode_for_test(b"{\"Version\":\"v1.0.0\"}");
        let last = entry.len() - 1;
        entry[last] ^= 1;
        let info = "example.com/m/@v/v1.0.0.info";
        remote.insert(ActionId(digest(info)), entry);
        assert!(store.get(info).await.unwrap().is_none());
        assert!(!store.local_file(digest(info), false).exists());
        assert!(store.get("../escape").await.is_err());
    }

    #[tokio::test]
    async fn a_stale_local_list_gives_way_to_a_newer_remote_one() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let remote = Arc::new(MemoryStore::new());
        // A TTL of zero: every list held is stale, so the remote is always asked.
        let old = tiered(a.path(), &remote, Duration::ZERO);
        let new = tiered(b.path(), &remote, Duration::ZERO);
        old.put(LIST, body(&old.spool_dir(), b"v1.0.0\n"))
            .await
            .unwrap();
        assert_eq!(old.finish(Duration::from_secs(10)).await, 0);
        tokio::time::sleep(Duration::from_millis(20)).await;
        new.put(LIST, body(&new.spool_dir(), b"v1.0.0\nv1.1.0\n"))
            .await
            .unwrap();
        assert_eq!(new.finish(Duration::from_secs(10)).await, 0);
        assert_eq!(
            read(old.get(LIST).await.unwrap().unwrap()),
            b"v1.0.0\nv1.1.0\n"
        );
        // The remote's older copy never replaces a newer local one.
        let elsewhere = tempfile::tempdir().unwrap();
        let here = tempfile::tempdir().unwrap();
        let other_remote = Arc::new(MemoryStore::new());
        let writer = tiered(elsewhere.path(), &other_remote, Duration::ZERO);
        writer
            .put(LIST, body(&writer.spool_dir(), b"remote\n"))
            .await
            .unwrap();
        assert_eq!(writer.finish(Duration::from_secs(10)).await, 0);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let alone = TieredModStore::new(
            DiskStore::open(here.path()).unwrap(),
            None,
            Duration::ZERO,
            1 << 30,
        );
        alone
            .put(LIST, body(&alone.spool_dir(), b"local\n"))
            .await
            .unwrap();
        let third = tiered(here.path(), &other_remote, Duration::ZERO);
        assert_eq!(read(third.get(LIST).await.unwrap().unwrap()), b"local\n");
    }
}
