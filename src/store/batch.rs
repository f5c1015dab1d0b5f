//! The framing of a batch fetch (`POST /v1/batch` on `goremotecache serve`): many entries in
//! one streamed answer, so that a prefetch through the server is a handful of round trips.
//!
//! The request body is the action IDs, 64 lowercase hex digits each, one per line. The answer
//! is a sequence of frames, in the order asked, each starting with a text line:
//!
//! ```text
//! E <actionid-hex>\n          an entry follows, as chunks:
//! <n>\n<n bytes>              one chunk of the entry (n > 0, decimal)
//! 0\n                         the entry is complete
//! M <actionid-hex>\n          no entry for this key
//! X <actionid-hex> <reason>\n this key failed (also in place of a chunk: the entry so far
//!                             must be thrown away)
//! ```
//!
//! Chunks let the server stream an entry whose length it does not know up front (an S3 get).
//! [`Decoder`] turns the answer's bytes, cut anywhere, back into [`Event`]s.

use bytes::{Buf, Bytes, BytesMut};

use crate::ids::ActionId;

/// The most keys one batch request may name.
pub const MAX_KEYS: usize = 1024;

/// The longest frame header line.
const MAX_LINE: usize = 1024;

/// What a batch answer says, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An entry for this key starts; its bytes follow as [`Event::Data`].
    Start(ActionId),
    /// Bytes of the current entry.
    Data(Bytes),
    /// The current entry is complete.
    End,
    /// There is no entry for this key.
    Missing(ActionId),
    /// This key failed on the server; if its entry had started, it is abandoned.
    Failed(ActionId, String),
}

/// The header of an entry.
pub fn start(action: &ActionId) -> Bytes {
    Bytes::from(format!("E {}\n", action.to_hex()))
}

/// The line before a chunk of `len` bytes of an entry (never 0: that would end it); the
/// chunk's bytes follow as they are.
pub fn chunk_header(len: usize) -> Bytes {
    debug_assert!(len > 0);
    Bytes::from(format!("{len}\n"))
}

/// The end of an entry.
pub fn end() -> Bytes {
    Bytes::from_static(b"0\n")
}

/// No entry for `action`.
pub fn missing(action: &ActionId) -> Bytes {
    Bytes::from(format!("M {}\n", action.to_hex()))
}

/// The most bytes of a reason [`failed`] keeps: its line stays far within [`MAX_LINE`].
const MAX_REASON: usize = 300;

/// `action` failed; the reason is kept on one line, cut to [`MAX_REASON`] bytes (bytes, not
/// characters: 300 four-byte characters would make a line longer than a frame header may be).
pub fn failed(action: &ActionId, reason: &str) -> Bytes {
    let mut kept = 0;
    let reason: String = reason
        .chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .take_while(|c| {
            kept += c.len_utf8();
            kept <= MAX_REASON
        })
        .collect();
    Bytes::from(format!("X {} {reason}\n", action.to_hex()))
}

/// Parses a request body: one key per line (blank lines ignored), at most [`MAX_KEYS`] lines.
/// A key named more than once is kept once, at its first place, so that it is answered once:
/// a body of many copies of one key does not make the server send its entry many times.
pub fn parse_keys(body: &[u8]) -> Result<Vec<ActionId>, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the body is not text".to_string())?;
    let mut keys = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (n, line) in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        if n == MAX_KEYS {
            return Err(format!("at most {MAX_KEYS} keys per batch"));
        }
        match ActionId::from_key(line) {
            Some(key) => {
                if seen.insert(key) {
                    keys.push(key);
                }
            }
            None => return Err(format!("{line:?} is not 64 lowercase hex digits")),
        }
    }
    Ok(keys)
}

/// The request body for `keys`.
pub fn request_body(keys: &[ActionId]) -> String {
    let mut body = String::with_capacity(keys.len() * 65);
    for key in keys {
        body.push_str(&key.to_hex());
        body.push('\n');
    }
    body
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between frames.
    Frame,
    /// Inside an entry, before a chunk length.
    ChunkHeader,
    /// Inside a chunk with this many bytes to come.
    Chunk(usize),
}

/// Turns a batch answer back into events, whatever sizes its pieces arrive in.
#[derive(Debug)]
pub struct Decoder {
    buf: BytesMut,
    state: State,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    pub fn new() -> Self {
        Self {
            buf: BytesMut::new(),
            state: State::Frame,
        }
    }

