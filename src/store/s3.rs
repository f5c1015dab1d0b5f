//! The S3 backend: AWS S3, S3 Express One Zone directory buckets, and S3-compatible stores
//! (MinIO, Ceph, R2, GCS interoperability, garage), through OpenDAL.
//!
//! Entries live at `<prefix>/v1/<actionid-hex>` in the bucket. Credentials come from the
//! standard AWS chain (`AWS_*` variables, shared config and credential files, web identity);
//! the EC2 instance metadata service is asked only with `--s3-instance-metadata`, because
//! without credentials it can stall start-up for seconds off EC2. A bucket named
//! `name--zone--x-s3` uses S3 Express One Zone session authentication (OpenDAL does this when
//! no custom endpoint is given). OpenDAL's own retries are not enabled: the cache decides
//! what to retry, so that a get never waits long.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use opendal::layers::TimeoutLayer;
use opendal::services::S3;
use opendal::{ErrorKind, HttpTransporter, Operator};
use opendal_http_transport_reqwest::ReqwestTransport;

use super::explain::{self, Cause};
use super::inventory::{Area, Inventory, NAMESPACES, StoredObject};
use super::{ByteStream, PutOutcome, RemoteError, RemoteStore, Upload, entry_key, manifest_key};
use crate::ids::{ActionId, BuildKey, Namespace};

/// Multipart part size for large entries.
const PART: usize = 8 * 1024 * 1024;
/// Deletes in flight during `clear`.
const CLEAR_CONCURRENCY: usize = 16;
/// The most keys in one DeleteObjects request (S3's own limit).
const DELETE_BATCH: usize = 1000;

/// How to reach a bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    pub bucket: String,
    /// Key prefix inside the bucket, without leading or trailing `/` (may be empty).
    pub prefix: String,
    /// A custom endpoint (`http://127.0.0.1:9000`, `https://<account>.r2.cloudflarestorage.com`).
    pub endpoint: Option<String>,
    /// The region; `None` takes `AWS_REGION` / `AWS_DEFAULT_REGION`, then `us-east-1`.
    pub region: Option<String>,
    /// Bucket in the path (`endpoint/bucket/key`) instead of the host name.
    pub force_path_style: bool,
    /// Ask the EC2 instance metadata service for credentials.
    pub instance_metadata: bool,
    /// Give up connecting after this long.
    pub connect_timeout: Duration,
    /// Give up on a request (or a stalled read or write in one) after this long.
    pub request_timeout: Duration,
    /// Fixed credentials, asked before the standard AWS credential chain: the command line's
    /// `GOREMOTECACHE_AWS_*` variables (see `config`), or an embedder's or a test's keys.
    /// `None` takes the standard chain alone.
    pub static_credentials: Option<S3Credentials>,
}

/// An access key ID and its secret, with a session token for temporary credentials. Its
/// `Debug` shows the key ID only.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl S3Credentials {
    /// Long-term keys, without a session token.
    pub fn new(access_key_id: &str, secret_access_key: &str) -> Self {
        Self {
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
            session_token: None,
        }
    }
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

impl S3Config {
    /// The same bucket, with the prefix of `namespace` inside this one's:
    /// `<prefix>/ns/<NAME>` (see docs/format.md).
    pub fn in_namespace(&self, namespace: &Namespace) -> S3Config {
        let prefix = match self.prefix.trim_matches('/') {
            "" => namespace.path(),
            prefix => format!("{prefix}/{}", namespace.path()),
        };
        S3Config {
            prefix,
            ..self.clone()
        }
    }
}

impl S3Config {
    /// The same bucket, with the module proxy's prefix inside this one's: `<prefix>/mod`
    /// (see docs/goproxy.md). Its answers are stored there as entries (`mod/v1/<hex>`, the
    /// immutable ones) and as manifests (`mod/prefetch/v1/<hex>`, the ones that change), under
    /// keys hashed from their request paths.
    pub fn for_modules(&self) -> S3Config {
        let prefix = match self.prefix.trim_matches('/') {
            "" => MODULES.to_owned(),
            prefix => format!("{prefix}/{MODULES}"),
        };
        S3Config {
            prefix,
            ..self.clone()
        }
    }
}

