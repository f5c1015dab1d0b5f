//! The conformance suite of the remote-store contract (`RemoteStore`, in `src/store/mod.rs`):
//! the same checks, run against every backend. Each backend gets a module of its own below
//! (`store_conformance::s3::…`, `store_conformance::dir::…`), with one test per check.
//!
//! | check                         | s3 (in-process s3s)        | dir (`DiskStore`)           | http (`HttpStore` → in-process `serve` on a `DiskStore`) | memory (`MemoryStore`, batches of 4) |
//! |-------------------------------|----------------------------|-----------------------------|----------------------------------|----------------------------|
//! | missing key → `None`          | yes                        | yes                         | yes                              | yes                        |
//! | put, get exact bytes, `Exists`| yes                        | yes                         | yes                              | yes                        |
//! | concurrent creators           | partly: the test server (s3s-fs) checks `If-None-Match` and writes non-atomically, so only "one of them is kept, whole" is checked | yes: exactly one `Stored`, its entry kept | yes (the server stores on a `DiskStore`) | yes: exactly one `Stored`, its entry kept |
//! | large `Upload::File` (19 MiB) | yes (multipart)            | yes                         | yes (streamed body)              | yes                        |
//! | head sizes                    | yes                        | yes                         | yes                              | yes                        |
//! | invalid bytes on put          | stored as they are         | refused, `Other`, no entry  | refused, `Other`, no entry       | stored as they are         |
//! | manifests stored/replaced     | yes                        | yes                         | yes                              | yes                        |
//! | clear                         | yes; other prefix kept     | yes; files beside kept      | NOT SUPPORTED: refused (`Other`), nothing deleted | yes (holds nothing else) |
//! | ReadOnly / WriteOnly          | yes, with request counts   | yes, by effects (no requests to count) | yes, with request counts | yes, with request counts |
//! | a get is one request          | yes (server's counts)      | n/a: no requests (one file open) | yes (server's metrics)      | yes (its counters)         |
//! | batch fetch framing           | n/a: `batch_limit() == 0`, `get_batch` refused | n/a: same | yes (`POST /v1/batch`) | yes                  |
//! | errors classified             | bad secret → `Denied`; 503 → `Transient`; unreachable → `Transient`, fast | n/a: no credentials or network (storage errors are `Other`) | bad token → `Denied`; read-only token → put `Skipped`; storage down → `Transient`; unreachable → `Transient`, fast | injected errors pass through unchanged |
//!
//! The concurrent-creators check found a bug in `DiskStore` (a racing put's entry removed and
//! replaced, both puts answering `Stored`), fixed in `DiskStore::commit_verified`.
//!
//! Entries put here are valid entries of `goremotecache::store::format`: the directory store
//! and the server verify them on put.

use crate::support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::RwLock;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::TryStreamExt;
use goremotecache::ids::{ActionId, BuildKey, OutputId};
use goremotecache::server::ServerState;
use goremotecache::server::metrics::Metrics;
use goremotecache::server::tokens::Tokens;
use goremotecache::store::batch::{self, Event};
use goremotecache::store::dir::DiskStore;
use goremotecache::store::format::{self, Header};
use goremotecache::store::http::{HttpConfig, HttpStore};
use goremotecache::store::memory::{Faults, MemoryStore};
use goremotecache::store::s3::{S3Config, S3Store};
use goremotecache::store::{PutOutcome, ReadOnly, RemoteError, RemoteStore, Upload, WriteOnly};
use support::s3::{ACCESS_KEY, BUCKET, Fault, S3Server, SECRET_KEY};
use support::{action, pseudo_random};

/// The read-write token of the test servers.
const TOKEN: &str = "conformance-token-0123456789";
/// Their read-only token.
const READ_TOKEN: &str = "conformance-reader-0123456789";

/// The backends under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    S3,
    Dir,
    Http,
    Memory,
}

/// One backend, fresh and empty, with what the checks need to look behind it. Dropped outside
/// its runtime (the S3 server's runtime may not be dropped inside another).
struct Backend {
    kind: Kind,
    store: Arc<dyn RemoteStore>,
    /// What the backend keeps besides this store's entries, which `clear` must leave alone.
    neighbour: Neighbour,
    memory: Option<Arc<MemoryStore>>,
    s3: Option<S3Server>,
    http: Option<TestServer>,
    _dir: Option<tempfile::TempDir>,
    runtime: tokio::runtime::Runtime,
}

