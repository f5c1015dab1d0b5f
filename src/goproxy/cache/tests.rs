use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use super::*;
use crate::goproxy::entry_store::EntryModStore;
use crate::goproxy::fetch::FetchConfig;
use crate::goproxy::testserver::{Mode, Upstream as Server};
use crate::goproxy::upstream::Upstreams;

const ZIP: &str = "example.com/m/@v/v1.0.0.zip";
const LIST: &str = "example.com/m/@v/list";

fn request(path: &str) -> Request {
    Request::parse(path).unwrap()
}

/// The cache over answers kept as entries in a storage directory at `root`, as on a server.
fn cache(list: &str, root: &Path, ttl: Duration) -> ModCache<EntryModStore> {
    let disk = crate::store::dir::DiskStore::open(root).unwrap();
    let spool = root.join("tmp");
    let store = EntryModStore::new(Arc::new(disk), &spool, 1 << 30);
    let mut config = FetchConfig::new(spool);
    config.connect_timeout = Duration::from_secs(5);
    config.read_timeout = Duration::from_secs(5);
    let fetcher = Fetcher::new(Upstreams::parse(list, None).unwrap(), config).unwrap();
    ModCache::new(store, fetcher, ttl)
}

/// The result label and the bytes served.
fn read(served: Served) -> (&'static str, Vec<u8>) {
    let label = served.result_label();
    let mut out = Vec::new();
    if let Some(mut content) = served.content() {
        content.body.read_to_end(&mut out).unwrap();
        assert_eq!(content.len, out.len() as u64);
    }
    (label, out)
}

async fn serve(cache: &ModCache<EntryModStore>, path: &str) -> (&'static str, Vec<u8>) {
    read(cache.serve(&request(path)).await.unwrap())
}

/// The files in the store's spool.
fn spooled(cache: &ModCache<EntryModStore>) -> usize {
    std::fs::read_dir(cache.store().spool_dir())
        .unwrap()
        .count()
}

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn an_immutable_answer_is_fetched_once_and_then_served_from_the_store() {
    let root = tempfile::tempdir().unwrap();
    let server = Server::start().await;
    server.set(&format!("/{ZIP}"), 200, b"zip bytes");
    let url = server.url("");
    let cache = cache(&url, root.path(), Duration::ZERO);
    assert_eq!(serve(&cache, ZIP).await, ("miss", b"zip bytes".to_vec()));
    // A TTL of zero does not apply to an immutable answer.
    assert_eq!(serve(&cache, ZIP).await, ("hit", b"zip bytes".to_vec()));
    assert_eq!(server.hits(&format!("/{ZIP}")), 1);
    assert_eq!(spooled(&cache), 0);

    server.stop().await;
    let again = self::cache(&url, root.path(), Duration::ZERO);
    assert_eq!(serve(&again, ZIP).await, ("hit", b"zip bytes".to_vec()));
}

