//! `goremotecache connect`: the go command's GOCACHEPROG when a daemon holds the cache.
//!
//! The bridge is a [`Handler`] for the usual session: it answers what the shared local disk
//! can answer itself (hits, and puts, which it stores as a direct session would), so that a
//! warm build costs what it costs without a daemon, and asks the daemon only for what needs
//! the remote tier: a get that missed on disk. What it answered itself it notes to the
//! daemon (hits in batches, each put at once), which counts it, records it for the prefetch
//! manifest and uploads the puts. `close` does not wait for the uploads: `flush` does.
//!
//! The build never fails because of the daemon: if the connection breaks, or a get goes
//! unanswered for too long, the bridge opens a cache of its own with the same settings (as
//! `goremotecache` without a daemon would), says so once on stderr, and goes on with it for
//! the rest of the session; the gets in flight are asked again there.

use std::collections::HashMap;
use std::io;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};

use std::ffi::OsString;

use super::client::{self, Accepted};
use super::place::Place;
use super::protocol::Kind;
use super::protocol::{self, Answer, Ask, HITS_PER_MESSAGE, PutNote};
use crate::cache::prefetch::Prefetcher;
use crate::cache::stats::{DaemonNote, RemoteReport, add, nanos};
use crate::cache::upload::Job;
use crate::cache::{Cache, CacheError};
use crate::cacheprog::session;
use crate::cacheprog::session::Handler;
use crate::cacheprog::wire::RequestError;
use crate::config::Config;
use crate::config::ControlConfig;
use crate::ids::{ActionId, OutputId};
use crate::local::disk::{Entry, Spooled};
use crate::sync::lock;

/// Serves the go command's session on stdin/stdout through the daemon of `config`'s
/// settings, starting it (with `start`, the options it was given) if none listens. The
/// handshake must already be written. An error says why no daemon could serve the session:
/// the caller then serves it directly, having said so.
pub fn run(config: &ControlConfig, start: &[OsString]) -> Result<(), String> {
    let place =
        Place::for_build(&config.build, config.socket.as_deref()).map_err(|err| err.to_string())?;
    let stream = client::reach(&place, Some(start))?;
    let remote = config.build.remote.as_ref();
    let key = (remote.and_then(|r| r.prefetch.as_ref())).map(|p| Prefetcher::source_for(p).parts);
    let (accepted, _) = client::hello(&stream, &place.fingerprint, Kind::Session { key })?;
    // The daemon's own get is bounded by its remote timeouts: twice that, and some, before
    // giving up on it.
    let get_wait = remote.map_or(Duration::ZERO, |r| r.timeout * 2) + Duration::from_secs(30);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("goremotecache")
        .enable_all()
        .build()
        .map_err(|err| format!("starting the runtime: {err}"))?;
    runtime.block_on(async {
        let bridge = Bridge::start(&config.build, stream, accepted, get_wait)
            .map_err(|err| format!("talking to the daemon: {err}"))?;
        let end = session::run(Arc::new(bridge), std::io::stdin(), std::io::stdout()).await;
        tracing::debug!(?end, "session ended");
        Ok::<(), String>(())
    })?;
    // Background work is not awaited: the go command has had every answer.
    runtime.shutdown_background();
    Ok(())
}

/// How long `close` waits for the daemon's last answer.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// How long one message may take to be written to the daemon.
const WRITE_WAIT: Duration = Duration::from_secs(10);

/// The bridge between one go command session and the daemon.
#[derive(Debug)]
pub struct Bridge {
    config: Config,
    /// The shared local disk, without a remote tier: this session's own statistics.
    local: Cache,
    link: Link,
    /// The cache of its own that the bridge opens if the daemon goes away.
    direct: OnceLock<Arc<Cache>>,
    /// Gets the daemon answered: the session's share of the remote tier's figures.
    forwarded: Forwarded,
    /// The runtime, for opening the cache of its own from the session's reader thread.
    runtime: tokio::runtime::Handle,
}

