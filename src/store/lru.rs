//! The access order of a bounded store's entries ([`super::bounded`]): each entry's size and
//! when it was last read or written, in least-recently-used order, with the total size.
//!
//! The order is kept by a tick, a counter that grows with every access: a map from tick to
//! key holds the order, and a map from key to [`Meta`] finds an entry's tick. So an access, an
//! insert, a removal and taking the oldest entry are each O(log n), and nothing is ever
//! scanned. Wall-clock seconds are kept beside the tick for what is said about an entry's age
//! (the oldest access, when a file's mtime was last refreshed), never for the order itself,
//! so a clock that steps back cannot scramble it.
//!
//! A server started on a million entries peaks at about 260 MiB, the scan's list and the
//! index together (`bench/bench_bound_scan.py`).

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

use crate::ids::ActionId;

/// What the index knows of one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Bytes on disk.
    pub size: u64,
    /// Its place in the order: larger is more recent.
    tick: u64,
    /// Unix seconds of the last read or write.
    pub access: u64,
    /// Unix seconds the file's mtime was last set to (by its write, or by a refresh).
    pub touched: u64,
}

/// Entries in least-recently-used order, and their total size, by a key `K` that names an
/// entry (an action ID; the server's, an action ID in a namespace).
#[derive(Debug)]
pub struct Index<K = ActionId> {
    entries: HashMap<K, Meta>,
    order: BTreeMap<u64, K>,
    next_tick: u64,
    bytes: u64,
}

impl<K> Default for Index<K> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
            order: BTreeMap::new(),
            next_tick: 0,
            bytes: 0,
        }
    }
}

impl<K: Copy + Eq + Hash + Ord> Index<K> {
    /// An index of the entries found on disk: `(key, size, mtime)` with the mtime in any
    /// monotonic unit (nanoseconds), seconds for the ages. Ordered by mtime, oldest first.
    pub fn from_scan(mut found: Vec<(K, u64, i64)>) -> Self {
        found.sort_unstable_by_key(|&(id, _, mtime)| (mtime, id));
        let mut index = Self {
            entries: HashMap::with_capacity(found.len()),
            ..Self::default()
        };
        for (id, size, mtime) in found {
            let secs = u64::try_from(mtime.div_euclid(1_000_000_000)).unwrap_or(0);
            index.insert(id, size, secs);
        }
        index
    }

