//! One store over any OpenDAL [`Operator`]: the S3, GCS and Azure Blob backends are thin
//! builders of an operator and a location ([`super::s3`], [`super::gcs`], [`super::azblob`]);
//! everything the cache asks of them is here, written once.
//!
//! - `get` is one ranged-open read whose first poll sends the request, so that a missing
//!   entry is `Ok(None)` and not an error in the middle of a stream.
//! - `put` is a conditional create (`if_not_exists`): S3's `If-None-Match: *`, GCS's
//!   `ifGenerationMatch=0`, Azure's `If-None-Match: *` on the commit of the block list. A
//!   refused condition is [`PutOutcome::Exists`]. An [`Upload::File`] is streamed in 1 MiB
//!   reads into a chunked writer (multipart, resumable or block upload), never read whole.
//! - Manifests are plain writes (the last writer wins), and so are packs, streamed from
//!   their file like a large entry; a pack's read is one ranged read.
//! - [`classify`] sorts every OpenDAL error into a [`RemoteError`] in one place.
//!
//! OpenDAL's own retries are not enabled: the cache decides what to retry, so that a get
//! never waits long. The HTTP client is our reqwest client (connect and read timeouts, no
//! idle connections kept past a minute) and every operation is bounded by OpenDAL's timeout
//! layer.

use std::ops::Range;
use std::path::Path;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use opendal::layers::TimeoutLayer;
use opendal::{ErrorKind, HttpTransporter, Operator};
use opendal_http_transport_reqwest::ReqwestTransport;

use super::explain::{self, Cause};
use super::inventory::{Area, Inventory, NAMESPACES, StoredObject};
use super::{
    ByteStream, FILTER_KEY, PutOutcome, RemoteError, RemoteStore, Upload, entry_key, filter,
    manifest_key, pack_key,
};
use crate::ids::{ActionId, BuildKey, Namespace};

/// Part size of the chunked writer for large entries.
const PART: usize = 8 * 1024 * 1024;
/// Deletes in flight during `clear`.
const CLEAR_CONCURRENCY: usize = 16;

/// Which service an [`ObjectStore`] talks to: its messages and its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    S3,
    Gcs,
    Azblob,
}

impl Service {
    /// What the sentences of [`explain`] name for this service.
    fn explained(self) -> &'static explain::Service {
        match self {
            Service::S3 => &explain::S3,
            Service::Gcs => &explain::GCS,
            Service::Azblob => &explain::AZBLOB,
        }
    }

    /// The most keys in one batch delete: S3's DeleteObjects takes 1000, a GCS batch 100,
    /// an Azure blob batch 256.
    fn delete_batch(self) -> usize {
        match self {
            Service::S3 => 1000,
            Service::Gcs => 100,
            Service::Azblob => 256,
        }
    }
}

/// The timeouts of an object store's HTTP client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Give up connecting after this long.
    pub connect: Duration,
    /// Give up on a request (or a stalled read or write in one) after this long.
    pub request: Duration,
}

/// Entries in a bucket or container, through OpenDAL.
#[derive(Debug, Clone)]
pub struct ObjectStore {
    op: Operator,
    location: String,
    service: Service,
}

