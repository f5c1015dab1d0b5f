//! Reading a request body under the server's bounds: one reader for every handler that takes
//! a body (`PUT /v1/ac`, `POST /v1/batch`, `PUT /v1/prefetch`), so that none of them can be
//! held open by a client that announces a body and stops sending it.
//!
//! The bounds: a size limit, checked at once against `Content-Length` when there is one and
//! otherwise as the bytes pass it (413); and a stall timeout, `--body-timeout`, between
//! chunks (408). A body that keeps trickling is not stalled; its size limit still ends it.

use std::time::Duration;

use axum::body::{Body, BodyDataStream};
use axum::http::{HeaderMap, StatusCode, header};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use super::refusal::Refusal;

/// A request body being read, chunk by chunk, within a size limit and a stall timeout.
pub(super) struct BodyReader {
    stream: BodyDataStream,
    what: &'static str,
    limit: u64,
    stall: Duration,
    read: u64,
}

impl BodyReader {
    /// A reader for `body`, which is `what` (for messages: "an entry") and may have at most
    /// `limit` bytes. Refuses with 413 at once when `Content-Length` already says more.
    pub(super) fn new(
        what: &'static str,
        headers: &HeaderMap,
        body: Body,
        limit: u64,
        stall: Duration,
    ) -> Result<Self, Refusal> {
        let reader = Self {
            stream: body.into_data_stream(),
            what,
            limit,
            stall,
            read: 0,
        };
        let announced = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if announced.is_some_and(|len| len > limit) {
            return Err(reader.too_large());
        }
        Ok(reader)
    }

    /// The 413 answer for this body.
    pub(super) fn too_large(&self) -> Refusal {
        Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{} may have at most {} bytes", self.what, self.limit),
        )
    }

    /// The next chunk, `None` at the end of the body. 408 when nothing arrives for the stall
    /// timeout, 413 past the limit, 400 for a body that breaks off.
    pub(super) async fn next(&mut self) -> Result<Option<Bytes>, Refusal> {
        let chunk = match tokio::time::timeout(self.stall, self.stream.next()).await {
            Err(_) => {
                return Err(Refusal::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "the body stalled",
                ));
            }
            Ok(None) => return Ok(None),
            Ok(Some(Err(err))) => {
                return Err(Refusal::new(
                    StatusCode::BAD_REQUEST,
                    format!("reading the body: {err}"),
                ));
            }
            Ok(Some(Ok(chunk))) => chunk,
        };
        self.read += chunk.len() as u64;
        if self.read > self.limit {
            return Err(self.too_large());
        }
        Ok(Some(chunk))
    }

    /// The whole body, in memory: only for the small bodies (a batch's keys, a manifest).
    pub(super) async fn read_all(mut self) -> Result<Bytes, Refusal> {
        let mut all = BytesMut::new();
        while let Some(chunk) = self.next().await? {
            all.extend_from_slice(&chunk);
        }
        Ok(all.freeze())
    }

    /// The bytes read so far.
    pub(super) fn len(&self) -> u64 {
        self.read
    }
}
