//! The module proxy over HTTP: [`Proxy`] answers one `GET /mod/<path>` of the GOPROXY
//! protocol, whoever mounts it (`serve --goproxy` behind its tokens, the daemon's
//! `--goproxy-listen` on loopback). Who may ask is the mounting server's business; what the
//! answer is, is this file's.
//!
//! - A path that is not a request of the protocol ([`Request::parse`]): 400, nothing fetched.
//! - `sumdb/<name>/supported`: 200 for the checksum databases this proxy is configured to
//!   proxy, 404 for any other (the go command then asks the database itself).
//! - Anything else goes through the [`ModCache`]: 200 with the answer (stored, fetched or, when
//!   every upstream failed, the stored copy of a changing answer); the upstreams' 404 or 410 as
//!   they gave it; 502 when every upstream failed and nothing was stored, with the reason.
//!   A 5xx makes the go command try the next proxy of its list after a `|`.
//!
//! Each request is counted in `goremotecache_goproxy_requests_total{kind,result}`: `kind` is
//! `info`, `mod`, `zip`, `list`, `latest` or `sumdb`; `result` is `hit`, `miss` (fetched),
//! `fallback` (a stored copy because the upstreams failed), `not_found`, `upstream_error`,
//! `local` (`supported`) or `bad_request`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::cache::{Answer, ModCache, ModStore, Served};
use super::fetch::Fetcher;
use super::path::{Request, SumdbName};

/// The labels of `goremotecache_goproxy_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub kind: &'static str,
    pub result: &'static str,
}

/// The counter family of the proxy's requests (registered by whoever shows metrics).
pub type RequestCounts = Family<RequestLabels, Counter>;

/// The module proxy: its cache, the databases it proxies and its counts.
#[derive(Debug)]
pub struct Proxy {
    cache: ModCache<Arc<dyn ModStore>>,
    sumdbs: Vec<SumdbName>,
    counts: RequestCounts,
    location: String,
}

/// The `kind` label of a request.
fn kind(request: &Request) -> &'static str {
    match request {
        Request::List { .. } => "list",
        Request::Info { .. } => "info",
        Request::Mod { .. } => "mod",
        Request::Zip { .. } => "zip",
        Request::Latest { .. } => "latest",
        Request::SumdbSupported { .. }
        | Request::SumdbLookup { .. }
        | Request::SumdbTile { .. }
        | Request::SumdbLatest { .. } => "sumdb",
    }
}

/// The `Content-Type` of an answer.
fn content_type(request: &Request) -> &'static str {
    match request {
        Request::Zip { .. } => "application/zip",
        Request::Info { .. } | Request::Latest { .. } => "application/json",
        Request::SumdbTile { .. } => "application/octet-stream",
        _ => "text/plain; charset=utf-8",
    }
}

impl Proxy {
    /// A proxy over `store` (`location` says where it is, for messages), fetching through
    /// `fetcher`, changing answers fresh for `list_ttl`, proxying the checksum databases
    /// `sumdbs`, counting into `counts`.
    pub fn new(
        store: Arc<dyn ModStore>,
        location: String,
        fetcher: Fetcher,
        list_ttl: Duration,
        sumdbs: Vec<SumdbName>,
        counts: RequestCounts,
    ) -> Self {
        Self {
            cache: ModCache::new(store, fetcher, list_ttl),
            sumdbs,
            counts,
            location,
        }
    }

    /// One line for a start-up log: where answers are kept and where they come from.
    pub fn describe(&self) -> String {
        let sumdbs: Vec<&str> = self.sumdbs.iter().map(SumdbName::as_str).collect();
        format!(
            "module proxy at /mod/: answers kept in {}, fetched from {}; checksum databases: {}",
            self.location,
            self.cache.fetcher().upstreams(),
            if sumdbs.is_empty() {
                "none".to_owned()
            } else {
                sumdbs.join(", ")
            }
        )
    }

    fn count(&self, kind: &'static str, result: &'static str) {
        self.counts
            .get_or_create(&RequestLabels { kind, result })
            .inc();
    }

    /// The answer to `GET /mod/<raw>` (`raw`: the path after `/mod/`, not percent-decoded).
    pub async fn answer(&self, raw: &str) -> Response {
        let request = match Request::parse(raw) {
            Ok(request) => request,
            Err(err) => {
                self.count("invalid", "bad_request");
                return text(StatusCode::BAD_REQUEST, err.to_string());
            }
        };
        let kind = kind(&request);
        if let Request::SumdbSupported { name } = &request {
            self.count(kind, "local");
            return if self.sumdbs.contains(name) {
                text(StatusCode::OK, String::new())
            } else {
                text(
                    StatusCode::NOT_FOUND,
                    format!("this proxy does not proxy the checksum database {name}"),
                )
            };
        }
        if matches!(request, Request::SumdbLookup { ref name, .. } | Request::SumdbTile { ref name, .. } | Request::SumdbLatest { ref name } if !self.sumdbs.contains(name))
        {
            self.count(kind, "not_found");
            return text(
                StatusCode::NOT_FOUND,
                "this proxy does not proxy that checksum database".to_owned(),
            );
        }
        match self.cache.serve(&request).await {
            Ok(Served::NotFound { status }) => {
                self.count(kind, "not_found");
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::NOT_FOUND);
                text(status, format!("{}: not found upstream", request.path()))
            }
            Ok(served) => {
                self.count(kind, served.result_label());
                let Some(content) = served.content() else {
                    return text(StatusCode::INTERNAL_SERVER_ERROR, "no content".to_owned());
                };
                let body = match content.body {
                    Answer::Bytes(cursor) => Body::from(cursor.into_inner()),
                    Answer::File(file) => Body::from_stream(crate::store::file_stream(file)),
                };
                let mut response = (StatusCode::OK, body).into_response();
                let headers = response.headers_mut();
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(content.len));
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(content_type(&request)),
                );
                response
            }
            Err(err) => {
                self.count(kind, "upstream_error");
                tracing::warn!("module proxy: {err}");
                text(StatusCode::BAD_GATEWAY, err.to_string())
            }
        }
    }
}

/// A plain-text answer of one line.
fn text(status: StatusCode, message: String) -> Response {
    let body = if message.is_empty() {
        message
    } else {
        format!("{message}\n")
    };
    (status, body).into_response()
}
