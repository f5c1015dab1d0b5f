//! `gc-remote`'s decisions on an inventory in memory, with the times the tests give.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

use super::*;
use crate::cache::manifest::KeySource;
use crate::ids::{BuildKey, Namespace};
use crate::store::manifest_key;

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// Objects with the times the test gave them.
#[derive(Debug, Default)]
struct Aged {
    objects: Mutex<BTreeMap<String, (Bytes, SystemTime)>>,
    /// Keys per delete request, in order.
    deletes: Mutex<Vec<usize>>,
    /// Delete requests still to fail with a transient error.
    failing_deletes: AtomicU32,
    /// Reads fail with this error.
    read_error: Mutex<Option<RemoteError>>,
    reads: AtomicU64,
}

impl Aged {
    fn insert(&self, key: String, bytes: impl Into<Bytes>, age: Duration) {
        let time = SystemTime::now() - age;
        self.objects
            .lock()
            .unwrap()
            .insert(key, (bytes.into(), time));
    }

    fn has(&self, key: &str) -> bool {
        self.objects.lock().unwrap().contains_key(key)
    }

    fn len(&self) -> usize {
        self.objects.lock().unwrap().len()
    }
}

#[async_trait]
impl Inventory for Aged {
    async fn list(
        &self,
        namespace: Option<&Namespace>,
        area: Area,
    ) -> Result<BoxStream<'static, Result<StoredObject, RemoteError>>, RemoteError> {
        let dir = area.dir_in(namespace);
        let listed: Vec<_> = self
            .objects
            .lock()
            .unwrap()
            .iter()
            .filter(|(key, _)| key.starts_with(&dir))
            .map(|(key, (bytes, time))| {
                Ok(StoredObject {
                    key: key.clone(),
                    size: bytes.len() as u64,
                    modified: *time,
                })
            })
            .collect();
        Ok(futures::stream::iter(listed).boxed())
    }

    async fn namespace_dirs(&self) -> Result<Vec<String>, RemoteError> {
        let mut dirs: Vec<String> = self
            .objects
            .lock()
            .unwrap()
            .keys()
            .filter_map(|key| Some(key.strip_prefix("ns/")?.split_once('/')?.0.to_string()))
            .collect();
        dirs.dedup();
        Ok(dirs)
    }

    async fn read(&self, key: &str, _limit: usize) -> Result<Option<Bytes>, RemoteError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        if let Some(err) = self.read_error.lock().unwrap().clone() {
            return Err(err);
        }
        Ok(self
            .objects
            .lock()
            .unwrap()
            .get(key)
            .map(|(b, _)| b.clone()))
    }

    async fn write(&self, key: &str, bytes: Bytes) -> Result<(), RemoteError> {
        self.insert(key.to_string(), bytes, Duration::ZERO);
        Ok(())
    }

    async fn delete(&self, keys: &[String]) -> Result<(), RemoteError> {
        if self
            .failing_deletes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(RemoteError::Transient("503 slow down".into()));
        }
        self.deletes.lock().unwrap().push(keys.len());
        let mut objects = self.objects.lock().unwrap();
        for key in keys {
            objects.remove(key);
        }
        Ok(())
    }

    fn delete_batch(&self) -> usize {
        2
    }

    fn location(&self) -> String {
        "aged://test".into()
    }
}

fn action(n: u8) -> ActionId {
    ActionId([n; 32])
}

fn build(n: u8) -> BuildKey {
    BuildKey([n; 32])
}

/// A manifest listing `actions`, as a build writes it.
fn manifest(actions: &[u8]) -> Vec<u8> {
    let run: Vec<_> = actions.iter().map(|&n| (action(n), 10, None)).collect();
    Manifest::merge(None, &run, &[None], &Default::default())
        .encode(&KeySource::explicit("gc"), None)
}

