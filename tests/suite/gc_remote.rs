//! `gc-remote`, end to end on the in-process S3 server: what a recent build's manifest lists
//! survives however old it is, an older build's other entries go, a dry run deletes nothing,
//! and nothing outside the prefix's entries and manifests is touched. Objects are made old by
//! setting the modified times of the server's files, which it reports as LastModified.

use crate::support;

pub(crate) mod modules;
pub(crate) mod namespaces;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, SystemTime};

use support::GoProject;
use support::s3::{S3Server, SECRET_KEY, credentials, with_prefetch};

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

fn project(tag: &str, server: &S3Server, prefix: &str) -> GoProject {
    let mut project = GoProject::new(tag);
    project.args = with_prefetch(server.args(prefix));
    project.env = credentials(SECRET_KEY);
    project
}

/// `goremotecache gc-remote` on `prefix` of the test bucket, with `extra` options.
fn gc_remote(server: &S3Server, prefix: &str, extra: &[&str]) -> Output {
    let mut command = std::process::Command::new(support::bin());
    command
        .arg("gc-remote")
        .args(with_prefetch(server.args(prefix)))
        .args(extra);
    for (key, value) in credentials(SECRET_KEY) {
        command.env(key, value);
    }
    command.output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Every object file under `dir`, as paths relative to the bucket.
fn objects(server: &S3Server, dir: &str) -> BTreeSet<String> {
    let bucket = server.bucket_dir();
    server
        .entry_files()
        .into_iter()
        .map(|path| relative(&bucket, &path))
        .filter(|key| key.starts_with(dir))
        .collect()
}

fn relative(base: &Path, path: &Path) -> String {
    path.strip_prefix(base)
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// Sets the modified time of every object file in the bucket `age` back.
fn age_everything(server: &S3Server, age: Duration) {
    let then = SystemTime::now() - age;
    for path in server.entry_files() {
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(then)
            .unwrap();
    }
}

/// The objects a prefetch manifest file lists: `<prefix>/v1/<actionid-hex>`.
fn listed(prefix: &str, manifest: &Path) -> BTreeSet<String> {
    support::manifest_keys(manifest)
        .into_iter()
        .map(|key| format!("{prefix}/v1/{key}"))
        .collect()
}

/// Writes an object file straight into the bucket.
fn put_file(server: &S3Server, key: &str, bytes: &[u8]) -> PathBuf {
    let path = server.bucket_dir().join(key);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn recent_builds_keep_their_entries_and_older_ones_go() {
    let server = S3Server::start();
    // An older build: its entries and its manifest, then ten days pass.
    let old = project("gc-old", &server, "gc");
    old.go(&["build", "./..."]);
    let old_entries = objects(&server, "gc/v1/");
    let old_manifests = objects(&server, "gc/prefetch/");
    // The prefetch pack written with the manifest goes with it.
    let old_packs = objects(&server, "gc/pack/");
    assert!(old_entries.len() > 50, "{old_entries:?}");
    assert_eq!(old_manifests.len(), 1);
    assert_eq!(old_packs.len(), 1);
    // What is not a build entry or a manifest, and another prefix's entries, are never touched.
    let one_entry = std::fs::read(server.bucket_dir().join(old_entries.first().unwrap())).unwrap();
    let other_name = old_entries.first().unwrap().replacen("gc/", "other/", 1);
    put_file(&server, &other_name, &one_entry);
    put_file(&server, "gc/v1/notes.txt", b"not an entry");
    put_file(&server, "gc/prefetch/v1/not-a-key", b"not a manifest");
    put_file(
        &server,
        "gc/mod/example.com/x/@v/v1.0.0.zip",
        b"a module file",
    );
    age_everything(&server, DAY * 10);

    // A recent build on a fresh machine: it uses the old build's standard library entries
    // (shared action IDs) and uploads its own.
    let mut recent = project("gc-recent", &server, "gc");
    recent.switch_machine("recent");
    recent.go(&["build", "./..."]);
    let recent_manifest = objects(&server, "gc/prefetch/v1/")
        .into_iter()
        .find(|key| !old_manifests.contains(key) && !key.ends_with("not-a-key"))
        .expect("the recent build wrote its manifest");
    let kept_by_manifest = listed("gc", &server.bucket_dir().join(&recent_manifest));
    let doomed: BTreeSet<String> = old_entries.difference(&kept_by_manifest).cloned().collect();
    let survivors: BTreeSet<String> = old_entries
        .intersection(&kept_by_manifest)
        .cloned()
        .collect();
    assert!(
        doomed.len() >= 5,
        "the old build's own packages: {doomed:?}"
    );
    assert!(
        survivors.len() >= 5,
        "shared standard library entries: {survivors:?}"
    );
    let before = objects(&server, "");

    // The dry run reports and deletes nothing.
    let dry = gc_remote(&server, "gc", &["--older-than", "5d"]);
    assert!(dry.status.success(), "{}", text(&dry.stderr));
    let report = text(&dry.stdout);
    let expected = format!("to delete: {} entries (", doomed.len());
    assert!(report.contains(&expected), "{expected}: {report}");
    assert!(report.contains("), 1 manifest ("), "{report}");
    let listed_line = report
        .lines()
        .find(|line| line.contains("older but listed in a recent manifest"))
        .unwrap_or_else(|| panic!("{report}"));
    let kept = format!("  kept: {} entries (", survivors.len());
    assert!(listed_line.starts_with(&kept), "{kept}: {report}");
    // v1/notes.txt and prefetch/v1/not-a-key; the module file is not even listed.
    assert!(report.contains("kept: 2 other objects"), "{report}");
    assert!(report.contains("dry run: nothing was deleted"), "{report}");
    assert_eq!(
        objects(&server, ""),
        before,
        "the dry run deleted something"
    );

    // With --yes: exactly the old build's entries that no recent manifest lists, and its
    // manifest.
    let done = gc_remote(&server, "gc", &["--older-than", "5d", "--yes"]);
    assert!(done.status.success(), "{}", text(&done.stderr));
    let summary = text(&done.stdout);
    let expected = format!("deleted {} entries, 1 manifest and 1 pack (", doomed.len());
    assert!(summary.contains(&expected), "{expected}: {summary}");
    let after = objects(&server, "");
    let gone: BTreeSet<String> = before.difference(&after).cloned().collect();
    let mut expected_gone = doomed.clone();
    expected_gone.extend(old_manifests.iter().cloned());
    expected_gone.extend(old_packs.iter().cloned());
    assert_eq!(gone, expected_gone);
    for key in [
        other_name.as_str(),
        "gc/v1/notes.txt",
        "gc/prefetch/v1/not-a-key",
        "gc/mod/example.com/x/@v/v1.0.0.zip",
        recent_manifest.as_str(),
    ] {
        assert!(after.contains(key), "{key} was deleted");
    }

    // Nothing is left to collect, and the recent build still comes whole from the bucket.
    let again = gc_remote(&server, "gc", &["--older-than", "5d"]);
    assert!(
        text(&again.stdout).contains("to delete: 0 entries (0 B), 0 manifests (0 B)"),
        "{}",
        text(&again.stdout)
    );
    recent.build_on_fresh_machine("recent-2");
    // The older build's own packages are gone: a fresh machine compiles them again.
    let mut old = old;
    old.switch_machine("old-2");
    let rebuilt = old.go(&["build", "-x", "./..."]);
    assert!(
        !rebuilt.compiles().is_empty(),
        "the old build's entries are still there"
    );
}

#[test]
fn refuses_what_it_cannot_collect_and_reports_a_bad_store() {
    let server = S3Server::start();
    // The age is required.
    let missing = gc_remote(&server, "gc", &[]);
    assert_eq!(missing.status.code(), Some(2), "{}", text(&missing.stderr));
    // A server's directory storage bounds itself.
    let dir = gc_remote(
        &server,
        "gc",
        &["--older-than", "1d", "--storage-dir", "/srv/x"],
    );
    assert_eq!(dir.status.code(), Some(2));
    assert!(
        text(&dir.stderr).contains("--max-size"),
        "{}",
        text(&dir.stderr)
    );
    // Wrong credentials: a clear error, status 1, nothing deleted.
    let mut command = std::process::Command::new(support::bin());
    command
        .args(["gc-remote", "--older-than", "1d", "--yes"])
        .args(with_prefetch(server.args("gc")));
    for (key, value) in credentials("not-the-secret") {
        command.env(key, value);
    }
    let denied = command.output().unwrap();
    assert_eq!(denied.status.code(), Some(1));
    let stderr = text(&denied.stderr);
    // The namespaces are listed first (every namespace's recent manifests are read).
    assert!(
        stderr.contains("listing ns/ in s3://gocache/gc"),
        "{stderr}"
    );
    assert!(stderr.contains("denied"), "{stderr}");
}

/// Rewrites the `# written=` line of a stored manifest to `age` ago.
fn backdate_manifest(path: &Path, age: Duration) {
    let text =
        String::from_utf8(zstd::stream::decode_all(&std::fs::read(path).unwrap()[..]).unwrap())
            .unwrap();
    let then = (SystemTime::now() - age)
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut found = false;
    let text: String = text
        .lines()
        .map(|line| match line.starts_with("# written=") {
            true => {
                found = true;
                format!("# written={then}\n")
            }
            false => format!("{line}\n"),
        })
        .collect();
    assert!(found, "no written= line in:\n{text}");
    std::fs::write(path, zstd::bulk::compress(text.as_bytes(), 3).unwrap()).unwrap();
}

/// A build that asks for exactly its manifest's entries writes nothing, until the manifest is
/// more than a day old: then it writes it again, and its old entries survive `gc-remote`.
#[test]
fn a_manifest_in_use_is_written_again_daily_and_keeps_its_entries() {
    const N: u32 = 20;
    let server = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let client = || {
        support::s3_client(
            dir.path(),
            with_prefetch(server.args("daily")),
            &["--prefetch-key", "daily"],
        )
    };
    let mut writer = client();
    for n in 0..N {
        writer.put(
            i64::from(n),
            support::action(n),
            format!("entry {n}").as_bytes(),
        );
    }
    for _ in 0..N {
        assert!(writer.read().unwrap().get("Err").is_none());
    }
    let stderr = writer.close(i64::from(N));
    assert!(
        stderr.contains(&format!("manifest of {N} entries written")),
        "{stderr}"
    );
    // The same build again: the same entries, nothing to write.
    let same_again = || {
        let mut reader = client();
        for n in 0..N {
            reader.get(i64::from(n), support::action(n));
            assert!(reader.read().unwrap()["DiskPath"].is_string());
        }
        reader.close(i64::from(N))
    };
    let stderr = same_again();
    assert!(stderr.contains("manifest unchanged"), "{stderr}");

    // Ten days later by the bucket's clock, and the manifest says it was written 3 days ago.
    let manifests = objects(&server, "daily/prefetch/v1/");
    assert_eq!(manifests.len(), 1);
    let manifest = server.bucket_dir().join(manifests.first().unwrap());
    backdate_manifest(&manifest, DAY * 3);
    age_everything(&server, DAY * 10);
    let before = gc_remote(&server, "daily", &["--older-than", "5d"]);
    let report = text(&before.stdout);
    assert!(
        report.contains(&format!("to delete: {N} entries (")) && report.contains(", 1 manifest ("),
        "{report}"
    );

    // The same build once more: it writes its manifest again, which keeps its entries.
    let stderr = same_again();
    assert!(
        stderr.contains(&format!("manifest of {N} entries written")),
        "{stderr}"
    );
    let done = gc_remote(&server, "daily", &["--older-than", "5d", "--yes"]);
    assert!(done.status.success(), "{}", text(&done.stderr));
    let report = text(&done.stdout);
    assert!(
        report.contains("to delete: 0 entries (0 B), 0 manifests (0 B)"),
        "{report}"
    );
    assert!(
        report.contains(&format!("kept: {N} entries (")) && report.contains("older but listed"),
        "{report}"
    );
    assert!(
        report.contains("deleted 0 entries and 0 manifests"),
        "{report}"
    );
    assert_eq!(objects(&server, "daily/v1/").len(), N as usize);
}

/// A `goremotecache serve` server on S3 storage, configured by its environment; killed when
/// dropped.
struct Served {
    child: std::process::Child,
    url: String,
}

impl Served {
    fn start(env: &[(String, String)]) -> Self {
        use std::io::BufRead;
        let mut command = std::process::Command::new(support::bin());
        command
            .arg("serve")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let mut child = command.spawn().unwrap();
        let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        while !line.contains("serving ") {
            line.clear();
            if stderr.read_line(&mut line).unwrap() == 0 {
                break;
            }
        }
        let url = line
            .split("serving ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .map(|url| url.to_string())
            .unwrap_or_else(|| {
                let _ = child.kill();
                let _ = child.wait();
                panic!("no address in {line:?}")
            });
        // Keep draining stderr so the server never blocks on it.
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        Self { child, url }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `serve`'s S3 storage is the same objects: `gc-remote` run in the server's environment
/// collects it (the server's own variables, such as its tokens, are not its concern).
#[test]
fn serve_s3_storage_is_collected_in_the_servers_environment() {
    const TOKEN: &str = "rw-token-for-gc-remote-0123456789";
    let s3 = S3Server::start();
    let mut env = credentials(SECRET_KEY);
    for (key, value) in [
        ("GOREMOTECACHE_S3_BUCKET", support::s3::BUCKET),
        ("GOREMOTECACHE_S3_PREFIX", "served"),
        ("GOREMOTECACHE_S3_ENDPOINT", s3.endpoint.as_str()),
        ("GOREMOTECACHE_S3_REGION", "us-east-1"),
        ("GOREMOTECACHE_S3_FORCE_PATH_STYLE", "true"),
        ("GOREMOTECACHE_LISTEN", "127.0.0.1:0"),
        ("GOREMOTECACHE_TOKENS", &format!("rw:{TOKEN}")),
    ] {
        env.push((key.to_string(), value.to_string()));
    }
    let server = Served::start(&env);
    let client = |dir: &Path, key: &str| {
        support::Client::on_dir(
            dir,
            &[
                "--http-url",
                &server.url,
                "--http-token",
                TOKEN,
                "--prefetch-key",
                key,
                "--stats",
            ],
        )
    };
    // Two builds through the server: `a` stores entries 0 to 9, `b` 10 to 19.
    for (key, range) in [("a", 0..10u32), ("b", 10..20)] {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = client(dir.path(), key);
        for n in range.clone() {
            writer.put(
                i64::from(n),
                support::action(n),
                format!("entry {n}").as_bytes(),
            );
            assert!(writer.read().unwrap().get("Err").is_none());
        }
        let stderr = writer.close(100);
        assert!(
            stderr.contains("manifest of 10 entries written"),
            "{stderr}"
        );
    }
    assert_eq!(objects(&s3, "served/v1/").len(), 20);
    // Ten days later, build `a` has run again (its manifest is fresh), `b` has not.
    age_everything(&s3, DAY * 10);
    let manifest_of = |key: &str| {
        let hex = goremotecache::cache::manifest::KeySource::explicit(key)
            .key()
            .to_hex();
        s3.bucket_dir().join(format!("served/prefetch/v1/{hex}"))
    };
    std::fs::File::options()
        .write(true)
        .open(manifest_of("a"))
        .unwrap()
        .set_modified(SystemTime::now())
        .unwrap();

    let mut command = std::process::Command::new(support::bin());
    command
        .args(["gc-remote", "--older-than", "5d", "--yes"])
        .envs(env.iter().map(|(k, v)| (k, v)));
    let done = command.output().unwrap();
    assert!(done.status.success(), "{}", text(&done.stderr));
    let report = text(&done.stdout);
    assert!(report.starts_with("s3://gocache/served: "), "{report}");
    assert!(
        report.contains("deleted 10 entries and 1 manifest ("),
        "{report}"
    );
    assert!(manifest_of("a").exists() && !manifest_of("b").exists());

    // Through the server: build `a`'s entries are there, build `b`'s are gone.
    let dir = tempfile::tempdir().unwrap();
    let mut reader = client(dir.path(), "c");
    for (n, found) in [(3, true), (13, false)] {
        reader.get(i64::from(n), support::action(n));
        let answer = reader.read().unwrap();
        assert_eq!(answer["DiskPath"].is_string(), found, "entry {n}: {answer}");
    }
    reader.close(100);
}
