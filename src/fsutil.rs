//! File-system helpers for directories that must be trusted before anything in them is used:
//! the cache, lock and storage directories.
//!
//! The rules they carry out (docs/design.md, "Trusting the directories"):
//!
//! - A directory goremotecache uses must belong to the user running it and must not be
//!   writable by group or others, or another local user could plant entries (object code the
//!   go command then links), delete results or block locks. [`check_private_dir`] says so
//!   before the go command is answered; `--trust-cache-dir` lets a deliberate shared set-up
//!   through. Directories goremotecache creates are mode 0700 ([`create_private_dir_all`]).
//! - Nothing inside them is followed through a symlink: files are opened with `O_NOFOLLOW`
//!   ([`open_regular`]), sizes are read with `lstat` ([`regular_len`]), a directory it writes
//!   into is checked to be a real directory first ([`real_dir`]), and the sweep of stale
//!   temporary files works on a directory handle opened without following a link
//!   ([`remove_older_than`]); at start, a shard directory replaced by a symlink is removed
//!   ([`remove_all_but_directories`]), so reads do not go through it either.
//! - Only regular files are data. A FIFO, a device, a socket or a directory where a file
//!   should be is a miss, never a blocking `open`: files are opened with `O_NONBLOCK`, and
//!   checked with `fstat` before a byte is read.
//!
//! And the file work every directory of ours shares: files appear by an atomic rename of a
//! complete temporary file ([`persist`]); a directory goremotecache creates is marked with a
//! `CACHEDIR.TAG` ([`prepare_dir`], [`is_marked`]) so that `clear-local` empties nothing else;
//! I/O errors are said in words a user acts on ([`explain_io`]).

use std::ffi::CString;
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rustix::fd::OwnedFd;
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use tempfile::NamedTempFile;

/// How old a leftover temporary file must be before a start-up sweep removes it: younger ones
/// may belong to a process that is still writing them.
pub const STALE_TEMP_AGE: Duration = Duration::from_secs(3600);

/// Flags for opening a file inside a cache or storage directory: never through a symlink,
/// never blocking on a FIFO.
fn no_follow_flags() -> i32 {
    (OFlags::NOFOLLOW | OFlags::NONBLOCK).bits() as i32
}

/// Opens `path` for reading if it is a regular file. A missing path, a symlink, a FIFO or
/// any other kind of file is `None` (a miss); only unexpected I/O errors are errors.
pub fn open_regular(path: &Path) -> io::Result<Option<File>> {
    Ok(open_regular_with_meta(path)?.map(|(file, _)| file))
}

/// [`open_regular`], with the file's metadata from the `fstat` that checked its type (its
/// modification time is when a cached file was last used, see [`touch_if_older`]).
pub fn open_regular_with_meta(path: &Path) -> io::Result<Option<(File, fs::Metadata)>> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(no_follow_flags())
        .open(path)
    {
        Ok(file) => file,
        Err(err) if is_not_a_file(&err) => return Ok(None),
        Err(err) => return Err(err),
    };
    let meta = file.metadata()?;
    Ok(meta.is_file().then_some((file, meta)))
}

/// Opens (creating it, mode 0600) a file for reading and writing if it is a regular file and
/// not a symlink; used for lock files, which another user must not be able to open.
pub fn open_or_create_regular(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(no_follow_flags())
        .open(path)?;
    if file.metadata()?.is_file() {
        Ok(file)
    } else {
        Err(io::Error::other(format!(
            "{} is not a regular file",
            path.display()
        )))
    }
}

/// The size of `path` if it is a regular file (not through a symlink); `None` if it is
/// missing or anything else.
pub fn regular_len(path: &Path) -> io::Result<Option<u64>> {
    Ok(regular_meta(path)?.map(|meta| meta.len()))
}

/// The metadata of `path` (from `lstat`) if it is a regular file, not a symlink.
pub fn regular_meta(path: &Path) -> io::Result<Option<fs::Metadata>> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_file() => Ok(Some(meta)),
        Ok(_) => Ok(None),
        Err(err) if is_not_a_file(&err) => Ok(None),
        Err(err) => Err(err),
    }
}