/// Entries 1 to 6 and two manifests: a recent one listing 1 and 2 (old entries, kept) and 3
/// (recent); an old one listing 4 (old, deleted) and 5 (recent, kept). Entry 6 is old and
/// listed nowhere.
fn store() -> Aged {
    let store = Aged::default();
    for (n, age) in [(1, 30), (2, 30), (3, 0), (4, 30), (5, 0), (6, 30)] {
        store.insert(entry_key(&action(n)), vec![n; 100], DAY * age);
    }
    store.insert(manifest_key(&build(1)), manifest(&[1, 2, 3]), DAY);
    store.insert(manifest_key(&build(2)), manifest(&[4, 5]), DAY * 20);
    store
}

#[tokio::test]
async fn old_entries_go_unless_a_recent_manifest_lists_them() {
    let store = store();
    let plan = plan(&store, &Selection::Unnamespaced, DAY * 7, SystemTime::now())
        .await
        .unwrap();
    assert_eq!(
        plan.sections[0].old_entries,
        Tally {
            count: 2,
            bytes: 200
        },
        "4 and 6"
    );
    assert_eq!(
        plan.sections[0].listed_entries,
        Tally {
            count: 2,
            bytes: 200
        },
        "1 and 2"
    );
    assert_eq!(plan.sections[0].recent_entries.count, 2, "3 and 5");
    assert_eq!(plan.sections[0].old_manifests.count, 1);
    assert_eq!(plan.sections[0].recent_manifests.count, 1);
    assert_eq!(
        store.reads.load(Ordering::SeqCst),
        1,
        "only recent manifests are read"
    );
    assert_eq!(store.len(), 8, "planning deletes nothing");
    let report = plan.to_string();
    assert!(
        report.contains("to delete: 2 entries (200 B), 1 manifest ("),
        "{report}"
    );
    assert!(
        report.contains("kept: 2 entries (200 B) older but listed in a recent manifest"),
        "{report}"
    );

    let counts = Mutex::new(Vec::new());
    let swept = sweep(&store, &plan, &|n| counts.lock().unwrap().push(n))
        .await
        .unwrap();
    assert_eq!((swept.total().entries, swept.total().manifests), (2, 1));
    for n in [1, 2, 3, 5] {
        assert!(store.has(&entry_key(&action(n))), "entry {n} was deleted");
    }
    for n in [4, 6] {
        assert!(!store.has(&entry_key(&action(n))), "entry {n} was kept");
    }
    assert!(store.has(&manifest_key(&build(1))));
    assert!(!store.has(&manifest_key(&build(2))));
    assert_eq!(
        *store.deletes.lock().unwrap(),
        vec![1, 2],
        "the manifest alone first, then the entries in batches of 2"
    );
}

#[tokio::test]
async fn a_longer_duration_keeps_more_and_a_shorter_one_less() {
    let store = store();
    let long = plan(
        &store,
        &Selection::Unnamespaced,
        DAY * 60,
        SystemTime::now(),
    )
    .await
    .unwrap();
    assert_eq!(
        long.sections[0].old_entries.count + long.sections[0].old_manifests.count,
        0
    );
    // Within the day, even the recent manifest is old: only the entries modified since stay.
    let short = plan(&store, &Selection::Unnamespaced, DAY / 2, SystemTime::now())
        .await
        .unwrap();
    assert!(
        short.to_string().contains("choose days, not hours"),
        "{short}"
    );
    assert!(!long.to_string().contains("choose days"), "{long}");
    assert_eq!(short.sections[0].old_manifests.count, 2);
    assert_eq!(short.sections[0].old_entries.count, 4);
    assert_eq!(short.sections[0].recent_entries.count, 2);
}

#[tokio::test]
async fn other_objects_are_never_touched() {
    let store = store();
    store.insert("v1/not-an-entry".into(), "x", DAY * 30);
    store.insert(format!("v1/{}", "A".repeat(64)), "x", DAY * 30);
    store.insert("prefetch/v2/future".into(), "x", DAY * 30);
    store.insert("mod/cache/download/x.zip".into(), "x", DAY * 30);
    let plan = plan(&store, &Selection::Unnamespaced, DAY * 7, SystemTime::now())
        .await
        .unwrap();
    assert_eq!(
        plan.sections[0].other.count, 3,
        "the listing covers v1/ and prefetch/ only"
    );
    sweep(&store, &plan, &|_| {}).await.unwrap();
    assert_eq!(store.len(), 8 - 3 + 4);
    assert!(store.has("prefetch/v2/future") && store.has("mod/cache/download/x.zip"));
}

