//! What the property tests of the decoders and parsers share (tests only; docs/reliability.md
//! says what they cover): the case count, and the mutations that turn a valid encoding into
//! the damaged ones a decoder must refuse without a panic, a hang or an allocation the input
//! does not pay for.
//!
//! Every property test takes its configuration from [`config`], so that `cargo test` runs a
//! bounded number of cases ([`DEFAULT_CASES`]) and `PROPTEST_CASES=100000 cargo test --lib
//! prop` runs many more. Failures are not written to `proptest-regressions` files: a failure
//! found here is fixed with a plain `#[test]` of its minimal input beside the decoder.

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config;

/// Cases per property test when `PROPTEST_CASES` is not set: all of them together stay
/// within seconds of a `cargo test --lib`.
pub const DEFAULT_CASES: u32 = 256;

/// The case count: `PROPTEST_CASES`, or [`DEFAULT_CASES`].
pub fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.trim().parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(DEFAULT_CASES)
}

/// The configuration of every property test: [`cases`] cases, no regression files.
pub fn config() -> Config {
    Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    }
}

/// [`config`] with a `1/divisor` share of the cases (at least 16), for a test whose cases
/// are costly (a zstd frame each).
pub fn config_scaled(divisor: u32) -> Config {
    Config {
        cases: (cases() / divisor).max(16),
        ..config()
    }
}

/// Lengths a lying header may claim: small, at the edges of the integer types, and huge.
pub fn lying_len() -> impl Strategy<Value = u64> {
    prop_oneof![
        0..4096u64,
        Just(0),
        Just(u64::MAX),
        Just(u64::MAX - 1),
        Just(1 << 60),
        Just(u64::from(u32::MAX)),
        Just(u64::from(u32::MAX) + 1),
        Just(i64::MAX as u64),
        any::<u64>(),
    ]
}

/// One change to a valid encoding.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// Flip one bit.
    Flip(Index, u8),
    /// Set one byte.
    Set(Index, u8),
    /// Cut the rest off.
    Truncate(Index),
    /// Insert bytes.
    Insert(Index, Vec<u8>),
    /// Remove a range (up to 16 bytes).
    Remove(Index, u8),
    /// Copy a range (up to 64 bytes) in again right after itself.
    Duplicate(Index, u8),
    /// Write a little-endian u64 over 8 bytes (a lying length, offset or count).
    Overwrite(Index, u64),
}

impl Mutation {
    /// Applies the change to `bytes` (anything is a valid target, the empty one included).
    pub fn apply(&self, bytes: &mut Vec<u8>) {
        let len = bytes.len();
        let at = |index: &Index| if len == 0 { 0 } else { index.index(len) };
        match self {
            Mutation::Flip(index, bit) if len > 0 => bytes[at(index)] ^= 1 << (bit % 8),
            Mutation::Set(index, byte) if len > 0 => bytes[at(index)] = *byte,
            Mutation::Truncate(index) => bytes.truncate(at(index)),
            Mutation::Insert(index, more) => {
                let at = if len == 0 { 0 } else { index.index(len + 1) };
                bytes.splice(at..at, more.iter().copied());
            }
            Mutation::Remove(index, n) if len > 0 => {
                let start = at(index);
                let end = (start + usize::from(*n % 16) + 1).min(len);
                bytes.drain(start..end);
            }
            Mutation::Duplicate(index, n) if len > 0 => {
                let start = at(index);
                let end = (start + usize::from(*n % 64) + 1).min(len);
                let copy = bytes[start..end].to_vec();
                bytes.splice(end..end, copy);
            }
            Mutation::Overwrite(index, value) if len > 0 => {
                let start = at(index);
                let end = (start + 8).min(len);
                bytes[start..end].copy_from_slice(&value.to_le_bytes()[..end - start]);
            }
            _ => {}
        }
    }
}

/// One mutation.
pub fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, v)| Mutation::Insert(i, v)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, n)| Mutation::Remove(i, n)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
        (any::<Index>(), lying_len()).prop_map(|(i, v)| Mutation::Overwrite(i, v)),
    ]
}

/// One to four mutations, applied in order.
pub fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    prop::collection::vec(mutation(), 1..5)
}

/// `bytes` with `mutations` applied.
pub fn mutate(bytes: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for mutation in mutations {
        mutation.apply(&mut out);
    }
    out
}

/// Cut points for feeding a stream in pieces: indexes into its length, any number of them.
pub fn cuts() -> impl Strategy<Value = Vec<Index>> {
    prop::collection::vec(any::<Index>(), 0..12)
}

/// `bytes` in the pieces that `cuts` make (sorted, empty pieces kept: a read may return few
/// bytes, and a push of none must change nothing).
pub fn pieces<'a>(bytes: &'a [u8], cuts: &[Index]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
    at.sort_unstable();
    let mut out = Vec::with_capacity(at.len() + 1);
    let mut start = 0;
    for cut in at {
        out.push(&bytes[start..cut]);
        start = cut;
    }
    out.push(&bytes[start..]);
    out
}

mod tests {
    use super::*;

    #[test]
    fn prop_pieces_rejoin_to_the_whole() {
        let bytes = b"0123456789";
        let mut runner = proptest::test_runner::TestRunner::new(config());
        runner
            .run(&cuts(), |cuts| {
                prop_assert_eq!(pieces(bytes, &cuts).concat(), bytes.to_vec());
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn prop_mutations_apply_to_any_input() {
        let mut runner = proptest::test_runner::TestRunner::new(config());
        runner
            .run(
                &(prop::collection::vec(any::<u8>(), 0..32), mutations()),
                |(bytes, mutations)| {
                    let out = mutate(&bytes, &mutations);
                    // Only inserts and duplicates grow it, by at most 64 bytes each.
                    prop_assert!(out.len() <= bytes.len() + 64 * mutations.len());
                    Ok(())
                },
            )
            .unwrap();
    }
}