impl ObjectStore {
    /// Wraps `op` (already rooted at the store's prefix) with our HTTP client and timeouts.
    /// `location` names it in messages (`gs://bucket/prefix`). No request is made.
    pub fn new(
        op: Operator,
        service: Service,
        location: String,
        timeouts: Timeouts,
    ) -> Result<Self, RemoteError> {
        // reqwest needs a TLS crypto provider.
        super::install_crypto_provider();
        let client = reqwest::Client::builder()
            .connect_timeout(timeouts.connect)
            .read_timeout(timeouts.request)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|err| RemoteError::Config(format!("building the HTTP client: {err}")))?;
        let context = op
            .base_context()
            .with_http_transport(HttpTransporter::new(ReqwestTransport::new(client)));
        let op = op.with_context(context).layer(
            TimeoutLayer::new()
                .with_timeout(timeouts.request)
                .with_io_timeout(timeouts.request),
        );
        Ok(Self {
            op,
            location,
            service,
        })
    }

    /// [`classify`] for this store's service, as a function that owns what it needs.
    fn classifier(&self) -> impl Fn(opendal::Error) -> RemoteError + Copy + Send + 'static {
        let service = self.service;
        move |err| classify(service, err)
    }

    /// Writes the object `key` in one request, replacing it (manifests, the key filter).
    async fn write_whole(&self, key: &str, bytes: Bytes) -> Result<(), RemoteError> {
        (self.op.write(key, bytes).await)
            .map(drop)
            .map_err(self.classifier())
    }

    /// Streams the file at `path` into the object `key` in 1 MiB reads through a chunked
    /// writer (never whole in memory); `if_not_exists` makes it a conditional create.
    async fn write_file(&self, key: &str, path: &Path, if_not_exists: bool) -> opendal::Result<()> {
        let mut writer = self
            .op
            .writer_with(key)
            .chunk(PART)
            .if_not_exists(if_not_exists)
            .await?;
        let result = async {
            let mut file = tokio::fs::File::open(path).await.map_err(|err| {
                opendal::Error::new(
                    ErrorKind::Unexpected,
                    format!("reading {}: {err}", path.display()),
                )
            })?;
            let mut buf = vec![0u8; 1024 * 1024];
            loop {
                use tokio::io::AsyncReadExt;
                let n = file
                    .read(&mut buf)
                    .await
                    .map_err(|err| opendal::Error::new(ErrorKind::Unexpected, err.to_string()))?;
                if n == 0 {
                    break;
                }
                writer.write(buf[..n].to_vec()).await?;
            }
            writer.close().await.map(drop)
        }
        .await;
        if result.is_err() {
            let _ = writer.abort().await;
        }
        result
    }

    /// Opens a read of `key` (bytes `range`) and sends its request: `Ok(None)` when there is
    /// no such object.
    async fn open_read(
        &self,
        key: &str,
        range: impl std::ops::RangeBounds<u64>,
    ) -> Result<Option<ByteStream>, RemoteError> {
        let opened = match self.op.reader(key).await {
            Ok(reader) => reader.into_bytes_stream(range).await,
            Err(err) => Err(err),
        };
        let mut stream = match opened {
            Ok(stream) => stream,
            Err(err) if err.kind() == ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err((self.classifier())(err)),
        };
        // The request goes out on the first poll: a missing object shows here, as NotFound.
        let first = match stream.next().await {
            None => return Ok(Some(futures::stream::empty().boxed())),
            Some(Ok(bytes)) => bytes,
            Some(Err(err)) => {
                return match opendal_kind(&err) {
                    Some(ErrorKind::NotFound) => Ok(None),
                    _ => Err(classify_io(self.service, err)),
                };
            }
        };
        let service = self.service;
        let rest = stream.map_err(move |err| classify_io(service, err));
        Ok(Some(
            futures::stream::once(async move { Ok(first) })
                .chain(rest)
                .boxed(),
        ))
    }
}

/// `scheme://container` with `prefix` after it when there is one: a store's location.
pub fn location(scheme: &str, container: &str, prefix: &str) -> String {
    match prefix.trim_matches('/') {
        "" => format!("{scheme}://{container}"),
        prefix => format!("{scheme}://{container}/{prefix}"),
    }
}

/// `sub` inside `prefix` (`prefix/sub`, or `sub` when the prefix is empty): the prefix of a
/// namespace or of the module proxy inside a store's.
pub fn sub_prefix(prefix: &str, sub: &str) -> String {
    match prefix.trim_matches('/') {
        "" => sub.to_owned(),
        prefix => format!("{prefix}/{sub}"),
    }
}

/// OpenDAL's root for a key prefix: `/prefix`.
pub fn root(prefix: &str) -> String {
    format!("/{}", prefix.trim_matches('/'))
}

/// Sorts OpenDAL's errors into what the cache acts on, worded by [`explain`] as one sentence
/// with the cause and the fix; the raw error goes to the debug log.
pub fn classify(service: Service, err: opendal::Error) -> RemoteError {
    tracing::debug!("{service:?} error: {err}");
    let (message, cause) = explain::opendal(&err, service.explained());
    match (err.kind(), cause) {
        (ErrorKind::PermissionDenied, _) | (_, Some(Cause::Denied)) => RemoteError::Denied(message),
        (ErrorKind::ConfigInvalid, _) | (_, Some(Cause::Config)) => RemoteError::Config(message),
        _ if err.is_temporary() => RemoteError::Transient(message),
        (_, Some(Cause::Transient)) => RemoteError::Transient(message),
        (ErrorKind::RateLimited | ErrorKind::Unexpected, _) => RemoteError::Transient(message),
        _ => RemoteError::Other(message),
    }
}

#[async_trait]
impl RemoteStore for ObjectStore {
    async fn get(&self, action: &ActionId) -> Result<Option<ByteStream>, RemoteError> {
        self.open_read(&entry_key(action), ..).await
    }

    async fn put(&self, action: &ActionId, entry: Upload) -> Result<PutOutcome, RemoteError> {
        let key = entry_key(action);
        let written = match entry {
            Upload::Bytes(bytes) => self
                .op
                .write_with(&key, bytes)
                .if_not_exists(true)
                .await
                .map(drop),
            Upload::File { path, .. } => self.write_file(&key, &path, true).await,
        };
        match written {
            Ok(()) => Ok(PutOutcome::Stored),
            Err(err) if err.kind() == ErrorKind::ConditionNotMatch => Ok(PutOutcome::Exists),
            Err(err) => Err((self.classifier())(err)),
        }
    }

