//! `goremotecache serve`: an HTTP cache server over the entry format, storing on a local
//! directory or in S3 (then it is a stateless front that can run as several replicas, and the
//! credential-holding sidecar for `docker build`).
//!
//! API (documented in `docs/http-api.md`): `GET`, `HEAD` and `PUT /v1/ac/<actionid-hex>`,
//! `POST /v1/batch` (many entries in one streamed answer, for prefetch), `GET` and `PUT
//! /v1/prefetch/<key-hex>` (prefetch manifests), `GET /healthz`, `GET /metrics`. Bearer
//! tokens are read-only or read-write. Keys other than 64 lowercase hex digits are refused
//! before anything else looks at them; a `PUT` body is spooled to a temporary file (never held
//! in memory), limited to `--max-entry-size` both in the bytes sent and in the size its header
//! says it decodes to (checked as soon as the header arrives, so a small zstd bomb never
//! reaches the decoder), and verified against its header before the store sees it.
//!
//! Every direction of a connection has a time bound ([`ServeTimeouts`], see [`connection`]): a
//! request's headers, a stalled body, a stalled answer. Connections and the work in flight are
//! bounded in number; SIGTERM stops accepting, finishes what is in flight and exits.

use std::future::Future;
use std::io::{self, BufReader};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::task::Poll;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use futures::StreamExt;
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;

use crate::config::ServeTimeouts;
use crate::ids::{ActionId, BuildKey};
use crate::store::format;
use crate::store::{MAX_MANIFEST, PutOutcome, RemoteStore, Upload, batch};

mod body;
pub mod connection;
pub mod metrics;
pub mod tokens;

use body::BodyReader;
use connection::WriteDeadline;
use metrics::Metrics;
use tokens::{Scope, Tokens};

/// A TLS handshake must be complete within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long SIGTERM waits for requests in flight.
pub const DRAIN: Duration = Duration::from_secs(30);
/// Entries of one batch read from storage ahead of the one being sent.
const BATCH_AHEAD: usize = 8;

/// What a running server needs.
#[derive(Debug)]
pub struct ServerState {
    pub store: Arc<dyn RemoteStore>,
    pub tokens: RwLock<Tokens>,
    pub anonymous_read: bool,
    pub max_entry_size: u64,
    /// Where `PUT` bodies are spooled.
    pub spool_dir: PathBuf,
    /// Requests handled at once; past it, 503.
    pub in_flight: Arc<Semaphore>,
    pub timeouts: ServeTimeouts,
    pub metrics: Metrics,
}

/// The routes.
pub fn router(state: Arc<ServerState>) -> Router {
    Router::new()
        .route(
            "/v1/ac/{key}",
            get(get_entry).head(head_entry).put(put_entry),
        )
        .route("/v1/batch", post(get_batch))
        .route("/v1/prefetch/{key}", get(get_manifest).put(put_manifest))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics_text))
        .with_state(state)
}

