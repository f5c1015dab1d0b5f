//! The contract on the store as a whole: clear, the mode wrappers, one request per get, batch
//! fetch framing.

use super::*;

pub(super) async fn clear_deletes_entries_and_manifests_only(b: &Backend) {
    let store = b.store.as_ref();
    for n in 1..=3 {
        let entry = entry(format!("entry {n}").as_bytes());
        store.put(&action(n), Upload::Bytes(entry)).await.unwrap();
    }
    let key = BuildKey([9; 32]);
    let neighbours_entry = entry(b"neighbour");
    match &b.neighbour {
        Neighbour::Store(neighbour) => {
            // Prefixes are separate.
            assert_eq!(
                get_bytes(neighbour.as_ref(), &action(1)).await.unwrap(),
                None
            );
            neighbour
                .put(&action(1), put_bytes(&neighbours_entry))
                .await
                .unwrap();
            neighbour
                .put_manifest(&key, Bytes::from_static(b"neighbour's"))
                .await
                .unwrap();
        }
        Neighbour::File(path) => assert!(path.is_file()),
        Neighbour::Nothing => {}
    }

    if b.kind == Kind::Http {
        // Not supported through the server: refused, and nothing is deleted.
        store
            .put_manifest(&key, Bytes::from_static(b"manifest"))
            .await
            .unwrap();
        let err = store.clear(&|_| {}).await.unwrap_err();
        assert!(matches!(err, RemoteError::Other(_)), "{err:?}");
        for n in 1..=3 {
            assert!(get_bytes(store, &action(n)).await.unwrap().is_some());
        }
        assert!(store.get_manifest(&key).await.unwrap().is_some());
        return;
    }

    let counted = std::sync::Mutex::new(Vec::new());
    let deleted = store
        .clear(&|n| counted.lock().unwrap().push(n))
        .await
        .unwrap();
    assert_eq!(deleted, 3);
    for n in 1..=3 {
        assert_eq!(get_bytes(store, &action(n)).await.unwrap(), None);
        assert_eq!(store.head(&action(n)).await.unwrap(), None);
    }

    // Manifests go too.
    store
        .put(&action(5), Upload::Bytes(entry(b"five")))
        .await
        .unwrap();
    store
        .put_manifest(&key, Bytes::from_static(b"manifest"))
        .await
        .unwrap();
    assert_eq!(store.clear(&|_| {}).await.unwrap(), 2);
    assert_eq!(get_bytes(store, &action(5)).await.unwrap(), None);
    assert_eq!(store.get_manifest(&key).await.unwrap(), None);

    // And nothing else.
    match &b.neighbour {
        Neighbour::Store(neighbour) => {
            assert_eq!(
                get_bytes(neighbour.as_ref(), &action(1))
                    .await
                    .unwrap()
                    .unwrap(),
                neighbours_entry.to_vec()
            );
            assert_eq!(
                neighbour.get_manifest(&key).await.unwrap().unwrap(),
                Bytes::from_static(b"neighbour's")
            );
        }
        Neighbour::File(path) => {
            assert_eq!(std::fs::read(path).unwrap(), b"not an entry");
        }
        Neighbour::Nothing => assert_eq!(b.kind, Kind::Memory),
    }

    // The store goes on working.
    assert_eq!(
        store
            .put(&action(1), Upload::Bytes(entry(b"again")))
            .await
            .unwrap(),
        PutOutcome::Stored
    );
}

