//! Instant misses: a local miss whose key the store does not have is answered at once,
//! without a round trip, when the store's key filter ([`crate::store::filter`]) rules the key
//! out. On a cold build every get is such a miss, and the go command, which keeps at most
//! GOMAXPROCS+1 requests in flight, would otherwise wait one round trip for each.
//!
//! - **Where filters come from.** Right after the handshake each namespace's filter is
//!   fetched ([`RemoteStore::get_filter`]): `goremotecache serve` makes one of its storage
//!   directory; a bucket holds one that the runs keep (an empty bucket gives the filter of no
//!   keys). Until it arrives, and for a namespace that gives none, gets ask the store as
//!   before.
//! - **How long one is trusted.** `--instant-miss-max-age` (10 minutes) from its fetch; it is
//!   fetched again after half of that, so a long session (a daemon, a long `go test`) sees
//!   what others stored meanwhile. A filter older than the bound is dropped: gets ask again.
//! - **Keeping a bucket's filter.** At the end of a run that stored entries, the filter is
//!   read again, the keys this run stored (or found there already) are added, and it is
//!   written back: two requests. Only a filter that exists is extended (or the one of an empty
//!   bucket), so that a filter always covers every entry its writers stored. A bucket written
//!   by runs that do not keep it (releases before it, or a run killed before its end) can
//!   miss keys: `gc-remote` writes a complete one from its listing.
//! - **What a wrong "absent" costs.** A key stored after the filter was made (by a build
//!   running at the same time, or by a writer that did not add it) is compiled again; the
//!   upload that follows finds the entry there and is counted as
//!   `remote.instant_misses_wrong`. Never a wrong result: a filter only ever removes a request
//!   whose answer would have been a hit, never serves anything.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;

use super::stats::{RemoteStats, Stats, add};
use crate::ids::ActionId;
use crate::store::filter::KeyFilter;
use crate::store::namespace::Namespaces;
use crate::store::{PutOutcome, RemoteStore};
use crate::sync::lock;

/// How long a get waits for the first fetch of the filters, at most.
pub const FIRST_WAIT: Duration = Duration::from_secs(2);

/// One namespace's filter, and when it was fetched.
type Slot = RwLock<Option<(Arc<KeyFilter>, Instant)>>;

/// The key filters of a run's namespaces, and what the run adds to its own.
#[derive(Debug)]
pub struct MissFilters {
    /// One per namespace, in read order: the filter, and when it was fetched.
    slots: Vec<Slot>,
    max_age: Duration,
    /// Keys this run stored in its own namespace, or found there already: added to a kept
    /// filter at the end.
    stored: Mutex<Vec<ActionId>>,
    /// Keys answered as instant misses: an upload that then finds one in the store counts a
    /// wrong "absent".
    ruled_out: Mutex<HashSet<ActionId>>,
    /// Set once the first fetch of every filter has ended (found or not).
    first: tokio::sync::watch::Sender<bool>,
    /// The fetching task, stopped at the end.
    task: Mutex<Option<tokio::task::AbortHandle>>,
    stats: Arc<Stats>,
}

impl MissFilters {
    /// Filters for `namespaces` namespaces, trusted for `max_age` after each fetch.
    pub fn new(namespaces: usize, max_age: Duration, stats: Arc<Stats>) -> Self {
        Self {
            slots: (0..namespaces).map(|_| RwLock::new(None)).collect(),
            max_age,
            stored: Mutex::new(Vec::new()),
            ruled_out: Mutex::new(HashSet::new()),
            first: tokio::sync::watch::Sender::new(false),
            task: Mutex::new(None),
            stats,
        }
    }

    fn remote_stats(&self) -> &RemoteStats {
        (self.stats.remote.as_ref()).expect("a remote tier has remote stats")
    }

    /// Fetches every namespace's filter now, in the background, and again after each half
    /// of the bound. Call once, right after the handshake, on the tokio runtime.
    pub fn start(self: &Arc<Self>, namespaces: Namespaces) {
        let this = self.clone();
        let task = tokio::spawn(async move {
            loop {
                this.fetch_all(&namespaces).await;
                this.first.send_replace(true);
                tokio::time::sleep(this.max_age / 2).await;
            }
        });
        *lock(&self.task) = Some(task.abort_handle());
    }

