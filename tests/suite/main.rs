//! Every integration test of goremotecache, in one test binary with a module per topic (one
//! link instead of one per file). The tests drive the real binary, the real go command and
//! real stores on loopback; `support` has what they share. The streaming codec's memory test
//! is a binary of its own (tests/codec_stream.rs): it counts the allocations of its process.

mod support;

mod cli;
mod codec;
mod crash;
mod daemon;
mod disk_errors;
mod doctor;
mod gc_remote;
mod gcs_azure_e2e;
mod go_e2e;
mod goproxy;
mod hostile_disk;
mod instant_misses;
mod messages;
mod namespaces;
mod packs;
mod prefetch;
mod prefixed_credentials;
mod run_reports;
mod s3_e2e;
mod s3_protocol;
mod serve;
mod session;
mod soak;
mod store_conformance;
mod templates;
mod trim;
