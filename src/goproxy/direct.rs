//! `direct` in the proxy's GOPROXY list: fetching a module from its version control
//! repository through the go command itself, which knows every VCS, import-path meta tag and
//! `GOPRIVATE` rule, rather than a reimplementation of it.
//!
//! Each request runs one go command, in a private module cache ([`DirectConfig::gomodcache`])
//! with `GOPROXY=direct` (so that it never asks this proxy, or any proxy, again),
//! `GOFLAGS=-mod=mod -modcacherw` (writable, so that the cache can be removed like any
//! directory), `GOWORK=off`, `GOTOOLCHAIN=local`, `GIT_TERMINAL_PROMPT=0`, no
//! `GOCACHEPROG`, in `/` (no `go.mod` above it to drag a module in), then the caller's extra
//! variables:
//!
//! - `.info`, `.mod`, `.zip` and `@latest`: `go mod download -json <module>@<revision>`; the
//!   JSON's `Info`, `GoMod` or `Zip` names the file to answer with, copied into the spool.
//!   A query's `.info` and `@latest` answer with the resolved version's `.info`, as a proxy
//!   does. A `.mod` downloads the zip too (the go command has no way to ask for less).
//! - `@v/list`: `go list -m -e -json -versions -retracted <module>@latest`; the answer is the
//!   `Versions`, one a line (retracted ones too: the go command filters them itself).
//!
//! Errors. The go command reports a failure in the JSON's `Error`. One that says the module or
//! revision does not exist (`unknown revision`, `not found`, `no matching versions`,
//! `does not exist`, but not `executable file not found`: no git here is a failure) is "not
//! found" (404), so that it falls through a list and is never stored. Any other (among them
//! `invalid version: git ls-remote ... exit status 128`, an unreachable repository), a
//! timeout ([`DirectConfig::timeout`], after which the go command is killed) or a go command
//! that cannot run is [`FetchError::Direct`]. The phrases are the go command's messages
//! matched as text, a heuristic: a "does not exist" they miss becomes a failure (a stale
//! answer, or an error, where a 404 was right).

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::NamedTempFile;

use super::body::{Body, FetchError, Fetched};
use super::path::Request;

/// How `direct` runs the go command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectConfig {
    /// The go command (`go` to find it on `PATH`).
    pub go: PathBuf,
    /// The module cache of the go command it runs: private to the proxy, never a user's.
    pub gomodcache: PathBuf,
    /// The longest one go command may run before it is killed and the request failed.
    pub timeout: Duration,
    /// Variables set last, over the ones above (`GOPRIVATE`, `GONOSUMDB`, `GIT_CONFIG_GLOBAL`
    /// for a private repository's credentials).
    pub env: Vec<(String, String)>,
}

impl DirectConfig {
    /// `go` from `PATH`, ten minutes per command, no extra variables.
    pub fn new(gomodcache: PathBuf) -> Self {
        Self {
            go: PathBuf::from("go"),
            gomodcache,
            timeout: Duration::from_secs(600),
            env: Vec::new(),
        }
    }
}

/// Phrases of the go command's errors that mean "this module or revision does not exist"
/// (`not found` covers git's "repository '...' not found").
const NOT_FOUND: [&str; 4] = [
    "unknown revision",
    "no matching versions",
    "does not exist",
    "not found",
];

/// Phrases that say the failure is this machine's, whatever else the message says: no git.
const LOCAL_FAILURE: [&str; 1] = ["executable file not found"];

/// Whether a go command's error means that the module or revision does not exist. Not
/// `invalid version` on its own: the go command also says that when git could not reach the
/// repository.
fn is_not_found(error: &str) -> bool {
    NOT_FOUND.iter().any(|phrase| error.contains(phrase))
        && !LOCAL_FAILURE.iter().any(|phrase| error.contains(phrase))
}

