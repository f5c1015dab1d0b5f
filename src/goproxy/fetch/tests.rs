use std::io::Read;

use super::*;
use crate::goproxy::testserver::{Mode, Upstream as Server};

const ZIP: &str = "example.com/m/@v/v1.0.0.zip";
const LATEST: &str = "sumdb/sum.example.com/latest";

fn request(path: &str) -> Request {
    Request::parse(path).unwrap()
}

fn fetcher(list: &str, spool: &Path) -> Fetcher {
    fetcher_with(list, spool, |_| {})
}

fn fetcher_with(list: &str, spool: &Path, change: impl FnOnce(&mut FetchConfig)) -> Fetcher {
    let mut config = FetchConfig::new(spool.to_path_buf());
    config.connect_timeout = Duration::from_secs(5);
    config.read_timeout = Duration::from_secs(5);
    change(&mut config);
    Fetcher::new(Upstreams::parse(list, None).unwrap(), config).unwrap()
}

fn contents(fetched: Fetched) -> Vec<u8> {
    let Fetched::Found(body) = fetched else {
        panic!("expected a body, got {fetched:?}");
    };
    let mut out = Vec::new();
    body.file.reopen().unwrap().read_to_end(&mut out).unwrap();
    assert_eq!(body.len, out.len() as u64);
    out
}

/// The files left in the spool directory.
fn spooled(dir: &Path) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

#[tokio::test]
async fn a_found_body_is_spooled_whole() {
    let spool = tempfile::tempdir().unwrap();
    let server = Server::start().await;
    let zip = vec![7u8; 300_000];
    server.set(&format!("/go/{ZIP}"), 200, &zip);
    let fetched = fetcher(&server.url("/go/"), spool.path())
        .fetch(&request(ZIP))
        .await
        .unwrap();
    let Fetched::Found(body) = &fetched else {
        panic!("{fetched:?}");
    };
    assert_eq!(body.file.path().parent(), Some(spool.path()));
    assert_eq!(contents(fetched), zip);
    assert_eq!(spooled(spool.path()), 0, "the body's file goes with it");
}

#[tokio::test]
async fn comma_falls_back_only_after_not_found() {
    let spool = tempfile::tempdir().unwrap();
    let (a, b) = (Server::start().await, Server::start().await);
    b.set(&format!("/{ZIP}"), 200, b"from b");
    let list = format!("{},{}", a.url(""), b.url(""));
    let fetched = fetcher(&list, spool.path()).fetch(&request(ZIP)).await;
    assert_eq!(contents(fetched.unwrap()), b"from b");

    // A failure other than "not found" ends the walk after `,`.
    a.set_mode(Mode::Fail);
    let err = fetcher(&list, spool.path())
        .fetch(&request(ZIP))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, FetchError::Status { status: 500, .. }),
        "{err:?}"
    );
    assert_eq!(
        b.hits(&format!("/{ZIP}")),
        1,
        "b is not asked after a's 500"
    );
}

#[tokio::test]
async fn pipe_falls_back_after_any_failure() {
    let spool = tempfile::tempdir().unwrap();
    let (a, b) = (Server::start().await, Server::start().await);
    a.set_mode(Mode::Fail);
    b.set(&format!("/{ZIP}"), 200, b"from b");
    let list = format!("{}|{}", a.url(""), b.url(""));
    let fetched = fetcher(&list, spool.path()).fetch(&request(ZIP)).await;
    assert_eq!(contents(fetched.unwrap()), b"from b");
    assert_eq!(a.total_hits(), 1);

    // A closed port is a failure too.
    let closed = {
        let server = Server::start().await;
        let url = server.url("");
        server.stop().await;
        url
    };
    let list = format!("{closed}|{}", b.url(""));
    let fetched = fetcher(&list, spool.path()).fetch(&request(ZIP)).await;
    assert_eq!(contents(fetched.unwrap()), b"from b");
    let err = fetcher(&closed, spool.path())
        .fetch(&request(ZIP))
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Network { .. }), "{err:?}");
}

#[tokio::test]
async fn not_found_everywhere_passes_the_first_status_on() {
    let spool = tempfile::tempdir().unwrap();
    let (a, b) = (Server::start().await, Server::start().await);
    a.set(&format!("/{ZIP}"), 410, b"gone");
    let list = format!("{},{}", a.url(""), b.url(""));
    let fetched = fetcher(&list, spool.path())
        .fetch(&request(ZIP))
        .await
        .unwrap();
    assert!(
        matches!(fetched, Fetched::NotFound { status: 410 }),
        "{fetched:?}"
    );
    assert_eq!(b.hits(&format!("/{ZIP}")), 1);
}

