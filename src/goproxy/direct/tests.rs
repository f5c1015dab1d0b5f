use std::process::Command;

use super::*;
use crate::goproxy::fetch::{FetchConfig, Fetcher};
use crate::goproxy::upstream::Upstreams;

/// A git repository of the module `example.com/repo.git`, tagged v1.0.0 and v1.1.0, which the
/// go command reaches through git's `insteadOf` (`https://example.com/` is the temporary
/// directory): no network.
struct Repo {
    dir: tempfile::TempDir,
}

fn git(dir: &Path, args: &[&str]) {
    let status = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "git {args:?}");
}

const GO_MOD: &str = "module example.com/repo.git\n\ngo 1.21\n";

impl Repo {
    fn new() -> Repo {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        std::fs::create_dir(&repo).unwrap();
        git(&repo, &["init", "-q"]);
        std::fs::write(repo.join("go.mod"), GO_MOD).unwrap();
        std::fs::write(repo.join("a.go"), "package repo\n").unwrap();
        git(&repo, &["add", "-A"]);
        git(&repo, &["commit", "-qm", "one"]);
        git(&repo, &["tag", "v1.0.0"]);
        std::fs::write(repo.join("b.go"), "package repo\n\nconst B = 1\n").unwrap();
        git(&repo, &["add", "-A"]);
        git(&repo, &["commit", "-qm", "two"]);
        git(&repo, &["tag", "v1.1.0"]);
        let config = format!(
            "[url \"file://{}/\"]\n\tinsteadOf = https://example.com/\n[protocol \"file\"]\n\tallow = always\n",
            dir.path().display()
        );
        std::fs::write(dir.path().join("gitconfig"), config).unwrap();
        std::fs::create_dir(dir.path().join("spool")).unwrap();
        Repo { dir }
    }

    fn fetcher(&self, list: &str) -> Fetcher {
        let root = self.dir.path();
        let mut direct = DirectConfig::new(root.join("modcache"));
        direct.timeout = Duration::from_secs(120);
        direct.env = vec![
            (
                "GIT_CONFIG_GLOBAL".into(),
                root.join("gitconfig").display().to_string(),
            ),
            ("GIT_CONFIG_NOSYSTEM".into(), "1".into()),
            ("GOPRIVATE".into(), "example.com".into()),
        ];
        let mut config = FetchConfig::new(root.join("spool"));
        config.direct = Some(direct);
        Fetcher::new(Upstreams::parse(list, None).unwrap(), config).unwrap()
    }
}

async fn text(fetcher: &Fetcher, path: &str) -> String {
    match fetcher.fetch(&Request::parse(path).unwrap()).await {
        Ok(Fetched::Found(body)) => {
            let bytes = std::fs::read(body.file.path()).unwrap();
            assert_eq!(bytes.len() as u64, body.len);
            String::from_utf8_lossy(&bytes).into_owned()
        }
        other => panic!("{path}: {other:?}"),
    }
}

#[tokio::test]
async fn direct_fetches_a_module_from_its_repository_with_the_go_command() {
    let repo = Repo::new();
    let fetcher = repo.fetcher("direct");
    const M: &str = "example.com/repo.git";

    assert_eq!(
        text(&fetcher, &format!("{M}/@v/list")).await,
        "v1.0.0\nv1.1.0\n"
    );
    let info = text(&fetcher, &format!("{M}/@v/v1.0.0.info")).await;
    assert!(info.contains("\"Version\":\"v1.0.0\""), "{info}");
    assert_eq!(text(&fetcher, &format!("{M}/@v/v1.0.0.mod")).await, GO_MOD);
    let zip = text(&fetcher, &format!("{M}/@v/v1.1.0.zip")).await;
    assert!(zip.starts_with("PK"), "a zip");
    assert!(zip.contains("example.com/repo.git@v1.1.0/b.go"));
    // A query and @latest answer with the resolved version's .info.
    let latest = text(&fetcher, &format!("{M}/@latest")).await;
    assert!(latest.contains("\"Version\":\"v1.1.0\""), "{latest}");
    let query = text(&fetcher, &format!("{M}/@v/v1.0.info")).await;
    assert!(query.contains("\"Version\":\"v1.0.0\""), "{query}");

    // A version that does not exist is "not found", as from a proxy.
    let missing = Request::parse(&format!("{M}/@v/v1.9.0.info")).unwrap();
    let fetched = fetcher.fetch(&missing).await.unwrap();
    assert!(
        matches!(fetched, Fetched::NotFound { status: 404 }),
        "{fetched:?}"
    );
    let spool = repo.dir.path().join("spool");
    assert_eq!(std::fs::read_dir(spool).unwrap().count(), 0, "nothing left");
}

#[tokio::test]
async fn direct_is_tried_after_the_proxies_say_not_found() {
    let repo = Repo::new();
    let proxy = crate::goproxy::testserver::Upstream::start().await;
    let fetcher = repo.fetcher(&format!("{},direct", proxy.url("")));
    let path = "example.com/repo.git/@v/v1.0.0.mod";
    assert_eq!(text(&fetcher, path).await, GO_MOD);
    assert_eq!(
        proxy.hits(&format!("/{path}")),
        1,
        "the proxy was asked first"
    );
}

#[tokio::test]
async fn a_go_command_that_cannot_run_is_a_direct_failure() {
    let repo = Repo::new();
    let mut fetcher_config = FetchConfig::new(repo.dir.path().join("spool"));
    let mut direct = DirectConfig::new(repo.dir.path().join("modcache"));
    direct.go = repo.dir.path().join("no-such-go");
    fetcher_config.direct = Some(direct);
    let fetcher = Fetcher::new(Upstreams::parse("direct", None).unwrap(), fetcher_config).unwrap();
    let request = Request::parse("example.com/repo.git/@v/list").unwrap();
    let err = fetcher.fetch(&request).await.unwrap_err();
    assert!(matches!(err, FetchError::Direct { .. }), "{err:?}");
}

#[test]
fn only_the_go_commands_does_not_exist_errors_are_not_found() {
    for error in [
        "example.com/m@v1.9.0: invalid version: unknown revision v1.9.0",
        "example.com/m@v1.9: no matching versions for query \"v1.9\"",
        "example.com/m@v1.0.0: invalid version: git ls-remote -q origin in /x: exit status 128:\n\tfatal: repository 'https://example.com/m/' not found",
    ] {
        assert!(is_not_found(error), "{error}");
    }
    for error in [
        "example.com/m@v1.0.0: invalid version: git ls-remote -q origin in /x: exit status 128:\n\tfatal: unable to access 'https://example.com/m/': Could not resolve host: example.com",
        "example.com/m@v1.0.0: git init --bare: exec: \"git\": executable file not found in $PATH",
        "unrecognized import path \"example.com/m\": https fetch: Get \"https://example.com/m?go-get=1\": dial tcp: i/o timeout",
    ] {
        assert!(!is_not_found(error), "{error}");
    }
}
