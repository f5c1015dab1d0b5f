//! Module paths, versions and the module proxy's request paths: what `/mod/<path>` may ask
//! for, checked before anything is fetched or stored.
//!
//! The go command asks a GOPROXY for five files of a module, `<module>/@v/list`,
//! `<module>/@v/<version>.info`, `.mod` and `.zip`, and `<module>/@latest`; and, to reach a
//! checksum database through the proxy, `sumdb/<name>/supported`, `.../lookup/<module>@<version>`,
//! `.../tile/...` and `.../latest`. [`Request::parse`] turns the path under the mount into one
//! [`Request`] or refuses it with a [`PathError`] (the server answers 400 and fetches nothing).
//!
//! The rules are the go command's, written afresh from `golang.org/x/mod/module` (`CheckPath`,
//! `EscapePath`, `EscapeVersion` and their inverses), `golang.org/x/mod/semver` and
//! `golang.org/x/mod/sumdb/tlog` (tile paths):
//!
//! - A module path ([`ModulePath`]) is ASCII `A-Z a-z 0-9 - . _ ~` in `/`-separated elements,
//!   none empty, none all dots, none starting or ending with a dot, none a Windows device name
//!   (`com1`, `nul.txt`'s `nul`) or a Windows short name (`abc~1`); the first element is a
//!   lowercase host name with a dot; a final `/vN` is a valid major version (`gopkg.in` paths
//!   follow `.vN`). `+` is allowed in import paths but not in module paths, so not here.
//! - In a request, paths and versions are case-encoded: an uppercase letter is `!` and the
//!   lowercase letter (`github.com/Azure` is `github.com/!azure`), so that a case-insensitive
//!   file system never merges two modules. An escaped path or version with an uppercase letter,
//!   or a `!` not followed by a lowercase letter, is refused.
//! - `.mod`, `.zip` and checksum lookups name a canonical version ([`Version::is_canonical`]);
//!   `.info` may also name a query ([`Query`]: a branch, a tag, a commit hash, `latest`), whose
//!   answer changes over time ([`Caching::Mutable`]).
//!
//! Decoding. [`Request::parse`] takes the raw path as it came on the request line, not
//! percent-decoded, and decodes exactly one escape: `%21`, which is `!`. The go command sends
//! `!` that way (it escapes each path segment with Go's `url.PathEscape`, which escapes `!`), so
//! `github.com/%21azure/...` and `github.com/!azure/...` are the same request. Every other `%`
//! is refused: no character that a valid request needs is escaped by the go command, and
//! refusing them leaves no `%2e%2e` or `%2f` to smuggle a traversal or a second spelling of
//! one key past the checks. NUL, backslashes, control characters and non-ASCII are refused
//! outright, as is any empty, `.` or `..` element (a leading, trailing or double slash).
//!
//! Every request has one canonical path ([`Request::path`]), which is also the name of the
//! object that stores its answer ([`Request::storage_key`]): lowercase, safe characters only,
//! and `Request::parse(r.path()) == r`.

use std::fmt;

/// The longest raw request path accepted, in bytes (what follows `/mod/`). Real paths are a
/// few hundred bytes at most; the bound keeps a hostile path from costing more than a glance.
pub const MAX_REQUEST_PATH: usize = 2048;

/// The longest element of a request path once `%21` is decoded, in bytes: the longest file
/// name most file systems allow, since an element is a file or directory name in a storage
/// key.
pub const MAX_ELEMENT: usize = 255;

/// Why a request path, module path, version, checksum database name or tile path is refused.
/// The messages quote the text refused (with `{:?}`, so nothing unprintable reaches a log).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("request path is {len} bytes, over the limit of {max}")]
    TooLong { len: usize, max: usize },
    #[error("request path has an element of {len} bytes, over the limit of {max}")]
    ElementTooLong { len: usize, max: usize },
    #[error("request path is empty")]
    Empty,
    #[error("request path contains {0:?}, which no module proxy request contains")]
    Char(char),
    #[error("request path contains the escape {0:?}: only %21 (an escaped '!') is accepted")]
    Percent(String),
    #[error(
        "request path has an empty, '.' or '..' element (a leading, trailing or double slash, \
         or a traversal)"
    )]
    Traversal,
    #[error(
        "{0:?} is not a module proxy request (<module>/@v/list, <module>/@v/<version>.info, \
         .mod or .zip, <module>/@latest, or sumdb/<name>/supported, lookup/..., tile/... or \
         latest)"
    )]
    Unknown(String),
    #[error("invalid module path {path:?}: {reason}")]
    ModulePath { path: String, reason: String },
    #[error("invalid version {version:?}: {reason}")]
    Version { version: String, reason: String },
    #[error(
        "{version:?} is not a canonical version (vMAJOR.MINOR.PATCH[-PRERELEASE][+incompatible]), \
         which .mod, .zip and checksum lookups need"
    )]
    NotCanonical { version: String },
    #[error("invalid checksum database name {name:?}: {reason}")]
    SumdbName { name: String, reason: &'static str },
    #[error("invalid tile path {0:?}")]
    Tile(String),
}

