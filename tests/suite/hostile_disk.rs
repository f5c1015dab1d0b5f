//! The local cache against a hostile machine, through the real binary: directories another
//! user prepared or may write, symlinks and FIFOs planted in the cache, and outputs damaged on
//! disk without a change of size.
//!
//! The tests that need another user run as root (as CI does) and use `setpriv` to act as user
//! 65534 (nobody); as another user they say so and check only what an unprivileged user can
//! set up (a world-writable directory).

use crate::support;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use goremotecache::ids::{ActionId, OutputId};
use serde_json::Value;
use support::{Client, action, bin, make_old, outcome, pseudo_random};

const NOBODY: &str = "65534";

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Runs a shell command as user 65534.
fn as_nobody(script: &str) -> std::process::Output {
    Command::new("setpriv")
        .args([
            "--reuid",
            NOBODY,
            "--regid",
            NOBODY,
            "--clear-groups",
            "sh",
            "-c",
            script,
        ])
        .output()
        .expect("running setpriv")
}

/// Runs the binary as the go command would start it, with stdin closed at once, in an
/// environment where only `env` says where home and the temp directory are. Returns the exit
/// code, stdout and stderr.
fn run(args: &[&str], env: &[(&str, &Path)]) -> (i32, String, String) {
    let mut command = Command::new(bin());
    command
        .args(args)
        .env_remove("XDG_CACHE_HOME")
        .env_remove("GOREMOTECACHE_CACHE_DIR")
        .env_remove("GOREMOTECACHE_LOCK_DIR")
        .envs(env.iter().copied());
    outcome(&mut command)
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

/// A directory that user 65534 can reach: a sticky, world-writable one, like `/tmp`.
fn shared_temp(root: &Path) -> PathBuf {
    fs::set_permissions(root, fs::Permissions::from_mode(0o755)).unwrap();
    let shared = root.join("shared-tmp");
    fs::create_dir(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
    shared
}

#[test]
fn another_users_directories_are_refused_before_the_handshake() {
    if !is_root() {
        eprintln!("not root: the other-user cases need root to act as user {NOBODY}; skipped");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let shared = shared_temp(root.path());
    // A home that is not the user's: the default falls back to the temp directory.
    let foreign_home = root.path().join("foreign-home");
    fs::create_dir(&foreign_home).unwrap();
    std::os::unix::fs::chown(&foreign_home, Some(65534), Some(65534)).unwrap();

    // Another user prepares the default location, with a planted action entry.
    let base = shared.join("goremotecache-0");
    let prepared = as_nobody(&format!(
        "mkdir -p {base}/cache/a/00 {base}/locks && echo planted > {base}/cache/a/00/x",
        base = base.display()
    ));
    assert!(prepared.status.success(), "{prepared:?}");
    let env = [
        ("HOME", foreign_home.as_path()),
        ("TMPDIR", shared.as_path()),
    ];
    let (code, stdout, stderr) = run(&[], &env);
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(stdout, "", "the handshake was written before the refusal");
    assert!(stderr.contains(&base.display().to_string()), "{stderr}");
    assert!(stderr.contains("belongs to user 65534"), "{stderr}");
    assert!(stderr.contains("--trust-cache-dir"), "{stderr}");

    // The same directories named on the command line.
    let cache = base.join("cache");
    let locks = base.join("locks");
    let named = [
        "--cache-dir",
        cache.to_str().unwrap(),
        "--lock-dir",
        locks.to_str().unwrap(),
    ];
    let (code, stdout, stderr) = run(&named, &env);
    assert_eq!((code, stdout.as_str()), (2, ""), "{stderr}");
    assert!(stderr.contains("cache directory"), "{stderr}");
    // A lock directory of another user's is refused too.
    let mine = root.path().join("mine");
    let (code, _, stderr) = run(
        &[
            "--cache-dir",
            mine.to_str().unwrap(),
            "--lock-dir",
            locks.to_str().unwrap(),
        ],
        &env,
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("lock directory"), "{stderr}");
    // clear-local refuses them as well, and deletes nothing.
    let mut clear = named.to_vec();
    clear.insert(0, "clear-local");
    let (code, _, stderr) = run(&clear, &env);
    assert_eq!(code, 2, "{stderr}");
    assert!(cache.join("a/00/x").exists());

    // A deliberate shared set-up gets through.
    let mut trusted = named.to_vec();
    trusted.push("--trust-cache-dir");
    let (code, stdout, stderr) = run(&trusted, &env);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("{\"ID\":0"), "{stdout}");

    // A home that is the user's: the default is the user cache directory, private.
    let home = root.path().join("home");
    fs::create_dir(&home).unwrap();
    let env = [("HOME", home.as_path()), ("TMPDIR", shared.as_path())];
    let mut command = Command::new(bin());
    command
        .env_remove("XDG_CACHE_HOME")
        .env_remove("GOREMOTECACHE_CACHE_DIR")
        .env_remove("GOREMOTECACHE_LOCK_DIR");
    for (key, value) in env {
        command.env(key, value);
    }
    let mut client = Client::spawn(command);
    client.put(1, action(1), b"private");
    assert!(client.read().unwrap()["Err"].is_null());
    client.close(2);
    let base = home.join(".cache/goremotecache");
    for dir in [
        base.clone(),
        base.join("cache"),
        base.join("cache/tmp"),
        base.join("locks"),
    ] {
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    }
    let lock_files: Vec<PathBuf> = files_under(&base.join("locks"))
        .into_iter()
        .filter(|f| !f.ends_with("CACHEDIR.TAG"))
        .collect();
    assert!(!lock_files.is_empty());
    for lock in &lock_files {
        assert_eq!(mode(lock), 0o600, "{}", lock.display());
        // Another user cannot open a lock file to hold it.
        let opened = as_nobody(&format!("exec 3<{}", lock.display()));
        assert!(!opened.status.success(), "user 65534 opened {lock:?}");
    }
    let output = base
        .join("cache/o")
        .join(&OutputId::of(b"private").to_hex()[..2]);
    assert!(
        output.is_dir(),
        "the put did not go to the user cache directory"
    );
}

#[test]
fn directories_that_others_may_write_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("cache");
    let locks = root.path().join("locks");
    for dir in [&cache, &locks] {
        fs::create_dir(dir).unwrap();
    }
    fs::set_permissions(&cache, fs::Permissions::from_mode(0o777)).unwrap();
    let args = |extra: &[&str]| {
        let mut args = vec![
            "--cache-dir".to_string(),
            cache.display().to_string(),
            "--lock-dir".into(),
            locks.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let run_with = |extra: &[&str]| {
        let args = args(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&args, &[])
    };
    let (code, stdout, stderr) = run_with(&[]);
    assert_eq!((code, stdout.as_str()), (2, ""), "{stderr}");
    assert!(stderr.contains("writable by group and others"), "{stderr}");
    assert!(
        stderr.contains(&format!("chmod go-w {}", cache.display())),
        "{stderr}"
    );
    let (code, _, stderr) = run_with(&["--trust-cache-dir"]);
    assert_eq!(code, 0, "{stderr}");

    // Group-writable lock directory: refused with fslock, not used (so fine) with memory.
    fs::set_permissions(&cache, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&locks, fs::Permissions::from_mode(0o770)).unwrap();
    let (code, _, stderr) = run_with(&[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("lock directory"), "{stderr}");
    assert!(stderr.contains("writable by its group"), "{stderr}");
    let (code, _, stderr) = run_with(&["--lock-type", "memory"]);
    assert_eq!(code, 0, "{stderr}");
    // The variable works like the flag.
    let mut command = Command::new(bin());
    command
        .args(args(&[]))
        .env("GOREMOTECACHE_TRUST_CACHE_DIR", "1");
    assert_eq!(outcome(&mut command).0, 0);
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// A client on `dir` that is killed if it ever blocks for a minute (a FIFO opened for
/// reading would block it for good).
fn watched_client(dir: &Path, extra: &[&str]) -> Client {
    let client = Client::on_dir(dir, extra);
    let pid = client.child.id();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(60));
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    });
    client
}

fn action_path(dir: &Path, action: &ActionId) -> PathBuf {
    let hex = action.to_hex();
    dir.join("cache/a").join(&hex[..2]).join(hex)
}

fn output_path(dir: &Path, body: &[u8]) -> PathBuf {
    let hex = OutputId::of(body).to_hex();
    dir.join("cache/o").join(&hex[..2]).join(hex)
}

fn get(client: &mut Client, id: i64, action: ActionId) -> Value {
    client.get(id, action);
    let answer = client
        .read()
        .expect("goremotecache died (or was killed for blocking)");
    assert_eq!(answer["ID"], id, "{answer}");
    answer
}

fn put(client: &mut Client, id: i64, action: ActionId, body: &[u8]) -> Value {
    client.put(id, action, body);
    let answer = client.read().expect("goremotecache died");
    assert!(answer["Err"].is_null(), "{answer}");
    answer
}

fn mkfifo(path: &Path) {
    let _ = fs::remove_file(path);
    let made = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(made.success());
}

#[test]
fn fifos_directories_and_symlinks_in_the_cache_are_misses_that_puts_replace() {
    let dir = tempfile::tempdir().unwrap();
    let body = pseudo_random(7, 5000);
    let a = action(1);
    let mut client = watched_client(dir.path(), &[]);
    put(&mut client, 1, a, &body);
    client.close(2);
    let entry = action_path(dir.path(), &a);
    let output = output_path(dir.path(), &body);
    let outside = dir.path().join("outside");
    fs::write(&outside, &body).unwrap();

    type Plant<'a> = Box<dyn Fn() + 'a>;
    let plants: Vec<(&str, Plant)> = vec![
        ("a FIFO as the action entry", Box::new(|| mkfifo(&entry))),
        ("a FIFO as the output", Box::new(|| mkfifo(&output))),
        (
            "a directory as the output",
            Box::new(|| {
                fs::remove_file(&output).unwrap();
                fs::create_dir_all(output.join("sub")).unwrap();
            }),
        ),
        (
            "a symlink to a right-sized file outside as the output",
            Box::new(|| {
                fs::remove_file(&output).unwrap();
                symlink(&outside, &output).unwrap();
            }),
        ),
        (
            "a symlink as the action entry",
            Box::new(|| {
                let copy = dir.path().join("entry-copy");
                fs::copy(&entry, &copy).unwrap();
                fs::remove_file(&entry).unwrap();
                symlink(&copy, &entry).unwrap();
            }),
        ),
    ];
    for (n, (what, plant)) in plants.iter().enumerate() {
        plant();
        let mut client = watched_client(dir.path(), &[]);
        let answer = get(&mut client, 1, a);
        assert_eq!(answer["Miss"], true, "{what}: {answer}");
        put(&mut client, 2, a, &body);
        let answer = get(&mut client, 3, a);
        assert!(answer["Miss"].is_null(), "{what}: {answer}");
        let path = PathBuf::from(answer["DiskPath"].as_str().unwrap());
        assert_eq!(path, output);
        assert!(fs::symlink_metadata(&path).unwrap().is_file(), "{what}");
        assert!(fs::symlink_metadata(&entry).unwrap().is_file(), "{what}");
        assert_eq!(fs::read(&path).unwrap(), body, "{what}");
        client.close(4 + n as i64);
    }
    assert_eq!(
        fs::read(&outside).unwrap(),
        body,
        "the outside file changed"
    );
}

#[test]
fn symlinked_tmp_and_shard_directories_are_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let body = pseudo_random(8, 3000);
    let a = action(2);
    let mut client = Client::on_dir(dir.path(), &[]);
    put(&mut client, 1, action(9), b"first");
    client.close(2);

    // A stale temporary file in a real tmp/ is swept at start ...
    let tmp = dir.path().join("cache/tmp");
    fs::write(tmp.join("put-stale"), b"x").unwrap();
    make_old(&tmp.join("put-stale"));
    let client = Client::on_dir(dir.path(), &[]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while tmp.join("put-stale").exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!tmp.join("put-stale").exists(), "the sweep did not run");
    client.close(1);

    // A shard directory moved out of the cache and linked back is removed at start: a get
    // does not read an output through it, and what it pointed to is left alone.
    let first_shard = output_path(dir.path(), b"first")
        .parent()
        .unwrap()
        .to_path_buf();
    let moved = dir.path().join("moved-shard");
    fs::rename(&first_shard, &moved).unwrap();
    symlink(&moved, &first_shard).unwrap();
    let mut client = Client::on_dir(dir.path(), &[]);
    assert_eq!(get(&mut client, 1, action(9))["Miss"], true);
    client.close(2);
    assert!(moved.join(OutputId::of(b"first").to_hex()).exists());
    assert!(!first_shard.exists());

    // ... but a tmp/ that is a symlink is replaced, and its target left alone.
    let victim = dir.path().join("victim");
    fs::create_dir(&victim).unwrap();
    fs::write(victim.join("precious"), b"x").unwrap();
    make_old(&victim.join("precious"));
    fs::remove_dir_all(&tmp).unwrap();
    symlink(&victim, &tmp).unwrap();
    let elsewhere = dir.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    let output_shard = output_path(dir.path(), &body)
        .parent()
        .unwrap()
        .to_path_buf();
    let _ = fs::remove_dir_all(&output_shard);
    symlink(&elsewhere, &output_shard).unwrap();
    let entry_shard = action_path(dir.path(), &a).parent().unwrap().to_path_buf();
    let _ = fs::remove_dir_all(&entry_shard);
    symlink(&elsewhere, &entry_shard).unwrap();

    let mut client = Client::on_dir(dir.path(), &[]);
    put(&mut client, 1, a, &body);
    let answer = get(&mut client, 2, a);
    assert!(answer["Miss"].is_null(), "{answer}");
    client.close(3);
    std::thread::sleep(Duration::from_millis(500));
    assert!(victim.join("precious").exists(), "the sweep followed tmp/");
    assert_eq!(
        fs::read_dir(&elsewhere).unwrap().count(),
        0,
        "written outside"
    );
    for real in [&tmp, &output_shard, &entry_shard] {
        assert!(fs::symlink_metadata(real).unwrap().is_dir(), "{real:?}");
    }
}

#[test]
fn a_damaged_output_of_the_right_size_is_repaired_by_a_put() {
    let dir = tempfile::tempdir().unwrap();
    let body = pseudo_random(9, 40_000);
    let a = action(3);
    let mut client = Client::on_dir(dir.path(), &[]);
    put(&mut client, 1, a, &body);
    client.close(2);
    // A power loss on some file systems leaves a right-sized file of zeros.
    let output = output_path(dir.path(), &body);
    fs::write(&output, vec![0u8; body.len()]).unwrap();
    let inode = fs::metadata(&output).unwrap().ino();

    // By default a hit is checked by size only; --verify-hits hashes it.
    let mut client = Client::on_dir(dir.path(), &["--verify-hits"]);
    assert_eq!(get(&mut client, 1, a)["Miss"], true);
    client.close(2);
    let mut client = Client::on_dir(dir.path(), &[]);
    assert!(get(&mut client, 1, a)["Miss"].is_null());
    // The go command, finding the output wrong, builds again and puts: the file is replaced.
    put(&mut client, 2, a, &body);
    assert_eq!(fs::read(&output).unwrap(), body);
    assert_ne!(
        fs::metadata(&output).unwrap().ino(),
        inode,
        "rewritten in place, not replaced by a rename"
    );
    client.close(3);
    let mut client = Client::on_dir(dir.path(), &["--verify-hits"]);
    assert!(get(&mut client, 1, a)["Miss"].is_null());
    client.close(2);
}
