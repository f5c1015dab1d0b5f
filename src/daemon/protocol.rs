//! What `connect`, `flush`, `status` and `warm` say to a daemon over its unix socket: JSON,
//! one message a line. A client's first line is a [`Hello`] naming what it wants and the
//! fingerprint of its settings; the daemon answers with a [`Welcome`] (or a refusal), then the
//! two sides exchange what that kind of connection needs.
//!
//! A session of the go command (`connect`) sends [`Ask`]s: the gets that missed on local
//! disk (the daemon asks its remote tier and answers with an [`Answer::Got`]), and notes of
//! what `connect` answered itself from the shared local disk (hits, puts) so that the
//! daemon's statistics, prefetch manifest and uploads include them. `close` is answered with
//! [`Answer::Closed`] once the session's gets are done; uploads go on in the daemon.

use std::io::{self, BufRead};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::cache::stats::{DaemonNote, RemoteReport};
use crate::ids::{ActionId, OutputId};
use crate::local::disk::Entry;

/// The protocol's version: a daemon refuses a client of another (a `connect` of a newer
/// release then starts no daemon of its own: it runs direct and says so).
pub const VERSION: u32 = 1;

/// The longest line either side accepts: a batch of hits is the longest message.
pub const MAX_LINE: usize = 1 << 20;

/// Hits noted per message at most.
pub const HITS_PER_MESSAGE: usize = 256;

/// A client's first line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Hello {
    pub version: u32,
    /// [`super::place::Fingerprint`] of the client's settings: a daemon serves only its own.
    pub fingerprint: String,
    pub pid: u32,
    pub kind: Kind,
}

/// What a connection is for.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Kind {
    /// A go command's session. `key`: the parts of its prefetch build key, which the daemon
    /// uses if it has none yet.
    Session { key: Option<Vec<(String, String)>> },
    /// The daemon's figures.
    Status,
    /// Wait up to `wait_ms` for the pending uploads and write the prefetch manifest.
    Flush { wait_ms: u64 },
    /// Begin the prefetch of this build key's manifest.
    Warm { key: Vec<(String, String)> },
}

/// The daemon's answer to a [`Hello`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "welcome", rename_all = "snake_case")]
pub enum Welcome {
    Accepted {
        pid: u32,
        socket: String,
        /// Whether a local miss is worth asking the daemon (it has a remote tier that reads).
        reads_remote: bool,
    },
    Refused {
        reason: String,
    },
}

/// A message of a session, from `connect` to the daemon.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Ask {
    /// A get that missed on local disk.
    Get { id: u64, action: ActionId },
    /// Gets that `connect` answered from local disk: the action, the size of a hit (`None`:
    /// a miss), and the time it took in nanoseconds.
    Noted {
        gets: Vec<(ActionId, Option<u64>, u64)>,
    },
    /// A put that `connect` stored on local disk: the daemon uploads it.
    Put(PutNote),
    /// The go command closed the session.
    Close,
}

/// A put stored on local disk by `connect`. No path: the daemon uploads the output from
/// where its own cache keeps it (the same directory).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PutNote {
    pub action: ActionId,
    pub output: OutputId,
    pub size: u64,
    /// When it was stored, in nanoseconds since the Unix epoch.
    pub time_ns: u64,
    /// The output was on disk already.
    pub already: bool,
    /// How long storing it took, in nanoseconds.
    pub took_ns: u64,
}

/// A message from the daemon.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum Answer {
    /// The answer to [`Ask::Get`]: an entry now on local disk, a miss, or why it failed.
    Got {
        id: u64,
        found: Option<Found>,
        error: Option<String>,
    },
    /// The answer to [`Ask::Close`]: the daemon, and its remote tier's figures so far.
    Closed {
        note: DaemonNote,
        remote: Option<Box<RemoteReport>>,
    },
    /// A flush still waits for these uploads.
    Progress {
        uploads: u64,
        bytes: u64,
        waited_ms: u64,
    },
    /// A flush ended.
    Flushed(Box<FlushReport>),
    /// The daemon's figures.
    Status(Box<Status>),
    /// The answer to a warm-up.
    Warmed { started: bool, key: String },
}

