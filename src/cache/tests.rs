//! The remote tier's logic on the memory store, without the go command: fetch once, a get
//! joining a prefetch, damaged and cut entries, the circuit breaker, retried uploads.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;

use super::manifest::{KeySource, Manifest};
use super::prefetch::Prefetcher;
use super::remote::RemoteTier;
use super::stats::{RemoteStats, Stats};
use super::upload::Job;
use crate::config::{NamespacePlan, PrefetchConfig, RemoteConfig, StoreConfig};
use crate::ids::{ActionId, OutputId};
use crate::local::disk::DiskCache;
use crate::store::format;
use crate::store::http::HttpConfig;
use crate::store::memory::{Faults, MemoryStore};
use crate::store::{RemoteError, RemoteMode, RemoteStore, wrap};

const PREFETCH_KEY: &str = "cache-tests";

/// A remote tier on a memory store, with a local cache in a temporary directory.
struct Setup {
    tier: Arc<RemoteTier>,
    /// With prefetch on: the prefetcher on `tier`, not started.
    prefetch: Option<Arc<Prefetcher>>,
    memory: Arc<MemoryStore>,
    disk: DiskCache,
    stats: Arc<Stats>,
    dir: tempfile::TempDir,
}

fn config(prefetch: bool, timeout: Duration) -> RemoteConfig {
    RemoteConfig {
        namespaces: NamespacePlan::default(),
        // Not used: the tier is given its store.
        store: StoreConfig::Http(HttpConfig {
            url: "http://127.0.0.1:9".into(),
            token: None,
            ca_file: None,
            connect_timeout: timeout,
            request_timeout: timeout,
            namespace: None,
        }),
        mode: RemoteMode::ReadWrite,
        prefetch: prefetch.then(|| PrefetchConfig {
            key: Some(PREFETCH_KEY.into()),
            concurrency: 16,
            max_bytes: 1 << 30,
            max_entries: 1000,
        }),
        upload_wait: Duration::from_secs(10),
        upload_concurrency: 4,
        upload_queue: 100,
        timeout,
        max_entry_size: 1 << 30,
        upload_min_size: 0,
        fault_rate: Default::default(),
        instant_misses: Some(crate::config::DEFAULT_INSTANT_MISS_AGE),
    }
}

impl Setup {
    /// The tier on `memory`, wrapped as `open_store` wraps every backend; the test keeps
    /// its own handle on `memory` (its counters, its faults).
    fn new(memory: Arc<MemoryStore>, prefetch: bool, timeout: Duration) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let disk = DiskCache::open(&dir.path().join("cache")).unwrap();
        let stats = Arc::new(Stats::with_remote(true));
        let store: Arc<dyn RemoteStore> = wrap(memory.clone(), RemoteMode::ReadWrite, timeout);
        let config = config(prefetch, timeout);
        let tier = Arc::new(RemoteTier::with_store(store, &config, &disk, stats.clone()));
        let prefetch = config.prefetch.map(|prefetch| {
            let source = Prefetcher::source_for(&prefetch);
            Arc::new(Prefetcher::new(tier.clone(), prefetch, source))
        });
        Self {
            tier,
            prefetch,
            memory,
            disk,
            stats,
            dir,
        }
    }

    fn on(memory: MemoryStore) -> Self {
        let memory = Arc::new(memory);
        Self::new(memory.clone(), false, Duration::from_secs(5))
    }

    fn remote(&self) -> &RemoteStats {
        self.stats.remote.as_ref().unwrap()
    }

    async fn fetch(&self, action: ActionId) -> Option<crate::local::disk::Entry> {
        self.tier.fetch(&self.disk, action).await
    }

    /// An output file on local disk, to upload.
    fn job(&self, action: ActionId, body: &[u8]) -> Job {
        let path: PathBuf = self.dir.path().join(format!("output-{}", action.to_hex()));
        std::fs::write(&path, body).unwrap();
        Job {
            action,
            output: OutputId::of(body),
            size: body.len() as u64,
            time: SystemTime::now(),
            path,
        }
    }
}