#[derive(Debug, Default)]
struct Forwarded {
    hits: AtomicU64,
    misses: AtomicU64,
    errors: AtomicU64,
    bytes: AtomicU64,
    wait_nanos: AtomicU64,
}

impl Bridge {
    /// A bridge over `stream`, which the daemon accepted. Call inside the tokio runtime.
    pub fn start(
        config: &Config,
        stream: UnixStream,
        accepted: Accepted,
        get_wait: Duration,
    ) -> io::Result<Self> {
        let mut local_config = config.clone();
        local_config.remote = None;
        Ok(Self {
            config: config.clone(),
            local: Cache::open_idle(&local_config),
            link: Link::start(stream, accepted, get_wait)?,
            direct: OnceLock::new(),
            forwarded: Forwarded::default(),
            runtime: tokio::runtime::Handle::current(),
        })
    }

    /// The cache of its own, opened the first time the daemon fails the session.
    fn direct(&self, why: &str) -> &Arc<Cache> {
        self.direct.get_or_init(|| {
            crate::logging::say(
                tracing::Level::WARN,
                &format!("connect: running without the daemon: {why}"),
            );
            // Its upload workers and prefetch start on the session's runtime.
            let _entered = self.runtime.enter();
            Arc::new(Cache::open(&self.config))
        })
    }

    /// The session's report: its own requests; the remote tier's figures of the daemon,
    /// with this session's hits and misses; or those of the cache of its own, if it had to
    /// open one.
    fn report(
        &self,
        closed: Option<(DaemonNote, Option<RemoteReport>)>,
    ) -> crate::cache::stats::Report {
        let mut report = self.local.stats().report();
        if let Some(direct) = self.direct.get() {
            let own = direct.stats().report();
            report.add_requests(&own);
            report.remote = own.remote;
            return report;
        }
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        if let Some((note, remote)) = closed {
            report.daemon = Some(note);
            report.remote = remote.map(|mut remote| {
                remote.hits = get(&self.forwarded.hits);
                remote.misses = get(&self.forwarded.misses);
                remote.errors = get(&self.forwarded.errors);
                remote.bytes_down = get(&self.forwarded.bytes);
                remote.wait_seconds = get(&self.forwarded.wait_nanos) as f64 / 1e9;
                remote
            });
        }
        report
    }
}

impl Handler for Bridge {
    type Error = CacheError;

    fn spool_file(&self) -> io::Result<tempfile::NamedTempFile> {
        self.local.spool_file()
    }

    fn get_now(&self, action_id: ActionId) -> Option<Result<Option<Entry>, CacheError>> {
        if let Some(direct) = self.direct.get() {
            return direct.get_now(action_id);
        }
        let start = Instant::now();
        let found = self.local.get_local(&action_id);
        if matches!(found, Ok(None)) && self.link.reads_remote {
            if self.link.is_dead() {
                return self.direct(&self.link.dead.why()).get_now(action_id);
            }
            return None;
        }
        self.local.record_get(&action_id, &found, start);
        if let Ok(found) = &found {
            self.link
                .note_get(action_id, found.as_ref().map(|e| e.size), start.elapsed());
        }
        Some(found)
    }

    async fn get(&self, action_id: ActionId) -> Result<Option<Entry>, CacheError> {
        if let Some(direct) = self.direct.get() {
            return direct.get(action_id).await;
        }
        let start = Instant::now();
        let answer = match self.link.get(action_id).await {
            Ok(answer) => answer,
            Err(why) => return self.direct(&why).get(action_id).await,
        };
        let took = start.elapsed();
        let found = answer.map_err(CacheError::Internal);
        let counter = match &found {
            Ok(Some(entry)) => {
                add(&self.forwarded.bytes, entry.size);
                &self.forwarded.hits
            }
            Ok(None) => &self.forwarded.misses,
            Err(_) => &self.forwarded.errors,
        };
        add(counter, 1);
        add(&self.forwarded.wait_nanos, nanos(took));
        self.local.record_get(&action_id, &found, start);
        found
    }

