//! An in-process S3 server for tests: s3s with its filesystem backend, checking SigV4
//! signatures, on 127.0.0.1 with a port of its own, in a thread with its own runtime. It
//! counts requests by method and can inject HTTP-level faults (a status answer, a truncated
//! or damaged body) into the answers to object GETs. For the chaos soak it can also inject a
//! fault into every n-th request ([`Chaos`]), log the PUTs it acknowledged, and be stopped and
//! started again on the same address and bucket ([`S3Server::restart`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::{S3Service, S3ServiceBuilder};

pub const ACCESS_KEY: &str = "AKIDGOREMOTECACHE";
pub const SECRET_KEY: &str = "test-secret-key-for-goremotecache";
pub const BUCKET: &str = "gocache";

/// A fault to inject into object GETs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Answer with this status and an empty body, without touching the store.
    Status(u16),
    /// Answer with the first half of the object only (a well-formed, shorter answer).
    Truncate,
    /// Flip one byte in the middle of the object.
    Flip,
    /// Answer this many milliseconds late (a far-away store), the object unchanged.
    DelayMs(u64),
    /// Answer a GET of a missing object with 403 AccessDenied, as S3 does for credentials
    /// without s3:ListBucket (path-style requests only).
    DenyMissing,
    /// Close the connection without an answer (a reset, as a dying proxy gives).
    Reset,
    /// Answer 503 SlowDown, as S3 does when a prefix is over its request rate.
    SlowDown,
}

/// A fault injected into every `every`-th object GET, and into PUTs of entries too when
/// `puts` (faults that damage a body apply to GETs only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chaos {
    pub fault: Fault,
    pub every: u64,
    pub puts: bool,
}

struct Shared {
    counts: Mutex<HashMap<String, u64>>,
    /// Object GETs being answered now, and the most there were at once.
    gets_in_flight: Mutex<(u64, u64)>,
    fault: Mutex<Option<Fault>>,
    /// The soak's fault, the requests it could apply to, and the requests it hit.
    chaos: Mutex<(Option<Chaos>, u64, u64)>,
    /// The objects of the PUTs answered with success, by path under the root.
    acknowledged: Mutex<Vec<PathBuf>>,
    /// Where the buckets are: a request for any other bucket is answered NoSuchBucket, as S3
    /// does (s3s-fs alone would create it on a put).
    root: PathBuf,
}

/// A running server; dropped, it stops.
pub struct S3Server {
    pub endpoint: String,
    pub root: tempfile::TempDir,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

#[derive(Clone)]
struct Counting {
    inner: S3Service,
    shared: Arc<Shared>,
}

impl Service<http::Request<hyper::body::Incoming>> for Counting {
    type Response = http::Response<s3s::Body>;
    type Error = s3s::HttpError;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn call(&self, req: http::Request<hyper::body::Incoming>) -> Self::Future {
        let method = req.method().to_string();
        let listing = req.uri().query().is_some_and(|q| q.contains("list-type"));
        let filter = req.uri().path().ends_with("/filter/v1/keys");
        // Faults and the count of GETs at once are for entries and manifests.
        let object_get = method == "GET" && !listing && !filter;
        // A multipart upload's parts are not objects: what it stores is acknowledged by the
        // POST that completes it.
        let multipart = req.uri().query().is_some_and(|q| q.contains("uploadId"));
        let entry_put = method == "PUT" && !listing && !filter && !multipart;
        let completion = method == "POST" && multipart && !filter;
        let part_put = method == "PUT" && multipart;
        // Listings and the key filter's requests are counted apart ("LIST", "FILTER GET",
        // "FILTER PUT"), so that "GET" and "PUT" are the requests for entries and manifests.
        let method = if listing {
            "LIST".to_string()
        } else if filter {
            format!("FILTER {method}")
        } else {
            method
        };
        *self
            .shared
            .counts
            .lock()
            .unwrap()
            .entry(method)
            .or_default() += 1;
        let bucket = req
            .uri()
            .path()
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or("")
            .to_string();
        if !bucket.is_empty() && !self.shared.root.join(&bucket).is_dir() {
            let body = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist</Message><BucketName>{bucket}</BucketName></Error>"
            );
            return Box::pin(async move {
                Ok(http::Response::builder()
                    .status(404)
                    .header(http::header::CONTENT_TYPE, "application/xml")
                    .body(s3s::Body::from(Bytes::from(body)))
                    .unwrap())
            });
        }
        let fault = if object_get {
            self.shared.fault.lock().unwrap().unwrap_or(Fault::None)
        } else {
            Fault::None
        };
        let fault = match fault {
            Fault::None => self.shared.chaos_for(object_get, entry_put || part_put),
            fault => fault,
        };
        let put_path = (entry_put || completion)
            .then(|| PathBuf::from(req.uri().path().trim_start_matches('/')));
        if fault == Fault::DenyMissing
            && !self
                .shared
                .root
                .join(req.uri().path().trim_start_matches('/'))
                .is_file()
        {
            let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>";
            return Box::pin(async move {
                Ok(http::Response::builder()
                    .status(403)
                    .header(http::header::CONTENT_TYPE, "application/xml")
                    .body(s3s::Body::from(Bytes::from(body)))
                    .unwrap())
            });
        }
        let inner = self.inner.clone();
        let shared = self.shared.clone();
        Box::pin(async move {
            let _in_flight = object_get.then(|| InFlight::enter(&shared));
            if let Fault::DelayMs(ms) = fault {
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                return Service::call(&inner, req).await;
            }
            if let Fault::Status(code) = fault {
                return Ok(http::Response::builder()
                    .status(code)
                    .body(s3s::Body::from(Bytes::new()))
                    .unwrap());
            }
            if fault == Fault::Reset {
                // An error from the service makes hyper drop the connection unanswered.
                return Err(s3s::HttpError::new("injected connection reset".into()));
            }
            if fault == Fault::SlowDown {
                let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
                return Ok(http::Response::builder()
                    .status(503)
                    .header(http::header::CONTENT_TYPE, "application/xml")
                    .body(s3s::Body::from(Bytes::from(body)))
                    .unwrap());
            }
            let response = Service::call(&inner, req).await?;
            if let Some(path) = put_path.filter(|_| response.status().is_success()) {
                shared.acknowledged.lock().unwrap().push(path);
            }
            if matches!(fault, Fault::None | Fault::DenyMissing) || !response.status().is_success()
            {
                return Ok(response);
            }
            let (mut parts, body) = response.into_parts();
            let mut bytes = body
                .collect()
                .await
                .map(|c| c.to_bytes().to_vec())
                .unwrap_or_default();
            match fault {
                Fault::Truncate => bytes.truncate(bytes.len() / 2),
                Fault::Flip if !bytes.is_empty() => {
                    let middle = bytes.len() / 2;
                    bytes[middle] ^= 0x20;
                }
                _ => {}
            }
            parts
                .headers
                .insert(http::header::CONTENT_LENGTH, bytes.len().into());
            parts.headers.remove(http::header::ETAG);
            Ok(http::Response::from_parts(
                parts,
                s3s::Body::from(Bytes::from(bytes)),
            ))
        })
    }
}