enum Neighbour {
    /// Another store on the same storage (S3: another prefix of the bucket).
    Store(Arc<dyn RemoteStore>),
    /// A file beside the store's own in its directory.
    File(PathBuf),
    /// The backend holds nothing but this store's entries and manifests.
    Nothing,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn s3_config(endpoint: &str, prefix: &str) -> S3Config {
    S3Config {
        bucket: BUCKET.into(),
        prefix: prefix.into(),
        endpoint: Some(endpoint.into()),
        region: Some("us-east-1".into()),
        force_path_style: true,
        instance_metadata: false,
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(10),
        static_credentials: Some((ACCESS_KEY.into(), SECRET_KEY.into())),
    }
}

/// A store with the test S3 server's credentials.
fn s3_store(server: &S3Server, prefix: &str) -> S3Store {
    S3Store::new(&s3_config(&server.endpoint, prefix)).unwrap()
}

/// An in-process `goremotecache serve`, running on a runtime's workers.
struct TestServer {
    url: String,
    state: Arc<ServerState>,
}

impl TestServer {
    /// Serves `store` with a read-write and a read-only token; `disk` is the same store when
    /// it is a directory, as `serve --storage-dir` sets it up.
    async fn start(store: Arc<dyn RemoteStore>, disk: Option<DiskStore>, spool: &Path) -> Self {
        let tokens = Tokens::parse_list(&format!("rw:{TOKEN},ro:{READ_TOKEN}")).unwrap();
        let state = Arc::new(ServerState {
            store,
            disk,
            tokens: RwLock::new(tokens),
            anonymous_read: false,
            max_entry_size: 64 << 20,
            spool_dir: spool.to_path_buf(),
            in_flight: Arc::new(tokio::sync::Semaphore::new(64)),
            timeouts: goremotecache::config::ServeTimeouts {
                body: Duration::from_secs(30),
                write: Duration::from_secs(30),
                idle: Duration::from_secs(60),
            },
            metrics: Metrics::new(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(goremotecache::server::run(
            listener,
            state.clone(),
            64,
            None,
            futures::future::pending(),
        ));
        Self { url, state }
    }

    fn client(&self, token: Option<&str>) -> HttpStore {
        http_store(&self.url, token)
    }

    /// Requests answered with this method, from the server's metrics.
    fn count(&self, method: &str) -> u64 {
        let needle = format!("method=\"{method}\"");
        self.state
            .metrics
            .encode()
            .lines()
            .filter(|line| {
                line.starts_with("goremotecache_requests_total{") && line.contains(&needle)
            })
            .map(|line| line.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    }
}

fn http_store(url: &str, token: Option<&str>) -> HttpStore {
    HttpStore::new(&HttpConfig {
        url: url.into(),
        token: token.map(str::to_string),
        ca_file: None,
        connect_timeout: Duration::from_secs(2),
        // The server verifies a 19 MiB entry twice before it answers (spool, then store):
        // slow in a debug build on a busy machine.
        request_timeout: Duration::from_secs(60),
    })
    .unwrap()
}

impl Backend {
    fn start(kind: Kind) -> Self {
        let runtime = runtime();
        let mut backend = Backend {
            kind,
            store: Arc::new(MemoryStore::new()),
            neighbour: Neighbour::Nothing,
            memory: None,
            s3: None,
            http: None,
            _dir: None,
            runtime,
        };
        match kind {
            Kind::S3 => {
                let server = S3Server::start();
                backend.store = Arc::new(s3_store(&server, "conformance"));
                backend.neighbour =
                    Neighbour::Store(Arc::new(s3_store(&server, "conformance-other")));
                backend.s3 = Some(server);
            }
            Kind::Dir => {
                let dir = tempfile::tempdir().unwrap();
                let root = dir.path().join("store");
                backend.store = Arc::new(DiskStore::open(&root).unwrap());
                let beside = root.join("README");
                std::fs::write(&beside, b"not an entry").unwrap();
                backend.neighbour = Neighbour::File(beside);
                backend._dir = Some(dir);
            }
            Kind::Http => {
                let dir = tempfile::tempdir().unwrap();
                let root = dir.path().join("storage");
                let storage = DiskStore::open(&root).unwrap();
                let server = backend.runtime.block_on(TestServer::start(
                    Arc::new(storage.clone()),
                    Some(storage),
                    &root.join("tmp"),
                ));
                backend.store = Arc::new(server.client(Some(TOKEN)));
                backend.http = Some(server);
                backend._dir = Some(dir);
            }
            Kind::Memory => {
                let memory = Arc::new(MemoryStore::with_batches(4));
                backend.store = memory.clone();
                backend.memory = Some(memory);
            }
        }
        backend
    }

    /// A second handle on the same store (for the mode wrappers).
    fn shared(&self) -> Arc<dyn RemoteStore> {
        self.store.clone()
    }

    /// Requests the backend received so far, by HTTP method (`GET`, `HEAD`, `PUT`, `POST`);
    /// `None` where a request is not a thing (the directory store).
    fn count(&self, method: &str) -> Option<u64> {
        match self.kind {
            Kind::S3 => self.s3.as_ref().map(|server| server.count(method)),
            Kind::Http => self.http.as_ref().map(|server| server.count(method)),
            Kind::Memory => self.memory.as_ref().map(|memory| match method {
                "GET" => memory.requests.gets() + load(&memory.requests.manifest_gets),
                "PUT" => memory.requests.puts() + load(&memory.requests.manifest_puts),
                "HEAD" => load(&memory.requests.heads),
                "POST" => memory.requests.batches(),
                _ => 0,
            }),
            Kind::Dir => None,
        }
    }

    /// Whether the backend checks entries on put.
    fn verifies(&self) -> bool {
        matches!(self.kind, Kind::Dir | Kind::Http)
    }
}

fn load(counter: &std::sync::atomic::AtomicU64) -> u64 {
    counter.load(std::sync::atomic::Ordering::SeqCst)
}

/// A valid entry of `body`, stored raw.
fn entry(body: &[u8]) -> Bytes {
    let header = Header {
        flags: 0,
        output_id: OutputId::of(body),
        size: body.len() as u64,
        time: SystemTime::now(),
    };
    let mut out = Vec::with_capacity(format::HEADER_LEN + body.len());
    format::write_entry(&header, &mut &body[..], &mut out).unwrap();
    Bytes::from(out)
}

async fn get_bytes(
    store: &dyn RemoteStore,
    key: &ActionId,
) -> Result<Option<Vec<u8>>, RemoteError> {
    match store.get(key).await? {
        None => Ok(None),
        Some(stream) => {
            let chunks: Vec<Bytes> = stream.try_collect().await?;
            Ok(Some(chunks.concat()))
        }
    }
}

fn put_bytes(bytes: &Bytes) -> Upload {
    Upload::Bytes(bytes.clone())
}

/// A port that nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// The checks, each run against every backend.

async fn missing_key_is_none(b: &Backend) {
    let store = b.store.as_ref();
    assert_eq!(
        get_bytes(store, &action(1)).await.unwrap(),
        None,
        "a missing key is None"
    );
    assert_eq!(store.head(&action(1)).await.unwrap(), None);
    assert_eq!(store.get_manifest(&BuildKey([1; 32])).await.unwrap(), None);
}

async fn location_names_the_store(b: &Backend) {
    let location = b.store.location();
    match b.kind {
        Kind::S3 => assert_eq!(location, "s3://gocache/conformance"),
        Kind::Dir => assert!(location.ends_with("store"), "{location}"),
        Kind::Http => assert_eq!(location, b.http.as_ref().unwrap().url),
        Kind::Memory => assert_eq!(location, "memory"),
    }
}

async fn put_get_exists_and_head(b: &Backend) {
    let store = b.store.as_ref();
    let small = entry(&pseudo_random(1, 1000));
    assert_eq!(
        store.put(&action(1), put_bytes(&small)).await.unwrap(),
        PutOutcome::Stored
    );
    let other = entry(b"a different entry");
    assert_eq!(
        store.put(&action(1), put_bytes(&other)).await.unwrap(),
        PutOutcome::Exists,
        "an existing entry must not be replaced"
    );
    assert_eq!(
        get_bytes(store, &action(1)).await.unwrap().unwrap(),
        small.to_vec()
    );
    assert_eq!(
        store.head(&action(1)).await.unwrap(),
        Some(small.len() as u64)
    );
    assert_eq!(store.head(&action(2)).await.unwrap(), None);
}

async fn large_file_uploads_stream(b: &Backend) {
    let store = b.store.as_ref();
    // A large entry streams from a file, in parts (multipart on S3).
    let big = entry(&pseudo_random(2, 19 * 1024 * 1024 + 7));
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &big).unwrap();
    let upload = Upload::File {
        path: file.path().to_path_buf(),
        len: big.len() as u64,
    };
    assert_eq!(
        store.put(&action(2), upload.clone()).await.unwrap(),
        PutOutcome::Stored
    );
    assert_eq!(
        store.put(&action(2), upload).await.unwrap(),
        PutOutcome::Exists
    );
    assert!(get_bytes(store, &action(2)).await.unwrap().unwrap() == big);
    assert_eq!(
        store.head(&action(2)).await.unwrap(),
        Some(big.len() as u64)
    );
}

async fn empty_bodies_and_invalid_bytes(b: &Backend) {
    let store = b.store.as_ref();
    // An entry of an empty body is an entry: its header alone.
    let empty = entry(b"");
    assert_eq!(empty.len(), format::HEADER_LEN);
    assert_eq!(
        store.put(&action(4), put_bytes(&empty)).await.unwrap(),
        PutOutcome::Stored
    );
    assert_eq!(
        get_bytes(store, &action(4)).await.unwrap(),
        Some(empty.to_vec())
    );
    assert_eq!(
        store.head(&action(4)).await.unwrap(),
        Some(format::HEADER_LEN as u64)
    );

    if b.verifies() {
        // Bytes that are not an entry are refused, and nothing is stored.
        let mut damaged = entry(b"an entry with one byte changed").to_vec();
        *damaged.last_mut().unwrap() ^= 1;
        for (n, bytes) in [Bytes::new(), Bytes::from(damaged)].into_iter().enumerate() {
            let key = action(10 + n as u32);
            let err = store.put(&key, Upload::Bytes(bytes)).await.unwrap_err();
            assert!(matches!(err, RemoteError::Other(_)), "{err:?}");
            assert!(!err.is_fatal());
            assert_eq!(get_bytes(store, &key).await.unwrap(), None);
            assert_eq!(store.head(&key).await.unwrap(), None);
        }
    } else {
        // A store that does not verify keeps the bytes as they are. An empty entry is still
        // an entry.
        store
            .put(&action(3), Upload::Bytes(Bytes::new()))
            .await
            .unwrap();
        assert_eq!(
            get_bytes(store, &action(3)).await.unwrap(),
            Some(Vec::new())
        );
    }
}

async fn concurrent_creators_one_wins(b: &Backend) {
    // Several rounds, each on a key of its own: a race shows in some of them.
    for round in 0..ROUNDS {
        let key = action(1000 + round);
        let entries: Vec<Bytes> = (0..CREATORS)
            .map(|n| entry(&pseudo_random(u64::from(round) * 100 + n, 20_000)))
            .collect();
        let tasks: Vec<_> = entries
            .iter()
            .map(|entry| {
                let store = b.store.clone();
                let entry = entry.clone();
                tokio::spawn(async move { store.put(&key, Upload::Bytes(entry)).await })
            })
            .collect();
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await.unwrap().unwrap());
        }
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, PutOutcome::Stored | PutOutcome::Exists)),
            "{outcomes:?}"
        );
        let stored: Vec<usize> = (0..outcomes.len())
            .filter(|&n| outcomes[n] == PutOutcome::Stored)
            .collect();
        let kept = get_bytes(b.store.as_ref(), &key).await.unwrap().unwrap();
        if b.kind == Kind::S3 {
            // The test server (s3s-fs) looks for the object and then writes it, not
            // atomically: racing creators may all be told Stored there. What it must still
            // keep is one of them, whole.
            assert!(!stored.is_empty(), "{outcomes:?}");
            assert!(
                entries.iter().any(|entry| kept == entry.to_vec()),
                "the entry kept is one of those put, whole"
            );
            continue;
        }
        assert_eq!(
            stored.len(),
            1,
            "round {round}: one creator wins: {outcomes:?}"
        );
        assert_eq!(
            kept,
            entries[stored[0]].to_vec(),
            "the winner's entry is the one kept, whole"
        );
    }
}