/// How stale a cached file's modification time may get before a use sets it to now: the
/// time is "last used" to within this, at the cost of one system call per file per interval
/// (Go's own cache does the same, with the same hour).
pub const USE_REFRESH: Duration = Duration::from_secs(3600);

/// Whether a file whose metadata is `meta` is due for a refresh of its times: they are more
/// than [`USE_REFRESH`] old.
fn due_for_refresh(meta: &fs::Metadata) -> bool {
    meta.modified().is_ok_and(|at| {
        SystemTime::now()
            .duration_since(at)
            .is_ok_and(|age| age > USE_REFRESH)
    })
}

/// Sets the access and modification times of the file at `path` to now, without following a
/// symlink, if `meta` (the file's metadata, read just before) says they are more than
/// [`USE_REFRESH`] old. An `Err` of kind `NotFound` means the file is gone: a trim removed it
/// between the look and the refresh, and whoever was about to hand it out must not.
pub fn touch_if_older(path: &Path, meta: &fs::Metadata) -> io::Result<()> {
    if !due_for_refresh(meta) {
        return Ok(());
    }
    touch(path)
}

/// Sets the access and modification times of the file at `path` to now, without following
/// a symlink.
pub fn touch(path: &Path) -> io::Result<()> {
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &now_timestamps(),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(io::Error::from)
}

/// [`touch_if_older`] for a file already open (an entry that was just read).
pub fn touch_open_if_older(file: &File, meta: &fs::Metadata) -> io::Result<()> {
    if !due_for_refresh(meta) {
        return Ok(());
    }
    rustix::fs::futimens(file, &now_timestamps()).map_err(io::Error::from)
}

/// Both times `UTIME_NOW`: the kernel's own clock.
fn now_timestamps() -> rustix::fs::Timestamps {
    let now = rustix::fs::Timespec {
        tv_sec: 0,
        tv_nsec: rustix::fs::UTIME_NOW,
    };
    rustix::fs::Timestamps {
        last_access: now,
        last_modification: now,
    }
}

/// Errors that mean "there is no usable file here": missing, a symlink (`ELOOP` under
/// `O_NOFOLLOW`), a path through a non-directory.
fn is_not_a_file(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    ) || err.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error())
}

/// Creates `dir` and its missing parents with mode 0700.
pub fn create_private_dir_all(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Makes sure `dir`, inside a cache or storage directory, is a real directory: created (0700)
/// if missing; a symlink, FIFO or file in its place is removed first, so that nothing is
/// written through it to somewhere else.
pub fn real_dir(dir: &Path) -> io::Result<()> {
    match fs::symlink_metadata(dir) {
        Ok(meta) if meta.is_dir() => return Ok(()),
        Ok(_) => {
            tracing::warn!(
                "{} is not a directory (a symlink or a file); replacing it",
                dir.display()
            );
            ignore_absent(fs::remove_file(dir))?;
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    let create = || match DirBuilder::new().mode(0o700).create(dir) {
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => real_dir_now(dir),
        other => other,
    };
    match create() {
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            // The parent is missing too (a cleared cache): create the chain, each checked.
            if let Some(parent) = dir.parent() {
                real_dir(parent)?;
            }
            create()
        }
        other => other,
    }
}

/// Another process created `dir` at the same moment: it must be a directory.
fn real_dir_now(dir: &Path) -> io::Result<()> {
    if fs::symlink_metadata(dir)?.is_dir() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{} is not a directory",
            dir.display()
        )))
    }
}

/// A removal that found nothing to remove succeeded: another process may remove the same
/// file first.
pub(crate) fn ignore_absent(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Removes whatever is at `path` (not through a symlink), so that a new file can be renamed
/// there: a directory tree in place of a file, say.
pub fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => ignore_absent(fs::remove_dir_all(path)),
        Ok(_) => ignore_absent(fs::remove_file(path)),
        Err(err) => ignore_absent(Err(err)),
    }
}

