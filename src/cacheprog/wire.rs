//! The GOCACHEPROG wire format, shaped like Go's `cmd/go/internal/cacheprog` types.
//!
//! The go command writes one JSON request per line, each followed by a blank line. A `put`
//! with `BodySize > 0` is followed by one more line: the body as a standard base64 JSON
//! string. [`RequestReader`] parses requests line by line and decodes bodies as a stream into
//! any [`Write`] while hashing them, so a 35 MiB body never sits in memory. Responses are
//! [`Response`] values, one JSON object per line. Nothing here touches the cache itself.

use std::io::{self, BufRead, Write};
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use super::body::BodyDecoder;
pub use super::body::{BodyError, BodyInfo};
use crate::ids::{ActionId, OutputId};

/// The commands this program answers, announced in the handshake.
pub const KNOWN_COMMANDS: [&str; 3] = ["get", "put", "close"];

/// The longest request line accepted. Real requests are under 300 bytes; a longer line is
/// garbage and is skipped without being held in memory.
pub const MAX_REQUEST_LINE: usize = 64 * 1024;

/// The handshake line, written before anything else happens.
pub fn handshake_line() -> Vec<u8> {
    let mut line = serde_json::to_vec(&Response {
        known_commands: Some(KNOWN_COMMANDS.to_vec()),
        ..Response::new(0)
    })
    .expect("the handshake serializes");
    line.push(b'\n');
    line
}

/// A request, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Look up an action.
    Get { action_id: ActionId },
    /// Store an output for an action; the body follows on the wire when `body_size > 0`.
    Put {
        action_id: ActionId,
        output_id: OutputId,
        body_size: u64,
    },
    /// The build is done: answer what is in flight, then exit.
    Close,
}

/// One request from the go command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub id: i64,
    pub command: Command,
}

/// The request as it is on the wire, before validation.
#[derive(Deserialize)]
struct RawRequest {
    #[serde(rename = "ID")]
    id: i64,
    #[serde(rename = "Command")]
    command: String,
    #[serde(rename = "ActionID", default)]
    action_id: Option<String>,
    #[serde(rename = "OutputID", default)]
    output_id: Option<String>,
    /// The name Go 1.23 and older used for `OutputID`.
    #[serde(rename = "ObjectID", default)]
    object_id: Option<String>,
    #[serde(rename = "BodySize", default)]
    body_size: Option<i64>,
}

/// Only the fields needed to answer a request that failed validation.
#[derive(Deserialize)]
struct PartialRequest {
    #[serde(rename = "ID")]
    id: Option<i64>,
    #[serde(rename = "BodySize", default)]
    body_size: Option<serde_json::Value>,
}

/// What is wrong with one request.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("malformed request line: {0}")]
    Malformed(String),
    #[error("request {id}: {reason}")]
    Invalid { id: i64, reason: String },
    #[error("request {id}: {reason}")]
    BadBody { id: i64, reason: BodyError },
    #[error("skipped a body line that belongs to no put request")]
    StrayBody,
    #[error("request line longer than {MAX_REQUEST_LINE} bytes, skipped")]
    LineTooLong,
}

impl RequestError {
    /// The request's ID, where it is known, so that it can be answered with `Err`.
    pub fn id(&self) -> Option<i64> {
        match self {
            RequestError::Invalid { id, .. } | RequestError::BadBody { id, .. } => Some(*id),
            _ => None,
        }
    }
}

/// A request parsed from the wire, with its body handled.
#[derive(Debug)]
pub enum Incoming<B> {
    Request(Request, Option<B>),
    /// A request that cannot be served; answer with `Err` if its ID is known.
    Bad(RequestError),
}

/// Reads requests from the go command, streaming `put` bodies into sinks.
#[derive(Debug)]
pub struct RequestReader<R> {
    input: R,
    line: Vec<u8>,
}

