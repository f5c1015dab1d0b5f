//! `goremotecache flush`, `status` and `warm`: the commands that act on running daemons.
//! Given a build's options (or `--socket`), they act on that build's daemon; `flush` and
//! `status` given no remote store act on every daemon under the cache directory, found by
//! their records ([`place::records`]).

use std::ffi::OsString;
use std::io::BufRead;
use std::time::Duration;

use super::client::{self, Accepted};
use super::place::{self, Fingerprint, Place};
use super::protocol::{self, Answer, FlushReport, Kind, Status};
use crate::cache::prefetch::Prefetcher;
use crate::cache::stats::human_bytes;
use crate::config::{Control, ControlConfig};

/// Runs `flush`, `status` or `warm`. `start`: the options to start a daemon with (`warm`).
pub fn run(config: &ControlConfig, start: &[OsString]) -> anyhow::Result<()> {
    let targets = targets(config)?;
    match config.control {
        Control::Status { json } => status(config, &targets, json),
        Control::Flush => flush(config, &targets),
        Control::Warm => warm(config, &targets[0].0, start),
        Control::Connect => unreachable!("connect is the bridge"),
    }
}

/// The daemons meant: the build's own, or every one under the cache directory.
fn targets(config: &ControlConfig) -> anyhow::Result<Vec<(Place, Option<Fingerprint>)>> {
    let place = Place::for_build(&config.build, config.socket.as_deref())?;
    if !config.every_daemon() {
        let fingerprint = place.fingerprint.clone();
        return Ok(vec![(place, Some(fingerprint))]);
    }
    Ok(place::records(&config.build.dirs.cache_dir)
        .into_iter()
        .map(|record| {
            let mut each = place.clone();
            each.socket = record.socket;
            each.fingerprint = Fingerprint::from_record(&record.fingerprint);
            (each, None)
        })
        .collect())
}

/// Connects and says hello; `None` (said on stderr) if that daemon is not there.
fn open(
    place: &Place,
    kind: Kind,
) -> Option<(Accepted, std::io::BufReader<std::os::unix::net::UnixStream>)> {
    let stream = match client::reach(place, None) {
        Ok(stream) => stream,
        Err(why) => {
            eprintln!("goremotecache: {}: {why}", place.socket.display());
            return None;
        }
    };
    match client::hello(&stream, &place.fingerprint, kind) {
        Ok(pair) => Some(pair),
        Err(why) => {
            eprintln!("goremotecache: {}: {why}", place.socket.display());
            None
        }
    }
}

fn none_running(config: &ControlConfig, targets: &[(Place, Option<Fingerprint>)]) -> String {
    match targets {
        [(place, Some(_))] => format!(
            "no daemon is running for these settings (socket {})",
            place.socket.display()
        ),
        _ => format!(
            "no daemon is running under {}",
            config.build.dirs.cache_dir.display()
        ),
    }
}

fn status(
    config: &ControlConfig,
    targets: &[(Place, Option<Fingerprint>)],
    json: bool,
) -> anyhow::Result<()> {
    let mut found = 0;
    for (place, _) in targets {
        if !running(place) {
            continue;
        }
        let Some((_, mut reader)) = open(place, Kind::Status) else {
            continue;
        };
        let answer = protocol::read_message::<Answer>(&mut reader, &mut Vec::new());
        let Ok(Some(Answer::Status(status))) = answer else {
            eprintln!(
                "goremotecache: {}: the daemon did not send its status",
                place.socket.display()
            );
            continue;
        };
        found += 1;
        if json {
            println!("{}", serde_json::to_string(&status)?);
        } else {
            print!("{}", StatusText(&status));
        }
    }
    if found == 0 && !json {
        println!("{}", none_running(config, targets));
    }
    Ok(())
}

fn flush(config: &ControlConfig, targets: &[(Place, Option<Fingerprint>)]) -> anyhow::Result<()> {
    let wait = (config.build.remote.as_ref()).map_or(Duration::from_secs(30), |r| r.upload_wait);
    let kind = Kind::Flush {
        wait_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
    };
    let mut found = 0;
    let mut failed = false;
    for (place, _) in targets {
        if !running(place) {
            continue;
        }
        let Some((_, mut reader)) = open(place, kind.clone()) else {
            failed = true;
            continue;
        };
        found += 1;
        match follow_flush(&mut reader, &place.socket) {
            Some(report) => println!("{}", FlushText(&report)),
            None => {
                eprintln!(
                    "goremotecache: {}: the daemon went away during the flush",
                    place.socket.display()
                );
                failed = true;
            }
        }
    }
    if found == 0 && !failed {
        println!("{}", none_running(config, targets));
    }
    if failed {
        anyhow::bail!("a daemon could not be flushed");
    }
    Ok(())
}

/// Reads a flush's progress (said on stderr) to its report.
fn follow_flush(reader: &mut impl BufRead, socket: &std::path::Path) -> Option<FlushReport> {
    let mut buf = Vec::new();
    loop {
        match protocol::read_message::<Answer>(reader, &mut buf).ok()?? {
            Answer::Progress {
                uploads,
                bytes,
                waited_ms,
            } => eprintln!(
                "goremotecache: {}: waiting for {uploads} uploads ({}), {}s so far",
                socket.display(),
                human_bytes(bytes),
                waited_ms / 1000
            ),
            Answer::Flushed(report) => return Some(*report),
            _ => return None,
        }
    }
}

