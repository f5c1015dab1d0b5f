//! The local disk tier: the authority that every build reads from and writes to first.
//!
//! Layout under the cache directory (sharded by the first two hex digits, like Go's own
//! cache):
//!
//! ```text
//! CACHEDIR.TAG          marks the directory as goremotecache's (clear-local checks it)
//! o/<xx>/<outputid>     outputs, content-addressed, mode 0644, no file extension
//! a/<xx>/<actionid>     action entries: "v1 <outputid> <size> <put time ns>\n"
//! tmp/                  bodies being written; renamed into place when complete
//! ```
//!
//! Directories are created mode 0700: the cache is the user's alone (the command line checks
//! the cache directory's owner and mode before the go command is answered, see
//! [`crate::fsutil`]). Nothing inside is followed through a symlink and only regular files are
//! data: a symlink, a FIFO or a directory where an entry or an output should be is a miss, and
//! the next put replaces it. A put of an output that is already there checks its sha256 and
//! replaces a damaged copy (a power loss can leave a right-sized file of zeros).
//!
//! Every file appears by an atomic rename of a complete temporary file, so a crash at any
//! point leaves nothing that [`DiskCache::get`] could serve: an action entry names an output
//! only after the output is in place, and a get checks the output's size. Outputs are never
//! rewritten in place (the go command mmaps some of them) and never deleted at exit (`go list
//! -export` prints their paths for later readers). Several processes may share a directory.

use std::fs::{File, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use tempfile::NamedTempFile;

use crate::fsutil::{
    self, open_regular, open_regular_with_meta, prepare_dir, real_dir, regular_len, regular_meta,
    touch_if_older, touch_open_if_older,
};
use crate::ids::{ActionId, OutputId};

const ENTRY_VERSION: &str = "v1";

/// A cached action: what a `get` hit answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub output_id: OutputId,
    pub size: u64,
    /// When the output was put, as the go command's test cache expects.
    pub time: SystemTime,
    /// Absolute path of the output file.
    pub disk_path: PathBuf,
}

/// A `put` body spooled to a temporary file in the cache's `tmp/` directory.
#[derive(Debug)]
pub struct Spooled {
    pub file: NamedTempFile,
    pub size: u64,
    pub output_id: OutputId,
}

/// The local disk cache. Cheap to share; all methods are blocking file operations.
#[derive(Debug, Clone)]
pub struct DiskCache {
    root: PathBuf,
    tmp: PathBuf,
    /// Hash every output a get would answer with (`--verify-hits`).
    verify_hits: bool,
}

impl DiskCache {
    /// The cache at `root`, which must be absolute, without touching the disk.
    pub fn at(root: &Path) -> Self {
        debug_assert!(root.is_absolute());
        Self {
            root: root.to_path_buf(),
            tmp: root.join("tmp"),
            verify_hits: false,
        }
    }

    /// Whether a get hashes the output before answering with it (`--verify-hits`): a
    /// damaged output is then a miss, like Go's own `GODEBUG=gocacheverify=1`.
    pub fn verifying_hits(mut self, verify: bool) -> Self {
        self.verify_hits = verify;
        self
    }

    /// Opens (creating it if needed) the cache at `root`, which must be absolute.
    pub fn open(root: &Path) -> io::Result<Self> {
        let cache = Self::at(root);
        cache.prepare()?;
        Ok(cache)
    }

    /// Creates the cache directory and its `tmp/`, `o/` and `a/` if needed; a symlink or a
    /// file in place of one of those, or of a shard directory in `o/` or `a/`, is removed (a
    /// listing of each: well under a millisecond), so that no get reads through a link.
    pub fn prepare(&self) -> io::Result<()> {
        prepare_dir(&self.root)?;
        real_dir(&self.tmp)?;
        for kind in ["o", "a"] {
            let dir = self.root.join(kind);
            real_dir(&dir)?;
            fsutil::remove_all_but_directories(&dir)?;
        }
        Ok(())
    }

    /// The cache directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where bodies are spooled before they are stored.
    pub fn tmp_dir(&self) -> &Path {
        &self.tmp
    }

    /// Creates a temporary file for a body, mode 0644, on the cache's file system.
    pub fn spool_file(&self) -> io::Result<NamedTempFile> {
        // One `lstat`: a `tmp/` replaced by a symlink would put bodies somewhere else.
        real_dir(&self.tmp)?;
        let create = || {
            tempfile::Builder::new()
                .prefix("put-")
                .permissions(Permissions::from_mode(0o644))
                .tempfile_in(&self.tmp)
        };
        match create() {
            // `clear-local` may have removed the directory under a running process.
            Err(err) if is_absent(&err) => {
                self.prepare()?;
                create()
            }
            other => other,
        }
    }

