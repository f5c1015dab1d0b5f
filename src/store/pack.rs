//! The pack format: the entries of one build's prefetch manifest in one object, so that a
//! fresh machine fetches them with a few ranged GETs instead of one GET each (see
//! docs/prefetch.md for when packs are written and read, docs/format.md for the bytes).
//!
//! ```text
//! offset        size       field
//!      0           8       magic "GRCPACK1"
//!      8           2       pack format version, little-endian u16 (1)
//!     10           2       flags, little-endian u16 (0)
//!     12           4       entry count N, little-endian u32
//!     16           8       data offset D: where the first entry may start, little-endian u64
//!     24        48*N       table of contents, one row per entry:
//!                            32  ActionID
//!                             8  offset of the entry in the pack, little-endian u64
//!                             8  length of the entry, little-endian u64
//!     24+48*N   ..D        zero padding
//!      D           .       the entries, each byte for byte in the entry format (format.rs)
//! ```
//!
//! The rows are in the order of their offsets, and entries never overlap nor start before D.
//! A pack is never trusted: [`Toc::parse`] refuses a table that breaks these rules, and each
//! entry read from a pack is decoded and verified (size and sha256) like an entry fetched on
//! its own, so a damaged or lying pack costs a miss, never a wrong output.
//!
//! [`plan_ranges`] groups the entries to fetch into ranged requests of consecutive entries.

use std::ops::Range;

use crate::ids::ActionId;

pub const MAGIC: &[u8; 8] = b"GRCPACK1";
pub const VERSION: u16 = 1;
/// The fixed header before the table of contents.
pub const HEADER_LEN: u64 = 24;
/// One row of the table of contents.
pub const ROW_LEN: u64 = 48;
/// The most entries a pack lists: as many as a manifest keeps (the manifest's limit is this
/// one, so that the store's format does not depend on the cache above it).
pub const MAX_ENTRIES: u32 = 200_000;
/// What the first ranged GET of a pack asks for: the header and the table of contents of
/// packs up to about 5,000 entries. A longer table costs a second GET.
pub const FIRST_READ: u64 = 256 * 1024;
/// A ranged GET of entries asks for about this many bytes.
pub const RANGE_TARGET: u64 = 8 * 1024 * 1024;
/// Entries not wanted between wanted ones are read through (and thrown away) up to this
/// many bytes: cheaper than a request more.
pub const MAX_GAP: u64 = 256 * 1024;

/// One entry of a pack: where its bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TocEntry {
    pub action: ActionId,
    pub offset: u64,
    pub len: u64,
}

impl TocEntry {
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// A pack's table of contents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Toc {
    pub entries: Vec<TocEntry>,
}

/// Why bytes are not a pack's header and table of contents.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackError {
    #[error("not a goremotecache pack (bad magic)")]
    BadMagic,
    #[error("pack format version {0} is not supported")]
    Version(u16),
    #[error("pack has unknown flags {0:#06x}")]
    Flags(u16),
    #[error("pack lists {0} entries, over the limit of {MAX_ENTRIES}")]
    TooMany(u32),
    #[error("pack's data offset {data} is inside its table of contents (which ends at {toc_end})")]
    DataOffset { data: u64, toc_end: u64 },
    #[error("pack entry {index} overlaps another or starts before the data")]
    Overlap { index: usize },
    #[error("pack's table of contents is truncated")]
    Truncated,
}

/// The fields of a pack's fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackHeader {
    pub count: u32,
    pub data_offset: u64,
}

impl PackHeader {
    /// Where the table of contents ends: how many leading bytes [`Toc::parse`] needs.
    pub fn toc_end(&self) -> u64 {
        HEADER_LEN + ROW_LEN * u64::from(self.count)
    }

    pub fn encode(&self) -> [u8; HEADER_LEN as usize] {
        let mut out = [0u8; HEADER_LEN as usize];
        out[..8].copy_from_slice(MAGIC);
        out[8..10].copy_from_slice(&VERSION.to_le_bytes());
        out[12..16].copy_from_slice(&self.count.to_le_bytes());
        out[16..24].copy_from_slice(&self.data_offset.to_le_bytes());
        out
    }

