//! The module proxy's own GOPROXY list: where it fetches what it does not hold, in GOPROXY's
//! syntax and with the go command's rule for moving down the list.
//!
//! The list is proxy URLs and the keywords `direct` and `off`, separated by `,` or `|`. The
//! separator after an element says when the next one is tried ([`Fallback`]): after `,` only
//! when this one answered "not found" (404 or 410), after `|` after any failure, a network
//! error or a 5xx as well. A success, or a failure that the separator does not pass on, ends
//! the request. `direct` (fetch from version control) and `off` (fail: module lookup is
//! disabled) end the list, as they do in the go command. [`Upstreams::next_after`] is that
//! rule, and nothing else decides it.
//!
//! Stricter than the go command, because this list is a server's configuration, read once,
//! where a mistake is better said at startup than found in a slow build: an empty element
//! (`a,,b`, a separator at either end) is refused, where the go command skips it; an element
//! after `direct` or `off` is refused, where the go command ignores it; only `http` and
//! `https` URLs are proxies (no `file://`); and an element that is this proxy itself is
//! refused, so that a request never loops back to the server asking. As in the go command, a
//! URL without a scheme (`proxy.example.com/go`) means `https://`.
//!
//! A URL may carry a user and password (`https://user:secret@proxy.example.com`); every
//! message and every `Debug` or `Display` of an upstream shows the password as `xxxxx`.

use std::fmt;

/// One element of the list.
#[derive(Clone, PartialEq, Eq)]
pub enum Upstream {
    /// A module proxy's base URL: `http` or `https` (lowercase), no trailing slash, no query
    /// or fragment. A request's path ([`crate::goproxy::Request::path`]) goes after a `/`.
    Url(String),
    /// `direct`: fetch from the module's version control repository.
    Direct,
    /// `off`: fail; module lookup is disabled.
    Off,
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Upstream::Url(url) => f.write_str(&redact(url)),
            Upstream::Direct => f.write_str("direct"),
            Upstream::Off => f.write_str("off"),
        }
    }
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Upstream::Url(url) => write!(f, "Url({:?})", redact(url)),
            Upstream::Direct => f.write_str("Direct"),
            Upstream::Off => f.write_str("Off"),
        }
    }
}

/// The separator after an element: when the element after it is tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// `,`: only after "not found" (404 or 410).
    NotFound,
    /// `|`: after any failure.
    AnyError,
    /// The last element: nothing follows.
    Last,
}

/// How an upstream answered one request, as far as the list is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It answered with the file (200).
    Found,
    /// It answered 404 or 410: it does not have the module or version.
    NotFound,
    /// Anything else: another status (a 5xx, a 403, a 302, even a 2xx other than 200, as
    /// the go command takes only a 200), a network error, a timeout.
    Failed,
}

impl Outcome {
    /// The outcome of an HTTP answer with `status`.
    pub fn from_status(status: u16) -> Outcome {
        match status {
            200 => Outcome::Found,
            404 | 410 => Outcome::NotFound,
            _ => Outcome::Failed,
        }
    }
}

/// Why a GOPROXY list is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error("GOPROXY is empty: give proxy URLs, direct or off, separated by ',' or '|'")]
    Empty,
    #[error("GOPROXY element {position} is empty (two separators in a row, or one at an end)")]
    EmptyElement {
        /// From 1.
        position: usize,
    },
    #[error("GOPROXY element {element:?}: {reason}")]
    Invalid {
        element: String,
        reason: &'static str,
    },
    #[error(
        "GOPROXY element {element:?} is this proxy itself: a request would come back to it \
         forever"
    )]
    SelfLoop { element: String },
    #[error(
        "GOPROXY element {element:?} follows {keyword}, which ends the list: it would never be \
         tried"
    )]
    AfterEnd {
        element: String,
        keyword: &'static str,
    },
    #[error("this proxy's own URL {url:?}: {reason}")]
    SelfUrl { url: String, reason: &'static str },
}

/// A checked GOPROXY list: at least one element; `direct` or `off` only last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstreams(Vec<(Upstream, Fallback)>);

