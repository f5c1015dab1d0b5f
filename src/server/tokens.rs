//! Bearer tokens for `goremotecache serve`, each read-only or read-write, and each for every
//! namespace or for those its globs match.
//!
//! Token file format, one token a line; blank lines and lines starting with `#` are ignored:
//!
//! ```text
//! # scope  token      namespaces (optional)        comment (optional)
//! rw       3f9c...    namespaces=main,release-*    # CI on main and release branches
//! ro       a71b...    namespaces=*                 # pull requests read everything
//! rw       c20d...                                 # every namespace, and the paths without one
//! ```
//!
//! The scope is `rw` (read and write) or `ro` (read only). After the token a line may have
//! `namespaces=GLOB,...` and then a comment starting with `#`; any other word is an error that
//! refuses the whole file, naming its line: a mistyped `namespace=main` must not leave a
//! token with more reach than meant. A glob is a namespace name in which `*` stands for any
//! run of characters (none included); it has no other special characters. A token without
//! `namespaces=` may use every namespace and the un-namespaced paths (`/v1/ac/...`); one with
//! a list may use the namespaces its globs match, and the un-namespaced paths only if the list
//! has the glob `*` itself. The same pairs can come from a variable as `rw:TOKEN,ro:TOKEN`,
//! without namespaces. Presented tokens are compared with every known token in constant time,
//! so the time of an answer says nothing about how much of a token was right.

use std::fmt;

use crate::ids::Namespace;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Read,
    ReadWrite,
}

/// A pattern of namespace names: `*` matches any run of characters, none included; every
/// other character matches itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob(String);

impl Glob {
    /// Checks a glob: 1 to [`Namespace::MAX_LEN`] characters of a namespace name
    /// (`A-Z a-z 0-9 . _ -`) or `*`, not starting with `.` (no name does).
    pub fn parse(glob: &str) -> Result<Self, String> {
        Namespace::check(glob, "namespace glob", "*")?;
        Ok(Self(glob.to_string()))
    }

    /// Whether `name` matches: the text between the `*`s appears in it in order, the first
    /// piece at its start and the last at its end.
    pub fn matches(&self, name: &str) -> bool {
        let mut pieces = self.0.split('*');
        let first = pieces.next().unwrap_or("");
        let Some(mut rest) = name.strip_prefix(first) else {
            return false;
        };
        let middle: Vec<&str> = pieces.collect();
        let Some((last, middle)) = middle.split_last() else {
            // No `*`: the whole name.
            return rest.is_empty();
        };
        for piece in middle {
            match rest.find(piece) {
                Some(at) => rest = &rest[at + piece.len()..],
                None => return false,
            }
        }
        rest.ends_with(last)
    }

    /// Whether this is the glob `*` (which covers the un-namespaced paths too).
    fn is_everything(&self) -> bool {
        self.0 == "*"
    }
}

/// Which namespaces a token may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Namespaces {
    /// No `namespaces=`: every namespace, and the un-namespaced paths.
    All,
    /// The namespaces one of the globs matches; the un-namespaced paths only with `*`.
    Matching(Vec<Glob>),
}

impl Namespaces {
    /// Parses the list of `namespaces=LIST`: globs separated by commas, at least one.
    pub fn parse(list: &str) -> Result<Self, String> {
        if list.is_empty() {
            return Err("namespaces= needs at least one glob (namespaces=* for all)".into());
        }
        list.split(',')
            .map(Glob::parse)
            .collect::<Result<Vec<_>, _>>()
            .map(Self::Matching)
    }

    /// Whether `namespace` (`None`: the un-namespaced paths) is covered.
    pub fn cover(&self, namespace: Option<&Namespace>) -> bool {
        match (self, namespace) {
            (Namespaces::All, _) => true,
            (Namespaces::Matching(globs), None) => globs.iter().any(Glob::is_everything),
            (Namespaces::Matching(globs), Some(namespace)) => {
                globs.iter().any(|glob| glob.matches(namespace.as_str()))
            }
        }
    }
}

/// What a presented token may do in one namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No known token.
    Unknown,
    /// A known token whose namespaces do not include this one.
    Outside,
    /// A known token that may do this, in this namespace.
    Granted(Scope),
}

/// The known tokens.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Tokens {
    entries: Vec<(Vec<u8>, Scope, Namespaces)>,
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
    /// Parses a token file; an error names the first bad line.
    pub fn parse_file(text: &str) -> Result<Self, String> {
        let mut tokens = Self::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            tokens
                .add_line(line)
                .map_err(|err| format!("line {}: {err}", n + 1))?;
        }
        Ok(tokens)
    }

    /// One line of a token file: `rw|ro TOKEN [namespaces=GLOB,...] [# comment]`.
    fn add_line(&mut self, line: &str) -> Result<(), String> {
        let mut words = line.split_whitespace();
        let (scope, token) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        let mut namespaces = None;
        for word in words {
            if word.starts_with('#') {
                break;
            }
            let Some(list) = word.strip_prefix("namespaces=") else {
                return Err(format!(
                    "{word:?} after the token: a token may be followed by \
                     namespaces=GLOB,... and a comment starting with #"
                ));
            };
            if namespaces.is_some() {
                return Err("namespaces= is given twice".into());
            }
            namespaces = Some(Namespaces::parse(list)?);
        }
        self.add(scope, token, namespaces.unwrap_or(Namespaces::All))
    }

    /// Parses `rw:TOKEN,ro:TOKEN` (tokens for every namespace).
    pub fn parse_list(list: &str) -> Result<Self, String> {
        let mut tokens = Self::default();
        for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (scope, token) = item
                .split_once(':')
                .ok_or_else(|| "write each token as rw:TOKEN or ro:TOKEN".to_string())?;
            tokens.add(scope, token, Namespaces::All)?;
        }
        Ok(tokens)
    }

    fn add(&mut self, scope: &str, token: &str, namespaces: Namespaces) -> Result<(), String> {
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
        self.entries
            .push((token.as_bytes().to_vec(), scope, namespaces));
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

    /// What a presented token may do in `namespace` (`None`: the un-namespaced paths). A
    /// token listed more than once gets the widest of its lines that cover the namespace.
    pub fn access(&self, presented: &[u8], namespace: Option<&Namespace>) -> Access {
        let mut known = false;
        let mut granted = None;
        for (token, scope, namespaces) in &self.entries {
            // Every token is compared, whatever matched before.
            if constant_time_eq(token, presented) {
                known = true;
                if namespaces.cover(namespace) {
                    granted = granted.max(Some(*scope));
                }
            }
        }
        match (known, granted) {
            (_, Some(scope)) => Access::Granted(scope),
            (true, None) => Access::Outside,
            (false, None) => Access::Unknown,
        }
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
mod tests;

#[cfg(test)]
mod proptests;
