//! The chaos soak: many builds and tests of generated Go modules through goremotecache while a
//! controller injects faults, all drawn from one seeded schedule, with every result checked.
//!
//! Each build picks, from the schedule: a module (three generated ones of different sizes,
//! with packages whose code changes between builds, often back to an earlier version), a way
//! to the store (S3 directly, S3 through the daemon, `serve` on S3, `serve` through the
//! daemon), a machine (a cache directory kept from build to build, or a fresh one), and a
//! fault: latency, stalls past the remote timeout, connection resets, 5xx and SlowDown answers
//! (on GETs and PUTs), truncated and bit-flipped bodies, the store stopped and started again,
//! `serve` killed and started again, SIGKILL of goremotecache (the go command's GOCACHEPROG
//! child) or of the daemon during the build, or three go commands at once on one cache
//! directory. The build is `go build` of a command, which is then run, and `go test -v` (whose
//! results the go command caches and replays).
//!
//! After every build: each go command succeeded (one whose goremotecache was SIGKILLed may
//! fail: it is counted as killed and the build is run again, which must succeed); the command
//! printed, and the tests printed, the values that the module's code computes (worked out
//! here, independently of any cache: a stale or damaged cached result prints another value or
//! fails a test); every entry of the machine's local cache re-hashes to its output ID; every
//! object in the bucket decodes and verifies with the crate's own readers (entries, packs,
//! manifests, key filters); every PUT the bucket acknowledged is still there; and after a
//! direct build whose stats report no upload error or drop while the store stayed up, every
//! action entry the build added locally is in the store.
//!
//! `GOREMOTECACHE_SOAK_SEED` replays a run; `GOREMOTECACHE_SOAK_BUILDS` sets its length (the
//! default is the short soak of 10 builds that runs with the suite); `GOREMOTECACHE_SOAK_SECONDS`
//! stops starting builds after that long, once 10 are done; `GOREMOTECACHE_SOAK_FAULTS`
//! (names from the report, comma-separated) limits the faults drawn; `GOREMOTECACHE_SOAK_REPORT`
//! names a file for the report as JSON. docs/reliability.md has the long run's report.

use crate::daemon::{Flushed, kill_daemon, records};
use crate::serve::{RW, Server};
use crate::support::{self, GoProject};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use goremotecache::cache::manifest::Manifest;
use goremotecache::ids::OutputId;
use goremotecache::store::filter::KeyFilter;
use goremotecache::store::{format, pack};
use serde_json::{Value, json};
use support::s3::{Chaos, Fault, S3Server, SECRET_KEY, credentials, with_prefetch};

/// Builds of the short soak, the suite's (about 15 s each on two busy cores).
const SHORT_BUILDS: u64 = 10;
/// The fewest builds a run makes, whatever its time bound.
const MIN_BUILDS: u64 = 10;
/// The clients' remote timeout: a stall is longer.
const REMOTE_TIMEOUT: &str = "2s";
const STALL_MS: u64 = 3000;
/// The bucket prefixes of the direct clients and of `serve`'s storage.
const S3_PREFIX: &str = "soak";
const SERVE_PREFIX: &str = "served";

/// splitmix64: small, deterministic, and good enough to draw a schedule from.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// How a build reaches the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    S3,
    S3Daemon,
    Serve,
    ServeDaemon,
}

impl Target {
    const ALL: [Target; 4] = [
        Target::S3,
        Target::S3Daemon,
        Target::Serve,
        Target::ServeDaemon,
    ];

    fn daemon(self) -> bool {
        matches!(self, Target::S3Daemon | Target::ServeDaemon)
    }

    fn serve(self) -> bool {
        matches!(self, Target::Serve | Target::ServeDaemon)
    }

    fn name(self) -> &'static str {
        match self {
            Target::S3 => "s3",
            Target::S3Daemon => "s3-daemon",
            Target::Serve => "serve",
            Target::ServeDaemon => "serve-daemon",
        }
    }

    /// Where its entries are in the bucket.
    fn prefix(self) -> &'static str {
        if self.serve() {
            SERVE_PREFIX
        } else {
            S3_PREFIX
        }
    }
}

/// A fault of the schedule; one per build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Calm,
    Latency,
    Stall,
    Reset,
    ServerError,
    SlowDown,
    Truncate,
    Flip,
    StoreRestart,
    ServeRestart,
    KillProgram,
    KillDaemon,
    SharedCache,
    FullDisk,
}

