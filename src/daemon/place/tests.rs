//! The daemon's place: which settings split daemons, where sockets go when paths are long,
//! and that binding, connecting, the records and the log keep to their rules. The tests run
//! as root here, so another user is played by chowning files to uid 12345.

use std::collections::HashSet;
use std::os::unix::fs::{lchown, symlink};
use std::time::Duration;

use super::*;
use crate::config::{Fraction, LocalDirs, NamespacePlan, PrefetchConfig, RemoteConfig};
use crate::ids::Namespace;
use crate::local::trim::TrimPolicy;
use crate::store::azblob::AzblobConfig;
use crate::store::gcs::GcsConfig;
use crate::store::http::HttpConfig;
use crate::store::s3::S3Config;

const STRANGER: u32 = 12345;

fn no_env(_: &str) -> Option<String> {
    None
}

/// An environment of these variables only.
fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

fn ns(name: &str) -> Namespace {
    Namespace::parse(name).unwrap()
}

fn s3() -> S3Config {
    S3Config {
        bucket: "bucket".into(),
        prefix: "ci/go".into(),
        endpoint: Some("http://127.0.0.1:9000".into()),
        region: Some("eu-west-1".into()),
        force_path_style: true,
        instance_metadata: false,
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(10),
        static_credentials: None,
    }
}

fn http() -> HttpConfig {
    HttpConfig {
        url: "http://cache:8321".into(),
        token: Some("token".into()),
        ca_file: None,
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(10),
        namespace: None,
    }
}

fn config(store: StoreConfig) -> Config {
    Config {
        dirs: LocalDirs {
            cache_dir: "/home/u/.cache/goremotecache/cache".into(),
            lock_dir: "/home/u/.cache/goremotecache/locks".into(),
            default_base: None,
            lock_type: LockType::Fslock,
            trust_cache_dir: false,
        },
        verify_hits: false,
        debug: false,
        stats: false,
        stats_file: None,
        metrics_push: None,
        step_summary: None,
        log_file: None,
        trim: Some(TrimPolicy {
            max_age: Duration::from_secs(5 * 86400),
            max_size: None,
        }),
        remote: Some(RemoteConfig {
            store,
            namespaces: NamespacePlan {
                own: Some(ns("team")),
                reads: vec![ns("main"), ns("release")],
            },
            mode: RemoteMode::ReadWrite,
            prefetch: Some(PrefetchConfig {
                key: None,
                concurrency: 16,
                max_bytes: 1 << 30,
                max_entries: 1000,
            }),
            upload_wait: Duration::from_secs(30),
            upload_concurrency: 8,
            upload_queue: 1000,
            timeout: Duration::from_secs(10),
            max_entry_size: 1 << 30,
            upload_min_size: 0,
            fault_rate: Default::default(),
            instant_misses: Some(crate::config::DEFAULT_INSTANT_MISS_AGE),
        }),
    }
}

fn remote(config: &mut Config) -> &mut RemoteConfig {
    config.remote.as_mut().unwrap()
}

fn s3_of(config: &mut Config) -> &mut S3Config {
    match &mut remote(config).store {
        StoreConfig::S3(s3) => s3,
        _ => panic!("not S3"),
    }
}

fn http_of(config: &mut Config) -> &mut HttpConfig {
    match &mut remote(config).store {
        StoreConfig::Http(http) => http,
        _ => panic!("not HTTP"),
    }
}

