//! Counters of what one run did, printed as a summary on stderr (`--stats`) and written as
//! JSON (`--stats-file`) when the go command closes the session.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::local::trim::TrimReport;

/// Live counters, updated by request handlers.
#[derive(Debug)]
pub struct Stats {
    started: Instant,
    gets: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    get_errors: AtomicU64,
    hit_bytes: AtomicU64,
    get_nanos: AtomicU64,
    puts: AtomicU64,
    put_errors: AtomicU64,
    put_bytes: AtomicU64,
    puts_already_stored: AtomicU64,
    put_nanos: AtomicU64,
    bad_requests: AtomicU64,
    /// The remote tier's counters, when there is one.
    pub remote: Option<RemoteStats>,
}

/// Counters of the remote tier. Handlers bump them with [`add`].
#[derive(Debug, Default)]
pub struct RemoteStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub errors: AtomicU64,
    /// Entries that failed verification (bad header, size or sha256): misses, never stored.
    pub corrupt: AtomicU64,
    /// Entry bytes received.
    pub bytes_down: AtomicU64,
    /// Time gets spent waiting on the remote, summed over concurrent gets.
    pub wait_nanos: AtomicU64,
    pub uploads: AtomicU64,
    /// Uploads that found an entry already there (nothing written).
    pub uploads_existing: AtomicU64,
    pub upload_errors: AtomicU64,
    /// Uploads not done: queue full, remote switched off, or still pending at exit.
    pub uploads_dropped: AtomicU64,
    /// Entries not uploaded because they are under `--upload-min-size`.
    pub uploads_small: AtomicU64,
    /// Entry bytes sent, and the raw bytes they hold.
    pub bytes_up: AtomicU64,
    pub raw_bytes_up: AtomicU64,
    pub queue_high_water: AtomicU64,
    /// Time spent at close waiting for uploads.
    pub close_wait_nanos: AtomicU64,
    /// Local misses answered at once because the key filters ruled the key out
    /// ([`super::misses`]; not in `misses`, which the store answered), and those whose upload
    /// then found the entry in the store (a wrong "absent": compiled again).
    pub instant_misses: AtomicU64,
    pub instant_misses_wrong: AtomicU64,
    /// Keys in the own namespace's filter as last fetched (0: none).
    pub filter_keys: AtomicU64,
    /// Keys in the filter this run wrote at its end (0: none written).
    pub filter_written: AtomicU64,
    /// Whether prefetch is on in this run.
    pub prefetch_on: std::sync::atomic::AtomicBool,
    /// Entries in the manifest found at start.
    pub prefetch_listed: AtomicU64,
    /// Entries of the manifest (within the budget) that were on local disk already.
    pub prefetch_local: AtomicU64,
    /// Entries that prefetch stored, and their (uncompressed) bytes.
    pub prefetch_fetched: AtomicU64,
    pub prefetch_bytes: AtomicU64,
    /// Entries of the manifest that the remote did not have.
    pub prefetch_missing: AtomicU64,
    pub prefetch_errors: AtomicU64,
    /// Prefetched entries that the go command then asked for, and those it never did.
    pub prefetch_used: AtomicU64,
    pub prefetch_wasted: AtomicU64,
    /// The wasted entries' bytes (uncompressed, as the manifest lists them).
    pub prefetch_wasted_bytes: AtomicU64,
    /// Time from the start of the run to the end of the prefetch work.
    pub prefetch_nanos: AtomicU64,
    /// Entries in the manifest written at close (0: none written).
    pub manifest_written: AtomicU64,
    /// Packs (bulk prefetch): ranged GETs of the pack and their bytes, entries stored from
    /// it, entries of it that did not verify.
    pub pack_requests: AtomicU64,
    pub pack_bytes_down: AtomicU64,
    pub pack_entries: AtomicU64,
    pub pack_damaged: AtomicU64,
    /// Entries in the pack written at close (0: none written), and its bytes.
    pub pack_written: AtomicU64,
    pub pack_bytes_written: AtomicU64,
    /// Time spent at close deciding on, building and uploading the pack.
    pub pack_write_nanos: AtomicU64,
    /// With namespaces: entries found in each, in the order they are read (set once, when
    /// the tier starts).
    pub namespaces: std::sync::OnceLock<Vec<NamespaceCounts>>,
}

