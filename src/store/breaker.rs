//! The circuit breaker: a build never fails or stalls because of the remote.
//!
//! An error that retrying cannot fix (access denied, no such bucket) switches the store off
//! for the rest of the run at once; [`MAX_FAILURES`] transient failures in a row (timeouts,
//! refused connections, 5xx) do too. Either way it is said once on stderr, and the build goes
//! on from the local disk: a store that is off answers every request at once with
//! [`RemoteError::SwitchedOff`], and says so in [`RemoteStore::usable`].
//!
//! [`Breaker`] is a wrapper, so the cache's code holds no failure counting of its own. It
//! counts what the store answers about entries: a request that got an answer (a miss, or an
//! entry read to its end or left by the reader) is a success; an error before or during the
//! answer is a failure. Manifest requests are advisory (prefetch works without them): a
//! store that is off refuses them too, but they are not counted. Put the breaker outside the
//! time bounds and the retries, so that it sees a timed-out request as a failure and a put
//! that succeeded on its second attempt as one success.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::task::Poll;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use super::{ByteStream, PutOutcome, RemoteError, RemoteStore, Upload};
use crate::ids::{ActionId, BuildKey};

/// Transient failures in a row that switch the remote off.
pub const MAX_FAILURES: u32 = 3;

/// Whether the remote tier is still worth asking.
#[derive(Debug)]
struct Health {
    location: String,
    failures: AtomicU32,
    off: AtomicBool,
}

impl Health {
    pub fn new(location: String) -> Self {
        Self {
            location,
            failures: AtomicU32::new(0),
            off: AtomicBool::new(false),
        }
    }

    pub fn usable(&self) -> bool {
        !self.off.load(Ordering::Relaxed)
    }

    /// A request that reached the store and got an answer (a miss counts).
    pub fn success(&self) {
        self.failures.store(0, Ordering::Relaxed);
    }

    pub fn failure(&self, err: &RemoteError) {
        if err.is_fatal() {
            self.switch_off(&err.to_string());
            return;
        }
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= MAX_FAILURES {
            self.switch_off(&format!("{failures} failures in a row, the last: {err}"));
        }
    }

    fn switch_off(&self, why: &str) {
        if !self.off.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "remote cache {}: {why}; going on with the local cache only for the rest of this run",
                self.location
            );
        }
    }
}

/// A store behind a circuit breaker.
#[derive(Debug)]
pub struct Breaker<S> {
    inner: S,
    health: Arc<Health>,
}

impl<S: RemoteStore> Breaker<S> {
    pub fn new(inner: S) -> Self {
        let health = Arc::new(Health::new(inner.location()));
        Self { inner, health }
    }

    /// Fails at once when the store is off.
    fn check(&self) -> Result<(), RemoteError> {
        match self.health.usable() {
            true => Ok(()),
            false => Err(RemoteError::SwitchedOff),
        }
    }

    /// Counts the outcome of a request that has no body to follow. A store that refused a
    /// write for lack of room ([`RemoteError::Full`]) answered: a success, not a failure.
    fn count<T>(&self, outcome: Result<T, RemoteError>) -> Result<T, RemoteError> {
        match &outcome {
            Ok(_) | Err(RemoteError::Full(_)) => self.health.success(),
            Err(err) => self.health.failure(err),
        }
        outcome
    }
}

/// An answer's body, counted when it ends: an error in it is a failure; its end, or the
/// reader leaving it (a damaged entry is thrown away, which is the reader's business), is a
/// success.
fn counted(stream: ByteStream, health: Arc<Health>) -> ByteStream {
    struct Watch {
        stream: ByteStream,
        health: Arc<Health>,
        counted: bool,
    }
    impl Drop for Watch {
        fn drop(&mut self) {
            if !self.counted {
                self.health.success();
            }
        }
    }
    let mut watch = Watch {
        stream,
        health,
        counted: false,
    };
    futures::stream::poll_fn(move |cx| {
        let piece = watch.stream.poll_next_unpin(cx);
        match &piece {
            Poll::Ready(Some(Err(err))) if !watch.counted => {
                watch.counted = true;
                watch.health.failure(err);
            }
            Poll::Ready(None) if !watch.counted => {
                watch.counted = true;
                watch.health.success();
            }
            _ => {}
        }
        piece
    })
    .boxed()
}

