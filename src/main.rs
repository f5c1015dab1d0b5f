//! The `goremotecache` binary: parses the command line, writes the handshake at once, then
//! serves the go command (or runs a subcommand) and maps failures to exit codes.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;

use goremotecache::cache::Cache;
use goremotecache::cache::stats;
use goremotecache::cacheprog::{session, wire};
use goremotecache::config::{Cli, Command, Config};
use goremotecache::local::clear;
use goremotecache::{fsutil, logging, store};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::from_options(&cli.options) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("goremotecache: {err}");
            return ExitCode::from(2);
        }
    };
    // Before the handshake: a cache directory another user could write is never used.
    let dirs = match &cli.command {
        None => config.check_dirs(true),
        Some(Command::ClearLocal) => config.check_dirs(false),
        Some(Command::Serve(args)) => match &args.storage_dir {
            Some(dir) if !config.trust_cache_dir => {
                fsutil::private_dir(dir, "storage directory", fsutil::Links::Follow)
            }
            _ => Ok(()),
        },
        Some(Command::ClearRemote { .. } | Command::Version) => Ok(()),
    };
    if let Err(err) = dirs {
        eprintln!("goremotecache: {err}");
        return ExitCode::from(2);
    }
    let result = match &cli.command {
        None => serve_stdio(&config),
        Some(Command::ClearLocal) => clear_local(&config),
        Some(Command::ClearRemote { yes }) => clear_remote(&config, *yes),
        Some(Command::Serve(args)) => {
            logging::init(config.debug);
            match goremotecache::config::s3_config(&cli.options) {
                Ok(s3) => goremotecache::server::serve(args, s3).map_err(anyhow::Error::from),
                Err(err) => {
                    eprintln!("goremotecache: {err}");
                    return ExitCode::from(2);
                }
            }
        }
        Some(Command::Version) => {
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

fn clear_local(config: &Config) -> anyhow::Result<()> {
    for dir in [&config.cache_dir, &config.lock_dir] {
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

fn clear_remote(config: &Config, yes: bool) -> anyhow::Result<()> {
    let remote = config
        .remote
        .as_ref()
        .context("no remote store is configured: set --s3-bucket (and --s3-prefix)")?;
    let store = store::open_store(&remote.store, remote.mode, remote.timeout)?;
    if !yes {
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
