//! The remote entry format: one self-describing object per action, so that a hit costs one
//! request. `docs/format.md` documents it byte by byte; this module is the only code that
//! reads or writes it, and both remote backends (S3 and the HTTP server) store it as is.
//!
//! ```text
//! offset  size  field
//!      0     8  magic "GRCENTRY"
//!      8     2  format version, little-endian u16 (1)
//!     10     2  flags, little-endian u16: bit 0 = body is one zstd frame; others 0
//!     12    32  OutputID: sha256 of the decoded body
//!     44     8  size of the decoded body, little-endian u64
//!     52     8  put time, nanoseconds since the Unix epoch, little-endian u64
//!     60     .  body: raw bytes, or one zstd frame
//! ```
//!
//! [`write_entry`] builds an entry from a body read as a stream; [`read_entry`] (and
//! [`read_entry_within`], with a bound on the decoded size) decodes one as a stream and checks
//! it: a wrong magic or version, unknown flags, a body that is not
//! `size` bytes or whose sha256 is not the OutputID is an error, never data.

use std::io::{self, Read, Write};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use crate::ids::OutputId;

pub const MAGIC: &[u8; 8] = b"GRCENTRY";
pub const VERSION: u16 = 1;
pub const HEADER_LEN: usize = 60;
/// Flag bit 0: the body is one zstd frame.
pub const FLAG_ZSTD: u16 = 1;

/// Bodies smaller than this are stored raw: compression cannot save a request's worth.
pub const MIN_COMPRESS: u64 = 512;
/// Compress when a sample compresses to at most this fraction of its size.
const PAYS: f64 = 0.9;
/// The sample that decides whether compression pays.
const SAMPLE: usize = 64 * 1024;
/// zstd level: fast (about 300 MiB/s here) and most of the gain for object files.
pub const ZSTD_LEVEL: i32 = 1;

/// An entry's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub flags: u16,
    pub output_id: OutputId,
    pub size: u64,
    pub time: SystemTime,
}

impl Header {
    pub fn compressed(&self) -> bool {
        self.flags & FLAG_ZSTD != 0
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..8].copy_from_slice(MAGIC);
        out[8..10].copy_from_slice(&VERSION.to_le_bytes());
        out[10..12].copy_from_slice(&self.flags.to_le_bytes());
        out[12..44].copy_from_slice(&self.output_id.0);
        out[44..52].copy_from_slice(&self.size.to_le_bytes());
        let nanos = self
            .time
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        out[52..60].copy_from_slice(&u64::try_from(nanos).unwrap_or(u64::MAX).to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8; HEADER_LEN]) -> Result<Self, FormatError> {
        if &bytes[..8] != MAGIC {
            return Err(FormatError::BadMagic);
        }
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        if version != VERSION {
            return Err(FormatError::Version(version));
        }
        let flags = u16::from_le_bytes([bytes[10], bytes[11]]);
        if flags & !FLAG_ZSTD != 0 {
            return Err(FormatError::Flags(flags));
        }
        let mut id = [0u8; 32];
        id.copy_from_slice(&bytes[12..44]);
        let size = u64::from_le_bytes(bytes[44..52].try_into().expect("8 bytes"));
        let nanos = u64::from_le_bytes(bytes[52..60].try_into().expect("8 bytes"));
        Ok(Self {
            flags,
            output_id: OutputId(id),
            size,
            time: SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos),
        })
    }
}

/// Why bytes are not a valid entry.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("not a goremotecache entry (bad magic)")]
    BadMagic,
    #[error("entry format version {0} is not supported")]
    Version(u16),
    #[error("entry has unknown flags {0:#06x}")]
    Flags(u16),
    #[error("entry decodes to {size} bytes, over the limit of {limit} (--max-entry-size)")]
    TooLarge { size: u64, limit: u64 },
    #[error("entry is truncated")]
    Truncated,
    #[error("entry body has {actual} bytes, its header says {expected}")]
    Size { expected: u64, actual: u64 },
    #[error("entry body's sha256 is not its OutputID")]
    Hash,
    #[error("entry body does not decompress or could not be read: {0}")]
    Zstd(io::Error),
    #[error("reading entry: {0}")]
    Io(#[from] io::Error),
}

