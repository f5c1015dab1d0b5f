//! A remote store on a local directory: the storage of `goremotecache serve --storage-dir`.
//!
//! Entries are files at `<dir>/v1/<xx>/<actionid-hex>`, in the entry format as uploaded. A put
//! is written to `<dir>/tmp/`, verified (header, size, sha256), and only then renamed into
//! place, without replacing an existing entry; so a server killed at any moment leaves
//! nothing torn or unverified where a get could find it. A caller that spools into `tmp/`
//! and verifies the file itself (the server, for a `PUT`) holds a [`VerifiedEntry`] and
//! commits it with [`DiskStore::commit_verified`]: the same file is renamed into place, not
//! copied or hashed again. Prefetch manifests are files at `<dir>/prefetch/<key-hex>`,
//! replaced by renames.
//!
//! A namespace ([`DiskStore::namespace`]) has the same layout one level down, in
//! `<dir>/ns/<NAME>/` (`v1/`, `prefetch/`), and shares the root's `tmp/`: one spool, swept
//! once, on the same file system as every namespace's entries so that a rename commits a put.
//! A name is one checked path segment ([`Namespace`]), and `ns/` and `ns/<NAME>/` are made
//! real directories before anything is written below them, so nothing lands outside `<dir>`.
//!
//! As in the local cache ([`crate::fsutil`]), nothing in the directory is followed through a
//! symlink and only regular files are entries: a FIFO, a symlink or a directory where an entry
//! should be is a miss (404 on GET and HEAD alike), never a blocked worker thread, and the
//! next put replaces it. Directories the store writes into are checked to be directories.

