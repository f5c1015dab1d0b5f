//! The daemon's commands, validated: `daemon`, `connect`, and `flush`, `status` and `warm`
//! (which act on a running daemon). Each carries the build's [`Config`]: a daemon serves the
//! builds whose settings are its own.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::flags::{ControlCommand, DaemonCommand, SocketArgs, StatusCommand};
use super::{Config, ConfigError, GoproxyConfig};
use crate::goproxy::Upstreams;
use crate::store::StoreConfig;
use crate::store::http::HttpConfig;

/// `goremotecache daemon`'s options, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonConfig {
    /// The builds' settings: the daemon's cache.
    pub build: Config,
    /// `--socket`; `None`: the place the settings give.
    pub socket: Option<PathBuf>,
    /// `--listen-plugin`: a loopback address.
    pub listen_plugin: Option<SocketAddr>,
    /// `--idle-exit`; `None`: never.
    pub idle_exit: Option<Duration>,
    /// Started by `connect` or `warm`.
    pub detached: bool,
    /// `--goproxy-listen` and the module proxy's settings.
    pub goproxy: Option<DaemonGoproxy>,
}

/// The daemon's module proxy, resolved. Not part of the daemon's fingerprint (see
/// [`crate::daemon::place::Fingerprint::of`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonGoproxy {
    /// A loopback address.
    pub listen: SocketAddr,
    /// With `--backend http`, the server's `/mod` first in the upstreams.
    pub config: GoproxyConfig,
}

/// What a command does with a running daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// `connect`: the go command's session, through the daemon.
    Connect,
    /// `flush`: wait for the uploads, write the manifest.
    Flush,
    /// `status`, as text or JSON lines.
    Status { json: bool },
    /// `warm`: begin the prefetch of `--prefetch-key`.
    Warm,
}

/// `connect`, `flush`, `status` and `warm`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlConfig {
    pub control: Control,
    /// The build's settings, which name its daemon.
    pub build: Config,
    /// `--socket`.
    pub socket: Option<PathBuf>,
}

impl ControlConfig {
    /// Whether the command means every daemon under the cache directory: it was given
    /// neither a socket nor a remote store (`flush` and `status` only).
    pub fn every_daemon(&self) -> bool {
        matches!(self.control, Control::Flush | Control::Status { .. })
            && self.socket.is_none()
            && self.build.remote.is_none()
    }
}

impl DaemonConfig {
    pub(super) fn from_args(args: &DaemonCommand) -> Result<Self, ConfigError> {
        let mut build = Config::from_args(&args.main)?;
        if args.daemon.detached {
            // The go command's, not the daemon's: the session reports them itself.
            build.stats = false;
            build.stats_file = None;
            build.metrics_push = None;
            build.step_summary = None;
        }
        let listen_plugin = match args.daemon.listen_plugin.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(text) => Some(loopback("listen-plugin", text)?),
        };
        let goproxy = match args.daemon.goproxy_listen.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(text) => Some(DaemonGoproxy::resolve(
                loopback("goproxy-listen", text)?,
                &args.goproxy,
                &build,
            )?),
        };
        Ok(Self {
            build,
            socket: socket(&args.socket)?,
            listen_plugin,
            idle_exit: Some(args.daemon.idle_exit).filter(|d| *d != Duration::MAX),
            detached: args.daemon.detached,
            goproxy,
        })
    }
}

impl DaemonGoproxy {
    /// The proxy on `listen` by `args`. With an HTTP cache server as the remote tier, the
    /// server's own module proxy (`<url>/mod`, the token as a basic-auth password, which the
    /// server takes as it takes a bearer token) comes first, and the list of `args` after a
    /// `|`: the server has no API to store a module answer but its proxy, which keeps what it
    /// fetches, so a fresh machine gets modules from it; when it fails (or was started
    /// without --goproxy), the daemon goes on to its own list.
    fn resolve(
        listen: SocketAddr,
        args: &super::GoproxyArgs,
        build: &Config,
    ) -> Result<Self, ConfigError> {
        // With port 0 the port is not known yet: no URL of ours to refuse in the list.
        let own = (listen.port() != 0).then(|| format!("http://{listen}/mod"));
        let mut config =
            GoproxyConfig::resolve(args, own.as_deref()).map_err(ConfigError::Goproxy)?;
        if let Some(StoreConfig::Http(http)) = build.remote.as_ref().map(|r| &r.store) {
            let server = Upstreams::parse(&server_proxy(http), own.as_deref())
                .map_err(|err| ConfigError::Goproxy(format!("--http-url: {err}")))?;
            config.upstreams = server.then_on_failure(config.upstreams);
        }
        Ok(Self { listen, config })
    }
}

/// The module proxy of the cache server at `http`, with its token in the URL's userinfo
/// (percent-encoded; the fetcher sends it as basic authentication and never shows it).
pub(super) fn server_proxy(http: &HttpConfig) -> String {
    let base = http.url.trim_end_matches('/');
    let Some(token) = http.token.as_deref().filter(|t| !t.is_empty()) else {
        return format!("{base}/mod");
    };
    let (scheme, rest) = base.split_once("://").unwrap_or(("https", base));
    let mut escaped = String::new();
    for byte in token.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            escaped.push(char::from(byte));
        } else {
            escaped.push_str(&format!("%{byte:02X}"));
        }
    }
    format!("{scheme}://goremotecache:{escaped}@{rest}/mod")
}

impl ControlConfig {
    pub(super) fn from_args(control: Control, args: &ControlCommand) -> Result<Self, ConfigError> {
        let build = Config::from_args(&args.main)?;
        if control == Control::Warm
            && (build.remote.as_ref())
                .and_then(|r| r.prefetch.as_ref()?.key.as_ref())
                .is_none()
        {
            return Err(ConfigError::WarmNeedsKey);
        }
        Ok(Self {
            control,
            build,
            socket: socket(&args.socket)?,
        })
    }

    pub(super) fn status(args: &StatusCommand) -> Result<Self, ConfigError> {
        Ok(Self {
            control: Control::Status { json: args.json },
            build: Config::from_args(&args.main)?,
            socket: socket(&args.socket)?,
        })
    }
}

/// `--socket`: absolute (a daemon started elsewhere must find the same path); empty is none.
fn socket(args: &SocketArgs) -> Result<Option<PathBuf>, ConfigError> {
    match &args.socket {
        None => Ok(None),
        Some(path) if path.as_os_str().is_empty() => Ok(None),
        Some(path) => {
            std::path::absolute(path)
                .map(Some)
                .map_err(|source| ConfigError::NoCurrentDir {
                    flag: "socket",
                    path: path.display().to_string(),
                    source,
                })
        }
    }
}

/// `--listen-plugin` or `--goproxy-listen` (`flag`): an IP address and port on the loopback
/// interface.
fn loopback(flag: &'static str, text: &str) -> Result<SocketAddr, ConfigError> {
    let refused = || ConfigError::NotLoopback {
        flag,
        addr: text.to_string(),
    };
    let addr: SocketAddr = text.parse().map_err(|_| refused())?;
    if !addr.ip().is_loopback() {
        return Err(refused());
    }
    Ok(addr)
}
