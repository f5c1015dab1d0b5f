//! The per-machine daemon.

pub mod place;