    /// The keys, in no order.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.entries.keys()
    }

    /// Total bytes of the entries.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// What the index knows of `id`.
    pub fn get(&self, id: &K) -> Option<Meta> {
        self.entries.get(id).copied()
    }

    /// Unix seconds of the least recent access, if there is an entry.
    pub fn oldest_access(&self) -> Option<u64> {
        let (_, id) = self.order.first_key_value()?;
        self.entries.get(id).map(|meta| meta.access)
    }

    fn tick(&mut self) -> u64 {
        self.next_tick += 1;
        self.next_tick
    }

    /// Adds an entry just written at `now` (unix seconds) as the most recent; an entry that
    /// was there already is replaced (its size may differ).
    pub fn insert(&mut self, id: K, size: u64, now: u64) {
        self.remove(&id);
        let tick = self.tick();
        self.order.insert(tick, id);
        self.entries.insert(
            id,
            Meta {
                size,
                tick,
                access: now,
                touched: now,
            },
        );
        self.bytes += size;
    }

    /// Records a read or write of `id` at `now`: it becomes the most recent. Returns
    /// `Some(true)` when its file's mtime was last set `refresh` seconds ago or more (the
    /// caller sets it, and the index takes it as done), `Some(false)` when not, `None` for a
    /// key the index does not hold.
    pub fn access(&mut self, id: &K, now: u64, refresh: u64) -> Option<bool> {
        let tick = self.tick();
        let meta = self.entries.get_mut(id)?;
        self.order.remove(&meta.tick);
        self.order.insert(tick, *id);
        meta.tick = tick;
        meta.access = meta.access.max(now);
        let stale = now.saturating_sub(meta.touched) >= refresh;
        if stale {
            meta.touched = now;
        }
        Some(stale)
    }

    /// Removes `id`; returns what the index knew of it.
    pub fn remove(&mut self, id: &K) -> Option<Meta> {
        let meta = self.entries.remove(id)?;
        self.order.remove(&meta.tick);
        self.bytes -= meta.size;
        Some(meta)
    }

    /// Removes and returns the least recently used entry.
    pub fn pop_oldest(&mut self) -> Option<(K, Meta)> {
        let (_, id) = self.order.pop_first()?;
        let meta = self
            .entries
            .remove(&id)
            .expect("ordered entries are indexed");
        self.bytes -= meta.size;
        Some((id, meta))
    }

    /// Puts back an entry taken by [`Index::pop_oldest`] that could not be removed, at its
    /// old place in the order; unless the key was written again meanwhile.
    pub fn restore(&mut self, id: K, meta: Meta) {
        if self.entries.contains_key(&id) || self.order.contains_key(&meta.tick) {
            return;
        }
        self.order.insert(meta.tick, id);
        self.entries.insert(id, meta);
        self.bytes += meta.size;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ActionId {
        ActionId([n; 32])
    }

    fn drain(index: &mut Index<ActionId>) -> Vec<u8> {
        std::iter::from_fn(|| index.pop_oldest().map(|(id, _)| id.0[0])).collect()
    }

    #[test]
    fn reads_and_writes_make_an_entry_the_most_recent() {
        let mut index = Index::default();
        for n in 1..=4 {
            index.insert(id(n), 10 * u64::from(n), 100);
        }
        assert_eq!((index.len(), index.bytes()), (4, 100));
        assert_eq!(index.access(&id(2), 101, 3600), Some(false));
        assert_eq!(index.access(&id(9), 101, 3600), None);
        index.insert(id(1), 5, 102);
        assert_eq!((index.len(), index.bytes()), (4, 95));
        assert_eq!(index.oldest_access(), Some(100));
        assert_eq!(drain(&mut index), [3, 4, 2, 1]);
        assert_eq!((index.len(), index.bytes()), (0, 0));
        assert_eq!(index.oldest_access(), None);
    }

    #[test]
    fn the_file_is_touched_at_most_once_an_interval() {
        let mut index = Index::default();
        index.insert(id(1), 1, 1000);
        assert_eq!(index.access(&id(1), 1500, 3600), Some(false));
        assert_eq!(index.access(&id(1), 4600, 3600), Some(true));
        assert_eq!(index.access(&id(1), 4700, 3600), Some(false));
        assert_eq!(index.get(&id(1)).unwrap().touched, 4600);
        assert_eq!(index.get(&id(1)).unwrap().access, 4700);
    }

    #[test]
    fn a_scan_orders_by_mtime_and_a_failed_removal_keeps_its_place() {
        let s = 1_000_000_000i64;
        let mut index = Index::from_scan(vec![
            (id(1), 10, 30 * s),
            (id(2), 20, 10 * s),
            (id(3), 30, 20 * s + 5),
            (id(4), 40, 20 * s),
        ]);
        assert_eq!(index.bytes(), 100);
        assert_eq!(index.oldest_access(), Some(10));
        assert_eq!(index.get(&id(3)).unwrap().touched, 20);
        let (first, meta) = index.pop_oldest().unwrap();
        assert_eq!(first, id(2));
        index.insert(id(5), 1, 40);
        index.restore(first, meta);
        assert_eq!(index.bytes(), 101);
        // Written again while it was out: the newer entry stands.
        let (first, meta) = index.pop_oldest().unwrap();
        index.insert(first, 7, 50);
        index.restore(first, meta);
        assert_eq!(index.get(&id(2)).unwrap().size, 7);
        assert_eq!(drain(&mut index), [4, 3, 1, 5, 2]);
    }
}
