//! Trimming the local cache, so that it stays bounded on a machine that keeps it for months.
//!
//! Like Go's own cache, the modification time of a file in the cache is when it was last
//! used: a hit and a put of an output already there set it to now, at most once an hour per
//! file ([`crate::fsutil::touch_if_older`]). A trim ([`trim`]) then removes
//!
//! 1. action entries unused for longer than the age (`--trim-age`, 5 days by default), and
//!    outputs unused as long that no remaining entry names;
//! 2. past `--max-cache-size`, the least recently used entries (and the outputs only they
//!    named) and unnamed outputs, oldest first, until the cache is at 90% of the bound. Files
//!    used within [`KEEP_RECENT`] are kept even then, so a build's own working set is never
//!    removed under it: a single day's working set larger than the bound leaves the cache
//!    above it.
//!
//! Sizes are what the files take on disk (allocated blocks, as `du` counts them), of `a/`,
//! `o/` and `mod/`.
//!
//! **Module files.** The daemon's module proxy keeps its answers in `mod/` (see
//! [`crate::goproxy::tiered`]): immutable ones as entries in `mod/v1/<xx>/`, changing ones in
//! `mod/prefetch/`, each refreshed when used as build files are. They are trimmed with the
//! rest by the same rules: removed when unused for longer than the age, and past the size
//! taken least recently used first among the entries and outputs, never one used within
//! [`KEEP_RECENT`]. Nothing names them, so each goes alone; a removed answer is a miss that
//! the proxy fetches again (from the bucket, or upstream).
//!
//! **Safe beside running builds.** An entry is removed before the output it names, and an
//! output only when no remaining entry names it, so an entry never points to a removed output
//! (an entry whose output is gone for another reason is a miss, as always). A file is not
//! unlinked in place: it is first renamed into `tmp/` and its times are read again there. A
//! get or put that used it since the scan has refreshed its time (it was older than the
//! refresh interval, so the use had to) and the file is renamed back; a use that comes after
//! the rename finds no file, and a get then answers a miss rather than a path that is about
//! to disappear. So a trim never removes a file that a get is answering with.
//!
//! **Automatic trim.** After a session, once the go command has its answer to `close` and
//! stdout is closed (the go command waits for nothing else), [`claim`] takes `trim.txt` in
//! the cache directory under an exclusive lock: it holds the Unix seconds of the last trim,
//! and a trim runs only if that is a day old (or missing, or unreadable). The new time is
//! written before trimming, so parallel go commands that finish together do not all trim at
//! once.

use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustix::fd::OwnedFd;
use rustix::fs::{AtFlags, FileType, FlockOperation, Mode, OFlags};
use serde::Serialize;

use super::disk::{DiskCache, parse_entry};
use crate::fsutil::{USE_REFRESH, list_no_follow, open_dir_no_follow, open_or_create_regular};

/// How often the automatic trim runs, at most, per cache directory.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// The default `--trim-age`.
pub const DEFAULT_AGE: Duration = Duration::from_secs(5 * 24 * 3600);
/// Files used more recently than this are never removed for size: any use within the last
/// hour has refreshed a file's time to within this.
pub const KEEP_RECENT: Duration = Duration::from_secs(2 * USE_REFRESH.as_secs());
/// The file that holds the time of the last trim.
pub const TRIM_FILE: &str = "trim.txt";

/// What to remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrimPolicy {
    /// Entries and outputs unused for longer are removed (`--trim-age`).
    pub max_age: Duration,
    /// Above this many bytes, the least recently used are removed down to 90% of it
    /// (`--max-cache-size`).
    pub max_size: Option<u64>,
}

/// What a trim removed (or, in a dry run, would remove) and what it left.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TrimReport {
    pub dry_run: bool,
    pub entries_removed: u64,
    pub outputs_removed: u64,
    /// The module proxy's answers (in `mod/`).
    #[serde(default)]
    pub modules_removed: u64,
    /// Disk space of the removed files.
    pub bytes_removed: u64,
    pub entries_left: u64,
    pub outputs_left: u64,
    #[serde(default)]
    pub modules_left: u64,
    pub bytes_left: u64,
    /// Files that a build used again while the trim ran, and that it therefore kept.
    pub kept_in_use: u64,
    pub seconds: f64,
}

