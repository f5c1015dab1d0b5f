//! A store in memory, with faults on demand: for tests of the cache's logic (fetch once, a
//! get joining a prefetch, the circuit breaker, batches) without a network or the go command,
//! and as the reference that the conformance suite holds every real backend to.
//!
//! It keeps the contract of [`RemoteStore`] (conditional create, manifests replaced, batch
//! framing) and counts the requests it gets. [`Faults`] changes its answers while set: every
//! request fails with a given error, waits first, or serves bodies damaged, cut off, or
//! stalled after their first piece.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use super::{ByteStream, PutOutcome, RemoteError, RemoteStore, Upload, batch};
use crate::ids::{ActionId, BuildKey};
use crate::sync::lock;

/// What the store does wrong, while set.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Every request fails with this error (the store's state is left alone).
    pub error: Option<RemoteError>,
    /// Every request waits this long before it is answered.
    pub delay: Duration,
    /// Bodies are served with one byte changed (in the entry's body, past its header).
    pub damage: bool,
    /// Bodies end with an error after their first piece.
    pub cut: bool,
    /// Bodies stop after their first piece and never go on.
    pub stall: bool,
}

/// Requests the store was asked, by kind.
#[derive(Debug, Default)]
pub struct Requests {
    pub gets: AtomicU64,
    pub puts: AtomicU64,
    pub heads: AtomicU64,
    pub batches: AtomicU64,
    pub manifest_gets: AtomicU64,
    pub manifest_puts: AtomicU64,
    pub pack_gets: AtomicU64,
    pub pack_puts: AtomicU64,
}

impl Requests {
    pub fn gets(&self) -> u64 {
        self.gets.load(Ordering::SeqCst)
    }

    pub fn puts(&self) -> u64 {
        self.puts.load(Ordering::SeqCst)
    }

    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::SeqCst)
    }
}

/// An in-memory store.
#[derive(Debug, Default)]
pub struct MemoryStore {
    entries: Mutex<HashMap<ActionId, Bytes>>,
    manifests: Mutex<HashMap<BuildKey, Bytes>>,
    faults: Mutex<Faults>,
    /// Puts still to fail with a transient error ([`MemoryStore::fail_next_puts`]).
    failing_puts: AtomicU32,
    /// Gets still to fail with a transient error ([`MemoryStore::fail_next_gets`]).
    failing_gets: AtomicU32,
    batch_limit: usize,
    /// Whether its clients keep a key filter in it, as in a bucket ([`MemoryStore::keeping_filter`]).
    keeps_filter: bool,
    filter: Mutex<Option<Bytes>>,

    /// Whether it keeps packs ([`MemoryStore::with_packs`]), and those it keeps.
    keeps_packs: bool,
    packs: Mutex<HashMap<BuildKey, Bytes>>,

    pub requests: Requests,
}

