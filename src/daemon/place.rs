//! Where a daemon listens, and what makes that place safe to use.
//!
//! One daemon serves every go command whose cache settings it shares, so a daemon is named by
//! a [`Fingerprint`] of those settings, and everything it leaves on disk lives in the private
//! (0700) directory `<cache_dir>/daemon` under that name ([`Place`]): `<fp>.lock`, the `flock`
//! the daemon holds for its whole life (its one claim to the place); `<fp>.sock`, the socket;
//! `<fp>.json`, the [`Record`] that tells `status` and `flush` where the socket is; and
//! `<fp>.log`, its stderr. A unix socket path may not be longer than 107 bytes, so a socket
//! whose default path is too long moves to `$XDG_RUNTIME_DIR/goremotecache` or to
//! `<temp dir>/goremotecache-<uid>`, named by a hash of the cache directory and the
//! fingerprint (two caches never share a socket); the record still lives in the daemon
//! directory, so a daemon is found from `--cache-dir` alone.
//!
//! The rules:
//!
//! - Both ends check the other's user. [`connect`] refuses a socket file that is not a socket
//!   of our own (`lstat`, so not a symlink either) and a peer whose `SO_PEERCRED` user is not
//!   ours; the daemon refuses a peer that is not us ([`peer_is_us`]). Every directory a
//!   socket is put in is checked private first, and the socket is made 0600 right after it
//!   is bound (changing the umask would change it for every thread of the process).
//! - Nothing is removed unless it is certainly stale. A leftover socket is removed only by the
//!   holder of the lock, only if it is a socket of ours and nothing answers on it; a record
//!   only when its process is gone and its lock is free; a daemon, leaving, removes its socket
//!   and its record only if they are still the ones it made. The lock file itself is never
//!   removed: removing a file others may be locking is how two processes come to hold "the"
//!   lock at once.
//! - The daemon is started detached without `unsafe` code ([`spawn_daemon`]): no `pre_exec`;
//!   it calls `setsid` itself.

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use rustix::fs::{FlockOperation, OFlags};
use sha2::{Digest, Sha256};

use crate::config::{Config, StoreConfig};
use crate::fsutil::{
    Links, UntrustedDir, check_private_dir, create_private_dir_all, explain_io, ignore_absent,
    open_or_create_regular, open_regular, private_dir,
};
use crate::local::lock::LockType;
use crate::store::RemoteMode;

/// The longest path a unix socket may be bound at: `sun_path` is 108 bytes, with the NUL.
pub const MAX_SOCKET_PATH: usize = 107;

/// The environment variables that choose the S3, GCS or Azure credentials and the S3
/// region: a daemon started with other values would sign with other credentials, or ask
/// another region. Hashed into the [`Fingerprint`], never kept.
pub const CREDENTIAL_VARS: &[&str] = &[
    // Read by `config` before the `AWS_*` ones (docs/s3.md).
    "GOREMOTECACHE_AWS_ACCESS_KEY_ID",
    "GOREMOTECACHE_AWS_SECRET_ACCESS_KEY",
    "GOREMOTECACHE_AWS_SESSION_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    // Read by `S3Config::open` when `--s3-region` is not given.
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    // Google's chain (`store::gcs`).
    "GOOGLE_APPLICATION_CREDENTIALS",
    "GCE_METADATA_HOST",
    // Azure's (`store::azblob`): the variables read here, then OpenDAL's default chain.
    "AZURE_STORAGE_ACCOUNT",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_ACCOUNT_NAME",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_BEARER_TOKEN",
    "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_CLIENT_CERTIFICATE_PATH",
    "AZURE_FEDERATED_TOKEN_FILE",
];

/// The largest record read: a record is one short line of JSON.
const MAX_RECORD: u64 = 64 << 10;

/// The settings a daemon must share with a go command's cache to serve it: 16 lowercase hex
/// characters, the first 8 bytes of a sha256.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Fingerprint(String);

