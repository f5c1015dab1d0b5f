//! Property tests of the entry format (see `crate::proptests`): every header and body
//! round-trips, raw or compressed; a damaged entry is refused or verified, never a panic; a
//! header that lies about its size is refused without the body it claims being allocated.

use std::io::{self, Read};

use proptest::prelude::*;

use super::*;
use crate::proptests::{config, config_scaled, lying_len, mutate, mutations};

fn header() -> impl Strategy<Value = Header> {
    (
        prop_oneof![Just(0), Just(FLAG_ZSTD)],
        any::<[u8; 32]>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(|(flags, id, size, nanos)| Header {
            flags,
            output_id: OutputId(id),
            size,
            time: SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos),
        })
}

/// A body: random bytes, or a run of a few bytes repeated (which compresses).
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..2048),
        (prop::collection::vec(any::<u8>(), 1..8), 0usize..20_000).prop_map(|(unit, len)| unit
            .iter()
            .copied()
            .cycle()
            .take(len)
            .collect()),
    ]
}

fn entry_of(body: &[u8], compress: bool, nanos: u64) -> (Header, Vec<u8>) {
    let header = Header {
        flags: if compress { FLAG_ZSTD } else { 0 },
        output_id: OutputId::of(body),
        size: body.len() as u64,
        time: SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos),
    };
    let mut out = Vec::new();
    write_entry(&header, &mut &body[..], &mut out).expect("writing to memory");
    (header, out)
}

/// Gives `head`, then fails the test if more is read: what is read past a header that must be
/// refused on its own.
struct HeaderOnly<'a>(&'a [u8]);

impl Read for HeaderOnly<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        assert!(!self.0.is_empty(), "the body of a refused entry was read");
        let n = self.0.len().min(out.len());
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn prop_headers_round_trip(header in header()) {
        prop_assert_eq!(Header::decode(&header.encode()).unwrap(), header);
    }

    #[test]
    fn prop_any_header_bytes_decode_or_are_refused(bytes in any::<[u8; HEADER_LEN]>(), valid in any::<bool>()) {
        let mut bytes = bytes;
        if valid {
            // Past the magic and version, so that the other fields are reached.
            bytes[..8].copy_from_slice(MAGIC);
            bytes[8..10].copy_from_slice(&VERSION.to_le_bytes());
        }
        if let Ok(header) = Header::decode(&bytes) {
            prop_assert_eq!(header.encode(), bytes);
        }
    }

    #[test]
    fn prop_a_header_that_lies_about_its_size_is_refused_without_its_claim(
        size in lying_len(),
        tail in prop::collection::vec(any::<u8>(), 0..64),
        compress in any::<bool>(),
        limit in prop_oneof![Just(u64::MAX), 0..1024u64],
    ) {
        let header = Header {
            flags: if compress { FLAG_ZSTD } else { 0 },
            output_id: OutputId::of(&tail),
            size,
            time: SystemTime::UNIX_EPOCH,
        };
        let mut bytes = header.encode().to_vec();
        bytes.extend_from_slice(&tail);
        let mut out = Vec::new();
        let result = if size > limit {
            // Refused on the header alone: not a byte of the body is read.
            let result = read_entry_within(&mut HeaderOnly(&bytes[..HEADER_LEN]), &mut out, limit);
            prop_assert!(matches!(result, Err(FormatError::TooLarge { .. })), "{:?}", result);
            result
        } else {
            read_entry_within(&mut &bytes[..], &mut out, limit)
        };
        // A raw body is what follows the header; a frame of at most 64 bytes decodes to
        // little. Nothing near the claimed size is ever written.
        prop_assert!(out.len() as u64 <= size.min(limit));
        if size != tail.len() as u64 || compress {
            prop_assert!(result.is_err(), "a lying entry was read: {:?}", result);
        }
    }
}

proptest! {
    // Each case compresses and decompresses a body.
    #![proptest_config(config_scaled(4))]

    #[test]
    fn prop_entries_round_trip(body in body(), compress in any::<bool>(), nanos in any::<u64>()) {
        let (header, bytes) = entry_of(&body, compress, nanos);
        let mut out = Vec::new();
        prop_assert_eq!(read_entry(&mut &bytes[..], &mut out).unwrap(), header);
        prop_assert_eq!(&out, &body);
        let mut out = Vec::new();
        let exact = read_entry_within(&mut &bytes[..], &mut out, body.len() as u64);
        prop_assert_eq!(exact.unwrap(), header);
        if !body.is_empty() {
            let refused = read_entry_within(&mut &bytes[..], &mut Vec::new(), body.len() as u64 - 1);
            prop_assert!(matches!(refused, Err(FormatError::TooLarge { .. })), "{:?}", refused);
        }
    }

    #[test]
    fn prop_damaged_entries_are_refused_or_verified(
        body in body(),
        compress in any::<bool>(),
        mutations in mutations(),
        limit in prop_oneof![Just(u64::MAX), 0..40_000u64],
    ) {
        let (_, bytes) = entry_of(&body, compress, 1_700_000_000_000_000_000);
        let damaged = mutate(&bytes, &mutations);
        let mut out = Vec::new();
        if let Ok(header) = read_entry_within(&mut &damaged[..], &mut out, limit) {
            // Only a verified body is a success, whatever was changed.
            prop_assert_eq!(out.len() as u64, header.size);
            prop_assert!(header.size <= limit);
            prop_assert_eq!(OutputId::of(&out), header.output_id);
            if header.output_id == OutputId::of(&body) {
                prop_assert_eq!(&out, &body);
            }
        }
    }
}

/// Found by `prop_a_header_that_lies_about_its_size_is_refused_without_its_claim`: a raw
/// entry whose header claims `u64::MAX` bytes overflowed `size + 1` (a panic in a debug
/// build) instead of being refused as short.
#[test]
fn a_raw_entry_claiming_u64_max_bytes_is_refused() {
    let header = Header {
        flags: 0,
        output_id: OutputId::of(b"abc"),
        size: u64::MAX,
        time: SystemTime::UNIX_EPOCH,
    };
    let mut bytes = header.encode().to_vec();
    bytes.extend_from_slice(b"abc");
    let mut out = Vec::new();
    assert!(matches!(
        read_entry(&mut &bytes[..], &mut out),
        Err(FormatError::Size { actual: 3, .. })
    ));
}
