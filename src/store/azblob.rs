//! The Azure Blob Storage backend, through OpenDAL's `azblob` service: this file builds the
//! operator, [`super::object::ObjectStore`] is the store.
//!
//! Entries live at `<prefix>/v1/<actionid-hex>` in the container. The account comes from
//! `--azblob-account` (or `AZURE_STORAGE_ACCOUNT`), the endpoint from `--azblob-endpoint`
//! (default `https://<account>.blob.core.windows.net`). Credentials, first found first used:
//! `AZURE_STORAGE_CONNECTION_STRING` (its account, key or SAS, and endpoint, where the
//! flags give none), `AZURE_STORAGE_KEY` (a shared key), `AZURE_STORAGE_SAS_TOKEN`; then
//! what OpenDAL's default chain finds (`AZURE_STORAGE_ACCOUNT_NAME` and
//! `AZURE_STORAGE_ACCOUNT_KEY`, `AZURE_STORAGE_BEARER_TOKEN`, a service principal's
//! `AZURE_CLIENT_ID`/`AZURE_TENANT_ID`/`AZURE_CLIENT_SECRET` or certificate, workload
//! identity (`AZURE_FEDERATED_TOKEN_FILE`), the Azure CLI's login, and the VM's managed
//! identity).
//!
//! Conditional create: OpenDAL 0.59.5 writes an entry as a block blob: blocks are staged
//! unconditionally (Put Block, 8 MiB each, streamed from the file), and the commit (Put Block
//! List) carries `If-None-Match: *`; a small entry is one Put Blob with the same header.
//! Azure answers 409 (BlobAlreadyExists) or 412 when the blob exists, which OpenDAL reports as
//! `ConditionNotMatch` and the store as [`super::PutOutcome::Exists`]; the staged blocks of a
//! losing writer are dropped by Azure after a week. Azurite honours the header on both
//! requests (checked by `store_conformance::azblob`).

use std::time::Duration;

use opendal::Operator;
use opendal::services::Azblob;

use super::RemoteError;
use super::object::{self, ObjectStore, Service, Timeouts};
use super::s3::MODULES;
use crate::ids::Namespace;

/// How to reach a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzblobConfig {
    pub container: String,
    /// Blob name prefix inside the container, without leading or trailing `/` (may be empty).
    pub prefix: String,
    /// The storage account; `None` takes the connection string's, or the endpoint's host.
    pub account: Option<String>,
    /// The Blob service endpoint; `None`: `https://<account>.blob.core.windows.net`, or the
    /// connection string's.
    pub endpoint: Option<String>,
    /// Give up connecting after this long.
    pub connect_timeout: Duration,
    /// Give up on a request (or a stalled read or write in one) after this long.
    pub request_timeout: Duration,
    /// A fixed shared key (for embedding and tests); `None` reads the variables of the
    /// module docs, as the command line always does.
    pub static_key: Option<String>,
}

/// The standard Azure variables read here (`az storage` reads the same names).
pub const ACCOUNT: &str = "AZURE_STORAGE_ACCOUNT";
pub const CONNECTION_STRING: &str = "AZURE_STORAGE_CONNECTION_STRING";
pub const ACCOUNT_KEY: &str = "AZURE_STORAGE_KEY";
pub const SAS_TOKEN: &str = "AZURE_STORAGE_SAS_TOKEN";

impl AzblobConfig {
    /// Where the entries are, for messages: `azblob://container/prefix`.
    pub fn location(&self) -> String {
        object::location("azblob", &self.container, &self.prefix)
    }

    /// The same container, with the prefix of `namespace` inside this one's.
    pub fn in_namespace(&self, namespace: &Namespace) -> AzblobConfig {
        AzblobConfig {
            prefix: object::sub_prefix(&self.prefix, &namespace.path()),
            ..self.clone()
        }
    }

    /// The same container, with the module proxy's prefix inside this one's: `<prefix>/mod`.
    pub fn for_modules(&self) -> AzblobConfig {
        AzblobConfig {
            prefix: object::sub_prefix(&self.prefix, MODULES),
            ..self.clone()
        }
    }