impl Fingerprint {
    /// The fingerprint of `config`, with the credential variables of this process's
    /// environment. It covers, each field length-prefixed after a version line: the user ID;
    /// the cache and lock directories and the lock type; `verify_hits`; the remote (its
    /// backend, and for S3 the bucket, prefix, endpoint, region, path style, instance
    /// metadata, fixed credentials and the values of [`CREDENTIAL_VARS`]; for GCS the bucket,
    /// prefix, endpoint and anonymous switch, for Azure the container, prefix, account,
    /// endpoint and fixed key, each with [`CREDENTIAL_VARS`] too; for HTTP the URL,
    /// token, CA file and namespace); the namespace and the read namespaces in order; the
    /// remote mode; `max_entry_size`. Not the statistics, prefetch, upload, timeout, trim or
    /// debug options: a daemon serves those as it was started. Nor the module proxy's
    /// (`--goproxy-listen`, `--goproxy-*`): they change no build's answer, and `connect` names
    /// its daemon by the build's options alone, so the builds of a job must reach the daemon
    /// that the job started with its module proxy, not one of their own beside it.
    /// The fingerprint a daemon's record names (`status` and `flush` of every daemon).
    pub fn from_record(text: &str) -> Self {
        Self(text.to_string())
    }

    pub fn of(config: &Config) -> Self {
        Self::of_with_env(config, &process_env)
    }

    /// [`Fingerprint::of`] with the environment read through `env` (for tests).
    pub fn of_with_env(config: &Config, env: &dyn Fn(&str) -> Option<String>) -> Self {
        let mut f = Fields::new("goremotecache daemon fingerprint v1");
        // Each user has daemons of their own, even on a cache shared with --trust-cache-dir.
        f.text("uid", &euid().to_string());
        let dirs = &config.dirs;
        f.path("cache_dir", &dirs.cache_dir);
        f.path("lock_dir", &dirs.lock_dir);
        f.text(
            "lock_type",
            match dirs.lock_type {
                LockType::Fslock => "fslock",
                LockType::Memory => "memory",
            },
        );
        f.flag("verify_hits", config.verify_hits);
        let Some(remote) = &config.remote else {
            f.put("remote", None);
            return Self(f.hex16());
        };
        match &remote.store {
            StoreConfig::S3(s3) => {
                f.text("remote", "s3");
                f.text("s3.bucket", &s3.bucket);
                f.text("s3.prefix", &s3.prefix);
                f.opt("s3.endpoint", s3.endpoint.as_deref());
                f.opt("s3.region", s3.region.as_deref());
                f.flag("s3.force_path_style", s3.force_path_style);
                f.flag("s3.instance_metadata", s3.instance_metadata);
                match &s3.static_credentials {
                    Some(credentials) => {
                        f.text("s3.static_key", &credentials.access_key_id);
                        f.text("s3.static_secret", &credentials.secret_access_key);
                        f.opt("s3.static_token", credentials.session_token.as_deref());
                    }
                    None => f.put("s3.static_credentials", None),
                }
                // Only the object stores read them: an HTTP or disk cache is not split by a new
                // session token.
                for name in CREDENTIAL_VARS {
                    f.opt(name, env(name).as_deref());
                }
            }
            StoreConfig::Gcs(gcs) => {
                f.text("remote", "gcs");
                f.text("gcs.bucket", &gcs.bucket);
                f.text("gcs.prefix", &gcs.prefix);
                f.opt("gcs.endpoint", gcs.endpoint.as_deref());
                f.flag("gcs.anonymous", gcs.anonymous);
                for name in CREDENTIAL_VARS {
                    f.opt(name, env(name).as_deref());
                }
            }
            StoreConfig::Azblob(az) => {
                f.text("remote", "azblob");
                f.text("azblob.container", &az.container);
                f.text("azblob.prefix", &az.prefix);
                f.opt("azblob.account", az.account.as_deref());
                f.opt("azblob.endpoint", az.endpoint.as_deref());
                f.opt("azblob.static_key", az.static_key.as_deref());
                for name in CREDENTIAL_VARS {
                    f.opt(name, env(name).as_deref());
                }
            }
            StoreConfig::Http(http) => {
                f.text("remote", "http");
                f.text("http.url", &http.url);
                f.opt("http.token", http.token.as_deref());
                f.put(
                    "http.ca_file",
                    http.ca_file.as_deref().map(|p| p.as_os_str().as_bytes()),
                );
                f.opt(
                    "http.namespace",
                    http.namespace.as_ref().map(|n| n.as_str()),
                );
            }
        }
        f.opt(
            "namespace",
            remote.namespaces.own.as_ref().map(|n| n.as_str()),
        );
        f.text(
            "read_namespaces",
            &remote.namespaces.reads.len().to_string(),
        );
        for name in &remote.namespaces.reads {
            f.text("read_namespace", name.as_str());
        }
        f.text(
            "mode",
            match remote.mode {
                RemoteMode::ReadWrite => "read-write",
                RemoteMode::ReadOnly => "read-only",
                RemoteMode::WriteOnly => "write-only",
            },
        );
        f.text("max_entry_size", &remote.max_entry_size.to_string());
        // Only when set, so that the daemons of builds without them keep their fingerprint.
        if remote.upload_min_size > 0 {
            f.text("upload_min_size", &remote.upload_min_size.to_string());
        }
        if remote.fault_rate.0 > 0.0 {
            f.text("fault_rate", &remote.fault_rate.0.to_string());
        }
        match remote.instant_misses {
            None => f.text("instant_misses", "off"),
            Some(age) if age != crate::config::DEFAULT_INSTANT_MISS_AGE => {
                f.text("instant_miss_max_age", &age.as_secs().to_string())
            }
            Some(_) => {}
        }
        Self(f.hex16())
    }