/// `Debug` as the quoted text and `Display` as the text, for the checked strings below.
macro_rules! text_fmt {
    ($($name:ident),*) => {$(
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    )*};
}

text_fmt!(ModulePath, Version, Query, SumdbName);

/// The `!` case-encoding of a module path or version: each uppercase ASCII letter becomes `!`
/// and its lowercase letter. Its input has no `!` (paths and versions never do).
fn escape_case(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_ascii_uppercase() {
            out.push('!');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The inverse of [`escape_case`]; `None` for text that no escaping produces: an uppercase
/// letter, a `!` not followed by a lowercase letter, or non-ASCII.
fn unescape_case(escaped: &str) -> Option<String> {
    let mut out = String::with_capacity(escaped.len());
    let mut bang = false;
    for c in escaped.chars() {
        if !c.is_ascii() {
            return None;
        }
        if bang {
            bang = false;
            if !c.is_ascii_lowercase() {
                return None;
            }
            out.push(c.to_ascii_uppercase());
        } else if c == '!' {
            bang = true;
        } else if c.is_ascii_uppercase() {
            return None;
        } else {
            out.push(c);
        }
    }
    (!bang).then_some(out)
}

const ESCAPE_RULE: &str =
    "an escaped path or version has no uppercase letters, and '!' only before a lowercase letter";

/// Windows device names, refused as an element (or the part of one before its first dot)
/// in any case, as the go command does.
const WINDOWS_NAMES: [&str; 22] = [
    "con", "prn", "aux", "nul", "com1", "com2", "com3", "com4", "com5", "com6", "com7", "com8",
    "com9", "lpt1", "lpt2", "lpt3", "lpt4", "lpt5", "lpt6", "lpt7", "lpt8", "lpt9",
];

/// Whether `elem`, before its first dot, is a Windows device name.
fn is_windows_name(elem: &str) -> bool {
    let short = elem.split('.').next().unwrap_or(elem);
    WINDOWS_NAMES
        .iter()
        .any(|bad| short.eq_ignore_ascii_case(bad))
}

/// A module path, as the go command writes it in `go.mod` (`github.com/Azure/azure-sdk`):
/// valid by the rules of `golang.org/x/mod/module.CheckPath` (see the module doc). Requests
/// carry it case-encoded ([`ModulePath::escape`]).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModulePath(String);

impl ModulePath {
    /// Checks an unescaped module path (uppercase letters as themselves).
    pub fn parse(path: &str) -> Result<Self, PathError> {
        check_module_path(path).map_err(|reason| PathError::ModulePath {
            path: path.to_owned(),
            reason,
        })?;
        Ok(Self(path.to_owned()))
    }

    /// Decodes and checks a case-encoded path, as it appears in a request
    /// (`github.com/!azure/azure-sdk`). Refused: an uppercase letter, a `!` not before a
    /// lowercase letter, and whatever [`ModulePath::parse`] refuses once decoded.
    pub fn unescape(escaped: &str) -> Result<Self, PathError> {
        let path = unescape_case(escaped).ok_or_else(|| PathError::ModulePath {
            path: escaped.to_owned(),
            reason: ESCAPE_RULE.to_owned(),
        })?;
        Self::parse(&path)
    }

    /// The case-encoded path, as a request carries it: lowercase, `!` before each letter that
    /// was uppercase. `ModulePath::unescape(&p.escape()) == Ok(p)`.
    pub fn escape(&self) -> String {
        escape_case(&self.0)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `CheckPath`'s rules, with the reason a path breaks them.
fn check_module_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("empty".into());
    }
    if path.starts_with('/') {
        return Err("leading slash".into());
    }
    if path.starts_with('-') {
        return Err("leading dash".into());
    }
    if path.contains("//") {
        return Err("double slash".into());
    }
    if path.ends_with('/') {
        return Err("trailing slash".into());
    }
    for elem in path.split('/') {
        check_module_element(elem)?;
    }
    let first = path.split('/').next().unwrap_or(path);
    if !first.contains('.') {
        return Err("missing dot in first path element".into());
    }
    if let Some(bad) = first
        .chars()
        .find(|&c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.'))
    {
        return Err(format!(
            "invalid character {bad:?} in first path element (a lowercase host name)"
        ));
    }
    if !major_suffix_ok(path) {
        return Err(
            "invalid major version suffix (/vN with N >= 2 and no leading zero, or \
                    .vN for gopkg.in)"
                .into(),
        );
    }
    Ok(())
}

/// One element of a module path (`checkElem` for module paths).
fn check_module_element(elem: &str) -> Result<(), String> {
    if elem.is_empty() {
        return Err("empty path element".into());
    }
    if elem.bytes().all(|b| b == b'.') {
        return Err(format!("invalid path element {elem:?}"));
    }
    if elem.starts_with('.') {
        return Err("leading dot in path element".into());
    }
    if elem.ends_with('.') {
        return Err("trailing dot in path element".into());
    }
    if let Some(bad) = elem
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || "-._~".contains(c)))
    {
        return Err(format!("invalid character {bad:?}"));
    }
    if is_windows_name(elem) {
        return Err(format!("{elem:?} is a Windows device name"));
    }
    // A Windows short name (`PROGRA~1`): a tilde then only digits, before the first dot.
    let short = elem.split('.').next().unwrap_or(elem);
    if let Some(tilde) = short.rfind('~') {
        let digits = &short[tilde + 1..];
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err("trailing tilde and digits in path element".into());
        }
    }
    Ok(())
}

