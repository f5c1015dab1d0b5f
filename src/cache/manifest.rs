//! Prefetch: what a build will ask for, learned from the last runs of the same build.
//!
//! At the end of a run, the action IDs of the entries that the go command used or stored (gets
//! that hit, and puts, in the order it first asked) are merged into a manifest stored in the
//! remote under a [`BuildKey`]. At the start
//! of the next run with the same key, the remote tier ([`crate::cache::remote`]) fetches that
//! manifest and pulls the listed entries into the local cache, many at once, so that the go
//! command's gets find them on disk instead of paying one round trip each.
//!
//! The build key is derived, with no configuration, from what identifies "the same build":
//! the working directory, the go command's arguments (read from the parent process on Linux),
//! GOOS, GOARCH, GOFLAGS, the Go version and the CI job's identity; `--prefetch-key`
//! replaces it. The branch is deliberately not part of it: jobs on different branches share
//! a manifest, and merging keeps what each asked for (see [`Manifest::merge`]).
//!
//! A manifest is zstd-compressed text (see docs/prefetch.md):
//!
//! ```text
//! goremotecache prefetch manifest v1
//! # written=1767225600                   (Unix seconds of the write: see [`REFRESH`])
//! # cwd=/home/runner/work/app/app        (what made the key, for people reading it)
//! <actionid-hex> <size> <age>             (one line per entry, in prefetch order)
//! ```
//!
//! A manifest's time in the store is the time of its last use, give or take [`REFRESH`]: a
//! run that would leave it unchanged still writes it again once it is that old, so that
//! `gc-remote` ([`crate::cache::gc`]) can keep what recent builds asked for.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use crate::ids::{ActionId, BuildKey, Namespace};
use crate::sync::lock;

/// The first line of a manifest.
const MAGIC: &str = "goremotecache prefetch manifest v1";
/// An entry is kept for this many runs after the last run that asked for it: a job that
/// alternates between a few branches keeps the entries of each.
pub const MAX_AGE: u8 = 4;
/// The most entries a manifest keeps (a few MiB of text at most); a pack lists as many.
pub const MAX_ENTRIES: usize = crate::store::pack::MAX_ENTRIES as usize;
/// The largest decompressed manifest read.
const MAX_TEXT: u64 = 64 << 20;
/// A run that would leave its manifest unchanged writes it again when it was written longer
/// ago than this (or does not say when): the manifest's modified time in the store then
/// stays within a day of its last use, which is what `gc-remote` goes by.
pub const REFRESH: Duration = Duration::from_secs(24 * 60 * 60);
/// The comment line that says when a manifest was written (Unix seconds).
const WRITTEN: &str = "# written=";

/// CI variables that identify a job (not a run, not a branch), by CI system.
const CI_JOB_VARIABLES: &[&str] = &[
    // GitHub Actions
    "GITHUB_REPOSITORY",
    "GITHUB_WORKFLOW",
    "GITHUB_JOB",
    "RUNNER_OS",
    "RUNNER_ARCH",
    // GitLab CI
    "CI_PROJECT_PATH",
    "CI_JOB_NAME",
    // Buildkite
    "BUILDKITE_PIPELINE_SLUG",
    "BUILDKITE_STEP_KEY",
    "BUILDKITE_LABEL",
    // CircleCI
    "CIRCLE_PROJECT_USERNAME",
    "CIRCLE_PROJECT_REPONAME",
    "CIRCLE_JOB",
];

/// What a build key was made of, and the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySource {
    /// `(name, value)` pairs, in a fixed order.
    pub parts: Vec<(String, String)>,
}

impl KeySource {
    /// The key given with `--prefetch-key`.
    pub fn explicit(text: &str) -> Self {
        Self {
            parts: vec![("prefetch-key".into(), text.into())],
        }
    }

    /// The automatic key of this process: see the module documentation.
    pub fn automatic() -> Self {
        let env = |name: &str| std::env::var(name).unwrap_or_default();
        let mut parts = vec![(
            "cwd".to_string(),
            std::env::current_dir()
                .map(|d| d.display().to_string())
                .unwrap_or_default(),
        )];
        if let Some(args) = parent_args() {
            parts.push(("args".into(), args));
        }
        for name in ["GOOS", "GOARCH", "GOFLAGS"] {
            parts.push((name.into(), env(name)));
        }
        parts.push(("go".into(), go_version().unwrap_or_default()));
        for name in CI_JOB_VARIABLES {
            if let Ok(value) = std::env::var(name)
                && !value.is_empty()
            {
                parts.push(((*name).into(), value));
            }
        }
        Self { parts }
    }

