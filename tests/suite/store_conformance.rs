//! The conformance suite of the remote-store contract (`RemoteStore`), run against the S3
//! backend talking to an in-process S3 server that checks signatures.

use crate::support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::TryStreamExt;
use goremotecache::ids::ActionId;
use goremotecache::store::s3::{S3Config, S3Store};
use goremotecache::store::{PutOutcome, ReadOnly, RemoteError, RemoteStore, Upload, WriteOnly};
use support::s3::{ACCESS_KEY, BUCKET, S3Server, SECRET_KEY};
use support::{action, pseudo_random};

fn config(endpoint: &str, prefix: &str) -> S3Config {
    S3Config {
        bucket: BUCKET.into(),
        prefix: prefix.into(),
        endpoint: Some(endpoint.into()),
        region: Some("us-east-1".into()),
        force_path_style: true,
        instance_metadata: false,
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(10),
        static_credentials: Some((ACCESS_KEY.into(), SECRET_KEY.into())),
    }
}

/// A store with the test server's credentials.
fn store(server: &S3Server, prefix: &str) -> S3Store {
    S3Store::new(&config(&server.endpoint, prefix)).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn get_bytes(
    store: &dyn RemoteStore,
    key: &ActionId,
) -> Result<Option<Vec<u8>>, RemoteError> {
    match store.get(key).await? {
        None => Ok(None),
        Some(stream) => {
            let chunks: Vec<Bytes> = stream.try_collect().await?;
            Ok(Some(chunks.concat()))
        }
    }
}

#[test]
fn put_get_exists_and_clear() {
    let server = S3Server::start();
    let store = store(&server, "conformance");
    runtime().block_on(async {
        assert_eq!(
            get_bytes(&store, &action(1)).await.unwrap(),
            None,
            "a missing key is None"
        );

        let small = Bytes::from(pseudo_random(1, 1000));
        assert_eq!(
            store
                .put(&action(1), Upload::Bytes(small.clone()))
                .await
                .unwrap(),
            PutOutcome::Stored
        );
        let other = Bytes::from_static(b"a different entry");
        assert_eq!(
            store.put(&action(1), Upload::Bytes(other)).await.unwrap(),
            PutOutcome::Exists,
            "an existing entry must not be replaced"
        );
        assert_eq!(
            get_bytes(&store, &action(1)).await.unwrap().unwrap(),
            small.to_vec()
        );

        // A large entry streams from a file, in parts.
        let big = pseudo_random(2, 19 * 1024 * 1024 + 7);
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
            PutOutcome::Exists
        );
        assert!(get_bytes(&store, &action(2)).await.unwrap().unwrap() == big);

        // An empty entry is still an entry.
        store
            .put(&action(3), Upload::Bytes(Bytes::new()))
            .await
            .unwrap();
        assert_eq!(
            get_bytes(&store, &action(3)).await.unwrap(),
            Some(Vec::new())
        );

        let counted = std::sync::Mutex::new(Vec::new());
        let deleted = store
            .clear(&|n| counted.lock().unwrap().push(n))
            .await
            .unwrap();
        assert_eq!(deleted, 3);
        for n in 1..=3 {
            assert_eq!(get_bytes(&store, &action(n)).await.unwrap(), None);
        }
    });
}

#[test]
fn a_get_is_one_request() {
    let server = S3Server::start();
    let store = store(&server, "one-request");
    runtime().block_on(async {
        store
            .put(&action(1), Upload::Bytes(Bytes::from_static(b"entry")))
            .await
            .unwrap();
        server.reset_counts();
        get_bytes(&store, &action(1)).await.unwrap().unwrap();
        get_bytes(&store, &action(2)).await.unwrap();
        assert_eq!(server.count("GET"), 2, "one request per hit and per miss");
        assert_eq!(server.count("HEAD"), 0);
    });
}

#[test]
fn prefixes_are_separate_and_clear_keeps_to_its_own() {
    let server = S3Server::start();
    let a = store(&server, "team-a");
    let b = store(&server, "team-b/nested");
    runtime().block_on(async {
        a.put(&action(1), Upload::Bytes(Bytes::from_static(b"a")))
            .await
            .unwrap();
        assert_eq!(get_bytes(&b, &action(1)).await.unwrap(), None);
        b.put(&action(1), Upload::Bytes(Bytes::from_static(b"b")))
            .await
            .unwrap();
        assert_eq!(b.clear(&|_| {}).await.unwrap(), 1);
        assert_eq!(get_bytes(&a, &action(1)).await.unwrap().unwrap(), b"a");
    });
    assert_eq!(a.location(), "s3://gocache/team-a");
}

#[test]
fn wrong_credentials_are_denied() {
    let server = S3Server::start();
    let good = store(&server, "denied");
    let mut wrong = config(&server.endpoint, "denied");
    wrong.static_credentials = Some((ACCESS_KEY.into(), "not-the-secret".into()));
    let bad = S3Store::new(&wrong).unwrap();
    runtime().block_on(async {
        good.put(&action(1), Upload::Bytes(Bytes::from_static(b"x")))
            .await
            .unwrap();
        let err = get_bytes(&bad, &action(1)).await.unwrap_err();
        assert!(matches!(err, RemoteError::Denied(_)), "{err:?}");
        assert!(err.is_fatal());
        let err = bad
            .put(&action(2), Upload::Bytes(Bytes::from_static(b"y")))
            .await
            .unwrap_err();
        assert!(matches!(err, RemoteError::Denied(_)), "{err:?}");
    });
}

#[test]
fn an_unreachable_store_fails_fast_and_transiently() {
    // A port that nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let store = S3Store::new(&config(&format!("http://127.0.0.1:{port}"), "x")).unwrap();
    runtime().block_on(async {
        let start = Instant::now();
        let err = get_bytes(&store, &action(1)).await.unwrap_err();
        assert!(matches!(err, RemoteError::Transient(_)), "{err:?}");
        assert!(!err.is_fatal());
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "took {:?}",
            start.elapsed()
        );
    });
}

#[test]
fn read_only_and_write_only_wrappers() {
    let server = S3Server::start();
    let read_only = ReadOnly(store(&server, "modes"));
    let write_only = WriteOnly(store(&server, "modes"));
    let plain: Arc<dyn RemoteStore> = Arc::new(store(&server, "modes"));
    runtime().block_on(async {
        server.reset_counts();
        assert_eq!(
            read_only
                .put(&action(1), Upload::Bytes(Bytes::from_static(b"r")))
                .await
                .unwrap(),
            PutOutcome::Skipped
        );
        assert_eq!(server.count("PUT"), 0);
        write_only
            .put(&action(1), Upload::Bytes(Bytes::from_static(b"w")))
            .await
            .unwrap();
        assert_eq!(server.count("PUT"), 1);
        server.reset_counts();
        assert_eq!(get_bytes(&write_only, &action(1)).await.unwrap(), None);
        assert_eq!(server.count("GET"), 0);
        assert_eq!(
            get_bytes(&read_only, &action(1)).await.unwrap().unwrap(),
            b"w"
        );
        assert_eq!(
            get_bytes(plain.as_ref(), &action(1))
                .await
                .unwrap()
                .unwrap(),
            b"w"
        );
    });
}
