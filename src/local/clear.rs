//! `goremotecache clear-local`: empties the local cache and lock directories (the daemon's
//! module proxy answers in `<cache-dir>/mod/` with the rest).
//!
//! Deleting is only done in a directory that carries goremotecache's `CACHEDIR.TAG`, which is
//! written only into directories that goremotecache created (or found empty). A mistyped
//! `--cache-dir /` or `--cache-dir $HOME` is refused, and so is anything else unmarked.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::fsutil::{MARKER, ignore_absent, is_marked};

/// What clearing one directory did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cleared {
    pub dir: PathBuf,
    pub files: u64,
    pub bytes: u64,
    /// The directory did not exist: nothing to do.
    pub absent: bool,
}

/// Why a directory was not cleared.
#[derive(Debug, thiserror::Error)]
pub enum ClearError {
    #[error("refusing to clear {0}: it is the root or the home directory")]
    Dangerous(PathBuf),
    #[error(
        "refusing to clear {0}: it has no goremotecache {MARKER}, so goremotecache did not create it; delete it yourself if it really is a cache"
    )]
    NotOurs(PathBuf),
    #[error("clearing {dir}: {source}")]
    Io { dir: PathBuf, source: io::Error },
}

/// Removes everything in `dir` but its marker.
pub fn clear_dir(dir: &Path) -> Result<Cleared, ClearError> {
    let dangerous =
        dir.parent().is_none() || std::env::home_dir().is_some_and(|home| same_dir(&home, dir));
    if dangerous {
        return Err(ClearError::Dangerous(dir.to_path_buf()));
    }
    if !dir.exists() {
        return Ok(Cleared {
            dir: dir.to_path_buf(),
            files: 0,
            bytes: 0,
            absent: true,
        });
    }
    if !is_marked(dir) {
        return Err(ClearError::NotOurs(dir.to_path_buf()));
    }
    let mut cleared = Cleared {
        dir: dir.to_path_buf(),
        files: 0,
        bytes: 0,
        absent: false,
    };
    let io_err = |source| ClearError::Io {
        dir: dir.to_path_buf(),
        source,
    };
    for entry in fs::read_dir(dir).map_err(io_err)? {
        let entry = entry.map_err(io_err)?;
        if entry.file_name() == MARKER {
            continue;
        }
        remove_tree(&entry.path(), &mut cleared).map_err(io_err)?;
    }
    Ok(cleared)
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Removes a file or a directory tree, counting files and bytes. Never follows symlinks.
fn remove_tree(path: &Path, cleared: &mut Cleared) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if meta.is_dir() {
        for entry in fs::read_dir(path)? {
            remove_tree(&entry?.path(), cleared)?;
        }
        return ignore_absent(fs::remove_dir(path));
    }
    cleared.files += 1;
    cleared.bytes += meta.len();
    ignore_absent(fs::remove_file(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::disk::DiskCache;

    #[test]
    fn clears_a_cache_but_keeps_its_marker() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cache");
        let cache = DiskCache::open(&root).unwrap();
        cache.store_empty_output().unwrap();
        // The daemon's module proxy answers go too.
        let modules = crate::store::dir::DiskStore::open(&root.join("mod")).unwrap();
        let zip = modules.entry_path(&crate::ids::ActionId([1; 32]));
        fs::create_dir_all(zip.parent().unwrap()).unwrap();
        fs::write(&zip, b"zip").unwrap();
        let cleared = clear_dir(&root).unwrap();
        assert_eq!((cleared.files, cleared.bytes), (2, 3));
        assert!(is_marked(&root));
        assert_eq!(fs::read_dir(&root).unwrap().count(), 1);
    }

    #[test]
    fn refuses_unmarked_root_and_home() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("precious"), b"x").unwrap();
        assert!(matches!(clear_dir(dir.path()), Err(ClearError::NotOurs(_))));
        assert!(dir.path().join("precious").exists());
        assert!(matches!(
            clear_dir(Path::new("/")),
            Err(ClearError::Dangerous(_))
        ));
        if let Some(home) = std::env::home_dir() {
            assert!(matches!(clear_dir(&home), Err(ClearError::Dangerous(_))));
        }
    }

    #[test]
    fn a_missing_directory_is_nothing_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let cleared = clear_dir(&dir.path().join("never")).unwrap();
        assert!(cleared.absent);
    }
}