    /// The key: the sha256 of the parts.
    pub fn key(&self) -> BuildKey {
        let mut hasher = Sha256::new();
        hasher.update(b"goremotecache build key v1\n");
        for (name, value) in &self.parts {
            hasher.update(name.as_bytes());
            hasher.update(b"=");
            hasher.update(value.len().to_string().as_bytes());
            hasher.update(b":");
            hasher.update(value.as_bytes());
            hasher.update(b"\n");
        }
        BuildKey(hasher.finalize().into())
    }

    /// One line: `cwd=/src args=build ./... GOOS= ...`.
    pub fn describe(&self) -> String {
        self.parts
            .iter()
            .map(|(name, value)| format!("{name}={}", one_line(value)))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Flags of the go command that change what it prints, not what it builds: left out of the
/// key, so that `go build -x ./...` prefetches what `go build ./...` asked for.
const OUTPUT_FLAGS: &[&str] = &["-x", "-v", "-json", "-work"];

/// The go command's process: the nearest ancestor that runs a `go` binary from a Go root
/// (one with a `VERSION` file), so that a wrapper between the go command and this program
/// (`time`, a shell script that runs it) does not change the key; else the parent. Linux only.
fn go_process() -> Option<u32> {
    let parent = std::os::unix::process::parent_id();
    let mut pid = parent;
    for _ in 0..4 {
        if go_root_of(pid).is_some() {
            return Some(pid);
        }
        pid = parent_of(pid)?;
        if pid <= 1 {
            break;
        }
    }
    Some(parent)
}

/// The Go root of the `go` binary that `pid` runs, if it runs one.
fn go_root_of(pid: u32) -> Option<std::path::PathBuf> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let name = exe.file_name()?.to_str()?;
    if name != "go" && !name.starts_with("go1.") {
        return None;
    }
    let root = exe.parent()?.parent()?;
    root.join("VERSION").is_file().then(|| root.to_path_buf())
}

/// The parent of process `pid`, from `/proc/<pid>/stat`.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid ...: comm may hold spaces and parentheses, so split after the last ')'.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The go command's arguments (Linux); `None` elsewhere.
fn parent_args() -> Option<String> {
    let raw = std::fs::read(format!("/proc/{}/cmdline", go_process()?)).ok()?;
    let args: Vec<String> = raw
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    // The first is the go binary's path: its version is a part of its own.
    Some(build_args(args.get(1..)?))
}

/// The arguments that say what is built, joined.
fn build_args(args: &[String]) -> String {
    args.iter()
        .filter(|a| !a.is_empty() && !OUTPUT_FLAGS.contains(&a.as_str()))
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join("\u{1f}")
}

/// The Go version: `VERSION` in the go command's Go root, or in GOROOT.
fn go_version() -> Option<String> {
    let from_go = go_process()
        .and_then(go_root_of)
        .map(|root| root.join("VERSION"));
    let from_env = std::env::var_os("GOROOT").map(|root| Path::new(&root).join("VERSION"));
    [from_go, from_env]
        .into_iter()
        .flatten()
        .find_map(|path| std::fs::read_to_string(path).ok())
        .and_then(|text| text.lines().next().map(str::to_string))
}

/// One line of a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestEntry {
    pub action: ActionId,
    /// The output's size when it was last seen (0 if unknown), for the byte budget.
    pub size: u64,
    /// Runs since a run last asked for it (0: the run that wrote the manifest).
    pub age: u8,
    /// The namespace the entry is in (`None`: the un-namespaced layout). Stored as a fourth
    /// field only where it is not the namespace the manifest is stored in.
    pub namespace: Option<Namespace>,
}

/// An entry a run used or stored: its action, its size (0 if unknown), and where the run
/// found it, as an index into the run's namespaces, own first (`None`: not known, a local hit).
pub type Used = (ActionId, u64, Option<usize>);