impl<R: BufRead> RequestReader<R> {
    pub fn new(input: R) -> Self {
        Self {
            input,
            line: Vec::with_capacity(512),
        }
    }

    /// Reads the next request. `None` is end of input. For a `put` with a body,
    /// `make_sink` is called to get somewhere to write it; if it fails, the body is still
    /// consumed (so the stream stays in step) and the request comes back as
    /// [`BodyError::Store`]. `finish_sink` receives the sink after a body is fully decoded
    /// and verified, and turns it into what the caller keeps.
    pub fn next_request<W: Write, B>(
        &mut self,
        make_sink: &mut dyn FnMut() -> io::Result<W>,
        finish_sink: &mut dyn FnMut(W, BodyInfo) -> io::Result<B>,
    ) -> io::Result<Option<Incoming<B>>> {
        let Some(first) = skip_whitespace(&mut self.input)? else {
            return Ok(None);
        };
        if first == b'"' {
            // A body line where a request belongs: the put it followed was not understood.
            self.input.consume(1);
            let mut decoder = BodyDecoder::new(&mut self.input);
            let _ = decoder.decode_into(&mut io::sink());
            return Ok(Some(Incoming::Bad(RequestError::StrayBody)));
        }
        if !read_line_capped(&mut self.input, &mut self.line, MAX_REQUEST_LINE)? {
            return Ok(Some(Incoming::Bad(RequestError::LineTooLong)));
        }
        let raw: RawRequest = match serde_json::from_slice(&self.line) {
            Ok(raw) => raw,
            Err(err) => return self.recover(err),
        };
        let id = raw.id;
        let command = match validate(raw) {
            Ok(command) => command,
            Err((reason, body_size)) => {
                if body_size > 0 {
                    self.discard_body()?;
                }
                return Ok(Some(Incoming::Bad(RequestError::Invalid { id, reason })));
            }
        };
        let body = match &command {
            Command::Put {
                output_id,
                body_size,
                ..
            } if *body_size > 0 => {
                match self.read_body(*body_size, *output_id, make_sink, finish_sink)? {
                    Ok(body) => Some(body),
                    Err(reason) => {
                        return Ok(Some(Incoming::Bad(RequestError::BadBody { id, reason })));
                    }
                }
            }
            _ => None,
        };
        Ok(Some(Incoming::Request(Request { id, command }, body)))
    }

    /// A line that is not a valid request: find its ID if it has one, and skip its body if
    /// it announced one.
    fn recover<B>(&mut self, err: serde_json::Error) -> io::Result<Option<Incoming<B>>> {
        let partial: Option<PartialRequest> = serde_json::from_slice(&self.line).ok();
        let Some(partial) = partial else {
            return Ok(Some(Incoming::Bad(RequestError::Malformed(
                err.to_string(),
            ))));
        };
        let announces_body = partial
            .body_size
            .as_ref()
            .and_then(serde_json::Value::as_f64)
            .is_some_and(|n| n > 0.0);
        if announces_body {
            self.discard_body()?;
        }
        Ok(Some(Incoming::Bad(match partial.id {
            Some(id) => RequestError::Invalid {
                id,
                reason: err.to_string(),
            },
            None => RequestError::Malformed(err.to_string()),
        })))
    }

    /// Consumes the body line of a request that will not be served, if there is one.
    fn discard_body(&mut self) -> io::Result<()> {
        if skip_whitespace(&mut self.input)? == Some(b'"') {
            self.input.consume(1);
            let _ = BodyDecoder::new(&mut self.input).decode_into(&mut io::sink());
        }
        Ok(())
    }

