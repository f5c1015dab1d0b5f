//! The HTTP backend: entries on a `goremotecache serve` server, with the same guarantees as
//! the S3 backend (one request per get, conditional creates, verification by the cache).

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use reqwest::StatusCode;

use super::{
    ByteStream, PutOutcome, RemoteError, RemoteStore, Upload, batch, explain, file_stream,
};
use crate::ids::{ActionId, BuildKey, Namespace};

/// Entries asked for in one batch request (the server takes up to [`batch::MAX_KEYS`]).
const BATCH: usize = 256;

/// How to reach a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// The server's base URL, such as `http://cache.internal:8321`.
    pub url: String,
    /// The bearer token; `None` for a server that allows anonymous reads.
    pub token: Option<String>,
    /// A PEM file of certificate authorities to trust besides the system's (a private CA).
    pub ca_file: Option<std::path::PathBuf>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// The namespace whose paths (`/v1/ns/<NAME>/...`) this store uses; `None`: the
    /// un-namespaced ones (`/v1/...`).
    pub namespace: Option<Namespace>,
}

impl HttpConfig {
    /// `<base>/v1`, or `<base>/v1/ns/<NAME>` in a namespace: what the store's paths start
    /// with.
    fn api(&self) -> String {
        let base = self.url.trim_end_matches('/');
        match &self.namespace {
            None => format!("{base}/v1"),
            Some(namespace) => format!("{base}/v1/{}", namespace.path()),
        }
    }

    /// Where the entries are, for messages: the server's URL (with the namespace's path in
    /// one).
    pub fn location(&self) -> String {
        location_of(&self.api())
    }
}

/// The location of a store whose paths start with `api`.
fn location_of(api: &str) -> String {
    api.strip_suffix("/v1").unwrap_or(api).to_string()
}

/// Entries on a `goremotecache serve` server.
#[derive(Debug, Clone)]
pub struct HttpStore {
    client: reqwest::Client,
    /// `<base>/v1`, or `<base>/v1/ns/<NAME>` in a namespace: what the paths start with.
    api: String,
    token: Option<String>,
    /// Set once a put was refused with 403: the token is read-only.
    read_only_said: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl HttpStore {
    /// Builds the client; no request is made.
    pub fn new(config: &HttpConfig) -> Result<Self, RemoteError> {
        super::install_crypto_provider();
        let mut builder = reqwest::Client::builder();
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path).map_err(|err| {
                RemoteError::Config(format!(
                    "cannot read --http-ca-file {} ({}): give the path of a PEM file of CA certificates",
                    path.display(),
                    crate::fsutil::explain_io(&err)
                ))
            })?;
            let certificate = reqwest::Certificate::from_pem(&pem).map_err(|err| {
                tracing::debug!("--http-ca-file {}: {err:?}", path.display());
                RemoteError::Config(format!(
                    "--http-ca-file {} holds no PEM certificate: give a PEM file (-----BEGIN CERTIFICATE-----)",
                    path.display()
                ))
            })?;
            builder = builder.add_root_certificate(certificate);
        }
        let client = builder
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.request_timeout)
            .tcp_nodelay(true)
            // Under the server's 10 s header timeout, which also closes idle connections.
            .pool_idle_timeout(Duration::from_secs(5))
            .build()
            .map_err(|err| RemoteError::Config(format!("building the HTTP client: {err}")))?;
        Ok(Self {
            client,
            api: config.api(),
            token: config.token.clone().filter(|t| !t.is_empty()),
            read_only_said: Default::default(),
        })
    }

    fn url(&self, action: &ActionId) -> String {
        format!("{}/ac/{}", self.api, action.to_hex())
    }

    fn manifest_url(&self, key: &BuildKey) -> String {
        format!("{}/prefetch/{}", self.api, key.to_hex())
    }

    /// Sends a request without a body.
    async fn send(
        &self,
        method: reqwest::Method,
        action: &ActionId,
    ) -> Result<reqwest::Response, RemoteError> {
        self.request(method, action)
            .send()
            .await
            .map_err(network_error)
    }

    fn request(&self, method: reqwest::Method, action: &ActionId) -> reqwest::RequestBuilder {
        self.request_to(method, self.url(action))
    }

    fn request_to(&self, method: reqwest::Method, url: String) -> reqwest::RequestBuilder {
        let request = self.client.request(method, url);
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }
}

/// Sorts an answer's status into what the cache acts on, worded by [`explain`].
fn status_error(status: StatusCode, body: &str) -> RemoteError {
    tracing::debug!("HTTP store answered {status}: {}", body.trim());
    let message = explain::http_status(status.as_u16(), body);
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => RemoteError::Denied(message),
        // A server whose storage is full (eviction behind): this write is dropped, the
        // server is not broken.
        StatusCode::INSUFFICIENT_STORAGE => RemoteError::Full(message),
        StatusCode::TOO_MANY_REQUESTS | StatusCode::REQUEST_TIMEOUT => {
            RemoteError::Transient(message)
        }
        _ if status.is_server_error() => RemoteError::Transient(message),
        // A wrong --http-url: no request there will ever work.
        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => RemoteError::Config(message),
        _ => RemoteError::Other(message),
    }
}

fn network_error(err: reqwest::Error) -> RemoteError {
    tracing::debug!("HTTP store request failed: {err:?}");
    RemoteError::Transient(explain::http_network(&err))
}

