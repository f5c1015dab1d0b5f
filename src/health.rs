//! The remote tier's circuit breaker: a build never fails or stalls because of the remote.
//!
//! An error that retrying cannot fix (access denied, no such bucket) switches the remote off
//! for the rest of the run at once; [`MAX_FAILURES`] transient failures in a row (timeouts,
//! refused connections, 5xx) do too. Either way it is said once on stderr, and the build goes
//! on from the local disk.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use crate::remote::RemoteError;

/// Transient failures in a row that switch the remote off.
pub const MAX_FAILURES: u32 = 3;

/// Whether the remote tier is still worth asking.
#[derive(Debug)]
pub struct Health {
    location: String,
    failures: AtomicU32,
    off: AtomicBool,
}

impl Health {
    pub fn new(location: String) -> Self {
        Self {
            location,
            failures: AtomicU32::new(0),
            off: AtomicBool::new(false),
        }
    }

    pub fn usable(&self) -> bool {
        !self.off.load(Ordering::Relaxed)
    }

    /// A request that reached the store and got an answer (a miss counts).
    pub fn success(&self) {
        self.failures.store(0, Ordering::Relaxed);
    }

    pub fn failure(&self, err: &RemoteError) {
        if err.is_fatal() {
            self.switch_off(&err.to_string());
            return;
        }
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= MAX_FAILURES {
            self.switch_off(&format!("{failures} failures in a row, the last: {err}"));
        }
    }

    fn switch_off(&self, why: &str) {
        if !self.off.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "remote cache {}: {why}; going on with the local cache only for the rest of this run",
                self.location
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_transient_failures_in_a_row_switch_off() {
        let health = Health::new("s3://b".into());
        let transient = RemoteError::Transient("timeout".into());
        health.failure(&transient);
        health.failure(&transient);
        health.success();
        health.failure(&transient);
        health.failure(&transient);
        assert!(health.usable());
        health.failure(&transient);
        assert!(!health.usable());
    }

    #[test]
    fn denied_switches_off_at_once() {
        let health = Health::new("s3://b".into());
        health.failure(&RemoteError::Denied("SignatureDoesNotMatch".into()));
        assert!(!health.usable());
    }
}
