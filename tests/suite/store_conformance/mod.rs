//! The conformance suite of the remote-store contract (`RemoteStore`, in `src/store/mod.rs`):
//! the same checks, run against every backend. Each backend gets a module of its own below
//! (`store_conformance::s3::…`, `store_conformance::dir::…`), with one test per check. The
//! `gcs` and `azblob` modules run real emulators (`support::emulators`, installed by
//! `.ci/run`).
//!
//! | check                         | s3 (in-process s3s)        | gcs (fake-gcs-server)      | azblob (Azurite)           | dir (`DiskStore`)           | http (`HttpStore` → in-process `serve` on a `DiskStore`) | memory (`MemoryStore`, batches of 4) |
//! |-------------------------------|----------------------------|----------------------------|----------------------------|-----------------------------|----------------------------------|----------------------------|
//! | missing key → `None`          | yes                        | yes                        | yes                        | yes                         | yes                              | yes                        |
//! | put, get exact bytes, `Exists`| yes                        | partly: NOT `Exists`: the emulator ignores `ifGenerationMatch=0` on resumable uploads and answers `Stored` (asserted); GCS's 412 → `Exists` is checked by the unit test `store::gcs::tests` | yes                        | yes                         | yes                              | yes                        |
//! | concurrent creators           | partly: the test server (s3s-fs) checks `If-None-Match` and writes non-atomically, so only "one of them is kept, whole" is checked | partly: only "one of them is kept, whole" (the condition is ignored, above) | yes: exactly one `Stored`, its entry kept | yes: exactly one `Stored`, its entry kept | yes (the server stores on a `DiskStore`) | yes: exactly one `Stored`, its entry kept |
//! | large `Upload::File` (19 MiB) | yes (multipart)            | yes (resumable upload in chunks) | yes (staged blocks)  | yes                         | yes (streamed body)              | yes                        |
//! | head sizes                    | yes                        | yes                        | yes                        | yes                         | yes                              | yes                        |
//! | invalid bytes on put          | stored as they are         | stored as they are         | stored as they are         | refused, `Other`, no entry  | refused, `Other`, no entry       | stored as they are         |
//! | manifests stored/replaced     | yes                        | yes                        | yes                        | yes                         | yes                              | yes                        |
//! | packs: replaced, ranged reads | yes                        | yes                        | yes                        | n/a: no packs (asserted)    | n/a: no packs (asserted)         | n/a: no packs (asserted)   |
//! | clear                         | yes; other prefix kept     | yes; other prefix kept     | yes; other prefix kept     | yes; files beside kept      | NOT SUPPORTED: refused (`Other`), nothing deleted | yes (holds nothing else) |
//! | ReadOnly / WriteOnly          | yes, with request counts   | yes, by effects (the emulator counts no requests for us) | yes, by effects (same) | yes, by effects (no requests to count) | yes, with request counts | yes, with request counts |
//! | a get is one request          | yes (server's counts)      | n/a: no request counts     | n/a: no request counts     | n/a: no requests (one file open) | yes (server's metrics)      | yes (its counters)         |
//! | batch fetch framing           | n/a: `batch_limit() == 0`, `get_batch` refused | n/a: same | n/a: same | n/a: same | yes (`POST /v1/batch`) | yes                  |
//! | errors classified             | bad secret → `Denied`; 503 → `Transient`; unreachable → `Transient`, fast | missing bucket → not `Transient`; unreachable → `Transient`, fast; a bad credential cannot be tried (the emulator checks none) | wrong account key → `Denied`; unreachable → `Transient`, fast | n/a: no credentials or network (storage errors are `Other`) | bad token → `Denied`; read-only token → put `Skipped`; storage down → `Transient`; unreachable → `Transient`, fast | injected errors pass through unchanged |
//!
//! The concurrent-creators check found a bug in `DiskStore` (a racing put's entry removed and
//! replaced, both puts answering `Stored`), fixed in `DiskStore::commit_verified`.
//!
//! Entries put here are valid entries of `goremotecache::store::format`: the directory store
//! and the server verify them on put.

use crate::support;

mod entries;
mod errors;
mod requests;