/// An entry a get found, as the go command is to be answered.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Found {
    pub output: OutputId,
    pub size: u64,
    pub time_ns: u64,
    pub path: PathBuf,
}

impl Found {
    pub fn of(entry: &Entry) -> Self {
        Self {
            output: entry.output_id,
            size: entry.size,
            time_ns: unix_nanos(entry.time),
            path: entry.disk_path.clone(),
        }
    }

    pub fn into_entry(self) -> Entry {
        Entry {
            output_id: self.output,
            size: self.size,
            time: from_unix_nanos(self.time_ns),
            disk_path: self.path,
        }
    }
}

/// What a flush did, and the daemon's upload totals.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FlushReport {
    pub socket: String,
    /// Uploads stored since the daemon started.
    pub uploaded: u64,
    /// Uploads dropped since the daemon started (queue full, remote switched off).
    pub dropped: u64,
    /// Uploads that failed since the daemon started.
    pub failed: u64,
    /// Uploads still pending when the wait ran out: the daemon goes on with them.
    pub left: u64,
    /// Entries in the prefetch manifest written (0: none, or unchanged).
    pub manifest_written: u64,
    pub seconds: f64,
}

/// A daemon's figures: `goremotecache status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub pid: u32,
    pub socket: String,
    pub fingerprint: String,
    pub version: String,
    pub uptime_seconds: f64,
    /// `None`: the daemon does not exit when idle.
    pub idle_exit_seconds: Option<f64>,
    /// Where the remote tier is, if there is one.
    pub remote: Option<String>,
    /// Sessions open now, and served since the start.
    pub sessions: u64,
    pub sessions_total: u64,
    pub gets: u64,
    pub hits: u64,
    pub misses: u64,
    pub puts: u64,
    pub remote_hits: u64,
    pub remote_misses: u64,
    pub uploads_pending: u64,
    pub uploads_pending_bytes: u64,
    pub uploads_done: u64,
    pub uploads_dropped: u64,
    pub upload_errors: u64,
    pub prefetch: Option<PrefetchStatus>,
    /// The module proxy (`--goproxy-listen`), if it serves one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goproxy: Option<GoproxyStatus>,
}

/// The daemon's module proxy: its address, its requests since the start by result, and its
/// uploads to the remote.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GoproxyStatus {
    /// For GOPROXY: `http://127.0.0.1:PORT/mod`.
    pub address: String,
    pub requests: u64,
    /// From the cache (local, or the remote's copy).
    pub hits: u64,
    /// Fetched from an upstream.
    pub fetched: u64,
    /// A stored list served because the upstreams failed.
    pub fallbacks: u64,
    pub not_found: u64,
    /// Upstream failures with nothing stored, and requests that were not of the protocol.
    pub errors: u64,
    pub uploads_pending: u64,
    pub uploads_done: u64,
    pub uploads_failed: u64,
    pub uploads_dropped: u64,
}

/// The daemon's prefetch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PrefetchStatus {
    pub key: String,
    pub listed: u64,
    pub fetched: u64,
    pub bytes: u64,
    pub used: u64,
    pub wasted: u64,
    pub seconds: f64,
    /// What the prefetch did before the first build began, when it began before it (`warm`,
    /// or the daemon's --prefetch-key): the warm-up, counted apart from the builds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_up: Option<WarmUp>,
}

/// A warm-up's figures: entries and bytes the prefetch stored, and the seconds, from its
/// start until the first build began (or until now, if none has).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WarmUp {
    pub fetched: u64,
    pub bytes: u64,
    pub seconds: f64,
    /// Whether a build has begun (the figures are final), or the warm-up goes on.
    pub build_began: bool,
}

/// Nanoseconds since the Unix epoch (0 before it).
pub fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

pub fn from_unix_nanos(nanos: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos)
}

/// One message as its line, newline included.
pub fn line<T: Serialize>(message: &T) -> Vec<u8> {
    let mut line = serde_json::to_vec(message).expect("protocol messages serialize");
    line.push(b'\n');
    line
}

