//! One session with the go command over stdin/stdout.
//!
//! The concurrency shape: a reader thread parses requests and spools `put` bodies to
//! temporary files (the input is one stream, so this part is serial); an async dispatcher
//! spawns a task per request, at most [`MAX_IN_FLIGHT`] at once; one [`Answers`] writer owns
//! the output and writes each answer as one line the moment it is ready, whichever thread
//! produced it. Gets that the disk answers at once are answered by the reader thread itself
//! (no hand-off between threads: on a warm build every get is such a get, and each
//! millisecond a get waits is added to the build). `close`, or the end of input, waits for every request in flight
//! to be answered, lets the [`Handler`] finish (statistics), answers `close` and returns, and
//! the caller exits, which closes stdout.

use std::future::Future;
use std::io::{self, BufReader, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tempfile::NamedTempFile;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use super::wire::{Command, Incoming, Request, RequestError, RequestReader, Response};
use crate::ids::{ActionId, OutputId};
use crate::local::disk::{Entry, Spooled};
use crate::sync::lock;

/// The most requests handled at once. The go command keeps at most GOMAXPROCS+1 in flight;
/// this only bounds a misbehaving client.
pub const MAX_IN_FLIGHT: usize = 256;

/// Size of the input buffer; bodies are decoded from it in place.
const INPUT_BUFFER: usize = 256 * 1024;

/// What serves the requests of a session.
pub trait Handler: Send + Sync + 'static {
    /// Why a request could not be served: its text is the answer's `Err`.
    type Error: std::fmt::Display + Send + 'static;

    /// A new temporary file for a `put` body, on the file system where it will be stored.
    fn spool_file(&self) -> io::Result<NamedTempFile>;

    /// Answers a get at once when that needs no waiting (a hit on local disk, or a miss with
    /// nothing behind the disk). The reader thread calls it, so that the common warm-build
    /// case costs no thread hand-off; `None` sends the request to [`Handler::get`].
    fn get_now(&self, action_id: ActionId) -> Option<Result<Option<Entry>, Self::Error>>;

    /// Looks up an action: `Ok(None)` is a miss.
    fn get(
        &self,
        action_id: ActionId,
    ) -> impl Future<Output = Result<Option<Entry>, Self::Error>> + Send;

    /// Stores an output whose body has been received and verified (`None`: empty body) and
    /// returns its path on disk.
    fn put(
        &self,
        action_id: ActionId,
        output_id: OutputId,
        body: Option<Spooled>,
    ) -> impl Future<Output = Result<PathBuf, Self::Error>> + Send;

    /// Counts a request that could not be served (already answered with `Err` if it had an ID).
    fn refused(&self, err: &RequestError);

    /// Called once, after every request has been answered and before `close` is answered.
    fn close(&self) -> impl Future<Output = ()> + Send;
}

/// How a session ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// The go command sent `close`.
    Closed,
    /// The input ended without `close` (`go list`, or the go command exited).
    Eof,
    /// Reading the input failed.
    ReadError(String),
}

enum Event {
    Request(Request, Option<Spooled>),
    Bad(RequestError),
    End(End),
}

/// Serves requests from `input`, answering on `output`, until `close` or end of input. The
/// handshake must already have been written.
pub async fn run<H: Handler>(
    handler: Arc<H>,
    input: impl Read + Send + 'static,
    output: impl Write + Send + 'static,
) -> End {
    let (events_tx, mut events) = mpsc::channel(64);
    let reader_handler = handler.clone();
    let answers = Arc::new(Answers::new(output));
    let reader_answers = answers.clone();
    std::thread::Builder::new()
        .name("goremotecache-reader".into())
        .spawn(move || read_loop(input, reader_handler, events_tx, reader_answers))
        .expect("spawning the reader thread");

    let limit = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut tasks = JoinSet::new();
    let mut close_id = None;
    let end = loop {
        let Some(event) = events.recv().await else {
            break End::Eof;
        };
        match event {
            Event::Request(Request { id, command }, body) => {
                let work = match command {
                    Command::Close => {
                        close_id = Some(id);
                        break End::Closed;
                    }
                    Command::Get { action_id } => Work::Get(action_id),
                    Command::Put {
                        action_id,
                        output_id,
                        ..
                    } => Work::Put(action_id, output_id, body),
                };
                let permit = limit.clone().acquire_owned().await.expect("never closed");
                let handler = handler.clone();
                let answers = answers.clone();
                tasks.spawn(async move {
                    let response = answer(handler, id, work).await;
                    answers.send(&response);
                    drop(permit);
                });
            }
            Event::Bad(err) => {
                tracing::warn!("{err}");
                handler.refused(&err);
                if let Some(id) = err.id() {
                    answers.send(&Response::error(id, err.to_string()));
                }
            }
            Event::End(end) => break end,
        }
        while tasks.try_join_next().is_some() {}
    };
    if let End::ReadError(err) = &end {
        tracing::warn!("reading requests failed: {err}; finishing as if the go command closed");
    }
    while tasks.join_next().await.is_some() {}
    handler.close().await;
    if let Some(id) = close_id {
        answers.send(&Response::new(id));
    }
    end
}