use std::fs;
use std::io::{self, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use bytes::Bytes;

use super::{ByteStream, MAX_MANIFEST, PutOutcome, RemoteError, RemoteStore, Upload};
use crate::fsutil::{self, open_regular, real_dir, regular_len};
use crate::ids::{ActionId, BuildKey, Namespace};
use crate::store::format;

/// The directory below a storage directory that holds its namespaces.
pub const NAMESPACES_DIR: &str = "ns";

/// Entries in a directory.
#[derive(Debug, Clone)]
pub struct DiskStore {
    root: PathBuf,
    tmp: PathBuf,
}

impl DiskStore {
    /// Opens (creating) the store at `root`.
    pub fn open(root: &Path) -> io::Result<Self> {
        let tmp = root.join("tmp");
        fsutil::create_private_dir_all(root)?;
        real_dir(&tmp)?;
        real_dir(&root.join("v1"))?;
        fsutil::remove_all_but_directories(&root.join("v1"))?;
        real_dir(&root.join("prefetch"))?;
        Ok(Self {
            root: root.to_path_buf(),
            tmp,
        })
    }

    /// The store of `namespace` inside this one: `<root>/ns/<NAME>/`, created if missing (a
    /// symlink or file in the place of `ns/` or `ns/<NAME>/` is replaced, never followed),
    /// sharing this store's `tmp/`. Blocking.
    pub fn namespace(&self, namespace: &Namespace) -> io::Result<Self> {
        let spaces = self.root.join(NAMESPACES_DIR);
        real_dir(&spaces)?;
        self.inner(spaces.join(namespace.as_str()))
    }

    /// A store at `root` inside this one, in the same layout, sharing this store's `tmp/`.
    fn inner(&self, root: PathBuf) -> io::Result<Self> {
        real_dir(&root)?;
        real_dir(&root.join("v1"))?;
        fsutil::remove_all_but_directories(&root.join("v1"))?;
        real_dir(&root.join("prefetch"))?;
        Ok(Self {
            root,
            tmp: self.tmp.clone(),
        })
    }

    /// The module proxy's store inside this one: `<root>/mod/`
    /// ([`crate::store::s3::MODULES`]), laid out like a namespace's, created if missing (a
    /// symlink or file in its place is replaced, never followed), sharing this store's
    /// `tmp/`. Blocking.
    pub fn modules(&self) -> io::Result<Self> {
        self.inner(self.root.join(super::s3::MODULES))
    }

    /// The namespaces found in `<root>/ns/`: the real directories there whose names are
    /// namespace names, and the count of anything else (left alone). No `ns/`, or one that is
    /// not a real directory, has none. Blocking.
    pub fn namespaces(&self) -> io::Result<(Vec<Namespace>, usize)> {
        let spaces = self.root.join(NAMESPACES_DIR);
        match fs::symlink_metadata(&spaces) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Ok((Vec::new(), 0)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
            Err(err) => return Err(err),
        }
        let mut found = Vec::new();
        let mut skipped = 0;
        for dir in fs::read_dir(&spaces)? {
            let dir = dir?;
            // `DirEntry::file_type` does not follow a symlink.
            let name = dir.file_name();
            match name.to_str().map(Namespace::parse) {
                Some(Ok(namespace)) if dir.file_type()?.is_dir() => found.push(namespace),
                _ => skipped += 1,
            }
        }
        found.sort();
        Ok((found, skipped))
    }

    fn path(&self, action: &ActionId) -> PathBuf {
        let hex = action.to_hex();
        self.root.join("v1").join(&hex[..2]).join(hex)
    }

    /// Where the entry for `action` is (or would be).
    pub fn entry_path(&self, action: &ActionId) -> PathBuf {
        self.path(action)
    }

    /// The storage directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn manifest_path(&self, key: &BuildKey) -> PathBuf {
        self.root.join("prefetch").join(key.to_hex())
    }

    /// Where the manifest for `key` is (or would be).
    pub fn manifest_file(&self, key: &BuildKey) -> PathBuf {
        self.manifest_path(key)
    }

    /// Where a put's bytes go before they are verified.
    pub fn temp_file(&self) -> io::Result<tempfile::NamedTempFile> {
        real_dir(&self.tmp)?;
        tempfile::Builder::new()
            .prefix("put-")
            .tempfile_in(&self.tmp)
    }

    /// Verifies a complete entry in `temp` and moves it into place unless an entry exists.
    /// Blocking.
    pub fn commit(
        &self,
        action: &ActionId,
        temp: tempfile::NamedTempFile,
    ) -> Result<PutOutcome, RemoteError> {
        let verified = VerifiedEntry::check(temp).map_err(|err| match err {
            VerifyError::Io(err) => RemoteError::Other(format!("storage: {err}")),
            VerifyError::Rejected(reason) => {
                RemoteError::Other(format!("rejected entry: {reason}"))
            }
        })?;
        self.commit_verified(action, verified)
    }

    /// Moves an entry that was verified already into place, unless an entry exists: the file
    /// itself is renamed (no copy, no second hash). Its temporary file must be on this store's
    /// file system, as a [`DiskStore::temp_file`] is. Blocking.
    pub fn commit_verified(
        &self,
        action: &ActionId,
        verified: VerifiedEntry,
    ) -> Result<PutOutcome, RemoteError> {
        let local = |err: io::Error| RemoteError::Other(format!("storage: {err}"));
        let temp = verified.temp;
        let path = self.path(action);
        if regular_len(&path).map_err(local)?.is_some() {
            return Ok(PutOutcome::Exists);
        }
        if let Some(parent) = path.parent() {
            real_dir(parent).map_err(local)?;
        }
        // Whatever is there that is not an entry (a FIFO, a symlink, a directory) is removed;
        // an entry that a concurrent put stored since the look above is left alone, for
        // persist_noclobber to find (removing it would replace an entry).
        if fs::symlink_metadata(&path).is_ok_and(|meta| !meta.file_type().is_file()) {
            fsutil::remove_any(&path).map_err(local)?;
        }
        // persist_noclobber: a concurrent put of the same key that got there first wins.
        match temp.persist_noclobber(&path) {
            Ok(_) => Ok(PutOutcome::Stored),
            Err(err) if err.error.kind() == io::ErrorKind::AlreadyExists => Ok(PutOutcome::Exists),
            Err(err) => Err(local(err.error)),
        }
    }

    /// The entry for `action` opened for reading, with its size, if it is a regular file: a
    /// missing entry, a symlink, a FIFO or anything else is `None`. The open does not follow
    /// a link and does not block (a FIFO here must not hold a worker thread); the size is
    /// from the `fstat` that checks the file's type. An entry's file is never rewritten (a
    /// put renames a new file into place, eviction unlinks), so the size holds for every
    /// read through this descriptor.
    pub fn open_entry(&self, action: &ActionId) -> io::Result<Option<(fs::File, u64)>> {
        Ok(fsutil::open_regular_with_meta(&self.path(action))?
            .map(|(file, meta)| (file, meta.len())))
    }

    /// The size of the entry for `action`, if there is one.
    pub fn size(&self, action: &ActionId) -> Option<u64> {
        regular_len(&self.path(action)).ok().flatten()
    }

    /// Removes temporary files older than `age`, left by a killed server (younger ones may
    /// belong to another server on the same directory). A `tmp/` that is a symlink is not
    /// followed (an error).
    pub fn sweep(&self, age: std::time::Duration) -> io::Result<usize> {
        fsutil::remove_older_than(&self.tmp, age)
    }
}

