//! What `gc-remote` ([`crate::cache::gc`]) needs of a store beyond [`super::RemoteStore`]: the
//! objects of an area (entries, or prefetch manifests) listed with their sizes and
//! last-modified times, one read whole, and many deleted at once.
//!
//! Only the S3 backend has an inventory. A `goremotecache serve` server does not offer one
//! over HTTP: with S3 storage, `gc-remote` runs on the bucket directly, with the server's
//! `--s3-*` options; its directory storage is bounded by the server itself. Keys here are
//! relative to the store's prefix (`v1/<actionid-hex>`), as [`super::entry_key`] and
//! [`super::manifest_key`] make them, and nothing outside the prefix is ever listed or
//! deleted.

use std::fmt;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

use super::RemoteError;

/// A part of the store's prefix, listed on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Area {
    /// `v1/`: the entries ([`super::entry_key`]).
    Entries,
    /// `prefetch/`: the prefetch manifests ([`super::manifest_key`]).
    Manifests,
}

impl Area {
    /// The folder listed, below the store's prefix.
    pub fn dir(self) -> &'static str {
        match self {
            Area::Entries => "v1/",
            Area::Manifests => "prefetch/",
        }
    }
}

/// One object found by a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    /// The key below the store's prefix, such as `v1/<actionid-hex>`.
    pub key: String,
    /// Its size in the store (an entry's encoded, possibly compressed, bytes).
    pub size: u64,
    /// When it was last written, by the store's clock. A listing that does not say is given
    /// the time of the listing: an object of unknown age is never old.
    pub modified: SystemTime,
}

/// The objects of a store, for garbage collection. Contracts:
///
/// - `list` yields every object of the area once (in any order; directories are not
///   objects). Objects written while it runs may or may not be listed.
/// - `read` reads an object whole, up to `limit` bytes (more is an error); `Ok(None)` if it
///   is gone.
/// - `delete` deletes the objects named, in as few requests as the store allows; a key that
///   is already gone is not an error.
#[async_trait]
pub trait Inventory: Send + Sync + fmt::Debug {
    async fn list(
        &self,
        area: Area,
    ) -> Result<BoxStream<'static, Result<StoredObject, RemoteError>>, RemoteError>;

    async fn read(&self, key: &str, limit: usize) -> Result<Option<Bytes>, RemoteError>;

    async fn delete(&self, keys: &[String]) -> Result<(), RemoteError>;

    /// The most keys one `delete` should be given (one request's worth).
    fn delete_batch(&self) -> usize;

    /// Where the objects are, for messages: `s3://bucket/prefix`.
    fn location(&self) -> String;
}
