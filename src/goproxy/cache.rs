//! The module proxy's cache: where answers are kept ([`ModStore`]; on any store of entries,
//! a storage directory or a bucket, in [`super::EntryModStore`]) and the rules that decide, for one request, whether to serve the kept
//! answer or to fetch ([`ModCache::serve`]). As everywhere in goremotecache, the local store
//! is the authority and the upstreams stand behind it.
//!
//! The rules, by the request's [`Caching`]:
//!
//! - [`Caching::Immutable`] (a version's `.info`, `.mod` and `.zip`, checksum lookups and
//!   tiles): a stored answer is served without asking anyone ([`Served::Hit`]); a miss is
//!   fetched, stored if found, and served ([`Served::Fetched`]).
//! - [`Caching::Mutable`] (`@v/list`, `@latest`, a query's `.info`, a database's `latest`): a
//!   stored answer younger than the TTL is served as it is; an older one, or none, is fetched
//!   again and replaced. When the upstreams fail (an error, not "not found"), the stored answer
//!   is served however old ([`Served::Stale`]); with none, the failure is the answer.
//! - [`Caching::Local`] (`sumdb/<name>/supported`): the caller answers it; [`Served::Local`].
//!
//! For both, "not found" (404 or 410) passes through as [`Served::NotFound`] and is never
//! stored; a failure is never stored either. A stored answer of a mutable request is kept
//! when the upstreams say "not found": the go command sees the 404 (the upstreams' word wins
//! while they answer), and the copy is only ever served again when every upstream fails,
//! which is what it is kept for. A failed put (a full disk) is logged and the fetched answer
//! served all the same; a failed read of the store is logged and taken as a miss.
//!
//! Single flight: requests for one storage key wait for one fetch. The first becomes the
//! leader and fetches; the others wait for its outcome and then read the stored copy (or pass
//! on its "not found" or its failure) without fetching. If the leader is dropped mid-fetch (its
//! client went away), a waiting request takes its place and fetches.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::watch;

use super::body::{Body, FetchError, Fetched};
use super::fetch::Fetcher;
use super::path::{Caching, Request};
use crate::fsutil;

/// The default TTL of a mutable answer.
pub const DEFAULT_LIST_TTL: Duration = Duration::from_secs(60);

/// An answer's bytes, ready to send: a small one in memory, a larger one in a file of its own
/// (positioned at the start, not shared with another reader). Reads as the answer's bytes.
#[derive(Debug)]
pub enum Answer {
    Bytes(io::Cursor<Bytes>),
    File(File),
}

impl Answer {
    /// An answer held in memory.
    pub fn bytes(bytes: impl Into<Bytes>) -> Self {
        Answer::Bytes(io::Cursor::new(bytes.into()))
    }
}

impl io::Read for Answer {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Answer::Bytes(cursor) => cursor.read(buf),
            Answer::File(file) => file.read(buf),
        }
    }
}

/// A stored answer, ready to send.
#[derive(Debug)]
pub struct Stored {
    pub body: Answer,
    pub len: u64,
    /// When it was stored (its fetch time).
    pub modified: SystemTime,
}

/// Where the module proxy keeps its answers, by [`Request::storage_key`].
///
/// Contract: a key is a storage key, and an implementation may refuse (with
/// [`io::ErrorKind::InvalidInput`]) any other; [`ModStore::get`] of a key never stored, or
/// removed, is `Ok(None)`, a miss, and never an error; [`ModStore::put`] is atomic (a reader
/// sees the old answer or the new one whole, never a part) and replaces what the key held.
#[async_trait]
pub trait ModStore: Send + Sync + std::fmt::Debug {
    /// The answer stored under `key`, or `None`.
    async fn get(&self, key: &str) -> io::Result<Option<Stored>>;

    /// Stores `body` under `key`, replacing any answer there. `modified` of a later
    /// [`ModStore::get`] is the time of the put (or of the body's last write, just before).
    async fn put(&self, key: &str, body: Body) -> io::Result<()>;
}

#[async_trait]
impl<S: ModStore + ?Sized> ModStore for std::sync::Arc<S> {
    async fn get(&self, key: &str) -> io::Result<Option<Stored>> {
        (**self).get(key).await
    }

    async fn put(&self, key: &str, body: Body) -> io::Result<()> {
        (**self).put(key, body).await
    }
}