#[async_trait]
impl<S: RemoteStore> RemoteStore for Breaker<S> {
    async fn get(&self, action: &ActionId) -> Result<Option<ByteStream>, RemoteError> {
        self.check()?;
        match self.inner.get(action).await {
            Ok(Some(stream)) => Ok(Some(counted(stream, self.health.clone()))),
            other => self.count(other),
        }
    }

    async fn put(&self, action: &ActionId, entry: Upload) -> Result<PutOutcome, RemoteError> {
        self.check()?;
        let outcome = self.inner.put(action, entry).await;
        self.count(outcome)
    }

    async fn head(&self, action: &ActionId) -> Result<Option<u64>, RemoteError> {
        self.check()?;
        let outcome = self.inner.head(action).await;
        self.count(outcome)
    }

    async fn clear(&self, progress: &(dyn Fn(u64) + Send + Sync)) -> Result<u64, RemoteError> {
        self.inner.clear(progress).await
    }

    fn location(&self) -> String {
        self.inner.location()
    }

    async fn get_manifest(&self, key: &BuildKey) -> Result<Option<Bytes>, RemoteError> {
        self.check()?;
        self.inner.get_manifest(key).await
    }

    async fn put_manifest(&self, key: &BuildKey, manifest: Bytes) -> Result<(), RemoteError> {
        self.check()?;
        self.inner.put_manifest(key, manifest).await
    }

    async fn get_filter(&self) -> Result<Option<Bytes>, RemoteError> {
        self.check()?;
        self.inner.get_filter().await
    }

    fn clients_keep_filter(&self) -> bool {
        self.inner.clients_keep_filter()
    }

    async fn put_filter(&self, filter: Bytes) -> Result<(), RemoteError> {
        self.check()?;
        self.inner.put_filter(filter).await
    }

    fn batch_limit(&self) -> usize {
        self.inner.batch_limit()
    }

    async fn get_batch(&self, actions: &[ActionId]) -> Result<ByteStream, RemoteError> {
        self.check()?;
        match self.inner.get_batch(actions).await {
            Ok(stream) => Ok(counted(stream, self.health.clone())),
            Err(err) => self.count(Err(err)),
        }
    }

    // Packs: counted like entries.

    fn has_packs(&self) -> bool {
        self.inner.has_packs()
    }

    async fn get_pack(
        &self,
        key: &BuildKey,
        range: Range<u64>,
    ) -> Result<Option<ByteStream>, RemoteError> {
        self.check()?;
        match self.inner.get_pack(key, range).await {
            Ok(Some(stream)) => Ok(Some(counted(stream, self.health.clone()))),
            other => self.count(other),
        }
    }

    async fn put_pack(&self, key: &BuildKey, pack: Upload) -> Result<(), RemoteError> {
        self.check()?;
        let outcome = self.inner.put_pack(key, pack).await;
        self.count(outcome)
    }