/// The entries a build asked for, most recent first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    pub entries: Vec<ManifestEntry>,
    /// The stored form listed a key more than once (each is kept once here): write it again
    /// at close even if the run changed nothing.
    pub repaired: bool,
    /// When the stored form was written (its `# written=` line, in Unix seconds); `None` for a
    /// manifest not read from a store, or written before that line existed.
    pub written: Option<u64>,
}

impl Manifest {
    /// The manifest after a run that asked for `run` (in order; sizes as known): this run's
    /// entries first, with age 0, in the order the go command asked for them; then the
    /// previous manifest's other entries, one run older, in their order, until they are older
    /// than [`MAX_AGE`]; at most [`MAX_ENTRIES`] in all. A previous entry in `wasted` (this
    /// run prefetched it and the go command never asked for it) is left out: the next run
    /// would fetch it in vain again.
    ///
    /// `namespaces` are the run's, own first (`[None]` without namespaces). An entry the run
    /// found in one of them is in that one; one it took from its local disk is where the
    /// previous manifest says (prefetch put it there from that namespace), or else in the own
    /// namespace (a put of an earlier run on this machine).
    pub fn merge(
        previous: Option<&Manifest>,
        run: &[Used],
        namespaces: &[Option<Namespace>],
        wasted: &HashSet<ActionId>,
    ) -> Manifest {
        let before: HashMap<ActionId, &Option<Namespace>> = previous
            .map(|p| p.entries.iter().map(|e| (e.action, &e.namespace)).collect())
            .unwrap_or_default();
        let mut seen = HashSet::with_capacity(run.len());
        let mut entries: Vec<ManifestEntry> = run
            .iter()
            .filter(|(action, _, _)| seen.insert(*action))
            .map(|&(action, size, found_in)| ManifestEntry {
                action,
                size,
                age: 0,
                namespace: match found_in {
                    Some(index) => namespaces[index].clone(),
                    None => match before.get(&action) {
                        Some(namespace) => (*namespace).clone(),
                        None => namespaces[0].clone(),
                    },
                },
            })
            .collect();
        if let Some(previous) = previous {
            entries.extend(
                previous
                    .entries
                    .iter()
                    .filter(|e| e.age < MAX_AGE && !wasted.contains(&e.action))
                    .filter(|e| seen.insert(e.action))
                    .map(|e| ManifestEntry {
                        age: e.age + 1,
                        ..e.clone()
                    }),
            );
        }
        entries.truncate(MAX_ENTRIES);
        Manifest {
            entries,
            repaired: false,
            written: None,
        }
    }

    /// Whether a stored manifest is due to be written again even if a run leaves it as it
    /// is: it was written more than [`REFRESH`] before `now`, or it does not say when (a time
    /// further than that in the future, from a clock that was wrong, counts as stale too).
    pub fn needs_refresh(&self, now: SystemTime) -> bool {
        let Some(written) = self.written else {
            return true;
        };
        let now = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        now.abs_diff(written) > REFRESH.as_secs()
    }

    /// Whether writing `self` (merged from `previous`) is not worth a request: the run asked
    /// for exactly the previous manifest's entries, none of which is aging. The order the go
    /// command asked in varies a little from run to run; that alone is not written.
    pub fn same_as(&self, previous: Option<&Manifest>) -> bool {
        let Some(previous) = previous.filter(|p| !p.repaired) else {
            return false;
        };
        // Merging puts the previous entries this run did not ask for after, aged: none here.
        previous.entries.len() == self.entries.len()
            && self.entries.iter().all(|e| e.age == 0)
            && previous.entries.iter().all(|e| e.age == 0)
            && {
                let before: HashSet<_> = previous.entries.iter().map(|e| e.action).collect();
                self.entries.iter().all(|e| before.contains(&e.action))
            }
    }

    /// The stored form, written now, with `source` as comments, to be stored in the namespace
    /// `home`.
    pub fn encode(&self, source: &KeySource, home: Option<&Namespace>) -> Vec<u8> {
        self.encode_at(source, home, SystemTime::now())
    }