/// Serves `listener` until `shutdown` completes, then finishes the requests in flight (for at
/// most [`DRAIN`]). At most `max_connections` connections are served at once; more are closed
/// at once. Each connection is bounded in time by the state's [`ServeTimeouts`].
pub async fn run(
    listener: TcpListener,
    state: Arc<ServerState>,
    max_connections: usize,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    let timeouts = state.timeouts;
    let app = router(state);
    let connections = Arc::new(Semaphore::new(max_connections.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(err) => {
                tracing::warn!("accepting a connection failed: {err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::debug!("connection limit reached; closing a new connection");
            continue;
        };
        let _ = stream.set_nodelay(true);
        // Under TLS too, so that the handshake's writes are bounded as well.
        let stream = WriteDeadline::new(stream, timeouts.write);
        let service = TowerToHyperService::new(app.clone());
        let stop = stop_rx.clone();
        let tls = tls.clone();
        tasks.spawn(async move {
            match tls {
                None => connection::serve(stream, service, timeouts.idle, stop).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            connection::serve(stream, service, timeouts.idle, stop).await
                        }
                        Ok(Err(err)) => tracing::debug!("TLS handshake failed: {err}"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
            }
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained =
        tokio::time::timeout(DRAIN, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            "requests still in flight after {}s were cut off",
            DRAIN.as_secs()
        );
    }
}

/// The TLS configuration of `--tls-cert` and `--tls-key`.
pub fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, ServeError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls_error = |what: &std::path::Path, err: &dyn std::fmt::Display| {
        ServeError::Tls(format!("{}: {err}", what.display()))
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|err| tls_error(cert, &err))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| tls_error(cert, &err))?;
    if certs.is_empty() {
        return Err(tls_error(cert, &"no certificate in the file"));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|err| tls_error(key, &err))?;
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|err| tls_error(cert, &err))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// A request refused: a status and a one-line reason (small, unlike a whole `Response`).
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    reason: String,
}

impl Refusal {
    fn new(status: StatusCode, reason: impl Into<String>) -> Self {
        Self {
            status,
            reason: reason.into(),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut response = (self.status, format!("{}\n", self.reason)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Runs a handler's work, turns a refusal into its response, and counts the request.
async fn timed(
    state: &ServerState,
    method: &str,
    work: impl Future<Output = Result<Response, Refusal>>,
) -> Response {
    let start = Instant::now();
    let response = work.await.unwrap_or_else(IntoResponse::into_response);
    state.observe(method, &response, start);
    response
}

/// The token of an `Authorization: Bearer TOKEN` value; the scheme is case-insensitive, as
/// every HTTP authentication scheme is (RFC 9110, 11.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token)
}

impl ServerState {
    /// Checks the request's bearer token for `needed`.
    fn authorize(&self, headers: &HeaderMap, needed: Scope) -> Result<(), Refusal> {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token);
        let scope = match presented {
            None if needed == Scope::Read && self.anonymous_read => return Ok(()),
            None => None,
            Some(token) => self
                .tokens
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .scope_of(token.trim().as_bytes()),
        };
        match scope {
            Some(scope) if scope >= needed => Ok(()),
            Some(_) => Err(Refusal::new(
                StatusCode::FORBIDDEN,
                "this token may only read",
            )),
            None => Err(Refusal::new(
                StatusCode::UNAUTHORIZED,
                "a valid bearer token is needed",
            )),
        }
    }

    /// A reader for a request body that is `what` and may have at most `limit` bytes, under
    /// the body timeout.
    fn body(
        &self,
        what: &'static str,
        headers: &HeaderMap,
        body: Body,
        limit: u64,
    ) -> Result<BodyReader, Refusal> {
        BodyReader::new(what, headers, body, limit, self.timeouts.body)
    }

    /// Counts one request and its latency.
    fn observe(&self, method: &str, response: &Response, start: Instant) {
        self.metrics
            .observe(method, response.status().as_u16(), start.elapsed());
    }
}

/// A key is exactly 64 lowercase hex digits; nothing else reaches the store.
fn parse_key(key: &str) -> Result<ActionId, Refusal> {
    let valid = key.len() == 64 && key.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    valid
        .then(|| ActionId::from_hex(key))
        .flatten()
        .ok_or_else(|| {
            Refusal::new(
                StatusCode::BAD_REQUEST,
                "the key must be 64 lowercase hex digits",
            )
        })
}

/// The answer when `--max-in-flight` requests are being handled.
fn busy() -> Refusal {
    Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "busy")
}

/// A storage failure: counted, logged, answered 503.
fn storage_failure(state: &ServerState, what: &str, err: impl std::fmt::Display) -> Refusal {
    state.metrics.storage_errors.inc();
    tracing::warn!("storage {what}: {err}");
    Refusal::new(StatusCode::SERVICE_UNAVAILABLE, format!("storage: {err}"))
}

async fn get_manifest(
    State(state): State<Arc<ServerState>>,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> Response {
    timed(&state, "GET", async {
        state.authorize(&headers, Scope::Read)?;
        let key = BuildKey(parse_key(&key)?.0);
        match state.store.get_manifest(&key).await {
            Ok(Some(bytes)) => Ok((StatusCode::OK, bytes).into_response()),
            Ok(None) => Err(Refusal::new(StatusCode::NOT_FOUND, "no manifest")),
            Err(err) => Err(storage_failure(&state, "get manifest", err)),
        }
    })
    .await
}

async fn put_manifest(
    State(state): State<Arc<ServerState>>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    timed(&state, "PUT", async {
        state.authorize(&headers, Scope::ReadWrite)?;
        let key = BuildKey(parse_key(&key)?.0);
        let bytes = state
            .body("a manifest", &headers, body, MAX_MANIFEST as u64)?
            .read_all()
            .await?;
        state.metrics.bytes_in.inc_by(bytes.len() as u64);
        match state.store.put_manifest(&key, bytes).await {
            Ok(()) => Ok(StatusCode::NO_CONTENT.into_response()),
            Err(err) => Err(storage_failure(&state, "put manifest", err)),
        }
    })
    .await
}

/// `POST /v1/batch`: the entries for the keys in the body (a key asked twice is answered
/// once), streamed in the [`batch`] framing in the order asked; a few are read from storage
/// ahead of the one being sent. The answer holds an in-flight slot until it is sent, the
/// connection is gone, or a frame waits longer than the write timeout to be taken.
async fn get_batch(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    timed(&state, "POST", async {
        state.authorize(&headers, Scope::Read)?;
        let limit = (batch::MAX_KEYS * 66) as u64;
        let body = state
            .body("a batch request", &headers, body, limit)?
            .read_all()
            .await?;
        let keys =
            batch::parse_keys(&body).map_err(|err| Refusal::new(StatusCode::BAD_REQUEST, err))?;
        // The answer outlives this handler: the sender task holds its slot.
        let permit = state
            .in_flight
            .clone()
            .try_acquire_owned()
            .map_err(|_| busy())?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, io::Error>>(BATCH_AHEAD);
        let complete = Arc::new(AtomicBool::new(false));
        tokio::spawn(send_batch(
            state.clone(),
            keys,
            tx,
            permit,
            complete.clone(),
        ));
        // An answer the sender gave up on ends in an error, so that hyper breaks the
        // connection off instead of ending the chunked body as if it were whole.
        let mut cut = false;
        let frames = futures::stream::poll_fn(move |cx| match rx.poll_recv(cx) {
            Poll::Ready(None) if !cut && !complete.load(Ordering::Acquire) => {
                cut = true;
                Poll::Ready(Some(Err(io::Error::other("the batch answer was cut off"))))
            }
            other => other,
        });
        Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/x-goremotecache-batch")],
            Body::from_stream(frames),
        )
            .into_response())
    })
    .await
}

async fn get_entry(
    State(state): State<Arc<ServerState>>,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> Response {
    timed(&state, "GET", fetch(&state, &key, &headers)).await
}

async fn fetch(
    state: &Arc<ServerState>,
    key: &str,
    headers: &HeaderMap,
) -> Result<Response, Refusal> {
    state.authorize(headers, Scope::Read)?;
    let action = parse_key(key)?;
    let _permit = state.in_flight.try_acquire().map_err(|_| busy())?;
    match state.store.get(&action).await {
        Ok(None) => {
            state.metrics.misses.inc();
            Err(Refusal::new(StatusCode::NOT_FOUND, "no entry"))
        }
        Ok(Some(stream)) => {
            state.metrics.hits.inc();
            let metrics = state.metrics.clone();
            let counted = stream.inspect(move |chunk| {
                if let Ok(bytes) = chunk {
                    metrics.bytes_out.inc_by(bytes.len() as u64);
                }
            });
            Ok((
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/octet-stream")],
                Body::from_stream(counted),
            )
                .into_response())
        }
        Err(err) => Err(storage_failure(state, &format!("get {action}"), err)),
    }
}

/// A storage failure for one key of a batch: counted, logged, and its frame.
fn batch_failure(state: &ServerState, action: &ActionId, err: impl std::fmt::Display) -> Bytes {
    state.metrics.storage_errors.inc();
    tracing::warn!("storage get {action}: {err}");
    batch::failed(action, &format!("storage: {err}"))
}

/// Sends the frames of a batch answer, holding `permit` (its in-flight slot) until done, until
/// the answer's body is dropped (the connection is gone: hyper drops it when a write times
/// out), or until a frame waits longer than the write timeout to be taken. Sets `complete`
/// before the channel closes when every frame was handed on.
async fn send_batch(
    state: Arc<ServerState>,
    keys: Vec<ActionId>,
    tx: tokio::sync::mpsc::Sender<Result<Bytes, io::Error>>,
    permit: OwnedSemaphorePermit,
    complete: Arc<AtomicBool>,
) {
    // Ends at once when the receiver goes, even while a storage read is pending.
    let whole = tokio::select! {
        whole = send_frames(&state, keys, &tx) => whole,
        _ = tx.closed() => false,
    };
    complete.store(whole, Ordering::Release);
    drop(tx);
    drop(permit);
}

/// The frames of [`send_batch`]: true when all were handed on, false when one could not be.
async fn send_frames(
    state: &ServerState,
    keys: Vec<ActionId>,
    tx: &tokio::sync::mpsc::Sender<Result<Bytes, io::Error>>,
) -> bool {
    let write_timeout = state.timeouts.write;
    // The channel is the answer's body: a send that waits this long means hyper has not taken
    // a frame for a write timeout, which its connection should have ended already.
    let send = |bytes: Bytes| async move {
        matches!(
            tokio::time::timeout(write_timeout, tx.send(Ok(bytes))).await,
            Ok(Ok(()))
        )
    };
    let store = state.store.clone();
    let mut opened = futures::stream::iter(keys)
        .map(|action| {
            let store = store.clone();
            async move { (action, store.get(&action).await) }
        })
        .buffered(BATCH_AHEAD);
    'keys: while let Some((action, found)) = opened.next().await {
        let mut stream = match found {
            Ok(Some(stream)) => stream,
            Ok(None) => {
                state.metrics.misses.inc();
                if !send(batch::missing(&action)).await {
                    return false;
                }
                continue;
            }
            Err(err) => {
                if !send(batch_failure(state, &action, err)).await {
                    return false;
                }
                continue;
            }
        };
        state.metrics.hits.inc();
        if !send(batch::start(&action)).await {
            return false;
        }
        while let Some(chunk) = stream.next().await {
            let sent = match chunk {
                Ok(bytes) if bytes.is_empty() => true,
                Ok(bytes) => {
                    state.metrics.bytes_out.inc_by(bytes.len() as u64);
                    send(batch::chunk_header(bytes.len())).await && send(bytes).await
                }
                Err(err) => {
                    if !send(batch_failure(state, &action, err)).await {
                        return false;
                    }
                    continue 'keys;
                }
            };
            if !sent {
                return false;
            }
        }
        if !send(batch::end()).await {
            return false;
        }
    }
    true
}

async fn head_entry(
    State(state): State<Arc<ServerState>>,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> Response {
    timed(&state, "HEAD", head(&state, &key, &headers)).await
}

async fn head(
    state: &Arc<ServerState>,
    key: &str,
    headers: &HeaderMap,
) -> Result<Response, Refusal> {
    state.authorize(headers, Scope::Read)?;
    let action = parse_key(key)?;
    match state.store.head(&action).await {
        Ok(Some(size)) => {
            Ok((StatusCode::OK, [(header::CONTENT_LENGTH, size.to_string())]).into_response())
        }
        Ok(None) => Err(Refusal::new(StatusCode::NOT_FOUND, "")),
        Err(err) => {
            state.metrics.storage_errors.inc();
            tracing::warn!("storage head {action}: {err}");
            Err(Refusal::new(StatusCode::SERVICE_UNAVAILABLE, ""))
        }
    }
}

async fn put_entry(
    State(state): State<Arc<ServerState>>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    timed(&state, "PUT", store(&state, &key, &headers, body)).await
}

async fn store(
    state: &Arc<ServerState>,
    key: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, Refusal> {
    state.authorize(headers, Scope::ReadWrite)?;
    let action = parse_key(key)?;
    let mut body = state.body("an entry", headers, body, state.max_entry_size)?;
    let _permit = state.in_flight.try_acquire().map_err(|_| busy())?;
    let internal = |err: io::Error| {
        tracing::warn!("spooling a put: {err}");
        Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, "cannot spool the entry")
    };
    let temp = tempfile::Builder::new()
        .prefix("put-")
        .tempfile_in(&state.spool_dir)
        .map_err(internal)?;
    let mut file = tokio::fs::File::from_std(temp.reopen().map_err(internal)?);
    // The header, until it is whole and checked; then `None`.
    let mut head = Some(Vec::with_capacity(format::HEADER_LEN));
    while let Some(chunk) = body.next().await? {
        if let Some(bytes) = &mut head {
            let wanted = format::HEADER_LEN - bytes.len();
            bytes.extend_from_slice(&chunk[..wanted.min(chunk.len())]);
            if bytes.len() == format::HEADER_LEN {
                check_header(state, bytes)?;
                head = None;
            }
        }
        file.write_all(&chunk).await.map_err(internal)?;
    }
    file.flush().await.map_err(internal)?;
    drop(file);
    let size = body.len();
    state.metrics.bytes_in.inc_by(size);

    let path = temp.path().to_path_buf();
    let verified = tokio::task::spawn_blocking(move || {
        let mut input = BufReader::new(std::fs::File::open(path)?);
        format::read_entry(&mut input, &mut io::sink())
            .map_err(|err| io::Error::other(err.to_string()))
    })
    .await
    .map_err(|err| internal(io::Error::other(err.to_string())))?;
    if let Err(err) = verified {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            format!("rejected entry: {err}"),
        ));
    }
    let upload = Upload::File {
        path: temp.path().to_path_buf(),
        len: size,
    };
    match state.store.put(&action, upload).await {
        Ok(PutOutcome::Stored) => Ok(StatusCode::CREATED.into_response()),
        Ok(PutOutcome::Exists | PutOutcome::Skipped) => Ok(StatusCode::OK.into_response()),
        Err(err) => Err(storage_failure(state, &format!("put {action}"), err)),
    }
}