/// An object GET being answered: counted in [`Shared::gets_in_flight`] while it lives.
struct InFlight(Arc<Shared>);

impl InFlight {
    fn enter(shared: &Arc<Shared>) -> Self {
        let mut counts = shared.gets_in_flight.lock().unwrap();
        counts.0 += 1;
        counts.1 = counts.1.max(counts.0);
        Self(shared.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.gets_in_flight.lock().unwrap().0 -= 1;
    }
}

impl Shared {
    /// The soak's fault for this request, if it is one the fault hits.
    fn chaos_for(&self, object_get: bool, entry_put: bool) -> Fault {
        let mut chaos = self.chaos.lock().unwrap();
        let Some(plan) = chaos.0 else {
            return Fault::None;
        };
        let damages_body = matches!(plan.fault, Fault::Truncate | Fault::Flip);
        if !(object_get || (entry_put && plan.puts && !damages_body)) {
            return Fault::None;
        }
        chaos.1 += 1;
        if !chaos.1.is_multiple_of(plan.every.max(1)) {
            return Fault::None;
        }
        chaos.2 += 1;
        plan.fault
    }
}

impl S3Server {
    /// Starts a server with one bucket, [`BUCKET`].
    pub fn start() -> Self {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join(BUCKET)).unwrap();
        let shared = Arc::new(Shared {
            counts: Mutex::default(),
            gets_in_flight: Mutex::default(),
            fault: Mutex::default(),
            chaos: Mutex::default(),
            acknowledged: Mutex::default(),
            root: root.path().to_path_buf(),
        });
        let (runtime, addr) = serve(&root, &shared, "127.0.0.1:0".parse().unwrap());
        Self {
            endpoint: format!("http://{addr}"),
            root,
            shared,
            runtime: Some(runtime),
        }
    }

    /// Starts serving again after [`S3Server::stop`], on the same address and bucket (a
    /// store that was down and is back). Does nothing if it is serving.
    pub fn restart(&mut self) {
        if self.runtime.is_some() {
            return;
        }
        let addr = self.endpoint.trim_start_matches("http://").parse().unwrap();
        let (runtime, _) = serve(&self.root, &self.shared, addr);
        self.runtime = Some(runtime);
    }

    /// Whether it is serving (not [`S3Server::stop`]ped).
    pub fn is_up(&self) -> bool {
        self.runtime.is_some()
    }

    /// Injects `chaos` from now on (`None`: no more); the count of requests it applies to
    /// starts again.
    pub fn set_chaos(&self, chaos: Option<Chaos>) {
        *self.shared.chaos.lock().unwrap() = (chaos, 0, 0);
    }

