//! Per-key locks, so that concurrent requests for one key do the expensive work once.
//!
//! Keys are striped over [`STRIPES`] locks by their first 12 bits: the lock directory stays
//! bounded (at most 4,096 small files, created as needed and never deleted, since deleting a
//! lock file races with its next user), and two different keys share a lock only rarely.
//! Within a process each stripe is an async mutex; with [`LockType::Fslock`] the holder also
//! takes an exclusive `flock` on the stripe's file, so processes that share the lock directory
//! exclude each other as well.
//!
//! Lock files are created mode 0600 in a 0700 directory, never through a symlink: a lock
//! needs only read access to a file, so a lock file another user could open is one they
//! could hold to block this user's puts.
//!
//! A lock never fails a request: if a lock file cannot be opened or locked, that is said once
//! on stderr and the work goes ahead without the cross-process lock (every file the cache
//! writes is still atomic, so that only costs duplicate work).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::fsutil::{open_or_create_regular, prepare_dir, real_dir};

/// How many locks the key space is striped over.
pub const STRIPES: usize = 4096;

/// Which locks guard a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LockType {
    /// In-process locks plus file locks in the lock directory: safe when several
    /// goremotecache processes share the cache (parallel go commands, gopls, linters).
    Fslock,
    /// In-process locks only: for a cache directory that one process uses at a time.
    Memory,
}

/// Hands out per-key locks.
#[derive(Debug)]
pub struct Locker {
    stripes: Vec<Arc<Mutex<()>>>,
    dir: Option<PathBuf>,
    warned: AtomicBool,
}

/// Held while a key's work is done; released on drop.
#[derive(Debug)]
pub struct KeyGuard {
    // Dropped in this order: the file lock first, then the in-process one.
    _file: Option<File>,
    _local: OwnedMutexGuard<()>,
}

impl Locker {
    /// A locker of `kind`; file locks live in `dir`.
    pub fn new(kind: LockType, dir: &Path) -> Self {
        let dir = match kind {
            LockType::Fslock => match prepare_dir(dir) {
                Ok(()) => Some(dir.to_path_buf()),
                Err(err) => {
                    tracing::warn!(
                        "cannot use lock directory {}: {err}; going on with in-process locks only",
                        dir.display()
                    );
                    None
                }
            },
            LockType::Memory => None,
        };
        Self {
            stripes: (0..STRIPES).map(|_| Arc::new(Mutex::new(()))).collect(),
            dir,
            warned: AtomicBool::new(false),
        }
    }

    /// Waits for the lock on `key`.
    pub async fn lock(&self, key: &[u8; 32]) -> KeyGuard {
        let stripe = stripe_of(key);
        let local = self.stripes[stripe].clone().lock_owned().await;
        let file = match &self.dir {
            Some(dir) => {
                let path = dir
                    .join(format!("{:02x}", stripe >> 4))
                    .join(format!("{stripe:03x}"));
                let locked = tokio::task::spawn_blocking(move || {
                    let file = open_lock_file(&path)?;
                    file.lock()?;
                    Ok::<_, std::io::Error>(file)
                })
                .await;
                match locked {
                    Ok(Ok(file)) => Some(file),
                    Ok(Err(err)) => {
                        self.warn_once(&err.to_string());
                        None
                    }
                    Err(err) => {
                        self.warn_once(&err.to_string());
                        None
                    }
                }
            }
            None => None,
        };
        KeyGuard {
            _file: file,
            _local: local,
        }
    }

    fn warn_once(&self, err: &str) {
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!("cannot take a file lock: {err}; going on without cross-process locks");
        }
    }
}

/// Opens (creating) a stripe's lock file, and its shard directory if needed.
fn open_lock_file(path: &Path) -> std::io::Result<File> {
    match open_or_create_regular(path) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = path.parent() {
                real_dir(parent)?;
            }
            open_or_create_regular(path)
        }
        other => other,
    }
}

fn stripe_of(key: &[u8; 32]) -> usize {
    (usize::from(key[0]) << 4) | usize::from(key[1] >> 4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_held_key_blocks_a_second_locker_sharing_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let first = Locker::new(LockType::Fslock, dir.path());
        let second = Arc::new(Locker::new(LockType::Fslock, dir.path()));
        let key = [0xab; 32];
        let guard = first.lock(&key).await;
        let waiter = {
            let second = second.clone();
            tokio::spawn(async move { second.lock(&key).await })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !waiter.is_finished(),
            "the file lock did not exclude another locker"
        );
        drop(guard);
        tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("released lock was not handed over")
            .unwrap();
        let lock_file = dir.path().join("ab").join("aba");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&lock_file).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "lock files are the user's alone");
    }

    #[tokio::test]
    async fn memory_locks_leave_the_directory_alone() {
        let dir = tempfile::tempdir().unwrap();
        let locks = dir.path().join("locks");
        let locker = Locker::new(LockType::Memory, &locks);
        let _a = locker.lock(&[1; 32]).await;
        let _b = locker.lock(&[2; 32]).await;
        assert!(!locks.exists());
    }
}