type Change = (&'static str, fn(&mut Config));

#[test]
fn a_fingerprint_is_stable_and_16_hex() {
    let fp = Fingerprint::of_with_env(&config(StoreConfig::S3(s3())), &no_env);
    assert_eq!(
        fp,
        Fingerprint::of_with_env(&config(StoreConfig::S3(s3())), &no_env)
    );
    assert!(is_fingerprint(fp.as_str()), "{fp}");
    assert_eq!(fp.to_string(), fp.as_str());
}

#[test]
fn every_shared_setting_changes_the_fingerprint() {
    let changes: &[Change] = &[
        ("cache_dir", |c| c.dirs.cache_dir = "/other/cache".into()),
        ("lock_dir", |c| c.dirs.lock_dir = "/other/locks".into()),
        ("lock_type", |c| c.dirs.lock_type = LockType::Memory),
        ("verify_hits", |c| c.verify_hits = true),
        ("no remote", |c| c.remote = None),
        ("http", |c| remote(c).store = StoreConfig::Http(http())),
        ("bucket", |c| s3_of(c).bucket = "other".into()),
        ("prefix", |c| s3_of(c).prefix = "ci/other".into()),
        ("endpoint", |c| s3_of(c).endpoint = None),
        ("region", |c| s3_of(c).region = Some("us-east-1".into())),
        ("path style", |c| s3_of(c).force_path_style = false),
        ("instance metadata", |c| s3_of(c).instance_metadata = true),
        ("static credentials", |c| {
            s3_of(c).static_credentials =
                Some(crate::store::s3::S3Credentials::new("key", "secret"))
        }),
        ("namespace", |c| {
            remote(c).namespaces.own = Some(ns("other"))
        }),
        ("no namespace", |c| remote(c).namespaces.own = None),
        ("read order", |c| remote(c).namespaces.reads.reverse()),
        ("fewer reads", |c| remote(c).namespaces.reads.truncate(1)),
        ("mode", |c| remote(c).mode = RemoteMode::ReadOnly),
        ("max_entry_size", |c| remote(c).max_entry_size = 1 << 20),
        ("upload_min_size", |c| remote(c).upload_min_size = 4096),
        ("fault_rate", |c| remote(c).fault_rate = Fraction(0.5)),
    ];
    let base = config(StoreConfig::S3(s3()));
    let mut seen = HashSet::from([Fingerprint::of_with_env(&base, &no_env)]);
    for (name, change) in changes {
        let mut changed = base.clone();
        change(&mut changed);
        assert!(
            seen.insert(Fingerprint::of_with_env(&changed, &no_env)),
            "{name} did not change the fingerprint"
        );
    }

    let http_changes: &[Change] = &[
        ("url", |c| http_of(c).url = "http://other:8321".into()),
        ("token", |c| http_of(c).token = Some("other".into())),
        ("no token", |c| http_of(c).token = None),
        ("ca_file", |c| {
            http_of(c).ca_file = Some("/etc/ca.pem".into())
        }),
        ("http namespace", |c| http_of(c).namespace = Some(ns("x"))),
    ];
    let base = config(StoreConfig::Http(http()));
    let mut seen = HashSet::from([Fingerprint::of_with_env(&base, &no_env)]);
    for (name, change) in http_changes {
        let mut changed = base.clone();
        change(&mut changed);
        assert!(
            seen.insert(Fingerprint::of_with_env(&changed, &no_env)),
            "{name} did not change the fingerprint"
        );
    }
}

fn gcs() -> GcsConfig {
    GcsConfig {
        bucket: "g".into(),
        prefix: "ci".into(),
        endpoint: None,
        anonymous: false,
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(10),
    }
}

fn azblob() -> AzblobConfig {
    AzblobConfig {
        container: "c".into(),
        prefix: "ci".into(),
        account: Some("acct".into()),
        endpoint: None,
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(10),
        static_key: None,
    }
}

#[test]
fn every_gcs_and_azure_setting_and_credential_variable_changes_the_fingerprint() {
    let changes: &[Change] = &[
        ("gcs", |c| remote(c).store = StoreConfig::Gcs(gcs())),
        ("azblob", |c| {
            remote(c).store = StoreConfig::Azblob(azblob())
        }),
        ("gcs bucket", |c| {
            remote(c).store = StoreConfig::Gcs(GcsConfig {
                bucket: "other".into(),
                ..gcs()
            })
        }),
        ("gcs prefix", |c| {
            remote(c).store = StoreConfig::Gcs(GcsConfig {
                prefix: "other".into(),
                ..gcs()
            })
        }),
        ("gcs endpoint", |c| {
            remote(c).store = StoreConfig::Gcs(GcsConfig {
                endpoint: Some("http://127.0.0.1:4443".into()),
                ..gcs()
            })
        }),
        ("gcs anonymous", |c| {
            remote(c).store = StoreConfig::Gcs(GcsConfig {
                anonymous: true,
                ..gcs()
            })
        }),
        ("azblob container", |c| {
            remote(c).store = StoreConfig::Azblob(AzblobConfig {
                container: "other".into(),
                ..azblob()
            })
        }),
        ("azblob prefix", |c| {
            remote(c).store = StoreConfig::Azblob(AzblobConfig {
                prefix: "other".into(),
                ..azblob()
            })
        }),
        ("azblob account", |c| {
            remote(c).store = StoreConfig::Azblob(AzblobConfig {
                account: None,
                ..azblob()
            })
        }),
        ("azblob endpoint", |c| {
            remote(c).store = StoreConfig::Azblob(AzblobConfig {
                endpoint: Some("http://127.0.0.1:10000/devstoreaccount1".into()),
                ..azblob()
            })
        }),
        ("azblob key", |c| {
            remote(c).store = StoreConfig::Azblob(AzblobConfig {
                static_key: Some("a2V5".into()),
                ..azblob()
            })
        }),
    ];
    let base = config(StoreConfig::S3(s3()));
    let mut seen = HashSet::from([Fingerprint::of_with_env(&base, &no_env)]);
    for (name, change) in changes {
        let mut changed = base.clone();
        change(&mut changed);
        assert!(
            seen.insert(Fingerprint::of_with_env(&changed, &no_env)),
            "{name} did not change the fingerprint"
        );
    }
    for store in [StoreConfig::Gcs(gcs()), StoreConfig::Azblob(azblob())] {
        let config = config(store);
        let mut seen = HashSet::from([Fingerprint::of_with_env(&config, &no_env)]);
        for name in ["GOOGLE_APPLICATION_CREDENTIALS", "AZURE_STORAGE_KEY"] {
            let env = env_of(&[(name, "a")]);
            assert!(
                seen.insert(Fingerprint::of_with_env(&config, &env)),
                "{name} did not change the fingerprint"
            );
        }
    }
}

#[test]
fn every_credential_variable_changes_an_s3_fingerprint() {
    let config = config(StoreConfig::S3(s3()));
    let mut seen = HashSet::from([Fingerprint::of_with_env(&config, &no_env)]);
    for name in CREDENTIAL_VARS {
        for value in ["", "a", "b"] {
            let env = env_of(&[(name, value)]);
            assert!(
                seen.insert(Fingerprint::of_with_env(&config, &env)),
                "{name}={value:?} did not change the fingerprint"
            );
        }
    }
    // Unrelated variables do not.
    let env = env_of(&[("PATH", "/bin"), ("HOME", "/root")]);
    assert_eq!(
        Fingerprint::of_with_env(&config, &env),
        Fingerprint::of_with_env(&config, &no_env)
    );
}

#[test]
fn credentials_do_not_split_http_daemons() {
    let config = config(StoreConfig::Http(http()));
    let env = env_of(&[("AWS_SESSION_TOKEN", "new")]);
    assert_eq!(
        Fingerprint::of_with_env(&config, &env),
        Fingerprint::of_with_env(&config, &no_env)
    );
}

#[test]
fn per_session_options_keep_the_fingerprint() {
    let changes: &[Change] = &[
        ("debug", |c| c.debug = true),
        ("stats", |c| c.stats = true),
        ("stats_file", |c| c.stats_file = Some("/tmp/stats".into())),
        ("trim", |c| c.trim = None),
        ("trust", |c| c.dirs.trust_cache_dir = true),
        ("prefetch off", |c| remote(c).prefetch = None),
        ("prefetch key", |c| {
            remote(c).prefetch.as_mut().unwrap().key = Some("k".into())
        }),
        ("prefetch concurrency", |c| {
            remote(c).prefetch.as_mut().unwrap().concurrency = 1
        }),
        ("upload_wait", |c| remote(c).upload_wait = Duration::ZERO),
        ("upload_concurrency", |c| remote(c).upload_concurrency = 1),
        ("upload_queue", |c| remote(c).upload_queue = 1),
        ("timeout", |c| remote(c).timeout = Duration::from_secs(1)),
        ("s3 timeouts", |c| {
            s3_of(c).connect_timeout = Duration::from_secs(1);
            s3_of(c).request_timeout = Duration::from_secs(1);
        }),
    ];
    let base = config(StoreConfig::S3(s3()));
    let fp = Fingerprint::of_with_env(&base, &no_env);
    for (name, change) in changes {
        let mut changed = base.clone();
        change(&mut changed);
        assert_eq!(
            Fingerprint::of_with_env(&changed, &no_env),
            fp,
            "{name} changed the fingerprint"
        );
    }
}

fn fingerprint(n: u8) -> Fingerprint {
    let mut config = config(StoreConfig::S3(s3()));
    remote(&mut config).max_entry_size = u64::from(n);
    Fingerprint::of_with_env(&config, &no_env)
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

/// A directory in `parent` whose path is `len` bytes long.
fn dir_of_len(parent: &Path, len: usize) -> PathBuf {
    let name_len = len - parent.as_os_str().len() - 1;
    let dir = parent.join("d".repeat(name_len));
    assert_eq!(dir.as_os_str().len(), len);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// A place for fingerprint 1 in a cache directory of its own, with a short path.
fn short_place(tmp: &Path) -> Place {
    Place::new(&tmp.join("cache"), fingerprint(1), None, false, &no_env).unwrap()
}

#[test]
fn the_socket_is_in_the_daemon_directory_by_default() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let fp = fingerprint(1);
    let place = Place::new(&cache, fp.clone(), None, false, &no_env).unwrap();
    let dir = cache.join("daemon");
    assert_eq!(place.dir, dir);
    assert_eq!(place.socket, dir.join(format!("{fp}.sock")));
    assert_eq!(place.lock, dir.join(format!("{fp}.lock")));
    assert_eq!(place.log, dir.join(format!("{fp}.log")));
    assert_eq!(place.record, dir.join(format!("{fp}.json")));
    assert_eq!(place.fingerprint, fp);
    assert_eq!(mode(&dir), 0o700);

    let given = tmp.path().join("my.sock");
    let place = Place::new(&cache, fp, Some(&given), false, &no_env).unwrap();
    assert_eq!(place.socket, given);
}

#[test]
fn a_daemon_directory_others_can_write_is_refused_unless_trusted() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    fs::create_dir_all(cache.join("daemon")).unwrap();
    fs::set_permissions(cache.join("daemon"), Permissions::from_mode(0o775)).unwrap();
    let err = Place::new(&cache, fingerprint(1), None, false, &no_env).unwrap_err();
    assert!(
        matches!(err, PlaceError::Untrusted(UntrustedDir::Writable { .. })),
        "{err}"
    );
    Place::new(&cache, fingerprint(1), None, true, &no_env).unwrap();

    let linked = tmp.path().join("linked");
    fs::create_dir_all(&linked).unwrap();
    symlink(tmp.path(), linked.join("daemon")).unwrap();
    let err = Place::new(&linked, fingerprint(1), None, false, &no_env).unwrap_err();
    assert!(
        matches!(err, PlaceError::Untrusted(UntrustedDir::Symlink { .. })),
        "{err}"
    );
}

#[test]
fn a_long_cache_dir_puts_the_socket_in_xdg_runtime_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = dir_of_len(tmp.path(), 90);
    let runtime = tmp.path().join("run");
    create_private_dir_all(&runtime).unwrap();
    let env = env_of(&[("XDG_RUNTIME_DIR", runtime.to_str().unwrap())]);
    let place = Place::new(&cache, fingerprint(1), None, false, &env).unwrap();
    assert_eq!(
        place.socket.parent(),
        Some(runtime.join("goremotecache").as_path())
    );
    assert_eq!(mode(&runtime.join("goremotecache")), 0o700);
    let name = place.socket.file_name().unwrap().to_str().unwrap();
    let hash = name.strip_suffix(".sock").unwrap();
    assert!(
        is_fingerprint(hash) && hash != fingerprint(1).as_str(),
        "{name}"
    );
    // The record stays in the cache's daemon directory.
    assert_eq!(place.record.parent(), Some(cache.join("daemon").as_path()));

    // Another cache directory with the same settings gets another socket.
    let other = dir_of_len(tmp.path(), 91);
    let other = Place::new(&other, fingerprint(1), None, false, &env).unwrap();
    assert_ne!(other.socket, place.socket);
}

