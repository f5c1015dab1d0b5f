//! Locking a `std::sync::Mutex` or `RwLock` without poisoning: a panic in one task while it
//! held a lock (answered as an error by the session) must not turn every later request into a
//! panic too. Every piece of shared state here is left consistent between statements, so the
//! value behind a poisoned lock is still good.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Locks `mutex`, taking the value over from a holder that panicked.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Locks `rwlock` for reading, taking the value over from a writer that panicked.
pub fn read<T>(rwlock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    rwlock
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Locks `rwlock` for writing, taking the value over from a holder that panicked.
pub fn write<T>(rwlock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    rwlock
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
