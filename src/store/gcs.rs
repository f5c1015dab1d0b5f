//! The Google Cloud Storage backend, through OpenDAL's `gcs` service (the JSON API): this file
//! builds the operator, [`super::object::ObjectStore`] is the store.
//!
//! Entries live at `<prefix>/v1/<actionid-hex>` in the bucket, as on S3. Credentials come
//! from the standard Google chain as OpenDAL's service reads it: `GOOGLE_APPLICATION_CREDENTIALS`
//! (a service account key, an authorized user or an external account file), then gcloud's
//! application-default file (`gcloud auth application-default login`, in
//! `$XDG_CONFIG_HOME` or `~/.config/gcloud/application_default_credentials.json`), then the
//! metadata server of a Google Cloud VM or GKE workload identity. `--gcs-anonymous` sends
//! unsigned requests: for an emulator (fake-gcs-server) or a public bucket.
//!
//! `--gcs-endpoint` points the client somewhere else than `https://storage.googleapis.com`:
//! an emulator, a Private Service Connect endpoint, or a regional endpoint. (Anywhere Cache
//! needs no endpoint of its own: it is a cache in front of the bucket, used through the usual
//! endpoint.)
//!
//! Conditional create: OpenDAL 0.59.5 sends every `if_not_exists` write as a resumable upload
//! (`GcsConditionalWriter`: the session is opened with `ifGenerationMatch=0`, the bytes follow
//! in chunks of 8 MiB or less, so a large entry is streamed, never held whole). GCS answers
//! 412 when the object exists, which OpenDAL reports as `ConditionNotMatch` and the store as
//! [`super::PutOutcome::Exists`]. fake-gcs-server honours `ifGenerationMatch=0` on resumable
//! uploads the same way (checked by `store_conformance::gcs`).

use std::time::Duration;

use opendal::Operator;
use opendal::services::Gcs;

use super::RemoteError;
use super::object::{self, ObjectStore, Service, Timeouts};
use super::s3::MODULES;
use crate::ids::Namespace;

/// How to reach a bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcsConfig {
    pub bucket: String,
    /// Object name prefix inside the bucket, without leading or trailing `/` (may be empty).
    pub prefix: String,
    /// Another endpoint than Google's (an emulator, Private Service Connect).
    pub endpoint: Option<String>,
    /// Send unsigned requests, looking up no credentials (emulators, public buckets).
    pub anonymous: bool,
    /// Give up connecting after this long.
    pub connect_timeout: Duration,
    /// Give up on a request (or a stalled read or write in one) after this long.
    pub request_timeout: Duration,
}

impl GcsConfig {
    /// Where the entries are, for messages: `gs://bucket/prefix`.
    pub fn location(&self) -> String {
        object::location("gs", &self.bucket, &self.prefix)
    }

    /// The same bucket, with the prefix of `namespace` inside this one's.
    pub fn in_namespace(&self, namespace: &Namespace) -> GcsConfig {
        GcsConfig {
            prefix: object::sub_prefix(&self.prefix, &namespace.path()),
            ..self.clone()
        }
    }

    /// The same bucket, with the module proxy's prefix inside this one's: `<prefix>/mod`.
    pub fn for_modules(&self) -> GcsConfig {
        GcsConfig {
            prefix: object::sub_prefix(&self.prefix, MODULES),
            ..self.clone()
        }
    }

    /// The store. No request is made and no credential is looked up until the first
    /// operation.
    pub fn open(&self) -> Result<ObjectStore, RemoteError> {
        let mut builder = Gcs::default()
            .bucket(&self.bucket)
            .root(&object::root(&self.prefix));
        if let Some(endpoint) = &self.endpoint {
            builder = builder.endpoint(endpoint);
        }
        if self.anonymous {
            builder = builder.skip_signature().disable_vm_metadata();
        }
        let op = Operator::new(builder).map_err(|err| RemoteError::Config(err.to_string()))?;
        ObjectStore::new(
            op,
            Service::Gcs,
            self.location(),
            Timeouts {
                connect: self.connect_timeout,
                request: self.request_timeout,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ActionId;
    use crate::store::object::tests::answering;
    use crate::store::{PutOutcome, RemoteStore, Upload};

    fn config(endpoint: String) -> GcsConfig {
        GcsConfig {
            bucket: "bkt".into(),
            prefix: "ci".into(),
            endpoint: Some(endpoint),
            anonymous: true,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
        }
    }

    /// A put opens a resumable upload with `ifGenerationMatch=0`, and GCS's 412 for an
    /// object that exists is `Exists` (fake-gcs-server ignores the condition, so the
    /// conformance suite cannot show this).
    #[tokio::test]
    async fn a_refused_condition_is_exists() {
        let (endpoint, requests) = answering("412 Precondition Failed");
        let store = config(endpoint).open().unwrap();
        let action = ActionId([7; 32]);
        let outcome = store
            .put(&action, Upload::Bytes(bytes::Bytes::from_static(b"entry")))
            .await
            .unwrap();
        assert_eq!(outcome, PutOutcome::Exists);
        let first = requests.try_recv().unwrap();
        let line = first.lines().next().unwrap();
        assert!(
            line.starts_with("POST /upload/storage/v1/b/bkt/o?")
                && line.contains("uploadType=resumable")
                && line.contains("ifGenerationMatch=0")
                && line.contains(&format!("ci%2Fv1%2F{}", action.to_hex())),
            "{line}"
        );
        assert_eq!(store.location(), "gs://bkt/ci");
    }
}
