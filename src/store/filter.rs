//! The key filter: which keys a store holds, as of when the filter was made, in about two
//! bytes a key, so that a client can answer a get of a key the store does not have at once,
//! without asking (an instant miss; [`crate::cache::misses`]).
//!
//! A filter holds a 32-bit fingerprint of each key (its first four bytes: action IDs are
//! sha256 hashes, so those are uniform), sorted. A key whose fingerprint is not there is
//! certainly absent from the store as of the filter's making; one whose fingerprint is there
//! is probably present (a store of a million keys answers "maybe" for 1 in 4,300 absent keys,
//! which only costs the request that would have been made anyway).
//!
//! Stored form (docs/format.md): `GRCKEYS1`, a version (u16 LE, 1), flags (u16 LE, 0), the
//! Unix seconds it was made (u64 LE), the number of fingerprints (u64 LE), then the
//! fingerprints in increasing order, each as the LEB128 varint of its difference from the one
//! before (the first from 0), then the first 8 bytes of the sha256 of everything before them.
//! Every field is checked when read: a checksum that does not match (a bit flipped on the
//! way), a count the bytes cannot hold, a varint longer than five bytes, a fingerprint that
//! does not increase or leaves 32 bits, and bytes after the last one are refused, before
//! anything is allocated for them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::ids::ActionId;

const MAGIC: &[u8; 8] = b"GRCKEYS1";
const VERSION: u16 = 1;
const HEADER: usize = 8 + 2 + 2 + 8 + 8;
const CHECKSUM: usize = 8;

fn checksum(bytes: &[u8]) -> [u8; CHECKSUM] {
    let digest = <sha2::Sha256 as sha2::Digest>::digest(bytes);
    digest[..CHECKSUM].try_into().expect("8 bytes")
}

/// The largest stored filter read (a filter of 30 million keys is about 64 MiB).
pub const MAX_FILTER: usize = 64 << 20;

/// The keys of a store as of when it was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFilter {
    /// Unix seconds.
    made: u64,
    /// Sorted, each once.
    fingerprints: Vec<u32>,
}

/// Why a stored filter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("not a key filter")]
    Magic,
    #[error("key filter version {0} is not known to this release")]
    Version(u16),
    #[error("key filter cut short")]
    Truncated,
    #[error("key filter is damaged: {0}")]
    Damaged(&'static str),
    #[error("key filter of {0} bytes is larger than the {MAX_FILTER} read")]
    TooLarge(usize),
}