/// The directory (of a storage directory) and prefix (of a bucket) below which the module
/// proxy keeps its answers.
pub const MODULES: &str = "mod";

/// Entries in an S3 bucket.
#[derive(Debug, Clone)]
pub struct S3Store {
    op: Operator,
    location: String,
}

impl S3Store {
    /// Builds the client. No request is made and no credential is looked up until the first
    /// operation.
    pub fn new(config: &S3Config) -> Result<Self, RemoteError> {
        // reqwest needs a TLS crypto provider.
        super::install_crypto_provider();
        let region = config
            .region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok().filter(|r| !r.is_empty()))
            .or_else(|| {
                std::env::var("AWS_DEFAULT_REGION")
                    .ok()
                    .filter(|r| !r.is_empty())
            })
            .unwrap_or_else(|| "us-east-1".to_string());
        let root = format!("/{}", config.prefix.trim_matches('/'));
        let mut builder = S3::default()
            .bucket(&config.bucket)
            .root(&root)
            .region(&region);
        if let Some(endpoint) = &config.endpoint {
            builder = builder.endpoint(endpoint);
        }
        if !config.force_path_style {
            builder = builder.enable_virtual_host_style();
        }
        if !config.instance_metadata {
            builder = builder.disable_ec2_metadata();
        }
        // Fixed credentials go first in OpenDAL's chain, so the `AWS_*` variables and files
        // are not asked; the rest of the configuration (AWS_ENDPOINT_URL) still applies.
        if let Some(credentials) = &config.static_credentials {
            builder = builder
                .access_key_id(&credentials.access_key_id)
                .secret_access_key(&credentials.secret_access_key);
            if let Some(token) = &credentials.session_token {
                builder = builder.session_token(token);
            }
        }
        let op = Operator::new(builder).map_err(classify)?;
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.request_timeout)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|err| RemoteError::Config(format!("building the HTTP client: {err}")))?;
        let context = op
            .base_context()
            .with_http_transport(HttpTransporter::new(ReqwestTransport::new(client)));
        let op = op.with_context(context).layer(
            TimeoutLayer::new()
                .with_timeout(config.request_timeout)
                .with_io_timeout(config.request_timeout),
        );
        let prefix = config.prefix.trim_matches('/');
        let location = if prefix.is_empty() {
            format!("s3://{}", config.bucket)
        } else {
            format!("s3://{}/{prefix}", config.bucket)
        };
        Ok(Self { op, location })
    }
}

