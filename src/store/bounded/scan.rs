//! The start-up scan of a bounded storage directory ([`super::BoundedDisk`]): every entry of
//! the root's `v1/` and of each namespace's `ns/<NAME>/v1/`, with its size and mtime. The
//! shards of all of them are listed together by a few threads at once; nothing is followed
//! through a symlink.

use std::fs;
use std::io;
use std::path::PathBuf;

use super::{EntryKey, SCAN_THREADS};
use crate::ids::ActionId;

/// An entry found by the scan: key, size, mtime in nanoseconds.
pub(super) type Found = (EntryKey, u64, i64);

/// The entries under each `<root>/v1/<xx>/` of `roots` (a namespace's number and its store's
/// root): key, size and mtime (nanoseconds), with the count of files that are not entries.
pub(super) fn scan(roots: &[(u32, PathBuf)]) -> io::Result<(Vec<Found>, usize)> {
    let mut shards: Vec<(u32, PathBuf)> = Vec::new();
    for (space, root) in roots {
        let listing = match fs::read_dir(root.join("v1")) {
            Ok(listing) => listing,
            // A namespace whose `v1/` is gone has no entries.
            Err(err) if err.kind() == io::ErrorKind::NotFound && *space != 0 => continue,
            Err(err) => return Err(err),
        };
        for shard in listing {
            let shard = shard?;
            if shard.file_type()?.is_dir() {
                shards.push((*space, shard.path()));
            }
        }
    }
    // More threads than cores: a scan of a directory that is not in the page cache waits on
    // the disk for each inode, and a disk answers several reads at once.
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(SCAN_THREADS, 2 * SCAN_THREADS);
    let per = shards.len().div_ceil(threads).max(1);
    let parts: Vec<io::Result<(Vec<_>, usize)>> = std::thread::scope(|scope| {
        let workers: Vec<_> = shards
            .chunks(per)
            .map(|part| scope.spawn(move || scan_shards(part)))
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(io::Error::other("scan panicked")))
            })
            .collect()
    });
    let mut lists = Vec::with_capacity(parts.len());
    let mut skipped = 0;
    for part in parts {
        let (entries, skips) = part?;
        lists.push(entries);
        skipped += skips;
    }
    let mut found = Vec::with_capacity(lists.iter().map(Vec::len).sum());
    for list in lists {
        found.extend(list);
    }
    Ok((found, skipped))
}

fn scan_shards(shards: &[(u32, PathBuf)]) -> io::Result<(Vec<Found>, usize)> {
    use std::os::unix::fs::MetadataExt;
    let mut found = Vec::new();
    let mut skipped = 0;
    for (space, shard) in shards {
        let prefix = shard.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let listing = match fs::read_dir(shard) {
            Ok(listing) => listing,
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err),
        };
        for file in listing {
            let file = file?;
            let name = file.file_name();
            let id = name
                .to_str()
                .filter(|name| name.starts_with(prefix))
                .and_then(ActionId::from_key);
            // `DirEntry::metadata` does not follow a symlink.
            let meta = match (id, file.metadata()) {
                (Some(id), Ok(meta)) if meta.file_type().is_file() => (id, meta),
                (_, Err(err)) if err.kind() == io::ErrorKind::NotFound => continue,
                _ => {
                    skipped += 1;
                    continue;
                }
            };
            let (action, meta) = meta;
            // Nanoseconds fit an i64 until 2262.
            let mtime = meta
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.mtime_nsec());
            let key = EntryKey {
                space: *space,
                action,
            };
            found.push((key, meta.len(), mtime));
        }
    }
    Ok((found, skipped))
}