/// A complete entry in a temporary file that was checked as an entry (header, size, sha256).
/// Only [`VerifiedEntry::check`] makes one, so holding one proves the check was done. It
/// owns the temporary file and gives no way to write to it: the bytes committed are the bytes
/// checked. Dropped uncommitted, the file is removed.
#[derive(Debug)]
pub struct VerifiedEntry {
    temp: tempfile::NamedTempFile,
    len: u64,
}

/// Why [`VerifiedEntry::check`] refused a file.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The file could not be read.
    #[error("{0}")]
    Io(io::Error),
    /// The bytes are not a whole, intact entry.
    #[error("{0}")]
    Rejected(String),
}

impl VerifiedEntry {
    /// Reads the entry in `temp` from its start and checks it. Blocking.
    pub fn check(temp: tempfile::NamedTempFile) -> Result<Self, VerifyError> {
        let file = temp.reopen().map_err(VerifyError::Io)?;
        let len = file.metadata().map_err(VerifyError::Io)?.len();
        format::read_entry(&mut BufReader::new(file), &mut io::sink())
            .map_err(|err| VerifyError::Rejected(err.to_string()))?;
        Ok(Self { temp, len })
    }

    /// Where the entry is, until it is committed or dropped.
    pub fn path(&self) -> &Path {
        self.temp.path()
    }

    /// The entry's size in bytes, as checked.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the entry has no bytes (never true: an entry has a header).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[async_trait]
impl RemoteStore for DiskStore {
    async fn get(&self, action: &ActionId) -> Result<Option<ByteStream>, RemoteError> {
        match self.open_entry(action) {
            Ok(Some((file, _))) => Ok(Some(super::file_stream(file))),
            Ok(None) => Ok(None),
            Err(err) => Err(RemoteError::Other(format!("storage: {err}"))),
        }
    }

    async fn put(&self, action: &ActionId, entry: Upload) -> Result<PutOutcome, RemoteError> {
        let store = self.clone();
        let action = *action;
        tokio::task::spawn_blocking(move || {
            let local = |err: io::Error| RemoteError::Other(format!("storage: {err}"));
            let mut temp = store.temp_file().map_err(local)?;
            {
                let mut out = BufWriter::new(temp.as_file_mut());
                match entry {
                    Upload::Bytes(bytes) => out.write_all(&bytes).map_err(local)?,
                    Upload::File { path, .. } => {
                        let mut file = open_regular(&path).map_err(local)?.ok_or_else(|| {
                            local(io::Error::other(format!(
                                "{} is not a regular file",
                                path.display()
                            )))
                        })?;
                        io::copy(&mut file, &mut out).map_err(local)?;
                    }
                }
                out.flush().map_err(local)?;
            }
            store.commit(&action, temp)
        })
        .await
        .map_err(|err| RemoteError::Other(err.to_string()))?
    }

    async fn head(&self, action: &ActionId) -> Result<Option<u64>, RemoteError> {
        Ok(self.size(action))
    }

    async fn clear(&self, progress: &(dyn Fn(u64) + Send + Sync)) -> Result<u64, RemoteError> {
        let mut deleted = 0u64;
        let local = |err: io::Error| RemoteError::Other(format!("storage: {err}"));
        let mut remove = |path: PathBuf| -> Result<(), RemoteError> {
            fs::remove_file(path).map_err(local)?;
            deleted += 1;
            if deleted.is_multiple_of(1000) {
                progress(deleted);
            }
            Ok(())
        };
        for shard in fs::read_dir(self.root.join("v1")).map_err(local)? {
            let shard = shard.map_err(local)?;
            // A shard that is not a real directory is removed itself, never followed.
            if !shard.file_type().map_err(local)?.is_dir() {
                remove(shard.path())?;
                continue;
            }
            let shard = shard.path();
            for entry in fs::read_dir(&shard).map_err(local)? {
                remove(entry.map_err(local)?.path())?;
            }
        }
        for manifest in fs::read_dir(self.root.join("prefetch")).map_err(local)? {
            remove(manifest.map_err(local)?.path())?;
        }
        Ok(deleted)
    }

