use super::*;

fn id(n: u8) -> ActionId {
    ActionId([n; 32])
}

/// A stored manifest's text.
fn plain_text(bytes: &[u8]) -> String {
    let mut text = String::new();
    zstd::stream::read::Decoder::new(bytes)
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    text
}

fn actions(m: &Manifest) -> Vec<(u8, u8)> {
    m.entries.iter().map(|e| (e.action.0[0], e.age)).collect()
}

#[test]
fn merge_puts_this_run_first_and_ages_the_rest() {
    let first = Manifest::merge(
        None,
        &[(id(1), 10, None), (id(2), 20, None), (id(1), 10, None)],
        &[None],
        &Default::default(),
    );
    assert_eq!(actions(&first), vec![(1, 0), (2, 0)]);
    // A run on another branch: 2 and 3.
    let second = Manifest::merge(
        Some(&first),
        &[(id(3), 30, None), (id(2), 21, None)],
        &[None],
        &Default::default(),
    );
    assert_eq!(actions(&second), vec![(3, 0), (2, 0), (1, 1)]);
    assert_eq!(second.entries[1].size, 21, "this run's size wins");
    // Alternating branches keep both sets.
    let third = Manifest::merge(
        Some(&second),
        &[(id(1), 10, None), (id(2), 20, None)],
        &[None],
        &Default::default(),
    );
    assert_eq!(actions(&third), vec![(1, 0), (2, 0), (3, 1)]);
    // An entry nobody asks for any more goes after MAX_AGE more runs.
    let mut m = Manifest::merge(None, &[(id(9), 1, None)], &[None], &Default::default());
    for run in 1..=MAX_AGE {
        m = Manifest::merge(Some(&m), &[(id(1), 1, None)], &[None], &Default::default());
        assert_eq!(actions(&m), vec![(1, 0), (9, run)]);
    }
    m = Manifest::merge(Some(&m), &[(id(1), 1, None)], &[None], &Default::default());
    assert_eq!(actions(&m), vec![(1, 0)]);
}

#[test]
fn same_run_again_changes_nothing() {
    let run = [(id(1), 10, None), (id(2), 20, None)];
    let first = Manifest::merge(None, &run, &[None], &Default::default());
    assert!(
        Manifest::merge(Some(&first), &run, &[None], &Default::default()).same_as(Some(&first))
    );
    assert!(!first.same_as(None));
    let other = Manifest::merge(
        Some(&first),
        &[(id(2), 20, None)],
        &[None],
        &Default::default(),
    );
    assert!(!other.same_as(Some(&first)), "entry 1 must age");
    let reordered = Manifest::merge(
        Some(&first),
        &[(id(2), 20, None), (id(1), 10, None)],
        &[None],
        &Default::default(),
    );
    assert!(
        reordered.same_as(Some(&first)),
        "an order change alone is not written"
    );
    let grown = Manifest::merge(
        Some(&first),
        &[(id(1), 10, None), (id(2), 20, None), (id(3), 1, None)],
        &[None],
        &Default::default(),
    );
    assert!(!grown.same_as(Some(&first)));
    // Entries still aging out are written each run until they are gone.
    let aging = Manifest::merge(
        Some(&other),
        &[(id(2), 20, None)],
        &[None],
        &Default::default(),
    );
    assert!(!aging.same_as(Some(&other)));
}

#[test]
fn encodes_and_decodes() {
    let source = KeySource {
        parts: vec![
            ("cwd".into(), "/src/app".into()),
            ("args".into(), "build\n./...".into()),
        ],
    };
    let manifest = Manifest::merge(
        None,
        &[(id(1), 10, None), (id(200), u64::MAX, None)],
        &[None],
        &Default::default(),
    );
    let written = SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600);
    let bytes = manifest.encode_at(&source, None, written);
    let decoded = Manifest::decode(&bytes, None).unwrap();
    assert_eq!(decoded.written, Some(1_767_225_600));
    assert_eq!(
        decoded,
        Manifest {
            written: Some(1_767_225_600),
            ..manifest
        }
    );
    let text = plain_text(&bytes);
    assert!(text.contains("# args=build ./...\n"), "{text}");
    assert!(text.contains("\n# written=1767225600\n"), "{text}");
}