/// Entries found in one namespace.
#[derive(Debug)]
pub struct NamespaceCounts {
    pub name: String,
    /// Fetched for a get of the go command.
    pub hits: AtomicU64,
    /// Fetched by prefetch.
    pub prefetched: AtomicU64,
}

impl RemoteStats {
    /// Names the namespaces read, own first (`None`: un-namespaced); nothing is counted by
    /// namespace without namespaces.
    pub fn name_namespaces(&self, names: &[Option<crate::ids::Namespace>]) {
        if names.iter().all(Option::is_none) {
            return;
        }
        let counts = (names.iter())
            .map(|name| NamespaceCounts {
                name: name.as_ref().map_or("", |n| n.as_str()).to_string(),
                hits: AtomicU64::new(0),
                prefetched: AtomicU64::new(0),
            })
            .collect();
        let _ = self.namespaces.set(counts);
    }

    /// Counts an entry found in the namespace at `index`, by prefetch or by a get.
    pub fn count_in_namespace(&self, index: usize, prefetch: bool) {
        if let Some(counts) = self.namespaces.get().and_then(|c| c.get(index)) {
            add(
                if prefetch {
                    &counts.prefetched
                } else {
                    &counts.hits
                },
                1,
            );
        }
    }
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

/// Adds `n` to a counter.
pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// A duration as whole nanoseconds, for a counter.
pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Stats {
    pub fn new() -> Self {
        Self::with_remote(false)
    }

    /// Counters for a cache with (`true`) or without a remote tier.
    pub fn with_remote(remote: bool) -> Self {
        Self {
            remote: remote.then(RemoteStats::default),
            started: Instant::now(),
            gets: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            get_errors: AtomicU64::new(0),
            hit_bytes: AtomicU64::new(0),
            get_nanos: AtomicU64::new(0),
            puts: AtomicU64::new(0),
            put_errors: AtomicU64::new(0),
            put_bytes: AtomicU64::new(0),
            puts_already_stored: AtomicU64::new(0),
            put_nanos: AtomicU64::new(0),
            bad_requests: AtomicU64::new(0),
        }
    }

    /// A get that found `size` bytes (`Some`) or missed (`None`).
    pub fn record_get(&self, hit: Option<u64>, took: Duration) {
        add(&self.gets, 1);
        add(&self.get_nanos, nanos(took));
        match hit {
            Some(size) => {
                add(&self.hits, 1);
                add(&self.hit_bytes, size);
            }
            None => add(&self.misses, 1),
        }
    }

    /// A get that failed on a local I/O error (answered as a miss).
    pub fn record_get_error(&self, took: Duration) {
        add(&self.get_errors, 1);
        self.record_get(None, took);
    }

    /// A put that stored `size` bytes; `already` when the output was on disk before.
    pub fn record_put(&self, size: u64, already: bool, took: Duration) {
        add(&self.puts, 1);
        add(&self.put_bytes, size);
        add(&self.put_nanos, nanos(took));
        if already {
            add(&self.puts_already_stored, 1);
        }
    }

    /// A put that could not be stored.
    pub fn record_put_error(&self, took: Duration) {
        add(&self.puts, 1);
        add(&self.put_errors, 1);
        add(&self.put_nanos, nanos(took));
    }

    /// A request that could not be parsed or was invalid.
    pub fn record_bad_request(&self) {
        add(&self.bad_requests, 1);
    }

    /// The figures as they are now.
    pub fn report(&self) -> Report {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Report {
            gets: get(&self.gets),
            hits: get(&self.hits),
            misses: get(&self.misses),
            get_errors: get(&self.get_errors),
            hit_bytes: get(&self.hit_bytes),
            get_seconds: get(&self.get_nanos) as f64 / 1e9,
            puts: get(&self.puts),
            put_errors: get(&self.put_errors),
            put_bytes: get(&self.put_bytes),
            puts_already_stored: get(&self.puts_already_stored),
            put_seconds: get(&self.put_nanos) as f64 / 1e9,
            bad_requests: get(&self.bad_requests),
            run_seconds: self.started.elapsed().as_secs_f64(),
            peak_rss_bytes: peak_rss_bytes(),
            remote: self.remote.as_ref().map(|r| RemoteReport {
                hits: get(&r.hits),
                misses: get(&r.misses),
                errors: get(&r.errors),
                corrupt: get(&r.corrupt),
                bytes_down: get(&r.bytes_down),
                wait_seconds: get(&r.wait_nanos) as f64 / 1e9,
                uploads: get(&r.uploads),
                uploads_existing: get(&r.uploads_existing),
                upload_errors: get(&r.upload_errors),
                uploads_dropped: get(&r.uploads_dropped),
                uploads_small: get(&r.uploads_small),
                bytes_up: get(&r.bytes_up),
                raw_bytes_up: get(&r.raw_bytes_up),
                compression_ratio: match get(&r.bytes_up) {
                    0 => None,
                    up => Some(get(&r.raw_bytes_up) as f64 / up as f64),
                },
                queue_high_water: get(&r.queue_high_water),
                close_wait_seconds: get(&r.close_wait_nanos) as f64 / 1e9,
                instant_misses: get(&r.instant_misses),
                instant_misses_wrong: get(&r.instant_misses_wrong),
                filter_keys: get(&r.filter_keys),
                filter_written: get(&r.filter_written),
                prefetch: r
                    .prefetch_on
                    .load(Ordering::Relaxed)
                    .then(|| PrefetchReport {
                        listed: get(&r.prefetch_listed),
                        already_local: get(&r.prefetch_local),
                        fetched: get(&r.prefetch_fetched),
                        bytes: get(&r.prefetch_bytes),
                        missing: get(&r.prefetch_missing),
                        errors: get(&r.prefetch_errors),
                        used: get(&r.prefetch_used),
                        wasted: get(&r.prefetch_wasted),
                        wasted_bytes: get(&r.prefetch_wasted_bytes),
                        seconds: get(&r.prefetch_nanos) as f64 / 1e9,
                        manifest_written: get(&r.manifest_written),
                        pack: Box::new(PackReport {
                            requests: get(&r.pack_requests),
                            bytes_down: get(&r.pack_bytes_down),
                            entries: get(&r.pack_entries),
                            damaged: get(&r.pack_damaged),
                            written: get(&r.pack_written),
                            bytes_written: get(&r.pack_bytes_written),
                            write_seconds: get(&r.pack_write_nanos) as f64 / 1e9,
                        }),
                    }),
                namespaces: (r.namespaces.get().into_iter().flatten())
                    .map(|n| NamespaceReport {
                        name: n.name.clone(),
                        hits: get(&n.hits),
                        prefetched: get(&n.prefetched),
                    })
                    .collect(),
            }),
            trim: None,
            daemon: None,
        }
    }
}

/// A snapshot of [`Stats`]; its JSON form is what `--stats-file` writes.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub gets: u64,
    pub hits: u64,
    pub misses: u64,
    /// Gets that failed on a local I/O error and were answered as misses.
    pub get_errors: u64,
    pub hit_bytes: u64,
    /// Time spent answering gets, summed over concurrent requests.
    pub get_seconds: f64,
    pub puts: u64,
    pub put_errors: u64,
    pub put_bytes: u64,
    /// Puts whose output was already on disk (nothing written).
    pub puts_already_stored: u64,
    /// Time spent storing puts (after their bodies arrived), summed over concurrent requests.
    pub put_seconds: f64,
    pub bad_requests: u64,
    /// Time from start to the end of the session.
    pub run_seconds: f64,
    /// The process's peak resident memory, where the OS tells it.
    pub peak_rss_bytes: Option<u64>,
    /// The remote tier's figures, when there is one.
    pub remote: Option<RemoteReport>,
    /// What the automatic trim after the session removed, when one ran (it runs after this
    /// report is first printed and written: the stats file is then written again with it).
    pub trim: Option<TrimReport>,
    /// The daemon that served this session (`goremotecache connect`); `None` for a session
    /// that ran on its own.
    pub daemon: Option<DaemonNote>,
}