/// Rounds of [`concurrent_creators_one_wins`], and creators in each.
const ROUNDS: u32 = 64;
const CREATORS: u64 = 8;

async fn manifests_are_replaced_and_read_whole(b: &Backend) {
    let store = b.store.as_ref();
    let key = BuildKey([7; 32]);
    let other = BuildKey([8; 32]);
    assert_eq!(store.get_manifest(&key).await.unwrap(), None);
    // Larger than any one piece of an answer: read whole.
    let first = Bytes::from(pseudo_random(3, 300_000));
    store.put_manifest(&key, first.clone()).await.unwrap();
    assert_eq!(store.get_manifest(&key).await.unwrap(), Some(first));
    let second = Bytes::from(pseudo_random(4, 1000));
    store.put_manifest(&key, second.clone()).await.unwrap();
    assert_eq!(
        store.get_manifest(&key).await.unwrap(),
        Some(second),
        "the last writer wins"
    );
    assert_eq!(store.get_manifest(&other).await.unwrap(), None);
    // Manifests are not entries.
    assert_eq!(get_bytes(store, &ActionId(key.0)).await.unwrap(), None);
}

async fn clear_deletes_entries_and_manifests_only(b: &Backend) {
    let store = b.store.as_ref();
    for n in 1..=3 {
        let entry = entry(format!("entry {n}").as_bytes());
        store.put(&action(n), Upload::Bytes(entry)).await.unwrap();
    }
    let key = BuildKey([9; 32]);
    let neighbours_entry = entry(b"neighbour");
    match &b.neighbour {
        Neighbour::Store(neighbour) => {
            // Prefixes are separate.
            assert_eq!(
                get_bytes(neighbour.as_ref(), &action(1)).await.unwrap(),
                None
            );
            neighbour
                .put(&action(1), put_bytes(&neighbours_entry))
                .await
                .unwrap();
            neighbour
                .put_manifest(&key, Bytes::from_static(b"neighbour's"))
                .await
                .unwrap();
        }
        Neighbour::File(path) => assert!(path.is_file()),
        Neighbour::Nothing => {}
    }

    if b.kind == Kind::Http {
        // Not supported through the server: refused, and nothing is deleted.
        store
            .put_manifest(&key, Bytes::from_static(b"manifest"))
            .await
            .unwrap();
        let err = store.clear(&|_| {}).await.unwrap_err();
        assert!(matches!(err, RemoteError::Other(_)), "{err:?}");
        for n in 1..=3 {
            assert!(get_bytes(store, &action(n)).await.unwrap().is_some());
        }
        assert!(store.get_manifest(&key).await.unwrap().is_some());
        return;
    }

    let counted = std::sync::Mutex::new(Vec::new());
    let deleted = store
        .clear(&|n| counted.lock().unwrap().push(n))
        .await
        .unwrap();
    assert_eq!(deleted, 3);
    for n in 1..=3 {
        assert_eq!(get_bytes(store, &action(n)).await.unwrap(), None);
        assert_eq!(store.head(&action(n)).await.unwrap(), None);
    }

    // Manifests go too.
    store
        .put(&action(5), Upload::Bytes(entry(b"five")))
        .await
        .unwrap();
    store
        .put_manifest(&key, Bytes::from_static(b"manifest"))
        .await
        .unwrap();
    assert_eq!(store.clear(&|_| {}).await.unwrap(), 2);
    assert_eq!(get_bytes(store, &action(5)).await.unwrap(), None);
    assert_eq!(store.get_manifest(&key).await.unwrap(), None);

    // And nothing else.
    match &b.neighbour {
        Neighbour::Store(neighbour) => {
            assert_eq!(
                get_bytes(neighbour.as_ref(), &action(1))
                    .await
                    .unwrap()
                    .unwrap(),
                neighbours_entry.to_vec()
            );
            assert_eq!(
                neighbour.get_manifest(&key).await.unwrap().unwrap(),
                Bytes::from_static(b"neighbour's")
            );
        }
        Neighbour::File(path) => {
            assert_eq!(std::fs::read(path).unwrap(), b"not an entry");
        }
        Neighbour::Nothing => assert_eq!(b.kind, Kind::Memory),
    }

    // The store goes on working.
    assert_eq!(
        store
            .put(&action(1), Upload::Bytes(entry(b"again")))
            .await
            .unwrap(),
        PutOutcome::Stored
    );
}