fn unix(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl KeyFilter {
    /// The fingerprint of `action`.
    pub fn fingerprint(action: &ActionId) -> u32 {
        let [a, b, c, d, ..] = action.0;
        u32::from_be_bytes([a, b, c, d])
    }

    /// A filter of no keys: a store known to be empty at `made`.
    pub fn empty(made: SystemTime) -> Self {
        Self::of_fingerprints(Vec::new(), made)
    }

    /// The filter of `keys`, made at `made`.
    pub fn of(keys: impl IntoIterator<Item = ActionId>, made: SystemTime) -> Self {
        Self::of_fingerprints(
            keys.into_iter().map(|k| Self::fingerprint(&k)).collect(),
            made,
        )
    }

    /// The filter of keys given by their fingerprints ([`KeyFilter::fingerprint`]).
    pub fn of_fingerprints(mut fingerprints: Vec<u32>, made: SystemTime) -> Self {
        fingerprints.sort_unstable();
        fingerprints.dedup();
        Self {
            made: unix(made),
            fingerprints,
        }
    }

    /// Whether the store may hold `action`; `false` means it certainly did not when the
    /// filter was made.
    pub fn may_hold(&self, action: &ActionId) -> bool {
        self.fingerprints
            .binary_search(&Self::fingerprint(action))
            .is_ok()
    }

    /// Fingerprints held (keys, but for the rare two keys that share one).
    pub fn len(&self) -> usize {
        self.fingerprints.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fingerprints.is_empty()
    }

    /// When it was made.
    pub fn made(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.made)
    }

    /// This filter with `keys` added, made at `made`: what a client that stored `keys`
    /// writes back.
    pub fn with(&self, keys: impl IntoIterator<Item = ActionId>, made: SystemTime) -> Self {
        let mut fingerprints = self.fingerprints.clone();
        fingerprints.extend(keys.into_iter().map(|k| Self::fingerprint(&k)));
        Self::of_fingerprints(fingerprints, made)
    }

    /// Whether every key of `other` is in this one.
    pub fn covers(&self, other: &KeyFilter) -> bool {
        (other.fingerprints.iter()).all(|f| self.fingerprints.binary_search(f).is_ok())
    }

    /// The stored form.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + self.fingerprints.len() * 2);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&self.made.to_le_bytes());
        out.extend_from_slice(&(self.fingerprints.len() as u64).to_le_bytes());
        let mut last = 0u32;
        for &f in &self.fingerprints {
            let mut delta = f - last;
            last = f;
            loop {
                let byte = (delta & 0x7f) as u8;
                delta >>= 7;
                if delta == 0 {
                    out.push(byte);
                    break;
                }
                out.push(byte | 0x80);
            }
        }
        let sum = checksum(&out);
        out.extend_from_slice(&sum);
        out
    }

    /// Reads a stored filter, checking every field.
    pub fn decode(bytes: &[u8]) -> Result<Self, FilterError> {
        if bytes.len() > MAX_FILTER {
            return Err(FilterError::TooLarge(bytes.len()));
        }
        if bytes.len() < 8 {
            return Err(if MAGIC.starts_with(bytes) {
                FilterError::Truncated
            } else {
                FilterError::Magic
            });
        }
        if &bytes[..8] != MAGIC {
            return Err(FilterError::Magic);
        }
        if bytes.len() < HEADER + CHECKSUM {
            return Err(FilterError::Truncated);
        }
        let (bytes, sum) = bytes.split_at(bytes.len() - CHECKSUM);
        if checksum(bytes) != sum {
            return Err(FilterError::Damaged("the checksum does not match"));
        }
        let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8"));
        let version = u16_at(8);
        if version != VERSION {
            return Err(FilterError::Version(version));
        }
        if u16_at(10) != 0 {
            return Err(FilterError::Damaged("unknown flags"));
        }
        let made = u64_at(12);
        let count = u64_at(20);
        let body = &bytes[HEADER..];
        // Each fingerprint takes at least a byte: a count the body cannot hold is a lie.
        if count > body.len() as u64 {
            return Err(FilterError::Truncated);
        }
        let mut fingerprints = Vec::with_capacity(count as usize);
        let mut at = 0;
        let mut last: Option<u32> = None;
        for _ in 0..count {
            let mut delta: u64 = 0;
            let mut shift = 0;
            loop {
                let Some(&byte) = body.get(at) else {
                    return Err(FilterError::Truncated);
                };
                at += 1;
                delta |= u64::from(byte & 0x7f) << shift;
                if byte & 0x80 == 0 {
                    break;
                }
                shift += 7;
                if shift > 28 {
                    return Err(FilterError::Damaged("a varint longer than five bytes"));
                }
            }
            let value = u64::from(last.unwrap_or(0)) + delta;
            let value = u32::try_from(value)
                .map_err(|_| FilterError::Damaged("a fingerprint past 32 bits"))?;
            if last.is_some() && delta == 0 {
                return Err(FilterError::Damaged("fingerprints out of order"));
            }
            fingerprints.push(value);
            last = Some(value);
        }
        if at != body.len() {
            return Err(FilterError::Damaged("bytes after the last fingerprint"));
        }
        Ok(Self { made, fingerprints })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u64) -> ActionId {
        let mut bytes = [0u8; 32];
        let hash = <sha2::Sha256 as sha2::Digest>::digest(n.to_le_bytes());
        bytes.copy_from_slice(&hash);
        ActionId(bytes)
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn round_trips_and_answers() {
        let keys: Vec<ActionId> = (0..10_000).map(key).collect();
        let filter = KeyFilter::of(keys.iter().copied(), at(1_700_000_000));
        let bytes = filter.encode();
        assert!(bytes.len() < HEADER + 10_000 * 4, "{} bytes", bytes.len());
        let back = KeyFilter::decode(&bytes).unwrap();
        assert_eq!(back, filter);
        assert_eq!(back.made(), at(1_700_000_000));
        assert!(keys.iter().all(|k| back.may_hold(k)), "a false absent");
        let absent = (10_000..30_000)
            .map(key)
            .filter(|k| back.may_hold(k))
            .count();
        // 10,000 of 2^32 fingerprints: about 0.05 of 20,000 absent keys answer "maybe".
        assert!(absent < 10, "{absent} absent keys answered maybe");
    }

    #[test]
    fn empty_and_extreme_fingerprints_round_trip() {
        let empty = KeyFilter::empty(at(5));
        assert_eq!(KeyFilter::decode(&empty.encode()).unwrap(), empty);
        assert!(!empty.may_hold(&key(1)));
        let mut low = ActionId([0; 32]);
        let high = ActionId([0xff; 32]);
        low.0[31] = 1;
        let edges = KeyFilter::of([low, high], at(6));
        let back = KeyFilter::decode(&edges.encode()).unwrap();
        assert!(back.may_hold(&low) && back.may_hold(&high));
        assert_eq!(back.len(), 2);
    }

    #[test]
    fn adding_keys_keeps_the_old_ones() {
        let old = KeyFilter::of((0..100).map(key), at(1));
        let new = old.with((100..150).map(key), at(2));
        assert!(new.covers(&old));
        assert!(!old.covers(&new));
        assert!((0..150).map(key).all(|k| new.may_hold(&k)));
        assert_eq!(new.made(), at(2));
    }

    /// `bytes` (a stored filter's fields, checksum left off) with their checksum: a lie that
    /// only the field checks can catch.
    fn sealed(mut bytes: Vec<u8>) -> Vec<u8> {
        let sum = checksum(&bytes);
        bytes.extend_from_slice(&sum);
        bytes
    }

    fn fields(bytes: &[u8]) -> Vec<u8> {
        bytes[..bytes.len() - CHECKSUM].to_vec()
    }

    #[test]
    fn every_cut_and_lie_is_refused() {
        let bytes = KeyFilter::of((0..300).map(key), at(9)).encode();
        for len in 0..bytes.len() {
            assert!(
                KeyFilter::decode(&bytes[..len]).is_err(),
                "cut at {len} was read"
            );
        }
        // One bit flipped anywhere: the checksum.
        for at in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x10;
            assert!(
                KeyFilter::decode(&flipped).is_err(),
                "a flip at {at} was read"
            );
        }
        let body = fields(&bytes);
        let mut longer = body.clone();
        longer.push(1);
        assert!(matches!(
            KeyFilter::decode(&sealed(longer)),
            Err(FilterError::Damaged(_))
        ));
        // A count far past what the bytes hold allocates nothing and is refused.
        let mut lying = body.clone();
        lying[20..28].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(
            KeyFilter::decode(&sealed(lying)),
            Err(FilterError::Truncated)
        );
        let mut version = body.clone();
        version[8] = 2;
        assert_eq!(
            KeyFilter::decode(&sealed(version)),
            Err(FilterError::Version(2))
        );
        assert_eq!(KeyFilter::decode(b"GRCENTRY"), Err(FilterError::Magic));
        let empty = fields(&KeyFilter::empty(at(1)).encode());
        // A zero difference after the first: fingerprints out of order.
        let mut repeat = empty.clone();
        repeat[20..28].copy_from_slice(&2u64.to_le_bytes());
        repeat.extend_from_slice(&[5, 0]);
        assert!(matches!(
            KeyFilter::decode(&sealed(repeat)),
            Err(FilterError::Damaged(_))
        ));
        // Past 32 bits.
        let mut wide = empty.clone();
        wide[20..28].copy_from_slice(&1u64.to_le_bytes());
        wide.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x1f]);
        assert!(matches!(
            KeyFilter::decode(&sealed(wide)),
            Err(FilterError::Damaged(_))
        ));
        let mut long = empty;
        long[20..28].copy_from_slice(&1u64.to_le_bytes());
        long.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x01]);
        assert!(matches!(
            KeyFilter::decode(&sealed(long)),
            Err(FilterError::Damaged(_))
        ));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let valid = KeyFilter::of((0..50).map(key), at(3)).encode();
        for round in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut bytes = valid.clone();
            let flips = 1 + (seed % 4) as usize;
            for i in 0..flips {
                let at = ((seed >> (i * 8)) as usize) % bytes.len();
                bytes[at] ^= (seed >> (32 + i)) as u8 | 1;
            }
            if round % 3 == 0 {
                bytes.truncate((seed as usize) % bytes.len());
            }
            // Half the time sealed again, so that the field checks meet the mutation.
            if round % 2 == 0 && bytes.len() > CHECKSUM {
                bytes = sealed(fields(&bytes));
            }
            if let Ok(filter) = KeyFilter::decode(&bytes) {
                assert_eq!(KeyFilter::decode(&filter.encode()).unwrap(), filter);
            }
        }
    }
}

#[cfg(test)]
mod proptests;