    async fn head(&self, action: &ActionId) -> Result<Option<u64>, RemoteError> {
        match self.op.stat(&entry_key(action)).await {
            Ok(meta) => Ok(Some(meta.content_length())),
            Err(err) if err.kind() == ErrorKind::NotFound => Ok(None),
            Err(err) => Err((self.classifier())(err)),
        }
    }

    async fn clear(&self, progress: &(dyn Fn(u64) + Send + Sync)) -> Result<u64, RemoteError> {
        let mut deleted = 0u64;
        // Entries first, then the manifests that list them, the packs that copy them, and
        // the key filter.
        for dir in ["v1/", "prefetch/", "pack/", "filter/"] {
            let entries = self
                .op
                .lister_with(dir)
                .recursive(true)
                .await
                .map_err(self.classifier())?;
            let mut deletes = entries
                .map_err(self.classifier())
                .try_filter(|entry| futures::future::ready(entry.metadata().is_file()))
                .map_ok(|entry| {
                    let op = self.op.clone();
                    let classify = self.classifier();
                    async move { op.delete(entry.path()).await.map_err(classify) }
                })
                .try_buffer_unordered(CLEAR_CONCURRENCY);
            while let Some(result) = deletes.next().await {
                result?;
                // The key filter is the prefix's index, not a thing it holds: not counted.
                if dir != "filter/" {
                    deleted += 1;
                }
                if deleted.is_multiple_of(1000) {
                    progress(deleted);
                }
            }
        }
        Ok(deleted)
    }

    fn location(&self) -> String {
        self.location.clone()
    }

    async fn get_manifest(&self, key: &BuildKey) -> Result<Option<Bytes>, RemoteError> {
        match self.op.read(&manifest_key(key)).await {
            Ok(buffer) => Ok(Some(buffer.to_bytes())),
            Err(err) if err.kind() == ErrorKind::NotFound => Ok(None),
            Err(err) => Err((self.classifier())(err)),
        }
    }

    async fn put_manifest(&self, key: &BuildKey, manifest: Bytes) -> Result<(), RemoteError> {
        self.write_whole(&manifest_key(key), manifest).await
    }

    /// The filter the clients keep; where there is none, a bucket with no entry under the
    /// prefix (one listing request) is known to be empty: the filter of no keys.
    async fn get_filter(&self) -> Result<Option<Bytes>, RemoteError> {
        // Read whole: a ranged read past the end of the object is refused by some stores.
        match self.op.read(FILTER_KEY).await {
            Ok(buffer) if buffer.len() > filter::MAX_FILTER => {
                return Err(RemoteError::Other("the key filter is too large".into()));
            }
            Ok(buffer) => return Ok(Some(buffer.to_bytes())),
            Err(err) if err.kind() == ErrorKind::NotFound => {}
            Err(err) => return Err((self.classifier())(err)),
        }
        let mut listed = self.op.lister("v1/").await.map_err(self.classifier())?;
        while let Some(entry) = listed.next().await {
            if entry.map_err(self.classifier())?.metadata().is_file() {
                return Ok(None);
            }
        }
        Ok(Some(Bytes::from(
            filter::KeyFilter::empty(std::time::SystemTime::now()).encode(),
        )))
    }

    fn clients_keep_filter(&self) -> bool {
        true
    }

    async fn put_filter(&self, filter: Bytes) -> Result<(), RemoteError> {
        self.write_whole(FILTER_KEY, filter).await
    }

    // Packs.

    fn has_packs(&self) -> bool {
        true
    }

    async fn get_pack(
        &self,
        key: &BuildKey,
        range: Range<u64>,
    ) -> Result<Option<ByteStream>, RemoteError> {
        self.open_read(&pack_key(key), range).await
    }

    async fn put_pack(&self, key: &BuildKey, pack: Upload) -> Result<(), RemoteError> {
        let key = pack_key(key);
        match pack {
            Upload::Bytes(bytes) => self.op.write(&key, bytes).await.map(drop),
            Upload::File { path, .. } => self.write_file(&key, &path, false).await,
        }
        .map_err(self.classifier())
    }
}

