use std::time::Duration;

use futures::TryStreamExt;
use tokio::time::Instant;

use super::*;
use crate::store::PutOutcome;
use crate::store::http::HttpConfig;
use crate::store::memory::{Faults, MemoryStore};

const ACTION: ActionId = ActionId([7; 32]);

fn ns(name: &str) -> Option<Namespace> {
    Some(Namespace::parse(name).unwrap())
}

fn stores(delays_ms: &[u64]) -> (Namespaces, Vec<Arc<MemoryStore>>) {
    let memories: Vec<Arc<MemoryStore>> = delays_ms
        .iter()
        .map(|&ms| {
            let store = Arc::new(MemoryStore::new());
            store.set_faults(Faults {
                delay: Duration::from_millis(ms),
                ..Faults::default()
            });
            store
        })
        .collect();
    let names = ["pr-1", "main", "release"];
    let namespaces = Namespaces::from_stores(
        (memories.iter().zip(names))
            .map(|(store, name)| (ns(name), store.clone() as Arc<dyn RemoteStore>))
            .collect(),
    );
    (namespaces, memories)
}

async fn body(found: Option<(usize, ByteStream)>) -> Option<(usize, Vec<u8>)> {
    let (index, stream) = found?;
    let chunks: Vec<Bytes> = stream.try_collect().await.unwrap();
    Some((index, chunks.concat()))
}

#[tokio::test(start_paused = true)]
async fn a_miss_asks_every_namespace_at_once() {
    let (namespaces, memories) = stores(&[40, 40, 40]);
    let start = Instant::now();
    assert!(namespaces.get(&ACTION).await.unwrap().is_none());
    // One round trip of the clock (paused: exact), not three.
    assert_eq!(start.elapsed(), Duration::from_millis(40));
    for memory in &memories {
        assert_eq!(memory.requests.gets(), 1);
    }
}

#[tokio::test(start_paused = true)]
async fn the_first_namespace_in_order_wins_even_when_it_answers_last() {
    let (namespaces, memories) = stores(&[100, 10, 10]);
    memories[0].insert(ACTION, &b"own"[..]);
    memories[1].insert(ACTION, &b"main"[..]);
    memories[2].insert(ACTION, &b"release"[..]);
    let start = Instant::now();
    let found = body(namespaces.get(&ACTION).await.unwrap()).await;
    assert_eq!(found, Some((0, b"own".to_vec())));
    assert_eq!(start.elapsed(), Duration::from_millis(100));

    // The own namespace misses: the next in order, not the fastest.
    let (namespaces, memories) = stores(&[30, 50, 10]);
    memories[1].insert(ACTION, &b"main"[..]);
    memories[2].insert(ACTION, &b"release"[..]);
    let start = Instant::now();
    let found = body(namespaces.get(&ACTION).await.unwrap()).await;
    assert_eq!(found, Some((1, b"main".to_vec())));
    assert_eq!(start.elapsed(), Duration::from_millis(50));
}

#[tokio::test(start_paused = true)]
async fn an_earlier_hit_does_not_wait_for_later_namespaces() {
    let (namespaces, memories) = stores(&[10, 1000, 1000]);
    memories[0].insert(ACTION, &b"own"[..]);
    let start = Instant::now();
    let found = body(namespaces.get(&ACTION).await.unwrap()).await;
    assert_eq!(found, Some((0, b"own".to_vec())));
    assert_eq!(start.elapsed(), Duration::from_millis(10));
}

#[tokio::test]
async fn a_failing_namespace_is_passed_over_and_its_error_kept_for_a_miss() {
    let (namespaces, memories) = stores(&[0, 0, 0]);
    memories[0].set_faults(Faults {
        error: Some(RemoteError::Transient("down".into())),
        ..Faults::default()
    });
    memories[2].insert(ACTION, &b"release"[..]);
    let found = body(namespaces.get(&ACTION).await.unwrap()).await;
    assert_eq!(found, Some((2, b"release".to_vec())));
    let missing = ActionId([8; 32]);
    assert!(matches!(
        namespaces.get(&missing).await,
        Err(RemoteError::Transient(_))
    ));
}