    /// The 16 hex characters.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A domain-separated sha256 of named fields, each length-prefixed, so that no two lists of
/// fields hash alike (as `KeySource::key` does for build keys).
struct Fields(Sha256);

impl Fields {
    fn new(domain: &str) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(domain.as_bytes());
        hasher.update(b"\n");
        Self(hasher)
    }

    /// `name=<len>:<value>` or, for none, `name-`.
    fn put(&mut self, name: &str, value: Option<&[u8]>) {
        self.0.update(name.as_bytes());
        match value {
            Some(value) => {
                self.0.update(b"=");
                self.0.update(value.len().to_string().as_bytes());
                self.0.update(b":");
                self.0.update(value);
            }
            None => self.0.update(b"-"),
        }
        self.0.update(b"\n");
    }

    fn text(&mut self, name: &str, value: &str) {
        self.put(name, Some(value.as_bytes()));
    }

    fn opt(&mut self, name: &str, value: Option<&str>) {
        self.put(name, value.map(str::as_bytes));
    }

    fn path(&mut self, name: &str, value: &Path) {
        self.put(name, Some(value.as_os_str().as_bytes()));
    }

    fn flag(&mut self, name: &str, value: bool) {
        self.text(name, if value { "1" } else { "0" });
    }

    /// The first 8 bytes of the hash, as 16 lowercase hex characters.
    fn hex16(self) -> String {
        hex::encode(&self.0.finalize()[..8])
    }
}