async fn read_only_and_write_only_wrappers(b: &Backend) {
    let read_only = ReadOnly(b.shared());
    let write_only = WriteOnly(b.shared());
    let plain = b.store.as_ref();
    let key = BuildKey([5; 32]);
    let manifest = Bytes::from_static(b"a manifest");

    let puts = b.count("PUT");
    assert_eq!(
        read_only
            .put(&action(1), Upload::Bytes(entry(b"r")))
            .await
            .unwrap(),
        PutOutcome::Skipped
    );
    read_only
        .put_manifest(&key, manifest.clone())
        .await
        .unwrap();
    assert_eq!(b.count("PUT"), puts, "a read-only store sends no PUT");
    assert_eq!(get_bytes(plain, &action(1)).await.unwrap(), None);
    assert_eq!(plain.get_manifest(&key).await.unwrap(), None);

    let written = entry(b"w");
    assert_eq!(
        write_only
            .put(&action(1), put_bytes(&written))
            .await
            .unwrap(),
        PutOutcome::Stored
    );
    write_only
        .put_manifest(&key, manifest.clone())
        .await
        .unwrap();
    assert_eq!(
        b.count("PUT"),
        puts.map(|n| n + 2),
        "a write-only store puts entries and manifests"
    );

    let (gets, heads) = (b.count("GET"), b.count("HEAD"));
    assert_eq!(get_bytes(&write_only, &action(1)).await.unwrap(), None);
    assert_eq!(write_only.head(&action(1)).await.unwrap(), None);
    assert_eq!(write_only.get_manifest(&key).await.unwrap(), None);
    assert_eq!(b.count("GET"), gets, "a write-only store sends no GET");
    assert_eq!(b.count("HEAD"), heads);

    assert_eq!(
        get_bytes(&read_only, &action(1)).await.unwrap().unwrap(),
        written.to_vec()
    );
    assert_eq!(
        read_only.head(&action(1)).await.unwrap(),
        Some(written.len() as u64)
    );
    assert_eq!(read_only.get_manifest(&key).await.unwrap(), Some(manifest));
    assert_eq!(
        get_bytes(plain, &action(1)).await.unwrap().unwrap(),
        written.to_vec()
    );
    assert_eq!(read_only.batch_limit(), plain.batch_limit());
}

