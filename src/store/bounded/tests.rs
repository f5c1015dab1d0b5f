//! The bounded store on a real directory: eviction order, admission, the scan at start.

use super::*;
use crate::store::format;
use crate::store::{RemoteStore, Upload};
use futures::StreamExt;
use std::io::Write;

fn entry(body: &[u8]) -> Vec<u8> {
    format::encode_for_test(body)
}

fn id(n: u8) -> ActionId {
    ActionId([n; 32])
}

/// Puts an entry of `len` body bytes through the server's path (reserve, spool, verify,
/// commit); returns its size on disk or the refusal.
fn put(store: &Arc<BoundedDisk>, n: u8, len: usize) -> Result<u64, RemoteError> {
    let bytes = entry(&vec![n; len]);
    let reservation = store.root().reserve(&id(n), bytes.len() as u64)?;
    let mut temp = store.root().disk().temp_file().unwrap();
    temp.write_all(&bytes).unwrap();
    let verified = VerifiedEntry::check(temp).unwrap();
    store
        .root()
        .commit_verified(&id(n), verified, reservation)?;
    Ok(bytes.len() as u64)
}

fn wait_until(mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(20), "not within 20s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn present(store: &Arc<BoundedDisk>) -> Vec<u8> {
    (0..=255)
        .filter(|&n| store.root().disk().entry_path(&id(n)).exists())
        .collect()
}

#[tokio::test]
async fn the_least_recently_used_go_first_down_to_ninety_percent() {
    let dir = tempfile::tempdir().unwrap();
    let one = entry(&[1; 1000]).len() as u64;
    let (store, scan) =
        BoundedDisk::open(DiskStore::open(dir.path()).unwrap(), Some(10 * one)).unwrap();
    assert_eq!(scan.entries, 0);
    for n in 1..=10 {
        put(&store, n, 1000).unwrap();
    }
    assert_eq!(store.evict(), (0, false), "at the bound, not past it");
    // Read 1 and 2 (a GET and a HEAD): they become the most recent.
    let mut stream = store.root().get(&id(1)).await.unwrap().unwrap();
    while stream.next().await.is_some() {}
    assert_eq!(store.root().head(&id(2)).await.unwrap(), Some(one));
    put(&store, 11, 1000).unwrap();
    // 11 entries, bound 10: down to 9, by the eviction thread or by hand.
    store.evict();
    wait_until(|| store.usage().evictions == 2);
    assert_eq!(present(&store), [1, 2, 5, 6, 7, 8, 9, 10, 11]);
    let usage = store.usage();
    assert_eq!(
        (usage.entries, usage.bytes, usage.evictions),
        (9, 9 * one, 2)
    );
    assert!(store.root().get(&id(3)).await.unwrap().is_none());
}

#[test]
fn a_put_past_the_slack_is_refused_until_eviction_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let one = entry(&[1; 1000]).len() as u64;
    // Filled without a bound, then opened again with one smaller than what it holds, and
    // no eviction thread: eviction is "behind" until `evict` is called.
    let disk = DiskStore::open(dir.path()).unwrap();
    let (store, _) = BoundedDisk::open(disk.clone(), None).unwrap();
    for n in 1..=12 {
        put(&store, n, 1000).unwrap();
    }
    drop(store);
    let (store, scan) = BoundedDisk::open_with(disk, Some(10 * one), false).unwrap();
    assert_eq!((scan.entries, scan.bytes), (12, 12 * one));
    // 12 of 10 stored, past the 10% slack: a new key is refused.
    let refused = put(&store, 13, 1000).unwrap_err();
    assert!(matches!(refused, RemoteError::Full(_)), "{refused:?}");
    assert_eq!(present(&store).len(), 12);
    // A key that is there already writes nothing, and is taken (and is now the most recent).
    put(&store, 1, 1000).unwrap();
    assert_eq!(store.evict(), (3, false));
    assert_eq!(present(&store), [1, 5, 6, 7, 8, 9, 10, 11, 12]);
    put(&store, 13, 1000).unwrap();
}

#[test]
fn a_reservation_holds_room_until_its_put_is_done() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) =
        BoundedDisk::open_with(DiskStore::open(dir.path()).unwrap(), Some(1000), false).unwrap();
    let held = store.root().reserve(&id(1), 600).unwrap();
    assert!(store.root().reserve(&id(2), 600).is_err(), "1200 > 1100");
    drop(held);
    store.root().reserve(&id(2), 600).unwrap();
}

