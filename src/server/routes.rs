//! The routes and their handlers: entries (`GET`, `HEAD`, `PUT /v1/ac/<key>`), batches
//! (`POST /v1/batch`), prefetch manifests, `/healthz` and `/metrics`, on the state every
//! handler shares ([`ServerState`]). Each entry, batch and manifest route is there twice, as
//! `/v1/...` (no namespace) and as `/v1/ns/<NAME>/...`, with the same handler: it learns its
//! namespace from the path ([`Target`]), is admitted for it ([`ServerState::admit`]) and
//! works on that namespace's storage ([`Storage::place`](super::storage::Storage)).

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use bytes::Bytes;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::OwnedSemaphorePermit;

use super::access::Target;
use super::refusal::Refusal;
use super::state::{ServerState, storage_failure};
use super::tokens::Scope;
use crate::ids::{ActionId, BuildKey};
use crate::store::dir::{VerifiedEntry, VerifyError};
use crate::store::format;
use crate::store::{MAX_MANIFEST, PutOutcome, RemoteError, RemoteStore, Upload, batch};

/// Entries of one batch read from storage ahead of the one being sent.
const BATCH_AHEAD: usize = 8;

/// The routes: each of entries, batches and manifests without a namespace and in one.
pub fn router(state: Arc<ServerState>) -> Router {
    let entries =
        || -> MethodRouter<Arc<ServerState>> { get(get_entry).head(head_entry).put(put_entry) };
    let manifests = || -> MethodRouter<Arc<ServerState>> { get(get_manifest).put(put_manifest) };
    Router::new()
        .route("/v1/ac/{key}", entries())
        .route("/v1/ns/{ns}/ac/{key}", entries())
        .route("/v1/batch", post(get_batch))
        .route("/v1/ns/{ns}/batch", post(get_batch))
        .route("/v1/filter", get(get_filter))
        .route("/v1/ns/{ns}/filter", get(get_filter))
        .route("/v1/prefetch/{key}", manifests())
        .route("/v1/ns/{ns}/prefetch/{key}", manifests())
        .route("/mod/{*path}", get(get_module))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics_text))
        .with_state(state)
}

/// Runs a handler's work, turns a refusal into its response, and counts the request.
async fn timed(
    state: &ServerState,
    method: &'static str,
    work: impl Future<Output = Result<Response, Refusal>>,
) -> Response {
    let start = Instant::now();
    let response = work.await.unwrap_or_else(IntoResponse::into_response);
    state.observe(method, &response, start);
    response
}

/// `GET /mod/<path>`: the module proxy (`--goproxy`; without it, 404). The path is taken as
/// it came, not percent-decoded ([`crate::goproxy::Request::parse`] decodes the one escape a
/// request may have).
async fn get_module(
    State(state): State<Arc<ServerState>>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    timed(&state, "GET", async {
        let Some(proxy) = &state.goproxy else {
            return Err(Refusal::new(
                StatusCode::NOT_FOUND,
                "this server has no module proxy (serve --goproxy)",
            ));
        };
        state.admit_modules(&headers)?;
        let raw = uri.path().strip_prefix("/mod/").unwrap_or_default();
        let _permit = state.in_flight.try_acquire().map_err(|_| busy())?;
        Ok(proxy.answer(raw).await)
    })
    .await
}