/// The daemon that served a `connect` session. In that session's report, the remote hits and
/// misses are the session's own; the upload and prefetch figures are the daemon's, for every
/// session it served so far (uploads go on after the session).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DaemonNote {
    pub pid: u32,
    pub socket: String,
    /// Uploads queued or in flight in the daemon when the session closed.
    pub uploads_pending: u64,
    /// Sessions the daemon served so far, this one included.
    pub sessions_total: u64,
}

/// A snapshot of [`RemoteStats`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RemoteReport {
    pub hits: u64,
    pub misses: u64,
    pub errors: u64,
    pub corrupt: u64,
    pub bytes_down: u64,
    pub wait_seconds: f64,
    pub uploads: u64,
    pub uploads_existing: u64,
    pub upload_errors: u64,
    pub uploads_dropped: u64,
    /// Entries not uploaded because they are under `--upload-min-size` (they stay local).
    #[serde(default)]
    pub uploads_small: u64,
    pub bytes_up: u64,
    pub raw_bytes_up: u64,
    /// Raw bytes per stored byte of the entries uploaded.
    pub compression_ratio: Option<f64>,
    pub queue_high_water: u64,
    pub close_wait_seconds: f64,
    /// Local misses answered without asking the store (the key filters ruled them out), and
    /// those the store turned out to have (compiled again).
    #[serde(default)]
    pub instant_misses: u64,
    #[serde(default)]
    pub instant_misses_wrong: u64,
    /// Keys in the own namespace's key filter as last fetched, and in the one written at the
    /// end (0: none).
    #[serde(default)]
    pub filter_keys: u64,
    #[serde(default)]
    pub filter_written: u64,
    /// Prefetch's figures, when it is on.
    pub prefetch: Option<PrefetchReport>,
    /// With namespaces: the entries found in each, own first (the un-namespaced layout is
    /// named "").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<NamespaceReport>,
}