    async fn fetch_all(&self, namespaces: &Namespaces) {
        let fetches = (0..self.slots.len()).map(|index| async move {
            let store = namespaces.store(index);
            if let Some(filter) = fetch(store.as_ref()).await {
                if index == 0 {
                    (self.remote_stats().filter_keys).store(filter.len() as u64, Ordering::Relaxed);
                }
                *self.slots[index].write().expect("not poisoned") =
                    Some((Arc::new(filter), Instant::now()));
            }
        });
        futures::future::join_all(fetches).await;
    }

    /// Whether every namespace's filter, fetched within the bound, rules `action` out: then
    /// the get is a miss without asking. Counted. The gets that come while the first fetch
    /// is on its way wait for it, up to [`FIRST_WAIT`]: its answer comes about when theirs
    /// would, and a cold build's first gets are then instant too.
    pub async fn rules_out(&self, action: &ActionId) -> bool {
        let started = lock(&self.task).is_some();
        if started && !*self.first.borrow() {
            let mut first = self.first.subscribe();
            let _ = tokio::time::timeout(FIRST_WAIT, first.wait_for(|done| *done)).await;
        }
        let all = self
            .slots
            .iter()
            .all(|slot| match &*slot.read().expect("not poisoned") {
                Some((filter, fetched)) => {
                    fetched.elapsed() < self.max_age && !filter.may_hold(action)
                }
                None => false,
            });
        if all {
            add(&self.remote_stats().instant_misses, 1);
            lock(&self.ruled_out).insert(*action);
        }
        all
    }

    /// Notes what an upload of `action` to the own namespace found.
    pub fn uploaded(&self, action: ActionId, outcome: PutOutcome) {
        match outcome {
            PutOutcome::Stored => lock(&self.stored).push(action),
            PutOutcome::Exists => {
                lock(&self.stored).push(action);
                if lock(&self.ruled_out).contains(&action) {
                    add(&self.remote_stats().instant_misses_wrong, 1);
                }
            }
            PutOutcome::Skipped => {}
        }
    }

    /// Stops fetching filters (the end of the run).
    pub fn stop(&self) {
        if let Some(task) = lock(&self.task).take() {
            task.abort();
        }
    }

    /// Adds the keys this run stored since the last call to the own namespace's filter,
    /// where the clients keep it (call with the uploads done). The filter is read again
    /// first, so that what others added since this run began is kept.
    pub async fn write(&self, own: &dyn RemoteStore) {
        let stored = std::mem::take(&mut *lock(&self.stored));
        if stored.is_empty() || !own.clients_keep_filter() || !own.usable() {
            return;
        }
        // The filter as it is now; if there is none, the one fetched at start (an empty
        // bucket's, now holding this run's entries). Without either (a bucket with entries
        // that nobody kept a filter for), none is begun here: it would not cover them.
        let current = match fetch(own).await {
            Some(current) => current,
            None => match &*self.slots[0].read().expect("not poisoned") {
                Some((filter, _)) => KeyFilter::clone(filter),
                None => return,
            },
        };
        let written = current.with(stored, SystemTime::now());
        if current.covers(&written) {
            return;
        }
        match own.put_filter(Bytes::from(written.encode())).await {
            Ok(()) => self
                .remote_stats()
                .filter_written
                .store(written.len() as u64, Ordering::Relaxed),
            Err(err) => tracing::debug!("writing the key filter failed: {err}"),
        }
    }
}

/// A store's filter; any failure is no filter (gets ask, as without one).
async fn fetch(store: &dyn RemoteStore) -> Option<KeyFilter> {
    let bytes = match store.get_filter().await {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return None,
        Err(err) => {
            tracing::debug!(
                "fetching the key filter of {} failed: {err}",
                store.location()
            );
            return None;
        }
    };
    KeyFilter::decode(&bytes)
        .inspect_err(|err| {
            tracing::warn!(
                "the key filter of {} is unusable ({err}); every miss asks the store",
                store.location()
            )
        })
        .ok()
}
