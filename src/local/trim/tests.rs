use super::*;
use crate::ids::{ActionId, OutputId};
use crate::local::disk::Spooled;
use std::path::PathBuf;

fn put(cache: &DiskCache, action: u8, body: &[u8]) -> (PathBuf, PathBuf) {
    let mut file = cache.spool_file().unwrap();
    file.write_all(body).unwrap();
    let output_id = OutputId::of(body);
    let (path, _) = cache
        .store_output(Spooled {
            file,
            size: body.len() as u64,
            output_id,
        })
        .unwrap();
    let action = ActionId([action; 32]);
    cache
        .write_entry(&action, &output_id, body.len() as u64, SystemTime::now())
        .unwrap();
    let hex = action.to_hex();
    (cache.root().join("a").join(&hex[..2]).join(hex), path)
}

fn set_age(path: &Path, age: Duration) {
    let at = SystemTime::now() - age;
    File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(at)
        .unwrap();
}

const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);
const POLICY: TrimPolicy = TrimPolicy {
    max_age: DEFAULT_AGE,
    max_size: None,
};

#[test]
fn an_output_named_by_a_kept_entry_is_kept_however_old() {
    let dir = tempfile::tempdir().unwrap();
    let cache = DiskCache::open(dir.path()).unwrap();
    let (old_entry, shared) = put(&cache, 1, b"shared");
    let (new_entry, _) = put(&cache, 2, b"shared");
    let (orphan_entry, orphan) = put(&cache, 3, b"alone");
    for path in [&old_entry, &shared, &orphan_entry, &orphan] {
        set_age(path, WEEK);
    }
    let report = trim(&cache, &POLICY, false).unwrap();
    assert_eq!((report.entries_removed, report.outputs_removed), (2, 1));
    assert!(!old_entry.exists() && !orphan_entry.exists() && !orphan.exists());
    assert!(new_entry.exists() && shared.exists());
    assert!(cache.get(&ActionId([2; 32])).unwrap().is_some());
}

#[test]
fn a_file_used_after_the_scan_is_put_back_not_removed() {
    let dir = tempfile::tempdir().unwrap();
    let cache = DiskCache::open(dir.path()).unwrap();
    let (entry, output) = put(&cache, 1, b"in use");
    set_age(&entry, WEEK);
    set_age(&output, WEEK);
    let mut trimmer = Trimmer::new(&cache, false).unwrap();
    // A get between the scan and the removal refreshes both files' times.
    assert!(cache.get(&ActionId([1; 32])).unwrap().is_some());
    trimmer
        .by_age(SystemTime::now() - Duration::from_secs(24 * 3600))
        .unwrap();
    assert_eq!(trimmer.report.entries_removed, 0);
    assert_eq!(trimmer.kept_in_use.get(), 1);
    assert!(entry.exists() && output.exists());
    assert_eq!(std::fs::read(&output).unwrap(), b"in use");
    assert_eq!(std::fs::read_dir(cache.tmp_dir()).unwrap().count(), 0);
}

#[test]
fn a_file_the_stale_temp_sweep_removes_while_set_aside_counts_as_removed() {
    let dir = tempfile::tempdir().unwrap();
    let cache = DiskCache::open(dir.path()).unwrap();
    let (entry, _) = put(&cache, 1, b"old");
    set_age(&entry, WEEK);
    let trimmer = Trimmer::new(&cache, false).unwrap();
    let found = &trimmer.scan.entries[0].file;
    // Set aside as the trim does, then a concurrent session's sweep of stale temporary
    // files removes it (it is old) before the trim reads its times again.
    std::fs::rename(&entry, cache.tmp_dir().join("trim-1-swept")).unwrap();
    assert_eq!(cache.sweep_tmp(Duration::from_secs(3600)).unwrap(), 1);
    let aside = CString::new("trim-1-swept").unwrap();
    assert!(trimmer.settle(found, &aside).unwrap());
    assert_eq!(std::fs::read_dir(cache.tmp_dir()).unwrap().count(), 0);
}

#[test]
fn a_get_after_the_output_was_taken_is_a_miss() {
    let dir = tempfile::tempdir().unwrap();
    let cache = DiskCache::open(dir.path()).unwrap();
    let (_, output) = put(&cache, 1, b"gone");
    std::fs::remove_file(&output).unwrap();
    assert_eq!(cache.get(&ActionId([1; 32])).unwrap(), None);
}

#[test]
fn the_automatic_trim_is_claimed_once_a_day_by_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let first = claim(dir.path()).unwrap();
    assert!(first.is_some(), "no trim.txt: due");
    drop(first);
    assert!(claim(dir.path()).unwrap().is_none(), "just trimmed");
    let day_ago = SystemTime::now() - TRIM_INTERVAL - Duration::from_secs(60);
    let secs = day_ago.duration_since(UNIX_EPOCH).unwrap().as_secs();
    std::fs::write(dir.path().join(TRIM_FILE), format!("{secs}\n")).unwrap();
    let held = claim(dir.path()).unwrap();
    assert!(held.is_some(), "a day old: due");
    std::fs::write(dir.path().join(TRIM_FILE), format!("{secs}\n")).unwrap();
    assert!(
        claim(dir.path()).unwrap().is_none(),
        "another process holds the claim"
    );
    drop(held);
    std::fs::write(dir.path().join(TRIM_FILE), "garbage").unwrap();
    assert!(claim(dir.path()).unwrap().is_some(), "unreadable: due");
}