/// `SplitPathVersion`'s verdict: a final `/vN` (digits and dots after `/v`) must be `/v2` or
/// more, without a leading zero or a dot; a `gopkg.in/` path must end in `.vN` (optionally
/// `-unstable`), `.v0` allowed, no other leading zero.
fn major_suffix_ok(path: &str) -> bool {
    let bytes = path.as_bytes();
    if path.starts_with("gopkg.in/") {
        let end = path.strip_suffix("-unstable").unwrap_or(path).len();
        let mut i = end;
        while i > 0 && bytes[i - 1].is_ascii_digit() {
            i -= 1;
        }
        if i <= 1 || bytes[i - 1] != b'v' || bytes[i - 2] != b'.' {
            return false;
        }
        // As the go command does, the suffix includes `-unstable` when it checks for digits.
        let major = &path[i - 2..];
        return major.len() > 2 && (major.as_bytes()[2] != b'0' || major == ".v0");
    }
    let mut i = bytes.len();
    let mut dot = false;
    while i > 0 && (bytes[i - 1].is_ascii_digit() || bytes[i - 1] == b'.') {
        dot |= bytes[i - 1] == b'.';
        i -= 1;
    }
    if i <= 1 || i == bytes.len() || bytes[i - 1] != b'v' || bytes[i - 2] != b'/' {
        return true;
    }
    let major = &path[i - 2..];
    !(dot || major.len() <= 2 || major.as_bytes()[2] == b'0' || major == "/v1")
}

/// A semantic version as the go command accepts one (`golang.org/x/mod/semver`): `vMAJOR`,
/// `vMAJOR.MINOR`, or `vMAJOR.MINOR.PATCH` with an optional `-PRERELEASE` and `+BUILD`;
/// numbers without leading zeros. Only a canonical one ([`Version::is_canonical`]) names a
/// module version in `.mod`, `.zip` and checksum lookups.
///
/// Whether the major version agrees with the module path (`/v2` with `v2.x.y`, `+incompatible`
/// only without a suffix and from `v2`) is not checked here: the upstream answers such a
/// request with "not found", and the go command never sends one.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Version(String);

/// The parts of a semantic version that decide whether it is canonical.
struct Semver<'a> {
    /// `v1` or `v1.2`: missing minor or patch.
    short: bool,
    /// `+...` including the plus, or empty.
    build: &'a str,
}

