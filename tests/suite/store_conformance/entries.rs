//! The contract on entries and manifests: missing keys, put and get, conditional create (also
//! under concurrent creators), large uploads, what a store takes, manifests.

use super::*;

pub(super) async fn missing_key_is_none(b: &Backend) {
    let store = b.store.as_ref();
    assert_eq!(
        get_bytes(store, &action(1)).await.unwrap(),
        None,
        "a missing key is None"
    );
    assert_eq!(store.head(&action(1)).await.unwrap(), None);
    assert_eq!(store.get_manifest(&BuildKey([1; 32])).await.unwrap(), None);
}

pub(super) async fn location_names_the_store(b: &Backend) {
    let location = b.store.location();
    match b.kind {
        Kind::S3 => assert_eq!(location, "s3://gocache/conformance"),
        Kind::Gcs => assert_eq!(location, "gs://gocache/conformance"),
        Kind::Azblob => assert_eq!(location, "azblob://gocache/conformance"),
        Kind::Dir => assert!(location.ends_with("store"), "{location}"),
        Kind::Http => assert_eq!(location, b.http.as_ref().unwrap().url),
        Kind::Memory => assert_eq!(location, "memory"),
    }
}

pub(super) async fn put_get_exists_and_head(b: &Backend) {
    let store = b.store.as_ref();
    let small = entry(&pseudo_random(1, 1000));
    assert_eq!(
        store.put(&action(1), put_bytes(&small)).await.unwrap(),
        PutOutcome::Stored
    );
    let other = entry(b"a different entry");
    if b.kind == Kind::Gcs {
        // fake-gcs-server ignores `ifGenerationMatch=0` on the resumable uploads that OpenDAL
        // sends (it honours it on multipart uploads only): the second put replaces the entry
        // there. GCS itself refuses it with 412, which the store turns into `Exists`
        // (`store::gcs`'s unit test `a_refused_condition_is_exists` checks the request and
        // the answer). Asserted, so that an emulator that starts honouring it is noticed.
        assert_eq!(
            store.put(&action(1), put_bytes(&small)).await.unwrap(),
            PutOutcome::Stored,
            "fake-gcs-server now honours ifGenerationMatch on resumable uploads: update the table"
        );
    } else {
        assert_eq!(
            store.put(&action(1), put_bytes(&other)).await.unwrap(),
            PutOutcome::Exists,
            "an existing entry must not be replaced"
        );
    }
    assert_eq!(
        get_bytes(store, &action(1)).await.unwrap().unwrap(),
        small.to_vec()
    );
    assert_eq!(
        store.head(&action(1)).await.unwrap(),
        Some(small.len() as u64)
    );
    assert_eq!(store.head(&action(2)).await.unwrap(), None);
}

pub(super) async fn large_file_uploads_stream(b: &Backend) {
    let store = b.store.as_ref();
    // A large entry streams from a file, in parts (multipart on S3).
    let big = entry(&pseudo_random(2, 19 * 1024 * 1024 + 7));
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &big).unwrap();
    let upload = Upload::File {
        path: file.path().to_path_buf(),
        len: big.len() as u64,
    };
    assert_eq!(
        store.put(&action(2), upload.clone()).await.unwrap(),
        PutOutcome::Stored
    );
    assert_eq!(
        store.put(&action(2), upload).await.unwrap(),
        // fake-gcs-server ignores the condition of resumable uploads (see above).
        match b.kind {
            Kind::Gcs => PutOutcome::Stored,
            _ => PutOutcome::Exists,
        }
    );
    assert!(get_bytes(store, &action(2)).await.unwrap().unwrap() == big);
    assert_eq!(
        store.head(&action(2)).await.unwrap(),
        Some(big.len() as u64)
    );
}

pub(super) async fn empty_bodies_and_invalid_bytes(b: &Backend) {
    let store = b.store.as_ref();
    // An entry of an empty body is an entry: its header alone.
    let empty = entry(b"");
    assert_eq!(empty.len(), format::HEADER_LEN);
    assert_eq!(
        store.put(&action(4), put_bytes(&empty)).await.unwrap(),
        PutOutcome::Stored
    );
    assert_eq!(
        get_bytes(store, &action(4)).await.unwrap(),
        Some(empty.to_vec())
    );
    assert_eq!(
        store.head(&action(4)).await.unwrap(),
        Some(format::HEADER_LEN as u64)
    );

    if b.verifies() {
        // Bytes that are not an entry are refused, and nothing is stored.
        let mut damaged = entry(b"an entry with one byte changed").to_vec();
        *damaged.last_mut().unwrap() ^= 1;
        for (n, bytes) in [Bytes::new(), Bytes::from(damaged)].into_iter().enumerate() {
            let key = action(10 + n as u32);
            let err = store.put(&key, Upload::Bytes(bytes)).await.unwrap_err();
            assert!(matches!(err, RemoteError::Other(_)), "{err:?}");
            assert!(!err.is_fatal());
            assert_eq!(get_bytes(store, &key).await.unwrap(), None);
            assert_eq!(store.head(&key).await.unwrap(), None);
        }
    } else {
        // A store that does not verify keeps the bytes as they are. An empty entry is still
        // an entry.
        store
            .put(&action(3), Upload::Bytes(Bytes::new()))
            .await
            .unwrap();
        assert_eq!(
            get_bytes(store, &action(3)).await.unwrap(),
            Some(Vec::new())
        );
    }
}

