//! The module proxy's settings, resolved from its options ([`GoproxyArgs`]) and, for what they
//! leave out, from the go command's own settings in this process's environment (`go env`), so
//! that the proxy fetches from where the machine's go command would, and no upstream's name
//! is written into goremotecache.

use std::process::Command;
use std::time::Duration;

use super::flags::GoproxyArgs;
use crate::goproxy::{SumdbName, Upstreams};

/// The module proxy's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoproxyConfig {
    pub upstreams: Upstreams,
    pub list_ttl: Duration,
    /// The checksum databases proxied.
    pub sumdbs: Vec<SumdbName>,
    /// `GONOPROXY` (or `GOPRIVATE`): modules fetched `direct` only.
    pub noproxy: String,
}

/// The go command's settings that the proxy reads.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
struct GoEnv {
    #[serde(default)]
    goproxy: String,
    #[serde(default)]
    gosumdb: String,
    #[serde(default)]
    gonoproxy: String,
}

/// `go env -json GOPROXY GOSUMDB GONOPROXY` (GONOPROXY already defaults to GOPRIVATE there).
fn go_env() -> Result<GoEnv, String> {
    let output = Command::new("go")
        .args(["env", "-json", "GOPROXY", "GOSUMDB", "GONOPROXY"])
        .env("GOTOOLCHAIN", "local")
        .output()
        .map_err(|err| format!("running `go env` for the module proxy's defaults: {err}"))?;
    if !output.status.success() {
        return Err(format!(
            "`go env` failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    serde_json::from_slice(&output.stdout).map_err(|err| format!("reading `go env -json`: {err}"))
}

/// The database named by a GOSUMDB value (`name`, `name+hash+key`, `name+hash+key URL`);
/// none for `off` or an empty value.
fn sumdb_of_gosumdb(value: &str) -> Option<&str> {
    let first = value.split_whitespace().next()?;
    let name = first.split('+').next()?;
    (!name.is_empty() && name != "off").then_some(name)
}

impl GoproxyConfig {
    /// Resolves `args`; `self_url` is the proxy's own URL (refused as an upstream). Runs
    /// `go env` only when an option is left to its default.
    pub fn resolve(args: &GoproxyArgs, self_url: Option<&str>) -> Result<Self, String> {
        let env = if args.goproxy_upstream.is_none() || args.goproxy_sumdb.is_none() {
            go_env()?
        } else {
            // GONOPROXY is read from the environment alone when every option is given.
            GoEnv {
                gonoproxy: std::env::var("GONOPROXY")
                    .ok()
                    .filter(|value| !value.is_empty())
                    .or_else(|| std::env::var("GOPRIVATE").ok())
                    .unwrap_or_default(),
                ..GoEnv::default()
            }
        };
        let list = args.goproxy_upstream.as_deref().unwrap_or(&env.goproxy);
        let upstreams = Upstreams::parse(list, self_url)
            .map_err(|err| format!("--goproxy-upstream {list:?}: {err}"))?;
        let names: Vec<&str> = match &args.goproxy_sumdb {
            Some(value) if value.trim() == "off" => Vec::new(),
            Some(value) => value
                .split(',')
                .map(str::trim)
                .filter(|name| !name.is_empty())
                .collect(),
            None => sumdb_of_gosumdb(&env.gosumdb).into_iter().collect(),
        };
        let sumdbs = names
            .into_iter()
            .map(|name| {
                SumdbName::parse(name).map_err(|err| format!("--goproxy-sumdb {name:?}: {err}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            upstreams,
            list_ttl: args.goproxy_list_ttl,
            sumdbs,
            noproxy: env.gonoproxy,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_is_the_name_of_gosumdb() {
        assert_eq!(sumdb_of_gosumdb("sum.example.org"), Some("sum.example.org"));
        assert_eq!(
            sumdb_of_gosumdb(
                "sum.example.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8"
            ),
            Some("sum.example.org")
        );
        assert_eq!(
            sumdb_of_gosumdb("db.test+abc+key http://127.0.0.1:1/db"),
            Some("db.test")
        );
        assert_eq!(sumdb_of_gosumdb("off"), None);
        assert_eq!(sumdb_of_gosumdb(""), None);
    }

    #[test]
    fn options_that_are_given_win_and_bad_ones_are_said() {
        let args = GoproxyArgs {
            goproxy_upstream: Some("http://127.0.0.1:9/up|direct".into()),
            goproxy_list_ttl: Duration::from_secs(5),
            goproxy_sumdb: Some("a.test, b.test".into()),
        };
        let config = GoproxyConfig::resolve(&args, None).unwrap();
        assert_eq!(config.upstreams.to_string(), "http://127.0.0.1:9/up|direct");
        let names: Vec<&str> = config.sumdbs.iter().map(SumdbName::as_str).collect();
        assert_eq!(names, ["a.test", "b.test"]);
        assert_eq!(config.list_ttl, Duration::from_secs(5));

        let own = GoproxyArgs {
            goproxy_upstream: Some("http://127.0.0.1:8321/mod".into()),
            ..args.clone()
        };
        let err = GoproxyConfig::resolve(&own, Some("http://127.0.0.1:8321/mod")).unwrap_err();
        assert!(err.contains("--goproxy-upstream"), "{err}");
        let bad = GoproxyArgs {
            goproxy_sumdb: Some("not a name".into()),
            ..args
        };
        let err = GoproxyConfig::resolve(&bad, None).unwrap_err();
        assert!(err.contains("--goproxy-sumdb"), "{err}");
    }
}