/// Parses `text` as Go's semver does, or `None`.
fn semver(text: &str) -> Option<Semver<'_>> {
    /// A number without a leading zero, then the rest.
    fn number(text: &str) -> Option<&str> {
        let digits = text.bytes().take_while(u8::is_ascii_digit).count();
        let ok = digits > 0 && (digits == 1 || !text.starts_with('0'));
        ok.then(|| &text[digits..])
    }
    /// Dot-separated identifiers of `0-9 A-Z a-z -`; numeric ones without leading zeros when
    /// `numeric_rule`.
    fn identifiers(text: &str, numeric_rule: bool) -> bool {
        text.split('.').all(|id| {
            !id.is_empty()
                && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !(numeric_rule
                    && id.len() > 1
                    && id.bytes().all(|b| b.is_ascii_digit())
                    && id.starts_with('0'))
        })
    }
    let rest = number(text.strip_prefix('v')?)?;
    if rest.is_empty() {
        return Some(Semver {
            short: true,
            build: "",
        });
    }
    let rest = number(rest.strip_prefix('.')?)?;
    if rest.is_empty() {
        return Some(Semver {
            short: true,
            build: "",
        });
    }
    let rest = number(rest.strip_prefix('.')?)?;
    let (pre_part, build) = match rest.find('+') {
        Some(plus) => rest.split_at(plus),
        None => (rest, ""),
    };
    if let Some(pre) = pre_part.strip_prefix('-') {
        if !identifiers(pre, true) {
            return None;
        }
    } else if !pre_part.is_empty() {
        return None;
    }
    if !build.is_empty() && !identifiers(&build[1..], false) {
        return None;
    }
    Some(Semver {
        short: false,
        build,
    })
}

impl Version {
    /// Checks an unescaped version (`v1.0.0-RC1`): any valid semantic version, canonical or
    /// not.
    pub fn parse(text: &str) -> Result<Self, PathError> {
        if semver(text).is_none() {
            return Err(PathError::Version {
                version: text.to_owned(),
                reason: "not a semantic version (vMAJOR[.MINOR[.PATCH[-PRERELEASE]]][+BUILD])"
                    .into(),
            });
        }
        Ok(Self(text.to_owned()))
    }

    /// Decodes and checks a case-encoded version, as a request carries it (`v1.0.0-!r!c1`).
    pub fn unescape(escaped: &str) -> Result<Self, PathError> {
        Self::parse(&unescape_version(escaped)?)
    }

    /// The case-encoded version, as a request carries it.
    pub fn escape(&self) -> String {
        escape_case(&self.0)
    }