/// The pieces a body is served in (so that readers meet more than one).
const PIECE: usize = 1024;

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// A store that answers batch fetches of up to `limit` entries, as the HTTP server does.
    pub fn with_batches(limit: usize) -> Self {
        Self {
            batch_limit: limit,
            ..Self::default()
        }
    }

    /// This store, with a key filter kept by its clients as in a bucket: none is given until
    /// one is written, except that an empty store gives the filter of no keys.
    pub fn keeping_filter(self) -> Self {
        Self {
            keeps_filter: true,
            ..self
        }
    }

    /// The key filter stored, if any.
    pub fn filter(&self) -> Option<Bytes> {
        lock(&self.filter).clone()
    }

    /// A store that keeps packs, as the object stores do.
    pub fn with_packs() -> Self {
        Self {
            keeps_packs: true,
            ..Self::default()
        }
    }

    /// The pack stored under `key`.
    pub fn pack(&self, key: &BuildKey) -> Option<Bytes> {
        lock(&self.packs).get(key).cloned()
    }

    /// Stores a pack as it is (tests put damaged ones this way).
    pub fn insert_pack(&self, key: BuildKey, pack: impl Into<Bytes>) {
        lock(&self.packs).insert(key, pack.into());
    }

    /// Changes what the store does wrong from now on.
    pub fn set_faults(&self, faults: Faults) {
        *lock(&self.faults) = faults;
    }

    /// The next `n` puts fail with a transient error (counted as requests), as a store that
    /// throttles for a moment does; the ones after go through.
    pub fn fail_next_puts(&self, n: u32) {
        self.failing_puts.store(n, Ordering::SeqCst);
    }

    /// The next `n` gets fail at once with a transient error (a reset connection), counted.
    pub fn fail_next_gets(&self, n: u32) {
        self.failing_gets.store(n, Ordering::SeqCst);
    }

    /// Stores an entry as it is (tests put damaged ones this way).
    pub fn insert(&self, action: ActionId, entry: impl Into<Bytes>) {
        lock(&self.entries).insert(action, entry.into());
    }

    /// The stored entry for `action`.
    pub fn entry(&self, action: &ActionId) -> Option<Bytes> {
        lock(&self.entries).get(action).cloned()
    }

    pub fn len(&self) -> usize {
        lock(&self.entries).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits out the delay, then fails if an error is set.
    async fn answer(&self) -> Result<Faults, RemoteError> {
        let faults = lock(&self.faults).clone();
        if !faults.delay.is_zero() {
            tokio::time::sleep(faults.delay).await;
        }
        match faults.error.clone() {
            Some(err) => Err(err),
            None => Ok(faults),
        }
    }
}

/// An entry with its last byte changed (a body byte, past the header).
fn damaged(entry: Bytes) -> Bytes {
    let mut bytes = entry.to_vec();
    if bytes.len() > super::format::HEADER_LEN {
        let last = bytes.len() - 1;
        bytes[last] ^= 0x55;
    }
    Bytes::from(bytes)
}

/// An entry as a stream of pieces, with the faults applied.
fn serve(entry: Bytes, faults: &Faults) -> ByteStream {
    let bytes = if faults.damage { damaged(entry) } else { entry };
    let mut pieces: Vec<Result<Bytes, RemoteError>> = bytes
        .chunks(PIECE)
        .map(|piece| Ok(Bytes::copy_from_slice(piece)))
        .collect();
    if faults.cut || faults.stall {
        pieces.truncate(1);
    }
    if faults.cut {
        pieces.push(Err(RemoteError::Transient("connection reset".into())));
    }
    let pieces = futures::stream::iter(pieces);
    if faults.stall {
        pieces.chain(futures::stream::pending()).boxed()
    } else {
        pieces.boxed()
    }
}

