//! What `gc-remote` ([`crate::cache::gc`]) and `clear-remote` need of a store beyond
//! [`super::RemoteStore`]: the objects of an area (entries, or prefetch manifests) of a
//! namespace listed with their sizes and last-modified times, the namespaces found under the
//! prefix, one object read whole, and many deleted at once.
//!
//! The object stores (S3, GCS, Azure Blob: [`super::object::ObjectStore`]) have an inventory.
//! A `goremotecache serve` server does not offer one over HTTP: with S3 storage, `gc-remote` runs on the bucket directly, with the server's
//! `--s3-*` options; its directory storage is bounded by the server itself. Keys here are
//! relative to the store's prefix, the un-namespaced one: `v1/<actionid-hex>` as
//! [`super::entry_key`] makes it, `ns/<NAME>/v1/<actionid-hex>` in a namespace. Nothing
//! outside the prefix is ever listed or deleted.

use std::fmt;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

use super::RemoteError;
use super::namespace::Selection;
use crate::ids::Namespace;

/// A part of the store's prefix, listed on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Area {
    /// `v1/`: the entries ([`super::entry_key`]).
    Entries,
    /// `prefetch/`: the prefetch manifests ([`super::manifest_key`]).
    Manifests,
    /// `pack/`: the prefetch packs ([`super::pack_key`]).
    Packs,
}

impl Area {
    /// The folder listed, below a namespace's prefix.
    pub fn dir(self) -> &'static str {
        match self {
            Area::Entries => "v1/",
            Area::Manifests => "prefetch/",
            Area::Packs => "pack/",
        }
    }

    /// The folder listed in `namespace`, below the store's prefix: `v1/`, `ns/<NAME>/v1/`.
    pub fn dir_in(self, namespace: Option<&Namespace>) -> String {
        format!("{}{}", namespace_dir(namespace), self.dir())
    }
}

/// The folder of `namespace` below the store's prefix, with its slash: `ns/<NAME>/`, or
/// nothing for the un-namespaced layout.
pub fn namespace_dir(namespace: Option<&Namespace>) -> String {
    namespace.map_or_else(String::new, |ns| format!("{}/", ns.path()))
}

/// `key` below the folder of `namespace` (`v1/<hex>` from `ns/<NAME>/v1/<hex>`), if it is in
/// that folder. A key of the un-namespaced layout is never under `ns/`: that is where the
/// namespaces are.
pub fn below_namespace<'k>(key: &'k str, namespace: Option<&Namespace>) -> Option<&'k str> {
    match namespace {
        None => (!key.starts_with(NAMESPACES)).then_some(key),
        Some(ns) => key
            .strip_prefix(NAMESPACES)?
            .strip_prefix(ns.as_str())?
            .strip_prefix('/'),
    }
}

/// How reports name a namespace of the store at `location` (the un-namespaced prefix):
/// `s3://bucket/prefix`, `s3://bucket/prefix (namespace pr-1)`.
pub fn describe(location: &str, namespace: Option<&Namespace>) -> String {
    match namespace {
        None => location.to_string(),
        Some(ns) => format!("{location} (namespace {ns})"),
    }
}

/// The folder that holds the namespaces, below the store's prefix.
pub const NAMESPACES: &str = "ns/";

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
/// - `list` yields every object of the area of a namespace once (in any order; directories
///   are not objects), with keys relative to the store's prefix. Objects written while it
///   runs may or may not be listed.
/// - `namespace_dirs` names the folders directly under `ns/`, one level only, as they are
///   (unchecked: [`namespaces`] sorts them into names and others).
/// - `read` reads an object whole, up to `limit` bytes (more is an error); `Ok(None)` if it
///   is gone.
/// - `delete` deletes the objects named, in as few requests as the store allows; a key that
///   is already gone is not an error.
#[async_trait]
pub trait Inventory: Send + Sync + fmt::Debug {
    async fn list(
        &self,
        namespace: Option<&Namespace>,
        area: Area,
    ) -> Result<BoxStream<'static, Result<StoredObject, RemoteError>>, RemoteError>;

    async fn namespace_dirs(&self) -> Result<Vec<String>, RemoteError>;

    async fn read(&self, key: &str, limit: usize) -> Result<Option<Bytes>, RemoteError>;

    async fn delete(&self, keys: &[String]) -> Result<(), RemoteError>;

    /// Writes `bytes` as the object `key`, replacing it (the key filters, [`super::filter`]).
    async fn write(&self, key: &str, bytes: Bytes) -> Result<(), RemoteError>;

    /// The most keys one `delete` should be given (one request's worth).
    fn delete_batch(&self) -> usize;

    /// Where the objects are, for messages: `s3://bucket/prefix`.
    fn location(&self) -> String;
}

/// The namespaces found under a store's prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Found {
    /// Every folder under `ns/` whose name is a namespace name, sorted.
    pub namespaces: Vec<Namespace>,
    /// Folders under `ns/` whose names are not namespace names (never written by this
    /// program, and never touched), with the reason.
    pub skipped: Vec<(String, String)>,
}

impl Found {
    /// What `selection` names, in order: the un-namespaced area (`None`) first, then the
    /// namespaces. `One` names its namespace whether it was found or not.
    pub fn select(&self, selection: &Selection) -> Vec<Option<Namespace>> {
        match selection {
            Selection::Unnamespaced => vec![None],
            Selection::One(namespace) => vec![Some(namespace.clone())],
            Selection::All => std::iter::once(None)
                .chain(self.namespaces.iter().cloned().map(Some))
                .collect(),
        }
    }
}

/// Lists the folders under `ns/` and sorts them into namespaces and others.
pub async fn namespaces(store: &dyn Inventory) -> Result<Found, RemoteError> {
    let mut found = Found::default();
    for dir in store.namespace_dirs().await? {
        match Namespace::parse(&dir) {
            Ok(namespace) => found.namespaces.push(namespace),
            Err(why) => found.skipped.push((dir, why)),
        }
    }
    found.namespaces.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    found.namespaces.dedup();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_placed_in_their_namespace_only() {
        let main = Namespace::parse("main").unwrap();
        let pr = Namespace::parse("pr-1").unwrap();
        assert_eq!(Area::Entries.dir_in(None), "v1/");
        assert_eq!(Area::Manifests.dir_in(Some(&main)), "ns/main/prefetch/");
        assert_eq!(below_namespace("v1/ab", None), Some("v1/ab"));
        assert_eq!(below_namespace("ns/main/v1/ab", None), None);
        assert_eq!(below_namespace("ns/main/v1/ab", Some(&main)), Some("v1/ab"));
        assert_eq!(below_namespace("ns/main/v1/ab", Some(&pr)), None);
        assert_eq!(below_namespace("ns/mainx/v1/ab", Some(&main)), None);
        assert_eq!(below_namespace("v1/ab", Some(&main)), None);
    }
}