#[tokio::test]
async fn a_recent_manifest_that_cannot_be_read_stops_everything() {
    let store = store();
    *store.read_error.lock().unwrap() = Some(RemoteError::Denied("403".into()));
    let err = plan(&store, &Selection::Unnamespaced, DAY * 7, SystemTime::now())
        .await
        .unwrap_err();
    assert!(matches!(err, GcError::Manifest { .. }), "{err}");
    assert!(err.to_string().contains("nothing was deleted"), "{err}");
}

#[tokio::test]
async fn a_damaged_recent_manifest_keeps_nothing_and_is_said() {
    let store = store();
    store.insert(manifest_key(&build(1)), "not a manifest", DAY);
    let plan = plan(&store, &Selection::Unnamespaced, DAY * 7, SystemTime::now())
        .await
        .unwrap();
    assert_eq!(plan.sections[0].unreadable_manifests, 1);
    assert_eq!(
        plan.sections[0].recent_manifests.count, 1,
        "kept: builds replace it"
    );
    assert_eq!(plan.sections[0].old_entries.count, 4, "1, 2, 4 and 6");
    assert!(plan.to_string().contains("could not be decoded"));
}

#[tokio::test]
async fn a_transient_delete_failure_is_tried_again() {
    let store = store();
    let plan = plan(&store, &Selection::Unnamespaced, DAY * 7, SystemTime::now())
        .await
        .unwrap();
    store.failing_deletes.store(2, Ordering::SeqCst);
    let swept = sweep(&store, &plan, &|_| {}).await.unwrap();
    assert_eq!(swept.total().entries, 2);
    assert_eq!(store.len(), 5);
    store.failing_deletes.store(DELETE_TRIES, Ordering::SeqCst);
    store.insert(entry_key(&action(9)), "x", DAY * 30);
    let plan = super::plan(&store, &Selection::Unnamespaced, DAY * 7, SystemTime::now())
        .await
        .unwrap();
    let err = sweep(&store, &plan, &|_| {}).await.unwrap_err();
    assert!(matches!(err, GcError::Delete { deleted: 0, .. }), "{err}");
}

#[tokio::test]
async fn progress_is_said_every_thousand() {
    let store = Aged::default();
    for n in 0..2500u32 {
        let mut id = [0u8; 32];
        id[..4].copy_from_slice(&n.to_be_bytes());
        store.insert(entry_key(&ActionId(id)), "x", DAY * 30);
    }
    let plan = plan(&store, &Selection::Unnamespaced, DAY, SystemTime::now())
        .await
        .unwrap();
    let counts = Mutex::new(Vec::new());
    sweep(&store, &plan, &|n| counts.lock().unwrap().push(n))
        .await
        .unwrap();
    assert_eq!(*counts.lock().unwrap(), vec![1000, 2000]);
    assert_eq!(store.len(), 0);
}

fn ns(name: &str) -> Namespace {
    Namespace::parse(name).unwrap()
}

/// `key` (as [`entry_key`] or [`manifest_key`] make it) in `namespace`.
fn in_ns(namespace: &str, key: String) -> String {
    format!("ns/{namespace}/{key}")
}

