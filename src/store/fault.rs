//! `--remote-fault-rate`: a testing aid that makes a share of the remote requests fail, to try
//! how a build copes with a flaky store (gobuildcache's error-rate injection).
//!
//! The wrapper sits right on the backend, below the time bound, the retries and the circuit
//! breaker ([`super::wrap`]), so that those see the injected failures as they would see a
//! real network's: each failed request is a [`RemoteError::Transient`], which a put retries
//! and the breaker counts. A failed request is not sent at all. `clear` and `location` are
//! left alone: they are no part of a build.
//!
//! Which requests fail is drawn from a small counter-based generator (splitmix64 of a seed
//! plus the request's number), so that a test with a fixed seed is exactly repeatable; a run
//! seeds it from the clock and the process ID.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;

use super::{ByteStream, PutOutcome, RemoteError, RemoteStore, Upload};
use crate::ids::{ActionId, BuildKey};

/// A store of which `rate` of the requests fail before they are sent.
#[derive(Debug)]
pub struct FaultRate<S> {
    inner: S,
    rate: f64,
    seed: u64,
    requests: AtomicU64,
}

impl<S: RemoteStore> FaultRate<S> {
    /// Fails `rate` (0.0 to 1.0) of the requests, chosen by a generator seeded from the clock
    /// and the process ID.
    pub fn new(inner: S, rate: f64) -> Self {
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self::seeded(
            inner,
            rate,
            clock ^ u64::from(std::process::id()).rotate_left(32),
        )
    }

    /// As [`FaultRate::new`], with a fixed seed: the same requests fail every time.
    pub fn seeded(inner: S, rate: f64, seed: u64) -> Self {
        Self {
            inner,
            rate: rate.clamp(0.0, 1.0),
            seed,
            requests: AtomicU64::new(0),
        }
    }

    /// Draws whether the next request fails.
    fn fault(&self, what: &str) -> Result<(), RemoteError> {
        let n = self.requests.fetch_add(1, Ordering::Relaxed);
        // 53 random bits as a number in [0, 1).
        let draw = (splitmix64(self.seed.wrapping_add(n)) >> 11) as f64 / (1u64 << 53) as f64;
        match draw < self.rate {
            true => Err(RemoteError::Transient(format!(
                "{what}: failed on purpose by --remote-fault-rate {}",
                self.rate
            ))),
            false => Ok(()),
        }
    }
}

/// One step of splitmix64: a well-mixed 64-bit value from any input.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[async_trait]
impl<S: RemoteStore> RemoteStore for FaultRate<S> {
    async fn get(&self, action: &ActionId) -> Result<Option<ByteStream>, RemoteError> {
        self.fault("get")?;
        self.inner.get(action).await
    }

    async fn put(&self, action: &ActionId, entry: Upload) -> Result<PutOutcome, RemoteError> {
        self.fault("put")?;
        self.inner.put(action, entry).await
    }

    async fn head(&self, action: &ActionId) -> Result<Option<u64>, RemoteError> {
        self.fault("head")?;
        self.inner.head(action).await
    }

    async fn clear(&self, progress: &(dyn Fn(u64) + Send + Sync)) -> Result<u64, RemoteError> {
        self.inner.clear(progress).await
    }

    fn location(&self) -> String {
        self.inner.location()
    }

    async fn get_manifest(&self, key: &BuildKey) -> Result<Option<Bytes>, RemoteError> {
        self.fault("manifest get")?;
        self.inner.get_manifest(key).await
    }

    async fn put_manifest(&self, key: &BuildKey, manifest: Bytes) -> Result<(), RemoteError> {
        self.fault("manifest put")?;
        self.inner.put_manifest(key, manifest).await
    }

    async fn get_filter(&self) -> Result<Option<Bytes>, RemoteError> {
        self.fault("filter get")?;
        self.inner.get_filter().await
    }

    fn clients_keep_filter(&self) -> bool {
        self.inner.clients_keep_filter()
    }

    async fn put_filter(&self, filter: Bytes) -> Result<(), RemoteError> {
        self.fault("filter put")?;
        self.inner.put_filter(filter).await
    }

    fn batch_limit(&self) -> usize {
        self.inner.batch_limit()
    }

    async fn get_batch(&self, actions: &[ActionId]) -> Result<ByteStream, RemoteError> {
        self.fault("batch get")?;
        self.inner.get_batch(actions).await
    }

    // Packs.

    fn has_packs(&self) -> bool {
        self.inner.has_packs()
    }

    async fn get_pack(
        &self,
        key: &BuildKey,
        range: Range<u64>,
    ) -> Result<Option<ByteStream>, RemoteError> {
        self.fault("pack get")?;
        self.inner.get_pack(key, range).await
    }

    async fn put_pack(&self, key: &BuildKey, pack: Upload) -> Result<(), RemoteError> {
        self.fault("pack put")?;
        self.inner.put_pack(key, pack).await
    }

    fn usable(&self) -> bool {
        self.inner.usable()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    fn failures(store: &FaultRate<MemoryStore>, n: usize) -> usize {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let action = ActionId([7; 32]);
        (0..n)
            .filter(|_| {
                matches!(
                    runtime.block_on(store.get(&action)),
                    Err(RemoteError::Transient(_))
                )
            })
            .count()
    }

    #[test]
    fn half_of_the_requests_fail_with_rate_one_half() {
        let store = FaultRate::seeded(MemoryStore::new(), 0.5, 42);
        let failed = failures(&store, 10_000);
        // A fixed seed: the count is the same on every run; it is near half.
        assert!(
            (4_800..=5_200).contains(&failed),
            "{failed} of 10000 failed"
        );
        // The requests that did not fail reached the store.
        assert_eq!(store.inner.requests.gets(), (10_000 - failed) as u64);
        let again = FaultRate::seeded(MemoryStore::new(), 0.5, 42);
        assert_eq!(
            failures(&again, 10_000),
            failed,
            "the same seed, the same failures"
        );
    }

    #[test]
    fn rates_zero_and_one_are_exact() {
        assert_eq!(
            failures(&FaultRate::seeded(MemoryStore::new(), 0.0, 1), 1_000),
            0
        );
        let all = FaultRate::seeded(MemoryStore::new(), 1.0, 1);
        assert_eq!(failures(&all, 1_000), 1_000);
        assert_eq!(all.inner.requests.gets(), 0, "a failed request is not sent");
    }
}
