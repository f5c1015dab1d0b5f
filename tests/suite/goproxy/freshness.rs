//! The mutable answers (`@v/list`, a query's `.info`): refetched once `--goproxy-list-ttl`
//! has passed, served from storage before it, and served from storage however old when the
//! upstream is down.

use super::*;

#[test]
fn a_new_upstream_version_is_listed_after_the_ttl_and_not_before() {
    let layout = Layout::standard();
    let upstream = Upstream::start(&layout);
    let short = ProxyServer::start(&upstream.url, &["--goproxy-list-ttl", "1s"], &[]);
    let long = ProxyServer::start(&upstream.url, &["--goproxy-list-ttl", "1h"], &[]);
    let old = ["v1.0.0", "v1.1.0"].map(str::to_owned).to_vec();
    for server in [&short, &long] {
        let machine = Machine::new(&server.url(), &upstream.key);
        assert_eq!(machine.versions("example.test/a"), old);
    }

    layout.add(&A_V1_2_0);
    let new = ["v1.0.0", "v1.1.0", "v1.2.0"].map(str::to_owned).to_vec();
    // The upstream lists it at once (so the long TTL's old list below is the proxy's doing).
    let straight = Machine::new(&upstream.url, &upstream.key);
    assert_eq!(straight.versions("example.test/a"), new);
    std::thread::sleep(Duration::from_millis(1500));

    let machine = Machine::new(&short.url(), &upstream.key);
    assert_eq!(machine.versions("example.test/a"), new, "after the TTL");
    assert!(short.requests("list", "miss") >= 2);

    let machine = Machine::new(&long.url(), &upstream.key);
    assert_eq!(machine.versions("example.test/a"), old, "within the TTL");
    assert!(long.requests("list", "hit") >= 1);
    assert_eq!(long.requests("list", "miss"), 1);
}

#[test]
fn the_list_and_latest_are_served_from_storage_when_the_upstream_is_down() {
    let layout = Layout::standard();
    let upstream = Upstream::start(&layout);
    let key = upstream.key.clone();
    let server = ProxyServer::start(&upstream.url, &["--goproxy-list-ttl", "1s"], &[]);

    let old = ["v1.0.0", "v1.1.0"].map(str::to_owned).to_vec();
    let up = Machine::new(&server.url(), &key);
    assert_eq!(up.versions("example.test/a"), old);
    let resolved = up.go(
        &up.outside(),
        &["mod", "download", "-json", "example.test/a@latest"],
    );
    assert!(resolved.contains("\"Version\": \"v1.1.0\""), "{resolved}");

    // Stopped (a process gone closes its connections: none of the server's kept-alive ones
    // still reaches it), and past the TTL: the stored lists are old, and nobody can be asked.
    drop(upstream);
    std::thread::sleep(Duration::from_millis(1500));
    let down = Machine::new(&server.url(), &key);
    assert_eq!(down.versions("example.test/a"), old);
    let resolved = down.go(
        &down.outside(),
        &["mod", "download", "-json", "example.test/a@latest"],
    );
    assert!(resolved.contains("\"Version\": \"v1.1.0\""), "{resolved}");
    assert!(
        down.downloaded("example.test/a")
            .contains(&"v1.1.0.zip".to_owned())
    );
    assert!(server.requests("list", "fallback") >= 2);

    // An upstream again (a new one, on the same files and one more version), with the server
    // restarted on its storage: the upstream's list is the answer, not the stored one.
    layout.add(&A_V1_2_0);
    let again = Upstream::start(&layout);
    let storage = server.stop_keeping();
    let server = ProxyServer::on(storage, &again.url, &["--goproxy-list-ttl", "1s"], &[]);
    let machine = Machine::new(&server.url(), &again.key);
    assert_eq!(
        machine.versions("example.test/a"),
        ["v1.0.0", "v1.1.0", "v1.2.0"].map(str::to_owned).to_vec()
    );
    assert_eq!(server.requests("list", "fallback"), 0);
}