/// Whether `text` is a fingerprint's form (16 lowercase hex characters).
fn is_fingerprint(text: &str) -> bool {
    text.len() == 16
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The process's own environment, as the [`Fingerprint`] and [`Place`] read it.
fn process_env(name: &str) -> Option<String> {
    std::env::var_os(name).map(|value| value.to_string_lossy().into_owned())
}

fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Where the daemon of one set of settings lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub fingerprint: Fingerprint,
    /// `<cache_dir>/daemon`: created 0700, and checked to be a private directory of ours (not
    /// a symlink) unless `--trust-cache-dir`.
    pub dir: PathBuf,
    /// The socket, absolute: `--socket` if given; else `<dir>/<fp>.sock`; where that is longer
    /// than [`MAX_SOCKET_PATH`], `$XDG_RUNTIME_DIR/goremotecache/<h>.sock` (if that variable
    /// names an absolute directory of ours) or `<temp dir>/goremotecache-<uid>/<h>.sock`,
    /// with `<h>` a hash of the cache directory and the fingerprint.
    pub socket: PathBuf,
    /// `<dir>/<fp>.lock`: held (`flock`, exclusive) by the running daemon for its whole life.
    pub lock: PathBuf,
    /// `<dir>/<fp>.log`: the daemon's stderr when [`spawn_daemon`] starts it.
    pub log: PathBuf,
    /// `<dir>/<fp>.json`: the running daemon's [`Record`].
    pub record: PathBuf,
}

impl Place {
    /// The place of the daemon for `config`'s settings; `socket` is the `--socket` option.
    /// Creates the daemon directory (and the socket's fallback directory, if one is used)
    /// if missing.
    pub fn for_build(config: &Config, socket: Option<&Path>) -> Result<Place, PlaceError> {
        Self::new(
            &config.dirs.cache_dir,
            Fingerprint::of(config),
            socket,
            config.dirs.trust_cache_dir,
            &process_env,
        )
    }

    /// [`Place::for_build`] with the fingerprint given and the environment
    /// (`XDG_RUNTIME_DIR`, `TMPDIR`) read through `env`. `trust`: `--trust-cache-dir`, which
    /// skips the check of the daemon directory (never that of a fallback socket directory,
    /// which is goremotecache's own).
    pub fn new(
        cache_dir: &Path,
        fingerprint: Fingerprint,
        socket: Option<&Path>,
        trust: bool,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Place, PlaceError> {
        let dir = daemon_dir(cache_dir);
        if trust {
            create_private_dir_all(&dir)
                .map_err(|source| PlaceError::io("create the daemon directory", &dir, source))?;
        } else {
            private_dir(&dir, "daemon directory", Links::Refuse)?;
        }
        let fp = fingerprint.as_str();
        let socket = match socket {
            Some(given) => {
                let path = std::path::absolute(given)
                    .map_err(|source| PlaceError::io("resolve the socket path", given, source))?;
                if !fits(&path) {
                    return Err(PlaceError::TooLong { path });
                }
                path
            }
            None => match dir.join(format!("{fp}.sock")) {
                path if fits(&path) => path,
                _ => fallback_socket(cache_dir, &fingerprint, env)?,
            },
        };
        Ok(Place {
            socket,
            lock: dir.join(format!("{fp}.lock")),
            log: dir.join(format!("{fp}.log")),
            record: dir.join(format!("{fp}.json")),
            dir,
            fingerprint,
        })
    }
}

/// `<cache_dir>/daemon`.
fn daemon_dir(cache_dir: &Path) -> PathBuf {
    cache_dir.join("daemon")
}

/// Whether a socket can be bound at `path`.
fn fits(path: &Path) -> bool {
    path.as_os_str().len() <= MAX_SOCKET_PATH
}

/// The socket's path outside the cache directory, its directory created (0700) and checked.
fn fallback_socket(
    cache_dir: &Path,
    fingerprint: &Fingerprint,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<PathBuf, PlaceError> {
    let mut f = Fields::new("goremotecache daemon socket v1");
    f.path("cache_dir", cache_dir);
    f.text("fingerprint", fingerprint.as_str());
    let name = format!("{}.sock", f.hex16());
    let runtime = runtime_dir(env).map(|dir| dir.join("goremotecache"));
    let temp = temp_base(env).join(format!("goremotecache-{}", euid()));
    let dir = match runtime {
        Some(dir) if fits(&dir.join(&name)) => dir,
        _ if fits(&temp.join(&name)) => temp,
        _ => {
            return Err(PlaceError::TooLong {
                path: temp.join(&name),
            });
        }
    };
    // goremotecache creates these directories: a symlink there was put by someone else.
    private_dir(&dir, "daemon socket directory", Links::Refuse)?;
    Ok(dir.join(name))
}

/// `$XDG_RUNTIME_DIR`, if it is an absolute directory of ours that no one else may write.
fn runtime_dir(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let dir = PathBuf::from(env("XDG_RUNTIME_DIR")?);
    if !dir.is_absolute() {
        return None;
    }
    match check_private_dir(&dir, "XDG_RUNTIME_DIR", Links::Follow) {
        Ok(()) => Some(dir),
        Err(err) => {
            tracing::debug!("not putting the daemon's socket in XDG_RUNTIME_DIR: {err}");
            None
        }
    }
}

/// `$TMPDIR` if absolute, else [`std::env::temp_dir`] if absolute, else `/tmp`.
fn temp_base(env: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    env("TMPDIR")
        .map(PathBuf::from)
        .filter(|dir| dir.is_absolute())
        .or_else(|| Some(std::env::temp_dir()).filter(|dir| dir.is_absolute()))
        .unwrap_or_else(|| PathBuf::from("/tmp"))
}

/// A running daemon's record, `<dir>/<fp>.json`: where its socket is, so that `status` and
/// `flush` find every daemon of a cache directory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    pub pid: u32,
    pub socket: PathBuf,
    pub fingerprint: String,
}

/// The records of the daemons of `cache_dir` whose process is alive, by fingerprint. Files
/// that cannot be read or are not records are skipped. A record whose process is gone is
/// skipped and, if no daemon holds its lock (one may be starting and about to replace it),
/// removed with its socket when that socket is in the daemon directory and is a socket of
/// ours.
pub fn records(cache_dir: &Path) -> Vec<Record> {
    let dir = daemon_dir(cache_dir);
    let Ok(entries) = fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(fp) = name
            .to_str()
            .and_then(|name| name.strip_suffix(".json"))
            .filter(|fp| is_fingerprint(fp))
        else {
            continue;
        };
        let path = entry.path();
        let Some(record) = read_record(&path).filter(|r| r.fingerprint == fp) else {
            continue;
        };
        if is_alive(record.pid) {
            found.push(record);
        } else {
            remove_stale(&dir, fp, &path);
        }
    }
    found.sort_by(|a, b| a.fingerprint.cmp(&b.fingerprint));
    found
}