#[test]
fn an_old_or_undated_manifest_needs_a_refresh() {
    let now = SystemTime::now();
    let at = |written: SystemTime| {
        let bytes = Manifest::merge(None, &[(id(1), 1, None)], &[None], &Default::default())
            .encode_at(&KeySource::explicit("x"), None, written);
        Manifest::decode(&bytes, None).unwrap()
    };
    let hour = Duration::from_secs(3600);
    assert!(!at(now).needs_refresh(now));
    assert!(!at(now - REFRESH + hour).needs_refresh(now));
    assert!(at(now - REFRESH - hour).needs_refresh(now));
    assert!(
        at(now + REFRESH + hour).needs_refresh(now),
        "a time far ahead"
    );
    // Written before the line existed: old readers and writers skip comment lines.
    let old = format!("{MAGIC}\n# cwd=/src\n{} 1 0\n", id(1).to_hex());
    let old = Manifest::decode(&zstd::bulk::compress(old.as_bytes(), 1).unwrap(), None).unwrap();
    assert_eq!(old.written, None);
    assert_eq!(old.entries.len(), 1);
    assert!(old.needs_refresh(now));
    // An unknown comment, or a damaged written= line, is ignored, not an error.
    let odd = format!(
        "{MAGIC}\n# written=soon\n# future=1\n{} 1 0\n",
        id(1).to_hex()
    );
    let odd = Manifest::decode(&zstd::bulk::compress(odd.as_bytes(), 1).unwrap(), None).unwrap();
    assert_eq!(odd.written, None);
}

#[test]
fn duplicate_keys_are_read_once() {
    let text = format!(
        "{MAGIC}\n{a} 5 0\n{b} 6 1\n{a} 7 2\n",
        a = id(1).to_hex(),
        b = id(2).to_hex()
    );
    let manifest =
        Manifest::decode(&zstd::bulk::compress(text.as_bytes(), 1).unwrap(), None).unwrap();
    assert_eq!(actions(&manifest), vec![(1, 0), (2, 1)]);
    assert_eq!(manifest.entries[0].size, 5, "the first listing wins");
    assert!(manifest.repaired);
    // Even a run that asked for exactly those keys writes the manifest again.
    let merged = Manifest::merge(
        Some(&manifest),
        &[(id(1), 5, None), (id(2), 6, None)],
        &[None],
        &Default::default(),
    );
    assert!(!merged.same_as(Some(&manifest)));
    let clean = Manifest::decode(&merged.encode(&KeySource::explicit("x"), None), None).unwrap();
    assert!(!clean.repaired);
    assert!(merged.same_as(Some(&clean)));
}

#[test]
fn damaged_manifests_are_refused() {
    assert!(Manifest::decode(b"not zstd", None).is_err());
    let wrong_magic = zstd::bulk::compress(b"something else\n", 1).unwrap();
    assert!(Manifest::decode(&wrong_magic, None).is_err());
    let bad_line = zstd::bulk::compress(format!("{MAGIC}\nabc 1 0\n").as_bytes(), 1).unwrap();
    assert!(Manifest::decode(&bad_line, None).is_err());
    for extra in ["main 9", "a/b", "..", ""] {
        let extra = format!("{MAGIC}\n{} 1 0 {extra}\n", id(1).to_hex());
        let extra = zstd::bulk::compress(extra.as_bytes(), 1).unwrap();
        assert!(Manifest::decode(&extra, None).is_err(), "{extra:?}");
    }
}

#[test]
fn keys_differ_by_every_part() {
    let base = KeySource {
        parts: vec![("cwd".into(), "/a".into()), ("args".into(), "b".into())],
    };
    let moved = KeySource {
        parts: vec![("cwd".into(), "/a=".into()), ("args".into(), "b".into())],
    };
    assert_ne!(base.key(), moved.key());
    assert_eq!(base.key(), base.clone().key());
    assert_ne!(
        KeySource::explicit("x").key(),
        KeySource::explicit("y").key()
    );
    let auto = KeySource::automatic();
    assert_eq!(auto.parts[0].0, "cwd");
    assert!(auto.describe().contains("cwd="));
}