/// Entries found in one namespace in a run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NamespaceReport {
    pub name: String,
    /// Fetched for the go command's gets.
    pub hits: u64,
    /// Fetched by prefetch.
    pub prefetched: u64,
}

/// What prefetch did in a run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PrefetchReport {
    /// Entries in the manifest found at start.
    pub listed: u64,
    /// Entries of the manifest (within the budget) already on local disk.
    pub already_local: u64,
    /// Entries prefetched into the local cache, and their uncompressed bytes.
    pub fetched: u64,
    pub bytes: u64,
    /// Entries of the manifest that the remote did not have.
    pub missing: u64,
    pub errors: u64,
    /// Prefetched entries the go command then asked for.
    pub used: u64,
    /// Prefetched entries it never asked for in this run (left out of the manifest written
    /// at its end), and their uncompressed bytes.
    pub wasted: u64,
    #[serde(default)]
    pub wasted_bytes: u64,
    /// Time from the start of the run until prefetching ended.
    pub seconds: f64,
    /// Entries in the manifest written at the end of the run (0: not written, as when
    /// nothing changed).
    pub manifest_written: u64,
    /// What the pack (bulk prefetch) did (boxed: the daemon's answers carry this report, and
    /// their variants stay about one size).
    #[serde(default)]
    pub pack: Box<PackReport>,
}