/// Reads one line of at most [`MAX_LINE`] bytes and decodes it; `Ok(None)` at the end of
/// input. A longer line or one that does not decode is an `InvalidData` error.
pub fn read_message<T: for<'de> Deserialize<'de>>(
    reader: &mut impl BufRead,
    buf: &mut Vec<u8>,
) -> io::Result<Option<T>> {
    buf.clear();
    let n = io::Read::take(&mut *reader, MAX_LINE as u64 + 1).read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(None);
    }
    decode(buf).map(Some)
}

/// [`read_message`] for an async reader.
pub async fn read_message_async<T: for<'de> Deserialize<'de>>(
    reader: &mut (impl tokio::io::AsyncBufRead + Unpin),
    buf: &mut Vec<u8>,
) -> io::Result<Option<T>> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    buf.clear();
    let n = reader
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', buf)
        .await?;
    if n == 0 {
        return Ok(None);
    }
    decode(buf).map(Some)
}

/// Decodes one line (its newline optional).
pub fn decode<T: for<'de> Deserialize<'de>>(line: &[u8]) -> io::Result<T> {
    if line.len() > MAX_LINE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a message is longer than the protocol allows",
        ));
    }
    serde_json::from_slice(line).map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_one_per_line() {
        let action = ActionId([7; 32]);
        let messages = vec![
            Ask::Get { id: 3, action },
            Ask::Noted {
                gets: vec![(action, Some(12), 900), (action, None, 5)],
            },
            Ask::Put(PutNote {
                action,
                output: OutputId([1; 32]),
                size: 5,
                time_ns: 1_700_000_000_123_456_789,
                already: false,
                took_ns: 10,
            }),
            Ask::Close,
        ];
        let mut wire = Vec::new();
        for message in &messages {
            let line = line(message);
            assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
            wire.extend(line);
        }
        let mut reader = io::Cursor::new(wire);
        let mut buf = Vec::new();
        for message in &messages {
            let read: Ask = read_message(&mut reader, &mut buf).unwrap().unwrap();
            assert_eq!(&read, message);
        }
        assert_eq!(read_message::<Ask>(&mut reader, &mut buf).unwrap(), None);
    }

    #[test]
    fn bad_ids_long_lines_and_garbage_are_refused() {
        let upper = format!(r#"{{"op":"get","id":1,"action":"{}"}}"#, "A".repeat(64));
        assert!(decode::<Ask>(upper.as_bytes()).is_err());
        assert!(decode::<Ask>(b"{\"op\":\"shutdown\"}").is_err());
        assert!(decode::<Ask>(b"\xff\xfe").is_err());
        let mut long = vec![b' '; MAX_LINE + 10];
        long.push(b'\n');
        let mut reader = io::Cursor::new(long);
        let err = read_message::<Ask>(&mut reader, &mut Vec::new()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    /// The daemon's figures as a session's `close` answer carries them, with empty lists and
    /// absent sections that serialize to nothing.
    #[test]
    fn a_closed_answer_with_the_remote_figures_round_trips() {
        let stats = crate::cache::stats::Stats::with_remote(true);
        stats.record_get(Some(5), Duration::from_millis(1));
        let answer = Answer::Closed {
            note: DaemonNote {
                pid: 42,
                socket: "/c/daemon/0123456789abcdef.sock".into(),
                uploads_pending: 3,
                sessions_total: 2,
            },
            remote: stats.report().remote.map(Box::new),
        };
        assert!(matches!(
            &answer,
            Answer::Closed {
                remote: Some(_),
                ..
            }
        ));
        assert_eq!(decode::<Answer>(&line(&answer)).unwrap(), answer);
    }

    #[test]
    fn a_found_entry_keeps_its_time_to_the_nanosecond() {
        let entry = Entry {
            output_id: OutputId([2; 32]),
            size: 9,
            time: from_unix_nanos(1_700_000_000_987_654_321),
            disk_path: "/c/o/02/y-d".into(),
        };
        assert_eq!(Found::of(&entry).into_entry(), entry);
    }
}

#[cfg(test)]
mod proptests;
