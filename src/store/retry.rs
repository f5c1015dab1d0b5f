//! Retries of uploads: a put that failed for a reason that may pass (a timeout, a reset, a
//! 5xx, throttling) is tried again, at most [`ATTEMPTS`] times in all, with a growing pause.
//! Only puts: a get is the go command waiting, and a miss is cheaper than a second wait.
//! Entries are put with a conditional create, so a retry of a put that did land is answered
//! [`PutOutcome::Exists`], never a second copy.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::{ByteStream, PutOutcome, RemoteError, RemoteStore, Upload};
use crate::ids::{ActionId, BuildKey};

/// Attempts per put, the first included.
pub const ATTEMPTS: u32 = 3;

/// The pause before attempt `n + 1` (100 ms, then 400 ms).
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100 * 4u64.pow(attempt - 1))
}

/// A store whose puts are retried on transient errors.
#[derive(Debug)]
pub struct Retry<S>(pub S);

#[async_trait]
impl<S: RemoteStore> RemoteStore for Retry<S> {
    async fn get(&self, action: &ActionId) -> Result<Option<ByteStream>, RemoteError> {
        self.0.get(action).await
    }

    async fn put(&self, action: &ActionId, entry: Upload) -> Result<PutOutcome, RemoteError> {
        let mut attempt = 1;
        loop {
            match self.0.put(action, entry.clone()).await {
                Err(RemoteError::Transient(_)) if attempt < ATTEMPTS => {
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
                done => return done,
            }
        }
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

    async fn put_manifest(&self, key: &BuildKey, manifest: Bytes) -> Result<(), RemoteError> {
        self.0.put_manifest(key, manifest).await
    }

    fn batch_limit(&self) -> usize {
        self.0.batch_limit()
    }

    async fn get_batch(&self, actions: &[ActionId]) -> Result<ByteStream, RemoteError> {
        self.0.get_batch(actions).await
    }

    fn usable(&self) -> bool {
        self.0.usable()
    }
}
