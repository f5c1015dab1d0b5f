//! What fetching one request of the GOPROXY protocol gives: a complete [`Body`], "not found",
//! or why it failed. Shared by the fetcher ([`super::fetch`]) and by `direct`
//! ([`super::direct`]), which the fetcher runs for the `direct` keyword.

use tempfile::NamedTempFile;

/// A complete body, in a temporary file that is removed when it is dropped (unless stored).
#[derive(Debug)]
pub struct Body {
    /// The file, written and flushed, in the fetcher's spool directory.
    pub file: NamedTempFile,
    /// Its length in bytes.
    pub len: u64,
}

/// How the upstreams answered a request that did not fail.
#[derive(Debug)]
pub enum Fetched {
    /// An upstream answered 200 with this body.
    Found(Body),
    /// Every upstream tried answered 404 or 410; `status` is the first such answer, for the
    /// caller to pass on.
    NotFound { status: u16 },
}

/// Why a request could not be answered. `upstream` is the element's URL with any password
/// shown as `xxxxx`. `Clone`, so that one failure can answer every request that waited on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("module lookup disabled by GOPROXY=off")]
    Off,
    #[error(
        "GOPROXY=direct (fetching from version control) is not enabled on this proxy: list \
         a module proxy before it"
    )]
    DirectUnsupported,
    #[error("fetching {path} directly with the go command: {message}")]
    Direct { path: String, message: String },
    #[error("{upstream} answered {status} for {path}")]
    Status {
        upstream: String,
        path: String,
        status: u16,
    },
    #[error("fetching {path} from {upstream}: {message}")]
    Network {
        upstream: String,
        path: String,
        message: String,
    },
    #[error("{path} from {upstream} is over the limit of {limit} bytes")]
    TooLarge {
        upstream: String,
        path: String,
        limit: u64,
    },
    #[error("{path} from {upstream} ended after {got} of {expected} bytes")]
    Truncated {
        upstream: String,
        path: String,
        got: u64,
        expected: u64,
    },
    #[error("spooling an upstream's answer in {dir}: {message}")]
    Spool { dir: String, message: String },
    #[error("building the HTTP client: {0}")]
    Client(String),
}