#[async_trait]
impl RemoteStore for MemoryStore {
    async fn get(&self, action: &ActionId) -> Result<Option<ByteStream>, RemoteError> {
        self.requests.gets.fetch_add(1, Ordering::SeqCst);
        let faults = self.answer().await?;
        if self
            .failing_gets
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(RemoteError::Transient("connection reset".into()));
        }
        Ok(self.entry(action).map(|entry| serve(entry, &faults)))
    }

    async fn put(&self, action: &ActionId, entry: Upload) -> Result<PutOutcome, RemoteError> {
        self.requests.puts.fetch_add(1, Ordering::SeqCst);
        self.answer().await?;
        if self
            .failing_puts
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(RemoteError::Transient("503 Slow Down".into()));
        }
        let bytes = match entry {
            Upload::Bytes(bytes) => bytes,
            Upload::File { path, .. } => Bytes::from(
                std::fs::read(&path).map_err(|err| RemoteError::Other(err.to_string()))?,
            ),
        };
        let mut entries = lock(&self.entries);
        if entries.contains_key(action) {
            return Ok(PutOutcome::Exists);
        }
        entries.insert(*action, bytes);
        Ok(PutOutcome::Stored)
    }

    async fn head(&self, action: &ActionId) -> Result<Option<u64>, RemoteError> {
        self.requests.heads.fetch_add(1, Ordering::SeqCst);
        self.answer().await?;
        Ok(self.entry(action).map(|entry| entry.len() as u64))
    }

    async fn clear(&self, progress: &(dyn Fn(u64) + Send + Sync)) -> Result<u64, RemoteError> {
        self.answer().await?;
        let deleted = {
            let mut entries = lock(&self.entries);
            let mut manifests = lock(&self.manifests);
            let mut packs = lock(&self.packs);
            let deleted = (entries.len() + manifests.len() + packs.len()) as u64;
            entries.clear();
            manifests.clear();
            packs.clear();
            deleted
        };
        progress(deleted);
        Ok(deleted)
    }

    fn location(&self) -> String {
        "memory".into()
    }

    async fn get_manifest(&self, key: &BuildKey) -> Result<Option<Bytes>, RemoteError> {
        self.requests.manifest_gets.fetch_add(1, Ordering::SeqCst);
        self.answer().await?;
        Ok(lock(&self.manifests).get(key).cloned())
    }

    async fn put_manifest(&self, key: &BuildKey, manifest: Bytes) -> Result<(), RemoteError> {
        self.requests.manifest_puts.fetch_add(1, Ordering::SeqCst);
        self.answer().await?;
        lock(&self.manifests).insert(*key, manifest);
        Ok(())
    }

    async fn get_filter(&self) -> Result<Option<Bytes>, RemoteError> {
        if !self.keeps_filter {
            return Ok(None);
        }
        self.answer().await?;
        if let Some(filter) = lock(&self.filter).clone() {
            return Ok(Some(filter));
        }
        Ok(lock(&self.entries).is_empty().then(|| {
            Bytes::from(super::filter::KeyFilter::empty(std::time::SystemTime::now()).encode())
        }))
    }

    fn clients_keep_filter(&self) -> bool {
        self.keeps_filter
    }

    async fn put_filter(&self, filter: Bytes) -> Result<(), RemoteError> {
        self.answer().await?;
        *lock(&self.filter) = Some(filter);
        Ok(())
    }

    fn batch_limit(&self) -> usize {
        self.batch_limit
    }

    // Packs: served with the faults of entries' bodies, except damage (tests damage a pack
    // with `insert_pack`).

    fn has_packs(&self) -> bool {
        self.keeps_packs
    }

    async fn get_pack(
        &self,
        key: &BuildKey,
        range: Range<u64>,
    ) -> Result<Option<ByteStream>, RemoteError> {
        if !self.keeps_packs {
            return Ok(None);
        }
        self.requests.pack_gets.fetch_add(1, Ordering::SeqCst);
        let faults = self.answer().await?;
        let Some(pack) = self.pack(key) else {
            return Ok(None);
        };
        let end = (range.end.min(pack.len() as u64)) as usize;
        let start = (range.start as usize).min(end);
        let faults = Faults {
            damage: false,
            ..faults
        };
        Ok(Some(serve(pack.slice(start..end), &faults)))
    }

    async fn put_pack(&self, key: &BuildKey, pack: Upload) -> Result<(), RemoteError> {
        if !self.keeps_packs {
            return Ok(());
        }
        self.requests.pack_puts.fetch_add(1, Ordering::SeqCst);
        self.answer().await?;
        let bytes = match pack {
            Upload::Bytes(bytes) => bytes,
            Upload::File { path, .. } => Bytes::from(
                std::fs::read(&path).map_err(|err| RemoteError::Other(err.to_string()))?,
            ),
        };
        self.insert_pack(*key, bytes);
        Ok(())
    }

    async fn get_batch(&self, actions: &[ActionId]) -> Result<ByteStream, RemoteError> {
        if self.batch_limit == 0 {
            return Err(RemoteError::Other("this store has no batch fetch".into()));
        }
        self.requests.batches.fetch_add(1, Ordering::SeqCst);
        let faults = self.answer().await?;
        let mut answer = Vec::new();
        for action in actions {
            match self.entry(action) {
                Some(entry) => {
                    let entry = if faults.damage { damaged(entry) } else { entry };
                    answer.extend_from_slice(&batch::start(action));
                    answer.extend_from_slice(&batch::chunk_header(entry.len()));
                    answer.extend_from_slice(&entry);
                    answer.extend_from_slice(&batch::end());
                }
                None => answer.extend_from_slice(&batch::missing(action)),
            }
        }
        let framing = Faults {
            damage: false,
            ..faults
        };
        Ok(serve(Bytes::from(answer), &framing))
    }
}