#[tokio::test]
async fn a_real_failure_beats_not_found() {
    let spool = tempfile::tempdir().unwrap();
    let (a, b) = (Server::start().await, Server::start().await);
    a.set_mode(Mode::Fail);
    let list = format!("{}|{}", a.url(""), b.url(""));
    let err = fetcher(&list, spool.path())
        .fetch(&request(ZIP))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, FetchError::Status { status: 500, .. }),
        "{err:?}"
    );
    assert_eq!(b.total_hits(), 1, "b was asked, and said 404");
}

#[tokio::test]
async fn a_truncated_body_is_an_error_and_leaves_nothing() {
    let spool = tempfile::tempdir().unwrap();
    let server = Server::start().await;
    server.set(&format!("/{ZIP}"), 200, &vec![1u8; 200_000]);
    server.set_mode(Mode::Truncate);
    let err = fetcher(&server.url(""), spool.path())
        .fetch(&request(ZIP))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            FetchError::Network { .. } | FetchError::Truncated { .. }
        ),
        "{err:?}"
    );
    assert_eq!(spooled(spool.path()), 0);
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_and_leaves_nothing() {
    let spool = tempfile::tempdir().unwrap();
    let server = Server::start().await;
    let list_path = "example.com/m/@v/list";
    server.set(&format!("/{list_path}"), 200, &vec![b'v'; 5000]);
    server.set(&format!("/{ZIP}"), 200, &vec![b'z'; 5000]);
    let small = fetcher_with(&server.url(""), spool.path(), |config| {
        config.max_other = 4096;
        config.max_zip = 8192;
    });
    let err = small.fetch(&request(list_path)).await.unwrap_err();
    assert!(
        matches!(err, FetchError::TooLarge { limit: 4096, .. }),
        "{err:?}"
    );
    // A zip has its own, larger limit.
    assert_eq!(
        contents(small.fetch(&request(ZIP)).await.unwrap()).len(),
        5000
    );
    assert_eq!(spooled(spool.path()), 0);
}