    async fn put(
        &self,
        action_id: ActionId,
        output_id: OutputId,
        body: Option<Spooled>,
    ) -> Result<PathBuf, CacheError> {
        if let Some(direct) = self.direct.get() {
            return direct.put(action_id, output_id, body).await;
        }
        let start = Instant::now();
        let (job, already) = self.local.put_local(action_id, output_id, body).await?;
        let path = job.path.clone();
        if let Err(why) = self.link.note_put(&job, already, start.elapsed()) {
            // Uploaded by the cache of its own instead.
            self.direct(&why).after_put(job);
        }
        Ok(path)
    }

    fn refused(&self, err: &RequestError) {
        self.local.refused(err);
    }

    async fn close(&self) {
        let closed = match self.direct.get() {
            Some(_) => None,
            None => self.link.close().await,
        };
        if let Some(direct) = self.direct.get() {
            // A session of its own waits for its uploads, as without a daemon.
            direct.finish().await;
        }
        let report = self.report(closed);
        crate::cache::ReportOptions::of(&self.config)
            .publish(&report)
            .await;
    }
}

/// The connection to the daemon: a writer task sends [`Ask`]s in order, a reader task hands
/// each answer to the get waiting for it. When either fails, the link is dead for good, and
/// everything waiting on it hears so.
#[derive(Debug)]
struct Link {
    out: mpsc::UnboundedSender<Ask>,
    waiting: Arc<Mutex<HashMap<u64, oneshot::Sender<Answer>>>>,
    closed: Arc<Mutex<Option<oneshot::Sender<Answer>>>>,
    dead: Arc<Dead>,
    next_id: AtomicU64,
    /// Gets answered from disk, not yet noted to the daemon.
    noted: Mutex<Vec<(ActionId, Option<u64>, u64)>>,
    reads_remote: bool,
    /// A get the daemon does not answer within this long is given up on, and the daemon too.
    get_wait: Duration,
}

/// Why the link died, once it has.
#[derive(Debug, Default)]
struct Dead {
    flag: AtomicBool,
    why: OnceLock<String>,
}

impl Dead {
    fn set(&self, why: String) {
        let _ = self.why.set(why);
        self.flag.store(true, Ordering::SeqCst);
    }

    fn why(&self) -> String {
        self.why.get().cloned().unwrap_or_default()
    }
}