enum Work {
    Get(ActionId),
    Put(ActionId, OutputId, Option<Spooled>),
}

/// Runs one request to its answer. The work runs in a task of its own so that even a panic
/// in it is answered (with `Err`) instead of leaving the go command waiting forever.
async fn answer<H: Handler>(handler: Arc<H>, id: i64, work: Work) -> Response {
    let outcome = tokio::spawn(async move {
        match work {
            Work::Get(action_id) => get_response(id, action_id, handler.get(action_id).await),
            Work::Put(action_id, output_id, body) => {
                match handler.put(action_id, output_id, body).await {
                    Ok(path) => match path.to_str() {
                        Some(path) => Response::stored(id, path),
                        None => Response::error(id, "cache path is not valid UTF-8"),
                    },
                    Err(err) => {
                        tracing::warn!("put {action_id}: {err}");
                        Response::error(id, err.to_string())
                    }
                }
            }
        }
    })
    .await;
    outcome.unwrap_or_else(|err| Response::error(id, format!("internal error: {err}")))
}

/// The answer to a get.
fn get_response(
    id: i64,
    action_id: ActionId,
    found: Result<Option<Entry>, impl std::fmt::Display>,
) -> Response {
    match found {
        Ok(Some(entry)) => match entry.disk_path.to_str() {
            Some(path) => Response::hit(id, entry.output_id, entry.size, entry.time, path),
            None => Response::error(id, "cache path is not valid UTF-8"),
        },
        Ok(None) => Response::miss(id),
        Err(err) => {
            tracing::debug!("get {action_id}: {err}");
            Response::error(id, err.to_string())
        }
    }
}

fn read_loop<H: Handler>(
    input: impl Read,
    handler: Arc<H>,
    events: mpsc::Sender<Event>,
    answers: Arc<Answers>,
) {
    let mut reader = RequestReader::new(BufReader::with_capacity(INPUT_BUFFER, input));
    loop {
        let next = reader.next_request(&mut || handler.spool_file(), &mut |file, info| {
            Ok(Spooled {
                file,
                size: info.size,
                output_id: info.sha256,
            })
        });
        let (event, last) = match next {
            Ok(Some(Incoming::Request(
                Request {
                    id,
                    command: Command::Get { action_id },
                },
                _,
            ))) if let Some(found) = handler.get_now(action_id) => {
                answers.send(&get_response(id, action_id, found));
                continue;
            }
            Ok(Some(Incoming::Request(request, body))) => {
                let close = request.command == Command::Close;
                (Event::Request(request, body), close)
            }
            Ok(Some(Incoming::Bad(err))) => (Event::Bad(err), false),
            Ok(None) => (Event::End(End::Eof), true),
            Err(err) => (Event::End(End::ReadError(err.to_string())), true),
        };
        if events.blocking_send(event).is_err() || last {
            return;
        }
    }
}

/// The single writer of answers: each is written and flushed as one line under a lock, so
/// that lines never interleave. After a write error (the go command is gone) answers are
/// dropped; the reader then sees the end of input.
pub struct Answers {
    output: Mutex<Box<dyn Write + Send>>,
    broken: AtomicBool,
}

impl std::fmt::Debug for Answers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answers")
            .field("broken", &self.broken)
            .finish()
    }
}

impl Answers {
    fn new(output: impl Write + Send + 'static) -> Self {
        Self {
            output: Mutex::new(Box::new(output)),
            broken: AtomicBool::new(false),
        }
    }

    fn send(&self, response: &Response) {
        if self.broken.load(Ordering::Relaxed) {
            return;
        }
        let mut line = Vec::with_capacity(256);
        response.write_line(&mut line);
        let mut output = lock(&self.output);
        if let Err(err) = output.write_all(&line).and_then(|()| output.flush()) {
            tracing::debug!("writing answers failed: {err}");
            self.broken.store(true, Ordering::Relaxed);
        }
    }
}
