//! The session's concurrency and lifetime, driven by test clients: in process with a handler
//! that delays answers on purpose, and over the pipes of the real binary.

use crate::support;

use std::collections::{HashMap, HashSet};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use goremotecache::cacheprog::session::{self, End, Handler};
use goremotecache::cacheprog::wire::Command;
use goremotecache::ids::{ActionId, OutputId};
use goremotecache::local::disk::{Entry, Spooled};
use serde_json::Value;
use support::encode_request;
use support::{Client, action, pseudo_random};

/// Answers gets after a delay that shrinks with the request's number, so that later
/// requests finish first.
#[derive(Debug)]
struct Delaying {
    dir: tempfile::TempDir,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    closed: AtomicBool,
    answered_before_close: AtomicUsize,
}

impl Handler for Delaying {
    type Error = String;

    fn spool_file(&self) -> io::Result<tempfile::NamedTempFile> {
        tempfile::NamedTempFile::new_in(self.dir.path())
    }

    fn get_now(&self, _: ActionId) -> Option<Result<Option<Entry>, String>> {
        None
    }

    async fn get(&self, action_id: ActionId) -> Result<Option<Entry>, String> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let n = u32::from_be_bytes(action_id.0[..4].try_into().unwrap());
        tokio::time::sleep(Duration::from_millis(u64::from(300 - n))).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        assert!(
            !self.closed.load(Ordering::SeqCst),
            "close ran before a get finished"
        );
        self.answered_before_close.fetch_add(1, Ordering::SeqCst);
        Ok((n % 2 == 0).then(|| Entry {
            output_id: OutputId([n as u8; 32]),
            size: u64::from(n),
            time: SystemTime::UNIX_EPOCH,
            disk_path: PathBuf::from(format!("/cache/{n}")),
        }))
    }

    async fn put(&self, _: ActionId, _: OutputId, _: Option<Spooled>) -> Result<PathBuf, String> {
        Err("not used".to_string())
    }

    fn refused(&self, _: &goremotecache::cacheprog::wire::RequestError) {}

    async fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }
}

fn delaying() -> Arc<Delaying> {
    Arc::new(Delaying {
        dir: tempfile::tempdir().unwrap(),
        in_flight: AtomicUsize::new(0),
        max_in_flight: AtomicUsize::new(0),
        closed: AtomicBool::new(false),
        answered_before_close: AtomicUsize::new(0),
    })
}