pub(super) async fn concurrent_creators_one_wins(b: &Backend) {
    // Several rounds, each on a key of its own: a race shows in some of them.
    for round in 0..ROUNDS {
        let key = action(1000 + round);
        let entries: Vec<Bytes> = (0..CREATORS)
            .map(|n| entry(&pseudo_random(u64::from(round) * 100 + n, 20_000)))
            .collect();
        let tasks: Vec<_> = entries
            .iter()
            .map(|entry| {
                let store = b.store.clone();
                let entry = entry.clone();
                tokio::spawn(async move { store.put(&key, Upload::Bytes(entry)).await })
            })
            .collect();
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await.unwrap().unwrap());
        }
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, PutOutcome::Stored | PutOutcome::Exists)),
            "{outcomes:?}"
        );
        let stored: Vec<usize> = (0..outcomes.len())
            .filter(|&n| outcomes[n] == PutOutcome::Stored)
            .collect();
        let kept = get_bytes(b.store.as_ref(), &key).await.unwrap().unwrap();
        if matches!(b.kind, Kind::S3 | Kind::Gcs) {
            // The test server (s3s-fs) looks for the object and then writes it, not
            // atomically, and fake-gcs-server ignores the condition of resumable uploads:
            // racing creators may all be told Stored there. What it must still keep is one
            // of them, whole.
            assert!(!stored.is_empty(), "{outcomes:?}");
            assert!(
                entries.iter().any(|entry| kept == entry.to_vec()),
                "the entry kept is one of those put, whole"
            );
            continue;
        }
        assert_eq!(
            stored.len(),
            1,
            "round {round}: one creator wins: {outcomes:?}"
        );
        assert_eq!(
            kept,
            entries[stored[0]].to_vec(),
            "the winner's entry is the one kept, whole"
        );
    }
}

/// Rounds of [`concurrent_creators_one_wins`], and creators in each.
const ROUNDS: u32 = 64;
const CREATORS: u64 = 8;

pub(super) async fn manifests_are_replaced_and_read_whole(b: &Backend) {
    let store = b.store.as_ref();
    let key = BuildKey([7; 32]);
    let other = BuildKey([8; 32]);
    assert_eq!(store.get_manifest(&key).await.unwrap(), None);
    // Larger than any one piece of an answer: read whole.
    let first = Bytes::from(pseudo_random(3, 300_000));
    store.put_manifest(&key, first.clone()).await.unwrap();
    assert_eq!(store.get_manifest(&key).await.unwrap(), Some(first));
    let second = Bytes::from(pseudo_random(4, 1000));
    store.put_manifest(&key, second.clone()).await.unwrap();
    assert_eq!(
        store.get_manifest(&key).await.unwrap(),
        Some(second),
        "the last writer wins"
    );
    assert_eq!(store.get_manifest(&other).await.unwrap(), None);
    // Manifests are not entries.
    assert_eq!(get_bytes(store, &ActionId(key.0)).await.unwrap(), None);
}

/// Packs (prefetch's bulk objects): on the object stores, a put replaces the pack and a
/// ranged get answers exactly those bytes, cut at the pack's end; the others keep none.
pub(super) async fn packs_are_replaced_and_read_by_range(b: &Backend) {
    let store = b.store.as_ref();
    let key = BuildKey([9; 32]);
    // The bytes a ranged get gives, and whether it ended with an error.
    let read_ending = |range: std::ops::Range<u64>| async move {
        let mut stream = store.get_pack(&key, range).await.unwrap()?;
        let mut bytes = Vec::new();
        while let Some(piece) = futures::StreamExt::next(&mut stream).await {
            match piece {
                Ok(piece) => bytes.extend_from_slice(&piece),
                Err(_) => return Some((bytes, true)),
            }
        }
        Some((bytes, false))
    };
    let read = |range: std::ops::Range<u64>| async move {
        let (bytes, failed) = read_ending(range).await?;
        assert!(!failed, "a range inside the pack ends well");
        Some(bytes)
    };
    assert_eq!(read(0..100).await, None);
    let first = Bytes::from(pseudo_random(5, 300_000));
    store
        .put_pack(&key, Upload::Bytes(first.clone()))
        .await
        .unwrap();
    if !store.has_packs() {
        assert!(
            matches!(b.kind, Kind::Dir | Kind::Http | Kind::Memory),
            "{:?} keeps packs",
            b.kind
        );
        assert_eq!(read(0..100).await, None, "a store without packs keeps none");
        return;
    }
    assert_eq!(read(0..1000).await.unwrap(), first[..1000]);
    assert_eq!(
        read(100_000..200_000).await.unwrap(),
        first[100_000..200_000]
    );
    // Past the end: the bytes up to it (then, on OpenDAL's stores, an error).
    assert_eq!(
        read_ending(299_000..400_000).await.unwrap().0,
        first[299_000..]
    );
    // Replaced, from a file.
    let second = pseudo_random(6, 2000);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &second).unwrap();
    let upload = Upload::File {
        path: file.path().to_path_buf(),
        len: second.len() as u64,
    };
    store.put_pack(&key, upload).await.unwrap();
    assert_eq!(
        read_ending(0..256 * 1024).await.unwrap().0,
        second,
        "the last writer wins"
    );
    assert!(
        store
            .get_pack(&BuildKey([10; 32]), 0..10)
            .await
            .unwrap()
            .is_none()
    );
    // Packs are not manifests.
    assert_eq!(store.get_manifest(&key).await.unwrap(), None);
}
