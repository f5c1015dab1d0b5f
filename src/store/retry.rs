//! Retries: a put that failed for a reason that may pass (a timeout, a reset, a 5xx,
//! throttling) is tried again, at most [`ATTEMPTS`] times in all, with a growing pause.
//! Entries are put with a conditional create, so a retry of a put that did land is answered
//! [`PutOutcome::Exists`], never a second copy.
//!
//! A get is the go command waiting, and a miss is cheaper than a second wait: a get is asked
//! again only when it failed fast ([`FAST_FAILURE`]), once and at once. That is a connection
//! that was reset or refused: a pooled connection to a server replica that died, whose
//! replacement reaches another replica (measured in bench/fleet.py: without the retry, the
//! requests in flight to a killed `serve` replica were three failures in a row, and the
//! circuit breaker switched the store off for the rest of those builds).

use std::ops::Range;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::time::Instant;

use super::{ByteStream, PutOutcome, RemoteError, RemoteStore, Upload};
use crate::ids::{ActionId, BuildKey};

/// Attempts per put, the first included.
pub const ATTEMPTS: u32 = 3;

/// A get that failed within this is asked once more at once; a slower failure (a timeout:
/// `--remote-timeout` is 10 s, the connect bound 2 s) is not.
pub const FAST_FAILURE: Duration = Duration::from_secs(1);

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
        let start = Instant::now();
        match self.0.get(action).await {
            Err(RemoteError::Transient(_)) if start.elapsed() < FAST_FAILURE => {
                self.0.get(action).await
            }
            done => done,
        }
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

    async fn get_filter(&self) -> Result<Option<Bytes>, RemoteError> {
        self.0.get_filter().await
    }

    fn clients_keep_filter(&self) -> bool {
        self.0.clients_keep_filter()
    }

    async fn put_filter(&self, filter: Bytes) -> Result<(), RemoteError> {
        self.0.put_filter(filter).await
    }

    fn batch_limit(&self) -> usize {
        self.0.batch_limit()
    }

    async fn get_batch(&self, actions: &[ActionId]) -> Result<ByteStream, RemoteError> {
        self.0.get_batch(actions).await
    }

    // Packs.

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

    /// A pack is retried like an entry: it is written once per changed build and saves a
    /// fresh machine hundreds of requests.
    async fn put_pack(&self, key: &BuildKey, pack: Upload) -> Result<(), RemoteError> {
        let mut attempt = 1;
        loop {
            match self.0.put_pack(key, pack.clone()).await {
                Err(RemoteError::Transient(_)) if attempt < ATTEMPTS => {
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
                done => return done,
            }
        }
    }

    fn usable(&self) -> bool {
        self.0.usable()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::memory::{Faults, MemoryStore};

    fn entry() -> Upload {
        Upload::Bytes(Bytes::from_static(b"entry"))
    }

    #[tokio::test]
    async fn a_transient_failure_is_tried_again_up_to_three_attempts() {
        let memory = Arc::new(MemoryStore::new());
        memory.fail_next_puts(2);
        let store = Retry(memory.clone());
        assert_eq!(
            store.put(&ActionId([1; 32]), entry()).await.unwrap(),
            PutOutcome::Stored
        );
        assert_eq!(memory.requests.puts(), 3);
        assert_eq!(memory.len(), 1);

        memory.fail_next_puts(5);
        let store = Retry(memory.clone());
        let err = store.put(&ActionId([2; 32]), entry()).await.unwrap_err();
        assert!(matches!(err, RemoteError::Transient(_)), "{err:?}");
        assert_eq!(
            memory.requests.puts(),
            3 + ATTEMPTS as u64,
            "three attempts at most"
        );
        assert_eq!(memory.len(), 1);
    }

    #[tokio::test]
    async fn other_failures_and_gets_are_not_retried() {
        let store = Retry(MemoryStore::new());
        for err in [
            RemoteError::Denied("no".into()),
            RemoteError::Config("no bucket".into()),
            RemoteError::Other("else".into()),
        ] {
            store.0.set_faults(Faults {
                error: Some(err),
                ..Faults::default()
            });
            let before = store.0.requests.puts();
            assert!(store.put(&ActionId([1; 32]), entry()).await.is_err());
            assert_eq!(store.0.requests.puts(), before + 1);
        }
        for err in [
            RemoteError::Denied("no".into()),
            RemoteError::Other("else".into()),
        ] {
            store.0.set_faults(Faults {
                error: Some(err),
                ..Faults::default()
            });
            let before = store.0.requests.gets();
            assert!(store.get(&ActionId([1; 32])).await.is_err());
            assert_eq!(store.0.requests.gets(), before + 1);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_get_that_failed_fast_is_asked_once_more_and_a_slow_one_not() {
        let store = Retry(MemoryStore::new());
        store.0.insert(ActionId([1; 32]), &b"entry"[..]);
        // A reset at once, then an answer: the second ask finds the entry.
        store.0.fail_next_gets(1);
        assert!(store.get(&ActionId([1; 32])).await.unwrap().is_some());
        assert_eq!(store.0.requests.gets(), 2);
        // Resets every time: asked twice, no more.
        store.0.set_faults(Faults {
            error: Some(RemoteError::Transient("reset".into())),
            ..Faults::default()
        });
        assert!(store.get(&ActionId([1; 32])).await.is_err());
        assert_eq!(store.0.requests.gets(), 4);
        // A failure after a wait (a timeout): the go command has waited enough.
        store.0.set_faults(Faults {
            error: Some(RemoteError::Transient("timed out".into())),
            delay: FAST_FAILURE * 2,
            ..Faults::default()
        });
        assert!(store.get(&ActionId([1; 32])).await.is_err());
        assert_eq!(store.0.requests.gets(), 5);
    }

    #[tokio::test]
    async fn a_retry_of_a_put_that_landed_is_exists() {
        let store = Retry(MemoryStore::new());
        store
            .0
            .insert(ActionId([1; 32]), Bytes::from_static(b"first"));
        assert_eq!(
            store.put(&ActionId([1; 32]), entry()).await.unwrap(),
            PutOutcome::Exists
        );
        assert_eq!(store.0.entry(&ActionId([1; 32])).unwrap(), "first");
    }
}
