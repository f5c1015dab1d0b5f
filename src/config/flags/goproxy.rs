//! The module proxy's options (docs/goproxy.md), shared by `serve --goproxy` and the daemon's
//! `--goproxy-listen`.

// The doc comments of the flags are their --help text, written for a terminal, not rustdoc.
#![allow(
    rustdoc::invalid_html_tags,
    rustdoc::bare_urls,
    rustdoc::broken_intra_doc_links
)]

use std::time::Duration;

use clap::Args;

use crate::config::values::parse_bound;

/// Where the module proxy fetches from and how long it trusts what changes.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct GoproxyArgs {
    /// Where the module proxy fetches what it does not hold, in GOPROXY's syntax: proxy URLs,
    /// `direct` (the go command fetches from version control, with this process's git
    /// credentials) and `off`, separated by `,` (next one on 404/410) or `|` (next one on
    /// any failure). Modules that GONOPROXY (or GOPRIVATE) names are always fetched
    /// `direct`. [default: `go env GOPROXY` in this process's environment]
    #[arg(long, env = "GOREMOTECACHE_GOPROXY_UPSTREAM", value_name = "LIST")]
    pub goproxy_upstream: Option<String>,

    /// How long a module's version list, `@latest` and query answers (and a checksum
    /// database's `latest`) are served without asking upstream again; past it they are
    /// fetched again, and the stored copy is served only if every upstream fails.
    #[arg(long, env = "GOREMOTECACHE_GOPROXY_LIST_TTL", value_name = "DURATION", default_value = "1m", value_parser = parse_bound)]
    pub goproxy_list_ttl: Duration,

    /// The checksum databases proxied at /mod/sumdb/NAME/, comma-separated (`off`: none).
    /// The go command verifies what they answer against its own GOSUMDB key, as always.
    /// [default: the database of `go env GOSUMDB`]
    #[arg(long, env = "GOREMOTECACHE_GOPROXY_SUMDB", value_name = "NAMES")]
    pub goproxy_sumdb: Option<String>,
}