async fn a_get_is_one_request(b: &Backend) {
    let store = b.store.as_ref();
    store
        .put(&action(1), Upload::Bytes(entry(b"entry")))
        .await
        .unwrap();
    let (Some(gets), Some(heads)) = (b.count("GET"), b.count("HEAD")) else {
        assert_eq!(
            b.kind,
            Kind::Dir,
            "only the directory store has no requests"
        );
        return;
    };
    get_bytes(store, &action(1)).await.unwrap().unwrap();
    get_bytes(store, &action(2)).await.unwrap();
    assert_eq!(
        b.count("GET"),
        Some(gets + 2),
        "one request per hit and per miss"
    );
    assert_eq!(b.count("HEAD"), Some(heads));
}

async fn batch_fetch_framing(b: &Backend) {
    let store = b.store.as_ref();
    let limit = store.batch_limit();
    if limit == 0 {
        assert!(
            matches!(b.kind, Kind::S3 | Kind::Dir),
            "{:?} should batch",
            b.kind
        );
        assert!(store.get_batch(&[action(1)]).await.is_err());
        return;
    }
    assert!(limit <= batch::MAX_KEYS, "{limit}");
    let small = entry(b"small");
    // Larger than a piece or a chunk: it arrives in several.
    let large = entry(&pseudo_random(5, 300_000));
    store.put(&action(1), put_bytes(&small)).await.unwrap();
    store.put(&action(3), put_bytes(&large)).await.unwrap();
    let asked = [action(1), action(2), action(3)];
    assert!(asked.len() <= limit);

    let posts = b.count("POST");
    let answer: Vec<Bytes> = store
        .get_batch(&asked)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(b.count("POST"), posts.map(|n| n + 1), "one request");
    let mut decoder = batch::Decoder::new();
    for piece in &answer {
        decoder.push(piece);
    }
    let mut frames: Vec<(char, ActionId, Vec<u8>)> = Vec::new();
    while let Some(event) = decoder.next_event().unwrap() {
        match event {
            Event::Start(action) => frames.push(('E', action, Vec::new())),
            Event::Data(bytes) => frames.last_mut().unwrap().2.extend_from_slice(&bytes),
            Event::End => assert_eq!(frames.last().unwrap().0, 'E'),
            Event::Missing(action) => frames.push(('M', action, Vec::new())),
            Event::Failed(action, reason) => panic!("{action} failed: {reason}"),
        }
    }
    assert!(decoder.at_frame_boundary(), "the answer ends after a frame");
    assert_eq!(
        frames,
        vec![
            ('E', action(1), small.to_vec()),
            ('M', action(2), Vec::new()),
            ('E', action(3), large.to_vec()),
        ],
        "the entries asked for, in order, exactly as put"
    );
}