/// An answer to serve and its length.
#[derive(Debug)]
pub struct Content {
    pub body: Answer,
    pub len: u64,
}

/// How [`ModCache::serve`] answered.
#[derive(Debug)]
pub enum Served {
    /// From the store, without asking an upstream (or after another request's fetch).
    Hit(Content),
    /// Fetched from an upstream for this request.
    Fetched(Content),
    /// From the store, older than the TTL, because every upstream failed.
    Stale(Content),
    /// The upstreams said "not found" with this status (404 or 410): pass it on.
    NotFound { status: u16 },
    /// A [`Caching::Local`] request: the caller answers it, nothing was fetched or read.
    Local,
}

impl Served {
    /// The `result` label of `goremotecache_goproxy_requests_total`: `hit`, `miss` (fetched
    /// from an upstream), `fallback` (stored, served because the upstreams failed),
    /// `not_found` or `local`.
    pub fn result_label(&self) -> &'static str {
        match self {
            Served::Hit(_) => "hit",
            Served::Fetched(_) => "miss",
            Served::Stale(_) => "fallback",
            Served::NotFound { .. } => "not_found",
            Served::Local => "local",
        }
    }

    /// The content to send, if any.
    pub fn content(self) -> Option<Content> {
        match self {
            Served::Hit(content) | Served::Fetched(content) | Served::Stale(content) => {
                Some(content)
            }
            Served::NotFound { .. } | Served::Local => None,
        }
    }
}

/// Why a request has no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServeError {
    /// The upstreams failed and nothing was stored to fall back on.
    #[error(transparent)]
    Fetch(#[from] FetchError),
}

/// What a leader tells the requests that waited for its fetch.
#[derive(Debug, Clone)]
enum Flight {
    /// Found and stored: read the store.
    Stored,
    /// Found but not stored (the put failed): fetch for yourself.
    Unstored,
    NotFound(u16),
    Failed(FetchError),
}

/// The cache in front of a [`Fetcher`] (see the module doc for the rules).
#[derive(Debug)]
pub struct ModCache<S> {
    store: S,
    fetcher: Fetcher,
    list_ttl: Duration,
    /// The fetches in flight, by storage key: the receiver that waiters clone.
    in_flight: Mutex<HashMap<String, watch::Receiver<Option<Flight>>>>,
}

/// Removes a fetch from the in-flight map when its leader is done or dropped.
struct Leading<'a> {
    in_flight: &'a Mutex<HashMap<String, watch::Receiver<Option<Flight>>>>,
    key: &'a str,
    sender: watch::Sender<Option<Flight>>,
}

impl Leading<'_> {
    fn finish(self, flight: Flight) {
        // Removed first, so that a request arriving after this reads the store itself.
        crate::sync::lock(self.in_flight).remove(self.key);
        self.sender.send_replace(Some(flight));
    }
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        // After `finish`, the key may already belong to a new leader: remove only our own
        // entry. A dropped leader's waiters see the channel close and try again.
        let mut map = crate::sync::lock(self.in_flight);
        if map
            .get(self.key)
            .is_some_and(|receiver| receiver.same_channel(&self.sender.subscribe()))
        {
            map.remove(self.key);
        }
    }
}

/// The age of a stored answer; one from the future (a clock set back) counts as expired, so
/// that a bad clock cannot keep an answer fresh forever.
fn is_fresh(modified: SystemTime, ttl: Duration) -> bool {
    SystemTime::now()
        .duration_since(modified)
        .is_ok_and(|age| age < ttl)
}

