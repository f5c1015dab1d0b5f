//! What the module proxy refuses and what it never keeps: paths that do not parse (400),
//! requests without the token (401), and a zip that the upstream cut short.

use super::*;

use std::net::TcpListener;
use std::sync::atomic::{AtomicU8, Ordering};

#[test]
fn paths_that_do_not_parse_are_400_and_reach_no_upstream() {
    let standard = Standard::start(&[]);
    let server = &standard.server;
    for path in [
        "/mod/../etc/passwd",
        "/mod/example.test/../../etc/passwd",
        "/mod/example.test/A/@v/list",
        "/mod/example.test/a/@v/v1.0.0.zip/../x",
        "/mod/example.test/a/@v/v1.0.zip",
        "/mod/example.test/a/@v/v1.0.0.tar",
    ] {
        let (status, body) = server.get_with_token(path);
        assert_eq!(status, 400, "{path}: {}", String::from_utf8_lossy(&body));
    }
    assert_eq!(
        standard.upstream.requests.lock().unwrap().clone(),
        Vec::<String>::new()
    );
    assert_eq!(server.requests("invalid", "bad_request"), 6);
    // The same module, spelled as the go command spells it, is there.
    let (status, body) = server.get_with_token("/mod/example.test/a/@v/list");
    assert_eq!((status, &body[..]), (200, &b"v1.0.0\nv1.1.0\n"[..]));
}

