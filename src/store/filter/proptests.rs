//! Property tests of the key filter's stored form (see `crate::proptests`), beside the
//! hand-written cuts and lies in `tests`: any set of fingerprints (the edges of 32 bits, runs
//! of neighbours) round-trips and answers for its keys; a damaged filter, resealed with a
//! good checksum or not, is refused or read as a filter that round-trips; a lying count
//! allocates nothing.

use proptest::prelude::*;

use super::*;
use crate::proptests::{config, lying_len, mutate, mutations};

fn fingerprints() -> impl Strategy<Value = Vec<u32>> {
    prop::collection::vec(
        prop_oneof![
            any::<u32>(),
            Just(0),
            Just(1),
            Just(u32::MAX),
            Just(u32::MAX - 1),
            0..300u32,
            (u32::MAX - 300)..=u32::MAX,
        ],
        0..300,
    )
}

fn made() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u32>().prop_map(u64::from),
        Just(0),
        Just(1_700_000_000)
    ]
}

/// `bytes` with the checksum of their fields in place of their own.
fn resealed(bytes: &[u8]) -> Vec<u8> {
    let mut fields = bytes[..bytes.len().saturating_sub(CHECKSUM)].to_vec();
    let sum = checksum(&fields);
    fields.extend_from_slice(&sum);
    fields
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn prop_filters_round_trip_and_answer_for_their_keys(prints in fingerprints(), made in made()) {
        let filter = KeyFilter::of_fingerprints(prints.clone(), UNIX_EPOCH + Duration::from_secs(made));
        let back = KeyFilter::decode(&filter.encode()).unwrap();
        prop_assert_eq!(&back, &filter);
        prop_assert_eq!(back.made, made);
        for print in prints {
            let mut key = [0u8; 32];
            key[..4].copy_from_slice(&print.to_be_bytes());
            prop_assert!(back.may_hold(&ActionId(key)));
        }
    }

    #[test]
    fn prop_damaged_filters_are_refused_or_read_whole(
        prints in fingerprints(),
        mutations in mutations(),
        reseal in any::<bool>(),
    ) {
        let bytes = KeyFilter::of_fingerprints(prints, UNIX_EPOCH).encode();
        let mut damaged = mutate(&bytes, &mutations);
        if reseal {
            damaged = resealed(&damaged);
        }
        if let Ok(filter) = KeyFilter::decode(&damaged) {
            prop_assert!(filter.fingerprints.windows(2).all(|w| w[0] < w[1]));
            prop_assert!(filter.fingerprints.len() <= damaged.len());
            prop_assert_eq!(KeyFilter::decode(&filter.encode()).unwrap(), filter);
        }
    }

    #[test]
    fn prop_a_count_the_bytes_cannot_hold_is_refused(prints in fingerprints(), count in lying_len()) {
        let bytes = KeyFilter::of_fingerprints(prints.clone(), UNIX_EPOCH).encode();
        let mut lying = bytes.clone();
        lying[20..28].copy_from_slice(&count.to_le_bytes());
        let result = KeyFilter::decode(&resealed(&lying));
        if count == prints.iter().collect::<std::collections::BTreeSet<_>>().len() as u64 {
            prop_assert!(result.is_ok());
        } else {
            prop_assert!(result.is_err(), "a count of {} was read", count);
        }
    }
}
