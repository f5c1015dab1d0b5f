//! The remote tier as the cache uses it, whatever the backend: fetching an entry on a local
//! miss (verified before it is stored), write-behind uploads, the circuit breaker and the
//! remote figures.
//!
//! A fetch is one request. The entry's bytes stream from the network into a decoder on a
//! blocking thread, which writes the body to a temporary file in the cache while hashing it;
//! only a body whose size and sha256 match its header's OutputID is renamed into place, with
//! the header's put time. A corrupt, truncated or unreadable entry is a miss, counted, and
//! nothing of it is kept.

use std::collections::HashSet;
use std::io::{self, BufWriter, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use futures::StreamExt;
use tokio::sync::mpsc;

use super::http::HttpStore;
use super::s3::S3Store;
use super::{ReadOnly, RemoteError, RemoteStore, WriteOnly};
use crate::config::{RemoteConfig, RemoteMode, StoreConfig};
use crate::disk::{DiskCache, Entry, Spooled};
use crate::format::{self, FormatError};
use crate::health::Health;
use crate::protocol::ActionId;
use crate::stats::{RemoteStats, Stats, add, nanos};
use crate::uploader::{Job, Uploader};

/// Chunks of an entry in flight between the network and the decoder.
const CHANNEL_CHUNKS: usize = 8;

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
    timeout: Duration,
    upload_wait: Duration,
    stats: Arc<Stats>,
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
        Self {
            store,
            health,
            uploader,
            reads: config.mode != RemoteMode::WriteOnly,
            writes: config.mode != RemoteMode::ReadOnly,
            downloaded: Mutex::new(HashSet::new()),
            timeout: config.timeout,
            upload_wait: config.upload_wait,
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

    /// Fetches `action`'s entry into the local cache. Every failure is a miss (`None`).
    pub async fn fetch(&self, disk: &DiskCache, action: ActionId) -> Option<Entry> {
        let stats = self.remote_stats();
        let start = Instant::now();
        let result = self.try_fetch(disk, action).await;
        add(&stats.wait_nanos, nanos(start.elapsed()));
        match result {
            Ok(Some(entry)) => {
                add(&stats.hits, 1);
                self.health.success();
                self.downloaded
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(action);
                Some(entry)
            }
            Ok(None) => {
                add(&stats.misses, 1);
                self.health.success();
                None
            }
            Err(FetchError::Corrupt(err)) => {
                add(&stats.corrupt, 1);
                add(&stats.misses, 1);
                self.health.success();
                tracing::warn!("remote entry for {action} is damaged ({err}); treated as a miss");
                None
            }
            Err(FetchError::Remote(err)) => {
                add(&stats.errors, 1);
                tracing::debug!(action = %action, "remote get failed: {err}");
                self.health.failure(&err);
                None
            }
            Err(FetchError::Local(err)) => {
                tracing::debug!(action = %action, "storing a fetched entry failed: {err}");
                None
            }
        }
    }

    async fn try_fetch(
        &self,
        disk: &DiskCache,
        action: ActionId,
    ) -> Result<Option<Entry>, FetchError> {
        // The answer must start, and then keep coming, within the timeout; a large entry on
        // a slow link may take longer in all, as long as it does not stall.
        let stalled = || {
            FetchError::Remote(RemoteError::Transient(format!(
                "no answer for {}",
                humantime::format_duration(self.timeout)
            )))
        };
        let opened = tokio::time::timeout(self.timeout, self.store.get(&action)).await;
        let Some(mut stream) = opened.map_err(|_| stalled())?.map_err(FetchError::Remote)? else {
            return Ok(None);
        };
        let spool = disk.spool_file().map_err(FetchError::Local)?;
        let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
        let target = disk.clone();
        let decoder =
            tokio::task::spawn_blocking(move || decode_and_store(&target, action, spool, rx));
        let mut received = 0u64;
        let mut failed = None;
        loop {
            let chunk = match tokio::time::timeout(self.timeout, stream.next()).await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(_) => Err(RemoteError::Transient(format!(
                    "the answer stalled for {}",
                    humantime::format_duration(self.timeout)
                ))),
            };
            match chunk {
                Ok(bytes) => {
                    received += bytes.len() as u64;
                    if tx.send(Ok(bytes)).await.is_err() {
                        break; // the decoder gave up: the entry is bad
                    }
                }
                Err(err) => {
                    let _ = tx.send(Err(())).await;
                    failed = Some(err);
                    break;
                }
            }
        }
        drop(tx);
        add(&self.remote_stats().bytes_down, received);
        let decoded = decoder
            .await
            .map_err(|err| FetchError::Local(io::Error::other(err.to_string())))?;
        if let Some(err) = failed {
            return Err(FetchError::Remote(err));
        }
        decoded.map(Some)
    }

    /// Queues the upload of an output that was just stored locally, unless it came from the
    /// remote in this run or the mode or the remote's health says no.
    pub fn upload_later(&self, job: Job) {
        if !self.writes {
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

    /// Gives pending uploads their time at the end of the run.
    pub async fn finish(&self) {
        self.uploader.finish(self.upload_wait).await;
    }
}

/// Decodes an entry arriving on `chunks` into `spool`, and stores it if it verifies.
fn decode_and_store(
    disk: &DiskCache,
    action: ActionId,
    mut spool: tempfile::NamedTempFile,
    chunks: mpsc::Receiver<Result<Bytes, ()>>,
) -> Result<Entry, FetchError> {
    let mut input = ChannelReader {
        chunks,
        current: Bytes::new(),
    };
    let header = {
        let mut out = BufWriter::with_capacity(256 * 1024, spool.as_file_mut());
        let header = format::read_entry(&mut input, &mut out).map_err(FetchError::Corrupt)?;
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