/// One file found by the scan.
#[derive(Debug)]
struct Found {
    /// Index of its shard directory in [`Scan::dirs`].
    dir: usize,
    name: CString,
    /// Its modification time as read (seconds, nanoseconds).
    modified: (i64, i64),
    bytes: u64,
}

#[derive(Debug)]
struct Output {
    file: Found,
    /// Entries that name it and are not removed.
    refs: u32,
    removed: bool,
}

#[derive(Debug)]
struct ActionEntry {
    file: Found,
    /// The output it names (`None`: not an entry of ours).
    output: Option<[u8; 32]>,
    removed: bool,
}

/// A module proxy answer in `mod/`.
#[derive(Debug)]
struct ModuleFile {
    file: Found,
    removed: bool,
}

#[derive(Debug, Default)]
struct Scan {
    dirs: Vec<OwnedFd>,
    entries: Vec<ActionEntry>,
    outputs: HashMap<[u8; 32], Output>,
    modules: Vec<ModuleFile>,
}

/// The trim's own state: what it scanned, and where removals go.
struct Trimmer {
    scan: Scan,
    tmp: OwnedFd,
    dry_run: bool,
    report: TrimReport,
    /// Files found in use again when about to be removed.
    kept_in_use: Cell<u64>,
}

/// Trims the cache by `policy`, now; with `dry_run`, removes nothing and reports what it
/// would remove. Takes no lock: see [`claim`] for the automatic trim's.
pub fn trim(cache: &DiskCache, policy: &TrimPolicy, dry_run: bool) -> io::Result<TrimReport> {
    let start = Instant::now();
    let now = SystemTime::now();
    let mut trimmer = Trimmer::new(cache, dry_run)?;
    trimmer.by_age(now.checked_sub(policy.max_age).unwrap_or(UNIX_EPOCH))?;
    if let Some(max) = policy.max_size {
        let keep_after = now.checked_sub(KEEP_RECENT).unwrap_or(UNIX_EPOCH);
        trimmer.by_size(max / 10 * 9 + max % 10 * 9 / 10, max, keep_after)?;
    }
    let mut report = trimmer.report;
    report.kept_in_use = trimmer.kept_in_use.get();
    let scan = &trimmer.scan;
    report.entries_left = scan.entries.len() as u64 - report.entries_removed;
    report.outputs_left = scan.outputs.len() as u64 - report.outputs_removed;
    report.modules_left = scan.modules.len() as u64 - report.modules_removed;
    report.bytes_left = scan.total_bytes() - report.bytes_removed;
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

impl Scan {
    fn total_bytes(&self) -> u64 {
        let entries: u64 = self.entries.iter().map(|entry| entry.file.bytes).sum();
        let modules: u64 = self.modules.iter().map(|m| m.file.bytes).sum();
        entries + modules + self.outputs.values().map(|o| o.file.bytes).sum::<u64>()
    }
}

impl Trimmer {
    /// Opens `cache`'s `tmp/` and scans the cache.
    fn new(cache: &DiskCache, dry_run: bool) -> io::Result<Self> {
        let tmp = open_dir_no_follow(cache.tmp_dir())?;
        Ok(Trimmer {
            scan: scan(cache.root())?,
            tmp,
            dry_run,
            report: TrimReport {
                dry_run,
                ..TrimReport::default()
            },
            kept_in_use: Cell::new(0),
        })
    }

    /// Removes entries unused since `cutoff`, then outputs unused since then that no
    /// remaining entry names.
    fn by_age(&mut self, cutoff: SystemTime) -> io::Result<()> {
        let cutoff = timespec(cutoff);
        for index in 0..self.scan.entries.len() {
            if self.scan.entries[index].file.modified < cutoff {
                self.remove_entry(index)?;
            }
        }
        let old: Vec<[u8; 32]> = (self.scan.outputs.iter())
            .filter(|(_, o)| o.refs == 0 && o.file.modified < cutoff)
            .map(|(id, _)| *id)
            .collect();
        for id in old {
            self.remove_output(&id)?;
        }
        for index in 0..self.scan.modules.len() {
            if self.scan.modules[index].file.modified < cutoff {
                self.remove_module(index)?;
            }
        }
        Ok(())
    }

    /// Above `max` bytes, removes the least recently used entries with the outputs only
    /// they name, and unnamed outputs (none used since `keep_after`), until `target` bytes
    /// are left.
    fn by_size(&mut self, target: u64, max: u64, keep_after: SystemTime) -> io::Result<()> {
        let mut left = self.scan.total_bytes() - self.report.bytes_removed;
        if left <= max {
            return Ok(());
        }
        enum Victim {
            Entry(usize),
            Output([u8; 32]),
            Module(usize),
        }
        let entries = (self.scan.entries.iter().enumerate())
            .filter(|(_, entry)| !entry.removed)
            .map(|(index, entry)| (entry.file.modified, Victim::Entry(index)));
        let unnamed = (self.scan.outputs.iter())
            .filter(|(_, o)| o.refs == 0 && !o.removed)
            .map(|(id, o)| (o.file.modified, Victim::Output(*id)));
        let modules = (self.scan.modules.iter().enumerate())
            .filter(|(_, module)| !module.removed)
            .map(|(index, module)| (module.file.modified, Victim::Module(index)));
        let mut victims: Vec<_> = entries.chain(unnamed).chain(modules).collect();
        victims.sort_unstable_by_key(|(modified, _)| *modified);
        let keep_after = timespec(keep_after);
        for (modified, victim) in victims {
            if left <= target || modified >= keep_after {
                break;
            }
            let before = self.report.bytes_removed;
            match victim {
                Victim::Entry(index) => {
                    if let Some(id) = self.remove_entry(index)?
                        && self.scan.outputs[&id].file.modified < keep_after
                    {
                        self.remove_output(&id)?;
                    }
                }
                Victim::Output(id) => self.remove_output(&id)?,
                Victim::Module(index) => self.remove_module(index)?,
            }
            left -= self.report.bytes_removed - before;
        }
        Ok(())
    }

    /// Removes an entry. Returns its output if no remaining entry names that any more.
    fn remove_entry(&mut self, index: usize) -> io::Result<Option<[u8; 32]>> {
        let entry = &self.scan.entries[index];
        if entry.removed || !self.remove(&entry.file)? {
            return Ok(None);
        }
        let entry = &mut self.scan.entries[index];
        entry.removed = true;
        self.report.entries_removed += 1;
        self.report.bytes_removed += entry.file.bytes;
        let output = entry.output;
        Ok(output.filter(|id| {
            self.scan.outputs.get_mut(id).is_some_and(|out| {
                out.refs -= 1;
                out.refs == 0
            })
        }))
    }

    fn remove_output(&mut self, id: &[u8; 32]) -> io::Result<()> {
        let out = &self.scan.outputs[id];
        if out.removed || !self.remove(&out.file)? {
            return Ok(());
        }
        let out = self.scan.outputs.get_mut(id).expect("looked up above");
        out.removed = true;
        self.report.outputs_removed += 1;
        self.report.bytes_removed += out.file.bytes;
        Ok(())
    }

    fn remove_module(&mut self, index: usize) -> io::Result<()> {
        let module = &self.scan.modules[index];
        if module.removed || !self.remove(&module.file)? {
            return Ok(());
        }
        let module = &mut self.scan.modules[index];
        module.removed = true;
        self.report.modules_removed += 1;
        self.report.bytes_removed += module.file.bytes;
        Ok(())
    }

    /// Removes `file` unless it was used since the scan (see the module's comment). Returns
    /// whether it was removed (in a dry run: whether it would be).
    fn remove(&self, file: &Found) -> io::Result<bool> {
        if self.dry_run {
            return Ok(true);
        }
        let dir = &self.scan.dirs[file.dir];
        let mut aside = b"trim-".to_vec();
        aside.extend_from_slice(std::process::id().to_string().as_bytes());
        aside.push(b'-');
        aside.extend_from_slice(file.name.to_bytes());
        let aside = CString::new(aside).expect("no NUL in a file name");
        match rustix::fs::renameat(dir, &file.name, &self.tmp, &aside) {
            Ok(()) => {}
            Err(rustix::io::Errno::NOENT) => return Ok(false),
            Err(err) => return Err(err.into()),
        }
        self.settle(file, &aside)
    }

    /// Unlinks the file set aside in `tmp/` as `aside`, or puts it back where it was if it
    /// was used since the scan. Returns whether it is gone.
    fn settle(&self, file: &Found, aside: &CStr) -> io::Result<bool> {
        match self.settle_aside(file, aside) {
            // Gone from tmp/ under us: a session's sweep of stale temporary files removes any
            // file there older than an hour, and this one was (it had not been used since the
            // scan), so it is removed all the same.
            Err(rustix::io::Errno::NOENT) => Ok(true),
            other => Ok(other?),
        }
    }

    fn settle_aside(&self, file: &Found, aside: &CStr) -> rustix::io::Result<bool> {
        let stat = rustix::fs::statat(&self.tmp, aside, AtFlags::SYMLINK_NOFOLLOW)?;
        if (stat.st_mtime, stat.st_mtime_nsec as i64) != file.modified {
            // Used since the scan: back in place (a put of the same output meanwhile wrote the
            // same bytes, so replacing it changes nothing).
            let dir = &self.scan.dirs[file.dir];
            rustix::fs::renameat(&self.tmp, aside, dir, &file.name)?;
            self.kept_in_use.set(self.kept_in_use.get() + 1);
            return Ok(false);
        }
        rustix::fs::unlinkat(&self.tmp, aside, AtFlags::empty())?;
        Ok(true)
    }
}

/// Lists every regular file in the shard directories of `a/` and `o/`, reading each entry
/// for the output it names. Nothing is followed through a symlink.
fn scan(root: &Path) -> io::Result<Scan> {
    let mut scan = Scan::default();
    for kind in ["a", "o"] {
        scan.add_shards(&root.join(kind), kind)?;
    }
    for entry in &scan.entries {
        if let Some(out) = entry.output.and_then(|id| scan.outputs.get_mut(&id)) {
            out.refs += 1;
        }
    }
    scan_modules(&mut scan, &root.join(crate::store::s3::MODULES))?;
    Ok(scan)
}

/// Adds the module proxy's answers under `modules` (`mod/`): the files of the shard
/// directories of `v1/`, and of `prefetch/`. No `mod/` (no module proxy ever ran) has none.
fn scan_modules(scan: &mut Scan, modules: &Path) -> io::Result<()> {
    let absent = |err: &io::Error| err.kind() == io::ErrorKind::NotFound;
    match scan.add_shards(&modules.join("v1"), "mod") {
        Err(err) if absent(&err) => {}
        other => other?,
    }
    match open_dir_no_follow(&modules.join("prefetch")) {
        Ok(dir) => {
            scan.dirs.push(dir);
            scan.add_shard("mod", scan.dirs.len() - 1)?;
        }
        Err(err) if absent(&err) => {}
        Err(err) => return Err(err),
    }
    Ok(())
}

impl Scan {
    /// Adds the files of every shard directory of `parent` (`a/`, `o/`, `mod/v1/`), as
    /// `kind`; a shard that is not a real directory is skipped.
    fn add_shards(&mut self, parent: &Path, kind: &str) -> io::Result<()> {
        let (parent, shards) = list_no_follow(parent)?;
        for (shard, file_type) in shards {
            if !matches!(file_type, FileType::Directory | FileType::Unknown) {
                continue;
            }
            let Ok(dir) = rustix::fs::openat(
                &parent,
                &shard,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            ) else {
                continue;
            };
            self.dirs.push(dir);
            self.add_shard(kind, self.dirs.len() - 1)?;
        }
        Ok(())
    }

    fn add_shard(&mut self, kind: &str, index: usize) -> io::Result<()> {
        let dir = &self.dirs[index];
        for entry in rustix::fs::Dir::read_from(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            if name.to_bytes().starts_with(b".") {
                continue;
            }
            let Ok(stat) = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) else {
                continue;
            };
            if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
                continue;
            }
            let file = Found {
                dir: index,
                name: name.to_owned(),
                modified: (stat.st_mtime, stat.st_mtime_nsec as i64),
                bytes: stat.st_blocks as u64 * 512,
            };
            if kind == "mod" {
                // Named by a sha256 (see `goproxy::entry_store`); anything else is not ours.
                if hex_id(name).is_some() {
                    self.modules.push(ModuleFile {
                        file,
                        removed: false,
                    });
                }
            } else if kind == "a" {
                let output = read_entry(dir, name);
                self.entries.push(ActionEntry {
                    file,
                    output,
                    removed: false,
                });
            } else if let Some(id) = hex_id(name) {
                let output = Output {
                    file,
                    refs: 0,
                    removed: false,
                };
                self.outputs.insert(id, output);
            }
        }
        Ok(())
    }
}

