//! `goremotecache daemon`: one cache process for the go commands of a machine or a CI job.
//!
//! It holds one [`Cache`] (the local tier, the remote tier, one upload queue, one prefetch)
//! and serves any number of connections on its unix socket at once, each in a task of its
//! own: go command sessions bridged by `connect` (see [`super::protocol`]), and `status`,
//! `flush` and `warm`. With `--listen-plugin` it also serves plain GOCACHEPROG sessions on a
//! loopback TCP port, and with `--goproxy-listen` a module proxy ([`super::goproxy`]). It
//! exits on SIGTERM or SIGINT, or after `--idle-exit` with no connection open, no module
//! proxy request and no upload pending; either way it first stops listening, then gives the
//! pending uploads (the module proxy's too) their `--upload-wait`, writes the prefetch
//! manifest, says its totals on stderr, and runs the automatic trim when it is due.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use super::goproxy::{self, ModuleProxy};
use super::place::{self, Place, PlaceError};
use super::protocol::{
    self, Answer, Ask, FlushReport, Found, Hello, Kind, PrefetchStatus, Status, VERSION, WarmUp,
    Welcome,
};
use crate::cache::manifest::KeySource;
use crate::cache::stats::DaemonNote;
use crate::cache::upload::Job;
use crate::cache::{Cache, CacheError, PrefetchStart};
use crate::cacheprog::session::{self, Handler, MAX_IN_FLIGHT};
use crate::cacheprog::wire::{self, RequestError};
use crate::config::DaemonConfig;
use crate::fsutil::explain_io;
use crate::ids::{ActionId, OutputId};
use crate::local::disk::{Entry, Spooled};
use crate::local::trim::{self, TrimPolicy};
use crate::sync::lock;

/// How long a new connection may take to say what it wants.
const HELLO_WAIT: Duration = Duration::from_secs(5);

/// How long one answer may take to be written: a client that stops reading is dropped.
const WRITE_WAIT: Duration = Duration::from_secs(30);

/// How often the daemon looks whether it has been idle long enough.
const IDLE_TICK: Duration = Duration::from_millis(250);