/// The record at `path`, if it is a regular file (not a symlink) holding one.
fn read_record(path: &Path) -> Option<Record> {
    let file = open_regular(path).ok()??;
    let mut text = Vec::new();
    file.take(MAX_RECORD).read_to_end(&mut text).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Whether a process with this ID exists.
fn is_alive(pid: u32) -> bool {
    pid != 0 && Path::new("/proc").join(pid.to_string()).exists()
}

/// Removes the record at `path` of a dead daemon, and its socket if that is in `dir`, while
/// holding its lock: with the lock free, no daemon of this fingerprint is running or starting.
fn remove_stale(dir: &Path, fp: &str, path: &Path) {
    let Ok(lock) = open_or_create_regular(&dir.join(format!("{fp}.lock"))) else {
        return;
    };
    if rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive).is_err() {
        return;
    }
    // Read again under the lock: the one read before may have been replaced meanwhile.
    let Some(record) = read_record(path) else {
        return;
    };
    if is_alive(record.pid) {
        return;
    }
    if record.socket.parent() == Some(dir) && is_our_socket(&record.socket) {
        let _ = ignore_absent(fs::remove_file(&record.socket));
    }
    let _ = ignore_absent(fs::remove_file(path));
    tracing::debug!(record = %path.display(), pid = record.pid, "removed a dead daemon's record");
}

/// Whether `path` is a socket (not through a symlink) owned by us.
fn is_our_socket(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket() && m.uid() == euid())
}

