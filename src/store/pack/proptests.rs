//! Property tests of a pack's header and table of contents (see `crate::proptests`): any
//! valid table round-trips, padded or not, followed by entry bytes or not; a damaged or
//! lying one is refused or keeps every rule a reader relies on (rows in order, inside the
//! data, no overlap, no overflow), and a count the bytes do not hold allocates nothing;
//! ranged reads planned from a table cover each wanted entry once.

use proptest::prelude::*;

use super::*;
use crate::proptests::{config, lying_len, mutate, mutations};

/// A valid table: rows laid out from the data offset in order, with gaps.
fn toc() -> impl Strategy<Value = (Toc, u64)> {
    (
        prop::collection::vec((any::<[u8; 32]>(), 0..1000u64, 0..100_000u64), 0..20),
        0..200u64,
    )
        .prop_map(|(rows, padding)| {
            let data = HEADER_LEN + ROW_LEN * rows.len() as u64 + padding;
            let mut next = data;
            let entries = rows
                .into_iter()
                .map(|(action, gap, len)| {
                    let entry = TocEntry {
                        action: ActionId(action),
                        offset: next + gap,
                        len,
                    };
                    next = entry.end();
                    entry
                })
                .collect();
            (Toc { entries }, data)
        })
}

fn check_rules(toc: &Toc, bytes: &[u8]) -> Result<(), TestCaseError> {
    let header = PackHeader::decode(bytes).unwrap();
    prop_assert_eq!(toc.entries.len(), header.count as usize);
    prop_assert!(header.toc_end() <= bytes.len() as u64);
    let mut next = header.data_offset;
    for entry in &toc.entries {
        prop_assert!(entry.offset >= next);
        next = entry.offset.checked_add(entry.len).expect("no overflow");
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn prop_tables_round_trip((toc, data) in toc(), more in prop::collection::vec(any::<u8>(), 0..64)) {
        let mut bytes = toc.encode(data);
        let header = PackHeader::decode(&bytes).unwrap();
        prop_assert_eq!(header.data_offset, data);
        prop_assert_eq!(header.toc_end(), bytes.len() as u64);
        bytes.extend_from_slice(&more);
        prop_assert_eq!(Toc::parse(&bytes).unwrap(), toc);
    }

    #[test]
    fn prop_damaged_tables_are_refused_or_keep_the_rules(
        (toc, data) in toc(),
        mutations in mutations(),
    ) {
        let damaged = mutate(&toc.encode(data), &mutations);
        if let Ok(parsed) = Toc::parse(&damaged) {
            check_rules(&parsed, &damaged)?;
        }
    }

    #[test]
    fn prop_a_header_that_lies_is_refused_or_held_to_its_bytes(
        (toc, data) in toc(),
        count in any::<u32>(),
        offset in lying_len(),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = toc.encode(data);
        bytes[12..16].copy_from_slice(&count.to_le_bytes());
        bytes[16..24].copy_from_slice(&offset.to_le_bytes());
        bytes.truncate(cut.index(bytes.len() + 1));
        match Toc::parse(&bytes) {
            Ok(parsed) => check_rules(&parsed, &bytes)?,
            Err(PackError::TooMany(n)) => prop_assert!(n > MAX_ENTRIES),
            Err(_) => {}
        }
        if count > MAX_ENTRIES {
            prop_assert!(Toc::parse(&bytes).is_err());
        }
    }

    #[test]
    fn prop_planned_ranges_cover_each_wanted_entry_once(
        (toc, _) in toc(),
        wanted in prop::collection::vec(any::<bool>(), 20),
        target in 1..400_000u64,
        max_gap in 0..2000u64,
    ) {
        let wanted: Vec<TocEntry> = toc
            .entries
            .iter()
            .zip(&wanted)
            .filter(|(_, w)| **w)
            .map(|(e, _)| *e)
            .collect();
        let ranges = plan_ranges(wanted.clone(), target, max_gap);
        let planned: Vec<TocEntry> = ranges.iter().flat_map(|r| r.entries.clone()).collect();
        prop_assert_eq!(planned, wanted);
        for range in &ranges {
            let first = range.entries[0];
            let last = range.entries[range.entries.len() - 1];
            prop_assert_eq!(range.range.clone(), first.offset..last.end());
            prop_assert!(range.entries.len() == 1 || range.range.end - range.range.start <= target);
            for pair in range.entries.windows(2) {
                prop_assert!(pair[1].offset - pair[0].end() <= max_gap);
            }
        }
    }
}
