//! The `goremotecache` binary: parses the command line, writes the handshake at once, then
//! serves the go command (or runs a subcommand) and maps failures to exit codes.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;

use goremotecache::cache::Cache;
use goremotecache::cache::stats;
use goremotecache::cacheprog::{session, wire};
use goremotecache::config::{
    ClearRemoteConfig, Cli, Config, GcRemoteConfig, LocalDirs, RemoteMode, Run, ServeConfig,
};
use goremotecache::local::clear;
use goremotecache::{logging, store};

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
        Run::ClearLocal(clear) => {
            logging::init(clear.debug);
            clear_local(&clear.dirs)
        }
        Run::ClearRemote(clear) => {
            logging::init(clear.debug);
            clear_remote(&clear)
        }
        Run::GcRemote(gc) => {
            logging::init(gc.debug);
            gc_remote(&gc)
        }
        Run::Serve(serve) => {
            logging::init(serve.debug);
            let ServeConfig { args, s3, .. } = *serve;
            goremotecache::server::serve(&args, s3).map_err(anyhow::Error::from)
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
    // The go command waits for this line before it sends anything: it comes first.
    let mut stdout = std::io::stdout();
    stdout
        .write_all(&wire::handshake_line())
        .and_then(|()| stdout.flush())
        .context("writing the handshake")?;
    logging::init(config.debug);
    if std::io::stdin().is_terminal() {
        eprintln!(
            "goremotecache: waiting for requests on stdin; it is meant to be started by the go command: \
             GOCACHEPROG=goremotecache go build ./... (see --help)"
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("goremotecache")
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let _entered = runtime.enter();
    let cache = Arc::new(Cache::open(config));
    let end = runtime.block_on(session::run(cache, std::io::stdin(), stdout));
    tracing::debug!(?end, "session ended");
    // Exiting closes stdout, which the go command waits for; background work is not awaited.
    runtime.shutdown_background();
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

fn clear_remote(clear: &ClearRemoteConfig) -> anyhow::Result<()> {
    let config = clear.store.as_ref().context(
        "no remote store is configured: set --s3-bucket (and --s3-prefix) or --http-url",
    )?;
    let store = store::open_store(config, RemoteMode::ReadWrite, clear.timeout)?;
    if !clear.yes {
        anyhow::bail!(
            "this deletes every entry under {}; run again with --yes to do it",
            store.location()
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let location = store.location();
    let progress = |n: u64| eprintln!("goremotecache: {location}: deleted {n} entries so far");
    let deleted = runtime.block_on(store.clear(&progress))?;
    println!("{location}: deleted {deleted} entries");
    Ok(())
}

fn gc_remote(config: &GcRemoteConfig) -> anyhow::Result<()> {
    use goremotecache::cache::gc;
    let store = store::s3::S3Store::new(&config.s3)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let plan = runtime.block_on(gc::plan(
        &store,
        config.older_than,
        std::time::SystemTime::now(),
    ))?;
    println!("{plan}");
    if !config.yes {
        println!("dry run: nothing was deleted; run again with --yes to delete");
        return Ok(());
    }
    let location = plan.location.clone();
    let progress = |n: u64| eprintln!("goremotecache: {location}: deleted {n} objects so far");
    let swept = runtime.block_on(gc::sweep(&store, &plan, &progress))?;
    println!("{location}: {swept}");
    Ok(())
}