/// Sorts OpenDAL's errors into what the cache acts on, worded by [`explain`] as one sentence
/// with the cause and the fix; the raw error goes to the debug log.
fn classify(err: opendal::Error) -> RemoteError {
    tracing::debug!("S3 error: {err}");
    let (message, cause) = explain::opendal(&err, &explain::S3);
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
impl RemoteStore for S3Store {
    async fn get(&self, action: &ActionId) -> Result<Option<ByteStream>, RemoteError> {
        let key = entry_key(action);
        let opened = match self.op.reader(&key).await {
            Ok(reader) => reader.into_bytes_stream(..).await,
            Err(err) => Err(err),
        };
        let mut stream = match opened {
            Ok(stream) => stream,
            Err(err) if err.kind() == ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(classify(err)),
        };
        // The request goes out on the first poll: a missing entry shows here, as NotFound.
        let first = match stream.next().await {
            None => return Ok(Some(futures::stream::empty().boxed())),
            Some(Ok(bytes)) => bytes,
            Some(Err(err)) => {
                return match opendal_kind(&err) {
                    Some(ErrorKind::NotFound) => Ok(None),
                    _ => Err(classify_io(err)),
                };
            }
        };
        let rest = stream.map_err(classify_io);
        Ok(Some(
            futures::stream::once(async move { Ok(first) })
                .chain(rest)
                .boxed(),
        ))
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
            Upload::File { path, .. } => {
                let writer = self
                    .op
                    .writer_with(&key)
                    .chunk(PART)
                    .if_not_exists(true)
                    .await;
                match writer {
                    Ok(mut writer) => {
                        let result = async {
                            let mut file = tokio::fs::File::open(&path).await.map_err(|err| {
                                opendal::Error::new(
                                    ErrorKind::Unexpected,
                                    format!("reading {}: {err}", path.display()),
                                )
                            })?;
                            let mut buf = vec![0u8; 1024 * 1024];
                            loop {
                                use tokio::io::AsyncReadExt;
                                let n = file.read(&mut buf).await.map_err(|err| {
                                    opendal::Error::new(ErrorKind::Unexpected, err.to_string())
                                })?;
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
                    Err(err) => Err(err),
                }
            }
        };
        match written {
            Ok(()) => Ok(PutOutcome::Stored),
            Err(err) if err.kind() == ErrorKind::ConditionNotMatch => Ok(PutOutcome::Exists),
            Err(err) => Err(classify(err)),
        }
    }

    async fn head(&self, action: &ActionId) -> Result<Option<u64>, RemoteError> {
        match self.op.stat(&entry_key(action)).await {
            Ok(meta) => Ok(Some(meta.content_length())),
            Err(err) if err.kind() == ErrorKind::NotFound => Ok(None),
            Err(err) => Err(classify(err)),
        }
    }

    async fn clear(&self, progress: &(dyn Fn(u64) + Send + Sync)) -> Result<u64, RemoteError> {
        let mut deleted = 0u64;
        // Entries first, then the manifests that list them.
        for dir in ["v1/", "prefetch/"] {
            let entries = self
                .op
                .lister_with(dir)
                .recursive(true)
                .await
                .map_err(classify)?;
            let mut deletes = entries
                .map_err(classify)
                .try_filter(|entry| futures::future::ready(entry.metadata().is_file()))
                .map_ok(|entry| {
                    let op = self.op.clone();
                    async move { op.delete(entry.path()).await.map_err(classify) }
                })
                .try_buffer_unordered(CLEAR_CONCURRENCY);
            while let Some(result) = deletes.next().await {
                result?;
                deleted += 1;
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
            Err(err) => Err(classify(err)),
        }
    }

    async fn put_manifest(&self, key: &BuildKey, manifest: Bytes) -> Result<(), RemoteError> {
        self.op
            .write(&manifest_key(key), manifest)
            .await
            .map(drop)
            .map_err(classify)
    }
}

/// The bucket's objects for `gc-remote`: listings carry S3's sizes and last-modified times,
/// and deletes go out as DeleteObjects requests of up to 1000 keys.
#[async_trait]
impl Inventory for S3Store {
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
            .map_err(classify)?;
        Ok(lister
            .map_err(classify)
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

    /// One level of `ns/`, by delimiter: S3 answers with the common prefixes, one per
    /// namespace, however many objects each holds.
    async fn namespace_dirs(&self) -> Result<Vec<String>, RemoteError> {
        let lister = self.op.lister(NAMESPACES).await.map_err(classify)?;
        lister
            .map_err(classify)
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
            Err(err) => Err(classify(err)),
        }
    }

    async fn delete(&self, keys: &[String]) -> Result<(), RemoteError> {
        self.op
            .delete_iter(keys.iter().map(String::as_str))
            .await
            .map_err(classify)
    }

    fn delete_batch(&self) -> usize {
        DELETE_BATCH
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

fn classify_io(err: std::io::Error) -> RemoteError {
    match err
        .into_inner()
        .map(|inner| inner.downcast::<opendal::Error>())
    {
        Some(Ok(err)) => classify(*err),
        Some(Err(inner)) => RemoteError::Transient(inner.to_string()),
        None => RemoteError::Transient("reading the entry failed".into()),
    }
}
