//! The remote tier's contract: a [`RemoteStore`] holds one entry (see [`crate::store::format`]) per
//! action ID, and every backend (S3, GCS and Azure Blob through [`object`], the HTTP cache server) implements it. The
//! cache never sees a backend's own types, only this trait and [`RemoteError`].
//!
//! Behaviour that does not depend on the backend is a wrapper around a store rather than a
//! flag threaded through it: [`ReadOnly`] and [`WriteOnly`] here, the circuit breaker in
//! [`crate::cache`].

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

use crate::ids::{ActionId, BuildKey};

pub mod azblob;
pub mod batch;
pub mod bounded;
pub mod breaker;
pub mod dir;
pub mod explain;
pub mod fault;
pub mod filter;
pub mod format;
pub mod gcs;
pub mod http;
pub mod inventory;
pub mod lru;
pub mod memory;
pub mod namespace;
pub mod object;
pub mod pack;
pub mod retry;
pub mod s3;
pub mod timeout;

use azblob::AzblobConfig;
use breaker::Breaker;
use gcs::GcsConfig;
use http::{HttpConfig, HttpStore};
use object::ObjectStore;
use retry::Retry;
use s3::S3Config;
use timeout::Timeout;

/// Installs the TLS crypto provider every rustls user here needs (reqwest for S3 and the HTTP
/// backend, tokio-rustls for the server): ring, the one this build carries. Installing it
/// again (several stores in one process) is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The largest prefetch manifest a store takes or gives back (a manifest of the most entries
/// it keeps is a few MiB).
pub const MAX_MANIFEST: usize = 16 << 20;

/// The bytes of an entry as they arrive.
pub type ByteStream = BoxStream<'static, Result<Bytes, RemoteError>>;

/// An encoded entry to upload.
#[derive(Debug, Clone)]
pub enum Upload {
    /// Small entries travel in memory: one request, nothing to stream.
    Bytes(Bytes),
    /// Larger ones are streamed from a file, never held whole in memory.
    File { path: PathBuf, len: u64 },
}

