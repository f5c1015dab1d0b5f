//! The options of the per-machine daemon and of the commands that reach it: `daemon`,
//! `connect`, `flush`, `status` and `warm`. Each also takes every option of the main mode
//! ([`MainArgs`]): they name the build whose daemon is meant.

// The doc comments of the flags are their --help text, written for a terminal, not rustdoc.
#![allow(
    rustdoc::invalid_html_tags,
    rustdoc::bare_urls,
    rustdoc::broken_intra_doc_links
)]

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::{GoproxyArgs, MainArgs};
use crate::config::values::parse_idle_exit;

/// `goremotecache daemon`: its own options, then those of the builds it serves.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct DaemonCommand {
    #[command(flatten)]
    pub daemon: DaemonArgs,
    #[command(flatten)]
    pub socket: SocketArgs,
    #[command(flatten)]
    pub goproxy: GoproxyArgs,
    #[command(flatten)]
    pub main: MainArgs,
}

/// The daemon's own options.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct DaemonArgs {
    /// Also serve plain GOCACHEPROG sessions on this loopback TCP address (such as
    /// 127.0.0.1:8322), for a client that bridges the go command's pipes to a port, as
    /// go-cache-plugin's `connect PORT` does. Anyone on this machine can reach a TCP port:
    /// use it only where all local users may share the cache. [default: none]
    #[arg(long, env = "GOREMOTECACHE_LISTEN_PLUGIN", value_name = "ADDR")]
    pub listen_plugin: Option<String>,

    /// Also serve a caching Go module proxy on this loopback TCP address (such as
    /// 127.0.0.1:8323), for the go command's module downloads: set
    /// `GOPROXY=http://127.0.0.1:8323/mod|https://your.usual.proxy` in the job (after `|`, the
    /// proxy the go command uses when the daemon is not there). Modules are kept in
    /// <cache-dir>/mod/ (trimmed with the build cache) and, with --backend s3, in the bucket
    /// under <prefix>/mod/, so a fresh machine gets them from the bucket; with --backend http,
    /// the server's own module proxy is asked first. No authentication: anyone on this machine
    /// can use it, as with --listen-plugin. [default: none]
    #[arg(long, env = "GOREMOTECACHE_GOPROXY_LISTEN", value_name = "ADDR")]
    pub goproxy_listen: Option<String>,

    /// Exit after this long with no session open, no module proxy request and no upload
    /// pending (`off`: never).
    #[arg(
        long,
        env = "GOREMOTECACHE_IDLE_EXIT",
        value_name = "DURATION",
        default_value = "10m",
        value_parser = parse_idle_exit
    )]
    pub idle_exit: Duration,

    /// Started by `connect` or `warm`: leave the caller's session, and ignore --stats and
    /// --stats-file (they are the go command's; the daemon's totals go to its log).
    #[arg(long, hide = true)]
    pub detached: bool,
}

/// Which daemon: its socket, or the one of the build options.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct SocketArgs {
    /// The daemon's unix socket. [default: <cache-dir>/daemon/<FP>.sock, where FP is a
    /// fingerprint of the settings a daemon must share with a build (cache and lock
    /// directories, backend, bucket, prefix, endpoint, server URL and token, namespaces,
    /// mode, AWS credential variables), so that builds with other settings get a daemon of
    /// their own; where that path is too long for a socket, a short one under
    /// $XDG_RUNTIME_DIR/goremotecache or <temp dir>/goremotecache-<uid>]
    #[arg(long, env = "GOREMOTECACHE_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

/// `goremotecache connect`, `flush` and `warm`: which daemon, by a build's options.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct ControlCommand {
    #[command(flatten)]
    pub socket: SocketArgs,
    #[command(flatten)]
    pub main: MainArgs,
}

/// `goremotecache status`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct StatusCommand {
    /// One JSON object per daemon, one a line.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub socket: SocketArgs,
    #[command(flatten)]
    pub main: MainArgs,
}