/// Why a directory is not trusted.
#[derive(Debug, thiserror::Error)]
pub enum UntrustedDir {
    #[error(
        "{what} {dir} belongs to user {owner}, not to you (user {me}): another user could plant \
         entries in it or remove yours. Use a directory of your own, remove this one, or pass \
         --trust-cache-dir if the sharing is deliberate"
    )]
    Owner {
        what: &'static str,
        dir: PathBuf,
        owner: u32,
        me: u32,
    },
    #[error(
        "{what} {dir} is writable by {who} (mode {mode:o}): another user could plant entries in \
         it or remove yours. Run `chmod go-w {dir}`, or pass --trust-cache-dir if the sharing is \
         deliberate"
    )]
    Writable {
        what: &'static str,
        dir: PathBuf,
        who: &'static str,
        mode: u32,
    },
    #[error("{what} {dir} is a symlink; goremotecache creates this directory itself")]
    Symlink { what: &'static str, dir: PathBuf },
    #[error("{what} {dir} is not a directory")]
    NotADirectory { what: &'static str, dir: PathBuf },
    #[error("{what} {dir}: {source}")]
    Io {
        what: &'static str,
        dir: PathBuf,
        source: io::Error,
    },
}

/// Whether a symlink may stand for the directory being checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// The user named the directory: a symlink to a directory of theirs is fine.
    Follow,
    /// goremotecache creates it (a default location, or one inside a cache): a symlink
    /// there was put by someone else.
    Refuse,
}

/// Creates `dir` (mode 0700) if it is missing, then checks that it is a directory of the
/// user's own that no other user may write. `what` names it in messages ("cache directory").
pub fn private_dir(dir: &Path, what: &'static str, links: Links) -> Result<(), UntrustedDir> {
    let io_err = |source| UntrustedDir::Io {
        what,
        dir: dir.to_path_buf(),
        source,
    };
    create_private_dir_all(dir).map_err(io_err)?;
    check_private_dir(dir, what, links)
}