impl Upload {
    pub fn len(&self) -> u64 {
        match self {
            Upload::Bytes(bytes) => bytes.len() as u64,
            Upload::File { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a put did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The entry was stored.
    Stored,
    /// An entry for the key existed already; nothing was written.
    Exists,
    /// The store does not take writes (read-only mode).
    Skipped,
}

/// Why a remote operation failed. A failure is never a failed build: the cache turns it into
/// a miss or a dropped upload.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RemoteError {
    /// Credentials are missing or wrong, or lack a permission: retrying will not help.
    #[error("access denied: {0}")]
    Denied(String),
    /// The store is misconfigured (no such bucket, bad endpoint or region).
    #[error("not usable: {0}")]
    Config(String),
    /// A timeout, a refused or reset connection, a 5xx or a throttling answer: may pass.
    #[error("unavailable: {0}")]
    Transient(String),
    /// The store is out of room for now and refused a write (the HTTP server's 507, when
    /// deleting old entries falls behind): the write is dropped and counted, but the store
    /// is answering, not broken, so this is neither retried nor held against it by the
    /// circuit breaker, and reads go on.
    #[error("out of room: {0}")]
    Full(String),
    /// The circuit breaker switched the store off for this run ([`breaker`]).
    #[error("switched off for the rest of this run")]
    SwitchedOff,
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

impl RemoteError {
    /// Whether the store should not be asked again during this run.
    pub fn is_fatal(&self) -> bool {
        matches!(self, RemoteError::Denied(_) | RemoteError::Config(_))
    }
}

/// A remote store of entries. Contracts:
///
/// - `get` makes one request. `Ok(None)` means there is no entry; the stream yields the
///   entry's bytes exactly as they were put, and an error in the middle of it means the bytes
///   so far must be thrown away.
/// - `put` creates the entry only if the key has none (conditional create), so entries are
///   never replaced; a concurrent creator wins and the loser sees [`PutOutcome::Exists`]. The
///   entry becomes visible whole or not at all.
/// - `clear` deletes every entry and prefetch manifest under this store's prefix and nothing
///   else.
/// - Manifests ([`crate::cache::manifest`]) are small named objects beside the entries; unlike
///   entries, a put replaces them (the last writer wins).
/// - `get_batch`, where `batch_limit` is not 0, fetches up to that many entries in one
///   request, answering in the [`batch`] framing.
/// - Packs ([`pack`]) are objects beside the manifests, one per build key, that hold many
///   entries; like manifests a put replaces them. A store without packs (the default: the
///   HTTP server has batches) answers `has_packs` false, `get_pack` `None`, and drops puts.
#[async_trait]
pub trait RemoteStore: Send + Sync + fmt::Debug + 'static {
    async fn get(&self, action: &ActionId) -> Result<Option<ByteStream>, RemoteError>;

    async fn put(&self, action: &ActionId, entry: Upload) -> Result<PutOutcome, RemoteError>;

    /// The size of the entry for `action`, if there is one, without fetching it.
    async fn head(&self, action: &ActionId) -> Result<Option<u64>, RemoteError>;

    /// Deletes every entry, calling `progress` with the running count now and then.
    async fn clear(&self, progress: &(dyn Fn(u64) + Send + Sync)) -> Result<u64, RemoteError>;

    /// Where the entries are, for messages: `s3://bucket/prefix`.
    fn location(&self) -> String;

    /// The prefetch manifest stored under `key`, read whole; `None` if there is none.
    async fn get_manifest(&self, key: &BuildKey) -> Result<Option<Bytes>, RemoteError>;

    /// Stores the prefetch manifest under `key`, replacing the one there.
    async fn put_manifest(&self, key: &BuildKey, manifest: Bytes) -> Result<(), RemoteError>;

    /// The store's key filter ([`filter`]) in its stored form: every key it holds as of when
    /// the filter was made. `None` when it has none to give; then every get asks. Like
    /// manifests, filters are advisory: the circuit breaker does not count their failures.
    async fn get_filter(&self) -> Result<Option<Bytes>, RemoteError> {
        Ok(None)
    }

    /// Whether the store's clients keep its filter, each adding the keys it stored
    /// ([`RemoteStore::put_filter`]): a bucket, which makes none itself. The HTTP server makes
    /// its own.
    fn clients_keep_filter(&self) -> bool {
        false
    }

    /// Stores the key filter, replacing the one there.
    async fn put_filter(&self, _filter: Bytes) -> Result<(), RemoteError> {
        Err(RemoteError::Other("this store keeps no key filter".into()))
    }

    /// How many entries one [`RemoteStore::get_batch`] may ask for; 0 when the store has no
    /// batch fetch (then prefetch asks entry by entry, many at once).
    fn batch_limit(&self) -> usize {
        0
    }

    /// Fetches the entries for `actions` in one request: the answer's bytes in the [`batch`]
    /// framing.
    async fn get_batch(&self, _actions: &[ActionId]) -> Result<ByteStream, RemoteError> {
        Err(RemoteError::Other("this store has no batch fetch".into()))
    }

    // Packs (bulk prefetch: docs/prefetch.md).

    /// Whether the store keeps packs ([`pack`]); `false`: prefetch neither reads nor writes
    /// them.
    fn has_packs(&self) -> bool {
        false
    }

    /// The bytes `range` of the pack stored under `key` (one ranged request); `None` if there
    /// is no pack. A range past the pack's end gives the bytes up to its end, then may end with
    /// an error (OpenDAL checks that it got the length it asked for).
    async fn get_pack(
        &self,
        _key: &BuildKey,
        _range: Range<u64>,
    ) -> Result<Option<ByteStream>, RemoteError> {
        Ok(None)
    }

    /// Stores the pack under `key`, replacing the one there (the last writer wins).
    async fn put_pack(&self, _key: &BuildKey, _pack: Upload) -> Result<(), RemoteError> {
        Ok(())
    }

    /// Whether the store is worth asking now: `false` once the circuit breaker switched it
    /// off, so that a local miss is answered at once.
    fn usable(&self) -> bool {
        true
    }
}

/// A shared store is a store: the wrappers own their inner store, and whoever built it (a
/// test, or the server) may keep a handle on it.
#[async_trait]
impl<S: RemoteStore + ?Sized> RemoteStore for Arc<S> {
    async fn get(&self, action: &ActionId) -> Result<Option<ByteStream>, RemoteError> {
        (**self).get(action).await
    }

    async fn put(&self, action: &ActionId, entry: Upload) -> Result<PutOutcome, RemoteError> {
        (**self).put(action, entry).await
    }

    async fn head(&self, action: &ActionId) -> Result<Option<u64>, RemoteError> {
        (**self).head(action).await
    }

    async fn clear(&self, progress: &(dyn Fn(u64) + Send + Sync)) -> Result<u64, RemoteError> {
        (**self).clear(progress).await
    }

    fn location(&self) -> String {
        (**self).location()
    }

    async fn get_manifest(&self, key: &BuildKey) -> Result<Option<Bytes>, RemoteError> {
        (**self).get_manifest(key).await
    }

    async fn put_manifest(&self, key: &BuildKey, manifest: Bytes) -> Result<(), RemoteError> {
        (**self).put_manifest(key, manifest).await
    }

    async fn get_filter(&self) -> Result<Option<Bytes>, RemoteError> {
        (**self).get_filter().await
    }

    fn clients_keep_filter(&self) -> bool {
        (**self).clients_keep_filter()
    }

    async fn put_filter(&self, filter: Bytes) -> Result<(), RemoteError> {
        (**self).put_filter(filter).await
    }

    fn batch_limit(&self) -> usize {
        (**self).batch_limit()
    }

    async fn get_batch(&self, actions: &[ActionId]) -> Result<ByteStream, RemoteError> {
        (**self).get_batch(actions).await
    }

    // Packs.

    fn has_packs(&self) -> bool {
        (**self).has_packs()
    }

    async fn get_pack(
        &self,
        key: &BuildKey,
        range: Range<u64>,
    ) -> Result<Option<ByteStream>, RemoteError> {
        (**self).get_pack(key, range).await
    }

    async fn put_pack(&self, key: &BuildKey, pack: Upload) -> Result<(), RemoteError> {
        (**self).put_pack(key, pack).await
    }

    fn usable(&self) -> bool {
        (**self).usable()
    }
}

/// Which backend, and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    S3(S3Config),
    Gcs(GcsConfig),
    Azblob(AzblobConfig),
    Http(HttpConfig),
}

impl StoreConfig {
    /// Where the entries are, for messages (`s3://bucket/prefix`, a server's URL), as the
    /// opened store's [`RemoteStore::location`] says it, without opening it.
    pub fn location(&self) -> String {
        match self {
            StoreConfig::S3(s3) => s3.location(),
            StoreConfig::Gcs(gcs) => gcs.location(),
            StoreConfig::Azblob(azblob) => azblob.location(),
            StoreConfig::Http(http) => http.location(),
        }
    }

