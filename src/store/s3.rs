//! The S3 backend: AWS S3, S3 Express One Zone directory buckets, and S3-compatible stores
//! (MinIO, Ceph, R2, GCS interoperability, garage), through OpenDAL: this file builds the
//! operator, [`super::object::ObjectStore`] is the store.
//!
//! Entries live at `<prefix>/v1/<actionid-hex>` in the bucket. Credentials come from the
//! `GOREMOTECACHE_AWS_*` variables, then the standard AWS chain (`AWS_*` variables, shared
//! config and credential files, web identity);
//! the EC2 instance metadata service is asked only with `--s3-instance-metadata`, because
//! without credentials it can stall start-up for seconds off EC2. A bucket named
//! `name--zone--x-s3` uses S3 Express One Zone session authentication (OpenDAL does this when
//! no custom endpoint is given).

use std::time::Duration;

use opendal::Operator;
use opendal::services::S3;

use super::RemoteError;
use super::object::{self, ObjectStore, Service, Timeouts};
use crate::ids::Namespace;

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
    /// Where the entries are, for messages: `s3://bucket/prefix`.
    pub fn location(&self) -> String {
        object::location("s3", &self.bucket, &self.prefix)
    }

    /// The same bucket, with the prefix of `namespace` inside this one's:
    /// `<prefix>/ns/<NAME>` (see docs/format.md).
    pub fn in_namespace(&self, namespace: &Namespace) -> S3Config {
        S3Config {
            prefix: object::sub_prefix(&self.prefix, &namespace.path()),
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
        S3Config {
            prefix: object::sub_prefix(&self.prefix, MODULES),
            ..self.clone()
        }
    }
}

/// The directory (of a storage directory) and prefix (of a bucket) below which the module
/// proxy keeps its answers.
pub const MODULES: &str = "mod";

impl S3Config {
    /// The store. No request is made and no credential is looked up until the first
    /// operation.
    pub fn open(&self) -> Result<ObjectStore, RemoteError> {
        let config = self;
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
        let mut builder = S3::default()
            .bucket(&config.bucket)
            .root(&object::root(&config.prefix))
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
        // Fixed keys come first in OpenDAL's chain; the rest of it (the endpoint of
        // AWS_ENDPOINT_URL, say) still applies.
        if let Some(credentials) = &config.static_credentials {
            builder = builder
                .access_key_id(&credentials.access_key_id)
                .secret_access_key(&credentials.secret_access_key);
            if let Some(token) = &credentials.session_token {
                builder = builder.session_token(token);
            }
        }
        let op = Operator::new(builder).map_err(|err| object::classify(Service::S3, err))?;
        ObjectStore::new(
            op,
            Service::S3,
            config.location(),
            Timeouts {
                connect: config.connect_timeout,
                request: config.request_timeout,
            },
        )
    }
}