/// The bucket's objects for `gc-remote`: listings carry the service's sizes and
/// last-modified times, and deletes go out as the service's batch deletes.
#[async_trait]
impl Inventory for ObjectStore {
    async fn list(
        &self,
        namespace: Option<&Namespace>,
        area: Area,
    ) -> Result<futures::stream::BoxStream<'static, Result<StoredObject, RemoteError>>, RemoteError>
    {
        let lister = self
            .op
            .lister_with(&area.dir_in(namespace))
            .recursive(true)
            .await
            .map_err(self.classifier())?;
        Ok(lister
            .map_err(self.classifier())
            .try_filter(|entry| futures::future::ready(entry.metadata().is_file()))
            .map_ok(|entry| {
                let meta = entry.metadata();
                StoredObject {
                    key: entry.path().to_string(),
                    size: meta.content_length(),
                    modified: meta
                        .last_modified()
                        .map(SystemTime::from)
                        .unwrap_or_else(SystemTime::now),
                }
            })
            .boxed())
    }

    /// One level of `ns/`, by delimiter: the service answers with the common prefixes, one
    /// per namespace, however many objects each holds.
    async fn namespace_dirs(&self) -> Result<Vec<String>, RemoteError> {
        let lister = self
            .op
            .lister(NAMESPACES)
            .await
            .map_err(self.classifier())?;
        lister
            .map_err(self.classifier())
            .try_filter_map(|entry| {
                let name = entry
                    .path()
                    .strip_prefix(NAMESPACES)
                    .and_then(|rest| rest.strip_suffix('/'))
                    .filter(|name| !name.is_empty() && entry.metadata().is_dir())
                    .map(str::to_string);
                futures::future::ready(Ok(name))
            })
            .try_collect()
            .await
    }

    async fn read(&self, key: &str, limit: usize) -> Result<Option<Bytes>, RemoteError> {
        match self.op.read(key).await {
            Ok(buffer) if buffer.len() > limit => Err(RemoteError::Other(format!(
                "{key} is larger than {limit} bytes"
            ))),
            Ok(buffer) => Ok(Some(buffer.to_bytes())),
            Err(err) if err.kind() == ErrorKind::NotFound => Ok(None),
            Err(err) => Err((self.classifier())(err)),
        }
    }

    async fn delete(&self, keys: &[String]) -> Result<(), RemoteError> {
        self.op
            .delete_iter(keys.iter().map(String::as_str))
            .await
            .map_err(self.classifier())
    }

    async fn write(&self, key: &str, bytes: Bytes) -> Result<(), RemoteError> {
        self.write_whole(key, bytes).await
    }

    fn delete_batch(&self) -> usize {
        self.service.delete_batch()
    }

    fn location(&self) -> String {
        self.location.clone()
    }
}

/// OpenDAL's error kind inside an I/O error from a byte stream.
fn opendal_kind(err: &std::io::Error) -> Option<ErrorKind> {
    err.get_ref()
        .and_then(|inner| inner.downcast_ref::<opendal::Error>())
        .map(opendal::Error::kind)
}

fn classify_io(service: Service, err: std::io::Error) -> RemoteError {
    match err
        .into_inner()
        .map(|inner| inner.downcast::<opendal::Error>())
    {
        Some(Ok(err)) => classify(service, *err),
        Some(Err(inner)) => RemoteError::Transient(inner.to_string()),
        None => RemoteError::Transient("reading the entry failed".into()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::mpsc;

    /// An HTTP server that answers every request with `status` and sends each request line
    /// (with its headers) to the test.
    pub(crate) fn answering(status: &'static str) -> (String, mpsc::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
                let answer = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\
                     Connection: close\r\n\r\n{{}}"
                );
                let _ = stream.write_all(answer.as_bytes());
            }
        });
        (endpoint, rx)
    }

    /// OpenDAL's S3 requests carry no `Accept-Encoding` and so sign none: GCS's S3
    /// interoperability, which rewrites that header, cannot break their signature (see
    /// docs/gcs-azure.md).
    #[tokio::test]
    async fn s3_requests_send_and_sign_no_accept_encoding() {
        use crate::store::RemoteStore;
        let (endpoint, requests) = answering("404 Not Found");
        let store = crate::store::s3::S3Config {
            bucket: "b".into(),
            prefix: "p".into(),
            endpoint: Some(endpoint),
            region: Some("us-east-1".into()),
            force_path_style: true,
            instance_metadata: false,
            connect_timeout: std::time::Duration::from_secs(5),
            request_timeout: std::time::Duration::from_secs(10),
            static_credentials: Some(crate::store::s3::S3Credentials::new("AKID", "secret")),
        }
        .open()
        .unwrap();
        let action = crate::ids::ActionId([1; 32]);
        assert!(store.get(&action).await.unwrap().is_none());
        assert_eq!(store.head(&action).await.unwrap(), None);
        let requests: Vec<String> = requests.try_iter().collect();
        assert_eq!(requests.len(), 2, "{requests:?}");
        for request in requests {
            let lower = request.to_ascii_lowercase();
            assert!(
                lower.contains("authorization: aws4-hmac-sha256"),
                "{request}"
            );
            assert!(!lower.contains("accept-encoding"), "{request}");
        }
    }
}