impl Kind {
    const ALL: [Kind; 14] = [
        Kind::Calm,
        Kind::Latency,
        Kind::Stall,
        Kind::Reset,
        Kind::ServerError,
        Kind::SlowDown,
        Kind::Truncate,
        Kind::Flip,
        Kind::StoreRestart,
        Kind::ServeRestart,
        Kind::KillProgram,
        Kind::KillDaemon,
        Kind::SharedCache,
        Kind::FullDisk,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Calm => "none",
            Kind::Latency => "latency",
            Kind::Stall => "stall",
            Kind::Reset => "connection_reset",
            Kind::ServerError => "5xx",
            Kind::SlowDown => "slow_down",
            Kind::Truncate => "truncated_body",
            Kind::Flip => "bit_flipped_body",
            Kind::StoreRestart => "store_restart",
            Kind::ServeRestart => "serve_restart",
            Kind::KillProgram => "sigkill_goremotecache",
            Kind::KillDaemon => "sigkill_daemon",
            Kind::SharedCache => "shared_cache_dir",
            Kind::FullDisk => "full_disk",
        }
    }

    fn fits(self, target: Target) -> bool {
        match self {
            Kind::ServeRestart => target.serve(),
            Kind::KillDaemon => target.daemon(),
            // A daemon started on the small disk would outlive the build out of reach.
            Kind::FullDisk => !target.daemon(),
            _ => true,
        }
    }

    /// The store's request fault for this kind, drawn from `rng`.
    fn chaos(self, rng: &mut Rng) -> Option<Chaos> {
        let (fault, every) = match self {
            Kind::Latency => (Fault::DelayMs(20 + rng.below(200)), 1 + rng.below(2)),
            Kind::Stall => (Fault::DelayMs(STALL_MS), 8 + rng.below(12)),
            Kind::Reset => (Fault::Reset, 2 + rng.below(5)),
            Kind::ServerError => (
                Fault::Status([500, 502, 503][rng.below(3) as usize]),
                2 + rng.below(3),
            ),
            Kind::SlowDown => (Fault::SlowDown, 2 + rng.below(3)),
            Kind::Truncate => (Fault::Truncate, 2 + rng.below(3)),
            Kind::Flip => (Fault::Flip, 2 + rng.below(3)),
            _ => return None,
        };
        Some(Chaos {
            fault,
            every,
            puts: true,
        })
    }
}

/// One package of a generated module.
struct Package {
    deps: Vec<usize>,
    seed: u64,
    fillers: u64,
    blob: usize,
    test: bool,
}

/// A generated module: packages `soak/pN` (each depends on some before it) and a command
/// `cmd/soak` that prints every package's value, inside a [`GoProject`]'s module.
struct Module {
    project: GoProject,
    packages: Vec<Package>,
}

impl Module {
    fn new(tag: &str, size: usize, rng: &mut Rng) -> Self {
        let project = GoProject::new(tag);
        let (count, fillers, blob) = [(3, 5, 0), (5, 40, 16 * 1024), (7, 150, 192 * 1024)][size];
        let mut packages: Vec<Package> = Vec::new();
        for n in 0..count {
            let mut deps: Vec<usize> = (0..n).filter(|_| rng.chance(40)).take(2).collect();
            if deps.is_empty() && n > 0 {
                deps.push(rng.below(n as u64) as usize);
            }
            packages.push(Package {
                deps,
                seed: rng.below(4),
                fillers: rng.below(fillers + 1),
                blob: if n % 2 == 1 { blob } else { 0 },
                test: n == count - 1 || rng.chance(30),
            });
        }
        let module = Self { project, packages };
        module.write();
        module
    }

    /// Each package's value, as its code computes it.
    fn values(&self) -> Vec<u64> {
        let mut values: Vec<u64> = Vec::new();
        for package in &self.packages {
            let deps: u64 = package.deps.iter().map(|&d| values[d]).sum();
            values.push((package.seed + package.blob as u64 + 31 * deps) % 1_000_003);
        }
        values
    }

    /// What `cmd/soak` must print.
    fn expected_command(&self) -> Vec<String> {
        let values = self.values();
        (0..self.packages.len())
            .map(|n| format!("p{n} {}", values[n]))
            .collect()
    }

    /// The lines the tests must print (`go test -v`), sorted.
    fn expected_tests(&self) -> Vec<String> {
        let values = self.values();
        let mut lines: Vec<String> = (self.packages.iter().enumerate())
            .filter(|(_, package)| package.test)
            .map(|(n, _)| format!("soak p{n} {}", values[n]))
            .collect();
        lines.sort();
        lines
    }

    /// Changes the code of up to two packages (back to an earlier version, often).
    fn change(&mut self, rng: &mut Rng) {
        for _ in 0..rng.below(3) {
            let n = rng.below(self.packages.len() as u64) as usize;
            self.packages[n].seed = rng.below(4);
        }
        self.write();
    }