    /// The stored form, with `written` and `source` as comments, to be stored in `home`.
    pub fn encode_at(
        &self,
        source: &KeySource,
        home: Option<&Namespace>,
        written: SystemTime,
    ) -> Vec<u8> {
        let mut text = String::with_capacity(80 * (self.entries.len() + 8));
        text.push_str(MAGIC);
        text.push('\n');
        let written = written
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        text.push_str(&format!("{WRITTEN}{written}\n"));
        for (name, value) in &source.parts {
            text.push_str(&format!("# {name}={}\n", one_line(value)));
        }
        for entry in &self.entries {
            text.push_str(&format!(
                "{} {} {}",
                entry.action.to_hex(),
                entry.size,
                entry.age
            ));
            match &entry.namespace {
                Some(namespace) if Some(namespace) != home => {
                    text.push(' ');
                    text.push_str(namespace.as_str());
                }
                _ => {}
            }
            text.push('\n');
        }
        zstd::bulk::compress(text.as_bytes(), 3).expect("compressing in memory")
    }

    /// Reads a stored manifest; anything malformed is an error (and the manifest is ignored).
    /// A key listed twice is kept once, at its first place: a manifest is data, and prefetch
    /// asks for each key once. An entry without a namespace of its own is in `home`, the
    /// namespace the manifest was stored in.
    pub fn decode(bytes: &[u8], home: Option<&Namespace>) -> Result<Manifest, String> {
        let mut text = String::new();
        zstd::stream::read::Decoder::new(bytes)
            .map_err(|err| format!("not zstd: {err}"))?
            .take(MAX_TEXT + 1)
            .read_to_string(&mut text)
            .map_err(|err| format!("not a zstd-compressed text: {err}"))?;
        // Refused whole: a text cut at the cap could end at a line's end and pass for a
        // manifest of fewer entries.
        if text.len() as u64 > MAX_TEXT {
            return Err(format!(
                "the manifest's text is larger than {} MiB",
                MAX_TEXT >> 20
            ));
        }
        let mut lines = text.lines();
        if lines.next() != Some(MAGIC) {
            return Err("not a goremotecache prefetch manifest (v1)".into());
        }
        let mut entries = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut repaired = false;
        let mut written = None;
        for line in lines.filter(|l| !l.is_empty()) {
            // Comments are for people, and readers ignore those they do not know; `written=`
            // is the one read back.
            if line.starts_with('#') {
                if let Some(secs) = line.strip_prefix(WRITTEN) {
                    written = written.or(secs.trim().parse().ok());
                }
                continue;
            }
            let mut fields = line.split(' ');
            let parsed = (|| {
                let action = ActionId::from_hex(fields.next()?)?;
                let size = fields.next()?.parse().ok()?;
                let age = fields.next()?.parse().ok()?;
                let namespace = match fields.next() {
                    None => home.cloned(),
                    Some(name) => Some(Namespace::parse(name).ok()?),
                };
                fields.next().is_none().then_some(ManifestEntry {
                    action,
                    size,
                    age,
                    namespace,
                })
            })();
            match parsed {
                Some(entry) if !seen.insert(entry.action) => repaired = true,
                Some(entry) if entries.len() < MAX_ENTRIES => entries.push(entry),
                Some(_) => break,
                None => return Err(format!("bad manifest line {line:?}")),
            }
        }
        Ok(Manifest {
            entries,
            repaired,
            written,
        })
    }
}

/// The entries the go command used or stored in this run, in the order it first asked.
#[derive(Debug, Default)]
pub struct Recorder {
    inner: Mutex<Recorded>,
}

#[derive(Debug, Default)]
struct Recorded {
    order: Vec<Used>,
    index: HashMap<ActionId, usize>,
}

impl Recorder {
    /// Notes a get or a put of `action`; `size` is the output's size when known (a hit or a
    /// put), `found_in` the namespace it is in when known (see [`Used`]); what is known
    /// replaces what is not.
    pub fn note(&self, action: ActionId, size: Option<u64>, found_in: Option<usize>) {
        let mut inner = lock(&self.inner);
        let Recorded { order, index } = &mut *inner;
        match index.get(&action) {
            Some(&i) => {
                if let Some(size) = size {
                    order[i].1 = size;
                }
                if found_in.is_some() {
                    order[i].2 = found_in;
                }
            }
            None => {
                index.insert(action, order.len());
                order.push((action, size.unwrap_or(0), found_in));
            }
        }
    }

    /// What was recorded so far, in order.
    pub fn snapshot(&self) -> Vec<Used> {
        lock(&self.inner).order.clone()
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod proptests;