#[test]
fn module_requests_need_the_token_as_bearer_or_basic_password() {
    let layout = Layout::standard();
    let upstream = Upstream::start(&layout);
    let server = ProxyServer::start_private(&upstream.url, &[]);
    let list = "/mod/example.test/a/@v/list";
    let basic = |user: &str, password: &str| {
        use base64::Engine as _;
        let pair = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Authorization: Basic {pair}\r\n")
    };
    for (what, headers) in [
        ("no token", String::new()),
        (
            "a wrong token",
            "Authorization: Bearer wrong-token\r\n".to_owned(),
        ),
        ("a wrong password", basic("x", "wrong-token")),
    ] {
        assert_eq!(server.get(list, &headers).0, 401, "{what}");
    }
    assert_eq!(upstream.requests_for("@v/list"), Vec::<String>::new());
    for (what, headers) in [
        ("bearer", format!("Authorization: Bearer {TOKEN}\r\n")),
        ("basic, any user", basic("anyone", TOKEN)),
    ] {
        let (status, body) = server.get(list, &headers);
        assert_eq!(
            (status, &body[..]),
            (200, &b"v1.0.0\nv1.1.0\n"[..]),
            "{what}"
        );
    }
    // Without the token the go command is refused.
    let without = Machine::new(&server.url(), &upstream.key);
    let out = without.try_go(
        &without.outside(),
        &["list", "-m", "-versions", "example.test/a"],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401 Unauthorized"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The go command sends `.netrc` credentials over https only: a server with TLS (a CA of the
/// test's own, given to the go command in `SSL_CERT_FILE`) and the token in `NETRC`.
#[test]
fn the_go_command_reads_with_the_token_from_netrc_over_tls() {
    let layout = Layout::standard();
    let upstream = Upstream::start(&layout);
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_certificates(certs.path());
    let server = ProxyServer::start_private(
        &upstream.url,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    assert!(server.url().starts_with("https://127.0.0.1:"));
    // The go command matches a netrc `machine` against the URL's host and port
    // (cmd/go/internal/auth: prefixes of `127.0.0.1:PORT/mod/...`): `machine 127.0.0.1`
    // alone would match nothing here.
    let netrc = certs.path().join("netrc");
    std::fs::write(
        &netrc,
        format!("machine {} login x password {TOKEN}\n", server.addr),
    )
    .unwrap();
    let mut machine = Machine::new(&server.url(), &upstream.key);
    machine
        .env
        .push(("SSL_CERT_FILE".into(), ca.to_str().unwrap().into()));
    let refused = machine.try_go(
        &machine.outside(),
        &["list", "-m", "-versions", "example.test/a"],
    );
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("401 Unauthorized"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    machine
        .env
        .push(("NETRC".into(), netrc.to_str().unwrap().into()));
    machine.build_app();
}

/// A certificate for 127.0.0.1 signed by a CA of the test's own, made with openssl; returns
/// the CA's certificate, the server's and its key.
fn make_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = bounded(
            Command::new("openssl").args(args).current_dir(dir),
            GO_BOUND,
        );
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=goremotecache test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(dir.join("ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

/// What [`FaultyUpstream`] does with a request for a zip.
const TRUNCATE: u8 = 0;
const WHOLE: u8 = 1;
const DOWN: u8 = 2;

/// A module proxy over a layout's files that can cut its zips short: it sends the whole
/// `Content-Length` and half the bytes, then closes ([`TRUNCATE`]); or answers whole
/// ([`WHOLE`]); or closes every connection unanswered ([`DOWN`]).
struct FaultyUpstream {
    url: String,
    mode: Arc<AtomicU8>,
}

impl FaultyUpstream {
    fn start(layout: &Path) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let mode = Arc::new(AtomicU8::new(TRUNCATE));
        let (root, modes) = (layout.to_owned(), Arc::clone(&mode));
        // Ends with the test process; each connection is answered once and closed.
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (root, mode) = (root.clone(), modes.load(Ordering::SeqCst));
                std::thread::spawn(move || answer(stream, &root, mode));
            }
        });
        Self { url, mode }
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }
}

fn answer(mut stream: TcpStream, root: &Path, mode: u8) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    if mode == DOWN {
        return;
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split_whitespace().nth(1).unwrap_or("/");
    let file = (!path.contains(".."))
        .then(|| std::fs::read(root.join(path.trim_start_matches('/'))).ok())
        .flatten();
    let Some(body) = file else {
        let _ = stream
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    };
    let sent = if mode == TRUNCATE && path.ends_with(".zip") {
        body.len() / 2
    } else {
        body.len()
    };
    let _ = stream.write_all(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    let _ = stream.write_all(&body[..sent]);
    let _ = stream.flush();
}

#[test]
fn a_zip_the_upstream_cut_short_is_never_stored() {
    let layout = Layout::standard();
    let faulty = FaultyUpstream::start(layout.path());
    let server = ProxyServer::start(&faulty.url, &[], &[]);
    let zip = "/mod/example.test/b/@v/v1.0.0.zip";
    let whole = layout.file("example.test/b/@v/v1.0.0.zip");

    // The go command's download fails (no checksum database here: what is checked is the
    // transfer, and the zip is not the one the go command would accept).
    let mut machine = Machine::new(&server.url(), "off");
    machine
        .env
        .push(("GONOSUMDB".into(), "example.test".into()));
    let out = machine.try_go(
        &machine.outside(),
        &["mod", "download", "-json", "example.test/b@v1.0.0"],
    );
    assert!(
        !out.status.success(),
        "a download of a cut-off zip succeeded:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        !machine
            .downloaded("example.test/b")
            .contains(&"v1.0.0.zip".to_owned())
    );
    // A request of its own: never the whole zip, whatever the status.
    let (status, body) = server.get_with_token(zip);
    assert!(
        status != 200 || body.len() < whole.len(),
        "a cut-off zip was answered whole"
    );

    // Nothing kept: with the upstream down the zip is an error, not a hit.
    faulty.set(DOWN);
    let (status, body) = server.get_with_token(zip);
    assert!(
        status >= 500,
        "with the upstream down: {status}, {} bytes",
        body.len()
    );
    assert_eq!(server.requests("zip", "hit"), 0);

    // Whole again: fetched and served whole, then kept.
    faulty.set(WHOLE);
    assert_eq!(server.get_with_token(zip), (200, whole.clone()));
    faulty.set(DOWN);
    assert_eq!(server.get_with_token(zip), (200, whole));
    assert_eq!(server.requests("zip", "hit"), 1);
    machine.go(
        &machine.outside(),
        &["mod", "download", "-json", "example.test/b@v1.0.0"],
    );
}
