//! The module proxy (issue 14): goremotecache answers the go command's
//! GOPROXY protocol and proxies checksum databases under `/mod/`, on the HTTP server and on
//! the daemon, caching what it fetches from the upstreams that its own GOPROXY list names.
//! This folder holds the proxy's library, below the HTTP server that will mount it:
//!
//! - [`path`]: module paths, versions and the other revisions, their `!` case-encoding, and
//!   [`Request`], one request of the protocol parsed from the path under `/mod/`. A path that
//!   does not parse is refused (the server answers 400) before anything is fetched or stored;
//!   one that does says how long its answer may be kept ([`Caching`]) and names the one object
//!   that stores it ([`Request::storage_key`]).
//! - [`upstream`]: the proxy's own GOPROXY list ([`Upstreams`]) and the go command's rule for
//!   when the next element is tried ([`Upstreams::next_after`]).
//! - [`fetch`]: [`Fetcher`], which fetches one request from that list over HTTP into a
//!   bounded temporary file, and picks the failure to report.
//! - [`direct`]: `direct` in that list, through the go command in a private module cache
//!   (off unless configured: [`FetchError::DirectUnsupported`]).
//! - [`cache`]: [`ModCache`], the caching rules in front of the fetcher (immutable answers
//!   cache-first, mutable ones fetched with a short TTL and served stale only when the
//!   upstreams fail, one fetch per key at a time), over a [`ModStore`].
//! - [`entry_store`]: [`EntryModStore`], answers as entries of any store (the server's
//!   storage directory or bucket, the daemon's cache directory and bucket), under hashed keys,
//!   checked on every read.
//! - [`tiered`]: [`TieredModStore`], the daemon's store: its cache directory's `mod/` in front
//!   of its remote tier.
//!
//! The rules follow the go command's (`golang.org/x/mod/module` for paths and versions, the
//! "GOPROXY protocol" section of the go modules reference for requests and the list), written
//! here afresh. Where this code is stricter than the go command, the item's doc says so and
//! why: a proxy that refuses a strange path costs a 400, one that stores it under a bad name
//! could cost the cache.

pub mod body;
pub mod cache;
pub mod direct;
pub mod entry_store;
pub mod fetch;
pub mod http;
pub mod path;
pub mod tiered;
pub mod upstream;

#[cfg(test)]
mod testserver;

pub use body::{Body, FetchError, Fetched};
pub use cache::{
    Answer, Content, DEFAULT_LIST_TTL, ModCache, ModStore, ServeError, Served, Stored,
};
pub use direct::DirectConfig;
pub use entry_store::EntryModStore;
pub use fetch::{FetchConfig, Fetcher};
pub use path::{
    Caching, MAX_ELEMENT, MAX_REQUEST_PATH, ModulePath, PathError, Query, Request, Revision,
    SumdbName, Tile, Version,
};
pub use tiered::TieredModStore;
pub use upstream::{Fallback, Outcome, Upstream, UpstreamError, Upstreams};
