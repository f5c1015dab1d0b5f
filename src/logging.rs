//! Messages on stderr, which is the user's terminal: quiet by default (warnings only), every
//! request with `--debug`, each line prefixed with `goremotecache:` so that it is clear which
//! program speaks among the go command's output.
//!
//! With `--log-file` the messages go to that file instead, and stderr stays quiet (tools such
//! as golangci-lint hide the go command's stderr, and with it ours). The file is appended to,
//! one line per message, each with the UTC time and the process ID, since several processes
//! write it at once: each line is one `write` on a file opened with `O_APPEND`, so lines never
//! interleave. The file also gets the informational lines that stderr does not (each run's
//! start and summary), so that it shows every run even when nothing went wrong. It is opened
//! without following a symbolic link, and refused unless it is a regular file of this user:
//! a log file is a place where anyone who can replace it would learn of every build.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Sends log messages to stderr: warnings and errors, and with `debug` goremotecache's own
/// debug messages too (not those of the HTTP and S3 libraries, which would drown them).
pub fn init(debug: bool) {
    init_with_file(debug, None);
}

/// Whether the messages go to a `--log-file`.
static TO_FILE: AtomicBool = AtomicBool::new(false);

/// Says `message` as goremotecache's plain progress lines on stderr always did
/// (`goremotecache: MESSAGE`), or, with a `--log-file`, into that file at `level` (so that
/// stderr stays quiet).
pub fn say(level: Level, message: &str) {
    match (TO_FILE.load(Ordering::Relaxed), level) {
        (false, _) => eprintln!("goremotecache: {message}"),
        (true, Level::ERROR | Level::WARN) => tracing::warn!("{message}"),
        (true, _) => tracing::info!("{message}"),
    }
}

/// As [`init`], or into `log_file` (`--log-file`) when one is given: there with the
/// informational lines too. A log file that cannot be used is said once on stderr, and the
/// messages go to stderr.
pub fn init_with_file(debug: bool, log_file: Option<&Path>) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let file = log_file.and_then(|path| match open_log(path) {
        Ok(file) => Some(Arc::new(file)),
        Err(err) => {
            eprintln!(
                "goremotecache: --log-file {}: {err}; messages go to stderr",
                path.display()
            );
            None
        }
    });
    let ours = match (debug, file.is_some()) {
        (true, _) => Level::DEBUG,
        (false, true) => Level::INFO,
        (false, false) => Level::WARN,
    };
    let filter = Targets::new()
        .with_target("goremotecache", ours)
        .with_default(Level::WARN);
    TO_FILE.store(file.is_some(), Ordering::Relaxed);
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match file {
        Some(file) => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(file)
                    .with_ansi(false)
                    .event_format(Prefixed { stamped: true }),
            )
            .try_init(),
        None => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(false)
                    .event_format(Prefixed { stamped: false }),
            )
            .try_init(),
    };
}

/// Opens the log file for appending, creating it (mode 0600) if missing: never through a
/// symbolic link, never a FIFO or device, never another user's file.
pub fn open_log(path: &Path) -> io::Result<File> {
    let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
    let file = File::options()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(flags.bits() as i32)
        .open(path)
        .map_err(|err| match err.raw_os_error() {
            Some(code) if code == rustix::io::Errno::LOOP.raw_os_error() => io::Error::other(
                "is a symbolic link, which a log file must not be: give the real path",
            ),
            _ => io::Error::other(format!(
                "cannot open it: {}",
                crate::fsutil::explain_io(&err)
            )),
        })?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other(
            "is not a regular file: give the path of a file",
        ));
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(io::Error::other(format!(
            "belongs to user {}, not to you (uid {me}): use a file of your own",
            meta.uid()
        )));
    }
    Ok(file)
}

/// Each line: `goremotecache: LEVEL: message`; in the log file, with the UTC time and the
/// process ID first.
struct Prefixed {
    stamped: bool,
}

impl<S, N> FormatEvent<S, N> for Prefixed
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let level = match *event.metadata().level() {
            Level::ERROR => "error",
            Level::WARN => "warning",
            Level::INFO => "info",
            Level::DEBUG => "debug",
            Level::TRACE => "trace",
        };
        if self.stamped {
            write!(
                writer,
                "{} goremotecache[{}]: {level}: ",
                humantime::format_rfc3339_millis(std::time::SystemTime::now()),
                std::process::id()
            )?;
        } else {
            write!(writer, "goremotecache: {level}: ")?;
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_file_is_created_private_and_appended_to() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        io::Write::write_all(&mut open_log(&path).unwrap(), b"one\n").unwrap();
        io::Write::write_all(&mut open_log(&path).unwrap(), b"two\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "one\ntwo\n");
        let mode = std::fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_symlink_a_directory_or_a_fifo_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, "").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = open_log(&link).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "");

        let err = open_log(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("cannot open it") || err.contains("not a regular file"),
            "{err}"
        );

        let fifo = dir.path().join("fifo");
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
        )
        .unwrap();
        // Nobody reads the FIFO: the open fails at once instead of blocking.
        assert!(open_log(&fifo).is_err());
    }
}
