//! Who may use a daemon: its socket is its user's alone (mode 0600), and a socket or a daemon
//! directory that another user owns is never used: connect runs the session by itself and
//! says why, and `daemon` refuses to serve there. The tests give files to another user, so they
//! need root (as CI runs them); without it they fail and say so.

use crate::support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use support::s3::S3Server;

use super::{Foreground, Project, WITHOUT_DAEMON, times_without_daemon};

/// A user ID that no test process runs as.
const OTHER_USER: u32 = 4242;

fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "these tests give a socket and a directory to another user (chown): run them as root, as CI does"
    );
}

/// The reason connect gave for running without the daemon.
fn reason(stderr: &str) -> String {
    assert_eq!(
        times_without_daemon(stderr),
        1,
        "connect must say once that it runs without the daemon:\n{stderr}"
    );
    let at = stderr.find(WITHOUT_DAEMON).unwrap() + WITHOUT_DAEMON.len();
    stderr[at..].lines().next().unwrap_or("").to_string()
}

#[test]
fn the_socket_is_private_and_another_users_is_refused() {
    require_root();
    let server = S3Server::start();
    let project = Project::tiny("daemon-socket", &server, "dsocket");
    let daemon = Foreground::start(&project, &[]).expect("daemon starts");
    let socket = daemon.socket.clone();
    let meta = std::fs::symlink_metadata(&socket).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()));
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{socket:?}");
    assert_eq!(meta.uid(), rustix::process::geteuid().as_raw());
    let dir = std::fs::metadata(socket.parent().unwrap()).unwrap();
    assert_eq!(
        dir.permissions().mode() & 0o077,
        0,
        "the daemon directory is open to others"
    );

    // The socket now belongs to another user: connect does not use it.
    std::os::unix::fs::lchown(&socket, Some(OTHER_USER), Some(OTHER_USER)).unwrap();
    let build = project.go(&["build", "./tiny/..."]);
    let stats = build.stats.as_ref().expect("a stats file");
    assert!(stats["daemon"].is_null(), "{stats}");
    let why = reason(&build.stderr());
    assert!(
        why.contains(&socket.display().to_string()),
        "the reason does not name the socket: {why:?}"
    );

    // Nor does a daemon serve there: the first one dies without removing the socket, and the
    // next one finds another user's socket in its place.
    drop(daemon);
    assert!(std::fs::symlink_metadata(&socket).is_ok());
    let (status, stderr) = Foreground::start(&project, &[])
        .err()
        .expect("a daemon served on another user's socket");
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains(&socket.display().to_string()),
        "the refusal does not name the socket: {stderr}"
    );
}

#[test]
fn a_daemon_directory_of_another_user_is_refused() {
    require_root();
    let server = S3Server::start();
    let project = Project::tiny("daemon-dir", &server, "ddir");
    let dir = project.cache_dir.join("daemon");
    std::fs::create_dir_all(&dir).unwrap();
    for path in [&project.cache_dir, &dir] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    std::os::unix::fs::chown(&dir, Some(OTHER_USER), Some(OTHER_USER)).unwrap();

    let (status, stderr) = Foreground::start(&project, &[])
        .err()
        .expect("a daemon served from another user's directory");
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains(&dir.display().to_string()),
        "the refusal does not name the directory: {stderr}"
    );

    let build = project.go(&["build", "./tiny/..."]);
    let stats = build.stats.as_ref().expect("a stats file");
    assert!(stats["daemon"].is_null(), "{stats}");
    let why = reason(&build.stderr());
    assert!(
        why.contains(&dir.display().to_string()),
        "the reason does not name the directory: {why:?}"
    );
}