async fn errors_are_classified(b: &Backend) {
    match b.kind {
        Kind::S3 => s3_errors(b).await,
        Kind::Http => http_errors(b).await,
        Kind::Memory => memory_errors(b).await,
        Kind::Dir => {
            // No credentials and no network: storage errors are `Other`, never fatal.
            let err = b
                .store
                .put(
                    &action(1),
                    Upload::Bytes(Bytes::from_static(b"not an entry")),
                )
                .await
                .unwrap_err();
            assert!(matches!(err, RemoteError::Other(_)), "{err:?}");
            assert!(!err.is_fatal());
        }
    }
}

async fn s3_errors(b: &Backend) {
    let server = b.s3.as_ref().unwrap();
    let good = b.store.as_ref();
    let mut wrong = s3_config(&server.endpoint, "conformance");
    wrong.static_credentials = Some((ACCESS_KEY.into(), "not-the-secret".into()));
    let bad = S3Store::new(&wrong).unwrap();
    good.put(&action(1), Upload::Bytes(entry(b"x")))
        .await
        .unwrap();
    let err = get_bytes(&bad, &action(1)).await.unwrap_err();
    assert!(matches!(err, RemoteError::Denied(_)), "{err:?}");
    assert!(err.is_fatal());
    let err = bad
        .put(&action(2), Upload::Bytes(entry(b"y")))
        .await
        .unwrap_err();
    assert!(matches!(err, RemoteError::Denied(_)), "{err:?}");

    server.set_fault(Fault::Status(503));
    let err = get_bytes(good, &action(1)).await.unwrap_err();
    assert!(matches!(err, RemoteError::Transient(_)), "{err:?}");
    server.set_fault(Fault::None);

    let unreachable = S3Store::new(&s3_config(
        &format!("http://127.0.0.1:{}", closed_port()),
        "x",
    ))
    .unwrap();
    assert_unreachable_is_transient(&unreachable).await;
}