#[cfg(test)]
mod tests {

    use futures::TryStreamExt;

    use super::*;

    /// An entry's bytes (not a valid entry: the store does not look).
    fn bytes(len: usize) -> Bytes {
        Bytes::from((0..len).map(|n| n as u8).collect::<Vec<u8>>())
    }

    #[tokio::test]
    async fn serves_bodies_in_pieces_and_applies_faults() {
        let store = MemoryStore::new();
        let key = ActionId([1; 32]);
        let entry = bytes(3 * PIECE + 10);
        store.insert(key, entry.clone());

        let pieces: Vec<Bytes> = store
            .get(&key)
            .await
            .unwrap()
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(pieces.len(), 4, "served in pieces");
        assert_eq!(pieces.concat(), entry.to_vec());

        store.set_faults(Faults {
            damage: true,
            ..Faults::default()
        });
        let damaged: Vec<Bytes> = store
            .get(&key)
            .await
            .unwrap()
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        let damaged = damaged.concat();
        assert_eq!(damaged.len(), entry.len());
        let differing = (0..entry.len()).filter(|&n| damaged[n] != entry[n]).count();
        assert_eq!(differing, 1, "one byte changed");
        assert_eq!(
            damaged[..super::super::format::HEADER_LEN],
            entry[..super::super::format::HEADER_LEN],
            "the header is left alone"
        );

        store.set_faults(Faults {
            cut: true,
            ..Faults::default()
        });
        let mut stream = store.get(&key).await.unwrap().unwrap();
        assert_eq!(stream.next().await.unwrap().unwrap().len(), PIECE);
        assert!(matches!(
            stream.next().await,
            Some(Err(RemoteError::Transient(_)))
        ));

        store.set_faults(Faults {
            stall: true,
            ..Faults::default()
        });
        let mut stream = store.get(&key).await.unwrap().unwrap();
        assert_eq!(stream.next().await.unwrap().unwrap().len(), PIECE);
        let next = tokio::time::timeout(Duration::from_millis(50), stream.next()).await;
        assert!(next.is_err(), "a stalled body never goes on");

        assert_eq!(store.requests.gets(), 4);
    }

    #[tokio::test]
    async fn errors_leave_the_state_alone_and_delays_wait() {
        let store = MemoryStore::new();
        let key = ActionId([2; 32]);
        store.set_faults(Faults {
            error: Some(RemoteError::Denied("no".into())),
            ..Faults::default()
        });
        let err = store.put(&key, Upload::Bytes(bytes(10))).await.unwrap_err();
        assert!(matches!(err, RemoteError::Denied(_)));
        assert!(store.is_empty());
        assert_eq!(store.requests.puts(), 1, "a failed request is counted");

        store.set_faults(Faults {
            delay: Duration::from_millis(100),
            ..Faults::default()
        });
        let start = std::time::Instant::now();
        assert_eq!(
            store.put(&key, Upload::Bytes(bytes(10))).await.unwrap(),
            PutOutcome::Stored
        );
        assert!(start.elapsed() >= Duration::from_millis(100));
        assert_eq!(store.entry(&key), Some(bytes(10)));
    }

    #[tokio::test]
    async fn the_puts_it_is_told_to_fail_fail_and_are_counted() {
        let store = MemoryStore::new();
        store.fail_next_puts(2);
        let key = ActionId([3; 32]);
        for _ in 0..2 {
            let err = store.put(&key, Upload::Bytes(bytes(5))).await.unwrap_err();
            assert!(matches!(err, RemoteError::Transient(_)));
        }
        assert!(store.is_empty());
        assert_eq!(
            store.put(&key, Upload::Bytes(bytes(5))).await.unwrap(),
            PutOutcome::Stored
        );
        assert_eq!(store.requests.puts(), 3);
    }
}