    /// The bucket or container itself, unwrapped, for what needs more than [`RemoteStore`]
    /// (`gc-remote`'s and `clear-remote`'s [`inventory`]); `None` for an HTTP server.
    pub fn objects(&self) -> Option<Result<ObjectStore, RemoteError>> {
        match self {
            StoreConfig::S3(s3) => Some(s3.open()),
            StoreConfig::Gcs(gcs) => Some(gcs.open()),
            StoreConfig::Azblob(azblob) => Some(azblob.open()),
            StoreConfig::Http(_) => None,
        }
    }

    /// The module proxy's store inside a bucket or container (`<prefix>/mod`); `None` for an
    /// HTTP server, whose module files are in its own storage.
    pub fn for_modules(&self) -> Option<StoreConfig> {
        match self {
            StoreConfig::S3(s3) => Some(StoreConfig::S3(s3.for_modules())),
            StoreConfig::Gcs(gcs) => Some(StoreConfig::Gcs(gcs.for_modules())),
            StoreConfig::Azblob(azblob) => Some(StoreConfig::Azblob(azblob.for_modules())),
            StoreConfig::Http(_) => None,
        }
    }
}

/// What the cache does with the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RemoteMode {
    ReadWrite,
    ReadOnly,
    WriteOnly,
}

/// The store that `config` names, as the cache uses it: every request bounded by `timeout`,
/// uploads retried, behind the circuit breaker, and wrapped for its mode. No network or
/// credential work happens here.
pub fn open_store(
    config: &StoreConfig,
    mode: RemoteMode,
    timeout: Duration,
) -> Result<Arc<dyn RemoteStore>, RemoteError> {
    open_store_with_faults(config, mode, timeout, 0.0)
}