/// An output shared with the test.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn lines(out: &Shared) -> Vec<Value> {
    let bytes = out.0.lock().unwrap().clone();
    String::from_utf8(bytes)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn gets(count: u32) -> Vec<u8> {
    (1..=count)
        .flat_map(|n| {
            encode_request(
                i64::from(n),
                &Command::Get {
                    action_id: action(n),
                },
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_requests_are_answered_out_of_order_and_close_comes_last() {
    let handler = delaying();
    let mut input = gets(200);
    input.extend(encode_request(201, &Command::Close));
    let out = Shared::default();
    let end = session::run(handler.clone(), io::Cursor::new(input), out.clone()).await;
    assert_eq!(end, End::Closed);

    let answers = lines(&out);
    assert_eq!(answers.len(), 201);
    let ids: Vec<i64> = answers.iter().map(|a| a["ID"].as_i64().unwrap()).collect();
    assert_eq!(*ids.last().unwrap(), 201, "close was not answered last");
    assert_eq!(
        answers.last().unwrap().as_object().unwrap().len(),
        1,
        "close answer: {answers:?}"
    );
    let unique: HashSet<i64> = ids[..200].iter().copied().collect();
    assert_eq!(unique, (1..=200).collect(), "every request answered once");
    let sorted = {
        let mut s = ids[..200].to_vec();
        s.sort();
        s
    };
    assert_ne!(
        ids[..200],
        sorted[..],
        "answers came in request order: nothing ran concurrently"
    );
    assert!(
        handler.max_in_flight.load(Ordering::SeqCst) > 100,
        "requests were not concurrent"
    );
    assert_eq!(handler.answered_before_close.load(Ordering::SeqCst), 200);
    assert!(handler.closed.load(Ordering::SeqCst));

    for answer in &answers[..200] {
        let n = answer["ID"].as_i64().unwrap();
        if n % 2 == 0 {
            assert_eq!(answer["Size"], n);
            assert_eq!(answer["DiskPath"], format!("/cache/{n}"));
            assert_eq!(answer["OutputID"], B64.encode([n as u8; 32]));
            assert_eq!(answer["Time"], "1970-01-01T00:00:00.000000000Z");
        } else {
            assert_eq!(answer["Miss"], true);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_of_input_without_close_answers_what_is_in_flight() {
    let handler = delaying();
    let out = Shared::default();
    let end = session::run(handler.clone(), io::Cursor::new(gets(20)), out.clone()).await;
    assert_eq!(end, End::Eof);
    let ids: HashSet<i64> = lines(&out)
        .iter()
        .map(|a| a["ID"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, (1..=20).collect());
    assert!(handler.closed.load(Ordering::SeqCst));
}

/// Puts 200 bodies at once through the real binary, then gets them (and 50 unknown keys)
/// from a second process on the same directory.
#[test]
fn the_binary_answers_200_concurrent_puts_then_gets_with_the_right_ids() {
    let dir = tempfile::tempdir().unwrap();
    let bodies: Vec<Vec<u8>> = (0..200u32)
        .map(|n| pseudo_random(u64::from(n), (n as usize * 7919) % 300_000))
        .collect();

    let mut client = Client::on_dir(dir.path(), &[]);
    let mut batch = Vec::new();
    for (n, body) in bodies.iter().enumerate() {
        batch.extend(support::put_bytes(
            n as i64 + 1,
            action(n as u32),
            OutputId::of(body),
            body,
        ));
    }
    batch.extend(encode_request(201, &Command::Close));
    let put_started = SystemTime::now();
    let writer = {
        let mut stdin = client.take_stdin();
        std::thread::spawn(move || stdin.write_all(&batch).unwrap())
    };
    let mut answers = HashMap::new();
    while let Some(answer) = client.read() {
        let id = answer["ID"].as_i64().unwrap();
        assert!(
            answers.insert(id, answer).is_none(),
            "ID {id} answered twice"
        );
    }
    writer.join().unwrap();
    assert_eq!(answers.len(), 201);
    for (n, body) in bodies.iter().enumerate() {
        let answer = &answers[&(n as i64 + 1)];
        assert!(answer.get("Err").is_none(), "{answer}");
        let path = answer["DiskPath"].as_str().unwrap();
        assert_eq!(&std::fs::read(path).unwrap(), body, "put {n}");
    }
    let (status, _) = client.finish();
    assert!(status.success());

    let mut client = Client::on_dir(dir.path(), &[]);
    let mut batch = Vec::new();
    for n in 0..250u32 {
        batch.extend(encode_request(
            i64::from(n) + 1,
            &Command::Get {
                action_id: action(n),
            },
        ));
    }
    client.send(&batch);
    let mut answers = HashMap::new();
    for _ in 0..250 {
        let answer = client.read().unwrap();
        answers.insert(answer["ID"].as_i64().unwrap(), answer);
    }
    for n in 0..250usize {
        let answer = &answers[&(n as i64 + 1)];
        if n >= 200 {
            assert_eq!(answer["Miss"], true, "{answer}");
            continue;
        }
        let body = &bodies[n];
        assert_eq!(
            answer["OutputID"],
            B64.encode(OutputId::of(body).0),
            "{answer}"
        );
        assert_eq!(answer["Size"].as_u64().unwrap_or(0), body.len() as u64);
        let time = humantime::parse_rfc3339(answer["Time"].as_str().unwrap()).unwrap();
        assert!(time >= put_started && time <= SystemTime::now(), "{answer}");
        assert_eq!(
            &std::fs::read(answer["DiskPath"].as_str().unwrap()).unwrap(),
            body
        );
    }
    client.close_request(999);
    assert_eq!(client.read().unwrap(), serde_json::json!({"ID": 999}));
    let (status, _) = client.finish();
    assert!(status.success());
}

#[test]
fn the_binary_exits_at_end_of_input_after_answering() {
    let dir = tempfile::tempdir().unwrap();
    let mut client = Client::on_dir(dir.path(), &["--stats"]);
    let body = pseudo_random(9, 1_000_000);
    client.put(1, action(1), &body);
    client.get(2, action(77));
    client.close_stdin();
    let mut ids = HashSet::new();
    while let Some(answer) = client.read() {
        ids.insert(answer["ID"].as_i64().unwrap());
    }
    assert_eq!(ids, HashSet::from([1, 2]));
    let (status, stderr) = client.finish();
    assert!(status.success());
    assert!(stderr.contains("1 puts: 976.6 KiB written"), "{stderr}");
}

#[test]
fn a_get_returns_the_time_of_the_put_not_of_the_get() {
    let dir = tempfile::tempdir().unwrap();
    let mut client = Client::on_dir(dir.path(), &[]);
    client.put(1, action(5), b"timed");
    client.read().unwrap();
    let after_put = SystemTime::now();
    std::thread::sleep(Duration::from_millis(50));
    client.get(2, action(5));
    let answer = client.read().unwrap();
    let time = humantime::parse_rfc3339(answer["Time"].as_str().unwrap()).unwrap();
    assert!(time <= after_put, "Time {time:?} is later than the put");
    client.close_request(3);
    client.read().unwrap();
    client.finish();
}

#[test]
fn bad_input_is_answered_with_errors_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut client = Client::on_dir(dir.path(), &["--stats"]);
    let good = pseudo_random(1, 50_000);
    // A put whose body does not hash to its OutputID.
    let mut bad_hash = support::put_bytes(1, action(1), OutputId::of(b"other"), &good);
    // A put whose body line is cut short.
    let mut truncated = support::put_bytes(2, action(2), OutputId::of(&good), &good);
    let cut = truncated.len() - 1000;
    truncated.truncate(cut);
    truncated.push(b'\n');
    bad_hash.extend(truncated);
    bad_hash.extend(b"this is not json\n");
    bad_hash.extend(b"{\"ID\":3,\"Command\":\"fly\"}\n\n");
    bad_hash.extend(b"{\"ID\":4,\"Command\":\"get\"}\n\n");
    client.send(&bad_hash);
    let mut errors = HashMap::new();
    for _ in 0..4 {
        let answer = client.read().unwrap();
        errors.insert(
            answer["ID"].as_i64().unwrap(),
            answer["Err"].as_str().unwrap().to_owned(),
        );
    }
    assert!(errors[&1].contains("is not its OutputID"), "{errors:?}");
    assert!(errors[&2].contains("truncated"), "{errors:?}");
    assert!(errors[&3].contains("unknown command"), "{errors:?}");
    assert!(errors[&4].contains("missing ActionID"), "{errors:?}");

    // Still serving, and nothing of the refused puts can be found.
    client.get(5, action(1));
    client.get(6, action(2));
    client.put(7, action(3), &good);
    let mut answers = HashMap::new();
    for _ in 0..3 {
        let answer = client.read().unwrap();
        answers.insert(answer["ID"].as_i64().unwrap(), answer);
    }
    assert_eq!(answers[&5]["Miss"], true);
    assert_eq!(answers[&6]["Miss"], true);
    assert!(answers[&7]["DiskPath"].is_string());
    client.close_request(8);
    client.read().unwrap();
    let (status, stderr) = client.finish();
    assert!(status.success());
    assert_eq!(
        std::fs::read_dir(dir.path().join("cache/tmp"))
            .unwrap()
            .count(),
        0,
        "refused bodies were left behind"
    );
    let outputs: Vec<_> = walk(&dir.path().join("cache/o"));
    assert_eq!(outputs.len(), 1, "{outputs:?}");
    for expected in [
        "is not its OutputID",
        "truncated",
        "malformed request line",
        "unknown command \"fly\"",
        "missing ActionID",
        "5 bad requests",
    ] {
        assert!(
            stderr.contains(expected),
            "stderr lacks {expected:?}:\n{stderr}"
        );
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