#[test]
fn output_flags_do_not_change_the_key() {
    let args = |list: &[&str]| build_args(&list.iter().map(|a| a.to_string()).collect::<Vec<_>>());
    assert_eq!(args(&["build", "-x", "./..."]), args(&["build", "./..."]));
    assert_eq!(
        args(&["test", "-v", "-json", "./..."]),
        args(&["test", "./..."])
    );
    assert_ne!(args(&["test", "./..."]), args(&["test", "-race", "./..."]));
    assert_ne!(args(&["build", "./a", "b"]), args(&["build", "./a b"]));
}

#[test]
fn process_tree_is_read() {
    let me = std::process::id();
    assert_eq!(parent_of(me), Some(std::os::unix::process::parent_id()));
    // The test binary is not a go command.
    assert_eq!(go_root_of(me), None);
}

#[test]
fn recorder_keeps_first_order_and_known_sizes() {
    let recorder = Recorder::default();
    recorder.note(id(2), None, None);
    recorder.note(id(1), Some(5), None);
    recorder.note(id(2), Some(7), Some(1));
    recorder.note(id(1), None, None);
    recorder.note(id(2), None, None);
    let recorded = vec![(id(2), 7, Some(1)), (id(1), 5, None)];
    assert_eq!(recorder.snapshot(), recorded);
    // A daemon writes the manifest more than once: what was recorded stays.
    assert_eq!(recorder.snapshot(), recorded);
}

#[test]
fn entries_keep_the_namespace_they_are_in() {
    let main = Namespace::parse("main").unwrap();
    let pr = Namespace::parse("pr-1").unwrap();
    let names = [Some(pr.clone()), Some(main.clone())];
    // Main's last run, stored in main: no fourth field.
    let mains = Manifest::merge(
        None,
        &[(id(1), 1, Some(0)), (id(2), 2, None)],
        &[Some(main.clone())],
        &Default::default(),
    );
    let bytes = mains.encode(&KeySource::explicit("x"), Some(&main));
    let text = plain_text(&bytes);
    assert!(
        text.contains(&format!("\n{} 1 0\n", id(1).to_hex())),
        "{text}"
    );
    // Read back by a pull request that fell back to it: its entries are main's.
    let fallback = Manifest::decode(&bytes, Some(&main)).unwrap();
    assert!(
        fallback
            .entries
            .iter()
            .all(|e| e.namespace.as_ref() == Some(&main))
    );
    // The pull request's run: 1 a local hit prefetched from main (known from the manifest),
    // 3 fetched from main by a get, 4 its own put, 5 a local hit nobody listed (own).
    let run = [
        (id(1), 1, None),
        (id(3), 3, Some(1)),
        (id(4), 4, Some(0)),
        (id(5), 5, None),
    ];
    let merged = Manifest::merge(Some(&fallback), &run, &names, &Default::default());
    let where_ = |m: &Manifest| -> Vec<(u8, Option<String>)> {
        (m.entries.iter())
            .map(|e| (e.action.0[0], e.namespace.as_ref().map(|n| n.to_string())))
            .collect()
    };
    let expected = vec![
        (1, Some("main".to_string())),
        (3, Some("main".to_string())),
        (4, Some("pr-1".to_string())),
        (5, Some("pr-1".to_string())),
        (2, Some("main".to_string())),
    ];
    assert_eq!(where_(&merged), expected);
    // Stored in pr-1: main's entries carry the field, its own do not.
    let bytes = merged.encode(&KeySource::explicit("x"), Some(&pr));
    let text = plain_text(&bytes);
    assert!(
        text.contains(&format!("\n{} 3 0 main\n", id(3).to_hex())),
        "{text}"
    );
    assert!(
        text.contains(&format!("\n{} 4 0\n", id(4).to_hex())),
        "{text}"
    );
    assert_eq!(
        where_(&Manifest::decode(&bytes, Some(&pr)).unwrap()),
        expected
    );
}