    /// Whether this is the one spelling the go command uses for a module version:
    /// `vMAJOR.MINOR.PATCH[-PRERELEASE]` with no build suffix but `+incompatible` (what
    /// `module.CanonicalVersion` returns). `v1.2` and `v1.2.3+meta` are valid but not
    /// canonical.
    pub fn is_canonical(&self) -> bool {
        semver(&self.0)
            .is_some_and(|v| !v.short && (v.build.is_empty() || v.build == "+incompatible"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A revision that is not a canonical version, as `.info` may name one (a "query .info"): a
/// branch (`master`), a tag that is not semantic (`release-1`), a commit hash, `latest`, or a
/// non-canonical version (`v1.2`, `v1.2.3+meta`). Its answer changes over time.
///
/// Stricter than the go command, which allows most punctuation here: a query is 1 to
/// [`MAX_ELEMENT`] bytes of `A-Z a-z 0-9 - . _ ~ +` (so never `/`: a branch named
/// `feature/x` is refused, as the go command itself cannot escape it), not starting or ending
/// with a dot, not a Windows device name, and not a canonical version (that is a
/// [`Version`], whose answer never changes). A branch with other characters is asked for by
/// its commit hash instead.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Query(String);

impl Query {
    /// Checks an unescaped query.
    pub fn parse(text: &str) -> Result<Self, PathError> {
        let refuse = |reason: &str| {
            Err(PathError::Version {
                version: text.to_owned(),
                reason: reason.to_owned(),
            })
        };
        if text.is_empty() || text.len() > MAX_ELEMENT {
            return refuse("a query has 1 to 255 characters");
        }
        if let Some(bad) = text
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || "-._~+".contains(c)))
        {
            return refuse(&format!(
                "invalid character {bad:?} (a query is A-Z a-z 0-9 - . _ ~ +)"
            ));
        }
        if text.starts_with('.') || text.ends_with('.') {
            return refuse("a query does not start or end with a dot");
        }
        if is_windows_name(text) {
            return refuse("a Windows device name");
        }
        if Version::parse(text).is_ok_and(|v| v.is_canonical()) {
            return refuse("a canonical version is a version, not a query");
        }
        Ok(Self(text.to_owned()))
    }

    /// Decodes and checks a case-encoded query, as a request carries it.
    pub fn unescape(escaped: &str) -> Result<Self, PathError> {
        Self::parse(&unescape_version(escaped)?)
    }

    /// The case-encoded query, as a request carries it.
    pub fn escape(&self) -> String {
        escape_case(&self.0)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A case-encoded version, query or revision decoded (not yet checked), or refused by the
/// escape rule.
fn unescape_version(escaped: &str) -> Result<String, PathError> {
    unescape_case(escaped).ok_or_else(|| PathError::Version {
        version: escaped.to_owned(),
        reason: ESCAPE_RULE.to_owned(),
    })
}

/// What a `.info` request names: a canonical version (an answer that never changes) or a
/// query (one that may).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Revision {
    /// A canonical version ([`Version::is_canonical`]); [`Revision::parse`] makes no other.
    Version(Version),
    Query(Query),
}

impl Revision {
    /// A canonical version, or else a query.
    pub fn parse(text: &str) -> Result<Self, PathError> {
        match Version::parse(text) {
            Ok(version) if version.is_canonical() => Ok(Self::Version(version)),
            _ => Query::parse(text).map(Self::Query),
        }
    }

    /// Decodes a case-encoded revision, as a request carries it, then [`Revision::parse`].
    pub fn unescape(escaped: &str) -> Result<Self, PathError> {
        Self::parse(&unescape_version(escaped)?)
    }

    /// The case-encoded revision, as a request carries it.
    pub fn escape(&self) -> String {
        escape_case(self.as_str())
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::Version(version) => version.as_str(),
            Self::Query(query) => query.as_str(),
        }
    }
}

/// The name of a checksum database (`sum.example.com`), as `sumdb/<name>/...` carries it.
///
/// Conservative, since it becomes a directory of the storage: a lowercase host name, 1 to
/// [`SumdbName::MAX_LEN`] bytes, at least two dot-separated labels of 1 to 63 of
/// `a-z 0-9 -`, none starting or ending with `-`. The go command allows any name without
/// spaces or `+` (its own tests use `localhost.localdev/sumdb`); a database so named is not
/// proxied here.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SumdbName(String);

impl SumdbName {
    /// The longest name: the longest DNS name.
    pub const MAX_LEN: usize = 253;

    /// Checks a name that came from outside (a request path, a flag).
    pub fn parse(name: &str) -> Result<Self, PathError> {
        let refuse = |reason| {
            Err(PathError::SumdbName {
                name: name.to_owned(),
                reason,
            })
        };
        if name.is_empty() || name.len() > Self::MAX_LEN {
            return refuse("a name has 1 to 253 characters");
        }
        if !name.contains('.') {
            return refuse("a name is a host name with a dot");
        }
        for label in name.split('.') {
            if label.is_empty() || label.len() > 63 {
                return refuse("each dot-separated label has 1 to 63 characters");
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return refuse("a name has only a-z 0-9 - and dots");
            }
            if label.starts_with('-') || label.ends_with('-') {
                return refuse("a label does not start or end with '-'");
            }
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One tile of a checksum database's transparent log (`golang.org/x/mod/sumdb/tlog`), as
/// `tile/<H>/<L>/<NNN>[.p/<W>]` names it: a tile of height `H` at level `L` (or `data`, the
/// records under level 0's hashes), number `N` written in groups of three digits
/// (`x001/x234/567` is 1,234,567), and a partial tile's width `W`.
///
/// Only the one spelling that the log's own `Tile.Path` produces is accepted
/// (`tile/8/0/007`, never `tile/8/0/7` or `tile/8/00/007`): one tile, one storage key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tile {
    /// `H`: 1 to 30 (2^H hashes in a full tile).
    pub height: u8,
    /// `L`: 0 to 63, or `None` for a data tile.
    pub level: Option<u8>,
    /// `N`: below 2^63.
    pub index: u64,
    /// `W`: 1 to 2^H; below 2^H for a partial tile.
    pub width: u32,
}

impl Tile {
    /// Parses a tile path, from `tile/` on.
    pub fn parse(path: &str) -> Result<Self, PathError> {
        Self::parse_parts(path).ok_or_else(|| PathError::Tile(path.to_owned()))
    }

    fn parse_parts(path: &str) -> Option<Self> {
        /// A decimal number of at most 19 digits, as Go's `strconv.Atoi` would take it
        /// without a sign (the canonical check below refuses other spellings).
        fn decimal(text: &str) -> Option<u64> {
            let ok =
                !text.is_empty() && text.len() <= 19 && text.bytes().all(|b| b.is_ascii_digit());
            ok.then(|| text.parse().ok()).flatten()
        }
        let mut parts: Vec<&str> = path.split('/').collect();
        if parts.len() < 4 || parts[0] != "tile" {
            return None;
        }
        let height = u8::try_from(decimal(parts[1])?)
            .ok()
            .filter(|h| (1..=30).contains(h))?;
        let level = match parts[2] {
            "data" => None,
            text => Some(u8::try_from(decimal(text)?).ok().filter(|&l| l <= 63)?),
        };
        let full = 1u32 << height;
        let mut width = full;
        let before_last = parts.len() - 2;
        if let Some(group) = parts[before_last].strip_suffix(".p") {
            let w = decimal(parts[before_last + 1])?;
            width = u32::try_from(w).ok().filter(|&w| w >= 1 && w < full)?;
            parts[before_last] = group;
            parts.pop();
        }
        let groups = &parts[3..];
        if groups.is_empty() {
            return None;
        }
        let mut index: u64 = 0;
        for group in groups {
            let n = decimal(group.strip_prefix('x').unwrap_or(group))?;
            if n >= 1000 {
                return None;
            }
            index = index.checked_mul(1000)?.checked_add(n)?;
        }
        if index > i64::MAX as u64 {
            return None;
        }
        let tile = Self {
            height,
            level,
            index,
            width,
        };
        (tile.path() == path).then_some(tile)
    }

    /// The tile's one path, from `tile/` on.
    pub fn path(&self) -> String {
        let mut groups = vec![format!("{:03}", self.index % 1000)];
        let mut n = self.index;
        while n >= 1000 {
            n /= 1000;
            groups.push(format!("x{:03}", n % 1000));
        }
        groups.reverse();
        let level = match self.level {
            Some(level) => level.to_string(),
            None => "data".to_owned(),
        };
        let mut path = format!("tile/{}/{}/{}", self.height, level, groups.join("/"));
        if self.is_partial() {
            path.push_str(&format!(".p/{}", self.width));
        }
        path
    }

    /// Whether this is a partial tile (`.p/<W>`): the first `W` hashes of a tile that the
    /// log had not filled when it was asked for.
    pub fn is_partial(&self) -> bool {
        1u64.checked_shl(u32::from(self.height))
            .is_none_or(|full| u64::from(self.width) != full)
    }
}

/// How long the answer to a request may be kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caching {
    /// The answer never changes: stored once, served from the store from then on without
    /// asking an upstream. A module version's `.info`, `.mod` and `.zip` (the checksum
    /// database holds the go command to that), a checksum lookup (the database is
    /// append-only: a record, once there, is there for good, and the signed tree head in the
    /// answer stays verifiable against any later one), and a tile, full or partial.
    ///
    /// A partial tile (`.p/<W>`) is immutable too: it is the first `W` hashes of its tile, and
    /// an append-only log never changes those. What changes is only that the database may stop
    /// serving it once the tile is full, when the go command asks for the full tile instead;
    /// a stored copy stays correct (and the go command verifies it as it does any tile). The
    /// cost is a trail of partial tiles at the log's edge, which a server that would rather
    /// not keep them can tell apart with [`Tile::is_partial`].
    Immutable,
    /// The answer changes over time (a new version, a moved branch, a grown log): asked of the
    /// upstreams each time, with the stored answer only a fallback for when none of them
    /// answers. `@v/list`, `@latest`, a query's `.info`, a checksum database's `latest`.
    Mutable,
    /// Answered by the proxy itself, never fetched nor stored: `sumdb/<name>/supported`,
    /// whose answer is whether this proxy proxies that database.
    Local,
}

/// One request of the GOPROXY protocol, parsed from the path under the mount
/// ([`Request::parse`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Request {
    /// `<module>/@v/list`: the known versions, one a line.
    List { module: ModulePath },
    /// `<module>/@v/<revision>.info`: a version's JSON metadata, or a query's answer.
    Info {
        module: ModulePath,
        version: Revision,
    },
    /// `<module>/@v/<version>.mod`: a canonical version's `go.mod`.
    Mod {
        module: ModulePath,
        version: Version,
    },
    /// `<module>/@v/<version>.zip`: a canonical version's source.
    Zip {
        module: ModulePath,
        version: Version,
    },
    /// `<module>/@latest`: the latest version's `.info` when there is no `list`.
    Latest { module: ModulePath },
    /// `sumdb/<name>/supported`: whether this proxy proxies the database.
    SumdbSupported { name: SumdbName },
    /// `sumdb/<name>/lookup/<module>@<version>`: the database's record for a version.
    SumdbLookup {
        name: SumdbName,
        module: ModulePath,
        version: Version,
    },
    /// `sumdb/<name>/tile/...`: one tile of the database's log.
    SumdbTile { name: SumdbName, tile: Tile },
    /// `sumdb/<name>/latest`: the database's latest signed tree head.
    SumdbLatest { name: SumdbName },
}

impl Request {
    /// Parses the raw path under the mount (`github.com/!azure/azure-sdk/@v/list`, no leading
    /// slash, not percent-decoded, no query string), or says why it is not a request of the
    /// protocol (the server answers 400). The decoding and what is refused before any part
    /// is read are in the module doc; each part is then checked by its type.
    pub fn parse(raw: &str) -> Result<Request, PathError> {
        if raw.len() > MAX_REQUEST_PATH {
            return Err(PathError::TooLong {
                len: raw.len(),
                max: MAX_REQUEST_PATH,
            });
        }
        if raw.is_empty() {
            return Err(PathError::Empty);
        }
        let path = decode(raw)?;
        for elem in path.split('/') {
            if elem.is_empty() || elem == "." || elem == ".." {
                return Err(PathError::Traversal);
            }
            if elem.len() > MAX_ELEMENT {
                return Err(PathError::ElementTooLong {
                    len: elem.len(),
                    max: MAX_ELEMENT,
                });
            }
        }
        match path.strip_prefix("sumdb/") {
            // A module path's first element has a dot, so `sumdb/` is never a module.
            Some(rest) => parse_sumdb(&path, rest),
            None => parse_module(&path),
        }
    }

    /// How long the answer may be kept.
    pub fn caching(&self) -> Caching {
        match self {
            Request::Info {
                version: Revision::Version(version),
                ..
            } if version.is_canonical() => Caching::Immutable,
            Request::Mod { .. }
            | Request::Zip { .. }
            | Request::SumdbLookup { .. }
            | Request::SumdbTile { .. } => Caching::Immutable,
            Request::List { .. }
            | Request::Info { .. }
            | Request::Latest { .. }
            | Request::SumdbLatest { .. } => Caching::Mutable,
            Request::SumdbSupported { .. } => Caching::Local,
        }
    }

    /// The request's canonical path under the mount, as the go command writes it (with `!`
    /// literal; a caller may send it as `%21`): what to ask an upstream for, relative to its
    /// URL. For a parsed request, `Request::parse(&r.path()) == Ok(r)`.
    pub fn path(&self) -> String {
        match self {
            Request::List { module } => format!("{}/@v/list", module.escape()),
            Request::Info { module, version } => {
                format!("{}/@v/{}.info", module.escape(), version.escape())
            }
            Request::Mod { module, version } => {
                format!("{}/@v/{}.mod", module.escape(), version.escape())
            }
            Request::Zip { module, version } => {
                format!("{}/@v/{}.zip", module.escape(), version.escape())
            }
            Request::Latest { module } => format!("{}/@latest", module.escape()),
            Request::SumdbSupported { name } => format!("sumdb/{name}/supported"),
            Request::SumdbLookup {
                name,
                module,
                version,
            } => format!(
                "sumdb/{name}/lookup/{}@{}",
                module.escape(),
                version.escape()
            ),
            Request::SumdbTile { name, tile } => format!("sumdb/{name}/{}", tile.path()),
            Request::SumdbLatest { name } => format!("sumdb/{name}/latest"),
        }
    }

    /// The name of the object that stores the answer, relative to the proxy's `mod/` prefix.
    ///
    /// Contract, for every parsed request: only `a-z 0-9 - . _ ~ + ! @ /`; no leading or
    /// trailing slash and no empty, `.` or `..` element, so it never leaves its prefix; every
    /// element at most [`MAX_ELEMENT`] bytes and the whole at most [`MAX_REQUEST_PATH`]; no
    /// uppercase, so a case-insensitive file system keeps two keys apart; and two requests
    /// with different paths have different keys. Module files sit at `<module>/@v/...` and
    /// `<module>/@latest`, checksum databases under `sumdb/<name>/`.
    ///
    /// It is the canonical path ([`Request::path`]), which meets all of that: the escaped
    /// forms are lowercase, a module path has no `@` (so `/@` ends it) and its first element a
    /// dot (so it is never `sumdb`), a database name has no `/`, and each part has one
    /// spelling.
    pub fn storage_key(&self) -> String {
        self.path()
    }
}

/// Decodes `%21` and refuses every character no request has (see the module doc).
fn decode(raw: &str) -> Result<String, PathError> {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '%' if raw[at..].starts_with("%21") => {
                out.push('!');
                chars.next();
                chars.next();
            }
            '%' => return Err(PathError::Percent(raw[at..].chars().take(3).collect())),
            c if !c.is_ascii() || c.is_ascii_control() || c == '\\' => {
                return Err(PathError::Char(c));
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

/// A canonical version from its escaped form.
fn canonical(escaped: &str) -> Result<Version, PathError> {
    let version = Version::unescape(escaped)?;
    if !version.is_canonical() {
        return Err(PathError::NotCanonical { version: version.0 });
    }
    Ok(version)
}

/// `<module>/@v/...` or `<module>/@latest`, decoded.
fn parse_module(path: &str) -> Result<Request, PathError> {
    let unknown = || PathError::Unknown(path.to_owned());
    let at = path.find("/@").ok_or_else(unknown)?;
    let (module, rest) = (&path[..at], &path[at + 1..]);
    match rest {
        "@latest" => {
            return Ok(Request::Latest {
                module: ModulePath::unescape(module)?,
            });
        }
        "@v/list" => {
            return Ok(Request::List {
                module: ModulePath::unescape(module)?,
            });
        }
        _ => {}
    }
    let file = rest
        .strip_prefix("@v/")
        .filter(|file| !file.contains('/'))
        .ok_or_else(unknown)?;
    let (version, extension) = file.rsplit_once('.').ok_or_else(unknown)?;
    if !matches!(extension, "info" | "mod" | "zip") {
        return Err(unknown());
    }
    let module = ModulePath::unescape(module)?;
    Ok(match extension {
        "info" => Request::Info {
            module,
            version: Revision::unescape(version)?,
        },
        "mod" => Request::Mod {
            module,
            version: canonical(version)?,
        },
        _ => Request::Zip {
            module,
            version: canonical(version)?,
        },
    })
}

/// `sumdb/<name>/...`, decoded; `rest` follows `sumdb/`.
fn parse_sumdb(path: &str, rest: &str) -> Result<Request, PathError> {
    let unknown = || PathError::Unknown(path.to_owned());
    let (name, endpoint) = rest.split_once('/').ok_or_else(unknown)?;
    let name = SumdbName::parse(name)?;
    if endpoint == "supported" {
        return Ok(Request::SumdbSupported { name });
    }
    if endpoint == "latest" {
        return Ok(Request::SumdbLatest { name });
    }
    if let Some(target) = endpoint.strip_prefix("lookup/") {
        let (module, version) = target.split_once('@').ok_or_else(unknown)?;
        return Ok(Request::SumdbLookup {
            name,
            module: ModulePath::unescape(module)?,
            version: canonical(version)?,
        });
    }
    if endpoint.starts_with("tile/") {
        return Ok(Request::SumdbTile {
            name,
            tile: Tile::parse(endpoint)?,
        });
    }
    Err(unknown())
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod proptests;
