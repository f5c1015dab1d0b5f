//! The local tier: the cache directory that the go command reads outputs from in place
//! ([`disk`]), the per-key locks that let many processes share it ([`lock`]), and
//! `clear-local` ([`clear`]).

pub mod clear;
pub mod disk;
pub mod lock;
pub mod trim;