async fn http_errors(b: &Backend) {
    let server = b.http.as_ref().unwrap();
    let good = b.store.as_ref();
    let kept = entry(b"x");
    good.put(&action(1), put_bytes(&kept)).await.unwrap();

    let wrong = server.client(Some("not-a-token-of-this-server"));
    let err = get_bytes(&wrong, &action(1)).await.unwrap_err();
    assert!(matches!(err, RemoteError::Denied(_)), "{err:?}");
    assert!(err.is_fatal());
    let err = wrong
        .put(&action(2), Upload::Bytes(entry(b"y")))
        .await
        .unwrap_err();
    assert!(matches!(err, RemoteError::Denied(_)), "{err:?}");
    let err = wrong.head(&action(1)).await.unwrap_err();
    assert!(matches!(err, RemoteError::Denied(_)), "{err:?}");
    let anonymous = server.client(None);
    let err = get_bytes(&anonymous, &action(1)).await.unwrap_err();
    assert!(matches!(err, RemoteError::Denied(_)), "{err:?}");

    // A read-only token reads, and its uploads are skipped.
    let reader = server.client(Some(READ_TOKEN));
    assert_eq!(
        get_bytes(&reader, &action(1)).await.unwrap().unwrap(),
        kept.to_vec()
    );
    assert_eq!(
        reader
            .put(&action(2), Upload::Bytes(entry(b"y")))
            .await
            .unwrap(),
        PutOutcome::Skipped
    );
    assert_eq!(get_bytes(good, &action(2)).await.unwrap(), None);

    // Storage that fails behind the server: a 5xx, which may pass.
    let failing = Arc::new(MemoryStore::new());
    failing.set_faults(Faults {
        error: Some(RemoteError::Transient("storage unreachable".into())),
        ..Faults::default()
    });
    let spool = tempfile::tempdir().unwrap();
    let down = TestServer::start(failing, None, spool.path()).await;
    let err = get_bytes(&down.client(Some(TOKEN)), &action(1))
        .await
        .unwrap_err();
    assert!(matches!(err, RemoteError::Transient(_)), "{err:?}");
    assert!(!err.is_fatal());

    let unreachable = http_store(&format!("http://127.0.0.1:{}", closed_port()), Some(TOKEN));
    assert_unreachable_is_transient(&unreachable).await;
}