#[test]
fn the_order_survives_a_restart_through_the_files_mtimes() {
    let dir = tempfile::tempdir().unwrap();
    let disk = DiskStore::open(dir.path()).unwrap();
    let (store, _) = BoundedDisk::open(disk.clone(), None).unwrap();
    let one = put(&store, 1, 100).unwrap();
    for n in 2..=4 {
        put(&store, n, 100).unwrap();
    }
    // Written hours ago, 1 first; then 1 is read: its mtime is refreshed.
    let now = SystemTime::now();
    for n in 1..=4u8 {
        let age = Duration::from_secs(3 * 3600 - u64::from(n) * 60);
        fs::File::options()
            .write(true)
            .open(disk.entry_path(&id(n)))
            .unwrap()
            .set_modified(now - age)
            .unwrap();
    }
    drop(store);
    let (store, _) = BoundedDisk::open(disk.clone(), None).unwrap();
    assert!(store.usage().oldest_access_age >= 3 * 3600 - 61);
    futures::executor::block_on(store.root().head(&id(1))).unwrap();
    drop(store);
    // Without the eviction thread, which would start evicting at once (the store is over its
    // bound) while the order is read.
    let (store, _) = BoundedDisk::open_with(disk, Some(3 * one), false).unwrap();
    let mut state = crate::sync::lock(&store.state);
    let order: Vec<u8> =
        std::iter::from_fn(|| state.index.pop_oldest().map(|(key, _)| key.action.0[0])).collect();
    assert_eq!(order, [2, 3, 4, 1]);
}

#[test]
fn a_scan_skips_what_is_not_an_entry() {
    let dir = tempfile::tempdir().unwrap();
    let disk = DiskStore::open(dir.path()).unwrap();
    let (store, _) = BoundedDisk::open(disk.clone(), None).unwrap();
    put(&store, 0xab, 10).unwrap();
    let shard = dir.path().join("v1").join("ab");
    fs::write(shard.join("not-an-entry"), b"x").unwrap();
    fs::write(shard.join("cd".repeat(32)), b"in the wrong shard").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", shard.join("ef".repeat(32))).unwrap();
    drop(store);
    let (_, scan) = BoundedDisk::open(disk, None).unwrap();
    assert_eq!((scan.entries, scan.skipped), (1, 3));
}

/// Puts an entry of `len` body bytes into `space` through the server's path.
fn put_in(space: &BoundedSpace, n: u8, len: usize) -> u64 {
    let bytes = entry(&vec![n; len]);
    let reservation = space.reserve(&id(n), bytes.len() as u64).unwrap();
    let mut temp = space.disk().temp_file().unwrap();
    temp.write_all(&bytes).unwrap();
    let verified = VerifiedEntry::check(temp).unwrap();
    space
        .commit_verified(&id(n), verified, reservation)
        .unwrap();
    bytes.len() as u64
}

fn ns(name: &str) -> Namespace {
    Namespace::parse(name).unwrap()
}