#[tokio::test]
async fn a_switched_off_namespace_is_not_asked() {
    let own = Arc::new(MemoryStore::new());
    let main = Arc::new(MemoryStore::new());
    main.insert(ACTION, &b"main"[..]);
    // A breaker that is off: its store says it is not usable.
    let off = crate::store::wrap(own.clone(), RemoteMode::ReadWrite, Duration::from_secs(5));
    own.set_faults(Faults {
        error: Some(RemoteError::Denied("no".into())),
        ..Faults::default()
    });
    assert!(off.get(&ACTION).await.is_err());
    assert!(!off.usable());
    let namespaces = Namespaces::from_stores(vec![
        (ns("pr-1"), off),
        (ns("main"), main.clone() as Arc<dyn RemoteStore>),
    ]);
    let found = body(namespaces.get(&ACTION).await.unwrap()).await;
    assert_eq!(found, Some((1, b"main".to_vec())));
    assert_eq!(own.requests.gets(), 1, "asked once, before it was off");
    assert!(namespaces.usable());
}

#[tokio::test]
async fn the_manifest_falls_back_to_the_read_namespaces_in_order() {
    let (namespaces, memories) = stores(&[0, 0, 0]);
    let key = BuildKey([1; 32]);
    assert_eq!(namespaces.get_manifest(&key).await.unwrap(), None);
    memories[2]
        .put_manifest(&key, Bytes::from_static(b"release"))
        .await
        .unwrap();
    assert_eq!(
        namespaces.get_manifest(&key).await.unwrap(),
        Some((2, Bytes::from_static(b"release")))
    );
    memories[1]
        .put_manifest(&key, Bytes::from_static(b"main"))
        .await
        .unwrap();
    assert_eq!(
        namespaces.get_manifest(&key).await.unwrap(),
        Some((1, Bytes::from_static(b"main")))
    );
    memories[0]
        .put_manifest(&key, Bytes::from_static(b"own"))
        .await
        .unwrap();
    assert_eq!(
        namespaces.get_manifest(&key).await.unwrap(),
        Some((0, Bytes::from_static(b"own")))
    );
}

#[tokio::test]
async fn open_names_each_namespace_and_writes_only_the_own_one() {
    let config = StoreConfig::Http(HttpConfig {
        url: "http://127.0.0.1:9".into(),
        token: None,
        ca_file: None,
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(1),
        namespace: None,
    });
    let plan = NamespacePlan {
        own: ns("pr-1"),
        reads: vec![Namespace::parse("main").unwrap()],
    };
    let namespaces = Namespaces::open(
        &config,
        &plan,
        RemoteMode::ReadWrite,
        Duration::from_secs(1),
        0.0,
    )
    .unwrap();
    assert_eq!(namespaces.names(), &[ns("pr-1"), ns("main")]);
    assert_eq!(namespaces.own().location(), "http://127.0.0.1:9/v1/ns/pr-1");
    assert_eq!(
        namespaces.store(1).location(),
        "http://127.0.0.1:9/v1/ns/main"
    );
    assert_eq!(namespaces.index_of(ns("main").as_ref()), Some(1));
    assert_eq!(namespaces.index_of(None), None);
    // Nothing listens on port 9: a read namespace's put is skipped before any request.
    let upload = crate::store::Upload::Bytes(Bytes::from_static(b"x"));
    assert_eq!(
        namespaces
            .store(1)
            .put(&ACTION, upload.clone())
            .await
            .unwrap(),
        PutOutcome::Skipped
    );
    assert!(namespaces.own().put(&ACTION, upload).await.is_err());

    let unnamespaced = Namespaces::open(
        &config,
        &NamespacePlan::default(),
        RemoteMode::ReadWrite,
        Duration::from_secs(1),
        0.0,
    )
    .unwrap();
    assert_eq!(unnamespaced.names(), &[None]);
    assert_eq!(unnamespaced.own().location(), "http://127.0.0.1:9");
}