async fn memory_errors(b: &Backend) {
    let memory = b.memory.as_ref().unwrap();
    let store = b.store.as_ref();
    let key = BuildKey([3; 32]);
    for err in [
        RemoteError::Denied("no".into()),
        RemoteError::Transient("later".into()),
        RemoteError::Other("else".into()),
    ] {
        memory.set_faults(Faults {
            error: Some(err.clone()),
            ..Faults::default()
        });
        let same = |got: RemoteError| {
            assert_eq!(
                std::mem::discriminant(&got),
                std::mem::discriminant(&err),
                "{got:?} for {err:?}"
            );
            assert_eq!(got.is_fatal(), err.is_fatal());
        };
        same(get_bytes(store, &action(1)).await.unwrap_err());
        same(
            store
                .put(&action(1), Upload::Bytes(entry(b"x")))
                .await
                .unwrap_err(),
        );
        same(store.head(&action(1)).await.unwrap_err());
        same(store.get_manifest(&key).await.unwrap_err());
        same(
            store
                .put_manifest(&key, Bytes::from_static(b"m"))
                .await
                .unwrap_err(),
        );
        same(store.get_batch(&[action(1)]).await.err().unwrap());
    }
    memory.set_faults(Faults::default());
    assert!(memory.is_empty(), "a failed put stores nothing");
    assert_eq!(store.get_manifest(&key).await.unwrap(), None);
}

async fn assert_unreachable_is_transient(store: &dyn RemoteStore) {
    let start = Instant::now();
    let err = get_bytes(store, &action(1)).await.unwrap_err();
    assert!(matches!(err, RemoteError::Transient(_)), "{err:?}");
    assert!(!err.is_fatal());
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
}

/// One test per check, for the backend of `$kind`.
macro_rules! checks {
    ($kind:expr; $($check:ident),* $(,)?) => {
        $(
            #[test]
            fn $check() {
                let backend = Backend::start($kind);
                backend.runtime.block_on(super::$check(&backend));
            }
        )*
    };
}

mod s3 {
    use super::*;
    checks!(Kind::S3;
        missing_key_is_none,
        location_names_the_store,
        put_get_exists_and_head,
        large_file_uploads_stream,
        empty_bodies_and_invalid_bytes,
        concurrent_creators_one_wins,
        manifests_are_replaced_and_read_whole,
        clear_deletes_entries_and_manifests_only,
        read_only_and_write_only_wrappers,
        a_get_is_one_request,
        batch_fetch_framing,
        errors_are_classified,
    );
}

mod dir {
    use super::*;
    checks!(Kind::Dir;
        missing_key_is_none,
        location_names_the_store,
        put_get_exists_and_head,
        large_file_uploads_stream,
        empty_bodies_and_invalid_bytes,
        manifests_are_replaced_and_read_whole,
        clear_deletes_entries_and_manifests_only,
        read_only_and_write_only_wrappers,
        a_get_is_one_request,
        batch_fetch_framing,
        errors_are_classified,
        concurrent_creators_one_wins,
    );
}

mod http {
    use super::*;
    checks!(Kind::Http;
        missing_key_is_none,
        location_names_the_store,
        put_get_exists_and_head,
        large_file_uploads_stream,
        empty_bodies_and_invalid_bytes,
        manifests_are_replaced_and_read_whole,
        clear_deletes_entries_and_manifests_only,
        read_only_and_write_only_wrappers,
        a_get_is_one_request,
        batch_fetch_framing,
        errors_are_classified,
        concurrent_creators_one_wins,
    );
}

mod memory {
    use super::*;
    checks!(Kind::Memory;
        missing_key_is_none,
        location_names_the_store,
        put_get_exists_and_head,
        large_file_uploads_stream,
        empty_bodies_and_invalid_bytes,
        concurrent_creators_one_wins,
        manifests_are_replaced_and_read_whole,
        clear_deletes_entries_and_manifests_only,
        read_only_and_write_only_wrappers,
        a_get_is_one_request,
        batch_fetch_framing,
        errors_are_classified,
    );
}
