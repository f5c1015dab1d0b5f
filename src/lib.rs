//! goremotecache: a GOCACHEPROG program for the go command.
//!
//! The go command (1.24 and later) starts this program with `GOCACHEPROG=goremotecache` and
//! asks it for build and test results over stdin/stdout. A request travels down through the
//! rooms below, and no room imports one above it:
//!
//! - [`cacheprog`]: what the go command talks to: the wire codec and the session (reader,
//!   concurrent handlers, one writer), behind a `Handler` interface;
//! - [`cache`]: the tiered cache that implements it: the local tier first, the remote tier
//!   behind it (fetch once, write-behind uploads, prefetch and its manifests, statistics);
//! - [`daemon`]: `goremotecache daemon`, one cache for every go command of a machine on a
//!   unix socket, and `connect`, the GOCACHEPROG that bridges to it (above the cache);
//! - [`server`]: `goremotecache serve`, the HTTP cache server, on any store;
//! - [`goproxy`]: the module proxy's library (issue 14): request paths under `/mod/`, how
//!   long each answer may be kept, the GOPROXY list of upstreams, fetching from them, and the
//!   cache in front;
//! - [`config`]: the command line, validated into one configuration per command;
//! - [`local`]: the local disk tier, per-key locks, `clear-local`;
//! - [`store`]: the `RemoteStore` contract, the entry format and the backends (S3, the HTTP
//!   server, a directory, memory), with the wrappers that give every backend the same
//!   behaviour (read-only, write-only, time bounds, retries, the circuit breaker);
//! - [`ids`], [`fsutil`] and [`sync`] at the bottom: the 32-byte identifiers, trusted file
//!   system operations, and locks that survive a panic; [`logging`] beside them.
//!
//! `main.rs` only parses, wires and maps errors to exit codes.

#![forbid(unsafe_code)]
#![warn(missing_debug_implementations, rust_2018_idioms)]

pub mod cache;
pub mod cacheprog;
pub mod config;
pub mod daemon;
pub mod doctor;
pub mod fsutil;
pub mod goproxy;
pub mod ids;
pub mod local;
pub mod logging;
/// The property tests' shared configuration and mutations (tests only).
#[cfg(test)]
pub(crate) mod proptests;
pub mod server;
pub mod store;
pub mod sync;
