use super::*;
use std::os::unix::fs::symlink;

fn age(path: &Path) {
    let old = SystemTime::now() - Duration::from_secs(7200);
    File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(old)
        .unwrap();
}

#[test]
fn the_sweep_does_not_follow_a_symlinked_directory() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    fs::create_dir(&victim).unwrap();
    fs::write(victim.join("precious"), b"x").unwrap();
    age(&victim.join("precious"));
    let tmp = dir.path().join("tmp");
    symlink(&victim, &tmp).unwrap();
    assert!(remove_older_than(&tmp, Duration::from_secs(3600)).is_err());
    assert!(victim.join("precious").exists());
}

#[test]
fn the_sweep_removes_links_not_their_targets() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join("tmp");
    fs::create_dir(&tmp).unwrap();
    let victim = dir.path().join("precious");
    fs::write(&victim, b"x").unwrap();
    age(&victim);
    fs::write(tmp.join("stale"), b"x").unwrap();
    age(&tmp.join("stale"));
    fs::write(tmp.join("young"), b"x").unwrap();
    symlink(&victim, tmp.join("link")).unwrap();
    // A link's own time is now, so it stays; its target is never touched.
    assert_eq!(
        remove_older_than(&tmp, Duration::from_secs(3600)).unwrap(),
        1
    );
    assert!(victim.exists());
    assert!(tmp.join("young").exists());
}

#[test]
fn only_real_shard_directories_stay() {
    let dir = tempfile::tempdir().unwrap();
    let shards = dir.path().join("o");
    fs::create_dir_all(shards.join("ab")).unwrap();
    let elsewhere = dir.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    fs::write(elsewhere.join("kept"), b"x").unwrap();
    symlink(&elsewhere, shards.join("cd")).unwrap();
    fs::write(shards.join("ef"), b"x").unwrap();
    assert_eq!(remove_all_but_directories(&shards).unwrap(), 2);
    let left: Vec<_> = fs::read_dir(&shards)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec!["ab"]);
    assert!(elsewhere.join("kept").exists());
    assert!(remove_all_but_directories(&shards.join("cd")).is_err());
}

#[test]
fn only_regular_files_open() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    fs::write(&file, b"x").unwrap();
    symlink(&file, dir.path().join("link")).unwrap();
    let fifo = dir.path().join("fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    assert!(open_regular(&file).unwrap().is_some());
    assert!(open_regular(&dir.path().join("link")).unwrap().is_none());
    assert!(open_regular(&fifo).unwrap().is_none());
    assert!(open_regular(dir.path()).unwrap().is_none());
    assert!(open_regular(&dir.path().join("missing")).unwrap().is_none());
    assert_eq!(regular_len(&file).unwrap(), Some(1));
    assert_eq!(regular_len(&dir.path().join("link")).unwrap(), None);
    assert_eq!(regular_len(&fifo).unwrap(), None);
}

#[test]
fn a_symlink_in_place_of_a_directory_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = dir.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    let shard = dir.path().join("o").join("ab");
    fs::create_dir(dir.path().join("o")).unwrap();
    symlink(&elsewhere, &shard).unwrap();
    real_dir(&shard).unwrap();
    assert!(fs::symlink_metadata(&shard).unwrap().is_dir());
    assert!(elsewhere.exists());
    let deep = dir.path().join("x").join("y");
    real_dir(&deep).unwrap();
    assert_eq!(
        fs::metadata(&deep).unwrap().permissions().mode() & 0o777,
        0o700
    );
}

#[test]
fn group_or_world_writable_directories_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    private_dir(&cache, "cache directory", Links::Refuse).unwrap();
    assert_eq!(
        fs::metadata(&cache).unwrap().permissions().mode() & 0o777,
        0o700
    );
    fs::set_permissions(&cache, fs::Permissions::from_mode(0o777)).unwrap();
    let err = check_private_dir(&cache, "cache directory", Links::Follow).unwrap_err();
    assert!(matches!(err, UntrustedDir::Writable { .. }), "{err}");
    assert!(err.to_string().contains("chmod go-w"), "{err}");
    fs::set_permissions(&cache, fs::Permissions::from_mode(0o755)).unwrap();
    check_private_dir(&cache, "cache directory", Links::Follow).unwrap();
    let link = dir.path().join("link");
    symlink(&cache, &link).unwrap();
    check_private_dir(&link, "cache directory", Links::Follow).unwrap();
    assert!(matches!(
        check_private_dir(&link, "cache directory", Links::Refuse),
        Err(UntrustedDir::Symlink { .. })
    ));
}
