//! Namespaces: a build writes into its own namespace of the remote store and reads its own,
//! then others, in order (`--namespace pr-7 --read-namespaces main`), so that a pull request
//! reads main's results without being able to write into them. See docs/ci.md for recipes and
//! docs/format.md for the layout.
//!
//! Each namespace is a store of its own, wrapped as [`super::open_store`] wraps one (its own
//! time bound, retries and circuit breaker: a token that may not read one namespace switches
//! off that one only). [`Namespaces`] holds them, own first, and asks them as one:
//!
//! - [`Namespaces::get`] asks every namespace at once and answers with the first in order
//!   that has the entry, so a miss costs one round trip however many namespaces are read;
//! - [`Namespaces::get_manifest`] looks for the build's manifest in its own namespace, then in
//!   each read namespace in order (a pull request's first run prefetches what main's last
//!   run used);
//! - writes (entries, manifests) go only to the own namespace: the read namespaces' stores
//!   are read-only whatever the mode.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;

use super::{
    ByteStream, ReadOnly, RemoteError, RemoteMode, RemoteStore, StoreConfig, open_store_with_faults,
};
use crate::ids::{ActionId, BuildKey, Namespace};

/// Where a build writes, and what it reads after that, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespacePlan {
    /// `None`: the un-namespaced layout.
    pub own: Option<Namespace>,
    /// Read after the own namespace, in this order; never the own one, never twice.
    pub reads: Vec<Namespace>,
}

impl NamespacePlan {
    /// Every namespace read, own first.
    pub fn all(&self) -> impl Iterator<Item = Option<&Namespace>> {
        std::iter::once(self.own.as_ref()).chain(self.reads.iter().map(Some))
    }
}

/// Which namespaces a maintenance command (`clear-remote`, `gc-remote`) works on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// The un-namespaced entries and manifests (the default).
    Unnamespaced,
    One(Namespace),
    /// The un-namespaced ones and every namespace.
    All,
}

impl StoreConfig {
    /// The same store, seen from `namespace` (`None`: the un-namespaced layout).
    pub fn in_namespace(&self, namespace: Option<&Namespace>) -> StoreConfig {
        let Some(namespace) = namespace else {
            return self.clone();
        };
        match self {
            StoreConfig::S3(s3) => StoreConfig::S3(s3.in_namespace(namespace)),
            StoreConfig::Gcs(gcs) => StoreConfig::Gcs(gcs.in_namespace(namespace)),
            StoreConfig::Azblob(azblob) => StoreConfig::Azblob(azblob.in_namespace(namespace)),
            StoreConfig::Http(http) => StoreConfig::Http(super::http::HttpConfig {
                namespace: Some(namespace.clone()),
                ..http.clone()
            }),
        }
    }
}

/// The stores of the namespaces a build reads, own first.
#[derive(Debug, Clone)]
pub struct Namespaces {
    names: Vec<Option<Namespace>>,
    stores: Vec<Arc<dyn RemoteStore>>,
}

impl Namespaces {
    /// Opens one store per namespace of `plan`, wrapped for `mode` (the read namespaces
    /// read-only), `fault_rate` of their requests failing on purpose
    /// (`--remote-fault-rate`). No network or credential work happens here.
    pub fn open(
        config: &StoreConfig,
        plan: &NamespacePlan,
        mode: RemoteMode,
        timeout: Duration,
        fault_rate: f64,
    ) -> Result<Self, RemoteError> {
        let mut namespaces = Self {
            names: Vec::new(),
            stores: Vec::new(),
        };
        for (index, name) in plan.all().enumerate() {
            let config = config.in_namespace(name);
            let store = open_store_with_faults(&config, mode, timeout, fault_rate)?;
            let store: Arc<dyn RemoteStore> = match index {
                0 => store,
                _ => Arc::new(ReadOnly(store)),
            };
            namespaces.names.push(name.cloned());
            namespaces.stores.push(store);
        }
        Ok(namespaces)
    }

