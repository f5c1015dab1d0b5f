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

        /// As its 64 lowercase hex digits (the daemon's protocol).
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::from_key(&text)
                    .ok_or_else(|| serde::de::Error::custom("not 64 lowercase hex digits"))
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

/// A namespace of the remote store: the entries and manifests that one kind of build (say,
/// main's, or one pull request's) writes, apart from the others' (`<prefix>/ns/<NAME>/...` in
/// a bucket, `/v1/ns/<NAME>/...` on the server). A name is 1 to 128 of `A-Z a-z 0-9 . _ -`,
/// not starting with a dot, so it is one path segment and never `.` or `..`. Cloning one is
/// cheap (a manifest names one per entry).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Namespace(std::sync::Arc<str>);

impl Namespace {
    /// The longest name.
    pub const MAX_LEN: usize = 128;

    /// Checks a name that came from outside (a flag, a URL, a token file).
    pub fn parse(name: &str) -> Result<Self, String> {
        Self::check(name, "namespace", "")?;
        Ok(Self(name.into()))
    }

    /// Checks `text` as a name, allowing the characters of `extra` too (a glob's `*`); an
    /// error starts with `what` and the text.
    pub fn check(text: &str, what: &str, extra: &str) -> Result<(), String> {
        if text.is_empty() || text.len() > Self::MAX_LEN {
            return Err(format!(
                "{what} {text:?}: a name has 1 to {} characters",
                Self::MAX_LEN
            ));
        }
        if text.starts_with('.') {
            return Err(format!("{what} {text:?}: a name must not start with '.'"));
        }
        let allowed = |c: char| c.is_ascii_alphanumeric() || ".-_".contains(c) || extra.contains(c);
        if let Some(bad) = text.chars().find(|&c| !allowed(c)) {
            return Err(format!(
                "{what} {text:?}: {bad:?} is not allowed (only A-Z a-z 0-9 . _ - {extra}; map \
                 a branch name such as feature/x to feature-x)"
            ));
        }
        Ok(())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part of an object key or URL path before `v1/` or `prefetch/`: `ns/<NAME>`.
    pub fn path(&self) -> String {
        format!("ns/{}", self.0)
    }
}

impl fmt::Debug for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_names_are_one_safe_path_segment() {
        for good in [
            "main",
            "pr-12",
            "release_1.2",
            "A",
            &"x".repeat(128),
            "a..b",
        ] {
            assert_eq!(Namespace::parse(good).unwrap().as_str(), good);
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "feature/x",
            "a b",
            "ä",
            "../main",
            "a\\b",
            "a%2fb",
            "a\0",
            &"x".repeat(129),
        ] {
            assert!(Namespace::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(Namespace::parse("main").unwrap().path(), "ns/main");
    }
}

#[cfg(test)]
mod proptests;