/// Decides whether a body compresses well enough to store compressed, from a sample of its
/// first bytes.
pub fn compression_pays(size: u64, sample: &[u8]) -> bool {
    if size < MIN_COMPRESS || sample.is_empty() {
        return false;
    }
    let sample = &sample[..sample.len().min(SAMPLE)];
    match zstd::bulk::compress(sample, ZSTD_LEVEL) {
        Ok(compressed) => (compressed.len() as f64) <= PAYS * sample.len() as f64,
        Err(_) => false,
    }
}

/// How many leading bytes of a body [`compression_pays`] looks at.
pub const SAMPLE_LEN: usize = SAMPLE;

/// A whole uncompressed entry of `body`, put now, in memory: how unit tests make entries.
#[cfg(test)]
pub fn encode_for_test(body: &[u8]) -> Vec<u8> {
    let header = Header {
        flags: 0,
        output_id: crate::ids::OutputId::of(body),
        size: body.len() as u64,
        time: std::time::SystemTime::now(),
    };
    let mut out = Vec::new();
    write_entry(&header, &mut &body[..], &mut out).expect("writing to memory");
    out
}

/// Writes an entry for a body of known header to `out`, compressing the body as it streams
/// through when the header says so. Returns the bytes written.
pub fn write_entry(header: &Header, body: &mut impl Read, out: &mut impl Write) -> io::Result<u64> {
    let mut counter = Counting {
        inner: out,
        count: 0,
    };
    counter.write_all(&header.encode())?;
    if header.compressed() {
        let mut encoder = zstd::stream::write::Encoder::new(&mut counter, ZSTD_LEVEL)?;
        encoder.include_checksum(false)?;
        encoder.set_pledged_src_size(Some(header.size))?;
        io::copy(body, &mut encoder)?;
        encoder.finish()?;
    } else {
        io::copy(body, &mut counter)?;
    }
    counter.flush()?;
    Ok(counter.count)
}

struct Counting<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Reads an entry's header from `input`, then decodes its body into `out`, checking size and
/// hash. Only a verified body is a success; the caller must discard `out` otherwise.
pub fn read_entry(input: &mut impl Read, out: &mut impl Write) -> Result<Header, FormatError> {
    read_entry_within(input, out, u64::MAX)
}

/// [`read_entry`] for an entry whose decoded body may have at most `max_size` bytes: one whose
/// header says more is refused before a byte of its body is read (a small zstd frame can
/// claim gigabytes).
pub fn read_entry_within(
    input: &mut impl Read,
    out: &mut impl Write,
    max_size: u64,
) -> Result<Header, FormatError> {
    let mut bytes = [0u8; HEADER_LEN];
    read_exact_or_truncated(input, &mut bytes)?;
    let header = Header::decode(&bytes)?;
    if header.size > max_size {
        return Err(FormatError::TooLarge {
            size: header.size,
            limit: max_size,
        });
    }
    let mut checked = Checked {
        inner: out,
        hasher: Sha256::new(),
        size: 0,
        limit: header.size,
    };
    if header.compressed() {
        let mut decoder = zstd::stream::read::Decoder::new(input)
            .map_err(FormatError::Zstd)?
            .single_frame();
        io::copy(&mut decoder, &mut checked).map_err(|err| {
            if checked.over_limit() {
                size_error(&checked)
            } else {
                FormatError::Zstd(err)
            }
        })?;
        // Anything after the frame is not part of an entry.
        let mut rest = [0u8; 1];
        if decoder.finish().read(&mut rest)? != 0 {
            return Err(FormatError::Truncated);
        }
    } else {
        // One byte more than the header says, to see a longer body (saturating: a header
        // may claim u64::MAX bytes).
        io::copy(&mut input.take(header.size.saturating_add(1)), &mut checked).map_err(|err| {
            if checked.over_limit() {
                size_error(&checked)
            } else {
                FormatError::Io(err)
            }
        })?;
    }
    if checked.size != header.size {
        return Err(FormatError::Size {
            expected: header.size,
            actual: checked.size,
        });
    }
    if OutputId(checked.hasher.finalize().into()) != header.output_id {
        return Err(FormatError::Hash);
    }
    Ok(header)
}

fn size_error<W>(checked: &Checked<W>) -> FormatError {
    FormatError::Size {
        expected: checked.limit,
        actual: checked.size,
    }
}

