//! A `put` body on the wire: a standard base64 JSON string on the line after the request,
//! decoded as a stream into any [`Write`] while it is hashed, so that a 35 MiB body never sits
//! in memory, and checked to end where it should (its closing quote, then the line's end).

use std::io::{self, BufRead, Read, Write};

use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest, Sha256};

use crate::ids::OutputId;

/// What is wrong with a `put` body.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("body missing: expected a base64 string line of {0} bytes")]
    Missing(u64),
    #[error("body truncated: the line ended before its closing quote")]
    Truncated,
    #[error("body is not valid base64: {0}")]
    InvalidBase64(String),
    #[error("body has {actual} bytes, BodySize says {expected}")]
    SizeMismatch { expected: u64, actual: u64 },
    #[error("body's sha256 {actual} is not its OutputID {expected}")]
    HashMismatch {
        expected: OutputId,
        actual: OutputId,
    },
    #[error("unexpected text after the body's closing quote")]
    TrailingGarbage,
    #[error("cannot store the body: {}", crate::fsutil::explain_io(.0))]
    Store(io::Error),
    #[error("reading body: {0}")]
    Read(io::Error),
}

/// A decoded body: its size and sha256.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyInfo {
    pub size: u64,
    pub sha256: OutputId,
}

/// How a quoted body string ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QuoteEnd {
    Open,
    Closed,
    Truncated,
}

/// Yields the bytes of a JSON string body up to its closing quote, never past it.
struct QuotedBody<'a, R> {
    input: &'a mut R,
    end: QuoteEnd,
}

impl<R: BufRead> Read for QuotedBody<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.end != QuoteEnd::Open || out.is_empty() {
            return Ok(0);
        }
        let buf = self.input.fill_buf()?;
        if buf.is_empty() {
            self.end = QuoteEnd::Truncated;
            return Ok(0);
        }
        let window = &buf[..buf.len().min(out.len())];
        match memchr::memchr2(b'"', b'\n', window) {
            Some(pos) => {
                out[..pos].copy_from_slice(&window[..pos]);
                if window[pos] == b'"' {
                    self.end = QuoteEnd::Closed;
                    self.input.consume(pos + 1);
                } else {
                    // Leave the newline: the caller ends the line.
                    self.end = QuoteEnd::Truncated;
                    self.input.consume(pos);
                }
                Ok(pos)
            }
            None => {
                let len = window.len();
                out[..len].copy_from_slice(window);
                self.input.consume(len);
                Ok(len)
            }
        }
    }
}

/// Decodes one base64 body string (its opening quote already consumed) as a stream.
pub(super) struct BodyDecoder<'a, R> {
    input: &'a mut R,
}

/// The size of each piece of decoded body handed to the sink.
const CHUNK: usize = 64 * 1024;

impl<'a, R: BufRead> BodyDecoder<'a, R> {
    pub(super) fn new(input: &'a mut R) -> Self {
        Self { input }
    }

    /// Decodes the body into `sink`, hashing it; consumes the rest of the body line in every
    /// case, so that the next read starts at the next request.
    pub(super) fn decode_into(&mut self, sink: &mut dyn Write) -> Result<BodyInfo, BodyError> {
        let mut quoted = QuotedBody {
            input: &mut *self.input,
            end: QuoteEnd::Open,
        };
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut sink_error = None;
        let mut decode_error = None;
        let mut chunk = vec![0u8; CHUNK];
        {
            let mut decoder = base64::read::DecoderReader::new(&mut quoted, &B64);
            loop {
                match decoder.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => {
                        hasher.update(&chunk[..n]);
                        size += n as u64;
                        if sink_error.is_none()
                            && let Err(err) = sink.write_all(&chunk[..n])
                        {
                            sink_error = Some(err);
                        }
                    }
                    Err(err) if err.kind() == io::ErrorKind::InvalidData => {
                        decode_error = Some(err.to_string());
                        break;
                    }
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                    Err(err) => return Err(BodyError::Read(err)),
                }
            }
        }
        if decode_error.is_some() {
            // Skip what is left of the string.
            io::copy(&mut quoted, &mut io::sink()).map_err(BodyError::Read)?;
        }
        let end = quoted.end;
        let trailing = finish_line(self.input).map_err(BodyError::Read)?;
        if end != QuoteEnd::Closed {
            return Err(BodyError::Truncated);
        }
        if let Some(err) = decode_error {
            return Err(BodyError::InvalidBase64(err));
        }
        if let Some(err) = sink_error.or_else(|| sink.flush().err()) {
            return Err(BodyError::Store(err));
        }
        if trailing {
            return Err(BodyError::TrailingGarbage);
        }
        Ok(BodyInfo {
            size,
            sha256: OutputId(hasher.finalize().into()),
        })
    }
}

/// Consumes the rest of the current line; says whether it held anything but white space.
fn finish_line(input: &mut impl BufRead) -> io::Result<bool> {
    let mut garbage = false;
    loop {
        let buf = input.fill_buf()?;
        if buf.is_empty() {
            return Ok(garbage);
        }
        let (rest, done) = match memchr::memchr(b'\n', buf) {
            Some(pos) => (&buf[..pos], Some(pos + 1)),
            None => (buf, None),
        };
        garbage |= rest.iter().any(|b| !b.is_ascii_whitespace());
        let used = done.unwrap_or(buf.len());
        input.consume(used);
        if done.is_some() {
            return Ok(garbage);
        }
    }
}
