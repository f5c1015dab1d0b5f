//! `goremotecache serve`'s own options.

// The doc comments of the flags are their --help text, written for a terminal, not rustdoc.
#![allow(
    rustdoc::invalid_html_tags,
    rustdoc::bare_urls,
    rustdoc::broken_intra_doc_links
)]

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::config::values::{MaxSize, parse_bound, parse_max_size, parse_size, parse_switch};

/// The server's own options (`goremotecache serve` also takes [`S3Args`], [`TimeoutArgs`] and
/// [`CommonArgs`]).
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct ServeArgs {
    /// Address and port to listen on.
    #[arg(
        long,
        env = "GOREMOTECACHE_LISTEN",
        value_name = "ADDR",
        default_value = "127.0.0.1:8321"
    )]
    pub listen: std::net::SocketAddr,

    /// Store entries in this directory (otherwise in S3, with the --s3-* options).
    #[arg(long, env = "GOREMOTECACHE_STORAGE_DIR", value_name = "DIR")]
    pub storage_dir: Option<PathBuf>,

    /// A file of bearer tokens, one a line: `rw TOKEN` or `ro TOKEN` (see docs/http-api.md).
    /// Read again on SIGHUP.
    #[arg(long, env = "GOREMOTECACHE_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,

    /// Bearer tokens as `rw:TOKEN,ro:TOKEN` (in addition to --token-file).
    #[arg(
        long,
        env = "GOREMOTECACHE_TOKENS",
        value_name = "LIST",
        hide_env_values = true
    )]
    pub tokens: Option<String>,

    /// Let requests without a token read (GET and HEAD); writing always needs a token.
    #[arg(long, env = "GOREMOTECACHE_ALLOW_ANONYMOUS_READ", value_parser = parse_switch)]
    pub allow_anonymous_read: bool,

    /// The largest entry a PUT may send; larger ones get 413.
    #[arg(long, env = "GOREMOTECACHE_MAX_ENTRY_SIZE", value_name = "BYTES", default_value = "256MiB", value_parser = parse_size)]
    pub max_entry_size: u64,

    /// The most bytes of entries that --storage-dir keeps. Past it, the least recently used
    /// entries (by last read or write) are deleted down to 90%; a PUT that would take the
    /// storage more than 10% past it, because deleting falls behind, gets 507. `off` keeps
    /// everything. Not for S3 storage (bound a bucket with its lifecycle rules). [default:
    /// 10GiB]
    #[arg(long, env = "GOREMOTECACHE_SERVE_MAX_SIZE", value_name = "BYTES", value_parser = parse_max_size)]
    pub max_size: Option<MaxSize>,

    /// Connections served at once; more are closed.
    #[arg(
        long,
        env = "GOREMOTECACHE_MAX_CONNECTIONS",
        value_name = "N",
        default_value_t = 1024
    )]
    pub max_connections: usize,

    /// Serve HTTPS with this certificate chain (PEM); needs --tls-key.
    #[arg(
        long,
        env = "GOREMOTECACHE_TLS_CERT",
        value_name = "PEM",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM).
    #[arg(
        long,
        env = "GOREMOTECACHE_TLS_KEY",
        value_name = "PEM",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// Requests handled at once; more get 503.
    #[arg(
        long,
        env = "GOREMOTECACHE_MAX_IN_FLIGHT",
        value_name = "N",
        default_value_t = 512
    )]
    pub max_in_flight: usize,

    /// Also serve a caching Go module proxy at /mod/ (GOPROXY=https://HOST:PORT/mod) and
    /// the checksum databases at /mod/sumdb/NAME/, keeping what it fetches in this server's
    /// storage (under mod/, counted by --max-size). Needs a token like any read (bearer, or
    /// the password of HTTP basic auth, as .netrc gives it), unless --allow-anonymous-read.
    /// See the --goproxy-* options and docs/goproxy.md.
    #[arg(long, env = "GOREMOTECACHE_GOPROXY", value_parser = parse_switch)]
    pub goproxy: bool,

    /// The time bounds on each connection.
    #[command(flatten)]
    pub timeouts: Box<ServeTimeouts>,
}

/// The time bounds of every connection of `serve` (part of [`ServeArgs`]; boxed there so
/// that the `serve` command stays small beside the others): no client, with a token or
/// without, holds a connection or an in-flight place longer than these allow without making
/// progress. What each covers exactly is in `server::connection`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Args)]
pub struct ServeTimeouts {
    /// A request body that sends nothing for this long gets 408 and its connection is closed.
    #[arg(long = "body-timeout", env = "GOREMOTECACHE_BODY_TIMEOUT", value_name = "DURATION", default_value = "30s", value_parser = parse_bound)]
    pub body: Duration,

    /// A client that reads nothing of an answer for this long is disconnected, and what the
    /// answer held (its connection, its --max-in-flight place) is freed.
    #[arg(long = "write-timeout", env = "GOREMOTECACHE_WRITE_TIMEOUT", value_name = "DURATION", default_value = "30s", value_parser = parse_bound)]
    pub write: Duration,

    /// A connection that sends no complete request headers for this long, new or idle after
    /// an answer, is closed.
    #[arg(long = "idle-timeout", env = "GOREMOTECACHE_IDLE_TIMEOUT", value_name = "DURATION", default_value = "60s", value_parser = parse_bound)]
    pub idle: Duration,
}

/// The flags' defaults: what the daemon's module proxy, which has no such flags, keeps.
impl Default for ServeTimeouts {
    fn default() -> Self {
        Self {
            body: Duration::from_secs(30),
            write: Duration::from_secs(30),
            idle: Duration::from_secs(60),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_timeouts_are_the_flags_defaults() {
        let command = <ServeTimeouts as Args>::augment_args(clap::Command::new("t"));
        let default = ServeTimeouts::default();
        let mut seen = 0;
        for arg in command.get_arguments() {
            let value = arg.get_default_values()[0].to_str().unwrap();
            let value = parse_bound(value).unwrap();
            let field = match arg.get_id().as_str() {
                "body" => default.body,
                "write" => default.write,
                "idle" => default.idle,
                other => panic!("a timeout flag not in Default: {other}"),
            };
            assert_eq!(field, value, "{}", arg.get_id());
            seen += 1;
        }
        assert_eq!(seen, 3);
    }
}