/// Runs the daemon until a signal or `--idle-exit`. A daemon of the same settings already
/// running is not an error: this one says so and exits.
pub fn run(config: &DaemonConfig) -> anyhow::Result<()> {
    if config.detached {
        // Started by `connect`: out of the go command's session and process group, so that
        // its end (or a ^C meant for it) does not end the daemon.
        let _ = rustix::process::setsid();
    }
    let place = Place::for_build(&config.build, config.socket.as_deref())?;
    let bound = match place::bind(&place) {
        Ok(bound) => bound,
        Err(PlaceError::Taken { pid }) => {
            let pid = pid.map_or("unknown".to_string(), |p| p.to_string());
            if let Some(goproxy) = config.goproxy.as_ref().filter(|_| !config.detached) {
                // That daemon may have been started without it (by a build's `connect`):
                // saying "already running" would leave the job without its proxy. Not for a
                // daemon that `connect` started (the proxy from its environment): it lost a
                // race to another such daemon, with the same environment, and exits 0 so
                // that its `connect` uses the winner.
                anyhow::bail!(
                    "a daemon (pid {pid}) already serves {}, so --goproxy-listen {} is not \
                     started: stop that daemon first (`goremotecache status` shows whether it \
                     serves a module proxy)",
                    place.socket.display(),
                    goproxy.listen
                );
            }
            eprintln!(
                "goremotecache: a daemon (pid {pid}) already serves {}",
                place.socket.display()
            );
            return Ok(());
        }
        Err(err) => return Err(err.into()),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("goremotecache-daemon")
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let goproxy_listener = config.goproxy.as_ref().map(goproxy::bind).transpose()?;
    let place::Bound { listener, hold } = bound;
    listener
        .set_nonblocking(true)
        .context("preparing the socket")?;
    let module_proxy = match (&config.goproxy, &goproxy_listener) {
        (Some(goproxy), Some(listener)) => {
            let addr = listener.local_addr().context("the module proxy's port")?;
            let proxy = runtime.block_on(async {
                ModuleProxy::open(
                    goproxy,
                    &config.build.dirs.cache_dir,
                    config.build.remote.as_ref(),
                    addr,
                )
            })?;
            Some(Arc::new(proxy))
        }
        _ => None,
    };
    let (cache, warming) = runtime.block_on(async {
        let cache = Arc::new(Cache::open_idle(&config.build));
        let explicit =
            (config.build.remote.as_ref()).and_then(|r| r.prefetch.as_ref()?.key.clone());
        let warming = explicit.is_some_and(|key| {
            matches!(
                cache.start_prefetch(KeySource::explicit(&key)),
                PrefetchStart::Started(_)
            )
        });
        (cache, warming)
    });
    tracing::info!(
        "goremotecache {} started: daemon on {}, {}",
        env!("CARGO_PKG_VERSION"),
        place.socket.display(),
        crate::cache::describe(&config.build)
    );
    let daemon = Arc::new(Daemon {
        cache: cache.clone(),
        socket: place.socket.clone(),
        fingerprint: place.fingerprint.as_str().to_string(),
        started: Instant::now(),
        idle_exit: config.idle_exit,
        open: AtomicU64::new(0),
        sessions: AtomicU64::new(0),
        total: AtomicU64::new(0),
        last_active: std::sync::Mutex::new(Instant::now()),
        trim: (config.build.trim).map(|policy| (config.build.dirs.cache_dir.clone(), policy)),
        plugins: Default::default(),
        goproxy: module_proxy.clone(),
        warm_up: std::sync::Mutex::new(match warming {
            true => WarmUpState::Warming(Instant::now()),
            false => WarmUpState::Before,
        }),
    });
    let goproxy = module_proxy.zip(goproxy_listener);
    let why = runtime.block_on(
        daemon
            .clone()
            .serve(listener, config.listen_plugin, goproxy),
    )?;
    // Builds that start from now on start a daemon of their own (or run direct).
    drop(hold);
    runtime.block_on(async {
        let (pending, bytes) = cache.remote().map_or((0, 0), |r| r.pending_uploads());
        eprintln!(
            "goremotecache: daemon {} stopping ({why}); {pending} uploads pending ({})",
            std::process::id(),
            crate::cache::stats::human_bytes(bytes)
        );
        let module_uploads = async {
            let Some(proxy) = &daemon.goproxy else {
                return;
            };
            let wait = (config.build.remote.as_ref()).map_or(Duration::ZERO, |r| r.upload_wait);
            let left = proxy.finish(wait).await;
            if left > 0 {
                eprintln!("goremotecache: module proxy: {left} uploads not finished, dropped");
            }
        };
        tokio::join!(cache.finish(), module_uploads);
    });
    let report = cache.stats().report();
    tracing::info!("daemon {}", report.one_line());
    eprint!("goremotecache: daemon totals:\n{report}");
    if let Some(path) = &config.build.stats_file {
        report.write_json(path);
    }
    runtime.shutdown_background();
    daemon.trim_if_due();
    Ok(())
}

/// The daemon's state, shared by its connections.
#[derive(Debug)]
struct Daemon {
    cache: Arc<Cache>,
    socket: PathBuf,
    fingerprint: String,
    started: Instant,
    idle_exit: Option<Duration>,
    /// Connections open now (sessions, `status`, `flush`, `warm`), sessions open now, and
    /// sessions served since the start.
    open: AtomicU64,
    sessions: AtomicU64,
    total: AtomicU64,
    /// When the last connection opened or closed.
    last_active: std::sync::Mutex<Instant>,
    /// The cache directory and its automatic trim (`None`: `--trim=off`).
    trim: Option<(PathBuf, TrimPolicy)>,
    /// The `--listen-plugin` sessions open now, by session number: shut down when the
    /// daemon stops.
    plugins: std::sync::Mutex<std::collections::HashMap<u64, std::net::TcpStream>>,
    /// The module proxy (`--goproxy-listen`).
    goproxy: Option<Arc<ModuleProxy>>,
    /// The prefetch that ran before the first build: counted apart from the builds'.
    warm_up: std::sync::Mutex<WarmUpState>,
}

/// Whether the prefetch began before the first build (a warm-up: `warm`, or the daemon's
/// --prefetch-key), and what it had done when the build began.
#[derive(Debug)]
enum WarmUpState {
    /// No prefetch and no build yet.
    Before,
    /// Prefetching since then, no build yet.
    Warming(Instant),
    /// The first build began: what the warm-up had done by then.
    Measured(WarmUp),
    /// A build began first: no warm-up.
    None,
}

/// Counts a connection (and a session) open while it lives.
struct Open {
    daemon: Arc<Daemon>,
    session: bool,
}

impl Open {
    fn connection(daemon: &Arc<Daemon>) -> Self {
        daemon.open.fetch_add(1, Ordering::SeqCst);
        *lock(&daemon.last_active) = Instant::now();
        Self {
            daemon: daemon.clone(),
            session: false,
        }
    }

    /// Also a session: returns how many sessions the daemon has served, this one included.
    fn session(&mut self) -> u64 {
        self.session = true;
        self.daemon.build_begins();
        self.daemon.sessions.fetch_add(1, Ordering::SeqCst);
        self.daemon.total.fetch_add(1, Ordering::SeqCst) + 1
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        *lock(&self.daemon.last_active) = Instant::now();
        if self.session {
            self.daemon.sessions.fetch_sub(1, Ordering::SeqCst);
        }
        self.daemon.open.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Daemon {
    /// Accepts connections until a signal or the idle bound; says which.
    async fn serve(
        self: Arc<Self>,
        listener: std::os::unix::net::UnixListener,
        plugin: Option<SocketAddr>,
        goproxy: Option<(Arc<ModuleProxy>, std::net::TcpListener)>,
    ) -> anyhow::Result<&'static str> {
        let listener = UnixListener::from_std(listener).context("listening on the socket")?;
        let plugin = match plugin {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("--listen-plugin {addr}"))?,
            ),
            None => None,
        };
        let mut terminate = signal(SignalKind::terminate()).context("catching SIGTERM")?;
        let mut interrupt = signal(SignalKind::interrupt()).context("catching SIGINT")?;
        let mut tick = tokio::time::interval(IDLE_TICK);
        let mut line = format!(
            "goremotecache: daemon {} serving {}",
            std::process::id(),
            self.socket.display()
        );
        if let Some(plugin) = plugin.as_ref().and_then(|p| p.local_addr().ok()) {
            line.push_str(&format!(" and GOCACHEPROG sessions on {plugin}"));
        }
        eprintln!("{line}");
        let (stop_goproxy, stopped) = tokio::sync::watch::channel(false);
        let goproxy = goproxy.map(|(proxy, listener)| {
            eprintln!("goremotecache: {}", proxy.describe());
            tokio::spawn(proxy.serve(listener, stopped))
        });
        let mut connections = JoinSet::new();
        let why = loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        connections.spawn(self.clone().connection(stream));
                    }
                    Err(err) => tracing::warn!("accepting a connection: {err}"),
                },
                accepted = accept_tcp(plugin.as_ref()) => match accepted {
                    Ok(stream) => self.plugin_session(stream),
                    Err(err) => tracing::warn!("accepting a --listen-plugin connection: {err}"),
                },
                _ = terminate.recv() => break "SIGTERM",
                _ = interrupt.recv() => break "SIGINT",
                _ = tick.tick() => if self.idle_long_enough() {
                    break "idle";
                },
            }
            while connections.try_join_next().is_some() {}
        };
        // The sessions still open end here: their `connect`s go on by themselves (asking
        // again what they were waiting for), rather than handing puts to a daemon that is
        // about to stop uploading.
        connections.abort_all();
        for stream in lock(&self.plugins).values() {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        let _ = stop_goproxy.send(true);
        if let Some(task) = goproxy {
            let _ = task.await;
        }
        Ok(why)
    }

    /// The automatic trim, at most once a day per cache directory, as after every direct
    /// session: a daemon that runs for days trims too. Safe beside running builds.
    fn trim_if_due(&self) {
        if let Some((root, policy)) = &self.trim {
            match trim::trim_if_due(root, policy) {
                Ok(Some(report)) => eprint!("goremotecache: {report}"),
                Ok(None) => {}
                Err(err) => tracing::warn!("trimming {}: {}", root.display(), explain_io(&err)),
            }
        }
    }

    /// No connection open, no upload pending, for `--idle-exit`.
    fn idle_long_enough(&self) -> bool {
        let Some(bound) = self.idle_exit else {
            return false;
        };
        self.open.load(Ordering::SeqCst) == 0
            && self
                .cache
                .remote()
                .is_none_or(|r| r.pending_uploads().0 == 0)
            && lock(&self.last_active).elapsed() >= bound
            && self
                .goproxy
                .as_ref()
                .is_none_or(|proxy| proxy.idle_for(bound))
    }

    /// One connection on the unix socket: its hello, then what it asked for.
    async fn connection(self: Arc<Self>, stream: UnixStream) {
        let mut open = Open::connection(&self);
        match stream.peer_cred() {
            Ok(cred) if place::peer_is_us(cred.uid()) => {}
            Ok(cred) => {
                tracing::warn!("refused a connection of uid {}", cred.uid());
                return;
            }
            Err(err) => {
                tracing::warn!("refused a connection whose user is unknown: {err}");
                return;
            }
        }
        let (read, mut write) = stream.into_split();
        let mut reader = BufReader::new(read);
        let mut buf = Vec::new();
        let hello = tokio::time::timeout(
            HELLO_WAIT,
            protocol::read_message_async::<Hello>(&mut reader, &mut buf),
        )
        .await;
        let hello = match hello {
            Ok(Ok(Some(hello))) => hello,
            Ok(Ok(None)) => return,
            Ok(Err(err)) => {
                tracing::debug!("a client's hello: {err}");
                return;
            }
            Err(_) => {
                tracing::debug!("a client said nothing for {HELLO_WAIT:?}");
                return;
            }
        };
        if let Some(reason) = self.refusal(&hello) {
            let _ = send(&mut write, &Welcome::Refused { reason }).await;
            return;
        }
        let welcome = Welcome::Accepted {
            pid: std::process::id(),
            socket: self.socket.display().to_string(),
            reads_remote: self.cache.reads_remote(),
        };
        if send(&mut write, &welcome).await.is_err() {
            return;
        }
        match hello.kind {
            Kind::Session { key } => {
                let total = open.session();
                self.session(reader, write, key, total).await;
                drop(open);
                let daemon = self.clone();
                let _ = tokio::task::spawn_blocking(move || daemon.trim_if_due()).await;
            }
            Kind::Status => {
                let _ = send(&mut write, &Answer::Status(Box::new(self.status()))).await;
            }
            Kind::Flush { wait_ms } => self.flush(write, Duration::from_millis(wait_ms)).await,
            Kind::Warm { key } => {
                let (started, key) = match self.cache.start_prefetch(KeySource { parts: key }) {
                    PrefetchStart::Started(key) => {
                        self.warming_starts();
                        (true, key.to_string())
                    }
                    PrefetchStart::Already(key) => (false, key.to_string()),
                    PrefetchStart::Off => (false, String::new()),
                };
                let answer = Answer::Warmed { started, key };
                let _ = send(&mut write, &answer).await;
            }
        }
    }

    /// Why this daemon does not serve the client, if it does not.
    fn refusal(&self, hello: &Hello) -> Option<String> {
        if hello.version != VERSION {
            return Some(format!(
                "the daemon speaks protocol {VERSION} and the client {} (another release of goremotecache)",
                hello.version
            ));
        }
        (hello.fingerprint != self.fingerprint).then(|| {
            format!(
                "the daemon at {} serves other settings (fingerprint {}, the client's {}): a \
                 different backend, bucket, prefix, server, token, namespace, mode, cache \
                 directory or credentials",
                self.socket.display(),
                self.fingerprint,
                hello.fingerprint
            )
        })
    }

    /// A go command's session bridged by `connect`: gets that missed on local disk are
    /// answered from the remote tier, each in a task of its own; notes of what `connect`
    /// answered itself are counted, recorded for the manifest and uploaded. `close` is
    /// answered once the session's gets are; uploads go on.
    async fn session(
        self: &Arc<Self>,
        mut reader: BufReader<tokio::net::unix::OwnedReadHalf>,
        mut write: OwnedWriteHalf,
        key: Option<Vec<(String, String)>>,
        total: u64,
    ) {
        if let Some(parts) = key {
            self.cache.start_prefetch(KeySource { parts });
        }
        let (answers, mut outgoing) = mpsc::channel::<Answer>(MAX_IN_FLIGHT);
        let writer = tokio::spawn(async move {
            while let Some(answer) = outgoing.recv().await {
                if let Err(err) = send(&mut write, &answer).await {
                    tracing::debug!("a session stopped reading: {err}");
                    break;
                }
            }
        });
        let limit = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let mut tasks = JoinSet::new();
        let mut buf = Vec::new();
        let mut closed = false;
        loop {
            let ask = match protocol::read_message_async::<Ask>(&mut reader, &mut buf).await {
                Ok(Some(ask)) => ask,
                Ok(None) => break,
                Err(err) => {
                    tracing::debug!("a session's request: {err}");
                    break;
                }
            };
            match ask {
                Ask::Get { id, action } => {
                    let permit = limit.clone().acquire_owned().await.expect("never closed");
                    let cache = self.cache.clone();
                    let answers = answers.clone();
                    tasks.spawn(async move {
                        let answer = match Handler::get(&*cache, action).await {
                            Ok(found) => Answer::Got {
                                id,
                                found: found.as_ref().map(Found::of),
                                error: None,
                            },
                            Err(err) => Answer::Got {
                                id,
                                found: None,
                                error: Some(err.to_string()),
                            },
                        };
                        let _ = answers.send(answer).await;
                        drop(permit);
                    });
                }
                Ask::Noted { gets } => {
                    for (action, hit, took) in gets {
                        self.cache
                            .note_local_get(action, hit, Duration::from_nanos(took));
                    }
                }
                Ask::Put(put) => {
                    let job = Job {
                        action: put.action,
                        output: put.output,
                        size: put.size,
                        time: protocol::from_unix_nanos(put.time_ns),
                        path: self.cache.output_path(&put.output),
                    };
                    self.cache
                        .note_local_put(job, put.already, Duration::from_nanos(put.took_ns));
                }
                Ask::Close => {
                    closed = true;
                    break;
                }
            }
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
        if closed {
            let note = DaemonNote {
                pid: std::process::id(),
                socket: self.socket.display().to_string(),
                uploads_pending: self.cache.remote().map_or(0, |r| r.pending_uploads().0),
                sessions_total: total,
            };
            let remote = self.cache.stats().report().remote.map(Box::new);
            let _ = answers.send(Answer::Closed { note, remote }).await;
        }
        drop(answers);
        let _ = writer.await;
    }

    /// `flush`: waits up to `wait` for the pending uploads, telling the client how it goes,
    /// and writes the prefetch manifest.
    async fn flush(&self, mut write: OwnedWriteHalf, wait: Duration) {
        let start = Instant::now();
        let (progress_tx, mut progress_rx) = mpsc::unbounded_channel();
        let mut progress = move |pending: crate::cache::upload::Pending| {
            let _ = progress_tx.send(Answer::Progress {
                uploads: pending.uploads,
                bytes: pending.bytes,
                waited_ms: pending.waited.as_millis() as u64,
            });
        };
        let flushing = async {
            let flushed = self.cache.flush(wait, &mut progress).await;
            if let Some(proxy) = &self.goproxy {
                // The module proxy's uploads, within what is left of the same wait.
                proxy.finish(wait.saturating_sub(start.elapsed())).await;
            }
            drop(progress);
            flushed
        };
        let forward = async {
            while let Some(answer) = progress_rx.recv().await {
                if send(&mut write, &answer).await.is_err() {
                    break;
                }
            }
        };
        let (flushed, ()) = tokio::join!(flushing, forward);
        let remote = self.cache.stats().report().remote;
        let report = FlushReport {
            socket: self.socket.display().to_string(),
            uploaded: remote.as_ref().map_or(0, |r| r.uploads),
            dropped: remote.as_ref().map_or(0, |r| r.uploads_dropped),
            failed: remote.as_ref().map_or(0, |r| r.upload_errors),
            left: flushed.left,
            manifest_written: flushed.manifest_written,
            seconds: start.elapsed().as_secs_f64(),
        };
        let _ = send(&mut write, &Answer::Flushed(Box::new(report))).await;
    }

    /// A prefetch starts ahead of the builds (`warm`): a warm-up, if no build began yet.
    fn warming_starts(&self) {
        let mut state = lock(&self.warm_up);
        if matches!(*state, WarmUpState::Before) {
            *state = WarmUpState::Warming(Instant::now());
        }
    }

    /// A build begins: a warm-up in progress is measured now, and none can start after it.
    fn build_begins(&self) {
        let mut state = lock(&self.warm_up);
        *state = match &*state {
            WarmUpState::Before => WarmUpState::None,
            WarmUpState::Warming(since) => WarmUpState::Measured(self.warm_up_so_far(*since, true)),
            WarmUpState::Measured(_) | WarmUpState::None => return,
        };
    }

    /// What the prefetch fetched since `since`, the warm-up's start.
    fn warm_up_so_far(&self, since: Instant, build_began: bool) -> WarmUp {
        let report = self.cache.stats().report();
        let prefetch = (report.remote.as_ref()).and_then(|r| r.prefetch.as_ref());
        WarmUp {
            fetched: prefetch.map_or(0, |p| p.fetched),
            bytes: prefetch.map_or(0, |p| p.bytes),
            seconds: since.elapsed().as_secs_f64(),
            build_began,
        }
    }

    /// The daemon's figures.
    fn status(&self) -> Status {
        let warm_up = match &*lock(&self.warm_up) {
            WarmUpState::Warming(since) => Some(self.warm_up_so_far(*since, false)),
            WarmUpState::Measured(warm_up) => Some(warm_up.clone()),
            WarmUpState::Before | WarmUpState::None => None,
        };
        let report = self.cache.stats().report();
        let remote = report.remote.as_ref();
        let count = |f: fn(&crate::cache::stats::RemoteReport) -> u64| remote.map_or(0, f);
        let (pending, pending_bytes) =
            (self.cache.remote()).map_or((0, 0), |r| r.pending_uploads());
        Status {
            pid: std::process::id(),
            socket: self.socket.display().to_string(),
            fingerprint: self.fingerprint.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            idle_exit_seconds: self.idle_exit.map(|d| d.as_secs_f64()),
            remote: self.cache.remote().map(|r| r.location()),
            sessions: self.sessions.load(Ordering::SeqCst),
            sessions_total: self.total.load(Ordering::SeqCst),
            gets: report.gets,
            hits: report.hits,
            misses: report.misses,
            puts: report.puts,
            remote_hits: count(|r| r.hits),
            remote_misses: count(|r| r.misses),
            uploads_pending: pending,
            uploads_pending_bytes: pending_bytes,
            uploads_done: count(|r| r.uploads),
            uploads_dropped: count(|r| r.uploads_dropped),
            upload_errors: count(|r| r.upload_errors),
            prefetch: self.cache.prefetcher().map(|prefetcher| {
                let p = remote.and_then(|r| r.prefetch.as_ref());
                PrefetchStatus {
                    key: prefetcher.key().to_string(),
                    listed: p.map_or(0, |p| p.listed),
                    fetched: p.map_or(0, |p| p.fetched),
                    bytes: p.map_or(0, |p| p.bytes),
                    used: p.map_or(0, |p| p.used),
                    wasted: p.map_or(0, |p| p.wasted),
                    seconds: p.map_or(0.0, |p| p.seconds),
                    warm_up: warm_up.clone(),
                }
            }),
            goproxy: self.goproxy.as_ref().map(|proxy| proxy.status()),
        }
    }

    /// A plain GOCACHEPROG session on the `--listen-plugin` port: the handshake, then the
    /// go command's protocol, served by the daemon's cache as a direct session would be
    /// (without the uploads' wait at close).
    fn plugin_session(self: &Arc<Self>, stream: tokio::net::TcpStream) {
        let mut open = Open::connection(self);
        let number = open.session();
        let prepared = stream.into_std().and_then(|stream| {
            stream.set_nonblocking(false)?;
            stream.set_write_timeout(Some(WRITE_WAIT))?;
            let mut write = stream.try_clone()?;
            write.write_all(&wire::handshake_line())?;
            write.flush()?;
            lock(&self.plugins).insert(number, stream.try_clone()?);
            Ok((stream, write))
        });
        let (read, write) = match prepared {
            Ok(pair) => pair,
            Err(err) => {
                tracing::debug!("a --listen-plugin session: {err}");
                return;
            }
        };
        let handler = Arc::new(Plugin(self.cache.clone()));
        let daemon = self.clone();
        tokio::spawn(async move {
            session::run(handler, read, write).await;
            lock(&daemon.plugins).remove(&number);
            drop(open);
        });
    }
}