/// A manifest stored in `home`, listing `actions` each in the namespace given (`None`: the
/// un-namespaced layout), as a build reading those namespaces writes it.
fn manifest_in(home: Option<&str>, actions: &[(u8, Option<&str>)]) -> Vec<u8> {
    let mut names = vec![home.map(ns)];
    let run: Vec<_> = actions
        .iter()
        .map(|&(n, namespace)| {
            let namespace = namespace.map(ns);
            let index = match names.iter().position(|known| *known == namespace) {
                Some(index) => index,
                None => {
                    names.push(namespace);
                    names.len() - 1
                }
            };
            (action(n), 10, Some(index))
        })
        .collect();
    let home = home.map(ns);
    Manifest::merge(None, &run, &names, &Default::default())
        .encode(&KeySource::explicit("gc"), home.as_ref())
}

/// Three areas, every entry 30 days old:
/// - main: entries 1 to 4 and an old manifest listing 3;
/// - pr-1: entry 5, and a recent manifest listing main's 1, and 4 in pr-1 itself (where it
///   is not: main's 4 is listed by nobody);
/// - un-namespaced: entries 6 and 7, and a recent manifest listing 7 and main's 2.
fn namespaced_store() -> Aged {
    let store = Aged::default();
    let old = DAY * 30;
    for n in 1..=4 {
        store.insert(in_ns("main", entry_key(&action(n))), vec![n; 100], old);
    }
    store.insert(in_ns("main", manifest_key(&build(1))), manifest(&[3]), old);
    store.insert(in_ns("pr-1", entry_key(&action(5))), vec![5; 100], old);
    store.insert(
        in_ns("pr-1", manifest_key(&build(2))),
        manifest_in(Some("pr-1"), &[(1, Some("main")), (4, Some("pr-1"))]),
        DAY,
    );
    for n in [6, 7] {
        store.insert(entry_key(&action(n)), vec![n; 100], old);
    }
    store.insert(
        manifest_key(&build(3)),
        manifest_in(None, &[(7, None), (2, Some("main"))]),
        DAY,
    );
    store
}

#[tokio::test]
async fn a_recent_manifest_of_another_namespace_keeps_the_entries_it_lists_there() {
    let store = namespaced_store();
    let main = Selection::One(ns("main"));
    let plan = plan(&store, &main, DAY * 7, SystemTime::now())
        .await
        .unwrap();
    assert_eq!(plan.sections.len(), 1);
    let section = &plan.sections[0];
    assert_eq!(section.namespace, Some(ns("main")));
    assert_eq!(
        section.listed_entries.count, 2,
        "1 (listed by pr-1's manifest) and 2 (by the un-namespaced one)"
    );
    assert_eq!(section.old_entries.count, 2, "3 and 4");
    assert_eq!(section.old_manifests.count, 1);
    assert_eq!(section.recent_manifests.count, 0);
    assert_eq!(
        plan.read_elsewhere.count, 2,
        "pr-1's and the un-namespaced one"
    );
    assert_eq!(store.reads.load(Ordering::SeqCst), 2);
    let report = plan.to_string();
    assert!(
        report.starts_with("aged://test (namespace main): entries and prefetch manifests"),
        "{report}"
    );
    assert!(
        report.contains("read: 2 recent manifests (") && report.contains("of other namespaces"),
        "{report}"
    );

    let before = store.len();
    let swept = sweep(&store, &plan, &|_| {}).await.unwrap();
    assert_eq!((swept.total().entries, swept.total().manifests), (2, 1));
    assert_eq!(store.len(), before - 3);
    for n in [1, 2] {
        assert!(store.has(&in_ns("main", entry_key(&action(n)))), "{n}");
    }
    for n in [3, 4] {
        assert!(!store.has(&in_ns("main", entry_key(&action(n)))), "{n}");
    }
    assert!(!store.has(&in_ns("main", manifest_key(&build(1)))));
    // Nothing of another namespace, old or not, listed or not.
    assert!(store.has(&in_ns("pr-1", entry_key(&action(5)))));
    assert!(store.has(&entry_key(&action(6))));
    assert!(
        swept
            .to_string()
            .starts_with("aged://test (namespace main): deleted 2 entries and 1 manifest (")
    );
}