    fn read_body<W: Write, B>(
        &mut self,
        expected_size: u64,
        expected_id: OutputId,
        make_sink: &mut dyn FnMut() -> io::Result<W>,
        finish_sink: &mut dyn FnMut(W, BodyInfo) -> io::Result<B>,
    ) -> io::Result<Result<B, BodyError>> {
        if skip_whitespace(&mut self.input)? != Some(b'"') {
            // Leave the line alone: it is the next request.
            return Ok(Err(BodyError::Missing(expected_size)));
        }
        self.input.consume(1);
        let mut decoder = BodyDecoder::new(&mut self.input);
        let decoded = match make_sink() {
            Ok(mut sink) => {
                let result = decoder.decode_into(&mut sink);
                result.map(|info| (sink, info))
            }
            Err(err) => {
                let _ = decoder.decode_into(&mut io::sink());
                Err(BodyError::Store(err))
            }
        };
        let (sink, info) = match decoded {
            Ok(ok) => ok,
            Err(BodyError::Read(err)) => return Err(err),
            Err(err) => return Ok(Err(err)),
        };
        if info.size != expected_size {
            return Ok(Err(BodyError::SizeMismatch {
                expected: expected_size,
                actual: info.size,
            }));
        }
        if info.sha256 != expected_id {
            return Ok(Err(BodyError::HashMismatch {
                expected: expected_id,
                actual: info.sha256,
            }));
        }
        Ok(finish_sink(sink, info).map_err(BodyError::Store))
    }
}

/// Checks a raw request; on failure gives the reason and the body size it announced.
fn validate(raw: RawRequest) -> Result<Command, (String, u64)> {
    let body_size = raw.body_size.unwrap_or(0);
    let announced = u64::try_from(body_size).unwrap_or(0);
    let fail = |reason: String| Err((reason, announced));
    match raw.command.as_str() {
        "get" => match decode_id(raw.action_id.as_deref(), "ActionID") {
            Ok(id) => Ok(Command::Get {
                action_id: ActionId(id),
            }),
            Err(reason) => fail(reason),
        },
        "put" => {
            if body_size < 0 {
                return fail(format!("negative BodySize {body_size}"));
            }
            let action_id = match decode_id(raw.action_id.as_deref(), "ActionID") {
                Ok(id) => ActionId(id),
                Err(reason) => return fail(reason),
            };
            let output = raw.output_id.as_deref().or(raw.object_id.as_deref());
            let output_id = match decode_id(output, "OutputID") {
                Ok(id) => OutputId(id),
                Err(reason) => return fail(reason),
            };
            Ok(Command::Put {
                action_id,
                output_id,
                body_size: announced,
            })
        }
        "close" => Ok(Command::Close),
        other => fail(format!("unknown command {other:?}")),
    }
}

fn decode_id(field: Option<&str>, name: &str) -> Result<[u8; 32], String> {
    let text = field.ok_or_else(|| format!("missing {name}"))?;
    let bytes = B64
        .decode(text)
        .map_err(|err| format!("{name} is not base64: {err}"))?;
    bytes
        .try_into()
        .map_err(|bytes: Vec<u8>| format!("{name} has {} bytes, want 32", bytes.len()))
}