    /// Where the output with this ID lives.
    pub fn output_path(&self, id: &OutputId) -> PathBuf {
        shard_path(&self.root, "o", &id.to_hex())
    }

    fn action_path(&self, id: &ActionId) -> PathBuf {
        shard_path(&self.root, "a", &id.to_hex())
    }

    /// Looks up an action. A missing, unreadable or inconsistent entry, or an output whose
    /// size is not the recorded one, is a miss (`None`); only unexpected I/O errors are errors.
    pub fn get(&self, action: &ActionId) -> io::Result<Option<Entry>> {
        // Entries are about 100 bytes: one read into a stack buffer (no size query, no
        // allocation) keeps a warm get at five system calls: open (never through a symlink,
        // never blocking on a FIFO), fstat (a regular file, else a miss), read, close, and
        // lstat of the output.
        let mut buf = [0u8; ENTRY_MAX];
        let Some((mut file, entry_meta)) = open_regular_with_meta(&self.action_path(action))?
        else {
            return Ok(None);
        };
        let len = read_full(&mut file, &mut buf)?;
        let Some((output_id, size, time)) =
            std::str::from_utf8(&buf[..len]).ok().and_then(parse_entry)
        else {
            return Ok(None);
        };
        let disk_path = self.output_path(&output_id);
        let Some(output_meta) = regular_meta(&disk_path)?.filter(|meta| meta.len() == size) else {
            return Ok(None);
        };
        if self.verify_hits && !file_has_id(&disk_path, &output_id)? {
            tracing::warn!(
                "output {} does not match its OutputID (damaged on disk); treated as a miss",
                disk_path.display()
            );
            return Ok(None);
        }
        // A hit is a use: the files' times say when they were last used, to within an hour
        // (the metadata is the one the checks above read, so a hit costs no extra call but
        // once an hour per file). An output that a trim took away meanwhile is a miss.
        match touch_if_older(&disk_path, &output_meta) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => tracing::debug!("cannot refresh {}: {err}", disk_path.display()),
            Ok(()) => {}
        }
        if let Err(err) = touch_open_if_older(&file, &entry_meta) {
            tracing::debug!("cannot refresh the entry of {action}: {err}");
        }
        Ok(Some(Entry {
            output_id,
            size,
            time,
            disk_path,
        }))
    }

    /// Whether a regular file is in place as `action`'s entry (one system call;
    /// [`DiskCache::get`] checks its content).
    pub fn has_entry(&self, action: &ActionId) -> bool {
        regular_len(&self.action_path(action)).is_ok_and(|len| len.is_some())
    }

    /// Whether the output is in place as a regular file of the expected size.
    pub fn has_output(&self, id: &OutputId, size: u64) -> bool {
        regular_len(&self.output_path(id)).is_ok_and(|len| len == Some(size))
    }

    /// Moves a verified body into place as an output, unless an identical one is already
    /// there: one of the right size is hashed, and replaced (atomically, by a rename) if it
    /// is damaged. Returns the output's path and whether it was already present.
    pub fn store_output(&self, body: Spooled) -> io::Result<(PathBuf, bool)> {
        let path = self.output_path(&body.output_id);
        if let Some(meta) = regular_meta(&path)?.filter(|meta| meta.len() == body.size) {
            if !file_has_id(&path, &body.output_id)? {
                tracing::warn!(
                    "output {} does not match its OutputID (damaged on disk); replacing it",
                    path.display()
                );
            } else {
                // In use again: its time says so. A trim that took it away meanwhile makes
                // this a NotFound, and the body is stored anew below.
                match touch_if_older(&path, &meta) {
                    Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                    Err(err) => {
                        tracing::debug!("cannot refresh {}: {err}", path.display());
                        return Ok((path, true));
                    }
                    Ok(()) => return Ok((path, true)),
                }
            }
        }
        fsutil::persist(body.file, &path)?;
        Ok((path, false))
    }

    /// Writes the empty output (the go command puts many).
    pub fn store_empty_output(&self) -> io::Result<(PathBuf, bool)> {
        let id = OutputId::of(&[]);
        if self.has_output(&id, 0) {
            return Ok((self.output_path(&id), true));
        }
        let file = self.spool_file()?;
        self.store_output(Spooled {
            file,
            size: 0,
            output_id: id,
        })
    }

    /// Records that `action` produced `output` of `size` bytes at `time`, atomically
    /// replacing any earlier entry.
    pub fn write_entry(
        &self,
        action: &ActionId,
        output: &OutputId,
        size: u64,
        time: SystemTime,
    ) -> io::Result<()> {
        let nanos = time
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let mut file = self.spool_file()?;
        writeln!(file, "{ENTRY_VERSION} {} {size} {nanos}", output.to_hex())?;
        fsutil::persist(file, &self.action_path(action))
    }

    /// Removes temporary files older than `age`, left by processes that were killed. Younger
    /// ones may belong to a process that is still writing them. A `tmp/` that is a symlink is
    /// not followed (an error).
    pub fn sweep_tmp(&self, age: Duration) -> io::Result<usize> {
        fsutil::remove_older_than(&self.tmp, age)
    }
}