#[test]
fn namespaces_share_one_index_and_one_bound() {
    let dir = tempfile::tempdir().unwrap();
    let disk = DiskStore::open(dir.path()).unwrap();
    let one = entry(&[1; 1000]).len() as u64;
    let (store, _) = BoundedDisk::open_with(disk.clone(), Some(10 * one), false).unwrap();
    // A read of a namespace that has no directory makes none.
    assert!(store.namespace(&ns("a"), false).unwrap().is_none());
    assert!(!dir.path().join("ns").exists());
    let a = store.namespace(&ns("a"), true).unwrap().unwrap();
    let b = store.namespace(&ns("b"), true).unwrap().unwrap();
    assert!(store.namespace(&ns("a"), false).unwrap().is_some());
    // The same keys in a, then in b: two entries each, in their own directories.
    for n in 1..=6 {
        put_in(&a, n, 1000);
    }
    for n in 1..=5 {
        put_in(&b, n, 1000);
    }
    assert!(dir.path().join("ns/b/v1/05").join("05".repeat(32)).exists());
    assert_eq!(store.usage().entries, 11);
    // Admission counts every namespace: an 11th entry was within the 10% slack, a 12th is
    // not, though b has only five.
    let refused = b.reserve(&id(6), one).unwrap_err();
    assert!(matches!(refused, RemoteError::Full(_)), "{refused:?}");
    // Eviction takes the least recently used, whichever namespace they are in.
    assert_eq!(store.evict(), (2, false));
    put_in(&b, 6, 1000);
    let present = |space: &BoundedSpace| -> Vec<u8> {
        (1..=6)
            .filter(|&n| space.disk().entry_path(&id(n)).exists())
            .collect()
    };
    assert_eq!(present(&a), [3, 4, 5, 6]);
    assert_eq!(present(&b), [1, 2, 3, 4, 5, 6]);
    let root = store.root();
    put_in(&root, 7, 1000);
    assert_eq!(store.usage().entries, 11);
    drop((a, b, root, store));

    // The start-up scan finds every namespace's entries.
    let (store, scan) = BoundedDisk::open_with(disk, Some(10 * one), false).unwrap();
    assert_eq!((scan.entries, scan.bytes), (11, 11 * one));
    let a = store.opened(&ns("a")).expect("found at start");
    assert_eq!(
        futures::executor::block_on(a.head(&id(4))).unwrap(),
        Some(one)
    );
    // A clear of one namespace leaves the others indexed.
    futures::executor::block_on(a.clear(&|_| {})).unwrap();
    assert_eq!(store.usage().entries, 7);
}

#[test]
fn a_namespace_directory_is_never_reached_through_a_symlink() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let disk = DiskStore::open(dir.path()).unwrap();
    // Something that looks like a namespace, elsewhere, linked in as ns/.
    let outside = DiskStore::open(&elsewhere.path().join("x")).unwrap();
    let mut temp = outside.temp_file().unwrap();
    temp.write_all(&entry(b"outside")).unwrap();
    outside.commit(&id(1), temp).unwrap();
    std::os::unix::fs::symlink(elsewhere.path(), dir.path().join("ns")).unwrap();
    let (store, scan) = BoundedDisk::open(disk, None).unwrap();
    assert_eq!(scan.entries, 0, "nothing indexed through the link");
    assert!(store.namespace(&ns("x"), false).unwrap().is_none());
    // A write replaces the link by a directory; what it pointed to is left alone.
    let x = store.namespace(&ns("x"), true).unwrap().unwrap();
    assert!(
        futures::executor::block_on(x.get(&id(1)))
            .unwrap()
            .is_none()
    );
    put_in(&x, 2, 10);
    assert!(dir.path().join("ns").symlink_metadata().unwrap().is_dir());
    assert!(
        elsewhere
            .path()
            .join("x/v1/01")
            .join("01".repeat(32))
            .exists()
    );
    assert!(!elsewhere.path().join("x/v1/02").exists());
}

#[tokio::test]
async fn module_answers_share_the_bound_and_are_found_again_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let one = entry(&[1; 1000]).len() as u64;
    let disk = DiskStore::open(dir.path()).unwrap();
    let (store, _) = BoundedDisk::open_with(disk.clone(), Some(10 * one), false).unwrap();
    let modules = store.modules().unwrap();
    assert!(dir.path().join("mod/v1").is_dir());
    for n in 100..104 {
        modules
            .put(&id(n), Upload::Bytes(entry(&[n; 1000]).into()))
            .await
            .unwrap();
    }
    for n in 1..=7 {
        put(&store, n, 1000).unwrap();
    }
    // Eleven entries in a bound of ten: the oldest, module answers, go first.
    assert_eq!(store.usage().entries, 11);
    assert_eq!(store.evict(), (2, false));
    assert!(modules.get(&id(101)).await.unwrap().is_none());
    assert!(modules.get(&id(102)).await.unwrap().is_some());
    drop((store, modules));
    // A restart scans mod/ too: the answer left is counted, and found.
    let (store, scan) = BoundedDisk::open_with(disk, Some(10 * one), false).unwrap();
    assert_eq!(scan.entries, 9);
    assert!(
        store
            .modules()
            .unwrap()
            .get(&id(102))
            .await
            .unwrap()
            .is_some()
    );
    // The same action ID as a build entry is another key.
    assert!(store.root().get(&id(102)).await.unwrap().is_none());
}