    fn usable(&self) -> bool {
        self.health.usable() && self.inner.usable()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_transient_failures_in_a_row_switch_off() {
        let health = Health::new("s3://b".into());
        let transient = RemoteError::Transient("timeout".into());
        health.failure(&transient);
        health.failure(&transient);
        health.success();
        health.failure(&transient);
        health.failure(&transient);
        assert!(health.usable());
        health.failure(&transient);
        assert!(!health.usable());
    }

    use crate::store::memory::{Faults, MemoryStore};

    fn breaker() -> Breaker<MemoryStore> {
        let store = Breaker::new(MemoryStore::new());
        store.inner.insert(ActionId([1; 32]), vec![3u8; 5000]);
        store
    }

    fn fault(store: &Breaker<MemoryStore>, faults: Faults) {
        store.inner.set_faults(faults);
    }

    fn transient() -> Faults {
        Faults {
            error: Some(RemoteError::Transient("503".into())),
            ..Faults::default()
        }
    }

    /// Reads a body to its end; whether it ended well.
    async fn read(store: &Breaker<MemoryStore>) -> Result<(), RemoteError> {
        let stream = store.get(&ActionId([1; 32])).await?.expect("an entry");
        futures::TryStreamExt::try_collect::<Vec<Bytes>>(stream)
            .await
            .map(drop)
    }

    #[tokio::test]
    async fn failed_requests_switch_the_store_off_and_it_answers_without_asking() {
        let store = breaker();
        fault(&store, transient());
        for _ in 0..MAX_FAILURES {
            assert!(store.usable());
            assert!(store.get(&ActionId([1; 32])).await.is_err());
        }
        assert!(!store.usable());
        fault(&store, Faults::default());
        let asked = store.inner.requests.gets();
        let err = store.get(&ActionId([1; 32])).await.err().unwrap();
        assert!(matches!(err, RemoteError::SwitchedOff), "{err:?}");
        let err = store
            .put(&ActionId([2; 32]), Upload::Bytes(Bytes::from_static(b"x")))
            .await
            .unwrap_err();
        assert!(matches!(err, RemoteError::SwitchedOff), "{err:?}");
        assert!(store.get_manifest(&BuildKey([1; 32])).await.is_err());
        assert_eq!(store.inner.requests.gets(), asked, "no request once off");
        assert_eq!(store.inner.requests.puts(), 0);
    }

    /// A server out of room (507) refuses writes but is answering: however many puts it
    /// refuses, the store stays on for reads, and a refusal also ends a run of failures.
    #[tokio::test]
    async fn a_full_store_refusing_puts_stays_on() {
        let store = breaker();
        let full = Faults {
            error: Some(RemoteError::Full("507".into())),
            ..Faults::default()
        };
        fault(&store, transient());
        for _ in 0..MAX_FAILURES - 1 {
            assert!(store.get(&ActionId([1; 32])).await.is_err());
        }
        fault(&store, full);
        for n in 0..10 {
            let put = store
                .put(&ActionId([n; 32]), Upload::Bytes(Bytes::from_static(b"x")))
                .await;
            assert!(matches!(put, Err(RemoteError::Full(_))), "{put:?}");
        }
        fault(&store, transient());
        assert!(store.get(&ActionId([1; 32])).await.is_err());
        assert!(store.usable());
        fault(&store, Faults::default());
        read(&store).await.unwrap();
    }

    #[tokio::test]
    async fn a_denied_request_switches_off_at_once() {
        let store = breaker();
        fault(
            &store,
            Faults {
                error: Some(RemoteError::Denied("403".into())),
                ..Faults::default()
            },
        );
        assert!(store.head(&ActionId([1; 32])).await.is_err());
        assert!(!store.usable());
    }

    #[tokio::test]
    async fn a_body_cut_midway_is_a_failure_and_one_read_to_its_end_a_success() {
        let store = breaker();
        let cut = Faults {
            cut: true,
            ..Faults::default()
        };
        // Two cut bodies, then a whole one: the count starts again.
        fault(&store, cut.clone());
        for _ in 0..MAX_FAILURES - 1 {
            assert!(read(&store).await.is_err());
        }
        fault(&store, Faults::default());
        read(&store).await.unwrap();
        fault(&store, cut.clone());
        for _ in 0..MAX_FAILURES - 1 {
            assert!(read(&store).await.is_err());
        }
        assert!(store.usable(), "the whole body reset the count");
        // A body left by its reader is a success too (the entry was damaged, say).
        fault(&store, Faults::default());
        drop(store.get(&ActionId([1; 32])).await.unwrap());
        fault(&store, cut);
        for _ in 0..MAX_FAILURES - 1 {
            assert!(read(&store).await.is_err());
        }
        assert!(store.usable());
        assert!(read(&store).await.is_err());
        assert!(!store.usable(), "three cut bodies in a row switch off");
    }

    #[tokio::test]
    async fn a_miss_is_a_success_and_manifests_are_not_counted() {
        let store = breaker();
        fault(&store, transient());
        for _ in 0..MAX_FAILURES - 1 {
            assert!(store.get(&ActionId([1; 32])).await.is_err());
        }
        fault(&store, Faults::default());
        assert!(store.get(&ActionId([9; 32])).await.unwrap().is_none());
        fault(&store, transient());
        for _ in 0..MAX_FAILURES - 1 {
            assert!(store.get(&ActionId([1; 32])).await.is_err());
        }
        for _ in 0..MAX_FAILURES + 1 {
            assert!(store.get_manifest(&BuildKey([1; 32])).await.is_err());
        }
        assert!(store.usable());
    }

    #[test]
    fn denied_switches_off_at_once() {
        let health = Health::new("s3://b".into());
        health.failure(&RemoteError::Denied("SignatureDoesNotMatch".into()));
        assert!(!health.usable());
    }
}