/// Refuses an entry by its header alone, before the rest is spooled or its body decoded: a
/// header that does not parse (400), or one that says the entry decodes to more than
/// `--max-entry-size` (413; a few KB of zstd can claim a GiB).
fn check_header(state: &ServerState, bytes: &[u8]) -> Result<(), Refusal> {
    let bytes: &[u8; format::HEADER_LEN] = bytes.try_into().expect("a whole header");
    let header = format::Header::decode(bytes)
        .map_err(|err| Refusal::new(StatusCode::BAD_REQUEST, format!("rejected entry: {err}")))?;
    if header.size > state.max_entry_size {
        return Err(Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "an entry may have at most {} bytes; this one's header says it decodes to {}",
                state.max_entry_size, header.size
            ),
        ));
    }
    Ok(())
}

async fn metrics_text(State(state): State<Arc<ServerState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

/// Why `serve` could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "serve needs somewhere to store entries: --storage-dir DIR, or --s3-bucket (with the other --s3-* options)"
    )]
    NoStorage,
    #[error(
        "serve needs tokens (--token-file or GOREMOTECACHE_TOKENS), or --allow-anonymous-read for a read-only cache"
    )]
    NoTokens,
    #[error("tokens: {0}")]
    Tokens(String),
    #[error("storage: {0}")]
    Storage(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("listening on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: io::Error,
    },
}