#[test]
fn past_the_size_the_least_recently_used_go_first_but_not_recent_ones() {
    let dir = tempfile::tempdir().unwrap();
    let cache = DiskCache::open(dir.path()).unwrap();
    let mut pairs = Vec::new();
    for n in 0..6u8 {
        let (entry, output) = put(&cache, n, &vec![n; 64 << 10]);
        // n = 0 is the oldest; n = 5 was used just now.
        if n < 5 {
            let age = Duration::from_secs(3 * 3600 + u64::from(5 - n) * 600);
            set_age(&entry, age);
            set_age(&output, age);
        }
        pairs.push((entry, output));
    }
    let policy = TrimPolicy {
        max_age: DEFAULT_AGE,
        max_size: Some(3 * (68 << 10)),
    };
    let report = trim(&cache, &policy, false).unwrap();
    assert!(report.bytes_left <= 3 * (68 << 10) * 9 / 10, "{report:?}");
    let kept: Vec<bool> = pairs
        .iter()
        .map(|(e, o)| e.exists() && o.exists())
        .collect();
    assert_eq!(kept, [false, false, false, false, true, true], "{report:?}");

    // Everything recent: the bound cannot be met and nothing is removed.
    let report = trim(
        &cache,
        &TrimPolicy {
            max_size: Some(1),
            ..policy
        },
        false,
    )
    .unwrap();
    assert!(pairs[5].0.exists() && pairs[5].1.exists(), "{report:?}");
}

/// A module proxy answer of `len` bytes in `mod/` (an entry, or a manifest when `changing`),
/// where the daemon's store keeps it.
fn module_file(root: &Path, name: u8, len: usize, changing: bool) -> PathBuf {
    let store = crate::store::dir::DiskStore::open(&root.join("mod")).unwrap();
    let path = if changing {
        store.manifest_file(&crate::ids::BuildKey([name; 32]))
    } else {
        store.entry_path(&ActionId([name; 32]))
    };
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, vec![name; len]).unwrap();
    path
}

#[test]
fn module_files_unused_past_the_age_are_removed_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let cache = DiskCache::open(dir.path()).unwrap();
    let old_zip = module_file(dir.path(), 1, 4096, false);
    let old_list = module_file(dir.path(), 2, 100, true);
    let used_zip = module_file(dir.path(), 3, 4096, false);
    let used_list = module_file(dir.path(), 4, 100, true);
    // Not a name the store gives: left alone, and not counted.
    let stranger = dir.path().join("mod/prefetch/notes.txt");
    std::fs::write(&stranger, b"mine").unwrap();
    for path in [&old_zip, &old_list, &stranger] {
        set_age(path, WEEK);
    }
    let report = trim(&cache, &POLICY, false).unwrap();
    assert_eq!(
        (report.modules_removed, report.modules_left),
        (2, 2),
        "{report:?}"
    );
    assert!(!old_zip.exists() && !old_list.exists());
    assert!(used_zip.exists() && used_list.exists() && stranger.exists());
    assert!(report.bytes_removed >= 4096, "{report:?}");
    // Nothing is left set aside in tmp/.
    assert_eq!(std::fs::read_dir(cache.tmp_dir()).unwrap().count(), 0);
    // A cache where no module proxy ever ran trims as before.
    let plain = tempfile::tempdir().unwrap();
    let report = trim(&DiskCache::open(plain.path()).unwrap(), &POLICY, false).unwrap();
    assert_eq!((report.modules_removed, report.modules_left), (0, 0));
}

#[test]
fn past_the_size_module_files_go_in_turn_with_build_files_and_recent_ones_stay() {
    let dir = tempfile::tempdir().unwrap();
    let cache = DiskCache::open(dir.path()).unwrap();
    // Oldest first: a build pair, a module zip, a build pair, a module list; then a module zip
    // used just now.
    let hour = |n: u64| Duration::from_secs(3 * 3600 + n * 600);
    let (e0, o0) = put(&cache, 0, &vec![0; 64 << 10]);
    let m1 = module_file(dir.path(), 1, 64 << 10, false);
    let (e2, o2) = put(&cache, 2, &vec![2; 64 << 10]);
    let m3 = module_file(dir.path(), 3, 64 << 10, true);
    let recent = module_file(dir.path(), 4, 64 << 10, false);
    for (paths, age) in [
        (vec![&e0, &o0], hour(4)),
        (vec![&m1], hour(3)),
        (vec![&e2, &o2], hour(2)),
        (vec![&m3], hour(1)),
    ] {
        for path in paths {
            set_age(path, age);
        }
    }
    // Room for about two of the five.
    let policy = TrimPolicy {
        max_age: DEFAULT_AGE,
        max_size: Some(2 * (72 << 10)),
    };
    let report = trim(&cache, &policy, false).unwrap();
    let left = [
        e0.exists(),
        m1.exists(),
        e2.exists(),
        m3.exists(),
        recent.exists(),
    ];
    assert_eq!(left, [false, false, false, true, true], "{report:?}");
    assert_eq!(report.modules_removed, 1, "{report:?}");

    // Nothing but recent files: the bound cannot be met, and the recent one stays.
    let report = trim(
        &cache,
        &TrimPolicy {
            max_size: Some(1),
            ..policy
        },
        false,
    )
    .unwrap();
    assert!(recent.exists(), "{report:?}");
    assert!(!m3.exists(), "{report:?}");
}