    /// Writes the files whose text changed.
    fn write(&self) {
        let values = self.values();
        let root = &self.project.module;
        let write = |name: String, text: String| {
            let path = root.join(name);
            if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, text).unwrap();
            }
        };
        for (n, package) in self.packages.iter().enumerate() {
            let imports: String = (package.deps.iter())
                .map(|d| format!("\t\"example.com/e2e/soak/p{d}\"\n"))
                .collect();
            let sum = if package.deps.is_empty() {
                "0".to_string()
            } else {
                (package.deps.iter())
                    .map(|d| format!("p{d}.V()"))
                    .collect::<Vec<_>>()
                    .join(" + ")
            };
            let mut code = format!(
                "package p{n}\n\nimport (\n{imports})\n\nconst Seed = {seed}\n\n\
                 var Blob = {blob:?}\n\n\
                 func V() int {{ return (Seed + len(Blob) + 31*({sum})) % 1000003 }}\n",
                seed = package.seed,
                blob = "x".repeat(package.blob),
            );
            if package.deps.is_empty() {
                code = code.replace("import (\n)\n\n", "");
            }
            for f in 0..package.fillers {
                code += &format!(
                    "\nfunc Filler{f}(x int) int {{\n\tif x > {f} {{\n\t\treturn x - {f}\n\t}}\n\t\
                     return x*{} + Filler{}(x+1)\n}}\n",
                    f + 2,
                    f + 1,
                );
            }
            if package.fillers > 0 {
                code = code.replace(&format!("Filler{}(x+1)", package.fillers), "len(Blob)");
            }
            write(format!("soak/p{n}/p{n}.go"), code);
            let test = root.join(format!("soak/p{n}/p{n}_test.go"));
            if package.test {
                write(
                    format!("soak/p{n}/p{n}_test.go"),
                    format!(
                        "package p{n}\n\nimport (\n\t\"fmt\"\n\t\"testing\"\n)\n\n\
                         func TestV(t *testing.T) {{\n\tgot := V()\n\t\
                         fmt.Printf(\"soak p{n} %d\\n\", got)\n\tif got != {want} {{\n\t\t\
                         t.Fatalf(\"V() = %d, want {want}\", got)\n\t}}\n}}\n",
                        want = values[n]
                    ),
                );
            } else {
                let _ = std::fs::remove_file(test);
            }
        }
        let imports: String = (0..self.packages.len())
            .map(|n| format!("\t\"example.com/e2e/soak/p{n}\"\n"))
            .collect();
        let prints: String = (0..self.packages.len())
            .map(|n| format!("\tfmt.Println(\"p{n}\", p{n}.V())\n"))
            .collect();
        write(
            "cmd/soak/main.go".into(),
            format!(
                "package main\n\nimport (\n\t\"fmt\"\n\n{imports})\n\nfunc main() {{\n{prints}}}\n"
            ),
        );
    }
}

/// What a run counted: its report.
#[derive(Default)]
struct Report {
    seed: u64,
    builds: u64,
    go_commands: u64,
    faults: BTreeMap<&'static str, u64>,
    targets: BTreeMap<&'static str, u64>,
    requests_faulted: u64,
    failed: u64,
    killed: u64,
    /// Builds that failed on a full disk, as the go command does on its own cache.
    disk_full: u64,
    wrong: u64,
    corrupt: u64,
    lost: u64,
    /// Builds after which every entry they added was checked to be in the store.
    upload_checks: u64,
    local_verified: u64,
    objects_verified: u64,
    /// Timed faults (restarts, kills) that struck before the build ended.
    struck: u64,
    problems: Vec<String>,
}

impl Report {
    fn json(&self, seconds: f64) -> Value {
        json!({
            "seed": self.seed,
            "builds": self.builds,
            "go_commands": self.go_commands,
            "faults": self.faults,
            "targets": self.targets,
            "requests_faulted": self.requests_faulted,
            "builds_failed": self.failed,
            "builds_killed": self.killed,
            "builds_failed_on_a_full_disk": self.disk_full,
            "wrong_outputs": self.wrong,
            "corrupt_entries": self.corrupt,
            "lost_puts": self.lost,
            "upload_checks": self.upload_checks,
            "timed_faults_struck": self.struck,
            "local_files_verified": self.local_verified,
            "store_objects_verified": self.objects_verified,
            "seconds": seconds,
            "problems": self.problems,
        })
    }

    fn problem(&mut self, text: String) {
        eprintln!("soak: {text}");
        if self.problems.len() < 50 {
            self.problems.push(text);
        }
    }
}

/// The stores and the files already verified (objects and outputs are verified once per
/// version: by length and modification time).
struct Stores {
    s3: Mutex<S3Server>,
    serve: Mutex<Option<Server>>,
    serve_addr: String,
    serve_args: Vec<String>,
    verified: HashMap<PathBuf, (u64, SystemTime)>,
}

impl Stores {
    fn start_serve(addr: &str, args: &[String]) -> Server {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Server::start_at(addr, &args, &credentials(SECRET_KEY))
    }

    /// Both stores up, as after a fault that stopped one.
    fn ensure_up(&self) {
        self.s3.lock().unwrap().restart();
        let mut serve = self.serve.lock().unwrap();
        if serve.is_none() {
            *serve = Some(Self::start_serve(&self.serve_addr, &self.serve_args));
        }
    }

    /// Whether `path` (a file) changed since it was last verified; notes it as verified.
    fn is_new(&mut self, path: &Path) -> bool {
        let Ok(meta) = std::fs::metadata(path) else {
            return false;
        };
        let version = (meta.len(), meta.modified().unwrap());
        self.verified.insert(path.to_path_buf(), version) != Some(version)
    }
}