#[tokio::test]
async fn a_mutable_answer_is_served_while_fresh_and_fetched_again_after_its_ttl() {
    let root = tempfile::tempdir().unwrap();
    let server = Server::start().await;
    let path = format!("/{LIST}");
    server.set(&path, 200, b"v1.0.0\n");
    let long = cache(&server.url(""), root.path(), HOUR);
    assert_eq!(serve(&long, LIST).await, ("miss", b"v1.0.0\n".to_vec()));
    assert_eq!(serve(&long, LIST).await, ("hit", b"v1.0.0\n".to_vec()));
    assert_eq!(server.hits(&path), 1);

    server.set(&path, 200, b"v1.0.0\nv1.1.0\n");
    let short = cache(&server.url(""), root.path(), Duration::from_millis(200));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (label, body) = serve(&short, LIST).await;
        if body == b"v1.0.0\nv1.1.0\n" {
            assert_eq!(label, "miss");
            break;
        }
        assert_eq!(label, "hit");
        assert!(
            Instant::now() < deadline,
            "the list was never fetched again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server.hits(&path), 2);
    // And the new answer is what the store now holds.
    assert_eq!(
        serve(&long, LIST).await,
        ("hit", b"v1.0.0\nv1.1.0\n".to_vec())
    );
}

#[tokio::test]
async fn a_mutable_answer_is_served_stale_only_when_the_upstreams_fail() {
    let root = tempfile::tempdir().unwrap();
    let server = Server::start().await;
    let path = format!("/{LIST}");
    server.set(&path, 200, b"v1.0.0\n");
    let cache = cache(&server.url(""), root.path(), Duration::ZERO);
    assert_eq!(serve(&cache, LIST).await, ("miss", b"v1.0.0\n".to_vec()));

    server.set_mode(Mode::Fail);
    assert_eq!(
        serve(&cache, LIST).await,
        ("fallback", b"v1.0.0\n".to_vec())
    );

    // "Not found" is the upstream's word: passed on, and the stored copy is kept.
    server.set_mode(Mode::Normal);
    server.set(&path, 404, b"gone");
    assert_eq!(serve(&cache, LIST).await, ("not_found", Vec::new()));
    assert!(cache.store().get(LIST).await.unwrap().is_some());

    server.stop().await;
    assert_eq!(
        serve(&cache, LIST).await,
        ("fallback", b"v1.0.0\n".to_vec())
    );

    // With nothing stored, the failure is the answer.
    let err = cache
        .serve(&request("example.com/other/@v/list"))
        .await
        .unwrap_err();
    assert!(matches!(err, ServeError::Fetch(FetchError::Network { .. })));
    let err = cache.serve(&request(ZIP)).await.unwrap_err();
    assert!(matches!(err, ServeError::Fetch(FetchError::Network { .. })));
}

#[tokio::test]
async fn not_found_passes_through_and_is_never_stored() {
    let root = tempfile::tempdir().unwrap();
    let server = Server::start().await;
    let cache = cache(&server.url(""), root.path(), HOUR);
    let served = cache.serve(&request(ZIP)).await.unwrap();
    assert!(matches!(served, Served::NotFound { status: 404 }));
    assert!(cache.store().get(ZIP).await.unwrap().is_none());

    server.set(&format!("/{ZIP}"), 410, b"");
    let served = cache.serve(&request(ZIP)).await.unwrap();
    assert!(matches!(served, Served::NotFound { status: 410 }));

    server.set(&format!("/{ZIP}"), 200, b"published since");
    assert_eq!(
        serve(&cache, ZIP).await,
        ("miss", b"published since".to_vec())
    );
    assert_eq!(server.hits(&format!("/{ZIP}")), 3);
}

#[tokio::test]
async fn a_failed_or_truncated_fetch_stores_nothing() {
    let root = tempfile::tempdir().unwrap();
    let server = Server::start().await;
    server.set(&format!("/{ZIP}"), 200, &vec![3u8; 100_000]);
    let cache = cache(&server.url(""), root.path(), HOUR);
    server.set_mode(Mode::Truncate);
    assert!(cache.serve(&request(ZIP)).await.is_err());
    server.set_mode(Mode::Fail);
    let err = cache.serve(&request(ZIP)).await.unwrap_err();
    assert!(matches!(
        err,
        ServeError::Fetch(FetchError::Status { status: 500, .. })
    ));
    assert!(cache.store().get(ZIP).await.unwrap().is_none());
    assert_eq!(spooled(&cache), 0);

    server.set_mode(Mode::Normal);
    let (label, body) = serve(&cache, ZIP).await;
    assert_eq!((label, body.len()), ("miss", 100_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_for_one_key_fetch_it_once() {
    let root = tempfile::tempdir().unwrap();
    let server = Server::start().await;
    let zip = vec![9u8; 1 << 20];
    server.set(&format!("/{ZIP}"), 200, &zip);
    server.set_delay(Duration::from_millis(300));
    let cache = Arc::new(cache(&server.url(""), root.path(), HOUR));
    let serves = (0..16).map(|_| {
        let cache = cache.clone();
        tokio::spawn(async move { serve(&cache, ZIP).await })
    });
    let results = futures::future::join_all(serves).await;
    let mut fetched = 0;
    for result in results {
        let (label, body) = result.unwrap();
        assert!(body == zip, "every request gets the whole zip");
        fetched += usize::from(label == "miss");
    }
    assert_eq!(fetched, 1);
    assert_eq!(server.hits(&format!("/{ZIP}")), 1);

    // One fetch for a missing file too, and every request sees its 404.
    let missing = "example.com/m/@v/v9.9.9.zip";
    let serves = (0..16).map(|_| {
        let cache = cache.clone();
        tokio::spawn(async move { cache.serve(&request(missing)).await.unwrap() })
    });
    for result in futures::future::join_all(serves).await {
        assert!(matches!(result.unwrap(), Served::NotFound { status: 404 }));
    }
    assert_eq!(server.hits(&format!("/{missing}")), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_takes_over_when_the_leader_is_dropped() {
    let root = tempfile::tempdir().unwrap();
    let server = Server::start().await;
    server.set(&format!("/{ZIP}"), 200, b"zip");
    server.set_delay(Duration::from_millis(500));
    let cache = Arc::new(cache(&server.url(""), root.path(), HOUR));
    let leader = {
        let cache = cache.clone();
        tokio::spawn(async move { serve(&cache, ZIP).await })
    };
    // Until the leader's request reached the server, the waiter might lead instead.
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.total_hits() == 0 {
        assert!(Instant::now() < deadline, "the leader never asked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let waiter = {
        let cache = cache.clone();
        tokio::spawn(async move { serve(&cache, ZIP).await })
    };
    leader.abort();
    assert_eq!(waiter.await.unwrap().1, b"zip");
    assert!(crate::sync::lock(&cache.in_flight).is_empty());
}

#[tokio::test]
async fn local_requests_are_left_to_the_caller() {
    let root = tempfile::tempdir().unwrap();
    let server = Server::start().await;
    let cache = cache(&server.url(""), root.path(), HOUR);
    let served = cache
        .serve(&request("sumdb/sum.example.com/supported"))
        .await
        .unwrap();
    assert!(matches!(served, Served::Local));
    assert_eq!(server.total_hits(), 0);
}

#[tokio::test]
async fn a_sumdb_answer_is_cached_like_the_others() {
    let root = tempfile::tempdir().unwrap();
    let server = Server::start().await;
    let tile = "sumdb/sum.example.com/tile/8/0/001";
    server.set(&format!("/{tile}"), 200, b"hashes");
    let cache = cache(&server.url(""), root.path(), HOUR);
    assert_eq!(serve(&cache, tile).await, ("miss", b"hashes".to_vec()));
    assert_eq!(serve(&cache, tile).await, ("hit", b"hashes".to_vec()));
    assert_eq!(server.total_hits(), 1);
}
