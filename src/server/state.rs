//! What every handler of the server shares ([`ServerState`]): the storage of each namespace,
//! the tokens, the bounds and the metrics.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use tokio::sync::Semaphore;

use super::body::BodyReader;
use super::metrics::Metrics;
use super::refusal::Refusal;
use super::storage::{Place, Storage};
use super::tokens::{Scope, Tokens};
use crate::config::ServeTimeouts;
use crate::ids::Namespace;

/// What a running server needs.
#[derive(Debug)]
pub struct ServerState {
    /// The entries of every namespace. On a storage directory a `PUT` is admitted under its
    /// bound ([`BoundedSpace::reserve`](crate::store::bounded::BoundedSpace::reserve), 507
    /// when full), its body spooled into its `tmp/`, verified once, and that very file renamed
    /// into place ([`BoundedSpace::commit_verified`](crate::store::bounded::BoundedSpace::commit_verified))
    /// instead of handed to the store's `put`, which would copy and verify it again. Any other
    /// store (S3) uploads from the spool file.
    pub storage: Storage,
    pub tokens: RwLock<Tokens>,
    pub anonymous_read: bool,
    pub max_entry_size: u64,
    /// Where `PUT` bodies are spooled when the storage is not a directory.
    pub spool_dir: PathBuf,
    /// Requests handled at once; past it, 503.
    pub in_flight: Arc<Semaphore>,
    pub timeouts: ServeTimeouts,
    pub metrics: Metrics,
    /// The module proxy at `/mod/` (`--goproxy`).
    pub goproxy: Option<crate::goproxy::http::Proxy>,
}

impl ServerState {
    /// The storage of `namespace`, for a request that needs `scope` (a write makes a
    /// namespace's directory; a read never does).
    pub(super) async fn place(
        &self,
        namespace: Option<&Namespace>,
        scope: Scope,
    ) -> Result<Place, Refusal> {
        self.storage
            .place(namespace, scope == Scope::ReadWrite)
            .await
            .map_err(|err| storage_failure(self, "opening a namespace", err))
    }

    /// A reader for a request body that is `what` and may have at most `limit` bytes, under
    /// the body timeout.
    pub(super) fn body(
        &self,
        what: &'static str,
        headers: &HeaderMap,
        body: Body,
        limit: u64,
    ) -> Result<BodyReader, Refusal> {
        BodyReader::new(what, headers, body, limit, self.timeouts.body)
    }

    /// Counts one request and its latency.
    pub(super) fn observe(&self, method: &'static str, response: &Response, start: Instant) {
        self.metrics
            .observe(method, response.status().as_u16(), start.elapsed());
    }
}

/// A storage failure: counted, logged, answered 503.
pub(super) fn storage_failure(
    state: &ServerState,
    what: &str,
    err: impl std::fmt::Display,
) -> Refusal {
    state.metrics.storage_errors.inc();
    tracing::warn!("storage {what}: {err}");
    Refusal::new(StatusCode::SERVICE_UNAVAILABLE, format!("storage: {err}"))
}