impl<S: ModStore> ModCache<S> {
    /// A cache over `store`, fetching through `fetcher`; mutable answers are fresh for
    /// `list_ttl` ([`DEFAULT_LIST_TTL`] normally).
    pub fn new(store: S, fetcher: Fetcher, list_ttl: Duration) -> Self {
        Self {
            store,
            fetcher,
            list_ttl,
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn fetcher(&self) -> &Fetcher {
        &self.fetcher
    }

    /// Answers `request` by the rules in the module doc.
    pub async fn serve(&self, request: &Request) -> Result<Served, ServeError> {
        let caching = request.caching();
        if caching == Caching::Local {
            return Ok(Served::Local);
        }
        let key = request.storage_key();
        loop {
            let fresh = |stored: &Stored| {
                caching == Caching::Immutable || is_fresh(stored.modified, self.list_ttl)
            };
            let stored = match self.read(&key).await {
                Some(stored) if fresh(&stored) => break Ok(Served::Hit(stored.into())),
                other => other,
            };
            let waiting = {
                let mut map = crate::sync::lock(&self.in_flight);
                match map.get(&key) {
                    Some(receiver) => Err(receiver.clone()),
                    None => {
                        let (sender, receiver) = watch::channel(None);
                        map.insert(key.clone(), receiver);
                        Ok(Leading {
                            in_flight: &self.in_flight,
                            key: &key,
                            sender,
                        })
                    }
                }
            };
            match waiting {
                Ok(leading) => break self.lead(request, &key, stored, leading).await,
                Err(mut receiver) => {
                    let flight = match receiver.wait_for(Option::is_some).await {
                        Ok(flight) => flight.clone(),
                        // The leader was dropped: start over, perhaps as the leader.
                        Err(_) => continue,
                    };
                    match flight {
                        Some(Flight::Stored) => match self.read(&key).await {
                            Some(stored) => break Ok(Served::Hit(stored.into())),
                            None => continue,
                        },
                        Some(Flight::NotFound(status)) => break Ok(Served::NotFound { status }),
                        Some(Flight::Failed(err)) => {
                            break match self.read(&key).await {
                                Some(stored) => Ok(Served::Stale(stored.into())),
                                None => Err(err.into()),
                            };
                        }
                        Some(Flight::Unstored) | None => {
                            // The store refused the leader's answer: fetch for ourselves,
                            // without a flight (the store is failing, not busy).
                            break self.fetch_alone(request, &key).await;
                        }
                    }
                }
            }
        }
    }

    /// Fetches as the leader of `key`'s flight and tells the waiters how it went.
    async fn lead(
        &self,
        request: &Request,
        key: &str,
        stored: Option<Stored>,
        leading: Leading<'_>,
    ) -> Result<Served, ServeError> {
        match self.fetcher.fetch(request).await {
            Ok(Fetched::Found(body)) => {
                let served = body.file.reopen().map(|file| Content {
                    body: Answer::File(file),
                    len: body.len,
                });
                let put = self.store.put(key, body).await;
                if let Err(err) = &put {
                    tracing::warn!(key, "storing a module proxy answer: {err}");
                }
                leading.finish(if put.is_ok() {
                    Flight::Stored
                } else {
                    Flight::Unstored
                });
                match served {
                    Ok(content) => Ok(Served::Fetched(content)),
                    Err(err) => Err(reopen_error(&err).into()),
                }
            }
            Ok(Fetched::NotFound { status }) => {
                leading.finish(Flight::NotFound(status));
                Ok(Served::NotFound { status })
            }
            Err(err) => {
                leading.finish(Flight::Failed(err.clone()));
                match stored {
                    Some(stored) => Ok(Served::Stale(stored.into())),
                    None => Err(err.into()),
                }
            }
        }
    }

    /// Fetches without a flight and serves the answer without storing it: for a waiter whose
    /// leader could not store.
    async fn fetch_alone(&self, request: &Request, key: &str) -> Result<Served, ServeError> {
        match self.fetcher.fetch(request).await {
            Ok(Fetched::Found(body)) => {
                let file = body.file.reopen().map_err(|err| reopen_error(&err))?;
                Ok(Served::Fetched(Content {
                    body: Answer::File(file),
                    len: body.len,
                }))
            }
            Ok(Fetched::NotFound { status }) => Ok(Served::NotFound { status }),
            Err(err) => match self.read(key).await {
                Some(stored) => Ok(Served::Stale(stored.into())),
                None => Err(err.into()),
            },
        }
    }

    /// The stored answer; a failed read is logged and taken as a miss.
    async fn read(&self, key: &str) -> Option<Stored> {
        match self.store.get(key).await {
            Ok(stored) => stored,
            Err(err) => {
                tracing::warn!(key, "reading the module proxy store: {err}");
                None
            }
        }
    }
}

impl From<Stored> for Content {
    fn from(stored: Stored) -> Self {
        Content {
            body: stored.body,
            len: stored.len,
        }
    }
}

/// A fetched body that could not be opened again to serve it.
fn reopen_error(err: &io::Error) -> FetchError {
    FetchError::Spool {
        dir: String::from("the fetch spool"),
        message: fsutil::explain_io(err),
    }
}

#[cfg(test)]
mod tests;