/// As [`open_store`], with `fault_rate` of the requests failing on purpose
/// (`--remote-fault-rate`, [`fault`]); 0.0 for none.
pub fn open_store_with_faults(
    config: &StoreConfig,
    mode: RemoteMode,
    timeout: Duration,
    fault_rate: f64,
) -> Result<Arc<dyn RemoteStore>, RemoteError> {
    match config {
        StoreConfig::S3(s3) => Ok(wrap_with_faults(s3.open()?, mode, timeout, fault_rate)),
        StoreConfig::Gcs(gcs) => Ok(wrap_with_faults(gcs.open()?, mode, timeout, fault_rate)),
        StoreConfig::Azblob(azblob) => {
            Ok(wrap_with_faults(azblob.open()?, mode, timeout, fault_rate))
        }
        StoreConfig::Http(http) => Ok(wrap_with_faults(
            HttpStore::new(http)?,
            mode,
            timeout,
            fault_rate,
        )),
    }
}

/// Wraps a backend as [`open_store`] does (tests wrap stores of their own).
pub fn wrap<S: RemoteStore>(store: S, mode: RemoteMode, timeout: Duration) -> Arc<dyn RemoteStore> {
    let store = Breaker::new(Retry(Timeout::new(store, timeout)));
    match mode {
        RemoteMode::ReadWrite => Arc::new(store),
        RemoteMode::ReadOnly => Arc::new(ReadOnly(store)),
        RemoteMode::WriteOnly => Arc::new(WriteOnly(store)),
    }
}

/// As [`wrap`], with the injected faults right on the backend, below the time bound, the
/// retries and the breaker, which see them as they would see a flaky network's.
pub fn wrap_with_faults<S: RemoteStore>(
    store: S,
    mode: RemoteMode,
    timeout: Duration,
    fault_rate: f64,
) -> Arc<dyn RemoteStore> {
    match fault_rate > 0.0 {
        true => wrap(fault::FaultRate::new(store, fault_rate), mode, timeout),
        false => wrap(store, mode, timeout),
    }
}

/// The object key of an action's entry below a store's prefix. The `v1/` part names the
/// entry format's version: a new format gets a new key prefix, so old and new never mix.
pub fn entry_key(action: &ActionId) -> String {
    format!("v1/{}", action.to_hex())
}

/// The object key of a prefetch manifest below a store's prefix, versioned like entries.
pub fn manifest_key(key: &BuildKey) -> String {
    format!("prefetch/v1/{}", key.to_hex())
}

/// The object key of the key filter below a store's prefix (one per prefix or namespace).
pub const FILTER_KEY: &str = "filter/v1/keys";

/// The object key of a build's pack below a store's prefix ([`pack`]), versioned like
/// entries, outside `v1/`.
pub fn pack_key(key: &BuildKey) -> String {
    format!("pack/v1/{}", key.to_hex())
}

/// Never uploads: for untrusted builds (pull requests from forks).
#[derive(Debug)]
pub struct ReadOnly<S>(pub S);

#[async_trait]
impl<S: RemoteStore> RemoteStore for ReadOnly<S> {
    async fn get(&self, action: &ActionId) -> Result<Option<ByteStream>, RemoteError> {
        self.0.get(action).await
    }

    async fn put(&self, _: &ActionId, _: Upload) -> Result<PutOutcome, RemoteError> {
        Ok(PutOutcome::Skipped)
    }

    async fn head(&self, action: &ActionId) -> Result<Option<u64>, RemoteError> {
        self.0.head(action).await
    }