fn count(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::SeqCst)
}

fn action(n: u8) -> ActionId {
    ActionId([n; 32])
}

fn body(n: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31) ^ n).collect()
}

/// A valid entry of `body`.
fn entry(body: &[u8]) -> Bytes {
    Bytes::from(format::encode_for_test(body))
}

fn delayed(delay: Duration) -> MemoryStore {
    let memory = MemoryStore::new();
    memory.set_faults(Faults {
        delay,
        ..Faults::default()
    });
    memory
}

fn transient() -> Faults {
    Faults {
        error: Some(RemoteError::Transient("503".into())),
        ..Faults::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_fetches_of_one_key_make_one_request() {
    let setup = Setup::on(delayed(Duration::from_millis(200)));
    let data = body(1, 5000);
    setup.memory.insert(action(1), entry(&data));
    let fetches = (0..8).map(|_| setup.fetch(action(1)));
    let found = futures::future::join_all(fetches).await;
    for entry in &found {
        let entry = entry.as_ref().expect("every fetch gets the entry");
        assert_eq!(entry.output_id, OutputId::of(&data));
        assert_eq!(std::fs::read(&entry.disk_path).unwrap(), data);
    }
    assert_eq!(setup.memory.requests.gets(), 1, "one GET for eight fetches");
    assert_eq!(count(&setup.remote().hits), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_joins_the_running_prefetch_of_its_key() {
    let memory = Arc::new(delayed(Duration::from_millis(300)));
    let keys: Vec<ActionId> = (1..=5).map(action).collect();
    let mut listed = Vec::new();
    for (n, key) in keys.iter().enumerate() {
        let data = body(n as u8, 3000);
        listed.push((*key, data.len() as u64, None));
        memory.insert(*key, entry(&data));
    }
    let source = KeySource::explicit(PREFETCH_KEY);
    let manifest =
        Manifest::merge(None, &listed, &[None], &Default::default()).encode(&source, None);
    memory.set_faults(Faults::default());
    memory
        .put_manifest(&source.key(), Bytes::from(manifest))
        .await
        .unwrap();
    memory.set_faults(Faults {
        delay: Duration::from_millis(300),
        ..Faults::default()
    });
    let setup = Setup::new(memory.clone(), true, Duration::from_secs(5));
    let prefetch = setup.prefetch.clone().expect("prefetch is on");
    prefetch.start(&setup.disk);
    // Wait until prefetch has asked for every entry; their answers are still on the way.
    let start = Instant::now();
    while memory.requests.gets() < keys.len() as u64 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "prefetch did not start"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let found = futures::future::join_all(keys.iter().map(|key| setup.fetch(*key))).await;
    for (key, entry) in keys.iter().zip(&found) {
        let entry = entry.as_ref().expect("the get waits for prefetch's fetch");
        prefetch.note_get(*key, Some(entry.size));
    }
    assert_eq!(memory.requests.gets(), keys.len() as u64, "no second GET");
    assert_eq!(count(&setup.remote().prefetch_fetched), keys.len() as u64);
    assert_eq!(count(&setup.remote().prefetch_used), keys.len() as u64);
    assert_eq!(
        count(&setup.remote().hits),
        0,
        "the gets fetched nothing themselves"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_entry_is_a_miss_never_stored_and_not_asked_again() {
    let memory = MemoryStore::new();
    memory.insert(action(1), entry(&body(1, 5000)));
    memory.set_faults(Faults {
        damage: true,
        ..Faults::default()
    });
    let setup = Setup::on(memory);
    assert!(setup.fetch(action(1)).await.is_none());
    assert_eq!(count(&setup.remote().corrupt), 1);
    assert_eq!(count(&setup.remote().errors), 0);
    assert!(
        setup.disk.get(&action(1)).unwrap().is_none(),
        "nothing stored"
    );
    setup.memory.set_faults(Faults::default());
    assert!(setup.fetch(action(1)).await.is_none(), "not asked again");
    assert_eq!(setup.memory.requests.gets(), 1);
    assert!(
        setup.tier.reads(),
        "a damaged entry is not the store's failure"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_body_is_a_miss_and_an_error() {
    let memory = MemoryStore::new();
    memory.insert(action(1), entry(&body(1, 5000)));
    memory.set_faults(Faults {
        cut: true,
        ..Faults::default()
    });
    let setup = Setup::on(memory);
    assert!(setup.fetch(action(1)).await.is_none());
    assert_eq!(count(&setup.remote().errors), 1);
    assert_eq!(count(&setup.remote().corrupt), 0);
    assert!(setup.disk.get(&action(1)).unwrap().is_none());
    // A failed transfer may pass: asked again, and found.
    setup.memory.set_faults(Faults::default());
    assert!(setup.fetch(action(1)).await.is_some());
    assert_eq!(setup.memory.requests.gets(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_is_a_miss_and_an_error_within_the_timeout() {
    let memory = Arc::new(MemoryStore::new());
    memory.insert(action(1), entry(&body(1, 5000)));
    memory.set_faults(Faults {
        stall: true,
        ..Faults::default()
    });
    let setup = Setup::new(memory.clone(), false, Duration::from_millis(200));
    let start = Instant::now();
    assert!(setup.fetch(action(1)).await.is_none());
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(count(&setup.remote().errors), 1);
    assert!(setup.disk.get(&action(1)).unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_transient_failures_switch_the_store_off() {
    let memory = MemoryStore::new();
    memory.set_faults(transient());
    let setup = Setup::on(memory);
    for n in 1..=3 {
        assert!(setup.tier.reads());
        assert!(setup.fetch(action(n)).await.is_none());
    }
    assert!(!setup.tier.reads(), "switched off");
    assert_eq!(count(&setup.remote().errors), 3);
    setup.memory.set_faults(Faults::default());
    setup.memory.insert(action(9), entry(b"there"));
    assert!(setup.fetch(action(9)).await.is_none());
    assert_eq!(
        setup.memory.requests.gets(),
        2 * 3,
        "each failed get asked twice (it failed fast), then answered without a request"
    );
    assert_eq!(count(&setup.remote().errors), 3, "not another error");
    setup.tier.upload_later(setup.job(action(10), b"an output"));
    setup.tier.finish().await;
    assert_eq!(setup.memory.requests.puts(), 0);
    assert_eq!(count(&setup.remote().uploads_dropped), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_switches_the_store_off_at_once() {
    let memory = MemoryStore::new();
    memory.set_faults(Faults {
        error: Some(RemoteError::Denied("403".into())),
        ..Faults::default()
    });
    let setup = Setup::on(memory);
    assert!(setup.fetch(action(1)).await.is_none());
    assert!(!setup.tier.reads());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_success_between_failures_starts_the_count_again() {
    let memory = MemoryStore::new();
    memory.insert(action(9), entry(b"found"));
    let setup = Setup::on(memory);
    for round in 0..2u8 {
        setup.memory.set_faults(transient());
        for n in 0..2 {
            assert!(setup.fetch(action(10 * (round + 1) + n)).await.is_none());
        }
        setup.memory.set_faults(Faults::default());
        if round == 0 {
            assert!(setup.fetch(action(9)).await.is_some());
        }
    }
    assert!(setup.tier.reads(), "two failures, a hit, two failures");
    assert_eq!(count(&setup.remote().errors), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_failing_twice_is_retried_into_one_upload() {
    let memory = Arc::new(MemoryStore::new());
    memory.fail_next_puts(2);
    let setup = Setup::new(memory.clone(), false, Duration::from_secs(5));
    let data = body(3, 4000);
    setup.tier.upload_later(setup.job(action(1), &data));
    setup.tier.finish().await;
    assert_eq!(memory.requests.puts(), 3);
    assert_eq!(count(&setup.remote().uploads), 1);
    assert_eq!(count(&setup.remote().upload_errors), 0);
    let stored = memory.entry(&action(1)).expect("stored once");
    let mut decoded = Vec::new();
    format::read_entry(&mut &stored[..], &mut decoded).unwrap();
    assert_eq!(decoded, data);
    assert!(setup.tier.reads(), "a retried success is one success");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_is_tried_three_times_at_most() {
    let memory = Arc::new(MemoryStore::new());
    memory.fail_next_puts(10);
    let setup = Setup::new(memory.clone(), false, Duration::from_secs(5));
    setup.tier.upload_later(setup.job(action(1), b"an output"));
    setup.tier.finish().await;
    assert_eq!(memory.requests.puts(), 3);
    assert_eq!(count(&setup.remote().upload_errors), 1);
    assert_eq!(count(&setup.remote().uploads), 0);
    assert!(memory.is_empty());
}

/// A run that asks for exactly its manifest's entries writes nothing, unless the manifest was
/// written more than a day ago (or does not say when): then it is written again, so that its
/// time in the store stays the time of its last use (what `gc-remote` goes by).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_manifest_is_written_again_once_a_day_old() {
    use super::manifest::REFRESH;
    let source = KeySource::explicit(PREFETCH_KEY);
    let listed: Vec<_> = (1..=3).map(|n| (action(n), 3000, None)).collect();
    let hour = Duration::from_secs(3600);
    for (written, rewritten) in [
        (Some(SystemTime::now() - hour), false),
        (Some(SystemTime::now() - REFRESH - hour), true),
        (None, true),
    ] {
        let memory = Arc::new(MemoryStore::new());
        for (n, (key, _, _)) in listed.iter().enumerate() {
            memory.insert(*key, entry(&body(n as u8 + 1, 3000)));
        }
        let manifest = Manifest::merge(None, &listed, &[None], &Default::default());
        let bytes = match written {
            Some(time) => manifest.encode_at(&source, None, time),
            None => {
                // Written by a release without the `# written=` line.
                let text = manifest.encode(&source, None);
                let mut plain = String::new();
                std::io::Read::read_to_string(
                    &mut zstd::stream::read::Decoder::new(&text[..]).unwrap(),
                    &mut plain,
                )
                .unwrap();
                let plain: String = plain
                    .lines()
                    .filter(|line| !line.starts_with("# written="))
                    .map(|line| format!("{line}\n"))
                    .collect();
                zstd::bulk::compress(plain.as_bytes(), 1).unwrap()
            }
        };
        memory
            .put_manifest(&source.key(), Bytes::from(bytes))
            .await
            .unwrap();
        let setup = Setup::new(memory.clone(), true, Duration::from_secs(5));
        let prefetch = setup.prefetch.clone().expect("prefetch is on");
        prefetch.start(&setup.disk);
        for (key, size, _) in listed.iter().rev() {
            let found = setup.fetch(*key).await.expect("the entry is there");
            assert_eq!(found.size, *size);
            prefetch.note_get(*key, Some(*size));
        }
        prefetch.finish().await;
        let puts = memory.requests.manifest_puts.load(Ordering::SeqCst);
        assert_eq!(puts, 1 + u64::from(rewritten), "written {written:?}");
        let stored = memory.get_manifest(&source.key()).await.unwrap().unwrap();
        let stored = Manifest::decode(&stored, None).unwrap();
        assert_eq!(stored.entries.len(), listed.len());
        assert!(
            !stored.needs_refresh(SystemTime::now()),
            "written {written:?}"
        );
    }
}

/// A daemon's `flush`: it waits for the uploads queued so far without closing the queue, so
/// that builds after it still upload; a store too slow for the wait leaves uploads pending,
/// and the flush says how many.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_waits_for_the_uploads_and_leaves_the_queue_open() {
    let setup = Setup::on(MemoryStore::new());
    for n in 1..=3 {
        setup.tier.upload_later(setup.job(action(n), &[n; 100]));
    }
    let mut heard = 0;
    let left = (setup.tier)
        .drain(Duration::from_secs(10), &mut |_| heard += 1)
        .await;
    assert_eq!(left, 0);
    assert_eq!(setup.memory.len(), 3);
    assert_eq!(count(&setup.remote().uploads), 3);
    // The queue is still open: a later build's put is uploaded too.
    setup.tier.upload_later(setup.job(action(4), b"later"));
    assert_eq!(
        setup.tier.drain(Duration::from_secs(10), &mut |_| ()).await,
        0
    );
    assert_eq!(setup.memory.len(), 4);

    setup.memory.set_faults(Faults {
        delay: Duration::from_secs(2),
        ..Faults::default()
    });
    setup.tier.upload_later(setup.job(action(5), b"slow"));
    let mut progress = Vec::new();
    let left = (setup.tier)
        .drain(Duration::from_millis(1300), &mut |p| {
            progress.push(p.uploads)
        })
        .await;
    assert_eq!(left, 1, "the slow upload is still pending");
    assert_eq!(
        progress,
        vec![1],
        "one progress report after the first second"
    );
    assert_eq!(setup.tier.pending_uploads().0, 1);
    // It goes on after the flush gave up waiting.
    assert_eq!(
        setup.tier.drain(Duration::from_secs(10), &mut |_| ()).await,
        0
    );
    assert_eq!(setup.memory.len(), 5);
    assert_eq!(heard, 0, "a quick flush reports no progress");
}

/// A daemon writes the manifest at every `flush` and at exit: again only when the run
/// recorded more since, and then with everything recorded, not only what came since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_writes_the_manifest_at_each_flush_only_when_more_was_recorded() {
    let memory = Arc::new(MemoryStore::new());
    let setup = Setup::new(memory.clone(), true, Duration::from_secs(5));
    let prefetch = setup.prefetch.clone().expect("prefetch is on");
    prefetch.start(&setup.disk);
    let manifest_puts = || memory.requests.manifest_puts.load(Ordering::SeqCst);
    prefetch.note_put(action(1), 10);
    prefetch.finish().await;
    assert_eq!(manifest_puts(), 1);
    prefetch.finish().await;
    assert_eq!(manifest_puts(), 1, "nothing new: not written again");
    prefetch.note_put(action(2), 20);
    prefetch.finish().await;
    assert_eq!(manifest_puts(), 2);
    let key = KeySource::explicit(PREFETCH_KEY).key();
    let stored = memory.get_manifest(&key).await.unwrap().unwrap();
    let stored = Manifest::decode(&stored, None).unwrap();
    let mut listed: Vec<_> = stored.entries.iter().map(|e| (e.action, e.size)).collect();
    listed.sort();
    assert_eq!(listed, vec![(action(1), 10), (action(2), 20)]);
}

/// Instant misses on a store whose clients keep its key filter: an empty store's misses cost
/// no request; the run's uploads are added to the filter at the end; a store with entries
/// and no filter gets no filter begun.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_stores_misses_cost_no_request_and_the_run_keeps_its_filter() {
    use crate::store::filter::KeyFilter;
    let setup = Setup::on(MemoryStore::new().keeping_filter());
    setup.tier.start_filters();
    for n in 1..=20 {
        assert!(setup.fetch(action(n)).await.is_none());
    }
    assert_eq!(setup.memory.requests.gets(), 0, "a miss asked the store");
    assert_eq!(count(&setup.remote().instant_misses), 20);
    assert_eq!(count(&setup.remote().misses), 0);
    for n in 1..=3 {
        setup.tier.upload_later(setup.job(action(n), &body(n, 100)));
    }
    setup.tier.finish().await;
    let filter = KeyFilter::decode(&setup.memory.filter().expect("a filter")).unwrap();
    assert_eq!(filter.len(), 3);
    assert!((1..=3).all(|n| filter.may_hold(&action(n))));
    assert_eq!(count(&setup.remote().filter_written), 3);

    // A second run finds the three and asks for them; another key is still instant.
    let next = Setup::on(MemoryStore::new().keeping_filter());
    next.memory
        .put_filter(filter.encode().into())
        .await
        .unwrap();
    for n in 1..=3 {
        next.memory.insert(action(n), entry(&body(n, 100)));
    }
    next.tier.start_filters();
    assert!(next.fetch(action(2)).await.is_some());
    assert!(next.fetch(action(9)).await.is_none());
    assert_eq!(next.memory.requests.gets(), 1);
    assert_eq!(count(&next.remote().instant_misses), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_with_entries_and_no_filter_is_asked_and_gets_none() {
    let setup = Setup::on(MemoryStore::new().keeping_filter());
    setup.memory.insert(action(1), entry(&body(1, 100)));
    setup.tier.start_filters();
    assert!(setup.fetch(action(2)).await.is_none());
    assert_eq!(setup.memory.requests.gets(), 1);
    assert_eq!(count(&setup.remote().instant_misses), 0);
    setup.tier.upload_later(setup.job(action(3), &body(3, 100)));
    setup.tier.finish().await;
    assert!(
        setup.memory.filter().is_none(),
        "a filter missing entry 1 was begun"
    );
}

/// A filter older than its bound is not trusted: misses ask again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_filter_is_not_trusted() {
    use crate::cache::misses::MissFilters;
    let stats = Arc::new(Stats::with_remote(true));
    let filters = Arc::new(MissFilters::new(1, Duration::from_millis(50), stats));
    let memory: Arc<dyn RemoteStore> = Arc::new(MemoryStore::new().keeping_filter());
    filters.start(crate::store::namespace::Namespaces::single(memory));
    assert!(filters.rules_out(&action(1)).await);
    filters.stop();
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert!(
        !filters.rules_out(&action(1)).await,
        "an expired filter ruled out"
    );
}

/// Waits until the prefetch started by `setup` has ended (it notes its time at its end).
async fn prefetch_ended(setup: &Setup) {
    let start = Instant::now();
    while count(&setup.remote().prefetch_nanos) == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "prefetch did not end"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A run that fetched entries one by one writes the manifest and the pack at close; a fresh
/// run then takes every entry from the pack in two requests (its table, one range), with no
/// GET of an entry; a pack entry with a byte changed is fetched on its own, never stored
/// damaged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pack_written_at_close_serves_the_next_fresh_run() {
    use crate::store::pack::Toc;
    const N: u8 = 20;
    let memory = Arc::new(MemoryStore::with_packs());
    for n in 1..=N {
        memory.insert(action(n), entry(&body(n, 1000 + usize::from(n) * 500)));
    }
    let first = Setup::new(memory.clone(), true, Duration::from_secs(5));
    let prefetch = first.prefetch.clone().expect("prefetch is on");
    prefetch.start(&first.disk);
    for n in 1..=N {
        let found = first.fetch(action(n)).await.expect("the entry is there");
        prefetch.note_get(action(n), Some(found.size));
    }
    prefetch.finish().await;
    let key = KeySource::explicit(PREFETCH_KEY).key();
    let pack = memory.pack(&key).expect("a pack was written");
    let toc = Toc::parse(&pack).unwrap();
    assert_eq!(toc.entries.len(), usize::from(N));
    assert_eq!(count(&first.remote().pack_written), u64::from(N));
    // Each entry byte for byte as uploaded: what the store holds.
    for row in &toc.entries {
        let stored = memory.entry(&row.action).unwrap();
        let packed = &pack[row.offset as usize..row.end() as usize];
        let (mut a, mut b) = (Vec::new(), Vec::new());
        format::read_entry(&mut &stored[..], &mut a).unwrap();
        format::read_entry(&mut &packed[..], &mut b).unwrap();
        assert_eq!(a, b);
    }

    // A fresh run: everything from the pack.
    let gets = memory.requests.gets();
    let fresh = Setup::new(memory.clone(), true, Duration::from_secs(5));
    let prefetch = fresh.prefetch.clone().unwrap();
    prefetch.start(&fresh.disk);
    prefetch_ended(&fresh).await;
    assert_eq!(memory.requests.gets(), gets, "no entry was asked for alone");
    assert_eq!(count(&fresh.remote().pack_entries), u64::from(N));
    assert_eq!(count(&fresh.remote().pack_requests), 2);
    for n in 1..=N {
        assert!(fresh.disk.get(&action(n)).unwrap().is_some());
    }
    // The same manifest and a pack that fits: nothing is written again.
    for n in 1..=N {
        let size = fresh.disk.get(&action(n)).unwrap().unwrap().size;
        prefetch.note_get(action(n), Some(size));
    }
    let pack_puts = memory.requests.pack_puts.load(Ordering::SeqCst);
    prefetch.finish().await;
    assert_eq!(memory.requests.pack_puts.load(Ordering::SeqCst), pack_puts);
    assert_eq!(count(&fresh.remote().pack_written), 0);

    // One entry's body damaged in the pack.
    let victim = toc.entries[5];
    let mut damaged = pack.to_vec();
    damaged[(victim.offset + victim.len / 2 + 30) as usize] ^= 0x55;
    memory.insert_pack(key, damaged);
    let gets = memory.requests.gets();
    let third = Setup::new(memory.clone(), true, Duration::from_secs(5));
    let prefetch = third.prefetch.clone().unwrap();
    prefetch.start(&third.disk);
    prefetch_ended(&third).await;
    assert_eq!(count(&third.remote().pack_damaged), 1);
    assert_eq!(count(&third.remote().pack_entries), u64::from(N) - 1);
    assert_eq!(memory.requests.gets(), gets + 1, "the damaged one alone");
    assert_eq!(count(&third.remote().corrupt), 0);
    let got = third
        .disk
        .get(&victim.action)
        .unwrap()
        .expect("fetched on its own");
    let stored = memory.entry(&victim.action).unwrap();
    let mut want = Vec::new();
    let header = format::read_entry(&mut &stored[..], &mut want).unwrap();
    assert_eq!(got.output_id, header.output_id);
    assert_eq!(std::fs::read(&got.disk_path).unwrap(), want);
}

/// A pack whose table does not parse is ignored: every entry is fetched on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unparsable_pack_is_ignored() {
    const N: u8 = 5;
    let memory = Arc::new(MemoryStore::with_packs());
    let mut listed = Vec::new();
    for n in 1..=N {
        let data = body(n, 2000);
        listed.push((action(n), data.len() as u64, None));
        memory.insert(action(n), entry(&data));
    }
    let source = KeySource::explicit(PREFETCH_KEY);
    let manifest =
        Manifest::merge(None, &listed, &[None], &Default::default()).encode(&source, None);
    memory
        .put_manifest(&source.key(), Bytes::from(manifest))
        .await
        .unwrap();
    memory.insert_pack(
        source.key(),
        Bytes::from_static(b"GRCPACK1 but nothing else"),
    );
    let setup = Setup::new(memory.clone(), true, Duration::from_secs(5));
    let prefetch = setup.prefetch.clone().unwrap();
    prefetch.start(&setup.disk);
    prefetch_ended(&setup).await;
    assert_eq!(count(&setup.remote().prefetch_fetched), u64::from(N));
    assert_eq!(count(&setup.remote().pack_entries), 0);
    assert_eq!(memory.requests.gets(), u64::from(N));
}
