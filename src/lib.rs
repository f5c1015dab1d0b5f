//! goremotecache: a GOCACHEPROG program for the go command.
//!
//! The go command (1.24 and later) starts this program with `GOCACHEPROG=goremotecache` and
//! asks it for build and test results over stdin/stdout. The pieces:
//!
//! - [`protocol`]: the wire format, parsed and decoded as a stream;
//! - [`session`]: the reader, the concurrent handlers and the single writer;
//! - [`cache`]: the tiered cache behind the session (the local disk for now);
//! - [`disk`]: the local disk tier, the authority;
//! - [`lock`]: per-key locks across tasks and processes;
//! - [`fsutil`]: trusting directories, no-follow opens, the stale-file sweep;
//! - [`stats`], [`config`], [`clear`], [`logging`]: what the command line needs.
//!
//! `main.rs` only parses, wires and maps errors to exit codes.

#![forbid(unsafe_code)]
#![warn(missing_debug_implementations, rust_2018_idioms)]

pub mod cache;
pub mod clear;
pub mod config;
pub mod disk;
pub mod format;
pub mod fsutil;
pub mod health;
pub mod lock;
pub mod logging;
pub mod prefetch;
pub mod protocol;
pub mod remote;
pub mod server;
pub mod session;
pub mod stats;
pub mod uploader;