/// What prefetch's pack did in a run (docs/prefetch.md).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PackReport {
    /// Ranged GETs of the pack (its table of contents included), and the bytes they brought.
    pub requests: u64,
    pub bytes_down: u64,
    /// Entries stored from the pack (counted in the prefetch's `fetched` too).
    pub entries: u64,
    /// Entries of the pack that did not verify: fetched on their own instead, never stored.
    pub damaged: u64,
    /// Entries in the pack written at the end of the run (0: none written), and its bytes.
    pub written: u64,
    pub bytes_written: u64,
    /// Time the close spent on the pack (deciding, building, uploading): the go command
    /// waits for it.
    #[serde(default)]
    pub write_seconds: f64,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rate = if self.gets == 0 {
            0.0
        } else {
            100.0 * self.hits as f64 / self.gets as f64
        };
        writeln!(
            f,
            "goremotecache: {} gets: {} hits ({rate:.1}%), {} misses, {} errors, {} read, {:.3}s",
            self.gets,
            self.hits,
            self.misses,
            self.get_errors,
            human_bytes(self.hit_bytes),
            self.get_seconds
        )?;
        writeln!(
            f,
            "goremotecache: {} puts: {} written, {} already stored, {} errors, {:.3}s",
            self.puts,
            human_bytes(self.put_bytes),
            self.puts_already_stored,
            self.put_errors,
            self.put_seconds
        )?;
        if let Some(r) = &self.remote {
            writeln!(
                f,
                "goremotecache: remote: {} hits, {} misses{}, {} errors, {} corrupt, {} down, {:.3}s waiting",
                r.hits,
                r.misses,
                match (r.instant_misses, r.instant_misses_wrong) {
                    (0, _) => String::new(),
                    (n, 0) => format!(" (+{n} instant)"),
                    (n, wrong) => format!(" (+{n} instant, {wrong} of them stored after all)"),
                },
                r.errors,
                r.corrupt,
                human_bytes(r.bytes_down),
                r.wait_seconds
            )?;
            let ratio = r
                .compression_ratio
                .map_or("-".to_string(), |x| format!("{x:.2}x"));
            writeln!(
                f,
                "goremotecache: uploads: {} stored, {} already there, {} errors, {} dropped,{} {} up ({} raw, compression {ratio}), queue peak {}, {:.3}s waiting at close",
                r.uploads,
                r.uploads_existing,
                r.upload_errors,
                r.uploads_dropped,
                match r.uploads_small {
                    0 => String::new(),
                    n => format!(" {n} under --upload-min-size,"),
                },
                human_bytes(r.bytes_up),
                human_bytes(r.raw_bytes_up),
                r.queue_high_water,
                r.close_wait_seconds
            )?;
            if !r.namespaces.is_empty() {
                let each: Vec<String> = (r.namespaces.iter())
                    .map(|n| {
                        let name = if n.name.is_empty() { "(none)" } else { &n.name };
                        format!("{name} {} hits + {} prefetched", n.hits, n.prefetched)
                    })
                    .collect();
                writeln!(f, "goremotecache: namespaces: {}", each.join(", "))?;
            }
            if let Some(p) = &r.prefetch {
                writeln!(
                    f,
                    "goremotecache: prefetch: {} listed, {} already local, {} fetched ({}) in {:.3}s, {} used, {} wasted ({}), {} missing, {} errors; manifest {}",
                    p.listed,
                    p.already_local,
                    p.fetched,
                    human_bytes(p.bytes),
                    p.seconds,
                    p.used,
                    p.wasted,
                    human_bytes(p.wasted_bytes),
                    p.missing,
                    p.errors,
                    match p.manifest_written {
                        0 => "unchanged".to_string(),
                        n => format!("of {n} entries written"),
                    }
                )?;
                let k = &p.pack;
                if k.requests > 0 || k.written > 0 {
                    writeln!(
                        f,
                        "goremotecache: pack: {} requests, {} down, {} entries from it, {} damaged; {}",
                        k.requests,
                        human_bytes(k.bytes_down),
                        k.entries,
                        k.damaged,
                        match k.written {
                            0 => "not written".to_string(),
                            n => format!(
                                "{n} entries ({}) written in {:.3}s",
                                human_bytes(k.bytes_written),
                                k.write_seconds
                            ),
                        }
                    )?;
                }
            }
        }
        if let Some(d) = &self.daemon {
            writeln!(
                f,
                "goremotecache: daemon: pid {} at {}, {} sessions so far; the upload and prefetch figures are its totals; {} uploads pending (goremotecache flush waits for them)",
                d.pid, d.socket, d.sessions_total, d.uploads_pending
            )?;
        }
        write!(f, "goremotecache: run {:.3}s", self.run_seconds)?;
        if let Some(rss) = self.peak_rss_bytes {
            write!(f, ", peak memory {}", human_bytes(rss))?;
        }
        if self.bad_requests > 0 {
            write!(f, ", {} bad requests", self.bad_requests)?;
        }
        writeln!(f)
    }
}

impl Report {
    /// The run in one line, for the log file: gets, hits, misses, puts, the remote's hits,
    /// errors and uploads, the time.
    pub fn one_line(&self) -> String {
        let mut line = format!(
            "run ended: {} gets, {} hits, {} misses, {} puts",
            self.gets, self.hits, self.misses, self.puts
        );
        if let Some(r) = &self.remote {
            line += &format!(
                "; remote {} hits, {} misses, {} errors, {} down, {:.3}s waiting; {} uploads, {} upload errors, {} dropped",
                r.hits,
                r.misses,
                r.errors,
                human_bytes(r.bytes_down),
                r.wait_seconds,
                r.uploads,
                r.upload_errors,
                r.uploads_dropped
            );
        }
        line + &format!("; {:.3}s", self.run_seconds)
    }