    /// The store. No request is made and no credential is looked up until the first
    /// operation.
    pub fn open(&self) -> Result<ObjectStore, RemoteError> {
        self.open_with_env(&|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    }

    /// [`AzblobConfig::open`] with the environment read through `env`.
    pub fn open_with_env(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ObjectStore, RemoteError> {
        let config_err = |err: opendal::Error| RemoteError::Config(err.to_string());
        let mut builder = match (&self.static_key, env(CONNECTION_STRING)) {
            (None, Some(conn)) => Azblob::from_connection_string(&conn).map_err(|err| {
                RemoteError::Config(format!("{CONNECTION_STRING} is not usable: {err}"))
            })?,
            _ => Azblob::default(),
        };
        builder = builder
            .container(&self.container)
            .root(&object::root(&self.prefix));
        if let Some(account) = &self.account {
            builder = builder.account_name(account);
        }
        match (&self.endpoint, &self.account) {
            (Some(endpoint), _) => builder = builder.endpoint(endpoint),
            (None, Some(account)) => {
                builder = builder.endpoint(&format!("https://{account}.blob.core.windows.net"))
            }
            // The connection string's endpoint, or OpenDAL's "endpoint is empty".
            (None, None) => {}
        }
        match &self.static_key {
            Some(key) => builder = builder.account_key(key),
            None => {
                if let Some(key) = env(ACCOUNT_KEY) {
                    builder = builder.account_key(&key);
                }
                if let Some(sas) = env(SAS_TOKEN) {
                    builder = builder.sas_token(&sas);
                }
            }
        }
        let op = Operator::new(builder).map_err(config_err)?;
        ObjectStore::new(
            op,
            Service::Azblob,
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
    use crate::store::RemoteStore;
    use crate::store::object::tests::answering;

    fn config() -> AzblobConfig {
        AzblobConfig {
            container: "c".into(),
            prefix: "ci".into(),
            account: None,
            endpoint: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            static_key: None,
        }
    }

    /// The first request's head, after a `head` of one entry through `store`.
    async fn first_request(
        store: ObjectStore,
        requests: std::sync::mpsc::Receiver<String>,
    ) -> String {
        assert_eq!(store.head(&ActionId([3; 32])).await.unwrap(), None);
        requests.try_recv().unwrap()
    }

    /// A connection string gives the account, its key and the endpoint.
    #[tokio::test]
    async fn a_connection_string_names_account_key_and_endpoint() {
        let (endpoint, requests) = answering("404 Not Found");
        let conn = format!(
            "DefaultEndpointsProtocol=http;AccountName=acct;AccountKey=a2V5;BlobEndpoint={endpoint}/acct;"
        );
        let env = move |name: &str| (name == CONNECTION_STRING).then(|| conn.clone());
        let store = config().open_with_env(&env).unwrap();
        let request = first_request(store, requests).await;
        assert!(
            request.starts_with(&format!(
                "HEAD /acct/c/ci/v1/{} ",
                ActionId([3; 32]).to_hex()
            )),
            "{request}"
        );
        assert!(
            request
                .to_ascii_lowercase()
                .contains("authorization: sharedkey acct:"),
            "{request}"
        );
    }

    /// AZURE_STORAGE_SAS_TOKEN signs by query, with the account and endpoint of the flags.
    #[tokio::test]
    async fn a_sas_token_goes_in_the_query() {
        let (endpoint, requests) = answering("404 Not Found");
        let env = |name: &str| (name == SAS_TOKEN).then(|| "sv=2021-08-06&sig=abc".to_string());
        let store = AzblobConfig {
            account: Some("acct".into()),
            endpoint: Some(format!("{endpoint}/acct")),
            ..config()
        }
        .open_with_env(&env)
        .unwrap();
        let request = first_request(store, requests).await;
        let line = request.lines().next().unwrap();
        assert!(line.contains("sig=abc"), "{request}");
        assert!(
            !request.to_ascii_lowercase().contains("authorization:"),
            "{request}"
        );
    }

    /// An account alone is enough: the endpoint is the account's public one (OpenDAL refuses
    /// a store without an endpoint).
    #[test]
    fn an_account_alone_is_enough() {
        let store = AzblobConfig {
            account: Some("acct".into()),
            ..config()
        }
        .open_with_env(&|_| None)
        .unwrap();
        assert_eq!(store.location(), "azblob://c/ci");
    }
}
