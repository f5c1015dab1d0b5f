//! Errors classified as the contract says, per backend: credentials, throttling, a store that
//! is down or unreachable.

use super::*;

pub(super) async fn errors_are_classified(b: &Backend) {
    match b.kind {
        Kind::S3 => s3_errors(b).await,
        Kind::Gcs => gcs_errors(b).await,
        Kind::Azblob => azblob_errors(b).await,
        Kind::Http => http_errors(b).await,
        Kind::Memory => memory_errors(b).await,
        Kind::Dir => {
            // No credentials and no network: storage errors are `Other`, never fatal.
            let err = b
                .store
                .put(
                    &action(1),
                    Upload::Bytes(Bytes::from_static(b"not an entry")),
                )
                .await
                .unwrap_err();
            assert!(matches!(err, RemoteError::Other(_)), "{err:?}");
            assert!(!err.is_fatal());
        }
    }
}

pub(super) async fn s3_errors(b: &Backend) {
    let server = b.s3.as_ref().unwrap();
    let good = b.store.as_ref();
    let mut wrong = s3_config(&server.endpoint, "conformance");
    wrong.static_credentials = Some(S3Credentials::new(ACCESS_KEY, "not-the-secret"));
    let bad = wrong.open().unwrap();
    good.put(&action(1), Upload::Bytes(entry(b"x")))
        .await
        .unwrap();
    let err = get_bytes(&bad, &action(1)).await.unwrap_err();
    assert!(matches!(err, RemoteError::Denied(_)), "{err:?}");
    assert!(err.is_fatal());
    let err = bad
        .put(&action(2), Upload::Bytes(entry(b"y")))
        .await
        .unwrap_err();
    assert!(matches!(err, RemoteError::Denied(_)), "{err:?}");

    server.set_fault(Fault::Status(503));
    let err = get_bytes(good, &action(1)).await.unwrap_err();
    assert!(matches!(err, RemoteError::Transient(_)), "{err:?}");
    server.set_fault(Fault::None);

    let unreachable = s3_config(&format!("http://127.0.0.1:{}", closed_port()), "x")
        .open()
        .unwrap();
    assert_unreachable_is_transient(&unreachable).await;
}

/// fake-gcs-server checks no credentials, so a wrong key cannot be tried on it: a missing
/// bucket and an unreachable endpoint can.
pub(super) async fn gcs_errors(b: &Backend) {
    let emulator = b.emulator.as_ref().unwrap();
    let mut missing = gcs_config(&emulator.endpoint, "x");
    missing.bucket = "no-such-bucket".into();
    let missing = missing.open().unwrap();
    let err = missing
        .put(&action(1), Upload::Bytes(entry(b"x")))
        .await
        .unwrap_err();
    assert!(!matches!(err, RemoteError::Transient(_)), "{err:?}");

    let unreachable = gcs_config(&format!("http://127.0.0.1:{}", closed_port()), "x")
        .open()
        .unwrap();
    assert_unreachable_is_transient(&unreachable).await;
}

/// Azurite checks the shared key's signature: a wrong key is `Denied`.
pub(super) async fn azblob_errors(b: &Backend) {
    let emulator = b.emulator.as_ref().unwrap();
    let good = b.store.as_ref();
    good.put(&action(1), Upload::Bytes(entry(b"x")))
        .await
        .unwrap();
    let mut wrong = azblob_config(&emulator.endpoint, "conformance");
    // Valid base64, not the account's key.
    wrong.static_key = Some("bm90LXRoZS1rZXktbm90LXRoZS1rZXktbm90LXRoZS1rZXk=".into());
    let bad = wrong.open().unwrap();
    let err = get_bytes(&bad, &action(1)).await.unwrap_err();
    assert!(matches!(err, RemoteError::Denied(_)), "{err:?}");
    assert!(err.is_fatal());
    let err = bad
        .put(&action(2), Upload::Bytes(entry(b"y")))
        .await
        .unwrap_err();
    assert!(matches!(err, RemoteError::Denied(_)), "{err:?}");

    let unreachable = azblob_config(&format!("http://127.0.0.1:{}", closed_port()), "x")
        .open()
        .unwrap();
    assert_unreachable_is_transient(&unreachable).await;
}

