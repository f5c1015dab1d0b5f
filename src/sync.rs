//! Locking a `std::sync::Mutex` without poisoning: a panic in one task while it held a lock
//! (answered as an error by the session) must not turn every later request into a panic too.
//! Every piece of shared state here is left consistent between statements, so the value
//! behind a poisoned lock is still good.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, taking the value over from a holder that panicked.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