    /// Decodes and checks the fixed header at the start of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Self, PackError> {
        let Some(bytes) = bytes.get(..HEADER_LEN as usize) else {
            return Err(PackError::Truncated);
        };
        if &bytes[..8] != MAGIC {
            return Err(PackError::BadMagic);
        }
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        if version != VERSION {
            return Err(PackError::Version(version));
        }
        let flags = u16::from_le_bytes([bytes[10], bytes[11]]);
        if flags != 0 {
            return Err(PackError::Flags(flags));
        }
        let count = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes"));
        if count > MAX_ENTRIES {
            return Err(PackError::TooMany(count));
        }
        let header = PackHeader {
            count,
            data_offset: u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes")),
        };
        if header.data_offset < header.toc_end() {
            return Err(PackError::DataOffset {
                data: header.data_offset,
                toc_end: header.toc_end(),
            });
        }
        Ok(header)
    }
}

impl Toc {
    /// The header and table of contents at the start of `bytes` (which may hold more).
    pub fn parse(bytes: &[u8]) -> Result<Toc, PackError> {
        let header = PackHeader::decode(bytes)?;
        let rows = bytes
            .get(HEADER_LEN as usize..header.toc_end() as usize)
            .ok_or(PackError::Truncated)?;
        let mut entries = Vec::with_capacity(header.count as usize);
        let mut next_free = header.data_offset;
        for (index, row) in rows.chunks_exact(ROW_LEN as usize).enumerate() {
            let entry = TocEntry {
                action: ActionId(row[..32].try_into().expect("32 bytes")),
                offset: u64::from_le_bytes(row[32..40].try_into().expect("8 bytes")),
                len: u64::from_le_bytes(row[40..48].try_into().expect("8 bytes")),
            };
            let end = entry.offset.checked_add(entry.len);
            if entry.offset < next_free || end.is_none() {
                return Err(PackError::Overlap { index });
            }
            next_free = end.expect("checked");
            entries.push(entry);
        }
        Ok(Toc { entries })
    }

    /// The header and rows for entries laid out from `data_offset` on.
    pub fn encode(&self, data_offset: u64) -> Vec<u8> {
        let header = PackHeader {
            count: self.entries.len() as u32,
            data_offset,
        };
        let mut out = Vec::with_capacity(header.toc_end() as usize);
        out.extend_from_slice(&header.encode());
        for entry in &self.entries {
            out.extend_from_slice(&entry.action.0);
            out.extend_from_slice(&entry.offset.to_le_bytes());
            out.extend_from_slice(&entry.len.to_le_bytes());
        }
        out
    }

    /// The bytes of entries the pack holds.
    pub fn bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.len).sum()
    }
}

/// One ranged GET: the bytes `range` of the pack, holding `entries` (in order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackRange {
    pub range: Range<u64>,
    pub entries: Vec<TocEntry>,
}

