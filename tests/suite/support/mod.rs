//! Shared test support: a client that speaks the protocol to the real binary, and a harness
//! that runs the real go command against it on a generated module.

#![allow(dead_code)]

pub mod emulators;
pub mod encode;
mod go;
pub mod proxy;
pub mod s3;

pub use go::{
    GoProject, GoRun, copy_tree, count_files, go, own_target_tmp_dir, read_stats, warm_bucket,
    warm_local_cache, warm_the_bucket,
};

pub use encode::encode_request;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use goremotecache::cacheprog::wire;
use goremotecache::ids::{ActionId, OutputId};
use serde_json::Value;

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_goremotecache")
}

/// A goremotecache process driven over its pipes, as the go command would.
pub struct Client {
    pub child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Client {
    /// Starts the binary with `args` and reads the handshake.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with(args, &[])
    }

    pub fn start_with(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(bin());
        command.args(args);
        for (key, value) in env {
            command.env(key, value);
        }
        Self::spawn(command)
    }

    /// Starts `command`, which runs the binary in some way, and reads the handshake.
    pub fn spawn(mut command: Command) -> Self {
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("starting goremotecache");
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).expect("reading the handshake");
        assert_eq!(
            line,
            "{\"ID\":0,\"KnownCommands\":[\"get\",\"put\",\"close\"]}\n"
        );
        Self {
            child,
            stdin,
            stdout,
        }
    }

    /// Starts the binary on the cache and lock directories under `dir`.
    pub fn on_dir(dir: &Path, extra: &[&str]) -> Self {
        let cache = dir.join("cache");
        let locks = dir.join("locks");
        let mut args = vec![
            "--cache-dir",
            cache.to_str().unwrap(),
            "--lock-dir",
            locks.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        Self::start(&args)
    }

    pub fn send(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        stdin.write_all(bytes).unwrap();
        stdin.flush().unwrap();
    }

    pub fn get(&mut self, id: i64, action: ActionId) {
        self.send(&encode_request(
            id,
            &wire::Command::Get { action_id: action },
        ));
    }

    /// Sends a put with its body, encoded as the go command does.
    pub fn put(&mut self, id: i64, action: ActionId, body: &[u8]) {
        let output = OutputId::of(body);
        self.send(&put_bytes(id, action, output, body));
    }

    pub fn close_request(&mut self, id: i64) {
        self.send(&encode_request(id, &wire::Command::Close));
    }

    /// Takes stdin, to write to it from another thread.
    pub fn take_stdin(&mut self) -> ChildStdin {
        self.stdin.take().expect("stdin is open")
    }

    /// Closes stdin (what `go list` and a dying go command do).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Reads one response line; `None` at end of output.
    pub fn read(&mut self) -> Option<Value> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line).unwrap() == 0 {
            return None;
        }
        Some(
            serde_json::from_str(&line)
                .unwrap_or_else(|err| panic!("bad response {line:?}: {err}")),
        )
    }

    /// Sends `close` with `id`, checks its answer and a successful exit; returns stderr.
    pub fn close(mut self, id: i64) -> String {
        self.close_request(id);
        assert_eq!(self.read().unwrap(), serde_json::json!({"ID": id}));
        let (status, stderr) = self.finish();
        assert!(status.success(), "{stderr}");
        stderr
    }

    /// Waits for the process to exit and returns its stderr.
    pub fn finish(mut self) -> (std::process::ExitStatus, String) {
        self.stdin = None;
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut self.stdout, &mut rest).unwrap();
        assert!(rest.is_empty(), "unexpected output after the end: {rest:?}");
        let output = self.child.wait_with_output().unwrap();
        (
            output.status,
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }
}

/// A goremotecache process on the cache and lock directories under `dir`, with `--stats`, the
/// test credentials, `store_args` (such as [`s3::s3_args`]) and `extra` options.
pub fn s3_client(dir: &std::path::Path, store_args: Vec<String>, extra: &[&str]) -> Client {
    let mut args: Vec<String> = vec![
        "--cache-dir".into(),
        dir.join("cache").to_str().unwrap().into(),
        "--lock-dir".into(),
        dir.join("locks").to_str().unwrap().into(),
        "--stats".into(),
    ];
    args.extend(store_args);
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env = s3::credentials(s3::SECRET_KEY);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Client::start_with(&args, &env)
}

/// The bytes of a put request and its body line.
pub fn put_bytes(id: i64, action: ActionId, output: OutputId, body: &[u8]) -> Vec<u8> {
    let mut bytes = encode_request(
        id,
        &wire::Command::Put {
            action_id: action,
            output_id: output,
            body_size: body.len() as u64,
        },
    );
    if !body.is_empty() {
        bytes.push(b'"');
        bytes.extend_from_slice(B64.encode(body).as_bytes());
        bytes.extend_from_slice(b"\"\n");
    }
    bytes
}

/// Runs `command` to its end with stdin closed; returns its exit code (-1 for a signal),
/// stdout and stderr.
pub fn outcome(command: &mut Command) -> (i32, String, String) {
    let out = command
        .stdin(Stdio::null())
        .output()
        .expect("running the command");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Sets a file's modification time two hours back: older than the start-up sweep's hour.
pub fn make_old(path: &Path) {
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(old)
        .unwrap();
}

/// The keys a stored prefetch manifest (zstd-compressed text) lists, in its order.
pub fn manifest_keys(path: &Path) -> Vec<String> {
    manifest_text(path)
        .lines()
        .filter_map(|line| line.split(' ').next().filter(|key| key.len() == 64))
        .map(str::to_string)
        .collect()
}

/// Rewrites a stored prefetch manifest with every entry line twice (a damaged or hand-made
/// manifest); returns how many entries it listed.
pub fn list_every_key_twice(path: &Path) -> u64 {
    let text = manifest_text(path);
    let mut doubled = String::new();
    let mut listed = 0;
    for line in text.lines() {
        doubled.push_str(&format!("{line}\n"));
        if line.split(' ').next().is_some_and(|key| key.len() == 64) {
            doubled.push_str(&format!("{line}\n"));
            listed += 1;
        }
    }
    std::fs::write(path, zstd::bulk::compress(doubled.as_bytes(), 3).unwrap()).unwrap();
    listed
}

fn manifest_text(path: &Path) -> String {
    let bytes = zstd::stream::decode_all(&std::fs::read(path).unwrap()[..]).unwrap();
    String::from_utf8(bytes).unwrap()
}

/// Asserts that `keys` names no key twice.
pub fn assert_distinct(keys: &[String]) {
    let distinct: std::collections::HashSet<&String> = keys.iter().collect();
    assert_eq!(distinct.len(), keys.len(), "a key is listed twice");
}

/// A deterministic action ID.
pub fn action(n: u32) -> ActionId {
    let mut id = [0u8; 32];
    id[..4].copy_from_slice(&n.to_be_bytes());
    id[31] = 0xa5;
    ActionId(id)
}

/// Deterministic pseudo-random bytes.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// A certificate for 127.0.0.1 signed by a CA of the test's own, made with openssl; returns
/// the CA's certificate, the server's and its key (the server's TLS tests, the module proxy's
/// `.netrc` over TLS).
pub fn make_certificates(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
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