fn read_exact_or_truncated(input: &mut impl Read, buf: &mut [u8]) -> Result<(), FormatError> {
    input.read_exact(buf).map_err(|err| match err.kind() {
        io::ErrorKind::UnexpectedEof => FormatError::Truncated,
        _ => FormatError::Io(err),
    })
}

/// Hashes and counts what passes through, refusing to write more than `limit` bytes.
struct Checked<W> {
    inner: W,
    hasher: Sha256,
    size: u64,
    limit: u64,
}

impl<W> Checked<W> {
    fn over_limit(&self) -> bool {
        self.size > self.limit
    }
}

impl<W: Write> Write for Checked<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.size += buf.len() as u64;
        if self.over_limit() {
            return Err(io::Error::other(
                "entry body is longer than its header says",
            ));
        }
        self.hasher.update(buf);
        self.inner.write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_for(body: &[u8], compress: bool) -> Header {
        Header {
            flags: if compress { FLAG_ZSTD } else { 0 },
            output_id: OutputId::of(body),
            size: body.len() as u64,
            time: SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789),
        }
    }

    fn entry(body: &[u8], compress: bool) -> Vec<u8> {
        let mut out = Vec::new();
        write_entry(&header_for(body, compress), &mut &body[..], &mut out).unwrap();
        out
    }

    fn compressible(len: usize) -> Vec<u8> {
        (0..len).map(|i| b"go build cache "[i % 15]).collect()
    }

    #[test]
    fn round_trips_raw_and_compressed() {
        for (body, compress) in [
            (Vec::new(), false),
            (b"tiny".to_vec(), false),
            (compressible(300_000), true),
            (compressible(300_000), false),
        ] {
            let bytes = entry(&body, compress);
            let mut out = Vec::new();
            let header = read_entry(&mut &bytes[..], &mut out).unwrap();
            assert_eq!(out, body);
            assert_eq!(header, header_for(&body, compress));
            if compress {
                assert!(bytes.len() < body.len() / 10, "{} bytes", bytes.len());
            } else {
                assert_eq!(bytes.len(), HEADER_LEN + body.len());
            }
        }
    }

    #[test]
    fn the_header_is_the_documented_bytes() {
        let bytes = entry(b"abc", false);
        assert_eq!(&bytes[..8], b"GRCENTRY");
        assert_eq!(&bytes[8..12], &[1, 0, 0, 0]);
        assert_eq!(&bytes[12..44], &OutputId::of(b"abc").0);
        assert_eq!(&bytes[44..52], &3u64.to_le_bytes());
        assert_eq!(&bytes[52..60], &1_700_000_000_123_456_789u64.to_le_bytes());
        assert_eq!(&bytes[60..], b"abc");
    }

    #[test]
    fn damaged_entries_are_refused() {
        let body = compressible(100_000);
        for compress in [false, true] {
            let good = entry(&body, compress);
            let mut flipped = good.clone();
            let middle = HEADER_LEN + (good.len() - HEADER_LEN) / 2;
            flipped[middle] ^= 0x40;
            let mut bad_magic = good.clone();
            bad_magic[0] = b'X';
            let mut bad_version = good.clone();
            bad_version[8] = 9;
            let mut bad_flags = good.clone();
            bad_flags[11] = 0x80;
            let mut longer = good.clone();
            longer.extend_from_slice(b"more");
            let cases = [
                ("truncated body", good[..good.len() - 10].to_vec()),
                ("truncated header", good[..30].to_vec()),
                ("flipped byte", flipped),
                ("bad magic", bad_magic),
                ("bad version", bad_version),
                ("unknown flags", bad_flags),
                ("trailing bytes", longer),
            ];
            for (name, bytes) in cases {
                let mut out = Vec::new();
                let result = read_entry(&mut &bytes[..], &mut out);
                assert!(
                    result.is_err(),
                    "{name} (compressed: {compress}) was accepted"
                );
            }
        }
    }

    #[test]
    fn compression_pays_for_object_files_not_for_noise() {
        assert!(compression_pays(1 << 20, &compressible(SAMPLE)));
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let noise: Vec<u8> = (0..SAMPLE)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 32) as u8
            })
            .collect();
        assert!(!compression_pays(1 << 20, &noise));
        assert!(!compression_pays(100, &compressible(100)));
    }
}

#[cfg(test)]
mod proptests;