/// Groups `wanted` (entries of one pack) into ranged GETs: consecutive entries in the pack's
/// order, merged across gaps up to `max_gap` bytes, each range about `target` bytes (an
/// entry larger than that is a range of its own).
pub fn plan_ranges(mut wanted: Vec<TocEntry>, target: u64, max_gap: u64) -> Vec<PackRange> {
    wanted.sort_by_key(|e| e.offset);
    let mut ranges: Vec<PackRange> = Vec::new();
    for entry in wanted {
        match ranges.last_mut() {
            Some(last)
                if entry.offset >= last.range.end
                    && entry.offset - last.range.end <= max_gap
                    && entry.end() - last.range.start <= target =>
            {
                last.range.end = entry.end();
                last.entries.push(entry);
            }
            _ => ranges.push(PackRange {
                range: entry.offset..entry.end(),
                entries: vec![entry],
            }),
        }
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u8, offset: u64, len: u64) -> TocEntry {
        TocEntry {
            action: ActionId([n; 32]),
            offset,
            len,
        }
    }

    fn toc() -> Toc {
        let data = HEADER_LEN + 3 * ROW_LEN;
        Toc {
            entries: vec![
                entry(1, data, 100),
                entry(2, data + 100, 61),
                entry(3, data + 161, 5000),
            ],
        }
    }

    #[test]
    fn a_table_of_contents_round_trips_with_or_without_padding() {
        let toc = toc();
        let data = HEADER_LEN + 3 * ROW_LEN;
        let bytes = toc.encode(data);
        assert_eq!(bytes.len() as u64, data);
        assert_eq!(Toc::parse(&bytes).unwrap(), toc);
        // Followed by entry bytes, as in a first read.
        let mut more = bytes.clone();
        more.extend_from_slice(&[9u8; 1000]);
        assert_eq!(Toc::parse(&more).unwrap(), toc);
        // Padding between the table and the data (a pack that reserved more rows).
        let mut padded = Toc::default();
        for e in &toc.entries {
            padded
                .entries
                .push(entry(e.action.0[0], e.offset + 96, e.len));
        }
        assert_eq!(Toc::parse(&padded.encode(data + 96)).unwrap(), padded);
        assert_eq!(toc.bytes(), 5161);
    }

    #[test]
    fn a_truncated_table_or_header_is_refused() {
        let bytes = toc().encode(HEADER_LEN + 3 * ROW_LEN);
        for cut in [0, 10, HEADER_LEN as usize, bytes.len() - 1] {
            assert_eq!(
                Toc::parse(&bytes[..cut]),
                Err(PackError::Truncated),
                "{cut}"
            );
        }
    }

    #[test]
    fn lying_lengths_and_offsets_are_refused() {
        let data = HEADER_LEN + 3 * ROW_LEN;
        // An entry that runs into the next one.
        let mut toc = toc();
        toc.entries[0].len = 101;
        assert_eq!(
            Toc::parse(&toc.encode(data)),
            Err(PackError::Overlap { index: 1 })
        );
        // An entry inside the table of contents.
        let mut toc = self::toc();
        toc.entries[0].offset = 10;
        assert_eq!(
            Toc::parse(&toc.encode(data)),
            Err(PackError::Overlap { index: 0 })
        );
        // A length that wraps around.
        let mut toc = self::toc();
        toc.entries[2].len = u64::MAX - 10;
        assert_eq!(
            Toc::parse(&toc.encode(data)),
            Err(PackError::Overlap { index: 2 })
        );
        // A data offset inside the table.
        let bytes = self::toc().encode(data - 1);
        assert!(matches!(
            Toc::parse(&bytes),
            Err(PackError::DataOffset { .. })
        ));
    }

    #[test]
    fn bad_headers_are_refused() {
        let good = toc().encode(HEADER_LEN + 3 * ROW_LEN);
        let mut magic = good.clone();
        magic[0] = b'X';
        assert_eq!(Toc::parse(&magic), Err(PackError::BadMagic));
        let mut version = good.clone();
        version[8] = 2;
        assert_eq!(Toc::parse(&version), Err(PackError::Version(2)));
        let mut flags = good.clone();
        flags[10] = 1;
        assert_eq!(Toc::parse(&flags), Err(PackError::Flags(1)));
        // A count over the bound is refused before anything is allocated for it.
        let mut many = good;
        many[12..16].copy_from_slice(&(MAX_ENTRIES + 1).to_le_bytes());
        assert_eq!(Toc::parse(&many), Err(PackError::TooMany(MAX_ENTRIES + 1)));
    }

    #[test]
    fn ranges_merge_neighbours_and_small_gaps_up_to_the_target() {
        let e = |n, offset, len| entry(n, offset, len);
        // Given out of order: planned in pack order.
        let wanted = vec![e(2, 1100, 100), e(1, 1000, 100), e(3, 1300, 100)];
        let ranges = plan_ranges(wanted, 10_000, 100);
        assert_eq!(ranges.len(), 1);
        assert_eq!(ranges[0].range, 1000..1400);
        assert_eq!(ranges[0].entries.len(), 3);
        assert_eq!(ranges[0].entries[0].action, ActionId([1; 32]));

        // A gap over the limit starts a new range.
        let ranges = plan_ranges(vec![e(1, 1000, 100), e(2, 1201, 100)], 10_000, 100);
        assert_eq!(
            ranges.iter().map(|r| r.range.clone()).collect::<Vec<_>>(),
            vec![1000..1100, 1201..1301]
        );

        // The target bounds a range; one larger entry is a range of its own.
        let ranges = plan_ranges(
            vec![
                e(1, 0, 600),
                e(2, 600, 600),
                e(3, 1200, 5000),
                e(4, 6200, 10),
            ],
            1000,
            100,
        );
        assert_eq!(
            ranges.iter().map(|r| r.range.clone()).collect::<Vec<_>>(),
            vec![0..600, 600..1200, 1200..6200, 6200..6210]
        );
        assert!(plan_ranges(Vec::new(), 1000, 100).is_empty());
    }
}

#[cfg(test)]
mod proptests;
