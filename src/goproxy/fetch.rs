//! Fetching one request of the GOPROXY protocol from the proxy's upstreams: the network side
//! of the module proxy, with no cache in it ([`super::cache`] stands in front).
//!
//! [`Fetcher::fetch`] walks the GOPROXY list ([`Upstreams`]) in order, moving on by
//! [`Upstreams::next_after`] and nothing else: a proxy URL is asked for
//! `<url>/<request path>` ([`Request::path`]); a 200 ends the walk with the file
//! ([`Fetched::Found`]); a 404 or 410 from every element tried is [`Fetched::NotFound`]; any
//! other ending is a [`FetchError`], the most telling failure seen, as the go command reports
//! it: a real failure (a 5xx, a network error, a truncated body) beats "not found"; of
//! several real failures the last is reported, of several "not found"s the first.
//!
//! A body is streamed to a temporary file in the spool directory the fetcher was given
//! (normally the store's own, on the same file system), never held in memory. It is
//! bounded ([`FetchConfig::max_zip`] for `.zip`, [`FetchConfig::max_other`] for everything
//! else); a body over the bound, shorter than its `Content-Length`, or cut off by the
//! connection is an error, and its temporary file is removed: nothing partial is returned.
//!
//! The keywords. `off` ends the walk with [`FetchError::Off`], unless an earlier element
//! failed with a real error, which is reported instead. `direct` (fetching from version
//! control) runs the go command ([`super::direct`]) when [`FetchConfig::direct`] says how,
//! and its answer is the answer, as in the go command; without that it ends the walk with
//! [`FetchError::DirectUnsupported`], which says so. A checksum database request
//! (`sumdb/<name>/...`) treats both keywords as the go command does for its checksum database
//! connection: they mean "the database itself". It is asked of each proxy URL first (at
//! `<url>/sumdb/<name>/...`), and only when every proxy tried says "not found" (or the walk
//! reaches `direct` or `off`) of the database's own URL, `https://<name>/...`
//! ([`FetchConfig::sumdb_direct_base`] replaces that base in tests). Unlike the go command,
//! which asks each proxy `sumdb/<name>/supported` once and then sticks to the one that said
//! yes, this is decided per request; the answers are the same files.
//!
//! Credentials in an upstream URL (`https://user:secret@host`) are sent as basic
//! authentication, and every message shows the password as `xxxxx`.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tempfile::NamedTempFile;
use tokio::io::AsyncWriteExt;

use super::body::{Body, FetchError, Fetched};
use super::direct::{self, DirectConfig};
use super::path::Request;
use super::upstream::{Outcome, Upstream, Upstreams};

/// How the fetcher reaches its upstreams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchConfig {
    /// The longest wait for a connection to an upstream.
    pub connect_timeout: Duration,
    /// The longest wait for any one read of an answer (headers or a piece of the body): an
    /// upstream that stops sending for this long fails the request. A large zip may take much
    /// longer than this in all, as long as it keeps coming.
    pub read_timeout: Duration,
    /// The largest `.zip` accepted, in bytes (the go command itself refuses zips over
    /// 500 MiB).
    pub max_zip: u64,
    /// The largest answer accepted for any other request, in bytes.
    pub max_other: u64,
    /// Where bodies are spooled: a directory that exists, normally the store's spool
    /// ([`super::EntryModStore::spool_dir`]).
    pub spool_dir: PathBuf,
    /// The base URL of every checksum database asked directly, instead of `https://<name>`:
    /// `Some("http://127.0.0.1:8080/db")` asks `http://127.0.0.1:8080/db/latest` for
    /// `sumdb/<name>/latest`. `None` (the default) is the go command's `https://<name>`.
    pub sumdb_direct_base: Option<String>,
    /// How `direct` runs the go command; `None` (the default): `direct` is not supported and
    /// fails with [`FetchError::DirectUnsupported`].
    pub direct: Option<DirectConfig>,
    /// A PEM file of more certificate authorities to trust (the daemon's `--http-ca-file`,
    /// for a cache server with a private CA's certificate first in its list).
    pub ca_file: Option<PathBuf>,
    /// Modules fetched with `direct` alone, never from a proxy of the list: the go command's
    /// `GONOPROXY` (which defaults to `GOPRIVATE`), as comma-separated path globs
    /// ([`super::upstream::matches_prefix_patterns`]). Empty: none.
    pub noproxy: String,
}

impl FetchConfig {
    /// 10 s to connect, 60 s per read, 512 MiB for a zip, 16 MiB for anything else, the
    /// databases at their own URLs, `direct` not supported.
    pub fn new(spool_dir: PathBuf) -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
            max_zip: 512 << 20,
            max_other: 16 << 20,
            spool_dir,
            sumdb_direct_base: None,
            direct: None,
            noproxy: String::new(),
            ca_file: None,
        }
    }
}

/// Fetches requests from a GOPROXY list (see the module doc).
#[derive(Debug, Clone)]
pub struct Fetcher {
    upstreams: Upstreams,
    client: reqwest::Client,
    config: FetchConfig,
}

