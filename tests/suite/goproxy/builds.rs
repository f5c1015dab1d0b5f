//! Builds through the module proxy: a module with dependencies fetched and verified against
//! the checksum database through it, each file fetched from the upstream once; a fresh
//! machine building from its storage alone with the upstream stopped; and a module the
//! upstream lacks, a 404 that lets the go command go on down its own GOPROXY list.

use super::*;

#[test]
fn a_module_with_dependencies_builds_and_verifies_through_the_proxy() {
    let standard = Standard::start(&[]);
    let (server, upstream) = (&standard.server, &standard.upstream);
    let first = standard.machine();
    let app = first.build_app();

    // Verified: GOSUMDB is the bare key and GONOSUMDB is unset, so the go command asked the
    // proxy whether it proxies the database, and took every checksum through it (there is no
    // host `sumdb.test` to ask otherwise). go.sum holds the database's records.
    let go_sum = std::fs::read_to_string(app.join("go.sum")).unwrap();
    for module in ["example.test/a@v1.1.0", "example.test/b@v1.0.0"] {
        let (status, record) =
            server.get_with_token(&format!("/mod/sumdb/{SUMDB}/lookup/{module}"));
        assert_eq!(status, 200, "lookup {module}");
        let record = String::from_utf8(record).unwrap();
        let lines: Vec<&str> = record.lines().take(2).collect();
        assert_eq!(lines.len(), 2, "lookup {module}: {record}");
        for line in lines {
            assert!(go_sum.contains(line), "go.sum lacks {line:?}:\n{go_sum}");
        }
    }
    // The lookup went through the proxy to the upstream's database.
    upstream.requests_seen(&format!("/sumdb/{SUMDB}/lookup/example.test/a@v1.1.0"), 1);
    assert!(server.requests("sumdb", "miss") >= 2);
    assert!(
        server.requests("sumdb", "local") >= 1,
        "supported is answered by the proxy"
    );
    assert_eq!(server.requests("zip", "miss"), 2);

    // A second machine gets the same files from the proxy's storage: the upstream is asked
    // for each zip once in all.
    let second = standard.machine();
    second.build_app();
    assert_eq!(server.requests("zip", "hit"), 2);
    let mut zips = upstream.requests_seen(".zip", 2);
    zips.sort();
    assert_eq!(
        zips,
        [
            "/example.test/a/@v/v1.1.0.zip",
            "/example.test/b/@v/v1.0.0.zip"
        ]
    );
    for name in ["v1.0.0.mod", "v1.0.0.zip"] {
        assert!(
            second
                .downloaded("example.test/b")
                .contains(&name.to_owned()),
            "{name}"
        );
    }
}

#[test]
fn a_fresh_machine_builds_from_storage_with_the_upstream_stopped() {
    let layout = Layout::standard();
    let upstream = Upstream::start(&layout);
    let key = upstream.key.clone();
    let server = ProxyServer::start(&upstream.url, &[], &[]);
    Machine::new(&server.url(), &key).build_app();
    let zips_fetched = server.requests("zip", "miss");
    assert_eq!(zips_fetched, 2);

    drop(upstream);
    // A new machine, with no go.sum: every .mod, .zip, checksum lookup and tile comes from
    // the proxy's storage.
    let fresh = Machine::new(&server.url(), &key);
    fresh.build_app();
    assert_eq!(server.requests("zip", "hit"), 2);
    assert_eq!(server.requests("zip", "miss"), zips_fetched);
    assert_eq!(server.requests("zip", "upstream_error"), 0);
    assert_eq!(server.requests("mod", "upstream_error"), 0);
}

#[test]
fn a_module_the_upstream_lacks_is_404_and_the_go_command_goes_down_its_list() {
    let standard = Standard::start(&[]);
    let other_layout = Layout::empty();
    other_layout.add(&Module {
        path: "example.test/c",
        version: "v1.0.0",
        files: &[
            ("go.mod", "module example.test/c\n\ngo 1.24\n"),
            ("c.go", "package c\n\nconst C = 3\n"),
        ],
    });
    let other = Upstream::start(&other_layout);

    let server = &standard.server;
    for path in [
        "/mod/example.test/c/@v/list",
        "/mod/example.test/c/@v/v1.0.0.info",
        "/mod/example.test/c/@v/v1.0.0.zip",
    ] {
        assert_eq!(server.get_with_token(path).0, 404, "{path}");
    }
    assert!(server.requests("zip", "not_found") >= 1);

    // Only the second proxy of the go command's list has it (and its own database, which the
    // client is not told of: GONOSUMDB).
    for separator in [",", "|"] {
        let mut machine = Machine::new(
            &format!("{}{separator}{}", server.url(), other.url),
            &standard.upstream.key,
        );
        machine
            .env
            .push(("GONOSUMDB".into(), "example.test/c".into()));
        let out = machine.go(
            &machine.outside(),
            &["mod", "download", "-json", "example.test/c@v1.0.0"],
        );
        assert!(out.contains("\"Sum\": \"h1:"), "{out}");
        assert!(
            machine
                .downloaded("example.test/c")
                .contains(&"v1.0.0.zip".to_owned()),
            "separator {separator:?}"
        );
    }
    // The 404 was not kept: the proxy asks again.
    let zip = "example.test/c/@v/v1.0.0.zip";
    // The go command asked too (for each file it starts again at the head of its list):
    // its requests are all in the log once it has stopped growing.
    standard.upstream.requests_seen(zip, 1);
    std::thread::sleep(Duration::from_millis(500));
    let before = standard.upstream.requests_for(zip).len();
    assert_eq!(
        server.get_with_token("/mod/example.test/c/@v/v1.0.0.zip").0,
        404
    );
    assert_eq!(
        standard.upstream.requests_seen(zip, before + 1).len(),
        before + 1
    );
}