#[tokio::test]
async fn off_fails_unless_an_earlier_failure_says_more() {
    let spool = tempfile::tempdir().unwrap();
    let err = fetcher("off", spool.path())
        .fetch(&request(ZIP))
        .await
        .unwrap_err();
    assert_eq!(err, FetchError::Off);
    assert_eq!(err.to_string(), "module lookup disabled by GOPROXY=off");

    let server = Server::start().await;
    let list = format!("{},off", server.url(""));
    let err = fetcher(&list, spool.path())
        .fetch(&request(ZIP))
        .await
        .unwrap_err();
    assert_eq!(err, FetchError::Off, "after a 404");

    server.set_mode(Mode::Fail);
    let list = format!("{}|off", server.url(""));
    let err = fetcher(&list, spool.path())
        .fetch(&request(ZIP))
        .await
        .unwrap_err();
    assert!(
        matches!(err, FetchError::Status { status: 500, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn direct_is_said_to_be_unsupported() {
    let spool = tempfile::tempdir().unwrap();
    let err = fetcher("direct", spool.path())
        .fetch(&request(ZIP))
        .await
        .unwrap_err();
    assert_eq!(err, FetchError::DirectUnsupported);

    let server = Server::start().await;
    server.set_mode(Mode::Fail);
    let list = format!("{}|direct", server.url(""));
    let err = fetcher(&list, spool.path())
        .fetch(&request(ZIP))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        FetchError::DirectUnsupported,
        "direct's error is reported"
    );
}

#[tokio::test]
async fn sumdb_asks_the_proxies_first_then_the_database() {
    let spool = tempfile::tempdir().unwrap();
    let (proxy, db) = (Server::start().await, Server::start().await);
    proxy.set(&format!("/p/{LATEST}"), 200, b"tree from the proxy");
    db.set("/db/latest", 200, b"tree from the database");
    let with_db = |list: &str| {
        let base = db.url("/db");
        fetcher_with(list, spool.path(), move |config| {
            config.sumdb_direct_base = Some(base)
        })
    };
    let proxied = with_db(&proxy.url("/p")).fetch(&request(LATEST)).await;
    assert_eq!(contents(proxied.unwrap()), b"tree from the proxy");
    assert_eq!(db.total_hits(), 0);

    // Every proxy says "not found": the database itself.
    let (a, b) = (Server::start().await, Server::start().await);
    let list = format!("{},{}", a.url(""), b.url(""));
    let direct = with_db(&list).fetch(&request(LATEST)).await;
    assert_eq!(contents(direct.unwrap()), b"tree from the database");
    assert_eq!(a.hits(&format!("/{LATEST}")), 1);
    assert_eq!(b.hits(&format!("/{LATEST}")), 1);
    assert_eq!(db.hits("/db/latest"), 1);

    // `off` and `direct` mean the database itself, as in the go command.
    for list in ["off", "direct"] {
        let direct = with_db(list).fetch(&request(LATEST)).await;
        assert_eq!(contents(direct.unwrap()), b"tree from the database");
    }

    // A real failure ends it: the database is not asked.
    a.set_mode(Mode::Fail);
    let before = db.total_hits();
    let err = with_db(&list).fetch(&request(LATEST)).await.unwrap_err();
    assert!(
        matches!(err, FetchError::Status { status: 500, .. }),
        "{err:?}"
    );
    assert_eq!(db.total_hits(), before);

    // The database's own "not found" passes on.
    let lookup = request("sumdb/sum.example.com/lookup/example.com/m@v1.0.0");
    let fetched = with_db("off").fetch(&lookup).await.unwrap();
    assert!(matches!(fetched, Fetched::NotFound { status: 404 }));
    assert_eq!(db.hits("/db/lookup/example.com/m@v1.0.0"), 1);
}

#[tokio::test]
async fn a_password_never_shows_in_an_error() {
    let spool = tempfile::tempdir().unwrap();
    let server = Server::start().await;
    server.set_mode(Mode::Fail);
    let url = server.url("").replace("http://", "http://user:secret@");
    let err = fetcher(&url, spool.path())
        .fetch(&request(ZIP))
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(message.contains("user:xxxxx@"), "{message}");
    assert!(!message.contains("secret"), "{message}");
}

#[tokio::test]
async fn a_module_that_noproxy_names_never_reaches_a_proxy() {
    let spool = tempfile::tempdir().unwrap();
    let server = Server::start().await;
    server.set(&format!("/{ZIP}"), 200, b"from the proxy");
    let private = fetcher_with(&server.url(""), spool.path(), |config| {
        config.noproxy = "example.com/m".into();
    });
    let err = private.fetch(&request(ZIP)).await.unwrap_err();
    assert_eq!(err, FetchError::DirectUnsupported, "only direct is tried");
    assert_eq!(server.total_hits(), 0);
    // Another module, and a checksum database request, still go to the proxy.
    let other = fetcher_with(&server.url(""), spool.path(), |config| {
        config.noproxy = "example.com/other".into();
    });
    assert_eq!(
        contents(other.fetch(&request(ZIP)).await.unwrap()),
        b"from the proxy"
    );
}

#[test]
fn a_proxy_fetcher_gets_a_private_module_cache_only_when_it_may_go_direct() {
    let spool = tempfile::tempdir().unwrap();
    let list = |text: &str| Upstreams::parse(text, None).unwrap();
    let (_, guard) = Fetcher::for_proxy(
        list("http://127.0.0.1:9/up"),
        "",
        spool.path(),
        1 << 20,
        None,
    )
    .unwrap();
    assert!(guard.is_none());
    let (fetcher, guard) = Fetcher::for_proxy(
        list("http://127.0.0.1:9/up,direct"),
        "",
        spool.path(),
        1 << 20,
        None,
    )
    .unwrap();
    let guard = guard.expect("direct needs a module cache");
    let dir = guard.path().to_path_buf();
    assert!(dir.is_dir());
    assert_eq!(fetcher.config.max_zip, 1 << 20);
    assert!(fetcher.config.direct.is_some());
    drop(guard);
    assert!(!dir.exists(), "the module cache goes with its guard");
    let (_, guard) = Fetcher::for_proxy(
        list("http://127.0.0.1:9/up"),
        "example.com/private",
        spool.path(),
        1 << 40,
        None,
    )
    .unwrap();
    assert!(guard.is_some(), "GONOPROXY modules go direct");
    // A CA file that cannot be read is said, naming it.
    let err = Fetcher::for_proxy(
        list("http://127.0.0.1:9/up"),
        "",
        spool.path(),
        1 << 20,
        Some(spool.path().join("no-such-ca.pem")),
    )
    .unwrap_err();
    assert!(err.to_string().contains("no-such-ca.pem"), "{err}");
}