impl Link {
    fn start(stream: UnixStream, accepted: Accepted, get_wait: Duration) -> io::Result<Self> {
        stream.set_nonblocking(true)?;
        let stream = tokio::net::UnixStream::from_std(stream)?;
        let (read, mut write) = stream.into_split();
        let waiting: Arc<Mutex<HashMap<u64, oneshot::Sender<Answer>>>> = Arc::default();
        let closed: Arc<Mutex<Option<oneshot::Sender<Answer>>>> = Arc::default();
        let dead = Arc::new(Dead::default());
        let (out, mut outgoing) = mpsc::unbounded_channel::<Ask>();

        let writer_dead = dead.clone();
        tokio::spawn(async move {
            let mut batch = Vec::new();
            while let Some(ask) = outgoing.recv().await {
                batch.clear();
                batch.extend(protocol::line(&ask));
                while let Ok(more) = outgoing.try_recv() {
                    batch.extend(protocol::line(&more));
                }
                let written = tokio::time::timeout(WRITE_WAIT, write.write_all(&batch)).await;
                if !matches!(written, Ok(Ok(()))) {
                    writer_dead.set("writing to the daemon failed".into());
                    break;
                }
            }
        });

        let reader_dead = dead.clone();
        let reader_waiting = waiting.clone();
        let reader_closed = closed.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(read);
            let mut buf = Vec::new();
            let why = loop {
                match protocol::read_message_async::<Answer>(&mut reader, &mut buf).await {
                    Ok(Some(answer @ Answer::Got { .. })) => {
                        let Answer::Got { id, .. } = &answer else {
                            unreachable!()
                        };
                        if let Some(waiter) = lock(&reader_waiting).remove(id) {
                            let _ = waiter.send(answer);
                        }
                    }
                    Ok(Some(answer @ Answer::Closed { .. })) => {
                        if let Some(waiter) = lock(&reader_closed).take() {
                            let _ = waiter.send(answer);
                        }
                    }
                    Ok(Some(other)) => break format!("the daemon sent {other:?} in a session"),
                    Ok(None) => break "the daemon closed the connection".to_string(),
                    Err(err) => break format!("reading from the daemon: {err}"),
                }
            };
            // First the flag, then the waiters: a get that registers after this sees the flag.
            reader_dead.set(why);
            lock(&reader_waiting).clear();
            lock(&reader_closed).take();
        });

        Ok(Self {
            out,
            waiting,
            closed,
            dead,
            next_id: AtomicU64::new(1),
            noted: Mutex::new(Vec::new()),
            reads_remote: accepted.reads_remote,
            get_wait,
        })
    }

    fn is_dead(&self) -> bool {
        self.dead.flag.load(Ordering::SeqCst)
    }

    fn send(&self, ask: Ask) -> Result<(), String> {
        if self.is_dead() {
            return Err(self.dead.why());
        }
        self.out
            .send(ask)
            .map_err(|_| "the connection to the daemon is gone".to_string())
    }

    /// Asks the daemon for a get that missed on disk. The outer error: the daemon is gone
    /// (or did not answer in time); the inner one: the daemon's answer was an error.
    async fn get(&self, action: ActionId) -> Result<Result<Option<Entry>, String>, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.waiting).insert(id, tx);
        if self.is_dead() {
            lock(&self.waiting).remove(&id);
            return Err(self.dead.why());
        }
        self.send(Ask::Get { id, action })?;
        match tokio::time::timeout(self.get_wait, rx).await {
            Ok(Ok(Answer::Got { found, error, .. })) => Ok(match error {
                Some(error) => Err(error),
                None => Ok(found.map(protocol::Found::into_entry)),
            }),
            Ok(Ok(_)) => unreachable!("only a Got is sent to a get"),
            Ok(Err(_)) => Err(self.dead.why()),
            Err(_) => {
                let why = format!(
                    "the daemon did not answer a get within {}s",
                    self.get_wait.as_secs()
                );
                self.dead.set(why.clone());
                Err(why)
            }
        }
    }

    /// Notes a get answered from disk; sent in batches.
    fn note_get(&self, action: ActionId, hit: Option<u64>, took: Duration) {
        if self.is_dead() {
            return;
        }
        let mut noted = lock(&self.noted);
        noted.push((action, hit, nanos(took)));
        if noted.len() >= HITS_PER_MESSAGE {
            let gets = std::mem::take(&mut *noted);
            let _ = self.send(Ask::Noted { gets });
        }
    }

    /// Hands a put stored on disk to the daemon for upload.
    fn note_put(&self, job: &Job, already: bool, took: Duration) -> Result<(), String> {
        self.send(Ask::Put(PutNote {
            action: job.action,
            output: job.output,
            size: job.size,
            time_ns: protocol::unix_nanos(job.time),
            already,
            took_ns: nanos(took),
        }))
    }

    /// Sends the noted gets and `close`, and waits for the daemon's answer.
    async fn close(&self) -> Option<(DaemonNote, Option<RemoteReport>)> {
        let gets = std::mem::take(&mut *lock(&self.noted));
        if !gets.is_empty() {
            self.send(Ask::Noted { gets }).ok()?;
        }
        let (tx, rx) = oneshot::channel();
        *lock(&self.closed) = Some(tx);
        if self.is_dead() {
            return None;
        }
        self.send(Ask::Close).ok()?;
        match tokio::time::timeout(CLOSE_WAIT, rx).await {
            Ok(Ok(Answer::Closed { note, remote })) => Some((note, remote.map(|r| *r))),
            _ => None,
        }
    }
}