/// `goremotecache serve`: builds the server from its options, binds, and serves until
/// SIGTERM or Ctrl-C. SIGHUP reads the token file again.
pub fn serve(
    args: &crate::config::ServeArgs,
    s3: Option<crate::store::s3::S3Config>,
) -> Result<(), ServeError> {
    let tokens = load_tokens(args)?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls_acceptor(cert, key)?),
        _ => None,
    };
    if tokens.is_empty() && !args.allow_anonymous_read {
        return Err(ServeError::NoTokens);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("goremotecache-serve")
        .build()
        .map_err(|err| ServeError::Storage(format!("starting the runtime: {err}")))?;
    runtime.block_on(async {
        let (store, spool_dir, _spool_guard): (
            Arc<dyn RemoteStore>,
            PathBuf,
            Option<tempfile::TempDir>,
        ) = match (&args.storage_dir, s3) {
            (Some(dir), _) => {
                let store = crate::store::dir::DiskStore::open(dir)
                    .map_err(|err| ServeError::Storage(format!("{}: {err}", dir.display())))?;
                if let Ok(n) = store.sweep(Duration::from_secs(3600))
                    && n > 0
                {
                    tracing::info!("removed {n} stale temporary files");
                }
                let spool = dir.join("tmp");
                (Arc::new(store), spool, None)
            }
            (None, Some(s3)) => {
                let store = crate::store::s3::S3Store::new(&s3)
                    .map_err(|err| ServeError::Storage(err.to_string()))?;
                let spool = tempfile::Builder::new()
                    .prefix("goremotecache-serve-")
                    .tempdir()
                    .map_err(|err| ServeError::Storage(format!("a spool directory: {err}")))?;
                (Arc::new(store), spool.path().to_path_buf(), Some(spool))
            }
            (None, None) => return Err(ServeError::NoStorage),
        };
        let listener = TcpListener::bind(args.listen)
            .await
            .map_err(|source| ServeError::Bind {
                addr: args.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| ServeError::Bind {
            addr: args.listen,
            source,
        })?;
        eprintln!(
            "goremotecache: serving {}://{addr} from {}: {} tokens, anonymous reads {}",
            if tls.is_some() { "https" } else { "http" },
            store.location(),
            tokens.len(),
            if args.allow_anonymous_read {
                "allowed"
            } else {
                "refused"
            }
        );
        let state = Arc::new(ServerState {
            store,
            tokens: RwLock::new(tokens),
            anonymous_read: args.allow_anonymous_read,
            max_entry_size: args.max_entry_size,
            spool_dir,
            in_flight: Arc::new(Semaphore::new(args.max_in_flight.max(1))),
            timeouts: *args.timeouts,
            metrics: Metrics::new(),
        });
        tokio::spawn(reload_on_hangup(args.clone(), state.clone()));
        run(
            listener,
            state,
            args.max_connections,
            tls,
            shutdown_signal(),
        )
        .await;
        eprintln!("goremotecache: server stopped");
        Ok(())
    })
}

fn load_tokens(args: &crate::config::ServeArgs) -> Result<Tokens, ServeError> {
    let mut tokens = Tokens::default();
    if let Some(path) = &args.token_file {
        let text = std::fs::read_to_string(path)
            .map_err(|err| ServeError::Tokens(format!("{}: {err}", path.display())))?;
        tokens.extend(
            Tokens::parse_file(&text)
                .map_err(|err| ServeError::Tokens(format!("{}: {err}", path.display())))?,
        );
    }
    if let Some(list) = &args.tokens {
        tokens.extend(
            Tokens::parse_list(list)
                .map_err(|err| ServeError::Tokens(format!("GOREMOTECACHE_TOKENS: {err}")))?,
        );
    }
    Ok(tokens)
}

/// Reads the tokens again on each SIGHUP; a file that does not parse keeps the old tokens.
async fn reload_on_hangup(args: crate::config::ServeArgs, state: Arc<ServerState>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        return;
    };
    while hangups.recv().await.is_some() {
        match load_tokens(&args) {
            Ok(tokens) => {
                let count = tokens.len();
                *state.tokens.write().unwrap_or_else(|p| p.into_inner()) = tokens;
                eprintln!("goremotecache: tokens reloaded: {count} tokens");
            }
            Err(err) => eprintln!("goremotecache: keeping the old tokens: {err}"),
        }
    }
}

/// Completes on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    eprintln!("goremotecache: stopping: finishing the requests in flight");
}
