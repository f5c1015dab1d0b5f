//! One namespace of a bounded storage directory ([`super::BoundedDisk`]): a [`RemoteStore`]
//! on its directory whose reads and writes go through the shared index and bound, and the
//! server's put path (reserve, spool, commit the verified file).

use std::fs::File;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::{BoundedDisk, EntryKey, Reservation};
use crate::ids::{ActionId, BuildKey};
use crate::store::dir::{DiskStore, VerifiedEntry};
use crate::store::{ByteStream, PutOutcome, RemoteError, RemoteStore, Upload};

/// The entries of one namespace (or the un-namespaced ones) of a [`BoundedDisk`]. Cheap to
/// make and to clone: two shared handles and a number.
#[derive(Debug, Clone)]
pub struct BoundedSpace {
    bounded: Arc<BoundedDisk>,
    space: u32,
    disk: Arc<DiskStore>,
}

impl BoundedSpace {
    pub(super) fn new(bounded: Arc<BoundedDisk>, space: u32, disk: Arc<DiskStore>) -> Self {
        Self {
            bounded,
            space,
            disk,
        }
    }

    fn key(&self, action: &ActionId) -> EntryKey {
        EntryKey {
            space: self.space,
            action: *action,
        }
    }

    /// This namespace's directory store (its `tmp/` is the storage directory's own).
    pub fn disk(&self) -> &DiskStore {
        &self.disk
    }

    /// The bounded store this namespace is part of.
    pub fn bounded(&self) -> &Arc<BoundedDisk> {
        &self.bounded
    }

    /// Admits a put of `len` bytes for `action` in this namespace under the bound shared by
    /// all namespaces, or refuses it with [`RemoteError::Full`] (see
    /// [`BoundedDisk`]'s admission).
    pub fn reserve(&self, action: &ActionId, len: u64) -> Result<Reservation, RemoteError> {
        self.bounded.reserve(self.key(action), &self.disk, len)
    }

    /// The entry for `action` opened for reading, with its size ([`DiskStore::open_entry`]),
    /// its use recorded as a [`RemoteStore::get`] hit's is: what the server's `GET` answers
    /// from, with a `Content-Length`.
    pub fn open(&self, action: &ActionId) -> Result<Option<(File, u64)>, RemoteError> {
        let found = self
            .disk
            .open_entry(action)
            .map_err(|err| RemoteError::Other(format!("storage: {err}")))?;
        if found.is_some() {
            self.bounded.accessed(self.key(action), &self.disk);
        }
        Ok(found)
    }

    /// Commits a verified entry ([`DiskStore::commit_verified`]) under its reservation and
    /// records the write. Blocking.
    pub fn commit_verified(
        &self,
        action: &ActionId,
        verified: VerifiedEntry,
        reservation: Reservation,
    ) -> Result<PutOutcome, RemoteError> {
        self.bounded
            .commit_verified(self.key(action), &self.disk, verified, reservation)
    }
}

#[async_trait]
impl RemoteStore for BoundedSpace {
    async fn get(&self, action: &ActionId) -> Result<Option<ByteStream>, RemoteError> {
        let found = self.disk.get(action).await?;
        if found.is_some() {
            self.bounded.accessed(self.key(action), &self.disk);
        }
        Ok(found)
    }

    async fn put(&self, action: &ActionId, entry: Upload) -> Result<PutOutcome, RemoteError> {
        // Not the server's path (it commits a verified spool file); for completeness: the
        // same admission, then the directory's own put.
        let len = entry.len();
        if self.bounded.would_overflow(&self.key(action), len) {
            return Err(RemoteError::Full("the storage is full".into()));
        }
        let outcome = self.disk.put(action, entry).await?;
        let size = self.disk.size(action).unwrap_or(len);
        self.bounded
            .stored(self.key(action), &self.disk, outcome, size);
        Ok(outcome)
    }

    async fn head(&self, action: &ActionId) -> Result<Option<u64>, RemoteError> {
        let found = self.disk.head(action).await?;
        if found.is_some() {
            self.bounded.accessed(self.key(action), &self.disk);
        }
        Ok(found)
    }

    /// Deletes this namespace's entries and manifests (no other namespace's), and indexes
    /// what is left again.
    async fn clear(&self, progress: &(dyn Fn(u64) + Send + Sync)) -> Result<u64, RemoteError> {
        let deleted = self.disk.clear(progress).await;
        self.bounded
            .rescan()
            .map_err(|err| RemoteError::Other(format!("storage: {err}")))?;
        deleted
    }

    fn location(&self) -> String {
        self.disk.location()
    }

    async fn get_manifest(&self, key: &BuildKey) -> Result<Option<Bytes>, RemoteError> {
        self.disk.get_manifest(key).await
    }

    async fn put_manifest(&self, key: &BuildKey, manifest: Bytes) -> Result<(), RemoteError> {
        self.disk.put_manifest(key, manifest).await
    }

    /// Made from the index, on a blocking thread (a million entries take some milliseconds).
    async fn get_filter(&self) -> Result<Option<Bytes>, RemoteError> {
        let (bounded, space) = (self.bounded.clone(), self.space);
        let filter = tokio::task::spawn_blocking(move || bounded.key_filter(space))
            .await
            .map_err(|err| RemoteError::Other(err.to_string()))?;
        Ok(Some(Bytes::from(filter.encode())))
    }
}