/// Whether the regular file at `path` hashes to `id`.
pub fn file_has_id(path: &Path, id: &OutputId) -> io::Result<bool> {
    let Some(mut file) = open_regular(path)? else {
        return Ok(false);
    };
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher)?;
    Ok(<[u8; 32]>::from(hasher.finalize()) == id.0)
}

fn shard_path(root: &Path, kind: &str, hex: &str) -> PathBuf {
    let mut path = root.join(kind);
    path.push(&hex[..2]);
    path.push(hex);
    path
}

/// The longest action entry read; a longer file is not an entry of ours (a miss).
const ENTRY_MAX: usize = 256;

/// Reads until `buf` is full, the file ends, or what was read ends a line (an entry is one
/// line, so a complete entry costs one `read`).
fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut len = 0;
    while len < buf.len() {
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => {
                len += n;
                if buf[len - 1] == b'\n' {
                    break;
                }
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(len)
}

pub(super) fn parse_entry(text: &str) -> Option<(OutputId, u64, SystemTime)> {
    let mut fields = text.trim_end().split(' ');
    if fields.next()? != ENTRY_VERSION {
        return None;
    }
    let output = OutputId::from_hex(fields.next()?)?;
    let size = fields.next()?.parse().ok()?;
    let nanos: u64 = fields.next()?.parse().ok()?;
    if fields.next().is_some() {
        return None;
    }
    Some((
        output,
        size,
        SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos),
    ))
}

fn is_absent(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::NotFound
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::is_marked;
    use std::fs;

    fn spooled(cache: &DiskCache, data: &[u8]) -> Spooled {
        let mut file = cache.spool_file().unwrap();
        file.write_all(data).unwrap();
        Spooled {
            file,
            size: data.len() as u64,
            output_id: OutputId::of(data),
        }
    }

    #[test]
    fn put_then_get_returns_the_original_time_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path()).unwrap();
        let action = ActionId([7; 32]);
        assert_eq!(cache.get(&action).unwrap(), None);
        let body = spooled(&cache, b"hello");
        let output = body.output_id;
        let (path, existed) = cache.store_output(body).unwrap();
        assert!(!existed);
        let time = SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        cache.write_entry(&action, &output, 5, time).unwrap();
        let entry = cache.get(&action).unwrap().unwrap();
        assert_eq!(entry.time, time);
        assert_eq!(entry.disk_path, path);
        assert_eq!(fs::read(&path).unwrap(), b"hello");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        assert!(path.extension().is_none());
        assert!(is_marked(dir.path()));
    }

    #[test]
    fn a_second_identical_output_leaves_the_first_file_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path()).unwrap();
        let (path, _) = cache.store_output(spooled(&cache, b"same")).unwrap();
        let inode = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&path).unwrap());
        let (again, existed) = cache.store_output(spooled(&cache, b"same")).unwrap();
        assert!(existed);
        assert_eq!(again, path);
        assert_eq!(
            std::os::unix::fs::MetadataExt::ino(&fs::metadata(&path).unwrap()),
            inode
        );
        assert_eq!(fs::read_dir(cache.tmp_dir()).unwrap().count(), 0);
    }

    #[test]
    fn an_entry_whose_output_has_the_wrong_size_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path()).unwrap();
        let action = ActionId([1; 32]);
        let (path, _) = cache.store_output(spooled(&cache, b"12345")).unwrap();
        cache
            .write_entry(&action, &OutputId::of(b"12345"), 5, SystemTime::now())
            .unwrap();
        assert!(cache.get(&action).unwrap().is_some());
        fs::write(&path, b"123").unwrap();
        assert_eq!(cache.get(&action).unwrap(), None);
    }

    #[test]
    fn garbled_entries_are_misses() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path()).unwrap();
        let action = ActionId([2; 32]);
        for text in [
            "",
            "v1",
            "v2 00 1 1",
            "v1 zz 1 1\n",
            "v1 00 1 1 extra",
            "\u{0}\u{1}",
        ] {
            let path = cache.action_path(&action);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, text).unwrap();
            assert_eq!(cache.get(&action).unwrap(), None, "{text:?}");
        }
    }

    #[test]
    fn a_non_empty_foreign_directory_is_not_marked() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("precious"), b"x").unwrap();
        DiskCache::open(dir.path()).unwrap();
        assert!(!is_marked(dir.path()));
    }
}
