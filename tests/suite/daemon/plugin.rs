//! `daemon --listen-plugin`: plain GOCACHEPROG sessions on a loopback TCP port, as
//! go-cache-plugin's `--plugin` offers them, spoken here by a raw client (the go command
//! needs a bridge from its pipes to the port, and none is on every machine).

use crate::support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use goremotecache::cacheprog::wire::Command;
use goremotecache::ids::OutputId;
use serde_json::{Value, json};
use support::s3::S3Server;
use support::{action, encode_request, pseudo_random, put_bytes};

use super::{DEADLINE, Flushed, Foreground, Project, bucket_entries, eventually, figure};

/// A GOCACHEPROG session over TCP.
struct PluginClient {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl PluginClient {
    /// Connects to `addr` and reads the handshake, which comes first.
    fn connect(addr: &str) -> Self {
        let mut stream = None;
        eventually("the plugin port accepts", || {
            stream = TcpStream::connect(addr).ok();
            stream.is_some()
        });
        let writer = stream.unwrap();
        writer.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut reader = BufReader::new(writer.try_clone().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).expect("reading the handshake");
        assert_eq!(
            line,
            "{\"ID\":0,\"KnownCommands\":[\"get\",\"put\",\"close\"]}\n"
        );
        Self { writer, reader }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    /// One response; `None` at the end of the session.
    fn read(&mut self) -> Option<Value> {
        let mut line = String::new();
        if self
            .reader
            .read_line(&mut line)
            .expect("reading a response")
            == 0
        {
            return None;
        }
        Some(
            serde_json::from_str(&line)
                .unwrap_or_else(|err| panic!("bad response {line:?}: {err}")),
        )
    }

    fn get(&mut self, id: i64, n: u32) -> Value {
        self.send(&encode_request(
            id,
            &Command::Get {
                action_id: action(n),
            },
        ));
        let answer = self.read().expect("an answer");
        assert_eq!(answer["ID"], id, "{answer}");
        answer
    }

    /// Sends `close`, checks its answer and the end of the session.
    fn close(mut self, id: i64) {
        self.send(&encode_request(id, &Command::Close));
        assert_eq!(self.read(), Some(json!({"ID": id})));
        assert_eq!(self.read(), None, "the session goes on after close");
    }
}

/// A loopback address with a port that was free a moment ago.
fn free_loopback_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

#[test]
fn the_plugin_port_serves_gocacheprog_sessions() {
    let server = S3Server::start();
    let project = Project::new("daemon-plugin", &server, "dplugin");
    let addr = free_loopback_addr();
    let daemon = Foreground::start(&project, &["--listen-plugin", &addr]).expect("daemon starts");

    let body = pseudo_random(7, 100_000);
    let mut first = PluginClient::connect(&addr);
    first.send(&put_bytes(1, action(1), OutputId::of(&body), &body));
    let put = first.read().expect("an answer to the put");
    assert_eq!(put["ID"], 1, "{put}");
    assert!(put.get("Err").is_none(), "{put}");
    let hit = first.get(2, 1);
    assert_eq!(hit["OutputID"], B64.encode(OutputId::of(&body).0), "{hit}");
    assert_eq!(hit["Size"], body.len(), "{hit}");
    assert!(hit["Time"].is_string(), "{hit}");
    let path = hit["DiskPath"].as_str().unwrap_or_else(|| panic!("{hit}"));
    assert!(
        std::fs::read(path).unwrap() == body,
        "{path} differs from the put"
    );
    assert_eq!(first.get(3, 2)["Miss"], true);
    first.close(4);

    // Another session finds the entry.
    let mut second = PluginClient::connect(&addr);
    assert_eq!(second.get(1, 1)["OutputID"], hit["OutputID"]);
    second.close(2);

    let status = project.the_daemon();
    assert_eq!(figure(&status, "pid"), u64::from(daemon.pid));
    assert!(figure(&status, "sessions_total") >= 2, "{status}");

    // And the put goes to the store like a connect session's.
    let (code, stdout, stderr) = project.control("flush", &[]);
    assert_eq!(code, 0, "{stderr}");
    let flushed = Flushed::parse(stdout.trim_end());
    assert_eq!((flushed.uploaded, flushed.pending), (1, 0), "{flushed:?}");
    assert!(bucket_entries(&server, "dplugin").contains(&action(1).to_hex()));
    let (status, stderr) = daemon.terminate();
    assert!(status.success(), "{stderr}");
}

#[test]
fn the_plugin_port_is_loopback_only() {
    let server = S3Server::start();
    let project = Project::new("daemon-plugin-any", &server, "dpluginany");
    let (status, stderr) = Foreground::start(&project, &["--listen-plugin", "0.0.0.0:8322"])
        .err()
        .expect("a daemon listened on every interface");
    assert_eq!(status.code(), Some(2), "{stderr}");
}
