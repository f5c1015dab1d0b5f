//! The answer to a `GET /v1/ac/<key>` on a storage directory: the entry's file, sent with its
//! `Content-Length` (the size from the `fstat` of the open that found it; an entry's file is
//! never rewritten, see [`DiskStore::open_entry`](crate::store::dir::DiskStore::open_entry)).
//!
//! A small entry (at most [`INLINE_MAX`] bytes, most of a Go build's) is read at once, on the
//! request's own task, into one buffer that hyper sends with the head in one write: no thread
//! hand-off, no channel, no chunked framing. The open and its `fstat` already run there (a
//! no-follow, non-blocking open); one read of a few KiB of a regular file is of the same
//! order, and a storage directory whose reads block for long has the same effect on the
//! open. A larger entry is streamed from a blocking thread, as every store's get is
//! ([`crate::store::file_stream`]), so that a slow disk never holds a worker for a long
//! read; a transfer that ends short of the length breaks the connection off, which a client
//! takes as a miss. Its chunks are read into buffers kept for reuse ([`POOL`]): a new
//! 256 KiB buffer per chunk cost more than the reads themselves (zeroed, its pages faulted
//! in, and given back to the kernel when freed).

use std::fs::File;
use std::io::{self, Read};
use std::sync::Mutex;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{Stream, StreamExt};

use super::refusal::Refusal;
use super::state::{ServerState, storage_failure};
use crate::ids::ActionId;
use crate::store::bounded::BoundedSpace;

/// Entries up to this size are read whole and sent with their head in one write.
pub(super) const INLINE_MAX: u64 = 64 * 1024;

/// The answer for `action` in `disk`: 200 with the entry's bytes, or 404; counted as a hit
/// or a miss.
pub(super) fn from_disk(
    state: &ServerState,
    disk: &BoundedSpace,
    action: &ActionId,
) -> Result<Response, Refusal> {
    let (mut file, len) = match disk.open(action) {
        Ok(Some(found)) => found,
        Ok(None) => {
            state.metrics.misses.inc();
            return Err(Refusal::new(StatusCode::NOT_FOUND, "no entry"));
        }
        Err(err) => return Err(storage_failure(state, &format!("get {action}"), err)),
    };
    state.metrics.hits.inc();
    let mut response = if len <= INLINE_MAX {
        let mut bytes = vec![0; len as usize];
        file.read_exact(&mut bytes)
            .map_err(|err| storage_failure(state, &format!("get {action}"), err))?;
        state.metrics.bytes_out.inc_by(len);
        (StatusCode::OK, Bytes::from(bytes)).into_response()
    } else {
        let metrics = state.metrics.clone();
        let counted = file_chunks(file).inspect(move |chunk| {
            if let Ok(bytes) = chunk {
                metrics.bytes_out.inc_by(bytes.len() as u64);
            }
        });
        let mut response = (StatusCode::OK, axum::body::Body::from_stream(counted)).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        response
    };
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Ok(response)
}

/// Bytes read from a large entry at once.
const CHUNK: usize = 256 * 1024;

/// Chunks read ahead of the one hyper is sending, per answer.
const AHEAD: usize = 4;

/// Chunk buffers kept for reuse, at most: 8 MiB held after a busy moment.
const POOLED: usize = 32;

/// Chunk buffers that were sent, for the next chunks (see the module's notes).
static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// A chunk's buffer, which goes back to [`POOL`] when hyper has sent it.
struct Pooled(Vec<u8>);

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.0);
        buf.clear();
        let mut pool = crate::sync::lock(&POOL);
        if pool.len() < POOLED {
            pool.push(buf);
        }
    }
}

/// The bytes of `file` in chunks of [`CHUNK`], read on a blocking thread a few ahead of the
/// one being sent; an error ends the stream.
fn file_chunks(file: File) -> impl Stream<Item = io::Result<Bytes>> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(AHEAD);
    tokio::task::spawn_blocking(move || {
        let mut file = file;
        loop {
            let mut buf = crate::sync::lock(&POOL)
                .pop()
                .unwrap_or_else(|| Vec::with_capacity(CHUNK));
            // Into the buffer's spare room: nothing is zeroed first.
            let chunk = match (&mut file).take(CHUNK as u64).read_to_end(&mut buf) {
                Ok(0) => {
                    drop(Pooled(buf));
                    return;
                }
                Ok(_) => Ok(Bytes::from_owner(Pooled(buf))),
                Err(err) => Err(err),
            };
            let failed = chunk.is_err();
            if tx.blocking_send(chunk).is_err() || failed {
                return;
            }
        }
    });
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