pub(super) async fn http_errors(b: &Backend) {
    let server = b.http.as_ref().unwrap();
    let good = b.store.as_ref();
    let kept = entry(b"x");
    good.put(&action(1), put_bytes(&kept)).await.unwrap();

    let wrong = server.client(Some("not-a-token-of-this-server"));
    let err = get_bytes(&wrong, &action(1)).await.unwrap_err();
    assert!(matches!(err, RemoteError::Denied(_)), "{err:?}");
    assert!(err.is_fatal());
    let err = wrong
        .put(&action(2), Upload::Bytes(entry(b"y")))
        .await
        .unwrap_err();
    assert!(matches!(err, RemoteError::Denied(_)), "{err:?}");
    let err = wrong.head(&action(1)).await.unwrap_err();
    assert!(matches!(err, RemoteError::Denied(_)), "{err:?}");
    let anonymous = server.client(None);
    let err = get_bytes(&anonymous, &action(1)).await.unwrap_err();
    assert!(matches!(err, RemoteError::Denied(_)), "{err:?}");

    // A read-only token reads, and its uploads are skipped.
    let reader = server.client(Some(READ_TOKEN));
    assert_eq!(
        get_bytes(&reader, &action(1)).await.unwrap().unwrap(),
        kept.to_vec()
    );
    assert_eq!(
        reader
            .put(&action(2), Upload::Bytes(entry(b"y")))
            .await
            .unwrap(),
        PutOutcome::Skipped
    );
    assert_eq!(get_bytes(good, &action(2)).await.unwrap(), None);

    // Storage that fails behind the server: a 5xx, which may pass.
    let failing = Arc::new(MemoryStore::new());
    failing.set_faults(Faults {
        error: Some(RemoteError::Transient("storage unreachable".into())),
        ..Faults::default()
    });
    let spool = tempfile::tempdir().unwrap();
    // Its namespaces fail alike.
    let storage = Storage::stores(failing.clone(), move |_| {
        Ok(failing.clone() as Arc<dyn RemoteStore>)
    });
    let down = TestServer::start(storage, spool.path()).await;
    let err = get_bytes(&down.client(Some(TOKEN)), &action(1))
        .await
        .unwrap_err();
    assert!(matches!(err, RemoteError::Transient(_)), "{err:?}");
    assert!(!err.is_fatal());

    let unreachable = http_store(&format!("http://127.0.0.1:{}", closed_port()), Some(TOKEN));
    assert_unreachable_is_transient(&unreachable).await;
}

pub(super) async fn memory_errors(b: &Backend) {
    let memory = b.memory.as_ref().unwrap();
    let store = b.store.as_ref();
    let key = BuildKey([3; 32]);
    for err in [
        RemoteError::Denied("no".into()),
        RemoteError::Transient("later".into()),
        RemoteError::Other("else".into()),
    ] {
        memory.set_faults(Faults {
            error: Some(err.clone()),
            ..Faults::default()
        });
        let same = |got: RemoteError| {
            assert_eq!(
                std::mem::discriminant(&got),
                std::mem::discriminant(&err),
                "{got:?} for {err:?}"
            );
            assert_eq!(got.is_fatal(), err.is_fatal());
        };
        same(get_bytes(store, &action(1)).await.unwrap_err());
        same(
            store
                .put(&action(1), Upload::Bytes(entry(b"x")))
                .await
                .unwrap_err(),
        );
        same(store.head(&action(1)).await.unwrap_err());
        same(store.get_manifest(&key).await.unwrap_err());
        same(
            store
                .put_manifest(&key, Bytes::from_static(b"m"))
                .await
                .unwrap_err(),
        );
        same(store.get_batch(&[action(1)]).await.err().unwrap());
    }
    memory.set_faults(Faults::default());
    assert!(memory.is_empty(), "a failed put stores nothing");
    assert_eq!(store.get_manifest(&key).await.unwrap(), None);
}

pub(super) async fn assert_unreachable_is_transient(store: &dyn RemoteStore) {
    let start = Instant::now();
    let err = get_bytes(store, &action(1)).await.unwrap_err();
    assert!(matches!(err, RemoteError::Transient(_)), "{err:?}");
    assert!(!err.is_fatal());
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
}