/// Fetches `request` with the go command, spooling the answer in `spool` (at most `limit`
/// bytes). Blocks: run it on a blocking thread.
pub(crate) fn fetch(
    config: &DirectConfig,
    request: &Request,
    spool: &Path,
    limit: u64,
) -> Result<Fetched, FetchError> {
    let failed = |message: String| FetchError::Direct {
        path: request.path(),
        message,
    };
    let (module, target, field) = match request {
        Request::List { module } => (module, None, "Versions"),
        Request::Info { module, version } => (module, Some(version.as_str()), "Info"),
        Request::Latest { module } => (module, Some("latest"), "Info"),
        Request::Mod { module, version } => (module, Some(version.as_str()), "GoMod"),
        Request::Zip { module, version } => (module, Some(version.as_str()), "Zip"),
        _ => return Err(failed("not a module request".to_owned())),
    };
    let mut command = Command::new(&config.go);
    match target {
        Some(target) => command
            .args(["mod", "download", "-json"])
            .arg(format!("{}@{target}", module.as_str())),
        None => command
            .args(["list", "-m", "-e", "-json", "-versions", "-retracted"])
            .arg(format!("{}@latest", module.as_str())),
    };
    command
        .current_dir("/")
        .env_remove("GOCACHEPROG")
        .env("GOMODCACHE", &config.gomodcache)
        .env("GOPROXY", "direct")
        .env("GOFLAGS", "-mod=mod -modcacherw")
        .env("GOWORK", "off")
        .env("GOTOOLCHAIN", "local")
        .env("GIT_TERMINAL_PROMPT", "0")
        .envs(config.env.iter().map(|(k, v)| (k, v)));
    let json = run(&mut command, config.timeout, spool)
        .map_err(|err| failed(format!("running {}: {err}", config.go.display())))?;
    let value: serde_json::Value = serde_json::from_slice(&json).map_err(|err| {
        failed(format!(
            "the go command's output is not JSON ({err}): {:?}",
            String::from_utf8_lossy(&json[..json.len().min(200)])
        ))
    })?;
    // `go mod download` says a failure as a string, `go list -e` as {"Err": "..."}.
    let error = match value.get("Error") {
        Some(serde_json::Value::String(text)) => Some(text.clone()),
        Some(other) => Some(
            other
                .get("Err")
                .and_then(|err| err.as_str())
                .map_or_else(|| other.to_string(), str::to_owned),
        ),
        None => None,
    };
    if let Some(error) = error {
        if is_not_found(&error) {
            return Ok(Fetched::NotFound { status: 404 });
        }
        return Err(failed(error));
    }
    let spool_error = |err: io::Error| FetchError::Spool {
        dir: spool.display().to_string(),
        message: crate::fsutil::explain_io(&err),
    };
    let mut file = tempfile::Builder::new()
        .prefix(".direct-")
        .tempfile_in(spool)
        .map_err(spool_error)?;
    if field == "Versions" {
        let mut list = String::new();
        for version in value
            .get("Versions")
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
        {
            if let Some(version) = version.as_str() {
                list.push_str(version);
                list.push('\n');
            }
        }
        io::Write::write_all(&mut file, list.as_bytes()).map_err(spool_error)?;
        return Ok(Fetched::Found(Body {
            file,
            len: list.len() as u64,
        }));
    }
    let source = value
        .get(field)
        .and_then(|path| path.as_str())
        .ok_or_else(|| failed(format!("the go command's answer has no {field}")))?;
    let len = copy_bounded(Path::new(source), &mut file, limit)
        .map_err(|err| failed(format!("reading {source}: {err}")))?;
    Ok(Fetched::Found(Body { file, len }))
}

/// Copies at most `limit` bytes of `source` into `file`; more is an error.
fn copy_bounded(source: &Path, file: &mut NamedTempFile, limit: u64) -> io::Result<u64> {
    let reader = std::fs::File::open(source)?;
    let len = io::copy(&mut reader.take(limit + 1), file.as_file_mut())?;
    if len > limit {
        return Err(io::Error::other(format!("over the limit of {limit} bytes")));
    }
    Ok(len)
}

/// Runs `command` to its end (killed after `timeout`) and returns its standard output, which
/// goes to a temporary file in `spool` so that a long answer never blocks on a pipe.
fn run(command: &mut Command, timeout: Duration, spool: &Path) -> io::Result<Vec<u8>> {
    let out = tempfile::Builder::new()
        .prefix(".direct-out-")
        .tempfile_in(spool)?;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::from(out.as_file().try_clone()?))
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::other(format!(
                "the go command ran over {}",
                humantime::format_duration(timeout)
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut json = Vec::new();
    // A new handle, at the start (the child's shared the one it wrote through).
    out.reopen()?.take(64 << 20).read_to_end(&mut json)?;
    Ok(json)
}

#[cfg(test)]
mod tests;