fn warm(config: &ControlConfig, place: &Place, start: &[OsString]) -> anyhow::Result<()> {
    let source = (config.build.remote.as_ref())
        .and_then(|r| r.prefetch.as_ref())
        .map(Prefetcher::source_for)
        .ok_or_else(|| anyhow::anyhow!("warm needs a remote store with prefetch on"))?;
    let stream = client::reach(place, Some(start))
        .map_err(|why| anyhow::anyhow!("{}: {why}", place.socket.display()))?;
    let (accepted, mut reader) = client::hello(
        &stream,
        &place.fingerprint,
        Kind::Warm { key: source.parts },
    )
    .map_err(|why| anyhow::anyhow!("{}: {why}", place.socket.display()))?;
    match protocol::read_message::<Answer>(&mut reader, &mut Vec::new()) {
        Ok(Some(Answer::Warmed { started: true, key })) => println!(
            "{}: daemon {} prefetching the manifest of {key}",
            accepted.socket, accepted.pid
        ),
        Ok(Some(Answer::Warmed {
            started: false,
            key,
        })) if !key.is_empty() => println!(
            "{}: daemon {} is already prefetching the manifest of {key}",
            accepted.socket, accepted.pid
        ),
        Ok(Some(Answer::Warmed { .. })) => {
            anyhow::bail!("the daemon has no remote store, or prefetch is off")
        }
        _ => anyhow::bail!("the daemon did not answer the warm-up"),
    }
    Ok(())
}

/// Whether a daemon may be listening at `place` (a socket file is there).
fn running(place: &Place) -> bool {
    std::fs::symlink_metadata(&place.socket).is_ok()
}

struct StatusText<'a>(&'a Status);

impl std::fmt::Display for StatusText<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.0;
        writeln!(
            f,
            "daemon {} at {} (goremotecache {}, fingerprint {}), up {:.0}s, {}",
            s.pid,
            s.socket,
            s.version,
            s.fingerprint,
            s.uptime_seconds,
            match s.idle_exit_seconds {
                Some(idle) => format!("exits after {idle:.0}s idle"),
                None => "never exits when idle".into(),
            }
        )?;
        writeln!(
            f,
            "  remote: {}",
            s.remote.as_deref().unwrap_or("none (local disk only)")
        )?;
        writeln!(
            f,
            "  sessions: {} open, {} served",
            s.sessions, s.sessions_total
        )?;
        writeln!(
            f,
            "  gets: {} ({} hits, {} misses; {} from the remote, {} not there), puts: {}",
            s.gets, s.hits, s.misses, s.remote_hits, s.remote_misses, s.puts
        )?;
        writeln!(
            f,
            "  uploads: {} pending ({}), {} done, {} dropped, {} failed",
            s.uploads_pending,
            human_bytes(s.uploads_pending_bytes),
            s.uploads_done,
            s.uploads_dropped,
            s.upload_errors
        )?;
        if let Some(g) = &s.goproxy {
            writeln!(
                f,
                "  module proxy: GOPROXY={}, {} requests ({} hits, {} fetched, {} fallbacks, {} not found, {} errors); uploads: {} pending, {} done, {} dropped, {} failed",
                g.address,
                g.requests,
                g.hits,
                g.fetched,
                g.fallbacks,
                g.not_found,
                g.errors,
                g.uploads_pending,
                g.uploads_done,
                g.uploads_dropped,
                g.uploads_failed
            )?;
        }
        match &s.prefetch {
            Some(p) => {
                writeln!(
                    f,
                    "  prefetch: key {}, {} listed, {} fetched ({}) in {:.3}s, {} used, {} wasted",
                    p.key,
                    p.listed,
                    p.fetched,
                    human_bytes(p.bytes),
                    p.seconds,
                    p.used,
                    p.wasted
                )?;
                if let Some(w) = &p.warm_up {
                    writeln!(
                        f,
                        "  warm-up: {} fetched ({}) in the {:.3}s {}",
                        w.fetched,
                        human_bytes(w.bytes),
                        w.seconds,
                        match w.build_began {
                            true => "before the first build began",
                            false => "since it began (no build yet)",
                        }
                    )?;
                }
                Ok(())
            }
            None => writeln!(f, "  prefetch: not started"),
        }
    }
}

struct FlushText<'a>(&'a FlushReport);

impl std::fmt::Display for FlushText<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = self.0;
        write!(
            f,
            "{}: {} uploaded, {} dropped, {} failed, {} still pending; ",
            r.socket, r.uploaded, r.dropped, r.failed, r.left
        )?;
        match r.manifest_written {
            0 => write!(f, "prefetch manifest unchanged")?,
            n => write!(f, "prefetch manifest of {n} entries written")?,
        }
        write!(f, " ({:.1}s)", r.seconds)
    }
}
