//! The per-machine daemon: one cache process for every go command of a machine or CI job.
//!
//! `goremotecache daemon` ([`serve`]) holds the cache, with its remote tier, one upload queue
//! and one prefetch, and serves many sessions at once on a unix socket whose place
//! ([`place`]) follows from the settings, so that builds with other settings get a daemon of
//! their own. `goremotecache connect` ([`bridge`]) is the go command's GOCACHEPROG: it
//! starts the daemon if none listens ([`client`]), answers what the shared local disk can,
//! and asks the daemon for the rest ([`protocol`]); if the daemon goes away it goes on by
//! itself. `flush`, `status` and `warm` ([`control`]) act on running daemons. With
//! `--goproxy-listen` the daemon is also a caching Go module proxy on loopback ([`goproxy`]).

pub mod bridge;
pub mod client;
pub mod control;
pub mod goproxy;
pub mod place;
pub mod protocol;
pub mod serve;