    /// Adds the request figures of `other` (a session served partly by two caches: a
    /// `connect` whose daemon went away).
    pub fn add_requests(&mut self, other: &Report) {
        self.gets += other.gets;
        self.hits += other.hits;
        self.misses += other.misses;
        self.get_errors += other.get_errors;
        self.hit_bytes += other.hit_bytes;
        self.get_seconds += other.get_seconds;
        self.puts += other.puts;
        self.put_errors += other.put_errors;
        self.put_bytes += other.put_bytes;
        self.puts_already_stored += other.puts_already_stored;
        self.put_seconds += other.put_seconds;
        self.bad_requests += other.bad_requests;
    }

    /// Writes the report as JSON to `path` (`--stats-file`), replacing the file by a rename
    /// so that a reader never sees half of it (the automatic trim writes it a second time,
    /// after the go command may have exited); a failure is said on stderr.
    pub fn write_json(&self, path: &std::path::Path) {
        let json = serde_json::to_vec_pretty(self).expect("the report serializes");
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => std::path::Path::new("."),
        };
        let written = tempfile::Builder::new()
            .prefix(".stats-")
            .tempfile_in(dir)
            .and_then(|mut file| {
                std::io::Write::write_all(&mut file, &json)?;
                file.persist(path).map(drop).map_err(|err| err.error)
            });
        if let Err(err) = written {
            tracing::warn!("cannot write stats file {}: {err}", path.display());
        }
    }
}

impl fmt::Display for TrimReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.dry_run {
            "would remove"
        } else {
            "removed"
        };
        if self.modules_removed + self.modules_left == 0 {
            write!(
                f,
                "trim {verb} {} entries and {} outputs ({}) in {:.3}s; left: {} entries, {} outputs ({})",
                self.entries_removed,
                self.outputs_removed,
                human_bytes(self.bytes_removed),
                self.seconds,
                self.entries_left,
                self.outputs_left,
                human_bytes(self.bytes_left)
            )?;
        } else {
            write!(
                f,
                "trim {verb} {} entries, {} outputs and {} module files ({}) in {:.3}s; left: {} entries, {} outputs, {} module files ({})",
                self.entries_removed,
                self.outputs_removed,
                self.modules_removed,
                human_bytes(self.bytes_removed),
                self.seconds,
                self.entries_left,
                self.outputs_left,
                self.modules_left,
                human_bytes(self.bytes_left)
            )?;
        }
        if self.kept_in_use > 0 {
            write!(
                f,
                "; {} kept because a build used them meanwhile",
                self.kept_in_use
            )?;
        }
        writeln!(f)
    }
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Peak resident set size from `/proc/self/status` (Linux); `None` elsewhere.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_counts_and_prints() {
        let stats = Stats::new();
        stats.record_get(Some(2048), Duration::from_millis(1));
        stats.record_get(None, Duration::from_millis(1));
        stats.record_get_error(Duration::from_millis(1));
        stats.record_put(100, false, Duration::from_millis(2));
        stats.record_put(100, true, Duration::from_millis(2));
        stats.record_put_error(Duration::from_millis(2));
        let report = stats.report();
        assert_eq!(
            (report.gets, report.hits, report.misses, report.get_errors),
            (3, 1, 2, 1)
        );
        assert_eq!(
            (report.puts, report.put_bytes, report.puts_already_stored),
            (3, 200, 1)
        );
        assert_eq!(report.put_errors, 1);
        let text = report.to_string();
        assert!(
            text.contains("3 gets: 1 hits (33.3%), 2 misses, 1 errors, 2.0 KiB read"),
            "{text}"
        );
        assert!(
            text.contains("3 puts: 200 B written, 1 already stored, 1 errors"),
            "{text}"
        );
    }

    #[test]
    fn bytes_are_human() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(156 * 1024 * 1024), "156.0 MiB");
    }
}