/// The output an entry file names, if it is an entry of ours.
fn read_entry(dir: &OwnedFd, name: &CStr) -> Option<[u8; 32]> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let mut buf = [0u8; 256];
    let mut file = File::from(fd);
    let len = file.read(&mut buf).ok()?;
    let (output, _, _) = parse_entry(std::str::from_utf8(&buf[..len]).ok()?)?;
    Some(output.0)
}

fn hex_id(name: &CStr) -> Option<[u8; 32]> {
    let name = name.to_str().ok()?;
    crate::ids::OutputId::from_hex(name).map(|id| id.0)
}

fn timespec(time: SystemTime) -> (i64, i64) {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    (since.as_secs() as i64, i64::from(since.subsec_nanos()))
}

/// The automatic trim, at most once a day per cache directory: trims the cache at `root` if
/// [`claim`] says it is due (`Ok(None)`: not due, or another process is trimming).
pub fn trim_if_due(root: &Path, policy: &TrimPolicy) -> io::Result<Option<TrimReport>> {
    let Some(claim) = claim(root)? else {
        return Ok(None);
    };
    let report = trim(&DiskCache::at(root), policy, false)?;
    drop(claim);
    Ok(Some(report))
}

/// The automatic trim's claim on `trim.txt`: while it is held, no other process trims.
#[derive(Debug)]
pub struct Claim {
    _file: File,
}