/// A key is exactly 64 lowercase hex digits; nothing else reaches the store.
fn parse_key<K>(key: &str, from_key: impl FnOnce(&str) -> Option<K>) -> Result<K, Refusal> {
    from_key(key).ok_or_else(|| {
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

async fn get_manifest(
    State(state): State<Arc<ServerState>>,
    target: Target,
    headers: HeaderMap,
) -> Response {
    timed(&state, "GET", async {
        let namespace = state.admit(&target, &headers, Scope::Read)?;
        let key = parse_key(&target.key, BuildKey::from_key)?;
        let place = state.place(namespace.as_ref(), Scope::Read).await?;
        match place.store.get_manifest(&key).await {
            Ok(Some(bytes)) => Ok((StatusCode::OK, bytes).into_response()),
            Ok(None) => Err(Refusal::new(StatusCode::NOT_FOUND, "no manifest")),
            Err(err) => Err(storage_failure(&state, "get manifest", err)),
        }
    })
    .await
}

/// `GET /v1/filter`: the key filter of the namespace's entries as they are now
/// ([`crate::store::filter`]), for instant misses. Only a storage directory, whose index knows
/// every entry, gives one; on S3 storage (where other replicas store too, and nothing here
/// lists them) the answer is 404, and clients ask for every miss.
async fn get_filter(
    State(state): State<Arc<ServerState>>,
    target: Target,
    headers: HeaderMap,
) -> Response {
    timed(&state, "GET", async {
        let namespace = state.admit(&target, &headers, Scope::Read)?;
        let place = state.place(namespace.as_ref(), Scope::Read).await?;
        if place.store.clients_keep_filter() {
            return Err(Refusal::new(StatusCode::NOT_FOUND, "no key filter"));
        }
        match place.store.get_filter().await {
            Ok(Some(bytes)) => Ok((StatusCode::OK, bytes).into_response()),
            Ok(None) => Err(Refusal::new(StatusCode::NOT_FOUND, "no key filter")),
            Err(err) => Err(storage_failure(&state, "get filter", err)),
        }
    })
    .await
}

async fn put_manifest(
    State(state): State<Arc<ServerState>>,
    target: Target,
    headers: HeaderMap,
    body: Body,
) -> Response {
    timed(&state, "PUT", async {
        let namespace = state.admit(&target, &headers, Scope::ReadWrite)?;
        let key = parse_key(&target.key, BuildKey::from_key)?;
        let bytes = state
            .body("a manifest", &headers, body, MAX_MANIFEST as u64)?
            .read_all()
            .await?;
        state.metrics.bytes_in.inc_by(bytes.len() as u64);
        let place = state.place(namespace.as_ref(), Scope::ReadWrite).await?;
        match place.store.put_manifest(&key, bytes).await {
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
    target: Target,
    headers: HeaderMap,
    body: Body,
) -> Response {
    timed(&state, "POST", async {
        // One namespace per batch: its scope is checked once, for all its keys.
        let namespace = state.admit(&target, &headers, Scope::Read)?;
        let limit = (batch::MAX_KEYS * 66) as u64;
        let body = state
            .body("a batch request", &headers, body, limit)?
            .read_all()
            .await?;
        let keys =
            batch::parse_keys(&body).map_err(|err| Refusal::new(StatusCode::BAD_REQUEST, err))?;
        let place = state.place(namespace.as_ref(), Scope::Read).await?;
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
            place.store,
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
    target: Target,
    headers: HeaderMap,
) -> Response {
    timed(&state, "GET", fetch(&state, &target, &headers)).await
}

async fn fetch(
    state: &Arc<ServerState>,
    target: &Target,
    headers: &HeaderMap,
) -> Result<Response, Refusal> {
    let namespace = state.admit(target, headers, Scope::Read)?;
    let action = parse_key(&target.key, ActionId::from_key)?;
    let _permit = state.in_flight.try_acquire().map_err(|_| busy())?;
    let place = state.place(namespace.as_ref(), Scope::Read).await?;
    if let Some(disk) = &place.disk {
        return super::answer::from_disk(state, disk, &action);
    }
    match place.store.get(&action).await {
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
    store: Arc<dyn RemoteStore>,
    keys: Vec<ActionId>,
    tx: tokio::sync::mpsc::Sender<Result<Bytes, io::Error>>,
    permit: OwnedSemaphorePermit,
    complete: Arc<AtomicBool>,
) {
    // Ends at once when the receiver goes, even while a storage read is pending.
    let whole = tokio::select! {
        whole = send_frames(&state, store, keys, &tx) => whole,
        _ = tx.closed() => false,
    };
    complete.store(whole, Ordering::Release);
    drop(tx);
    drop(permit);
}

/// The frames of [`send_batch`]: true when all were handed on, false when one could not be.
async fn send_frames(
    state: &ServerState,
    store: Arc<dyn RemoteStore>,
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
    target: Target,
    headers: HeaderMap,
) -> Response {
    timed(&state, "HEAD", head(&state, &target, &headers)).await
}

async fn head(
    state: &Arc<ServerState>,
    target: &Target,
    headers: &HeaderMap,
) -> Result<Response, Refusal> {
    let namespace = state.admit(target, headers, Scope::Read)?;
    let action = parse_key(&target.key, ActionId::from_key)?;
    let place = state.place(namespace.as_ref(), Scope::Read).await?;
    match place.store.head(&action).await {
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
    target: Target,
    headers: HeaderMap,
    body: Body,
) -> Response {
    timed(&state, "PUT", store(&state, &target, &headers, body)).await
}

async fn store(
    state: &Arc<ServerState>,
    target: &Target,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, Refusal> {
    let namespace = state.admit(target, headers, Scope::ReadWrite)?;
    let action = parse_key(&target.key, ActionId::from_key)?;
    let mut body = state.body("an entry", headers, body, state.max_entry_size)?;
    let _permit = state.in_flight.try_acquire().map_err(|_| busy())?;
    let place = state.place(namespace.as_ref(), Scope::ReadWrite).await?;
    // Room for the entry, before a byte of it is spooled when its length is announced.
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut reservation = match (&place.disk, announced) {
        (Some(disk), Some(len)) => Some(disk.reserve(&action, len).map_err(full)?),
        _ => None,
    };
    let internal = |err: io::Error| {
        tracing::warn!("spooling a put: {err}");
        Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, "cannot spool the entry")
    };
    // On disk storage the spool is the store's own tmp/, so that the file can be renamed
    // into place.
    let temp = match &place.disk {
        Some(disk) => disk.disk().temp_file(),
        None => tempfile::Builder::new()
            .prefix("put-")
            .tempfile_in(&state.spool_dir),
    }
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
    state.metrics.bytes_in.inc_by(body.len());

    // The one verification of this entry.
    let verified = tokio::task::spawn_blocking(move || VerifiedEntry::check(temp))
        .await
        .map_err(|err| internal(io::Error::other(err.to_string())))?
        .map_err(|err| match err {
            VerifyError::Io(err) => internal(err),
            VerifyError::Rejected(reason) => {
                Refusal::new(StatusCode::BAD_REQUEST, format!("rejected entry: {reason}"))
            }
        })?;
    let stored = match &place.disk {
        Some(disk) => {
            let reservation = match reservation.take() {
                Some(reservation) => reservation,
                None => disk.reserve(&action, verified.len()).map_err(full)?,
            };
            let disk = disk.clone();
            tokio::task::spawn_blocking(move || {
                disk.commit_verified(&action, verified, reservation)
            })
            .await
            .map_err(|err| internal(io::Error::other(err.to_string())))?
        }
        None => {
            let upload = Upload::File {
                path: verified.path().to_path_buf(),
                len: verified.len(),
            };
            // `verified` (the spool file) lives until the upload is done.
            place.store.put(&action, upload).await
        }
    };
    match stored {
        Ok(PutOutcome::Stored) => Ok(StatusCode::CREATED.into_response()),
        Ok(PutOutcome::Exists | PutOutcome::Skipped) => Ok(StatusCode::OK.into_response()),
        Err(err) => Err(storage_failure(state, &format!("put {action}"), err)),
    }
}

/// The answer to a put that the bounded storage has no room for: 507, counted as a refusal
/// and not as a storage error (nothing failed; deleting old entries is behind).
fn full(err: RemoteError) -> Refusal {
    tracing::debug!("{err}");
    Refusal::new(StatusCode::INSUFFICIENT_STORAGE, err.to_string())
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
    if let Some(usage) = state.storage.usage() {
        state.metrics.set_storage(usage);
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}