/// The next connection on the plugin port; never, without one.
async fn accept_tcp(listener: Option<&TcpListener>) -> io::Result<tokio::net::TcpStream> {
    match listener {
        Some(listener) => listener.accept().await.map(|(stream, _)| stream),
        None => std::future::pending().await,
    }
}

/// Writes one message, within [`WRITE_WAIT`].
async fn send<T: serde::Serialize>(write: &mut OwnedWriteHalf, message: &T) -> io::Result<()> {
    let line = protocol::line(message);
    match tokio::time::timeout(WRITE_WAIT, write.write_all(&line)).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client stopped reading",
        )),
    }
}

/// A `--listen-plugin` session: the daemon's cache, except that `close` leaves the uploads
/// and the prefetch to the daemon.
#[derive(Debug)]
struct Plugin(Arc<Cache>);

impl Handler for Plugin {
    type Error = CacheError;

    fn spool_file(&self) -> io::Result<tempfile::NamedTempFile> {
        self.0.spool_file()
    }

    fn get_now(&self, action_id: ActionId) -> Option<Result<Option<Entry>, CacheError>> {
        self.0.get_now(action_id)
    }

    async fn get(&self, action_id: ActionId) -> Result<Option<Entry>, CacheError> {
        self.0.get(action_id).await
    }

    async fn put(
        &self,
        action_id: ActionId,
        output_id: OutputId,
        body: Option<Spooled>,
    ) -> Result<PathBuf, CacheError> {
        self.0.put(action_id, output_id, body).await
    }

    fn refused(&self, err: &RequestError) {
        self.0.refused(err);
    }

    async fn close(&self) {}
}