    /// Adds bytes as they arrive.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete event, `Ok(None)` when more bytes are needed.
    pub fn next_event(&mut self) -> Result<Option<Event>, String> {
        if let State::Chunk(remaining) = self.state {
            if self.buf.is_empty() {
                return Ok(None);
            }
            let n = remaining.min(self.buf.len());
            let data = self.buf.split_to(n).freeze();
            self.state = if n == remaining {
                State::ChunkHeader
            } else {
                State::Chunk(remaining - n)
            };
            return Ok(Some(Event::Data(data)));
        }
        // The bound holds whether or not the line's end has arrived, so that an answer
        // decodes the same however it is cut.
        let Some(newline) = self.buf.iter().position(|&b| b == b'\n') else {
            if self.buf.len() > MAX_LINE {
                return Err("a frame header is too long".into());
            }
            return Ok(None);
        };
        if newline > MAX_LINE {
            return Err("a frame header is too long".into());
        }
        let line = self.buf.split_to(newline + 1);
        let line = std::str::from_utf8(&line[..newline])
            .map_err(|_| "a frame header is not text".to_string())?;
        let key = |hex: &str| {
            ActionId::from_hex(hex).ok_or_else(|| format!("bad key in frame header {line:?}"))
        };
        match self.state {
            State::Frame => {
                let (kind, rest) = line.split_once(' ').unwrap_or((line, ""));
                match kind {
                    "E" => {
                        self.state = State::ChunkHeader;
                        Ok(Some(Event::Start(key(rest)?)))
                    }
                    "M" => Ok(Some(Event::Missing(key(rest)?))),
                    "X" => {
                        let (hex, reason) = rest.split_once(' ').unwrap_or((rest, ""));
                        Ok(Some(Event::Failed(key(hex)?, reason.to_string())))
                    }
                    _ => Err(format!("unknown frame {line:?}")),
                }
            }
            State::ChunkHeader => {
                if let Some(rest) = line.strip_prefix("X ") {
                    self.state = State::Frame;
                    let (hex, reason) = rest.split_once(' ').unwrap_or((rest, ""));
                    return Ok(Some(Event::Failed(key(hex)?, reason.to_string())));
                }
                let n: usize = line
                    .parse()
                    .map_err(|_| format!("bad chunk length {line:?}"))?;
                if n == 0 {
                    self.state = State::Frame;
                    Ok(Some(Event::End))
                } else {
                    self.state = State::Chunk(n);
                    self.next_event()
                }
            }
            State::Chunk(_) => unreachable!("handled above"),
        }
    }

    /// Whether the answer may end here (not inside an entry).
    pub fn at_frame_boundary(&self) -> bool {
        self.state == State::Frame && !self.buf.has_remaining()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ActionId {
        ActionId([n; 32])
    }

    fn answer() -> Vec<u8> {
        let chunk =
            |data: &'static [u8]| [chunk_header(data.len()), Bytes::from_static(data)].concat();
        let mut out = Vec::new();
        for piece in [
            start(&id(1)).to_vec(),
            chunk(b"hello "),
            chunk(b"world"),
            end().to_vec(),
            missing(&id(2)).to_vec(),
            start(&id(3)).to_vec(),
            chunk(b"partial"),
            failed(&id(3), "storage: reset\nby peer").to_vec(),
            failed(&id(4), "timeout").to_vec(),
            start(&id(5)).to_vec(),
            end().to_vec(),
        ] {
            out.extend_from_slice(&piece);
        }
        out
    }

    /// Decodes `bytes` fed in pieces of `step`, merging adjacent data events.
    fn decode(bytes: &[u8], step: usize) -> Vec<Event> {
        let mut decoder = Decoder::new();
        let mut events: Vec<Event> = Vec::new();
        for piece in bytes.chunks(step) {
            decoder.push(piece);
            while let Some(event) = decoder.next_event().unwrap() {
                match (events.last_mut(), event) {
                    (Some(Event::Data(prev)), Event::Data(more)) => {
                        *prev = [prev.as_ref(), more.as_ref()].concat().into();
                    }
                    (_, event) => events.push(event),
                }
            }
        }
        assert!(decoder.at_frame_boundary());
        events
    }

    #[test]
    fn round_trips_whatever_the_cuts() {
        let bytes = answer();
        let expected = vec![
            Event::Start(id(1)),
            Event::Data(Bytes::from_static(b"hello world")),
            Event::End,
            Event::Missing(id(2)),
            Event::Start(id(3)),
            Event::Data(Bytes::from_static(b"partial")),
            Event::Failed(id(3), "storage: reset by peer".into()),
            Event::Failed(id(4), "timeout".into()),
            Event::Start(id(5)),
            Event::End,
        ];
        for step in [1, 2, 3, 7, 64, bytes.len()] {
            assert_eq!(decode(&bytes, step), expected, "pieces of {step}");
        }
    }

    #[test]
    fn a_cut_inside_an_entry_is_not_a_boundary() {
        let bytes = answer();
        let mut decoder = Decoder::new();
        decoder.push(&bytes[..start(&id(1)).len() + 3]);
        while decoder.next_event().unwrap().is_some() {}
        assert!(!decoder.at_frame_boundary());
    }

    #[test]
    fn garbage_is_an_error() {
        for bad in [
            &b"Q 00\n"[..],
            b"E nothex\n",
            b"M 0101\n",
            &[b'x'; MAX_LINE + 10],
        ] {
            let mut decoder = Decoder::new();
            decoder.push(bad);
            assert!(
                decoder.next_event().is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut decoder = Decoder::new();
        decoder.push(&start(&id(1)));
        decoder.push(b"twelve\n");
        decoder.next_event().unwrap();
        assert!(decoder.next_event().is_err());
    }

    #[test]
    fn keys_parse_strictly() {
        let body = request_body(&[id(1), id(2)]);
        assert_eq!(parse_keys(body.as_bytes()).unwrap(), vec![id(1), id(2)]);
        assert_eq!(parse_keys(b"\n\n").unwrap(), vec![]);
        assert!(parse_keys(id(0xab).to_hex().to_uppercase().as_bytes()).is_err());
        assert!(parse_keys(b"../../etc/passwd").is_err());
        let too_many = request_body(&vec![id(7); MAX_KEYS + 1]);
        assert!(parse_keys(too_many.as_bytes()).is_err());
    }

    #[test]
    fn a_key_asked_twice_is_kept_once_at_its_first_place() {
        let body = request_body(&[id(2), id(1), id(2), id(3), id(1)]);
        assert_eq!(
            parse_keys(body.as_bytes()).unwrap(),
            vec![id(2), id(1), id(3)]
        );
        let copies = request_body(&vec![id(9); MAX_KEYS]);
        assert_eq!(parse_keys(copies.as_bytes()).unwrap(), vec![id(9)]);
    }
}

#[cfg(test)]
mod proptests;