/// Checks that `dir` is a directory owned by the user that group and others cannot write.
pub fn check_private_dir(dir: &Path, what: &'static str, links: Links) -> Result<(), UntrustedDir> {
    let io_err = |source| UntrustedDir::Io {
        what,
        dir: dir.to_path_buf(),
        source,
    };
    let meta = fs::symlink_metadata(dir).map_err(io_err)?;
    let meta = if meta.file_type().is_symlink() {
        if links == Links::Refuse {
            return Err(UntrustedDir::Symlink {
                what,
                dir: dir.to_path_buf(),
            });
        }
        fs::metadata(dir).map_err(io_err)?
    } else {
        meta
    };
    if !meta.is_dir() {
        return Err(UntrustedDir::NotADirectory {
            what,
            dir: dir.to_path_buf(),
        });
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(UntrustedDir::Owner {
            what,
            dir: dir.to_path_buf(),
            owner: meta.uid(),
            me,
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (true, true) => "group and others",
        (true, false) => "its group",
        (false, true) => "others",
        (false, false) => return Ok(()),
    };
    Err(UntrustedDir::Writable {
        what,
        dir: dir.to_path_buf(),
        who,
        mode,
    })
}

/// Removes every entry of `dir` that is not a real directory (a symlink to a directory
/// elsewhere, a file), so that nothing below `dir` is reached through a link: run at start on
/// the directories that hold the shard directories. Returns how many were removed. Reads the
/// type from the directory listing, without a `stat` per entry where the file system gives it.
pub fn remove_all_but_directories(dir: &Path) -> io::Result<usize> {
    let (fd, entries) = list_no_follow(dir)?;
    let mut removed = 0;
    for (name, kind) in entries {
        let kind = match kind {
            FileType::Unknown => match rustix::fs::statat(&fd, &name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) => FileType::from_raw_mode(stat.st_mode),
                Err(_) => continue,
            },
            kind => kind,
        };
        if kind != FileType::Directory && rustix::fs::unlinkat(&fd, &name, AtFlags::empty()).is_ok()
        {
            tracing::warn!(
                "removed {}: not a directory (a symlink or a file) where a shard directory belongs",
                dir.join(name.to_string_lossy().as_ref()).display()
            );
            removed += 1;
        }
    }
    Ok(removed)
}

/// A handle on the directory `dir`, opened without following a symlink (an error if `dir` is
/// one): what is done through it stays inside the real directory.
pub(crate) fn open_dir_no_follow(dir: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// The entries of `dir` but `.` and `..`, with their types as the listing gives them, and a
/// handle on `dir` to work on them with: `dir` is opened without following a symlink, so
/// whatever is done through the handle stays inside it.
pub(crate) fn list_no_follow(dir: &Path) -> io::Result<(OwnedFd, Vec<(CString, FileType)>)> {
    let fd = open_dir_no_follow(dir)?;
    let mut entries = Vec::new();
    for entry in rustix::fs::Dir::read_from(&fd)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_bytes() != b"." && name.to_bytes() != b".." {
            entries.push((name.to_owned(), entry.file_type()));
        }
    }
    Ok((fd, entries))
}

/// Removes the entries of `dir` last modified more than `age` ago, and returns how many.
/// `dir` itself is opened without following a symlink, and nothing in it is followed: a
/// symlink is removed as a link, and subdirectories are left alone.
pub fn remove_older_than(dir: &Path, age: Duration) -> io::Result<usize> {
    let (fd, entries) = list_no_follow(dir)?;
    let now = SystemTime::now();
    let mut removed = 0;
    for (name, _) in entries {
        let Ok(stat) = rustix::fs::statat(&fd, &name, AtFlags::SYMLINK_NOFOLLOW) else {
            continue;
        };
        if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
            continue;
        }
        let modified = SystemTime::UNIX_EPOCH + Duration::from_secs(stat.st_mtime.max(0) as u64);
        let old = now.duration_since(modified).unwrap_or_default() > age;
        if old && rustix::fs::unlinkat(&fd, &name, AtFlags::empty()).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

/// The file that marks a directory as created by goremotecache.
pub const MARKER: &str = "CACHEDIR.TAG";
const MARKER_TEXT: &str = "Signature: 8a477f597d28d172789f06886806bc55\n\
# This directory is a cache created by goremotecache (a GOCACHEPROG program).\n\
# `goremotecache clear-local` empties it. See https://bford.info/cachedir/\n";

/// Renames a complete temporary file into place. Its shard directory is checked to be a real
/// directory first (created if missing), so that nothing is written through a symlink; a
/// directory where the file should be is removed.
pub fn persist(file: NamedTempFile, path: &Path) -> io::Result<()> {
    if let Some(parent) = path.parent() {
        real_dir(parent)?;
    }
    let file = match file.persist(path) {
        Ok(_) => return Ok(()),
        Err(err) if fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) => err.file,
        Err(err) => return Err(err.error),
    };
    remove_any(path)?;
    file.persist(path).map(drop).map_err(|err| err.error)
}

/// Says what an I/O error means for the cache in words a user acts on: a full disk and a
/// read-only file system are named as such.
pub fn explain_io(err: &io::Error) -> String {
    match err.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
            format!("the disk is full ({err})")
        }
        io::ErrorKind::ReadOnlyFilesystem => format!("the file system is read-only ({err})"),
        io::ErrorKind::PermissionDenied => format!("permission denied ({err})"),
        _ => err.to_string(),
    }
}

/// Creates `dir` if needed and marks it as goremotecache's when it is new or empty. A
/// directory that already holds other files is used but not marked, so that `clear-local`
/// will never empty it.
pub fn prepare_dir(dir: &Path) -> io::Result<()> {
    create_private_dir_all(dir)?;
    let marker = dir.join(MARKER);
    if marker.exists() {
        return Ok(());
    }
    if fs::read_dir(dir)?.next().is_some() {
        tracing::debug!(dir = %dir.display(), "directory is not empty and has no {MARKER}: not marking it");
        return Ok(());
    }
    let mut file = tempfile::Builder::new()
        .prefix(".marker-")
        .permissions(Permissions::from_mode(0o644))
        .tempfile_in(dir)?;
    file.write_all(MARKER_TEXT.as_bytes())?;
    file.persist(&marker).map_err(|err| err.error)?;
    Ok(())
}

/// Whether `dir` carries goremotecache's marker.
pub fn is_marked(dir: &Path) -> bool {
    fs::read_to_string(dir.join(MARKER)).is_ok_and(|text| text.contains("goremotecache"))
}

#[cfg(test)]
mod tests;