/// The list as GOPROXY writes it, passwords shown as `xxxxx`.
impl fmt::Display for Upstreams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (upstream, fallback) in &self.0 {
            write!(f, "{upstream}")?;
            match fallback {
                Fallback::NotFound => f.write_str(",")?,
                Fallback::AnyError => f.write_str("|")?,
                Fallback::Last => {}
            }
        }
        Ok(())
    }
}

impl Upstreams {
    /// Parses a GOPROXY value (the module doc has the rules). `self_url`, when given, is this
    /// proxy's own base URL as clients reach it (`http://cache.example.com:8080/mod`): an
    /// element that names the same place (scheme, host and path compared without case in the
    /// scheme and host, a default port, a user or a trailing slash) is refused. The comparison
    /// cannot know every name of the machine (`localhost` and `127.0.0.1` are different to
    /// it): it catches the mistake of pasting the proxy's own URL, not every loop.
    pub fn parse(text: &str, self_url: Option<&str>) -> Result<Upstreams, UpstreamError> {
        let own = match self_url {
            Some(url) => {
                let parsed = Url::parse(url).map_err(|reason| UpstreamError::SelfUrl {
                    url: redact(url),
                    reason,
                })?;
                Some(parsed.identity())
            }
            None => None,
        };
        if text.trim().is_empty() {
            return Err(UpstreamError::Empty);
        }
        let mut elements: Vec<(Upstream, Fallback)> = Vec::new();
        let mut rest = text;
        let mut position = 0;
        loop {
            position += 1;
            let (element, fallback, more) = match rest.find([',', '|']) {
                Some(at) => {
                    let fallback = if rest.as_bytes()[at] == b'|' {
                        Fallback::AnyError
                    } else {
                        Fallback::NotFound
                    };
                    (&rest[..at], fallback, Some(&rest[at + 1..]))
                }
                None => (rest, Fallback::Last, None),
            };
            let element = element.trim();
            if element.is_empty() {
                return Err(UpstreamError::EmptyElement { position });
            }
            let keyword = match elements.last() {
                Some((Upstream::Direct, _)) => Some("direct"),
                Some((Upstream::Off, _)) => Some("off"),
                _ => None,
            };
            if let Some(keyword) = keyword {
                return Err(UpstreamError::AfterEnd {
                    element: redact(element),
                    keyword,
                });
            }
            let upstream = match element {
                "direct" => Upstream::Direct,
                "off" => Upstream::Off,
                _ => {
                    let url = Url::parse(element).map_err(|reason| UpstreamError::Invalid {
                        element: redact(element),
                        reason,
                    })?;
                    if own.as_ref() == Some(&url.identity()) {
                        return Err(UpstreamError::SelfLoop {
                            element: redact(element),
                        });
                    }
                    Upstream::Url(url.to_string())
                }
            };
            elements.push((upstream, fallback));
            match more {
                Some(next) => rest = next,
                None => break,
            }
        }
        Ok(Upstreams(elements))
    }

    /// This list, then `rest` after a `|` (tried on any failure of this list's last element):
    /// the daemon puts its HTTP cache server's proxy before its own list this way. A list
    /// that ends in `direct` or `off` is left as it is, since nothing may follow those.
    pub fn then_on_failure(mut self, rest: Upstreams) -> Upstreams {
        match self.0.last_mut() {
            Some((Upstream::Url(_), fallback)) => *fallback = Fallback::AnyError,
            _ => return self,
        }
        self.0.extend(rest.0);
        self
    }

    /// The elements in order, each with the separator after it.
    pub fn elements(&self) -> &[(Upstream, Fallback)] {
        &self.0
    }

    /// The element at `index`.
    pub fn get(&self, index: usize) -> Option<&Upstream> {
        self.0.get(index).map(|(upstream, _)| upstream)
    }