#[tokio::test]
async fn the_selection_deletes_in_its_namespaces_only() {
    // The un-namespaced area: 6 goes; the namespaces are neither collected nor "other".
    let store = namespaced_store();
    let plan = plan(&store, &Selection::Unnamespaced, DAY * 7, SystemTime::now())
        .await
        .unwrap();
    let root = plan.section(None).unwrap();
    assert_eq!(plan.sections.len(), 1);
    assert_eq!((root.old_entries.count, root.listed_entries.count), (1, 1));
    assert_eq!((root.other.count, root.recent_manifests.count), (0, 1));
    assert_eq!(plan.read_elsewhere.count, 1, "pr-1's manifest is read too");
    let before = store.len();
    sweep(&store, &plan, &|_| {}).await.unwrap();
    assert_eq!(store.len(), before - 1);
    assert!(!store.has(&entry_key(&action(6))));

    // A namespace that holds nothing collects nothing, and reads every recent manifest.
    let store = namespaced_store();
    let empty = Selection::One(ns("pr-9"));
    let plan = super::plan(&store, &empty, DAY * 7, SystemTime::now())
        .await
        .unwrap();
    assert_eq!(
        plan.total().old_entries.count + plan.total().old_manifests.count,
        0
    );
    assert_eq!(plan.read_elsewhere.count, 2);

    // Every namespace, each reported, and the total; a folder that is no namespace is said
    // and left alone.
    let store = namespaced_store();
    store.insert("ns/Not A Name/v1/x".into(), "x", DAY * 30);
    let plan = super::plan(&store, &Selection::All, DAY * 7, SystemTime::now())
        .await
        .unwrap();
    let names: Vec<_> = plan.sections.iter().map(|s| s.namespace.clone()).collect();
    assert_eq!(names, [None, Some(ns("main")), Some(ns("pr-1"))]);
    let count = |namespace: Option<&str>| {
        let section = plan.section(namespace.map(ns).as_ref()).unwrap();
        (section.old_entries.count, section.listed_entries.count)
    };
    assert_eq!(count(None), (1, 1), "6 goes, 7 stays");
    assert_eq!(count(Some("main")), (2, 2), "3 and 4 go, 1 and 2 stay");
    assert_eq!(count(Some("pr-1")), (1, 0), "5 goes");
    assert_eq!(plan.total().old_entries.count, 4);
    assert_eq!(plan.read_elsewhere.count, 0, "every namespace is collected");
    assert_eq!(plan.skipped.len(), 1);
    let report = plan.to_string();
    for line in [
        "aged://test, the un-namespaced area and 2 namespaces: entries and prefetch manifests",
        "\naged://test:\n  to delete: 1 entry (100 B), 0 manifests (0 B)\n",
        "\naged://test (namespace main):\n  to delete: 2 entries (200 B), 1 manifest (",
        "\naged://test (namespace pr-1):\n  to delete: 1 entry (100 B), 0 manifests (0 B)\n",
        "\ntotal:\n  to delete: 4 entries (400 B), 1 manifest (",
        "skipped: aged://test/ns/Not A Name/, not a namespace",
    ] {
        assert!(report.contains(line), "{line:?} in:\n{report}");
    }
    let before = store.len();
    let swept = sweep(&store, &plan, &|_| {}).await.unwrap();
    assert_eq!(store.len(), before - 5);
    assert!(store.has("ns/Not A Name/v1/x"));
    let summary = swept.to_string();
    for line in [
        "aged://test: deleted 1 entry and 0 manifests (100 B)\n",
        "aged://test (namespace main): deleted 2 entries and 1 manifest (",
        "aged://test (namespace pr-1): deleted 1 entry and 0 manifests (100 B)\n",
        "total: deleted 4 entries and 1 manifest (",
    ] {
        assert!(summary.contains(line), "{line:?} in:\n{summary}");
    }
}