    async fn clear(&self, progress: &(dyn Fn(u64) + Send + Sync)) -> Result<u64, RemoteError> {
        self.0.clear(progress).await
    }

    fn location(&self) -> String {
        self.0.location()
    }

    async fn get_manifest(&self, key: &BuildKey) -> Result<Option<Bytes>, RemoteError> {
        self.0.get_manifest(key).await
    }

    async fn put_manifest(&self, _: &BuildKey, _: Bytes) -> Result<(), RemoteError> {
        Ok(())
    }

    async fn get_filter(&self) -> Result<Option<Bytes>, RemoteError> {
        self.0.get_filter().await
    }

    // Never written here: `clients_keep_filter` stays false.

    fn batch_limit(&self) -> usize {
        self.0.batch_limit()
    }

    async fn get_batch(&self, actions: &[ActionId]) -> Result<ByteStream, RemoteError> {
        self.0.get_batch(actions).await
    }

    // Packs: read, never written.

    fn has_packs(&self) -> bool {
        self.0.has_packs()
    }

    async fn get_pack(
        &self,
        key: &BuildKey,
        range: Range<u64>,
    ) -> Result<Option<ByteStream>, RemoteError> {
        self.0.get_pack(key, range).await
    }

    async fn put_pack(&self, _: &BuildKey, _: Upload) -> Result<(), RemoteError> {
        Ok(())
    }

    fn usable(&self) -> bool {
        self.0.usable()
    }
}

/// Never reads remote entries: to refill a cache that is suspected bad.
#[derive(Debug)]
pub struct WriteOnly<S>(pub S);

#[async_trait]
impl<S: RemoteStore> RemoteStore for WriteOnly<S> {
    async fn get(&self, _: &ActionId) -> Result<Option<ByteStream>, RemoteError> {
        Ok(None)
    }

    async fn put(&self, action: &ActionId, entry: Upload) -> Result<PutOutcome, RemoteError> {
        self.0.put(action, entry).await
    }

    async fn head(&self, _: &ActionId) -> Result<Option<u64>, RemoteError> {
        Ok(None)
    }

    async fn clear(&self, progress: &(dyn Fn(u64) + Send + Sync)) -> Result<u64, RemoteError> {
        self.0.clear(progress).await
    }

    fn location(&self) -> String {
        self.0.location()
    }

    async fn get_manifest(&self, _: &BuildKey) -> Result<Option<Bytes>, RemoteError> {
        Ok(None)
    }

    async fn put_manifest(&self, key: &BuildKey, manifest: Bytes) -> Result<(), RemoteError> {
        self.0.put_manifest(key, manifest).await
    }

    // Reads nothing, so no filter either; the filter is kept by those that read (a run
    // that writes only adds its keys where the filter is read: see `cache::misses`).
    async fn get_filter(&self) -> Result<Option<Bytes>, RemoteError> {
        self.0.get_filter().await
    }

    fn clients_keep_filter(&self) -> bool {
        self.0.clients_keep_filter()
    }

    async fn put_filter(&self, filter: Bytes) -> Result<(), RemoteError> {
        self.0.put_filter(filter).await
    }

    // Packs: written, never read.

    fn has_packs(&self) -> bool {
        self.0.has_packs()
    }

    async fn put_pack(&self, key: &BuildKey, pack: Upload) -> Result<(), RemoteError> {
        self.0.put_pack(key, pack).await
    }

    fn usable(&self) -> bool {
        self.0.usable()
    }
}

/// Streams a file in chunks read on a blocking thread (no whole file in memory).
pub fn file_stream(file: std::fs::File) -> ByteStream {
    use futures::StreamExt;
    use std::io::Read;
    const CHUNK: usize = 256 * 1024;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, RemoteError>>(4);
    tokio::task::spawn_blocking(move || {
        let mut file = file;
        loop {
            let mut buf = vec![0u8; CHUNK];
            match file.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                        return;
                    }
                }
                Err(err) => {
                    let _ = tx.blocking_send(Err(RemoteError::Other(format!("reading: {err}"))));
                    return;
                }
            }
        }
    });
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}
