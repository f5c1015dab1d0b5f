//! The identifiers every part of the program uses: the go command's action and output IDs,
//! and the build key of a prefetch manifest. Each is 32 bytes, written as 64 lowercase hex
//! digits in file names, object keys and URLs.

use std::fmt;

use sha2::{Digest, Sha256};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// Lowercase hex, as used in file names and remote keys.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// Parses 64 hex digits (either case: names this program wrote itself).
            pub fn from_hex(s: &str) -> Option<Self> {
                let mut id = [0u8; 32];
                hex::decode_to_slice(s, &mut id).ok()?;
                Some(Self(id))
            }
        }

        impl $name {
            /// Parses a key that came from outside (a URL, a request body): exactly 64
            /// lowercase hex digits, the only spelling this program writes, so that one entry
            /// never has two names.
            pub fn from_key(s: &str) -> Option<Self> {
                let lowercase = s.len() == 64
                    && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
                lowercase.then(|| Self::from_hex(s)).flatten()
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.to_hex())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.to_hex())
            }
        }
    };
}

id_type!(
    /// The go command's key for an action: 32 bytes.
    ActionId
);
id_type!(
    /// The sha256 of an output's content: 32 bytes.
    OutputId
);
id_type!(
    /// The key of a prefetch manifest ([`crate::cache::manifest`]): the sha256 of what identifies
    /// a build. Not part of the go command's protocol, but named and printed the same way.
    BuildKey
);

impl OutputId {
    /// The OutputID of `data`: its sha256.
    pub fn of(data: &[u8]) -> Self {
        Self(Sha256::digest(data).into())
    }
}