    /// The requests the current [`Chaos`] hit so far.
    pub fn chaos_hits(&self) -> u64 {
        self.shared.chaos.lock().unwrap().2
    }

    /// The objects (paths under [`S3Server::root`]) whose PUT (or multipart upload's
    /// completion) was answered with success, in order: what the server acknowledged.
    pub fn acknowledged_puts(&self) -> Vec<PathBuf> {
        self.shared.acknowledged.lock().unwrap().clone()
    }

    /// The directory that holds the bucket's objects.
    pub fn bucket_dir(&self) -> PathBuf {
        self.root.path().join(BUCKET)
    }

    /// Requests seen with this HTTP method.
    pub fn count(&self, method: &str) -> u64 {
        self.shared
            .counts
            .lock()
            .unwrap()
            .get(method)
            .copied()
            .unwrap_or(0)
    }

    pub fn reset_counts(&self) {
        self.shared.counts.lock().unwrap().clear();
        *self.shared.gets_in_flight.lock().unwrap() = (0, 0);
    }

    /// The most object GETs that were being answered at once since the last reset.
    pub fn most_gets_at_once(&self) -> u64 {
        self.shared.gets_in_flight.lock().unwrap().1
    }

    pub fn set_fault(&self, fault: Fault) {
        *self.shared.fault.lock().unwrap() = Some(fault);
    }

    /// Stops serving: connections are cut and new ones refused.
    pub fn stop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }

    /// The goremotecache options that point at this server, with `prefix`.
    pub fn args(&self, prefix: &str) -> Vec<String> {
        s3_args(&self.endpoint, prefix)
    }

    /// The entry files stored in the bucket.
    pub fn entry_files(&self) -> Vec<PathBuf> {
        fn walk(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, out);
                } else if !path.to_string_lossy().contains(".s3s") {
                    out.push(path);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.bucket_dir(), &mut out);
        out
    }
}

/// Serves the bucket under `root` on `addr` from a runtime of its own; returns the runtime
/// (dropped or shut down, it stops serving) and the address it listens on.
fn serve(
    root: &tempfile::TempDir,
    shared: &Arc<Shared>,
    addr: std::net::SocketAddr,
) -> (tokio::runtime::Runtime, std::net::SocketAddr) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let fs = s3s_fs::FileSystem::new(root.path()).unwrap();
    let mut builder = S3ServiceBuilder::new(fs);
    builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
    let service = Counting {
        inner: builder.build(),
        shared: shared.clone(),
    };
    // The address of a server that was just stopped may take a moment to be free.
    let mut tries = 0;
    let listener = loop {
        match runtime.block_on(tokio::net::TcpListener::bind(addr)) {
            Ok(listener) => break listener,
            Err(_) if tries < 200 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(25));
            }
            Err(err) => panic!("cannot listen on {addr} again: {err}"),
        }
    };
    let addr = listener.local_addr().unwrap();
    runtime.spawn(async move {
        let http = ConnBuilder::new(TokioExecutor::new());
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                continue;
            };
            let _ = socket.set_nodelay(true);
            let connection = http
                .serve_connection(TokioIo::new(socket), service.clone())
                .into_owned();
            tokio::spawn(async move {
                let _ = connection.await;
            });
        }
    });
    (runtime, addr)
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The goremotecache options for the test bucket in an S3 store at `endpoint`.
pub fn s3_args(endpoint: &str, prefix: &str) -> Vec<String> {
    bucket_args(BUCKET, endpoint, prefix)
}

/// The goremotecache options for `bucket` in an S3 store at `endpoint`. Prefetch is off, so
/// that requests can be counted one per get (tests/suite/prefetch.rs turns it on with
/// [`with_prefetch`]).
pub fn bucket_args(bucket: &str, endpoint: &str, prefix: &str) -> Vec<String> {
    [
        "--prefetch=off",
        "--s3-bucket",
        bucket,
        "--s3-prefix",
        prefix,
        "--s3-endpoint",
        endpoint,
        "--s3-region",
        "us-east-1",
        "--s3-force-path-style",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `args` with prefetch left on (its default).
pub fn with_prefetch(mut args: Vec<String>) -> Vec<String> {
    args.retain(|arg| arg != "--prefetch=off");
    args
}

/// The environment that gives goremotecache this server's credentials and nothing else.
pub fn credentials(secret: &str) -> Vec<(String, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()),
        ("AWS_SECRET_ACCESS_KEY".into(), secret.into()),
        (
            "AWS_CONFIG_FILE".into(),
            "/nonexistent/goremotecache-test".into(),
        ),
        (
            "AWS_SHARED_CREDENTIALS_FILE".into(),
            "/nonexistent/goremotecache-test".into(),
        ),
        ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
    ]
}