/// The running daemon's hold on its place: the listening socket, and the [`Hold`] that
/// releases the place when dropped. Destructure it to hand the listener on (to tokio) while
/// keeping the hold: `let Bound { listener, hold } = bind(&place)?;`.
#[derive(Debug)]
pub struct Bound {
    /// Blocking, as std makes it; set it non-blocking before giving it to tokio.
    pub listener: UnixListener,
    pub hold: Hold,
}

/// The lock of a bound place, and what to clean up when it is let go. Dropping it removes the
/// socket (if the file there is still the one bound) and the record (if it still names this
/// process), then releases the lock. The lock file stays.
#[derive(Debug)]
pub struct Hold {
    socket: PathBuf,
    /// The device and inode of the socket file that was bound.
    socket_id: (u64, u64),
    record: PathBuf,
    pid: u32,
    /// Last: released after the files are removed.
    _lock: File,
}

impl Drop for Hold {
    fn drop(&mut self) {
        if read_record(&self.record).is_some_and(|r| r.pid == self.pid) {
            let _ = ignore_absent(fs::remove_file(&self.record));
        }
        if fs::symlink_metadata(&self.socket).is_ok_and(|m| (m.dev(), m.ino()) == self.socket_id) {
            let _ = ignore_absent(fs::remove_file(&self.socket));
        }
    }
}

/// Takes `place` for this process. Locks the lock file without waiting (another holder:
/// [`PlaceError::Taken`], with the pid its record names); removes a leftover socket at the
/// path if it is a socket of ours that nothing answers on (anything else there is an error);
/// binds, and makes the socket 0600 at once (its directory is private, so no one can reach
/// it meanwhile; with `--socket` in a shared directory, the daemon's peer check still turns
/// others away); writes the record (a temporary file renamed into place).
pub fn bind(place: &Place) -> Result<Bound, PlaceError> {
    let lock = open_or_create_regular(&place.lock)
        .map_err(|source| PlaceError::io("open the daemon's lock file", &place.lock, source))?;
    match rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => {
            return Err(PlaceError::Taken {
                pid: read_record(&place.record).map(|r| r.pid),
            });
        }
        Err(err) => {
            return Err(PlaceError::io(
                "lock the daemon's lock file",
                &place.lock,
                err.into(),
            ));
        }
    }
    clear_leftover(&place.socket)?;
    let socket_err = |what| move |source| PlaceError::io(what, &place.socket, source);
    let listener =
        UnixListener::bind(&place.socket).map_err(socket_err("bind the daemon's socket at"))?;
    let meta = fs::symlink_metadata(&place.socket)
        .map_err(socket_err("look at the daemon's new socket"))?;
    let hold = Hold {
        socket: place.socket.clone(),
        socket_id: (meta.dev(), meta.ino()),
        record: place.record.clone(),
        pid: std::process::id(),
        _lock: lock,
    };
    // From here an error drops `hold`, which removes the socket just bound.
    fs::set_permissions(&place.socket, Permissions::from_mode(0o600))
        .map_err(socket_err("make private (chmod 0600) the daemon's socket"))?;
    write_record(
        place,
        &Record {
            pid: hold.pid,
            socket: place.socket.clone(),
            fingerprint: place.fingerprint.as_str().to_string(),
        },
    )?;
    Ok(Bound { listener, hold })
}

/// Removes a dead daemon's socket at `path`; called with the place's lock held.
fn clear_leftover(path: &Path) -> Result<(), PlaceError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(PlaceError::io("look at the socket path", path, err)),
    };
    ours(path, &meta)?;
    // Our lock does not cover a socket that a daemon of other settings shares by --socket.
    match UnixStream::connect(path) {
        Ok(_) => Err(PlaceError::InUse {
            path: path.to_path_buf(),
        }),
        Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::debug!(socket = %path.display(), "removing a dead daemon's socket");
            ignore_absent(fs::remove_file(path))
                .map_err(|source| PlaceError::io("remove the dead daemon's socket", path, source))
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(PlaceError::io("try the old socket", path, err)),
    }
}

