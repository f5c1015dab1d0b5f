//! A 40 MiB body is decoded as a stream: the peak of heap memory stays far below the body.
//!
//! This test binary has a counting allocator and one test, so the peak it sees is this
//! decoding's alone. The input is generated on the fly and the output is hashed and thrown
//! away, so neither side holds the body either.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{self, BufReader, Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use goremotecache::cacheprog::wire::{Command, Incoming, Request, RequestReader};
use goremotecache::ids::{ActionId, OutputId};
use sha2::{Digest, Sha256};

#[path = "suite/support/encode.rs"]
mod encode;
use encode::encode_request;

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = CURRENT.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
        PEAK.fetch_max(now, Ordering::SeqCst);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        CURRENT.fetch_sub(layout.size(), Ordering::SeqCst);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const BODY: usize = 40 * 1024 * 1024;

/// Deterministic body bytes, produced piece by piece.
fn body_piece(offset: usize, out: &mut [u8]) {
    for (i, b) in out.iter_mut().enumerate() {
        let x = (offset + i) as u64;
        *b = (x.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8;
    }
}

/// A reader that yields header, `"`, base64 of the body, `"\n`, then a get, without ever
/// holding more than one small piece.
struct Wire {
    pending: Vec<u8>,
    pos: usize,
    body_done: usize,
    stage: u8,
}

impl Read for Wire {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.pending.len() {
            self.pending.clear();
            self.pos = 0;
            match self.stage {
                0 if self.body_done < BODY => {
                    // 48 KiB of body is 64 KiB of base64, a multiple of 3 bytes.
                    let n = (48 * 1024).min(BODY - self.body_done);
                    let mut raw = vec![0u8; n];
                    body_piece(self.body_done, &mut raw);
                    self.body_done += n;
                    self.pending.extend_from_slice(B64.encode(&raw).as_bytes());
                }
                0 => {
                    self.pending.extend_from_slice(b"\"\n");
                    let get = Command::Get {
                        action_id: ActionId([2; 32]),
                    };
                    self.pending.extend(encode_request(2, &get));
                    self.stage = 1;
                }
                _ => return Ok(0),
            }
        }
        let n = out.len().min(self.pending.len() - self.pos);
        out[..n].copy_from_slice(&self.pending[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

struct HashSink(Sha256, usize);

impl Write for HashSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        self.1 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_40_mib_body_streams_in_little_memory() {
    let mut expected = Sha256::new();
    let mut piece = vec![0u8; 1 << 20];
    for offset in (0..BODY).step_by(piece.len()) {
        body_piece(offset, &mut piece);
        expected.update(&piece);
    }
    drop(piece);
    let output_id = OutputId(expected.finalize().into());
    let mut header = encode_request(
        1,
        &Command::Put {
            action_id: ActionId([1; 32]),
            output_id,
            body_size: BODY as u64,
        },
    );
    header.push(b'"');
    let wire = Wire {
        pending: header,
        pos: 0,
        body_done: 0,
        stage: 0,
    };

    let baseline = CURRENT.load(Ordering::SeqCst);
    PEAK.store(baseline, Ordering::SeqCst);
    let mut reader = RequestReader::new(BufReader::with_capacity(256 * 1024, wire));
    let mut make = || Ok(HashSink(Sha256::new(), 0));
    let mut finish = |sink: HashSink, info: goremotecache::cacheprog::wire::BodyInfo| {
        assert_eq!(sink.1 as u64, info.size);
        Ok((OutputId(sink.0.finalize().into()), info))
    };
    let first = reader
        .next_request(&mut make, &mut finish)
        .unwrap()
        .unwrap();
    let second = reader
        .next_request(&mut make, &mut finish)
        .unwrap()
        .unwrap();
    let peak = PEAK.load(Ordering::SeqCst) - baseline;

    match first {
        Incoming::Request(Request { id: 1, .. }, Some((written, info))) => {
            assert_eq!(info.size, BODY as u64);
            assert_eq!(info.sha256, output_id);
            assert_eq!(written, output_id, "the sink received other bytes");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        second,
        Incoming::Request(Request { id: 2, .. }, None)
    ));
    println!(
        "peak heap while decoding a {} MiB body: {peak} bytes",
        BODY >> 20
    );
    // The generator's own pieces (48 KiB raw + 64 KiB base64) and the 256 KiB input buffer
    // are counted too; the decoder adds one 64 KiB chunk.
    assert!(peak < 1024 * 1024, "decoding held {peak} bytes at its peak");
}