/// The action entries of a local cache, by name.
fn local_actions(cache_dir: &Path) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for shard in std::fs::read_dir(cache_dir.join("a")).into_iter().flatten() {
        for entry in std::fs::read_dir(shard.unwrap().path())
            .into_iter()
            .flatten()
        {
            names.insert(entry.unwrap().file_name().to_string_lossy().into_owned());
        }
    }
    names
}

/// The files below `dir`.
fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(files_below(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Verifies every entry and output of the local cache at `cache_dir`; returns the problems
/// and how many files were checked.
fn verify_local(stores: &mut Stores, cache_dir: &Path) -> (Vec<String>, u64) {
    let mut problems = Vec::new();
    let mut checked = 0;
    for path in files_below(&cache_dir.join("a")) {
        checked += 1;
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let fields: Vec<&str> = text.split_whitespace().collect();
        let parsed = match fields[..] {
            ["v1", output, size, _time] => OutputId::from_hex(output).zip(size.parse::<u64>().ok()),
            _ => None,
        };
        let Some((output, size)) = parsed else {
            problems.push(format!(
                "local entry {} is not an entry: {text:?}",
                path.display()
            ));
            continue;
        };
        let hex = output.to_hex();
        let output_path = cache_dir.join("o").join(&hex[..2]).join(&hex);
        match std::fs::metadata(&output_path) {
            Ok(meta) if meta.len() == size => {}
            Ok(meta) => problems.push(format!(
                "local entry {} names {hex} of {size} bytes; the output has {}",
                path.display(),
                meta.len()
            )),
            Err(err) => problems.push(format!(
                "local entry {} names {hex}, which is not there: {err}",
                path.display()
            )),
        }
    }
    for path in files_below(&cache_dir.join("o")) {
        if !stores.is_new(&path) {
            continue;
        }
        checked += 1;
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let good = OutputId::from_hex(&name)
            .is_some_and(|id| goremotecache::local::disk::file_has_id(&path, &id).unwrap_or(false));
        if !good {
            problems.push(format!(
                "local output {} does not hash to its name",
                path.display()
            ));
        }
    }
    (problems, checked)
}

/// Verifies every object of the bucket that is new since the last call with the crate's
/// readers; returns the problems and how many objects were checked.
fn verify_bucket(stores: &mut Stores) -> (Vec<String>, u64) {
    let files = stores.s3.lock().unwrap().entry_files();
    let mut problems = Vec::new();
    let mut checked = 0;
    for path in files {
        if !stores.is_new(&path) {
            continue;
        }
        checked += 1;
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let shown = path.display().to_string();
        let result = if shown.contains("/prefetch/v1/") {
            Manifest::decode(&bytes, None).map(drop)
        } else if shown.contains("/pack/v1/") {
            verify_pack(&bytes)
        } else if shown.ends_with("/filter/v1/keys") {
            KeyFilter::decode(&bytes)
                .map(drop)
                .map_err(|err| err.to_string())
        } else if shown.contains("/v1/") {
            format::read_entry(&mut &bytes[..], &mut std::io::sink())
                .map(drop)
                .map_err(|err| err.to_string())
        } else {
            Err("an object the soak does not know".to_string())
        };
        if let Err(err) = result {
            problems.push(format!("bucket object {shown}: {err}"));
        }
    }
    (problems, checked)
}

fn verify_pack(bytes: &[u8]) -> Result<(), String> {
    let toc = pack::Toc::parse(bytes).map_err(|err| err.to_string())?;
    for entry in toc.entries {
        let slice = usize::try_from(entry.offset)
            .ok()
            .zip(usize::try_from(entry.end()).ok())
            .and_then(|(start, end)| bytes.get(start..end))
            .ok_or("a pack entry past its end")?;
        format::read_entry(&mut &slice[..], &mut std::io::sink())
            .map_err(|err| format!("pack entry {}: {err}", entry.action.to_hex()))?;
    }
    Ok(())
}

/// The goremotecache processes that are children of the go commands `parents`.
fn goremotecache_children(parents: &[u32]) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((head, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let ppid: u32 = rest
            .split(' ')
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        if head.ends_with("(goremotecache") && parents.contains(&ppid) {
            out.push(pid);
        }
    }
    out
}

fn sigkill(pid: u32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

/// A timed fault, run by the controller during a build.
#[derive(Debug, Clone, Copy)]
struct Timed {
    kind: Kind,
    after: Duration,
    down: Duration,
}

/// Runs `timed` while the build runs (until `done`); returns whether it struck.
fn control(
    timed: Timed,
    stores: &Stores,
    cache_dir: &Path,
    go_pids: &Mutex<Vec<u32>>,
    done: &AtomicBool,
) -> bool {
    let start = Instant::now();
    while start.elapsed() < timed.after {
        if done.load(Ordering::SeqCst) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    loop {
        if done.load(Ordering::SeqCst) {
            return false;
        }
        match timed.kind {
            Kind::StoreRestart => {
                stores.s3.lock().unwrap().stop();
                std::thread::sleep(timed.down);
                stores.s3.lock().unwrap().restart();
                return true;
            }
            Kind::ServeRestart => {
                drop(stores.serve.lock().unwrap().take());
                std::thread::sleep(timed.down);
                stores.ensure_up();
                return true;
            }
            Kind::KillProgram => {
                let parents = go_pids.lock().unwrap().clone();
                if let Some(&pid) = goremotecache_children(&parents).first() {
                    sigkill(pid);
                    return true;
                }
            }
            Kind::KillDaemon => {
                if let Some(record) = records(cache_dir).first() {
                    kill_daemon(record.pid, rustix::process::Signal::KILL);
                    return true;
                }
            }
            _ => return false,
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One go command of a build and how it ended.
struct Ran {
    args: Vec<String>,
    output: Output,
    stats: Option<Value>,
}

/// What a go command must print, checked after it ran.
#[derive(Clone)]
enum Check {
    /// `go build -o EXE`: EXE must print these lines.
    Command(PathBuf, Vec<String>),
    /// `go test -v`: the tests must print these lines.
    Tests(Vec<String>),
}

/// Runs the go commands `plan` on `project`, all at once if `together`, else one after the
/// other; their pids are in `go_pids` while they run.
fn run_go(
    project: &GoProject,
    plan: &[(Vec<String>, Check)],
    together: bool,
    disk: Option<(u64, &Path)>,
    go_pids: &Mutex<Vec<u32>>,
) -> Vec<Ran> {
    let start = |args: &[String]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (command, stats_file) = project.command(&args);
        let mut command = match disk {
            Some((megabytes, template)) => {
                on_small_disk(command, &project.cache_dir, megabytes, template)
            }
            None => command,
        };
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = command.spawn().expect("starting go");
        go_pids.lock().unwrap().push(child.id());
        (child, stats_file)
    };
    let finish = |args: &[String], (child, stats_file): (std::process::Child, PathBuf)| {
        let pid = child.id();
        let output = child.wait_with_output().expect("waiting for go");
        go_pids.lock().unwrap().retain(|p| *p != pid);
        let stats = support::read_stats(&stats_file);
        Ran {
            args: args.to_vec(),
            output,
            stats,
        }
    };
    if together {
        let children: Vec<_> = plan.iter().map(|(args, _)| start(args)).collect();
        (plan.iter().zip(children))
            .map(|((args, _), child)| finish(args, child))
            .collect()
    } else {
        plan.iter()
            .map(|(args, _)| {
                let child = start(args);
                finish(args, child)
            })
            .collect()
    }
}

/// `command` run with `cache_dir` on a tmpfs of `megabytes` of its own, in a private mount
/// namespace (as tests/suite/disk_errors.rs does), filled first with a copy of the cache at
/// `template` (as much of it as fits): a disk that is full, or fills during the build, under
/// a cache that already holds the standard library (or most of it). The pid stays the go
/// command's (unshare and sh exec it).
fn on_small_disk(command: Command, cache_dir: &Path, megabytes: u64, template: &Path) -> Command {
    std::fs::create_dir_all(cache_dir).unwrap();
    let mut wrapped = Command::new("unshare");
    wrapped
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(
            "mount -t tmpfs -o size=\"$1\",mode=0700 tmpfs \"$2\" || exit 1; \
             cp -a \"$3\"/. \"$2\"/ 2>/dev/null; shift 3 && exec \"$@\"",
        )
        .arg("sh")
        .arg(format!("{megabytes}m"))
        .arg(cache_dir)
        .arg(template)
        .arg(command.get_program())
        .args(command.get_args());
    if let Some(dir) = command.get_current_dir() {
        wrapped.current_dir(dir);
    }
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => wrapped.env(key, value),
            None => wrapped.env_remove(key),
        };
    }
    wrapped
}

/// Fails the soak at once, clearly, where the full-disk fault cannot run.
fn require_unshare() {
    let works = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "true"])
        .status()
        .is_ok_and(|status| status.success());
    assert!(
        works,
        "the soak's full-disk fault needs `unshare --mount` (util-linux, and root or user \
         namespaces), as tests/suite/disk_errors.rs does"
    );
}

/// How one go command's result compares with what it must be.
enum Verdict {
    Right,
    Failed(String),
    Wrong(String),
}

fn judge(ran: &Ran, check: &Check) -> Verdict {
    let stdout = String::from_utf8_lossy(&ran.output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&ran.output.stderr).into_owned();
    if !ran.output.status.success() {
        let text = format!("go {:?} failed:\n{stdout}\n{stderr}", ran.args);
        return if stdout.contains("--- FAIL") {
            Verdict::Wrong(text)
        } else {
            Verdict::Failed(text)
        };
    }
    match check {
        Check::Command(exe, want) => {
            let out = Command::new(exe)
                .output()
                .expect("running the built command");
            let got: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_string)
                .collect();
            if out.status.success() && &got == want {
                Verdict::Right
            } else {
                Verdict::Wrong(format!("{} printed {got:?}, not {want:?}", exe.display()))
            }
        }
        Check::Tests(want) => {
            let mut got: Vec<String> = (stdout.lines())
                .filter(|line| line.starts_with("soak "))
                .map(str::to_string)
                .collect();
            got.sort();
            if &got == want {
                Verdict::Right
            } else {
                Verdict::Wrong(format!(
                    "the tests printed {got:?}, not {want:?}:\n{stdout}"
                ))
            }
        }
    }
}

/// Runs `flush` for the daemon of `project`'s machine and settings: whether it reports
/// every upload done (none dropped, failed or pending), with a daemon there to ask.
fn flushed_cleanly(project: &GoProject) -> bool {
    let mut command = Command::new(support::bin());
    command
        .arg("flush")
        .arg("--cache-dir")
        .arg(&project.cache_dir)
        .arg("--lock-dir")
        .arg(&project.lock_dir)
        .args(&project.args)
        .env_remove("GOREMOTECACHE_CACHE_DIR")
        .env_remove("GOREMOTECACHE_LOCK_DIR")
        .envs(project.env.iter().map(|(k, v)| (k, v)));
    let (code, stdout, _) = support::outcome(&mut command);
    let lines: Vec<Flushed> = (stdout.lines())
        .filter(|line| line.contains(" uploaded, "))
        .map(Flushed::parse)
        .collect();
    code == 0
        && !lines.is_empty()
        && (lines.iter()).all(|f| (f.dropped, f.failed, f.pending) == (0, 0, 0))
}

/// The stats' figure `remote.NAME`, 0 if absent.
fn remote_figure(stats: &Option<Value>, name: &str) -> u64 {
    (stats.as_ref())
        .and_then(|s| s["remote"][name].as_u64())
        .unwrap_or(0)
}

/// Writes the report to `GOREMOTECACHE_SOAK_REPORT`, if set; returns it.
fn write_report(report: &Report, began: Instant) -> Value {
    let json = report.json(began.elapsed().as_secs_f64());
    if let Ok(path) = std::env::var("GOREMOTECACHE_SOAK_REPORT") {
        std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap() + "\n")
            .unwrap_or_else(|err| panic!("cannot write the soak report to {path}: {err}"));
    }
    json
}