/// Writes `record` to `place.record` by renaming a complete temporary file (0600) there.
fn write_record(place: &Place, record: &Record) -> Result<(), PlaceError> {
    let err = |source| PlaceError::io("write the daemon's record", &place.record, source);
    let mut file = tempfile::Builder::new()
        .prefix(".record-")
        .tempfile_in(&place.dir)
        .map_err(err)?;
    let text = serde_json::to_vec(record)
        .map_err(io::Error::from)
        .map_err(err)?;
    file.write_all(&text).map_err(err)?;
    file.persist(&place.record).map_err(|e| err(e.error))?;
    Ok(())
}

/// Refuses what is at `path` (`meta`, not followed) unless it is a socket of our own user.
fn ours(path: &Path, meta: &fs::Metadata) -> Result<(), PlaceError> {
    if !meta.file_type().is_socket() {
        return Err(PlaceError::Occupied {
            path: path.to_path_buf(),
            what: kind(meta),
        });
    }
    if meta.uid() != euid() {
        return Err(PlaceError::Foreign {
            path: path.to_path_buf(),
            uid: meta.uid(),
        });
    }
    Ok(())
}

/// What kind of file `meta` is, for messages.
fn kind(meta: &fs::Metadata) -> &'static str {
    let kind = meta.file_type();
    if kind.is_symlink() {
        "a symlink"
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_file() {
        "a regular file"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "a device"
    }
}

/// Connects to the daemon at `socket`, refusing one that is not ours: the path must be a
/// socket (not a symlink) owned by our effective user, and the process at the other end must
/// run as that user (`SO_PEERCRED`). Nothing there, or nothing listening:
/// [`PlaceError::NotRunning`] (start a daemon); another user's socket or peer:
/// [`PlaceError::Foreign`].
pub fn connect(socket: &Path) -> Result<UnixStream, PlaceError> {
    let meta = match fs::symlink_metadata(socket) {
        Ok(meta) => meta,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Err(PlaceError::NotRunning),
        Err(err) => return Err(PlaceError::io("look at the daemon's socket", socket, err)),
    };
    ours(socket, &meta)?;
    let stream = match UnixStream::connect(socket) {
        Ok(stream) => stream,
        Err(err)
            if matches!(
                err.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(PlaceError::NotRunning);
        }
        Err(err) => return Err(PlaceError::io("connect to the daemon at", socket, err)),
    };
    // The file may have been replaced between the look and the connect: ask the peer itself.
    let uid = peer_uid(&stream)
        .map_err(|source| PlaceError::io("ask who runs the daemon at", socket, source))?;
    if !peer_is_us(uid) {
        return Err(PlaceError::Foreign {
            path: socket.to_path_buf(),
            uid,
        });
    }
    Ok(stream)
}

/// Whether a peer running as `uid` (from `SO_PEERCRED`, as tokio's `peer_cred` gives it) is
/// our own effective user: the daemon serves no one else.
pub fn peer_is_us(uid: u32) -> bool {
    uid == euid()
}

/// [`peer_is_us`] for a std stream.
pub fn stream_peer_is_us(stream: &UnixStream) -> io::Result<bool> {
    Ok(peer_is_us(peer_uid(stream)?))
}

/// The user the process at the other end of `stream` ran as when it connected or listened.
fn peer_uid(stream: &UnixStream) -> io::Result<u32> {
    Ok(rustix::net::sockopt::socket_peercred(stream)?.uid.as_raw())
}

/// Starts a detached daemon: this program (`current_exe`) with `args`, stdin and stdout on
/// `/dev/null` (the go command reads the bridge's stdout to its end: the daemon must not hold
/// it), stderr appended to `place.log` (0600, created if missing, refused if it is a symlink
/// or not a regular file), the environment and current directory inherited. Returns the
/// child, which the caller may poll (`try_wait`: a daemon that exits at once failed to
/// start) but does not wait for: it outlives the caller, and is left a zombie only until the
/// short-lived caller exits and init adopts and reaps it. The daemon itself calls `setsid`,
/// leaving the go command's session and process group.
pub fn spawn_daemon(place: &Place, args: &[OsString]) -> Result<Child, PlaceError> {
    let exe = std::env::current_exe().map_err(|source| {
        PlaceError::io(
            "find this program's path",
            Path::new("/proc/self/exe"),
            source,
        )
    })?;
    spawn_program(&exe, &place.log, args)
}