/// Claims the automatic trim of the cache at `root` if the last one is at least
/// [`TRIM_INTERVAL`] old and no other process holds the claim; `None` otherwise. The claim
/// writes the current time to `trim.txt` first, so that the next day's trim is the next one.
pub fn claim(root: &Path) -> io::Result<Option<Claim>> {
    let mut file = open_or_create_regular(&root.join(TRIM_FILE))?;
    match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => return Ok(None),
        Err(err) => return Err(err.into()),
    }
    let now = SystemTime::now();
    let mut text = String::new();
    file.read_to_string(&mut text).ok();
    if let Ok(last) = text.trim().parse::<u64>() {
        let last = UNIX_EPOCH + Duration::from_secs(last);
        // A time in the future (a clock set back) is believed only to within an hour.
        let recent = match now.duration_since(last) {
            Ok(since) => since < TRIM_INTERVAL,
            Err(ahead) => ahead.duration() < USE_REFRESH,
        };
        if recent {
            return Ok(None);
        }
    }
    record(&mut file, now)?;
    Ok(Some(Claim { _file: file }))
}

/// Takes the trim lock for a trim asked for by hand, waiting for a running trim to finish,
/// and records the time: the next automatic trim is a day after it.
pub fn claim_now(root: &Path) -> io::Result<Claim> {
    let mut file = open_or_create_regular(&root.join(TRIM_FILE))?;
    rustix::fs::flock(&file, FlockOperation::LockExclusive)?;
    record(&mut file, SystemTime::now())?;
    Ok(Claim { _file: file })
}

/// Replaces what `trim.txt` holds with `now`, in Unix seconds.
fn record(file: &mut File, now: SystemTime) -> io::Result<()> {
    let secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    file.set_len(0)?;
    file.rewind()?;
    writeln!(file, "{secs}")
}

#[cfg(test)]
mod tests;
