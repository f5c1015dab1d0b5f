//! The `goremotecache` binary: parses the command line, writes the handshake at once, then
//! serves the go command (or runs a subcommand) and maps failures to exit codes.

use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;

use goremotecache::cache::Cache;
use goremotecache::cache::stats;
use goremotecache::cacheprog::{session, wire};
use goremotecache::config::{
    Cli, Config, Control, ControlConfig, DoctorConfig, GcRemoteConfig, LocalDirs, Run, ServeConfig,
    TrimConfig,
};
use goremotecache::fsutil::explain_io;
use goremotecache::local::clear;
use goremotecache::local::disk::DiskCache;
use goremotecache::local::trim::{self, TrimPolicy};
use goremotecache::logging;

fn main() -> ExitCode {
    let run = match Run::from_cli(Cli::parse_args()) {
        Ok(run) => run,
        Err(err) => {
            eprintln!("goremotecache: {err}");
            return ExitCode::from(2);
        }
    };
    // Before the handshake: a cache directory another user could write is never used.
    if let Err(err) = run.check_dirs() {
        eprintln!("goremotecache: {err}");
        return ExitCode::from(2);
    }
    let result = match run {
        Run::Cache(config) => serve_stdio(&config),
        Run::Trim(trim) => {
            logging::init(trim.debug);
            trim_local(&trim)
        }
        Run::ClearLocal(clear) => {
            logging::init(clear.debug);
            clear_local(&clear.dirs)
        }
        Run::ClearRemote(clear) => {
            logging::init(clear.debug);
            goremotecache::cache::clear::clear_remote(&clear)
        }
        Run::GcRemote(gc) => {
            logging::init(gc.debug);
            gc_remote(&gc)
        }
        Run::Serve(serve) => {
            logging::init(serve.debug);
            let ServeConfig {
                args, s3, goproxy, ..
            } = *serve;
            match goremotecache::server::serve(&args, s3, goproxy.as_ref()) {
                Err(err) if err.is_usage() => {
                    eprintln!("goremotecache: {err}");
                    return ExitCode::from(2);
                }
                result => result.map_err(anyhow::Error::from),
            }
        }
        Run::Daemon(daemon) => {
            logging::init_with_file(daemon.build.debug, daemon.build.log_file.as_deref());
            goremotecache::daemon::serve::run(&daemon)
        }
        Run::Control(control) if control.control == Control::Connect => connect(&control),
        Run::Control(control) => {
            logging::init(control.build.debug);
            goremotecache::daemon::control::run(&control, &options_after_subcommand())
        }
        Run::Doctor(doctor) => {
            logging::init(doctor.build.debug);
            return match run_doctor(&doctor) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(err) => {
                    eprintln!("goremotecache: {err:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Run::Version => {
            println!(
                "goremotecache {} (GOCACHEPROG protocol commands: {})",
                env!("CARGO_PKG_VERSION"),
                wire::KNOWN_COMMANDS.join(", ")
            );
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("goremotecache: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The main job: answer the go command on stdin/stdout.
fn serve_stdio(config: &Config) -> anyhow::Result<()> {
    handshake(config)?;
    tracing::info!(
        "goremotecache {} started: {}",
        env!("CARGO_PKG_VERSION"),
        goremotecache::cache::describe(config)
    );
    serve_session(config)
}

/// `connect`: the session through the daemon, or directly if no daemon can serve it.
fn connect(config: &ControlConfig) -> anyhow::Result<()> {
    handshake(&config.build)?;
    tracing::info!(
        "goremotecache {} started: connect, {}",
        env!("CARGO_PKG_VERSION"),
        goremotecache::cache::describe(&config.build)
    );
    match goremotecache::daemon::bridge::run(config, &options_after_subcommand()) {
        Ok(()) => Ok(()),
        Err(why) => {
            logging::say(
                tracing::Level::WARN,
                &format!("connect: running without the daemon: {why}"),
            );
            serve_session(&config.build)
        }
    }
}

/// The options given after the subcommand's name: a daemon that `connect` or `warm` starts
/// gets them (it inherits the environment, and with it the GOREMOTECACHE_* variables).
fn options_after_subcommand() -> Vec<OsString> {
    std::env::args_os().skip(2).collect()
}

/// The handshake, at once: the go command waits for this line before it sends anything.
fn handshake(config: &Config) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout();
    stdout
        .write_all(&wire::handshake_line())
        .and_then(|()| stdout.flush())
        .context("writing the handshake")?;
    logging::init_with_file(config.debug, config.log_file.as_deref());
    if std::io::stdin().is_terminal() {
        eprintln!(
            "goremotecache: waiting for requests on stdin; it is meant to be started by the go command: \
             GOCACHEPROG=goremotecache go build ./... (see --help)"
        );
    }
    Ok(())
}

/// Serves the go command's session with a cache of this process's own.
fn serve_session(config: &Config) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("goremotecache")
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let _entered = runtime.enter();
    let cache = Arc::new(Cache::open(config));
    let end = runtime.block_on(session::run(cache.clone(), std::io::stdin(), stdout));
    tracing::debug!(?end, "session ended");
    if cache.pack_due() {
        write_pack_after_session(config, &runtime, &cache);
    }
    // Background work is not awaited: the go command has had every answer.
    runtime.shutdown_background();
    if let Some(policy) = &config.trim {
        trim_after_session(config, policy, &cache);
    }
    // Exiting closes stdout, which the go command waits for (unless the trim closed it).
    Ok(())
}

/// Writes the prefetch pack the session left (docs/prefetch.md): after stdout is closed, so
/// the go command, which waits only for that, does not wait for it. Stderr stays open when
/// the pack's figures are to be reported (`--stats`, `--stats-file`, `--debug`), so that
/// whoever reads it sees them (a CI step that reads it waits for the pack then).
fn write_pack_after_session(config: &Config, runtime: &tokio::runtime::Runtime, cache: &Cache) {
    let report_it = config.stats || config.debug || config.stats_file.is_some();
    if let Err(err) = close_stdout(!report_it) {
        tracing::debug!("not writing the prefetch pack: cannot close stdout: {err}");
        return;
    }
    runtime.block_on(cache.write_due_pack());
    let report = cache.stats().report();
    if let Some(pack) = report.remote.as_ref().and_then(|r| r.prefetch.as_ref())
        && config.stats
        && pack.pack.written > 0
    {
        eprintln!(
            "goremotecache: prefetch pack of {} entries ({}) written after the session, in {:.3}s",
            pack.pack.written,
            goremotecache::cache::stats::human_bytes(pack.pack.bytes_written),
            pack.pack.write_seconds
        );
    }
    if let Some(path) = &config.stats_file {
        report.write_json(path);
    }
}

/// The automatic trim, at most once a day per cache directory ([`trim::claim`]). It runs
/// after stdout is closed, so the go command, which waits only for that, is not kept
/// waiting. Stderr stays open only if the trim is to be reported (`--stats`, `--debug`):
/// whoever reads it (a CI step, a test harness) would otherwise wait for the trim too.
fn trim_after_session(config: &Config, policy: &TrimPolicy, cache: &Cache) {
    if let Err(err) = close_stdout(!(config.stats || config.debug)) {
        tracing::debug!("not trimming: cannot close stdout: {err}");
        return;
    }
    let root = &config.dirs.cache_dir;
    match trim::trim_if_due(root, policy) {
        Ok(None) => {}
        Ok(Some(report)) => {
            if config.stats {
                eprint!("goremotecache: {report}");
            }
            if let Some(path) = &config.stats_file {
                let mut full = cache.stats().report();
                full.trim = Some(report);
                full.write_json(path);
            }
        }
        Err(err) => tracing::warn!("trimming {}: {}", root.display(), explain_io(&err)),
    }
}

/// Points stdout (and, with `stderr_too`, stderr) at /dev/null, which closes the pipes the
/// go command reads.
fn close_stdout(stderr_too: bool) -> std::io::Result<()> {
    std::io::stdout().flush()?;
    let null = std::fs::File::options().write(true).open("/dev/null")?;
    rustix::stdio::dup2_stdout(&null)?;
    if stderr_too {
        rustix::stdio::dup2_stderr(&null)?;
    }
    Ok(())
}

/// `goremotecache trim`: trims now (waiting for a trim another process is running), or with
/// --dry-run says what it would remove.
fn trim_local(config: &TrimConfig) -> anyhow::Result<()> {
    let root = &config.dirs.cache_dir;
    if !root.is_dir() {
        println!("{}: does not exist, nothing to trim", root.display());
        return Ok(());
    }
    let cache = DiskCache::open(root).with_context(|| format!("opening {}", root.display()))?;
    let claim = if config.dry_run {
        None
    } else {
        Some(trim::claim_now(root).with_context(|| format!("locking {}", root.display()))?)
    };
    let report = trim::trim(&cache, &config.policy, config.dry_run)
        .map_err(|err| anyhow::anyhow!("trimming {}: {}", root.display(), explain_io(&err)))?;
    drop(claim);
    print!("{}: {report}", root.display());
    Ok(())
}

fn clear_local(dirs: &LocalDirs) -> anyhow::Result<()> {
    for dir in [&dirs.cache_dir, &dirs.lock_dir] {
        let cleared = clear::clear_dir(dir)?;
        if cleared.absent {
            println!("{}: does not exist, nothing to clear", dir.display());
        } else {
            println!(
                "{}: removed {} files ({})",
                dir.display(),
                cleared.files,
                stats::human_bytes(cleared.bytes)
            );
        }
    }
    Ok(())
}

fn gc_remote(config: &GcRemoteConfig) -> anyhow::Result<()> {
    use goremotecache::cache::gc;
    let store = config
        .store
        .objects()
        .context("gc-remote works on a bucket or container, not an HTTP server")??;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let started = std::time::SystemTime::now();
    let mut plan = runtime.block_on(gc::plan(
        &store,
        &config.namespaces,
        config.older_than,
        started,
    ))?;
    if config.modules {
        let modules = config
            .store
            .for_modules()
            .and_then(|modules| modules.objects())
            .context("gc-remote works on a bucket or container, not an HTTP server")??;
        runtime.block_on(gc::plan_modules(&modules, &mut plan))?;
    }
    println!("{plan}");
    if !config.yes {
        println!("dry run: nothing was deleted; run again with --yes to delete");
        return Ok(());
    }
    let location = plan.location.clone();
    let progress = |n: u64| eprintln!("goremotecache: {location}: deleted {n} objects so far");
    let swept = runtime.block_on(gc::sweep(&store, &plan, &progress))?;
    println!("{swept}");
    let (filters, keys) = runtime.block_on(gc::write_filters(&store, &plan, started));
    if filters > 0 {
        println!("key filters written: {filters} ({keys} keys kept)");
    }
    Ok(())
}

/// `goremotecache doctor`: prints the report (text, or one JSON object with `--json`);
/// whether the remote works as configured.
fn run_doctor(config: &DoctorConfig) -> anyhow::Result<bool> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let report = runtime.block_on(goremotecache::doctor::run(config));
    if config.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{report}");
    }
    Ok(report.ok)
}