    /// One store (no namespaces, or tests' own stores).
    pub fn single(store: Arc<dyn RemoteStore>) -> Self {
        Self {
            names: vec![None],
            stores: vec![store],
        }
    }

    /// Stores given by the caller, own first (tests wrap stores of their own).
    pub fn from_stores(stores: Vec<(Option<Namespace>, Arc<dyn RemoteStore>)>) -> Self {
        assert!(!stores.is_empty(), "the own namespace comes first");
        let (names, stores) = stores.into_iter().unzip();
        Self { names, stores }
    }

    /// The own namespace's store: the one written.
    pub fn own(&self) -> &Arc<dyn RemoteStore> {
        &self.stores[0]
    }

    /// The name of the namespace at `index` (`None`: the un-namespaced layout).
    pub fn name(&self, index: usize) -> Option<&Namespace> {
        self.names[index].as_ref()
    }

    /// Every namespace's name, own first.
    pub fn names(&self) -> &[Option<Namespace>] {
        &self.names
    }

    pub fn store(&self, index: usize) -> &Arc<dyn RemoteStore> {
        &self.stores[index]
    }

    /// Where `name` is in the read order, if it is read.
    pub fn index_of(&self, name: Option<&Namespace>) -> Option<usize> {
        self.names.iter().position(|n| n.as_ref() == name)
    }

    /// Whether any namespace is worth asking now.
    pub fn usable(&self) -> bool {
        self.stores.iter().any(|store| store.usable())
    }

    /// Asks every usable namespace for `action` at once; the first in order that has it wins,
    /// with its index (see `first_found`).
    pub async fn get(&self, action: &ActionId) -> Result<Option<(usize, ByteStream)>, RemoteError> {
        self.first_found(|store| store.get(action)).await
    }

    /// The manifest stored under `key` in the own namespace, else in the first read namespace
    /// in order that has one, with its index; all are asked at once.
    pub async fn get_manifest(
        &self,
        key: &BuildKey,
    ) -> Result<Option<(usize, Bytes)>, RemoteError> {
        self.first_found(|store| store.get_manifest(key)).await
    }

    /// Asks every usable namespace at once, and answers with the first in order that found
    /// something. A later namespace's answer is not waited for once an earlier one has found
    /// it (its request is dropped); an earlier one's answer is waited for before a later one's
    /// is taken. An error is returned only if no namespace found it and one failed.
    async fn first_found<'a, T, Fut>(
        &'a self,
        ask: impl Fn(&'a Arc<dyn RemoteStore>) -> Fut,
    ) -> Result<Option<(usize, T)>, RemoteError>
    where
        Fut: Future<Output = Result<Option<T>, RemoteError>> + 'a,
    {
        if self.stores.len() == 1 {
            return Ok(ask(&self.stores[0]).await?.map(|found| (0, found)));
        }
        let mut answers: Vec<Option<Result<Option<T>, RemoteError>>> = Vec::new();
        let mut pending = FuturesUnordered::new();
        for (index, store) in self.stores.iter().enumerate() {
            if store.usable() {
                answers.push(None);
                let asked = ask(store);
                pending.push(async move { (index, asked.await) });
            } else {
                answers.push(Some(Ok(None)));
            }
        }
        let mut next = 0;
        let mut error = None;
        loop {
            // Settle, in order, every namespace whose answer is in.
            while let Some(answer) = answers.get_mut(next).and_then(Option::take) {
                match answer {
                    Ok(Some(found)) => return Ok(Some((next, found))),
                    Ok(None) | Err(RemoteError::SwitchedOff) => {}
                    Err(err) => {
                        error.get_or_insert(err);
                    }
                }
                next += 1;
            }
            if next == answers.len() {
                return error.map_or(Ok(None), Err);
            }
            let (index, answer) = (pending.next().await)
                .expect("every namespace not settled has its request pending");
            answers[index] = Some(answer);
        }
    }
}

#[cfg(test)]
mod tests;