    /// The number of elements (at least one).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: a parsed list has an element (for clippy's `len_without_is_empty`).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The index of the element to try after the one at `index` answered with `outcome`, or
    /// `None` when the request ends there (with that answer, or with that failure).
    ///
    /// The go command's rule: a success ends it; "not found" goes on after `,` and after `|`;
    /// any other failure goes on only after `|`; nothing follows the last element, `direct` or
    /// `off` (which a caller does not "try": `off` fails the request, and `direct` is version
    /// control, not an HTTP answer). When the request ends in failures, the go command reports
    /// the most telling one (a failure other than "not found" over a "not found"); that choice
    /// is the caller's.
    pub fn next_after(&self, index: usize, outcome: &Outcome) -> Option<usize> {
        let (upstream, fallback) = self.0.get(index)?;
        if matches!(upstream, Upstream::Direct | Upstream::Off) {
            return None;
        }
        let go_on = match outcome {
            Outcome::Found => false,
            Outcome::NotFound => *fallback != Fallback::Last,
            Outcome::Failed => *fallback == Fallback::AnyError,
        };
        go_on
            .then_some(index + 1)
            .filter(|&next| next < self.0.len())
    }
}

/// A proxy URL, taken apart.
struct Url<'a> {
    /// `http` or `https`.
    scheme: &'static str,
    /// Before the `@`, if any.
    userinfo: Option<&'a str>,
    /// As written (an IPv6 address with its brackets).
    host: &'a str,
    port: Option<u16>,
    /// Empty or from a `/`, without trailing slashes.
    path: &'a str,
}

impl<'a> Url<'a> {
    /// Checks an element that is not a keyword. Without `://`, a text with a dot, a colon or
    /// a slash (not a leading one: that is a file path) gets `https://`, as in the go command.
    fn parse(text: &'a str) -> Result<Url<'a>, &'static str> {
        if let Some(bad) = text.chars().find(|c| {
            !c.is_ascii() || c.is_ascii_control() || c.is_ascii_whitespace() || "\\?#".contains(*c)
        }) {
            return Err(match bad {
                '?' | '#' => "a proxy URL has no query or fragment",
                _ => "a proxy URL is printable ASCII without spaces or backslashes",
            });
        }
        let (scheme, rest) = match text.split_once("://") {
            Some((scheme, rest)) => (scheme, rest),
            None if text.contains(":/") || text.starts_with('/') => {
                return Err("only http and https URLs are proxies (no file paths)");
            }
            None if text.contains(['.', ':', '/']) => ("https", text),
            None => return Err("not a URL, direct or off"),
        };
        let scheme = if scheme.eq_ignore_ascii_case("https") {
            "https"
        } else if scheme.eq_ignore_ascii_case("http") {
            "http"
        } else {
            return Err("only http and https URLs are proxies");
        };
        let (authority, path) = match rest.find('/') {
            Some(slash) => rest.split_at(slash),
            None => (rest, ""),
        };
        let path = path.trim_end_matches('/');
        if path.split('/').any(|elem| elem == "." || elem == "..") {
            return Err("a proxy URL's path has no '.' or '..' element");
        }
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((userinfo, hostport)) => (Some(userinfo), hostport),
            None => (None, authority),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let close = v6.find(']').ok_or("an IPv6 address without its ']'")?;
            let inside = &v6[..close];
            if inside.is_empty()
                || !inside
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() || ":.".contains(c))
            {
                return Err("not an IPv6 address between '[' and ']'");
            }
            match &v6[close + 1..] {
                "" => (&hostport[..close + 2], None),
                after => (
                    &hostport[..close + 2],
                    Some(
                        after
                            .strip_prefix(':')
                            .ok_or("junk after an IPv6 address")?,
                    ),
                ),
            }
        } else {
            match hostport.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err("a proxy URL needs a host");
        }
        if !host.starts_with('[')
            && !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
        {
            return Err("a host name has only A-Z a-z 0-9 - . _ (an IPv6 address in '[' and ']')");
        }
        let port = match port {
            None => None,
            Some(port) => {
                let ok =
                    !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit());
                let number = ok.then(|| port.parse::<u16>().ok()).flatten();
                Some(
                    number
                        .filter(|&p| p > 0)
                        .ok_or("a port is a number from 1 to 65535")?,
                )
            }
        };
        Ok(Url {
            scheme,
            userinfo,
            host,
            port,
            path,
        })
    }

    /// What says whether two URLs are the same place: scheme, host (lowercase), port (a
    /// default one dropped) and path, without the user.
    fn identity(&self) -> String {
        let default = if self.scheme == "https" { 443 } else { 80 };
        let port = match self.port {
            Some(port) if port != default => format!(":{port}"),
            _ => String::new(),
        };
        format!(
            "{}://{}{port}{}",
            self.scheme,
            self.host.to_ascii_lowercase(),
            self.path
        )
    }
}