/// [`spawn_daemon`] with the program given (tests run a shell).
fn spawn_program(program: &Path, log: &Path, args: &[OsString]) -> Result<Child, PlaceError> {
    let log = open_log(log)?;
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|source| PlaceError::io("start", program, source))
}

/// Opens the daemon's log for appending: created 0600, never through a symlink, only a
/// regular file of ours; an existing log open to others is made 0600.
fn open_log(path: &Path) -> Result<File, PlaceError> {
    let err = |source| PlaceError::io("open the daemon's log", path, source);
    let file = match OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags((OFlags::NOFOLLOW | OFlags::NONBLOCK).bits() as i32)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
            return Err(PlaceError::Occupied {
                path: path.to_path_buf(),
                what: "a symlink",
            });
        }
        Err(e) => return Err(err(e)),
    };
    let meta = file.metadata().map_err(err)?;
    if !meta.is_file() {
        return Err(PlaceError::Occupied {
            path: path.to_path_buf(),
            what: kind(&meta),
        });
    }
    if meta.uid() != euid() {
        return Err(PlaceError::Foreign {
            path: path.to_path_buf(),
            uid: meta.uid(),
        });
    }
    if meta.len() > LOG_MAX {
        // A daemon started every day for months: the older half goes, the newer stays.
        drop(file);
        let old = path.with_extension("log.old");
        fs::rename(path, &old)
            .map_err(|source| PlaceError::io("set the daemon's old log aside", &old, source))?;
        return open_log(path);
    }
    if meta.permissions().mode() & 0o077 != 0 {
        file.set_permissions(Permissions::from_mode(0o600))
            .map_err(err)?;
    }
    Ok(file)
}

/// A daemon's log past this size is set aside as `<FP>.log.old` (replacing the one before)
/// when the next daemon starts.
pub const LOG_MAX: u64 = 1 << 20;

/// Why a daemon's place cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    #[error(transparent)]
    Untrusted(#[from] UntrustedDir),
    #[error("cannot {what} {}: {}", .path.display(), explain_io(.source))]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "the daemon's socket path {} is {} bytes, longer than the {MAX_SOCKET_PATH} a unix socket \
         path may be: pass a shorter --socket, or set XDG_RUNTIME_DIR or TMPDIR to a shorter \
         directory",
        .path.display(),
        .path.as_os_str().len()
    )]
    TooLong { path: PathBuf },
    #[error(
        "a daemon already serves these settings{}: connect to it, or stop it first",
        match .pid { Some(pid) => format!(" (pid {pid})"), None => String::new() }
    )]
    Taken { pid: Option<u32> },
    #[error("no daemon is running for these settings (nothing listens at its socket)")]
    NotRunning,
    #[error(
        "{} belongs to user {uid}, not to you (user {}): goremotecache talks only to a daemon \
         of your own. Remove it, or pass another --socket",
        .path.display(),
        euid()
    )]
    Foreign { path: PathBuf, uid: u32 },
    #[error(
        "{} is {what}, where goremotecache puts a daemon's file: remove it, or pass another \
         --socket",
        .path.display()
    )]
    Occupied { path: PathBuf, what: &'static str },
    #[error(
        "another process already listens at {}: a daemon of other settings is using this \
         --socket; give each its own",
        .path.display()
    )]
    InUse { path: PathBuf },
}

impl PlaceError {
    fn io(what: &'static str, path: &Path, source: io::Error) -> Self {
        Self::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }
}

#[cfg(test)]
mod tests;