/// Skips blank lines and spaces; returns the next byte without consuming it.
fn skip_whitespace(input: &mut impl BufRead) -> io::Result<Option<u8>> {
    loop {
        let buf = match input.fill_buf() {
            Ok(buf) => buf,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        if buf.is_empty() {
            return Ok(None);
        }
        match buf.iter().position(|b| !b.is_ascii_whitespace()) {
            Some(pos) => {
                let byte = buf[pos];
                input.consume(pos);
                return Ok(Some(byte));
            }
            None => {
                let len = buf.len();
                input.consume(len);
            }
        }
    }
}

/// Reads one line (without its newline) into `line`. Returns false, having consumed the
/// whole line, if it is longer than `cap`.
fn read_line_capped(input: &mut impl BufRead, line: &mut Vec<u8>, cap: usize) -> io::Result<bool> {
    line.clear();
    let mut too_long = false;
    loop {
        let buf = match input.fill_buf() {
            Ok(buf) => buf,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        if buf.is_empty() {
            return Ok(!too_long);
        }
        let (chunk, done) = match memchr::memchr(b'\n', buf) {
            Some(pos) => (&buf[..pos], Some(pos + 1)),
            None => (buf, None),
        };
        if !too_long && line.len() + chunk.len() <= cap {
            line.extend_from_slice(chunk);
        } else {
            too_long = true;
            line.clear();
        }
        let used = done.unwrap_or(buf.len());
        input.consume(used);
        if done.is_some() {
            return Ok(!too_long);
        }
    }
}

/// One response line to the go command.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Response {
    #[serde(rename = "ID")]
    pub id: i64,
    #[serde(rename = "Err", skip_serializing_if = "Option::is_none")]
    pub err: Option<String>,
    #[serde(rename = "KnownCommands", skip_serializing_if = "Option::is_none")]
    pub known_commands: Option<Vec<&'static str>>,
    #[serde(rename = "Miss", skip_serializing_if = "std::ops::Not::not")]
    pub miss: bool,
    #[serde(rename = "OutputID", skip_serializing_if = "Option::is_none")]
    pub output_id: Option<String>,
    #[serde(rename = "Size", skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(rename = "Time", skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    #[serde(rename = "DiskPath", skip_serializing_if = "Option::is_none")]
    pub disk_path: Option<String>,
}

impl Response {
    /// An empty answer to request `id` (the answer to `close`).
    pub fn new(id: i64) -> Self {
        Self {
            id,
            err: None,
            known_commands: None,
            miss: false,
            output_id: None,
            size: None,
            time: None,
            disk_path: None,
        }
    }

    pub fn error(id: i64, message: impl Into<String>) -> Self {
        Self {
            err: Some(message.into()),
            ..Self::new(id)
        }
    }

    pub fn miss(id: i64) -> Self {
        Self {
            miss: true,
            ..Self::new(id)
        }
    }

    pub fn hit(id: i64, output_id: OutputId, size: u64, time: SystemTime, disk_path: &str) -> Self {
        Self {
            output_id: Some(B64.encode(output_id.0)),
            size: Some(size),
            time: Some(format_time(time)),
            disk_path: Some(disk_path.to_owned()),
            ..Self::new(id)
        }
    }

    pub fn stored(id: i64, disk_path: &str) -> Self {
        Self {
            disk_path: Some(disk_path.to_owned()),
            ..Self::new(id)
        }
    }

    /// Appends this response as one line.
    pub fn write_line(&self, out: &mut Vec<u8>) {
        serde_json::to_writer(&mut *out, self).expect("responses serialize");
        out.push(b'\n');
    }
}

/// RFC 3339 with nanoseconds in UTC, which Go's `time.Time` parses.
pub fn format_time(time: SystemTime) -> String {
    humantime::format_rfc3339_nanos(time).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_is_the_documented_line() {
        assert_eq!(
            handshake_line(),
            b"{\"ID\":0,\"KnownCommands\":[\"get\",\"put\",\"close\"]}\n"
        );
    }

    #[test]
    fn time_is_rfc3339_utc() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::new(1_700_000_000, 5);
        assert_eq!(format_time(t), "2023-11-14T22:13:20.000000005Z");
    }

    #[test]
    fn responses_omit_empty_fields() {
        let mut out = Vec::new();
        Response::miss(7).write_line(&mut out);
        Response::new(8).write_line(&mut out);
        assert_eq!(out, b"{\"ID\":7,\"Miss\":true}\n{\"ID\":8}\n");
    }

    #[test]
    fn capped_line_skips_long_lines_whole() {
        let mut input = io::Cursor::new(b"0123456789\nabc\n".to_vec());
        let mut line = Vec::new();
        assert!(!read_line_capped(&mut input, &mut line, 5).unwrap());
        assert!(read_line_capped(&mut input, &mut line, 5).unwrap());
        assert_eq!(line, b"abc");
    }
}

#[cfg(test)]
mod proptests;