use entries::*;
use errors::*;
use requests::*;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::RwLock;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::TryStreamExt;
use goremotecache::ids::{ActionId, BuildKey, OutputId};
use goremotecache::server::metrics::Metrics;
use goremotecache::server::tokens::Tokens;
use goremotecache::server::{ServerState, Storage};
use goremotecache::store::azblob::AzblobConfig;
use goremotecache::store::batch::{self, Event};
use goremotecache::store::bounded::{BoundedDisk, DEFAULT_MAX_SIZE};
use goremotecache::store::dir::DiskStore;
use goremotecache::store::format::{self, Header};
use goremotecache::store::gcs::GcsConfig;
use goremotecache::store::http::{HttpConfig, HttpStore};
use goremotecache::store::memory::{Faults, MemoryStore};
use goremotecache::store::object::ObjectStore;
use goremotecache::store::s3::{S3Config, S3Credentials};
use goremotecache::store::{PutOutcome, ReadOnly, RemoteError, RemoteStore, Upload, WriteOnly};
use support::emulators::{AZURE_ACCOUNT, AZURE_CONTAINER, AZURE_KEY, Emulator, GCS_BUCKET};
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
    Gcs,
    Azblob,
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
    emulator: Option<Emulator>,
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
        static_credentials: Some(S3Credentials::new(ACCESS_KEY, SECRET_KEY)),
    }
}

/// The fake-gcs-server bucket at `endpoint`, unsigned (the emulator checks no credentials).
fn gcs_config(endpoint: &str, prefix: &str) -> GcsConfig {
    GcsConfig {
        bucket: GCS_BUCKET.into(),
        prefix: prefix.into(),
        endpoint: Some(endpoint.into()),
        anonymous: true,
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(30),
    }
}

/// The Azurite container at `endpoint`, with the development account's key.
fn azblob_config(endpoint: &str, prefix: &str) -> AzblobConfig {
    AzblobConfig {
        container: AZURE_CONTAINER.into(),
        prefix: prefix.into(),
        account: Some(AZURE_ACCOUNT.into()),
        endpoint: Some(endpoint.into()),
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(30),
        static_key: Some(AZURE_KEY.into()),
    }
}

/// A store with the test S3 server's credentials.
fn s3_store(server: &S3Server, prefix: &str) -> ObjectStore {
    s3_config(&server.endpoint, prefix).open().unwrap()
}

/// An in-process `goremotecache serve`, running on a runtime's workers.
struct TestServer {
    url: String,
    state: Arc<ServerState>,
}

impl TestServer {
    /// Serves `storage` with a read-write and a read-only token.
    async fn start(storage: Storage, spool: &Path) -> Self {
        let tokens = Tokens::parse_list(&format!("rw:{TOKEN},ro:{READ_TOKEN}")).unwrap();
        let state = Arc::new(ServerState {
            storage,
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
            goproxy: None,
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
        namespace: None,
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
            emulator: None,
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
            Kind::Gcs => {
                let emulator = Emulator::fake_gcs();
                backend.store = Arc::new(
                    gcs_config(&emulator.endpoint, "conformance")
                        .open()
                        .unwrap(),
                );
                let other = gcs_config(&emulator.endpoint, "conformance-other");
                backend.neighbour = Neighbour::Store(Arc::new(other.open().unwrap()));
                backend.emulator = Some(emulator);
            }
            Kind::Azblob => {
                let emulator = Emulator::azurite();
                let config = azblob_config(&emulator.endpoint, "conformance");
                backend.store = Arc::new(config.open().unwrap());
                let other = azblob_config(&emulator.endpoint, "conformance-other");
                backend.neighbour = Neighbour::Store(Arc::new(other.open().unwrap()));
                backend.emulator = Some(emulator);
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
                // As `serve --storage-dir` sets it up: indexed, under the default bound.
                let storage = DiskStore::open(&root).unwrap();
                let (storage, _) = BoundedDisk::open(storage, Some(DEFAULT_MAX_SIZE)).unwrap();
                let server = backend
                    .runtime
                    .block_on(TestServer::start(Storage::Disk(storage), &root.join("tmp")));
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
            // The emulators count nothing for us.
            Kind::Dir | Kind::Gcs | Kind::Azblob => None,
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

/// Every check of the contract, for the backend of `$kind`: each backend runs all of them
/// (what a backend legitimately lacks is asserted inside the check, see the table above).
macro_rules! every_check {
    ($kind:expr) => {
        checks!($kind;
            missing_key_is_none,
            location_names_the_store,
            put_get_exists_and_head,
            large_file_uploads_stream,
            empty_bodies_and_invalid_bytes,
            concurrent_creators_one_wins,
            manifests_are_replaced_and_read_whole,
            packs_are_replaced_and_read_by_range,
            clear_deletes_entries_and_manifests_only,
            read_only_and_write_only_wrappers,
            a_get_is_one_request,
            batch_fetch_framing,
            errors_are_classified,
        );
    };
}

mod s3 {
    use super::*;
    every_check!(Kind::S3);
}

mod gcs {
    use super::*;
    every_check!(Kind::Gcs);
}

mod azblob {
    use super::*;
    every_check!(Kind::Azblob);
}

mod dir {
    use super::*;
    every_check!(Kind::Dir);
}

mod http {
    use super::*;
    every_check!(Kind::Http);
}

mod memory {
    use super::*;
    every_check!(Kind::Memory);
}
