//! Reaching a daemon from `connect`, `flush`, `status` and `warm`: connecting to its socket
//! (starting the daemon first where the command may), and the hello, all within time bounds,
//! so that a daemon that is gone or stuck costs a command a few seconds at most.

use std::ffi::OsString;
use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use super::place::{self, Fingerprint, Place, PlaceError};
use super::protocol::{self, Hello, Kind, VERSION, Welcome};

/// How long a daemon that `connect` started may take to listen.
const START_WAIT: Duration = Duration::from_secs(5);

/// How long the daemon may take to answer the hello.
const HELLO_WAIT: Duration = Duration::from_secs(3);

/// Connects to the daemon at `place`. With `start` (the build's options, as `daemon` takes
/// them), a daemon that is not running is started first. The error says why no daemon could
/// be reached, for one line on stderr.
pub fn reach(place: &Place, start: Option<&[OsString]>) -> Result<UnixStream, String> {
    let not_running = match place::connect(&place.socket) {
        Ok(stream) => return Ok(stream),
        Err(err @ PlaceError::NotRunning) => err,
        Err(err) => return Err(err.to_string()),
    };
    let Some(options) = start else {
        return Err(not_running.to_string());
    };
    let mut args: Vec<OsString> = vec!["daemon".into(), "--detached".into()];
    args.extend(options.iter().cloned());
    let mut child =
        place::spawn_daemon(place, &args).map_err(|err| format!("starting a daemon: {err}"))?;
    let deadline = Instant::now() + START_WAIT;
    let mut exited = None;
    loop {
        std::thread::sleep(Duration::from_millis(5));
        match place::connect(&place.socket) {
            Ok(stream) => return Ok(stream),
            Err(PlaceError::NotRunning) => {}
            Err(err) => return Err(err.to_string()),
        }
        // A daemon that exited at once failed to start (status 0: another one won the race,
        // and is about to listen).
        if exited.is_none()
            && let Ok(Some(status)) = child.try_wait()
        {
            if !status.success() {
                return Err(format!(
                    "the daemon it started exited ({status}); see {}",
                    place.log.display()
                ));
            }
            exited = Some(status);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the daemon it started did not listen within {}s; see {}",
                START_WAIT.as_secs(),
                place.log.display()
            ));
        }
    }
}

/// What the daemon said to the hello.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub pid: u32,
    pub socket: String,
    pub reads_remote: bool,
}

/// Says hello on `stream`; the daemon's welcome, or why it refused (or did not answer).
/// The stream's time bounds are cleared again afterwards.
pub fn hello(
    stream: &UnixStream,
    fingerprint: &Fingerprint,
    kind: Kind,
) -> Result<(Accepted, BufReader<UnixStream>), String> {
    let io = |err: std::io::Error| format!("talking to the daemon: {err}");
    stream.set_read_timeout(Some(HELLO_WAIT)).map_err(io)?;
    stream.set_write_timeout(Some(HELLO_WAIT)).map_err(io)?;
    let hello = Hello {
        version: VERSION,
        fingerprint: fingerprint.as_str().to_string(),
        pid: std::process::id(),
        kind,
    };
    (&*stream).write_all(&protocol::line(&hello)).map_err(io)?;
    let mut reader = BufReader::new(stream.try_clone().map_err(io)?);
    let welcome = protocol::read_message::<Welcome>(&mut reader, &mut Vec::new())
        .map_err(|err| match err.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                format!("the daemon did not answer within {}s", HELLO_WAIT.as_secs())
            }
            _ => io(err),
        })?
        .ok_or("the daemon closed the connection")?;
    stream.set_read_timeout(None).map_err(io)?;
    stream.set_write_timeout(None).map_err(io)?;
    match welcome {
        Welcome::Accepted {
            pid,
            socket,
            reads_remote,
        } => Ok((
            Accepted {
                pid,
                socket,
                reads_remote,
            },
            reader,
        )),
        Welcome::Refused { reason } => Err(reason),
    }
}
