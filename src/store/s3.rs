//! The S3 backend: AWS S3, S3 Express One Zone directory buckets, and S3-compatible stores
//! (MinIO, Ceph, R2, GCS interoperability, garage), through OpenDAL: this file builds the
//! operator, [`super::object::ObjectStore`] is the store.
//!
//! Entries live at `<prefix>/v1/<actionid-hex>` in the bucket. Credentials come from the
//! standard AWS chain (`AWS_*` variables, shared config and credential files, web identity);
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
    /// A fixed access key ID and secret (for embedding and tests); `None` takes the standard
    /// AWS credential chain, as the command line always does.
    pub static_credentials: Option<(String, String)>,
}

impl S3Config {
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
        if let Some((key, secret)) = &config.static_credentials {
            builder = builder
                .access_key_id(key)
                .secret_access_key(secret)
                .disable_config_load();
        }
        let op = Operator::new(builder).map_err(|err| RemoteError::Config(err.to_string()))?;
        ObjectStore::new(
            op,
            Service::S3,
            object::location("s3", &config.bucket, &config.prefix),
            Timeouts {
                connect: config.connect_timeout,
                request: config.request_timeout,
            },
        )
    }
}