pub(super) async fn read_only_and_write_only_wrappers(b: &Backend) {
    let read_only = ReadOnly(b.shared());
    let write_only = WriteOnly(b.shared());
    let plain = b.store.as_ref();
    let key = BuildKey([5; 32]);
    let manifest = Bytes::from_static(b"a manifest");

    let puts = b.count("PUT");
    assert_eq!(
        read_only
            .put(&action(1), Upload::Bytes(entry(b"r")))
            .await
            .unwrap(),
        PutOutcome::Skipped
    );
    read_only
        .put_manifest(&key, manifest.clone())
        .await
        .unwrap();
    assert_eq!(b.count("PUT"), puts, "a read-only store sends no PUT");
    assert_eq!(get_bytes(plain, &action(1)).await.unwrap(), None);
    assert_eq!(plain.get_manifest(&key).await.unwrap(), None);

    let written = entry(b"w");
    assert_eq!(
        write_only
            .put(&action(1), put_bytes(&written))
            .await
            .unwrap(),
        PutOutcome::Stored
    );
    write_only
        .put_manifest(&key, manifest.clone())
        .await
        .unwrap();
    assert_eq!(
        b.count("PUT"),
        puts.map(|n| n + 2),
        "a write-only store puts entries and manifests"
    );

    let (gets, heads) = (b.count("GET"), b.count("HEAD"));
    assert_eq!(get_bytes(&write_only, &action(1)).await.unwrap(), None);
    assert_eq!(write_only.head(&action(1)).await.unwrap(), None);
    assert_eq!(write_only.get_manifest(&key).await.unwrap(), None);
    assert_eq!(b.count("GET"), gets, "a write-only store sends no GET");
    assert_eq!(b.count("HEAD"), heads);

    assert_eq!(
        get_bytes(&read_only, &action(1)).await.unwrap().unwrap(),
        written.to_vec()
    );
    assert_eq!(
        read_only.head(&action(1)).await.unwrap(),
        Some(written.len() as u64)
    );
    assert_eq!(read_only.get_manifest(&key).await.unwrap(), Some(manifest));
    assert_eq!(
        get_bytes(plain, &action(1)).await.unwrap().unwrap(),
        written.to_vec()
    );
    assert_eq!(read_only.batch_limit(), plain.batch_limit());
}

pub(super) async fn a_get_is_one_request(b: &Backend) {
    let store = b.store.as_ref();
    store
        .put(&action(1), Upload::Bytes(entry(b"entry")))
        .await
        .unwrap();
    let (Some(gets), Some(heads)) = (b.count("GET"), b.count("HEAD")) else {
        assert!(
            matches!(b.kind, Kind::Dir | Kind::Gcs | Kind::Azblob),
            "only the directory store has no requests, and the emulators count none"
        );
        return;
    };
    get_bytes(store, &action(1)).await.unwrap().unwrap();
    get_bytes(store, &action(2)).await.unwrap();
    assert_eq!(
        b.count("GET"),
        Some(gets + 2),
        "one request per hit and per miss"
    );
    assert_eq!(b.count("HEAD"), Some(heads));
}

pub(super) async fn batch_fetch_framing(b: &Backend) {
    let store = b.store.as_ref();
    let limit = store.batch_limit();
    if limit == 0 {
        assert!(
            matches!(b.kind, Kind::S3 | Kind::Gcs | Kind::Azblob | Kind::Dir),
            "{:?} should batch",
            b.kind
        );
        assert!(store.get_batch(&[action(1)]).await.is_err());
        return;
    }
    assert!(limit <= batch::MAX_KEYS, "{limit}");
    let small = entry(b"small");
    // Larger than a piece or a chunk: it arrives in several.
    let large = entry(&pseudo_random(5, 300_000));
    store.put(&action(1), put_bytes(&small)).await.unwrap();
    store.put(&action(3), put_bytes(&large)).await.unwrap();
    let asked = [action(1), action(2), action(3)];
    assert!(asked.len() <= limit);

    let posts = b.count("POST");
    let answer: Vec<Bytes> = store
        .get_batch(&asked)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(b.count("POST"), posts.map(|n| n + 1), "one request");
    let mut decoder = batch::Decoder::new();
    for piece in &answer {
        decoder.push(piece);
    }
    let mut frames: Vec<(char, ActionId, Vec<u8>)> = Vec::new();
    while let Some(event) = decoder.next_event().unwrap() {
        match event {
            Event::Start(action) => frames.push(('E', action, Vec::new())),
            Event::Data(bytes) => frames.last_mut().unwrap().2.extend_from_slice(&bytes),
            Event::End => assert_eq!(frames.last().unwrap().0, 'E'),
            Event::Missing(action) => frames.push(('M', action, Vec::new())),
            Event::Failed(action, reason) => panic!("{action} failed: {reason}"),
        }
    }
    assert!(decoder.at_frame_boundary(), "the answer ends after a frame");
    assert_eq!(
        frames,
        vec![
            ('E', action(1), small.to_vec()),
            ('M', action(2), Vec::new()),
            ('E', action(3), large.to_vec()),
        ],
        "the entries asked for, in order, exactly as put"
    );
}