#[test]
fn a_long_cache_dir_without_xdg_runtime_dir_puts_the_socket_in_the_temp_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = dir_of_len(tmp.path(), 120);
    let temp = tmp.path().join("t");
    fs::create_dir(&temp).unwrap();
    let env = env_of(&[("TMPDIR", temp.to_str().unwrap())]);
    let place = Place::new(&cache, fingerprint(1), None, false, &env).unwrap();
    let dir = temp.join(format!("goremotecache-{}", euid()));
    assert_eq!(place.socket.parent(), Some(dir.as_path()));
    assert_eq!(mode(&dir), 0o700);

    // An XDG_RUNTIME_DIR that is not ours, or not absolute, is passed over.
    let runtime = tmp.path().join("run");
    fs::create_dir(&runtime).unwrap();
    lchown(&runtime, Some(STRANGER), None).unwrap();
    for xdg in [runtime.to_str().unwrap(), "run"] {
        let env = env_of(&[("XDG_RUNTIME_DIR", xdg), ("TMPDIR", temp.to_str().unwrap())]);
        let again = Place::new(&cache, fingerprint(1), None, false, &env).unwrap();
        assert_eq!(again.socket, place.socket);
    }
}

#[test]
fn a_fallback_directory_others_can_write_or_reach_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = dir_of_len(tmp.path(), 120);
    let temp = tmp.path().join("t");
    let dir = temp.join(format!("goremotecache-{}", euid()));
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, Permissions::from_mode(0o770)).unwrap();
    let env = env_of(&[("TMPDIR", temp.to_str().unwrap())]);
    let err = Place::new(&cache, fingerprint(1), None, false, &env).unwrap_err();
    assert!(
        matches!(err, PlaceError::Untrusted(UntrustedDir::Writable { .. })),
        "{err}"
    );
    // --trust-cache-dir does not cover it.
    assert!(Place::new(&cache, fingerprint(1), None, true, &env).is_err());

    fs::set_permissions(&dir, Permissions::from_mode(0o700)).unwrap();
    lchown(&dir, Some(STRANGER), None).unwrap();
    let err = Place::new(&cache, fingerprint(1), None, false, &env).unwrap_err();
    assert!(
        matches!(err, PlaceError::Untrusted(UntrustedDir::Owner { .. })),
        "{err}"
    );

    fs::remove_dir(&dir).unwrap();
    symlink(tmp.path(), &dir).unwrap();
    let err = Place::new(&cache, fingerprint(1), None, false, &env).unwrap_err();
    assert!(
        matches!(err, PlaceError::Untrusted(UntrustedDir::Symlink { .. })),
        "{err}"
    );
}