#[tokio::test]
async fn a_manifest_is_read_in_its_own_namespace() {
    // main's manifest lists 3 without a fourth field: that is main's 3, not the un-namespaced
    // one, which goes.
    let store = namespaced_store();
    store.insert(in_ns("main", manifest_key(&build(1))), manifest(&[3]), DAY);
    store.insert(entry_key(&action(3)), vec![3; 100], DAY * 30);
    let plan = plan(&store, &Selection::All, DAY * 7, SystemTime::now())
        .await
        .unwrap();
    let main = plan.section(Some(&ns("main"))).unwrap();
    assert_eq!(main.listed_entries.count, 3, "1, 2 and 3");
    let root = plan.section(None).unwrap();
    assert_eq!(root.old_entries.count, 2, "6 and the un-namespaced 3");
    // A damaged recent manifest of a namespace not collected keeps nothing and is said.
    store.insert(in_ns("pr-1", manifest_key(&build(2))), "damaged", DAY);
    let plan = super::plan(
        &store,
        &Selection::One(ns("main")),
        DAY * 7,
        SystemTime::now(),
    )
    .await
    .unwrap();
    assert_eq!(plan.unreadable_elsewhere, 1);
    assert_eq!(
        plan.sections[0].old_entries.count, 2,
        "4, and 1: pr-1's manifest no longer keeps it"
    );
    assert!(
        plan.to_string()
            .contains("of other namespaces could not be decoded")
    );
}

#[tokio::test]
async fn module_files_go_by_age_alone_and_only_their_two_shapes() {
    // The bucket seen from the prefix (`root`) and from `<prefix>/mod` (`modules`), as
    // `config.for_modules().open()` sees it.
    let root = store();
    let modules = Aged::default();
    for (key, days) in [
        (entry_key(&action(7)), 30),
        (entry_key(&action(8)), 0),
        (manifest_key(&build(7)), 30),
        (manifest_key(&build(8)), 0),
        ("v1/notes.txt".to_string(), 30),
        ("prefetch/v2/future".to_string(), 30),
    ] {
        modules.insert(key.clone(), "m", DAY * days);
        root.insert(format!("mod/{key}"), "m", DAY * days);
    }
    // A recent build manifest listing action 7 keeps no module file of the same hex.
    root.insert(manifest_key(&build(9)), manifest(&[7]), DAY);
    let mut plan = plan(&root, &Selection::Unnamespaced, DAY * 7, SystemTime::now())
        .await
        .unwrap();
    assert_eq!(plan.sections[0].other.count, 0, "mod/ is not the builds'");
    plan_modules(&modules, &mut plan).await.unwrap();
    let section = plan.modules().unwrap();
    let counts = |s: &Section| {
        (
            s.old_entries.count,
            s.old_manifests.count,
            s.recent_entries.count,
            s.recent_manifests.count,
            s.other.count,
        )
    };
    assert_eq!(counts(section), (1, 1, 1, 1, 2));
    assert!(plan.section(None).is_some_and(|s| !s.modules));
    let report = plan.to_string();
    for line in [
        "aged://test, the un-namespaced area, 0 namespaces and the module files: entries, \
         prefetch manifests and module files",
        "aged://test/mod (module files):\n  to delete: 1 immutable module file (1 B), 1 list \
         (1 B)\n  kept: 1 immutable module file (1 B), 1 list (1 B) modified since\n  kept: 2 \
         other objects (2 B) that are neither module files nor lists",
    ] {
        assert!(report.contains(line), "{line:?} in:\n{report}");
    }
    let swept = sweep(&root, &plan, &|_| {}).await.unwrap();
    assert!(
        swept
            .to_string()
            .contains("aged://test/mod (module files): deleted 1 immutable module file and 1 list")
    );
    assert!(!root.has(&format!("mod/{}", entry_key(&action(7)))));
    assert!(!root.has(&format!("mod/{}", manifest_key(&build(7)))));
    for kept in [
        format!("mod/{}", entry_key(&action(8))),
        format!("mod/{}", manifest_key(&build(8))),
        "mod/v1/notes.txt".to_string(),
        "mod/prefetch/v2/future".to_string(),
    ] {
        assert!(root.has(&kept), "{kept}");
    }
}