    fn location(&self) -> String {
        self.root.display().to_string()
    }

    async fn get_manifest(&self, key: &BuildKey) -> Result<Option<Bytes>, RemoteError> {
        let local = |err: io::Error| RemoteError::Other(format!("storage: {err}"));
        let Some(file) = open_regular(&self.manifest_path(key)).map_err(local)? else {
            return Ok(None);
        };
        let mut bytes = Vec::new();
        io::Read::read_to_end(&mut io::Read::take(file, MAX_MANIFEST as u64), &mut bytes)
            .map_err(local)?;
        Ok(Some(Bytes::from(bytes)))
    }

    async fn put_manifest(&self, key: &BuildKey, manifest: Bytes) -> Result<(), RemoteError> {
        let local = |err: io::Error| RemoteError::Other(format!("storage: {err}"));
        let mut temp = self.temp_file().map_err(local)?;
        temp.write_all(&manifest).map_err(local)?;
        let path = self.manifest_path(key);
        real_dir(&self.root.join("prefetch")).map_err(local)?;
        // A rename replaces a file atomically; anything else in the way is removed first.
        if regular_len(&path).map_err(local)?.is_none() {
            fsutil::remove_any(&path).map_err(local)?;
        }
        temp.persist(path).map(drop).map_err(|err| local(err.error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use futures::StreamExt;

    fn entry(body: &[u8]) -> Bytes {
        Bytes::from(format::encode_for_test(body))
    }

    #[tokio::test]
    async fn stores_verified_entries_once_and_refuses_damaged_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path()).unwrap();
        let key = ActionId([9; 32]);
        assert!(store.get(&key).await.unwrap().is_none());
        let good = entry(b"body");
        assert_eq!(
            store.put(&key, Upload::Bytes(good.clone())).await.unwrap(),
            PutOutcome::Stored
        );
        assert_eq!(
            store
                .put(&key, Upload::Bytes(entry(b"other")))
                .await
                .unwrap(),
            PutOutcome::Exists
        );
        let got: Vec<Bytes> = store
            .get(&key)
            .await
            .unwrap()
            .unwrap()
            .map(|c| c.unwrap())
            .collect()
            .await;
        assert_eq!(got.concat(), good.to_vec());

        let mut bad = good.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let other = ActionId([8; 32]);
        assert!(
            store
                .put(&other, Upload::Bytes(Bytes::from(bad)))
                .await
                .is_err()
        );
        assert!(store.get(&other).await.unwrap().is_none());
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        assert_eq!(store.clear(&|_| {}).await.unwrap(), 1);
    }

    #[test]
    fn a_verified_entry_is_renamed_into_place_not_copied_or_hashed_again() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path()).unwrap();
        let key = ActionId([7; 32]);
        let good = entry(b"spooled body");
        let mut temp = store.temp_file().unwrap();
        temp.write_all(&good).unwrap();
        let spooled = temp.path().to_path_buf();
        let inode = fs::metadata(&spooled).unwrap().ino();
        let verified = VerifiedEntry::check(temp).unwrap();
        assert_eq!(verified.len(), good.len() as u64);
        // Damaged after its check: a commit that hashed again would refuse it; this one
        // does not read it at all.
        let mut bytes = good.to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&spooled, &bytes).unwrap();
        assert_eq!(
            store.commit_verified(&key, verified).unwrap(),
            PutOutcome::Stored
        );
        let stored = store.path(&key);
        assert_eq!(fs::metadata(&stored).unwrap().ino(), inode, "the same file");
        assert_eq!(fs::read(&stored).unwrap(), bytes);
        assert!(!spooled.exists());
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);

        // An existing entry is never replaced, and the refused file goes away.
        let mut temp = store.temp_file().unwrap();
        temp.write_all(&entry(b"other")).unwrap();
        let verified = VerifiedEntry::check(temp).unwrap();
        assert_eq!(
            store.commit_verified(&key, verified).unwrap(),
            PutOutcome::Exists
        );
        assert_eq!(fs::read(&stored).unwrap(), bytes);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn only_a_whole_intact_entry_passes_the_check() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path()).unwrap();
        let good = entry(b"body");
        for bad in [&good[..good.len() - 1], &good[..10], &b""[..]] {
            let mut temp = store.temp_file().unwrap();
            temp.write_all(bad).unwrap();
            assert!(matches!(
                VerifiedEntry::check(temp),
                Err(VerifyError::Rejected(_))
            ));
        }
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