#[test]
fn a_socket_path_too_long_everywhere_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = dir_of_len(tmp.path(), 120);
    let temp = dir_of_len(&tmp.path().join("t"), 100);
    let env = env_of(&[("TMPDIR", temp.to_str().unwrap())]);
    let err = Place::new(&cache, fingerprint(1), None, false, &env).unwrap_err();
    assert!(matches!(err, PlaceError::TooLong { .. }), "{err}");
    assert!(err.to_string().contains("--socket"), "{err}");

    let given = tmp.path().join("s".repeat(120));
    let err = Place::new(tmp.path(), fingerprint(1), Some(&given), false, &no_env).unwrap_err();
    assert!(matches!(err, PlaceError::TooLong { path } if path == given));

    // 107 bytes is the longest that binds.
    let given = dir_of_len(tmp.path(), 100).join("a.sock");
    assert_eq!(given.as_os_str().len(), MAX_SOCKET_PATH);
    let place = Place::new(tmp.path(), fingerprint(1), Some(&given), false, &no_env).unwrap();
    drop(bind(&place).unwrap());
}

/// Binds `place` again after this process let go of its lock. A child process that another
/// test starts at that moment holds a copy of the lock's descriptor from its fork until it
/// runs its program (the descriptor is close-on-exec), and a `flock` stays taken while any
/// copy is open; so `Taken` is waited out for a moment. (A daemon binds once per process.)
fn bind_again(place: &Place) -> Bound {
    let start = std::time::Instant::now();
    loop {
        match bind(place) {
            Err(PlaceError::Taken { .. }) if start.elapsed() < Duration::from_secs(5) => {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other.unwrap(),
        }
    }
}

#[test]
fn bind_makes_a_private_socket_and_a_record() {
    let tmp = tempfile::tempdir().unwrap();
    let place = short_place(tmp.path());
    let bound = bind(&place).unwrap();
    let meta = fs::symlink_metadata(&place.socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(mode(&place.socket), 0o600);
    assert_eq!(mode(&place.record), 0o600);
    assert_eq!(
        read_record(&place.record),
        Some(Record {
            pid: std::process::id(),
            socket: place.socket.clone(),
            fingerprint: place.fingerprint.to_string(),
        })
    );
    let err = bind(&place).unwrap_err();
    assert!(
        matches!(err, PlaceError::Taken { pid: Some(pid) } if pid == std::process::id()),
        "{err}"
    );
    // The lost race changed nothing.
    assert!(is_our_socket(&place.socket));

    drop(bound);
    assert!(!place.socket.exists());
    assert!(!place.record.exists());
    assert!(place.lock.exists());
    drop(bind_again(&place));
}

#[test]
fn a_bound_place_can_be_taken_apart_for_tokio() {
    let tmp = tempfile::tempdir().unwrap();
    let place = short_place(tmp.path());
    let Bound { listener, hold } = bind(&place).unwrap();
    drop(listener);
    assert!(matches!(bind(&place), Err(PlaceError::Taken { .. })));
    drop(hold);
    assert!(!place.socket.exists());
    drop(bind_again(&place));
}

#[test]
fn a_dead_daemons_socket_is_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let place = short_place(tmp.path());
    // A daemon killed before it could clean up: its socket file stays, nothing listens.
    drop(UnixListener::bind(&place.socket).unwrap());
    assert!(is_our_socket(&place.socket));
    let bound = bind(&place).unwrap();
    connect(&place.socket).unwrap();
    drop(bound);
}

#[test]
fn bind_leaves_alone_what_is_not_a_dead_socket_of_ours() {
    let tmp = tempfile::tempdir().unwrap();
    let place = short_place(tmp.path());

    fs::write(&place.socket, b"precious").unwrap();
    let err = bind(&place).unwrap_err();
    assert!(
        matches!(
            err,
            PlaceError::Occupied {
                what: "a regular file",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(fs::read(&place.socket).unwrap(), b"precious");
    fs::remove_file(&place.socket).unwrap();

    symlink(tmp.path(), &place.socket).unwrap();
    let err = bind(&place).unwrap_err();
    assert!(
        matches!(
            err,
            PlaceError::Occupied {
                what: "a symlink",
                ..
            }
        ),
        "{err}"
    );
    fs::remove_file(&place.socket).unwrap();

    drop(UnixListener::bind(&place.socket).unwrap());
    lchown(&place.socket, Some(STRANGER), None).unwrap();
    let err = bind(&place).unwrap_err();
    assert!(
        matches!(err, PlaceError::Foreign { uid: STRANGER, .. }),
        "{err}"
    );
    fs::remove_file(&place.socket).unwrap();

    // Something alive there that does not hold this place's lock: a daemon of other
    // settings given the same --socket.
    let live = UnixListener::bind(&place.socket).unwrap();
    let err = bind(&place).unwrap_err();
    assert!(matches!(err, PlaceError::InUse { .. }), "{err}");
    assert!(is_our_socket(&place.socket));
    drop(live);
    // The failed binds left no record, and let go of the lock.
    assert!(!place.record.exists());
    fs::remove_file(&place.socket).unwrap();
    drop(bind_again(&place));
}

#[test]
fn leaving_keeps_a_record_and_socket_that_are_no_longer_ours() {
    let tmp = tempfile::tempdir().unwrap();
    let place = short_place(tmp.path());
    let bound = bind(&place).unwrap();
    let theirs = Record {
        pid: 1,
        socket: place.socket.clone(),
        fingerprint: place.fingerprint.to_string(),
    };
    fs::write(&place.record, serde_json::to_vec(&theirs).unwrap()).unwrap();
    fs::remove_file(&place.socket).unwrap();
    let other = UnixListener::bind(&place.socket).unwrap();
    drop(bound);
    assert_eq!(read_record(&place.record), Some(theirs));
    assert!(is_our_socket(&place.socket));
    drop(other);
}

#[test]
fn connect_finds_a_bound_daemon() {
    let tmp = tempfile::tempdir().unwrap();
    let place = short_place(tmp.path());
    let bound = bind(&place).unwrap();
    let mut client = connect(&place.socket).unwrap();
    let (mut server, _) = bound.listener.accept().unwrap();
    assert!(stream_peer_is_us(&server).unwrap());
    assert!(stream_peer_is_us(&client).unwrap());
    assert!(peer_is_us(euid()));
    assert!(!peer_is_us(STRANGER));
    client.write_all(b"ping").unwrap();
    let mut got = [0; 4];
    server.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
}

#[test]
fn connect_says_not_running_when_nothing_listens() {
    let tmp = tempfile::tempdir().unwrap();
    let place = short_place(tmp.path());
    assert!(matches!(
        connect(&place.socket),
        Err(PlaceError::NotRunning)
    ));
    drop(UnixListener::bind(&place.socket).unwrap());
    assert!(matches!(
        connect(&place.socket),
        Err(PlaceError::NotRunning)
    ));
}

#[test]
fn connect_refuses_what_is_not_our_socket() {
    let tmp = tempfile::tempdir().unwrap();
    let place = short_place(tmp.path());
    let bound = bind(&place).unwrap();

    lchown(&place.socket, Some(STRANGER), None).unwrap();
    let err = connect(&place.socket).unwrap_err();
    assert!(
        matches!(&err, PlaceError::Foreign { path, uid: STRANGER } if *path == place.socket),
        "{err}"
    );
    assert!(err.to_string().contains("12345"), "{err}");
    lchown(&place.socket, Some(euid()), None).unwrap();

    let link = tmp.path().join("link.sock");
    symlink(&place.socket, &link).unwrap();
    let err = connect(&link).unwrap_err();
    assert!(
        matches!(
            err,
            PlaceError::Occupied {
                what: "a symlink",
                ..
            }
        ),
        "{err}"
    );

    let file = tmp.path().join("file.sock");
    fs::write(&file, b"").unwrap();
    let err = connect(&file).unwrap_err();
    assert!(
        matches!(
            err,
            PlaceError::Occupied {
                what: "a regular file",
                ..
            }
        ),
        "{err}"
    );
    connect(&place.socket).unwrap();
    drop(bound);
}

/// A pid no process can have: above the kernel's largest `pid_max`.
const DEAD_PID: u32 = 1 << 23;

fn write_json(path: &Path, record: &Record) {
    fs::write(path, serde_json::to_vec(record).unwrap()).unwrap();
}

#[test]
fn records_lists_the_running_daemons() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    assert_eq!(records(&cache), []);
    let one = Place::new(&cache, fingerprint(1), None, false, &no_env).unwrap();
    let given = tmp.path().join("given.sock");
    let two = Place::new(&cache, fingerprint(2), Some(&given), false, &no_env).unwrap();
    let _one = bind(&one).unwrap();
    let _two = bind(&two).unwrap();
    // Garbage, a record under the wrong name, and files that are not records are skipped,
    // and left alone.
    let garbage = one.dir.join(format!("{}.json", fingerprint(3)));
    fs::write(&garbage, b"{not json").unwrap();
    let misnamed = one.dir.join(format!("{}.json", fingerprint(4)));
    fs::copy(&one.record, &misnamed).unwrap();
    fs::write(one.dir.join("notes.json"), b"{}").unwrap();
    symlink(
        &one.record,
        one.dir.join(format!("{}.json", fingerprint(5))),
    )
    .unwrap();

    let mut want = vec![
        read_record(&one.record).unwrap(),
        read_record(&two.record).unwrap(),
    ];
    want.sort_by(|a, b| a.fingerprint.cmp(&b.fingerprint));
    assert_eq!(records(&cache), want);
    assert_eq!(want.iter().filter(|r| r.socket == given).count(), 1);
    assert!(garbage.exists() && misnamed.exists());
}

#[test]
fn records_removes_a_dead_daemons_record_and_socket() {
    let tmp = tempfile::tempdir().unwrap();
    let place = short_place(tmp.path());
    drop(UnixListener::bind(&place.socket).unwrap());
    write_json(
        &place.record,
        &Record {
            pid: DEAD_PID,
            socket: place.socket.clone(),
            fingerprint: place.fingerprint.to_string(),
        },
    );
    assert_eq!(records(&tmp.path().join("cache")), []);
    assert!(!place.record.exists());
    assert!(!place.socket.exists());
}

#[test]
fn records_keeps_a_dead_record_whose_lock_is_held_and_sockets_elsewhere() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    // A daemon is starting: it holds the lock, and has not yet replaced the old record.
    let place = short_place(tmp.path());
    let bound = bind(&place).unwrap();
    let dead = Record {
        pid: DEAD_PID,
        socket: place.socket.clone(),
        fingerprint: place.fingerprint.to_string(),
    };
    write_json(&place.record, &dead);
    assert_eq!(records(&cache), []);
    assert_eq!(read_record(&place.record), Some(dead));
    assert!(is_our_socket(&place.socket));
    drop(bound);

    // A dead daemon's socket outside the daemon directory is not removed.
    let other = Place::new(&cache, fingerprint(2), None, false, &no_env).unwrap();
    let outside = tmp.path().join("outside.sock");
    drop(UnixListener::bind(&outside).unwrap());
    write_json(
        &other.record,
        &Record {
            pid: DEAD_PID,
            socket: outside.clone(),
            fingerprint: other.fingerprint.to_string(),
        },
    );
    assert_eq!(records(&cache), []);
    assert!(!other.record.exists());
    assert!(is_our_socket(&outside));
}

fn shell(script: &str) -> Vec<OsString> {
    vec!["-c".into(), script.into()]
}

#[test]
fn a_spawned_daemon_writes_stderr_to_a_private_log_and_holds_no_stdout() {
    let tmp = tempfile::tempdir().unwrap();
    let place = short_place(tmp.path());
    // The shell's own stdin and stdout, read where no redirection is in force (dash applies
    // `>&2` in the shell itself around a command).
    let script = "echo out; echo err >&2; in=$(readlink /proc/$$/fd/0); \
                  out=$(readlink /proc/$$/fd/1); echo \"$in $out\" >&2";
    let mut child = spawn_program(Path::new("/bin/sh"), &place.log, &shell(script)).unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(mode(&place.log), 0o600);
    assert_eq!(
        fs::read_to_string(&place.log).unwrap(),
        "err\n/dev/null /dev/null\n"
    );

    // A second start appends, and an existing log open to others is made private.
    fs::set_permissions(&place.log, Permissions::from_mode(0o644)).unwrap();
    let mut child =
        spawn_program(Path::new("/bin/sh"), &place.log, &shell("echo again >&2")).unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(mode(&place.log), 0o600);
    assert!(
        fs::read_to_string(&place.log)
            .unwrap()
            .ends_with("/dev/null\nagain\n")
    );
}

#[test]
fn a_log_past_its_bound_is_set_aside_when_the_next_daemon_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let place = short_place(tmp.path());
    let old = place.log.with_extension("log.old");
    fs::write(&old, "the log before\n").unwrap();
    fs::write(&place.log, vec![b'x'; LOG_MAX as usize]).unwrap();
    // At the bound: appended to.
    let mut child = spawn_program(Path::new("/bin/sh"), &place.log, &shell("echo a >&2")).unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(fs::metadata(&place.log).unwrap().len(), LOG_MAX + 2);
    assert_eq!(fs::read_to_string(&old).unwrap(), "the log before\n");
    // Past it: set aside, replacing the older one, and a new log begins.
    let mut child = spawn_program(Path::new("/bin/sh"), &place.log, &shell("echo b >&2")).unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(fs::read_to_string(&place.log).unwrap(), "b\n");
    assert_eq!(fs::metadata(&old).unwrap().len(), LOG_MAX + 2);
    assert_eq!(mode(&place.log), 0o600);
}

#[test]
fn a_log_that_is_a_symlink_or_not_a_file_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let place = short_place(tmp.path());
    let target = tmp.path().join("elsewhere");
    symlink(&target, &place.log).unwrap();
    let err = spawn_program(Path::new("/bin/sh"), &place.log, &shell("true")).unwrap_err();
    assert!(
        matches!(
            err,
            PlaceError::Occupied {
                what: "a symlink",
                ..
            }
        ),
        "{err}"
    );
    assert!(!target.exists());
    fs::remove_file(&place.log).unwrap();

    fs::create_dir(&place.log).unwrap();
    let err = spawn_daemon(&place, &[]).unwrap_err();
    assert!(
        matches!(err, PlaceError::Io { .. } | PlaceError::Occupied { .. }),
        "{err}"
    );
}