/// The URL as kept: the lowercase scheme, the rest as written, no trailing slash.
impl fmt::Display for Url<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.scheme)?;
        if let Some(userinfo) = self.userinfo {
            write!(f, "{userinfo}@")?;
        }
        f.write_str(self.host)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        f.write_str(self.path)
    }
}

/// `text` with the password of a `user:password@` shown as `xxxxx` (as Go's `URL.Redacted`
/// does), with or without a scheme before it.
fn redact(text: &str) -> String {
    let (scheme, rest) = match text.split_once("://") {
        Some((scheme, rest)) => (&text[..scheme.len() + 3], rest),
        None => ("", text),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return text.to_owned();
    };
    match rest[..at].split_once(':') {
        Some((user, _password)) => format!("{scheme}{user}:xxxxx{}", &rest[at..]),
        None => text.to_owned(),
    }
}

/// Whether `module` matches one of `patterns`, a comma-separated list of path globs, as the
/// go command matches `GOPRIVATE`, `GONOPROXY` and `GONOSUMDB` (`golang.org/x/mod/module`'s
/// `MatchPrefixPatterns`): a glob of N elements matches a path whose first N elements match
/// it element by element (`*` any run of characters but `/`, `?` one, `[...]` a class), so
/// `example.com/private` matches `example.com/private/tools` and `*.corp.example.com`
/// matches `git.corp.example.com/x`. Empty globs are skipped; a glob that is not a valid
/// pattern matches nothing.
pub fn matches_prefix_patterns(patterns: &str, module: &str) -> bool {
    patterns.split(',').any(|glob| {
        let glob = glob.trim().trim_end_matches('/');
        if glob.is_empty() {
            return false;
        }
        let elements = glob.split('/').count();
        let mut parts = module.split('/');
        let prefix: Vec<&str> = parts.by_ref().take(elements).collect();
        prefix.len() == elements
            && glob
                .split('/')
                .zip(&prefix)
                .all(|(pattern, name)| glob_element(pattern.as_bytes(), name.as_bytes()))
    })
}

/// Whether one path element matches one glob element (no `/` in either).
fn glob_element(pattern: &[u8], name: &[u8]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => (0..=name.len()).any(|skip| glob_element(rest, &name[skip..])),
        Some((b'?', rest)) => !name.is_empty() && glob_element(rest, &name[1..]),
        Some((b'[', rest)) => {
            let Some(end) = rest.iter().skip(1).position(|&c| c == b']').map(|i| i + 1) else {
                return false;
            };
            let (class, rest) = (&rest[..end], &rest[end + 1..]);
            let Some((&c, name_rest)) = name.split_first() else {
                return false;
            };
            let (negated, class) = match class.split_first() {
                Some((b'^', class)) => (true, class),
                _ => (false, class),
            };
            let mut found = false;
            let mut i = 0;
            while i < class.len() {
                if i + 2 < class.len() && class[i + 1] == b'-' {
                    found |= class[i] <= c && c <= class[i + 2];
                    i += 3;
                } else {
                    found |= class[i] == c;
                    i += 1;
                }
            }
            found != negated && glob_element(rest, name_rest)
        }
        Some((b'\\', rest)) => match (rest.split_first(), name.split_first()) {
            (Some((p, rest)), Some((n, name_rest))) => p == n && glob_element(rest, name_rest),
            _ => false,
        },
        Some((p, rest)) => name.first() == Some(p) && glob_element(rest, &name[1..]),
    }
}

#[cfg(test)]
mod tests;
