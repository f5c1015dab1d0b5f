//! The local cache's directories: their defaults, their validation, and the check that no one
//! else can write them.

use std::path::{Path, PathBuf};

use crate::fsutil::{Links, UntrustedDir, check_private_dir, private_dir};
use crate::local::lock::LockType;

use super::ConfigError;
use super::flags::{CommonArgs, LocalArgs};

/// The cache and lock directories, validated (what `clear-local` works on; the main mode's
/// [`super::Config`] holds the same fields).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalDirs {
    /// Absolute and valid UTF-8 (it is sent to the go command in JSON).
    pub cache_dir: PathBuf,
    pub lock_dir: PathBuf,
    /// The default location's own directory, when the cache or lock directory is the
    /// default: goremotecache creates it, so it is checked as well.
    pub default_base: Option<DefaultBase>,
    pub lock_type: LockType,
    pub trust_cache_dir: bool,
}

impl LocalDirs {
    /// Validates the directory options, filling in the defaults.
    pub fn from_args(local: &LocalArgs, common: &CommonArgs) -> Result<Self, ConfigError> {
        let default_base =
            (local.cache_dir.is_none() || local.lock_dir.is_none()).then(DefaultBase::find);
        let base = default_base
            .as_ref()
            .map(|b| b.dir.clone())
            .unwrap_or_default();
        let cache_dir = resolve_dir("cache-dir", local.cache_dir.as_deref(), &base.join("cache"))?;
        let lock_dir = resolve_dir("lock-dir", local.lock_dir.as_deref(), &base.join("locks"))?;
        Ok(Self {
            cache_dir,
            lock_dir,
            default_base,
            lock_type: local.lock_type,
            trust_cache_dir: common.trust_cache_dir,
        })
    }

    /// Refuses the cache and lock directories if another user owns them or group or others
    /// may write them (unless `--trust-cache-dir`); with `create`, first creates those that
    /// are missing (mode 0700). Runs before the go command is answered: a refusal is exit
    /// status 2. A directory that cannot be created is left to the cache, which says so and
    /// goes on (every get a miss, every put a clear error).
    pub fn check(&self, create: bool) -> Result<(), UntrustedDir> {
        if self.trust_cache_dir {
            return Ok(());
        }
        let check = |dir: &Path, what, links| {
            if create {
                check_created_dir(dir, what, links)
            } else if std::fs::symlink_metadata(dir).is_ok() {
                check_private_dir(dir, what, links)
            } else {
                Ok(())
            }
        };
        if let Some(base) = &self.default_base {
            check(&base.dir, "goremotecache's directory", base.links)?;
        }
        let mut dirs = vec![(&self.cache_dir, "cache directory")];
        if self.lock_type == LockType::Fslock {
            dirs.push((&self.lock_dir, "lock directory"));
        }
        for (dir, what) in dirs {
            // Inside the default location, its rule for symlinks; a named directory may be one.
            let links = match &self.default_base {
                Some(base) if dir.parent() == Some(base.dir.as_path()) => base.links,
                _ => Links::Follow,
            };
            check(dir, what, links)?;
        }
        Ok(())
    }
}

/// Where the default cache and lock directories live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultBase {
    pub dir: PathBuf,
    /// A symlink is fine in the user's home (they put it there); in the shared temp
    /// directory it was put there by someone else.
    pub links: Links,
}

impl DefaultBase {
    /// The user's cache directory as Go's own cache finds it: `$XDG_CACHE_HOME` if set
    /// (absolute), else `$HOME/.cache`; where there is no usable home (unset, missing, or
    /// not the user's own), a directory in the temp directory named with the user ID.
    pub fn find() -> Self {
        let absolute = |var: &str| {
            std::env::var_os(var)
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
        };
        let home_cache = absolute("XDG_CACHE_HOME").or_else(|| {
            absolute("HOME")
                .filter(|home| {
                    use std::os::unix::fs::MetadataExt;
                    std::fs::metadata(home)
                        .is_ok_and(|m| m.is_dir() && m.uid() == rustix::process::geteuid().as_raw())
                })
                .map(|home| home.join(".cache"))
        });
        match home_cache {
            Some(dir) => Self {
                dir: dir.join("goremotecache"),
                links: Links::Follow,
            },
            None => Self {
                dir: std::env::temp_dir().join(format!(
                    "goremotecache-{}",
                    rustix::process::geteuid().as_raw()
                )),
                links: Links::Refuse,
            },
        }
    }
}

/// Creates `dir` (0700) if it is missing and checks it; one that cannot be created is not an
/// error here.
fn check_created_dir(dir: &Path, what: &'static str, links: Links) -> Result<(), UntrustedDir> {
    match private_dir(dir, what, links) {
        Err(UntrustedDir::Io { source, .. }) if !dir.exists() => {
            tracing::debug!("cannot create {}: {source}", dir.display());
            Ok(())
        }
        other => other,
    }
}

fn resolve_dir(
    flag: &'static str,
    given: Option<&Path>,
    default: &Path,
) -> Result<PathBuf, ConfigError> {
    let path = given.unwrap_or(default);
    if path.as_os_str().is_empty() {
        return Err(ConfigError::Empty { flag });
    }
    let absolute = std::path::absolute(path).map_err(|source| ConfigError::NoCurrentDir {
        flag,
        path: path.display().to_string(),
        source,
    })?;
    if absolute.to_str().is_none() {
        return Err(ConfigError::NotUtf8 {
            flag,
            path: absolute.display().to_string(),
        });
    }
    Ok(absolute)
}