/// What one element answered.
enum Answer {
    Found(Body),
    NotFound(u16),
    Failed(FetchError),
}

impl Fetcher {
    /// Builds the HTTP client; no request is made.
    pub fn new(upstreams: Upstreams, config: FetchConfig) -> Result<Self, FetchError> {
        crate::store::install_crypto_provider();
        let mut builder = reqwest::Client::builder();
        if let Some(path) = &config.ca_file {
            let bad = |err: &dyn std::fmt::Display| {
                FetchError::Client(format!("the CA file {}: {err}", path.display()))
            };
            let pem = std::fs::read(path).map_err(|err| bad(&err))?;
            let certificate = reqwest::Certificate::from_pem(&pem).map_err(|err| bad(&err))?;
            builder = builder.add_root_certificate(certificate);
        }
        let client = builder
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.read_timeout)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|err| FetchError::Client(err.to_string()))?;
        Ok(Self {
            upstreams,
            client,
            config,
        })
    }

    /// The fetcher of a module proxy (`serve --goproxy`, the daemon's `--goproxy-listen`):
    /// fetching from `upstreams`, modules that `noproxy` names `direct` only, spooling in
    /// `spool`, taking zips of at most `max_zip` bytes, trusting `ca_file` too. When the list
    /// has `direct` or `noproxy` names modules, `direct` gets a private module cache in a new
    /// temporary directory, removed when the returned guard is dropped: keep it as long as the
    /// proxy serves.
    pub fn for_proxy(
        upstreams: Upstreams,
        noproxy: &str,
        spool: &Path,
        max_zip: u64,
        ca_file: Option<PathBuf>,
    ) -> Result<(Self, Option<tempfile::TempDir>), FetchError> {
        let mut config = FetchConfig::new(spool.to_path_buf());
        config.max_zip = config.max_zip.min(max_zip);
        config.noproxy = noproxy.to_owned();
        config.ca_file = ca_file;
        let uses_direct = upstreams
            .elements()
            .iter()
            .any(|(upstream, _)| *upstream == Upstream::Direct);
        let guard = if uses_direct || !noproxy.is_empty() {
            let dir = tempfile::Builder::new()
                .prefix("goremotecache-gomodcache-")
                .tempdir()
                .map_err(|err| FetchError::Spool {
                    dir: std::env::temp_dir().display().to_string(),
                    message: format!("a module cache for direct: {err}"),
                })?;
            config.direct = Some(DirectConfig::new(dir.path().to_path_buf()));
            Some(dir)
        } else {
            None
        };
        Ok((Self::new(upstreams, config)?, guard))
    }

    /// The GOPROXY list.
    pub fn upstreams(&self) -> &Upstreams {
        &self.upstreams
    }

    /// Fetches `request` (see the module doc for the walk and the errors). A
    /// `sumdb/<name>/supported` request is fetched like any other; whether to ask at all is
    /// the caller's choice ([`super::Caching::Local`]).
    pub async fn fetch(&self, request: &Request) -> Result<Fetched, FetchError> {
        let path = request.path();
        let limit = match request {
            Request::Zip { .. } => self.config.max_zip,
            _ => self.config.max_other,
        };
        let sumdb = sumdb_parts(request);
        let mut not_found: Option<u16> = None;
        let mut error: Option<FetchError> = None;
        let mut index = 0;
        // `direct` or `off`, when the walk reached one.
        let mut keyword = None;
        if self.is_private(request) {
            // As in the go command: a module that GONOPROXY names is fetched from version
            // control, whatever the list says.
            keyword = Some(&Upstream::Direct);
            index = self.upstreams.len();
        }
        while let Some(upstream) = self.upstreams.get(index) {
            let Upstream::Url(base) = upstream else {
                keyword = Some(upstream);
                break;
            };
            let url = format!("{base}/{path}");
            let outcome = match self.get(&url, &upstream.to_string(), &path, limit).await {
                Answer::Found(body) => return Ok(Fetched::Found(body)),
                Answer::NotFound(status) => {
                    not_found.get_or_insert(status);
                    Outcome::NotFound
                }
                // As in the go command, the last real failure is the one reported.
                Answer::Failed(err) => {
                    error = Some(err);
                    Outcome::Failed
                }
            };
            match self.upstreams.next_after(index, &outcome) {
                Some(next) => index = next,
                None => break,
            }
        }
        if let Some((name, rest)) = &sumdb {
            // A real failure ends a checksum database request, as it ends the go command's
            // search for a proxy of the database.
            if let Some(err) = error {
                return Err(err);
            }
            // Every proxy said "not found", or there were none before a keyword: the go
            // command would go to the database itself, and so does its proxy.
            let base = match &self.config.sumdb_direct_base {
                Some(base) => base.trim_end_matches('/').to_owned(),
                None => format!("https://{name}"),
            };
            let url = format!("{base}/{rest}");
            return match self.get(&url, &base, &path, limit).await {
                Answer::Found(body) => Ok(Fetched::Found(body)),
                Answer::NotFound(status) => Ok(Fetched::NotFound { status }),
                Answer::Failed(err) => Err(err),
            };
        }
        if let (Some(Upstream::Direct), Some(config)) = (keyword, &self.config.direct) {
            // As in the go command, `direct`'s answer is the answer, whatever came before.
            let (config, request, spool) = (
                config.clone(),
                request.clone(),
                self.config.spool_dir.clone(),
            );
            return tokio::task::spawn_blocking(move || {
                direct::fetch(&config, &request, &spool, limit)
            })
            .await
            .unwrap_or_else(|err| {
                Err(FetchError::Direct {
                    path: path.clone(),
                    message: err.to_string(),
                })
            });
        }
        if let Some(keyword) = keyword {
            // `direct`'s failure is always the one reported, as in the go command; `off` only
            // when nothing before it failed for real.
            return Err(match (keyword, error) {
                (Upstream::Direct, _) => FetchError::DirectUnsupported,
                (_, Some(earlier)) => earlier,
                (_, None) => FetchError::Off,
            });
        }
        match (error, not_found) {
            (Some(err), _) => Err(err),
            (None, Some(status)) => Ok(Fetched::NotFound { status }),
            // Unreachable: the walk tried a URL (a list that starts with a keyword is handled
            // above), and each answer is one of the three; kept total all the same.
            (None, None) => Err(FetchError::Off),
        }
    }

    /// Whether `request` is for a module that [`FetchConfig::noproxy`] names.
    fn is_private(&self, request: &Request) -> bool {
        let module = match request {
            Request::List { module }
            | Request::Info { module, .. }
            | Request::Mod { module, .. }
            | Request::Zip { module, .. }
            | Request::Latest { module } => module,
            _ => return false,
        };
        super::upstream::matches_prefix_patterns(&self.config.noproxy, module.as_str())
    }

    /// GETs `url` and spools a 200's body.
    async fn get(&self, url: &str, upstream: &str, path: &str, limit: u64) -> Answer {
        let network = |err: reqwest::Error| {
            Answer::Failed(FetchError::Network {
                upstream: upstream.to_owned(),
                path: path.to_owned(),
                message: error_chain(&err.without_url()),
            })
        };
        let mut response = match self.client.get(url).send().await {
            Ok(response) => response,
            Err(err) => return network(err),
        };
        let status = response.status().as_u16();
        match Outcome::from_status(status) {
            Outcome::Found => {}
            Outcome::NotFound => return Answer::NotFound(status),
            Outcome::Failed => {
                return Answer::Failed(FetchError::Status {
                    upstream: upstream.to_owned(),
                    path: path.to_owned(),
                    status,
                });
            }
        }
        let too_large = || {
            Answer::Failed(FetchError::TooLarge {
                upstream: upstream.to_owned(),
                path: path.to_owned(),
                limit,
            })
        };
        let expected = response.content_length();
        if expected.is_some_and(|len| len > limit) {
            return too_large();
        }
        let spool_error = |err: io::Error| {
            Answer::Failed(FetchError::Spool {
                dir: self.config.spool_dir.display().to_string(),
                message: crate::fsutil::explain_io(&err),
            })
        };
        let (file, mut out) = match spool_file(&self.config.spool_dir) {
            Ok(pair) => pair,
            Err(err) => return spool_error(err),
        };
        let mut len: u64 = 0;
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    len += chunk.len() as u64;
                    if len > limit {
                        return too_large();
                    }
                    if let Err(err) = out.write_all(&chunk).await {
                        return spool_error(err);
                    }
                }
                Ok(None) => break,
                Err(err) => return network(err),
            }
        }
        if let Err(err) = out.flush().await {
            return spool_error(err);
        }
        if let Some(expected) = expected.filter(|&expected| expected != len) {
            return Answer::Failed(FetchError::Truncated {
                upstream: upstream.to_owned(),
                path: path.to_owned(),
                got: len,
                expected,
            });
        }
        Answer::Found(Body { file, len })
    }
}

/// A new temporary file in `dir`, and an async handle to write it.
fn spool_file(dir: &Path) -> io::Result<(NamedTempFile, tokio::fs::File)> {
    let file = tempfile::Builder::new()
        .prefix(".fetch-")
        .tempfile_in(dir)?;
    let out = tokio::fs::File::from_std(file.as_file().try_clone()?);
    Ok((file, out))
}

/// For a checksum database request, the database's name and the path below
/// `sumdb/<name>/`.
fn sumdb_parts(request: &Request) -> Option<(String, String)> {
    let name = match request {
        Request::SumdbSupported { name }
        | Request::SumdbLookup { name, .. }
        | Request::SumdbTile { name, .. }
        | Request::SumdbLatest { name } => name.as_str().to_owned(),
        _ => return None,
    };
    let path = request.path();
    let rest = path.strip_prefix(&format!("sumdb/{name}/"))?.to_owned();
    Some((name, rest))
}

/// An error with its causes, for a message that says what went wrong (reqwest's own says only
/// "error sending request").
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests;