fn env_number(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    Some(
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a whole number, not {text:?}")),
    )
}

/// Kills the daemons of the machines under `root` when dropped (they are detached).
struct Machines {
    root: tempfile::TempDir,
}

impl Machines {
    fn kill_daemons_of(cache_dir: &Path) {
        for record in records(cache_dir) {
            kill_daemon(record.pid, rustix::process::Signal::KILL);
        }
    }
}

impl Drop for Machines {
    fn drop(&mut self) {
        for entry in std::fs::read_dir(self.root.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            Self::kill_daemons_of(&entry.path().join("cache"));
        }
    }
}

#[test]
fn builds_survive_a_seeded_storm_of_faults() {
    let seed = env_number("GOREMOTECACHE_SOAK_SEED").unwrap_or_else(|| {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap();
        now.as_nanos() as u64 ^ u64::from(std::process::id())
    });
    let builds = env_number("GOREMOTECACHE_SOAK_BUILDS").unwrap_or(SHORT_BUILDS);
    let bound = env_number("GOREMOTECACHE_SOAK_SECONDS").map(Duration::from_secs);
    let only: Option<Vec<String>> = std::env::var("GOREMOTECACHE_SOAK_FAULTS")
        .ok()
        .map(|list| list.split(',').map(|k| k.trim().to_string()).collect());
    if let Some(only) = &only {
        let known: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
        for name in only {
            assert!(
                known.contains(&name.as_str()),
                "GOREMOTECACHE_SOAK_FAULTS names {name:?}, which is none of {known:?}"
            );
        }
    }
    eprintln!(
        "soak: seed {seed} (GOREMOTECACHE_SOAK_SEED={seed} replays it), {builds} builds, bound {bound:?}"
    );
    require_unshare();
    let began = Instant::now();
    let mut rng = Rng(seed);
    let mut report = Report {
        seed,
        ..Report::default()
    };

    let s3 = S3Server::start();
    support::warm_bucket(&s3, S3_PREFIX);
    support::warm_bucket(&s3, SERVE_PREFIX);
    let mut serve_args = with_prefetch(s3.args(SERVE_PREFIX));
    serve_args.extend(["--remote-timeout".into(), REMOTE_TIMEOUT.into()]);
    let first = Stores::start_serve("127.0.0.1:0", &serve_args);
    let mut stores = Stores {
        s3: Mutex::new(s3),
        serve_addr: first.addr.clone(),
        serve: Mutex::new(Some(first)),
        serve_args,
        verified: HashMap::new(),
    };
    let machines = Machines {
        root: tempfile::tempdir().unwrap(),
    };
    let mut modules: Vec<Module> = (0..3)
        .map(|size| Module::new(&format!("soak-{seed}-{size}"), size, &mut rng))
        .collect();

    for build in 0..builds {
        if build >= MIN_BUILDS && bound.is_some_and(|bound| began.elapsed() > bound) {
            eprintln!("soak: time bound reached after {build} builds");
            break;
        }
        let mut target = Target::ALL[rng.below(4) as usize];
        let kinds: Vec<Kind> = (Kind::ALL.into_iter())
            .filter(|k| k.fits(target) && *k != Kind::Calm)
            .filter(|k| (only.as_ref()).is_none_or(|only| only.iter().any(|n| n == k.name())))
            .collect();
        let mut kind = if rng.chance(10) || kinds.is_empty() {
            Kind::Calm
        } else {
            kinds[rng.below(kinds.len() as u64) as usize]
        };
        let mut fresh = rng.chance(8);
        let mut machine = if fresh {
            format!("fresh-{build}")
        } else {
            format!("{}-{}", target.name(), rng.below(2))
        };
        let mut m = rng.below(modules.len() as u64) as usize;
        if build == 0 {
            // The first build, calm, fills the local cache that every kept machine starts
            // from: the standard library's entries come from the store once, not once per
            // machine (a fault on a cold machine costs a compile of the standard library).
            (target, kind, fresh, machine, m) = (Target::S3, Kind::Calm, false, "first".into(), 0);
        }
        let first_cache = machines.root.path().join("first").join("cache");
        // Room for the copied cache (about 60 MiB) and a little more, or not all of it.
        let disk = (kind == Kind::FullDisk).then(|| (40 + rng.below(40), first_cache.as_path()));
        if disk.is_some() {
            // A cache on a small disk of its own: a fresh machine.
            fresh = true;
            machine = format!("disk-{build}");
        }
        modules[m].change(&mut rng);
        let chaos = kind.chaos(&mut rng);
        let timed = Timed {
            kind,
            after: Duration::from_millis(50 + rng.below(2500)),
            down: Duration::from_millis(100 + rng.below(2000)),
        };
        eprintln!(
            "soak: build {build}: {} on machine {machine}, module {m}, fault {} {chaos:?}{}",
            target.name(),
            kind.name(),
            disk.map(|(mb, _)| format!(" on {mb} MiB"))
                .unwrap_or_default()
        );
        *report.faults.entry(kind.name()).or_default() += 1;
        *report.targets.entry(target.name()).or_default() += 1;

        let build_began = Instant::now();
        let machine_dir = machines.root.path().join(&machine);
        if !fresh && build > 0 && !machine_dir.exists() {
            support::copy_tree(
                &machines.root.path().join("first").join("cache"),
                &machine_dir.join("cache"),
            );
        }
        let module = &mut modules[m];
        let want_command = module.expected_command();
        let want_tests = module.expected_tests();
        let project = &mut module.project;
        project.switch_machine(&format!("gocache-{machine}"));
        project.cache_dir = machine_dir.join("cache");
        project.lock_dir = machine_dir.join("locks");
        project.env = credentials(SECRET_KEY);
        project.subcommand = target.daemon().then_some("connect");
        if target.daemon() {
            project
                .env
                .push(("GOREMOTECACHE_IDLE_EXIT".into(), "30s".into()));
        }
        let serve_url = format!("http://{}", stores.serve_addr);
        project.args = if target.serve() {
            ["--http-url", &serve_url, "--http-token", RW]
                .map(String::from)
                .to_vec()
        } else {
            with_prefetch(stores.s3.lock().unwrap().args(S3_PREFIX))
        };
        project
            .args
            .extend(["--remote-timeout".into(), REMOTE_TIMEOUT.into()]);

        let exe = |name: &str| machine_dir.join(format!("{name}-{build}"));
        let build_plan = |exe: PathBuf| {
            (
                ["build", "-o", exe.to_str().unwrap(), "./cmd/soak"]
                    .map(String::from)
                    .to_vec(),
                Check::Command(exe, want_command.clone()),
            )
        };
        let mut plan = vec![
            build_plan(exe("soak")),
            (
                ["test", "-v", "./soak/..."].map(String::from).to_vec(),
                Check::Tests(want_tests),
            ),
        ];
        if kind == Kind::SharedCache {
            plan.push(build_plan(exe("again")));
        }
        let cache_dir = project.cache_dir.clone();
        let before = local_actions(&cache_dir);

        stores.s3.lock().unwrap().set_chaos(chaos);
        let go_pids = Mutex::new(Vec::new());
        let done = AtomicBool::new(false);
        let (ran, struck) = std::thread::scope(|scope| {
            let controller = scope.spawn(|| control(timed, &stores, &cache_dir, &go_pids, &done));
            let ran = run_go(project, &plan, kind == Kind::SharedCache, disk, &go_pids);
            done.store(true, Ordering::SeqCst);
            (ran, controller.join().unwrap())
        });
        {
            let s3 = stores.s3.lock().unwrap();
            report.requests_faulted += s3.chaos_hits();
            s3.set_chaos(None);
        }
        stores.ensure_up();
        if struck {
            report.struck += 1;
            eprintln!("soak: build {build}: {} struck", kind.name());
        }
        report.builds += 1;
        report.go_commands += ran.len() as u64;

        let verdicts: Vec<Verdict> = (ran.iter().zip(&plan))
            .map(|(ran, (_, check))| judge(ran, check))
            .collect();
        let any_failed = verdicts.iter().any(|v| !matches!(v, Verdict::Right));
        // A full disk fails the go command where a put it cannot do without is refused (the
        // module index's): the go command fails the same way on its own cache.
        let disk_full = disk.is_some()
            && ran.iter().any(|r| {
                !r.output.status.success()
                    && String::from_utf8_lossy(&r.output.stderr).contains("the disk is full")
            });
        if ((kind == Kind::KillProgram && struck) || disk_full) && any_failed {
            if disk_full {
                report.disk_full += 1;
            } else {
                report.killed += 1;
            }
            eprintln!("soak: build {build} failed as expected; building again");
            let again = run_go(project, &plan, false, None, &Mutex::new(Vec::new()));
            report.go_commands += again.len() as u64;
            for (ran, (_, check)) in again.iter().zip(&plan) {
                match judge(ran, check) {
                    Verdict::Right => {}
                    Verdict::Failed(text) => {
                        report.failed += 1;
                        report.problem(format!("build {build} after the kill: {text}"));
                    }
                    Verdict::Wrong(text) => {
                        report.wrong += 1;
                        report.problem(format!("build {build} after the kill: {text}"));
                    }
                }
            }
        } else {
            for verdict in verdicts {
                match verdict {
                    Verdict::Right => {}
                    Verdict::Failed(text) => {
                        report.failed += 1;
                        report.problem(format!("build {build}: {text}"));
                    }
                    Verdict::Wrong(text) => {
                        report.wrong += 1;
                        report.problem(format!("build {build}: {text}"));
                    }
                }
            }
        }

        // Nothing damaged, here or in the store.
        let (mut problems, local) = verify_local(&mut stores, &cache_dir);
        let (in_bucket, objects) = verify_bucket(&mut stores);
        problems.extend(in_bucket);
        report.local_verified += local;
        report.objects_verified += objects;
        for text in problems {
            report.corrupt += 1;
            report.problem(format!("build {build}: {text}"));
        }
        // Nothing acknowledged is lost.
        let acknowledged: BTreeSet<PathBuf> = (stores.s3.lock().unwrap().acknowledged_puts())
            .into_iter()
            .collect();
        let root = stores.s3.lock().unwrap().root.path().to_path_buf();
        for path in acknowledged.iter().filter(|p| !root.join(p).is_file()) {
            report.lost += 1;
            report.problem(format!(
                "build {build}: the acknowledged PUT of {} is gone",
                path.display()
            ));
        }
        // (A small disk's cache is gone with its mount namespace: nothing to compare.)
        let comparable = disk.is_none()
            && !matches!(
                kind,
                Kind::StoreRestart | Kind::ServeRestart | Kind::KillProgram
            );
        let clean = if target.daemon() {
            // The daemon uploads after the build: `flush` waits for it and says how it went.
            ran.iter().all(|r| r.output.status.success()) && flushed_cleanly(project)
        } else {
            ran.iter().all(|r| {
                r.output.status.success()
                    && r.stats.is_some()
                    && remote_figure(&r.stats, "upload_errors") == 0
                    && remote_figure(&r.stats, "uploads_dropped") == 0
            })
        };
        if comparable && clean {
            report.upload_checks += 1;
            let in_bucket = stores
                .s3
                .lock()
                .unwrap()
                .bucket_dir()
                .join(target.prefix())
                .join("v1");
            let added: Vec<String> = local_actions(&cache_dir)
                .difference(&before)
                .filter(|name| !in_bucket.join(name.as_str()).is_file())
                .cloned()
                .collect();
            if !added.is_empty() {
                report.lost += added.len() as u64;
                report.problem(format!(
                    "build {build}: {} entries reported uploaded are not in the store: {:?}",
                    added.len(),
                    &added[..added.len().min(5)]
                ));
            }
        }
        if fresh {
            Machines::kill_daemons_of(&cache_dir);
            let _ = std::fs::remove_dir_all(&machine_dir);
        }
        eprintln!(
            "soak: build {build} done in {:.1} s",
            build_began.elapsed().as_secs_f64()
        );
        // Written after every build, so that a long run cut short still has its report.
        write_report(&report, began);
    }

    let json = write_report(&report, began);
    eprintln!(
        "soak: report {}",
        serde_json::to_string_pretty(&json).unwrap()
    );
    drop(machines);
    assert!(
        report.failed == 0 && report.wrong == 0 && report.corrupt == 0 && report.lost == 0,
        "the soak missed a target (failed {}, wrong {}, corrupt {}, lost {}); replay it with \
         GOREMOTECACHE_SOAK_SEED={seed}:\n{}",
        report.failed,
        report.wrong,
        report.corrupt,
        report.lost,
        report.problems.join("\n")
    );
}