async fn failed(response: reqwest::Response) -> RemoteError {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    status_error(status, &body)
}

#[async_trait]
impl RemoteStore for HttpStore {
    async fn get(&self, action: &ActionId) -> Result<Option<ByteStream>, RemoteError> {
        let response = self.send(reqwest::Method::GET, action).await?;
        match response.status() {
            StatusCode::OK => Ok(Some(response.bytes_stream().map_err(network_error).boxed())),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(failed(response).await),
        }
    }

    async fn put(&self, action: &ActionId, entry: Upload) -> Result<PutOutcome, RemoteError> {
        let (body, len) = match entry {
            Upload::Bytes(bytes) => {
                let len = bytes.len() as u64;
                (reqwest::Body::from(bytes), len)
            }
            Upload::File { path, len } => {
                let file = std::fs::File::open(&path).map_err(|err| {
                    RemoteError::Other(format!("reading {}: {err}", path.display()))
                })?;
                (reqwest::Body::wrap_stream(file_stream(file)), len)
            }
        };
        let response = self
            .request(reqwest::Method::PUT, action)
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(body)
            .send()
            .await
            .map_err(network_error)?;
        match response.status() {
            StatusCode::CREATED => Ok(PutOutcome::Stored),
            StatusCode::OK => Ok(PutOutcome::Exists),
            // A read-only token: reads go on, uploads are skipped (said once).
            StatusCode::FORBIDDEN => {
                if !self
                    .read_only_said
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    tracing::warn!(
                        "the token for {} may not write there: uploads are skipped (--remote-mode read-only says so up front)",
                        self.location()
                    );
                }
                Ok(PutOutcome::Skipped)
            }
            _ => Err(failed(response).await),
        }
    }

    async fn head(&self, action: &ActionId) -> Result<Option<u64>, RemoteError> {
        let response = self.send(reqwest::Method::HEAD, action).await?;
        match response.status() {
            // From the header: `content_length()` is the size of the body received, and the
            // answer to a HEAD has none.
            StatusCode::OK => Ok(response
                .headers()
                .get(reqwest::header::CONTENT_LENGTH)
                .and_then(|value| value.to_str().ok()?.parse().ok())),
            StatusCode::NOT_FOUND => Ok(None),
            status => Err(status_error(status, "")),
        }
    }

    async fn clear(&self, _: &(dyn Fn(u64) + Send + Sync)) -> Result<u64, RemoteError> {
        Err(RemoteError::Other(
            "clear-remote does not go through the HTTP server: clear the server's storage instead \
             (its --storage-dir, or clear-remote with its S3 options)"
                .into(),
        ))
    }

    fn location(&self) -> String {
        location_of(&self.api)
    }

    async fn get_manifest(&self, key: &BuildKey) -> Result<Option<Bytes>, RemoteError> {
        let response = self
            .request_to(reqwest::Method::GET, self.manifest_url(key))
            .send()
            .await
            .map_err(network_error)?;
        match response.status() {
            StatusCode::OK => Ok(Some(response.bytes().await.map_err(network_error)?)),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(failed(response).await),
        }
    }

    /// `GET <api>/filter`: the server's filter of the keys it holds. A server that keeps none
    /// (S3 storage, or a release before filters) answers 404: no filter.
    async fn get_filter(&self) -> Result<Option<Bytes>, RemoteError> {
        let response = self
            .request_to(reqwest::Method::GET, format!("{}/filter", self.api))
            .send()
            .await
            .map_err(network_error)?;
        match response.status() {
            StatusCode::OK => {
                let too_large = || RemoteError::Other("the key filter is too large".into());
                if response.content_length().unwrap_or(0) > super::filter::MAX_FILTER as u64 {
                    return Err(too_large());
                }
                let bytes = response.bytes().await.map_err(network_error)?;
                match bytes.len() > super::filter::MAX_FILTER {
                    true => Err(too_large()),
                    false => Ok(Some(bytes)),
                }
            }
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(failed(response).await),
        }
    }

    async fn put_manifest(&self, key: &BuildKey, manifest: Bytes) -> Result<(), RemoteError> {
        let response = self
            .request_to(reqwest::Method::PUT, self.manifest_url(key))
            .body(manifest)
            .send()
            .await
            .map_err(network_error)?;
        match response.status() {
            status if status.is_success() => Ok(()),
            // A read-only token: said once by the first refused upload; nothing to do here.
            StatusCode::FORBIDDEN => Ok(()),
            _ => Err(failed(response).await),
        }
    }

    fn batch_limit(&self) -> usize {
        BATCH
    }

    async fn get_batch(&self, actions: &[ActionId]) -> Result<ByteStream, RemoteError> {
        let response = self
            .request_to(reqwest::Method::POST, format!("{}/batch", self.api))
            .body(batch::request_body(actions))
            .send()
            .await
            .map_err(network_error)?;
        match response.status() {
            StatusCode::OK => Ok(response.bytes_stream().map_err(network_error).boxed()),
            _ => Err(failed(response).await),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_server_is_neither_denied_nor_transient() {
        let full = status_error(StatusCode::INSUFFICIENT_STORAGE, "the storage is full\n");
        assert!(matches!(&full, RemoteError::Full(m) if m.contains("storage is full")));
        assert!(!full.is_fatal());
        assert!(matches!(
            status_error(StatusCode::SERVICE_UNAVAILABLE, "busy"),
            RemoteError::Transient(_)
        ));
    }
}
