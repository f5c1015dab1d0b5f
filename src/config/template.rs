//! Placeholders in the options that name where a cache lives (`--s3-prefix`, `--namespace`,
//! `--read-namespaces`, and any other prefix option that calls [`expand`]): `{GOOS}`,
//! `{GOARCH}`, `{GOVERSION}` and `{env.NAME}`, so that one CI file can keep the caches of
//! several targets or Go versions apart (`--s3-prefix ci/{GOOS}-{GOARCH}`).
//!
//! Where each value comes from (docs/ci.md says the same): the go command puts `GOOS`,
//! `GOARCH` and `GOVERSION` into the environment of every program it starts, its GOCACHEPROG
//! included, whether the user set them or not (measured with Go 1.26: the go command sets its
//! whole `go env` in its own environment before it starts anything). So under the go command
//! the three are read from the environment and cost nothing. A program that starts
//! goremotecache itself (golangci-lint with GOLANGCI_LINT_CACHEPROG, staticcheck, a daemon
//! started by hand) may not set them: then the missing ones come from one run of
//! `go env GOOS GOARCH GOVERSION` with the `go` on PATH (a few milliseconds), which is the
//! target and version that go command builds for. `{env.NAME}` is the variable NAME; unset or
//! empty is an error, because an empty piece would silently merge caches that the template
//! meant to keep apart.
//!
//! Expansion is text only: the result is checked afterwards as the option's value always is
//! (a namespace name refuses a `/`, a prefix keeps it as one more level of the key). There is
//! no escape for a literal brace: `{` always opens a placeholder and a `}` outside one is an
//! error, so a typo is never stored as part of a key.

use std::process::Command;
use std::sync::OnceLock;

use super::ConfigError;

/// The Go placeholders, in the order `go env` prints them.
const GO_VARS: [&str; 3] = ["GOOS", "GOARCH", "GOVERSION"];

/// Where the values of the placeholders come from.
pub trait Source {
    /// The environment variable `name`, if set and not empty.
    fn var(&self, name: &str) -> Option<String>;
    /// `GOOS`, `GOARCH` or `GOVERSION` as the go command on PATH reports it; asked only when
    /// the environment lacks it.
    fn go_env(&self, name: &str) -> Result<String, String>;
}

/// This process's environment, and `go env` run at most once.
pub struct ProcessEnv;

impl Source for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|value| !value.is_empty())
    }

    fn go_env(&self, name: &str) -> Result<String, String> {
        static GO_ENV: OnceLock<Result<Vec<String>, String>> = OnceLock::new();
        let values = GO_ENV.get_or_init(|| {
            let output = Command::new("go")
                .arg("env")
                .args(GO_VARS)
                .output()
                .map_err(|err| format!("cannot run go: {err}"))?;
            if !output.status.success() {
                let stderr = String::from_utf8_lossy(&output.stderr);
                return Err(format!("go env failed: {}", stderr.trim()));
            }
            let lines: Vec<String> = String::from_utf8_lossy(&output.stdout)
                .lines()
                .map(str::to_owned)
                .collect();
            match lines.len() == GO_VARS.len() {
                true => Ok(lines),
                false => Err(format!("go env printed {lines:?}")),
            }
        });
        let values = values.as_ref().map_err(Clone::clone)?;
        let at = GO_VARS.iter().position(|v| *v == name);
        match at.map(|at| values[at].as_str()) {
            Some(value) if !value.is_empty() => Ok(value.to_owned()),
            _ => Err(format!("go env has no value for {name}")),
        }
    }
}

/// `value` of `--flag` with its placeholders replaced from this process's environment (and
/// `go env` for a Go placeholder the environment lacks). A value without braces is returned
/// as it is, without looking anything up.
pub fn expand(flag: &'static str, value: &str) -> Result<String, ConfigError> {
    expand_from(flag, value, &ProcessEnv)
}

/// [`expand`] with the values from `source`.
pub fn expand_from(
    flag: &'static str,
    value: &str,
    source: &dyn Source,
) -> Result<String, ConfigError> {
    let refuse = |reason: String| ConfigError::Template {
        flag,
        value: value.to_owned(),
        reason,
    };
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = rest.find(['{', '}']) {
        out.push_str(&rest[..at]);
        if rest[at..].starts_with('}') {
            return Err(refuse(
                "a '}' without its '{': write placeholders as {GOOS}, {GOARCH}, {GOVERSION} \
                 or {env.NAME}"
                    .into(),
            ));
        }
        let after = &rest[at + 1..];
        let Some(end) = after
            .find(['{', '}'])
            .filter(|&end| after[end..].starts_with('}'))
        else {
            return Err(refuse(
                "a '{' is not closed: write placeholders as {GOOS}, {GOARCH}, {GOVERSION} or \
                 {env.NAME}"
                    .into(),
            ));
        };
        out.push_str(&placeholder(&after[..end], source).map_err(refuse)?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The value of the placeholder `{name}`.
fn placeholder(name: &str, source: &dyn Source) -> Result<String, String> {
    if let Some(var) = name.strip_prefix("env.") {
        let valid = !var.is_empty() && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!(
                "{{{name}}}: an environment variable's name has only A-Z a-z 0-9 _"
            ));
        }
        return source.var(var).ok_or_else(|| {
            format!(
                "{{{name}}}: the variable {var} is unset or empty: set it, or drop the placeholder"
            )
        });
    }
    if !GO_VARS.contains(&name) {
        return Err(format!(
            "unknown placeholder {{{name}}}: use {{GOOS}}, {{GOARCH}}, {{GOVERSION}} or {{env.NAME}}"
        ));
    }
    match source.var(name) {
        Some(value) => Ok(value),
        None => source.go_env(name).map_err(|err| {
            format!(
                "{{{name}}}: {name} is not in the environment and `go env {name}` did not \
                 give it ({err}): set {name} or put go on PATH"
            )
        }),
    }
}

#[cfg(test)]
mod tests;
