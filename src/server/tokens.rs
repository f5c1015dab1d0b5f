//! Bearer tokens for `goremotecache serve`, each read-only or read-write.
//!
//! Token file format, one token a line; blank lines and lines starting with `#` are ignored:
//!
//! ```text
//! # scope  token
//! rw       3f9c...   CI jobs on the main branch
//! ro       a71b...   pull requests
//! ```
//!
//! The scope is `rw` (read and write) or `ro` (read only); anything after the token is a
//! comment. The same pairs can come from a variable as `rw:TOKEN,ro:TOKEN`. Presented tokens
//! are compared with every known token in constant time, so the time of an answer says
//! nothing about how much of a token was right.

use std::fmt;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Read,
    ReadWrite,
}

/// The known tokens.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Tokens {
    entries: Vec<(Vec<u8>, Scope)>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print a token.
        write!(f, "Tokens({} known)", self.entries.len())
    }
}

/// Shortest token accepted: anything shorter is guessable.
pub const MIN_TOKEN_LEN: usize = 16;

impl Tokens {
    /// Parses a token file.
    pub fn parse_file(text: &str) -> Result<Self, String> {
        let mut tokens = Self::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split_whitespace();
            let (scope, token) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
            tokens
                .add(scope, token)
                .map_err(|err| format!("line {}: {err}", n + 1))?;
        }
        Ok(tokens)
    }

    /// Parses `rw:TOKEN,ro:TOKEN`.
    pub fn parse_list(list: &str) -> Result<Self, String> {
        let mut tokens = Self::default();
        for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (scope, token) = item
                .split_once(':')
                .ok_or_else(|| "write each token as rw:TOKEN or ro:TOKEN".to_string())?;
            tokens.add(scope, token)?;
        }
        Ok(tokens)
    }

    fn add(&mut self, scope: &str, token: &str) -> Result<(), String> {
        let scope = match scope {
            "rw" => Scope::ReadWrite,
            "ro" => Scope::Read,
            other => return Err(format!("scope {other:?} is neither rw nor ro")),
        };
        if token.len() < MIN_TOKEN_LEN {
            return Err(format!(
                "a token must have at least {MIN_TOKEN_LEN} characters"
            ));
        }
        self.entries.push((token.as_bytes().to_vec(), scope));
        Ok(())
    }

    /// Adds all of `other`'s tokens.
    pub fn extend(&mut self, other: Tokens) {
        self.entries.extend(other.entries);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The scope of a presented token, if it is known.
    pub fn scope_of(&self, presented: &[u8]) -> Option<Scope> {
        let mut found = None;
        for (token, scope) in &self.entries {
            // Every token is compared, whatever matched before.
            if constant_time_eq(token, presented) {
                found = found.max(Some(*scope));
            }
        }
        found
    }
}

/// Equal lengths and bytes, in time that depends on the lengths only.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_files_and_lists() {
        let tokens = Tokens::parse_file(
            "# comment\n\nrw aaaaaaaaaaaaaaaaaaaa main branch\nro bbbbbbbbbbbbbbbbbbbb\n",
        )
        .unwrap();
        assert_eq!(tokens.len(), 2);
        assert_eq!(
            tokens.scope_of(b"aaaaaaaaaaaaaaaaaaaa"),
            Some(Scope::ReadWrite)
        );
        assert_eq!(tokens.scope_of(b"bbbbbbbbbbbbbbbbbbbb"), Some(Scope::Read));
        assert_eq!(tokens.scope_of(b"bbbbbbbbbbbbbbbbbbb"), None);
        assert_eq!(tokens.scope_of(b""), None);
        let list = Tokens::parse_list("ro:cccccccccccccccccccc, rw:dddddddddddddddddddd").unwrap();
        assert_eq!(
            list.scope_of(b"dddddddddddddddddddd"),
            Some(Scope::ReadWrite)
        );
    }

    #[test]
    fn refuses_bad_lines_with_their_number() {
        let err = Tokens::parse_file("rw aaaaaaaaaaaaaaaaaaaa\nadmin bbbbbbbbbbbbbbbbbbbb\n")
            .unwrap_err();
        assert!(err.starts_with("line 2:"), "{err}");
        assert!(Tokens::parse_file("rw short").is_err());
        assert!(Tokens::parse_list("aaaaaaaaaaaaaaaaaaaa").is_err());
        assert_eq!(
            format!(
                "{:?}",
                Tokens::parse_list("rw:aaaaaaaaaaaaaaaaaaaa").unwrap()
            ),
            "Tokens(1 known)"
        );
    }
}
