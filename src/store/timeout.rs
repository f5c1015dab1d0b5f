//! Time bounds on a store's answers, whatever the backend: a build never waits longer than
//! `--remote-timeout` for a store that has stopped answering.
//!
//! Each request must be answered within the bound, and each piece of an answer's body must
//! follow the last within it: a large entry on a slow link may take longer in all, as long as
//! it does not stall. An expired bound is a [`RemoteError::Transient`], which the circuit
//! breaker counts. Uploads (`put`) are left to the backend's own per-request bound: their
//! total is bounded by `--upload-wait` at close, and a large one may take long honestly.
//! `clear` is a long listing by nature and is not bounded here either.

use std::ops::Range;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use super::{ByteStream, PutOutcome, RemoteError, RemoteStore, Upload};
use crate::ids::{ActionId, BuildKey};

/// A store whose answers must come within `bound`.
#[derive(Debug)]
pub struct Timeout<S> {
    inner: S,
    bound: Duration,
}

impl<S: RemoteStore> Timeout<S> {
    pub fn new(inner: S, bound: Duration) -> Self {
        Self { inner, bound }
    }

    /// Runs one request within the bound.
    async fn within<T>(
        &self,
        request: impl Future<Output = Result<T, RemoteError>>,
    ) -> Result<T, RemoteError> {
        tokio::time::timeout(self.bound, request)
            .await
            .unwrap_or_else(|_| {
                Err(RemoteError::Transient(format!(
                    "no answer within {} (timeout): check the network and the store, or raise --remote-timeout",
                    humantime::format_duration(self.bound)
                )))
            })
    }
}

/// An answer whose pieces must each come within `bound`; a stall ends it with an error.
fn bounded(stream: ByteStream, bound: Duration) -> ByteStream {
    futures::stream::unfold(Some(stream), move |state| async move {
        let mut stream = state?;
        match tokio::time::timeout(bound, stream.next()).await {
            Ok(Some(piece)) => Some((piece, Some(stream))),
            Ok(None) => None,
            Err(_) => Some((
                Err(RemoteError::Transient(format!(
                    "the answer stalled for {} (timeout): check the network and the store, or raise --remote-timeout",
                    humantime::format_duration(bound)
                ))),
                None,
            )),
        }
    })
    .boxed()
}

#[async_trait]
impl<S: RemoteStore> RemoteStore for Timeout<S> {
    async fn get(&self, action: &ActionId) -> Result<Option<ByteStream>, RemoteError> {
        let stream = self.within(self.inner.get(action)).await?;
        Ok(stream.map(|stream| bounded(stream, self.bound)))
    }

    async fn put(&self, action: &ActionId, entry: Upload) -> Result<PutOutcome, RemoteError> {
        self.inner.put(action, entry).await
    }

    async fn head(&self, action: &ActionId) -> Result<Option<u64>, RemoteError> {
        self.within(self.inner.head(action)).await
    }

    async fn clear(&self, progress: &(dyn Fn(u64) + Send + Sync)) -> Result<u64, RemoteError> {
        self.inner.clear(progress).await
    }

    fn location(&self) -> String {
        self.inner.location()
    }

    async fn get_manifest(&self, key: &BuildKey) -> Result<Option<Bytes>, RemoteError> {
        self.within(self.inner.get_manifest(key)).await
    }

    async fn put_manifest(&self, key: &BuildKey, manifest: Bytes) -> Result<(), RemoteError> {
        self.within(self.inner.put_manifest(key, manifest)).await
    }

    async fn get_filter(&self) -> Result<Option<Bytes>, RemoteError> {
        self.within(self.inner.get_filter()).await
    }

    fn clients_keep_filter(&self) -> bool {
        self.inner.clients_keep_filter()
    }

    async fn put_filter(&self, filter: Bytes) -> Result<(), RemoteError> {
        self.within(self.inner.put_filter(filter)).await
    }

    fn batch_limit(&self) -> usize {
        self.inner.batch_limit()
    }

    async fn get_batch(&self, actions: &[ActionId]) -> Result<ByteStream, RemoteError> {
        let stream = self.within(self.inner.get_batch(actions)).await?;
        Ok(bounded(stream, self.bound))
    }

    // Packs: a ranged get is bounded like an entry's get (its answer and each stall in its
    // body); a put is not, like an entry's.

    fn has_packs(&self) -> bool {
        self.inner.has_packs()
    }

    async fn get_pack(
        &self,
        key: &BuildKey,
        range: Range<u64>,
    ) -> Result<Option<ByteStream>, RemoteError> {
        let stream = self.within(self.inner.get_pack(key, range)).await?;
        Ok(stream.map(|stream| bounded(stream, self.bound)))
    }

    async fn put_pack(&self, key: &BuildKey, pack: Upload) -> Result<(), RemoteError> {
        self.inner.put_pack(key, pack).await
    }

    fn usable(&self) -> bool {
        self.inner.usable()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::store::memory::{Faults, MemoryStore};

    const BOUND: Duration = Duration::from_millis(100);

    fn store() -> Timeout<MemoryStore> {
        let store = Timeout::new(MemoryStore::new(), BOUND);
        store.inner.insert(ActionId([1; 32]), vec![7u8; 5000]);
        store
    }

    #[tokio::test]
    async fn a_delayed_answer_is_a_transient_error_at_the_bound() {
        let store = store();
        store.inner.set_faults(Faults {
            delay: Duration::from_secs(5),
            ..Faults::default()
        });
        let start = Instant::now();
        let err = store.get(&ActionId([1; 32])).await.err().unwrap();
        assert!(matches!(err, RemoteError::Transient(_)), "{err:?}");
        let err = store.head(&ActionId([1; 32])).await.unwrap_err();
        assert!(matches!(err, RemoteError::Transient(_)), "{err:?}");
        let err = store.get_manifest(&BuildKey([1; 32])).await.unwrap_err();
        assert!(matches!(err, RemoteError::Transient(_)), "{err:?}");
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(store.inner.requests.gets(), 1);
    }

    #[tokio::test]
    async fn an_answer_within_the_bound_passes_whole() {
        let store = store();
        store.inner.set_faults(Faults {
            delay: BOUND / 4,
            ..Faults::default()
        });
        let stream = store.get(&ActionId([1; 32])).await.unwrap().unwrap();
        let pieces: Vec<Bytes> = futures::TryStreamExt::try_collect(stream).await.unwrap();
        assert_eq!(pieces.concat(), vec![7u8; 5000]);
    }

    #[tokio::test]
    async fn a_stalled_body_ends_with_a_transient_error() {
        let store = store();
        store.inner.set_faults(Faults {
            stall: true,
            ..Faults::default()
        });
        let mut stream = store.get(&ActionId([1; 32])).await.unwrap().unwrap();
        assert!(
            stream.next().await.unwrap().is_ok(),
            "the first piece comes"
        );
        let start = Instant::now();
        let stalled = stream.next().await.unwrap();
        assert!(
            matches!(stalled, Err(RemoteError::Transient(_))),
            "{stalled:?}"
        );
        assert!(start.elapsed() >= BOUND && start.elapsed() < Duration::from_secs(2));
        assert!(stream.next().await.is_none(), "nothing after the error");
    }

    #[tokio::test]
    async fn puts_are_not_bounded() {
        let store = store();
        store.inner.set_faults(Faults {
            delay: BOUND * 3,
            ..Faults::default()
        });
        let outcome = store
            .put(&ActionId([2; 32]), Upload::Bytes(Bytes::from_static(b"x")))
            .await
            .unwrap();
        assert_eq!(outcome, PutOutcome::Stored);
    }
}
