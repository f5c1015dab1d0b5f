//! A private module through `direct`: the server's go command fetches it from its git
//! repository, and the client's go command, which cannot reach that repository, gets it from
//! the proxy.
//!
//! The repository is a local one, reached without a network by the module path's `.git`
//! suffix: for `example.test/priv.git` the go command runs `git ls-remote
//! https://example.test/priv`, and git's `url.<base>.insteadOf` (given in the server's
//! environment as `GIT_CONFIG_COUNT`, `GIT_CONFIG_KEY_0`, `GIT_CONFIG_VALUE_0`) rewrites that
//! URL to the repository's `file://` one; `GIT_ALLOW_PROTOCOL=file:https` lets git use it
//! whatever its default for `file` is. No git daemon and no `?go-get=1` server needed.

use super::*;

const PRIVATE: &str = "example.test/priv.git";

/// Runs git in `dir` and requires it to succeed.
fn git(dir: &Path, args: &[&str]) {
    let out = bounded(
        Command::new("git")
            .args(["-c", "user.name=test", "-c", "user.email=test@example.test"])
            .args(args)
            .current_dir(dir)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1"),
        GO_BOUND,
    );
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_private_module_comes_through_direct_and_never_from_the_upstream() {
    let layout = Layout::standard();
    let upstream = Upstream::start(&layout);
    let repo = tempfile::tempdir().unwrap();
    std::fs::write(
        repo.path().join("go.mod"),
        format!("module {PRIVATE}\n\ngo 1.24\n"),
    )
    .unwrap();
    std::fs::write(
        repo.path().join("priv.go"),
        "package priv\n\nconst Word = \"secret\"\n",
    )
    .unwrap();
    git(repo.path(), &["init", "-q", "-b", "main"]);
    git(repo.path(), &["add", "."]);
    git(repo.path(), &["commit", "-q", "-m", "v1"]);
    git(repo.path(), &["tag", "v1.0.0"]);

    let rewrite = format!("url.file://{}.insteadOf", repo.path().display());
    let env = [
        ("GOPRIVATE", PRIVATE),
        ("GIT_CONFIG_GLOBAL", "/dev/null"),
        ("GIT_CONFIG_NOSYSTEM", "1"),
        ("GIT_CONFIG_COUNT", "1"),
        ("GIT_CONFIG_KEY_0", rewrite.as_str()),
        ("GIT_CONFIG_VALUE_0", "https://example.test/priv"),
        ("GIT_ALLOW_PROTOCOL", "file:https"),
    ];
    let upstreams = format!("{},direct", upstream.url);
    let server = ProxyServer::start(&upstreams, &[], &env);

    // The client knows nothing of the repository and asks only the proxy; the module is in
    // no checksum database.
    let mut machine = Machine::new(&server.url(), &upstream.key);
    machine.env.push(("GONOSUMDB".into(), PRIVATE.into()));
    assert_eq!(machine.versions(PRIVATE), ["v1.0.0"]);
    let out = machine.go(
        &machine.outside(),
        &["mod", "download", "-json", &format!("{PRIVATE}@v1.0.0")],
    );
    assert!(out.contains("\"Sum\": \"h1:"), "{out}");
    let dir = machine
        .dir
        .path()
        .join(format!("gopath/pkg/mod/{PRIVATE}@v1.0.0/priv.go"));
    assert_eq!(
        std::fs::read_to_string(&dir).unwrap(),
        "package priv\n\nconst Word = \"secret\"\n"
    );

    // GOPRIVATE in the server's environment: the module's path never went to the upstream.
    assert_eq!(upstream.requests_for("priv"), Vec::<String>::new());
    // And the public modules still come from the upstream, not through direct.
    assert_eq!(machine.versions("example.test/a"), ["v1.0.0", "v1.1.0"]);
    upstream.requests_seen("example.test/a/@v/list", 1);

    // Stored: with the repository gone, a fresh machine still gets the zip.
    drop(repo);
    let mut fresh = Machine::new(&server.url(), &upstream.key);
    fresh.env.push(("GONOSUMDB".into(), PRIVATE.into()));
    fresh.go(
        &fresh.outside(),
        &["mod", "download", "-json", &format!("{PRIVATE}@v1.0.0")],
    );
    assert!(fresh.downloaded(PRIVATE).contains(&"v1.0.0.zip".to_owned()));
}
