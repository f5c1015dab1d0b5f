//! Where the server keeps entries, namespace by namespace ([`Storage`]): a storage directory
//! whose namespaces share one bound ([`BoundedDisk`]), or a store per namespace made from
//! the un-namespaced one's configuration (S3: `<prefix>/ns/<NAME>/`, see
//! [`crate::store::s3::S3Config::in_namespace`]), each made on first use and kept.
//!
//! A request resolves its namespace to a `Place` once, after its namespace, token and key
//! are checked. Reading a namespace that has nothing on disk makes nothing there (it is an
//! empty store, `Absent`); only a write makes a namespace's directory.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;

use crate::ids::{ActionId, BuildKey, Namespace};
use crate::store::bounded::{BoundedDisk, BoundedSpace, Usage};
use crate::store::{ByteStream, PutOutcome, RemoteError, RemoteStore, Upload};

/// Stores of namespaces kept at most: past it (names are chosen by clients), a namespace's
/// store is made for the request and dropped after it.
const MAX_KEPT: usize = 4096;

/// Makes the store of a namespace.
type Opener = dyn Fn(&Namespace) -> Result<Arc<dyn RemoteStore>, RemoteError> + Send + Sync;

/// Where a server keeps its entries.
#[derive(Debug)]
pub enum Storage {
    /// A storage directory (`serve --storage-dir`): every namespace under one bound.
    Disk(Arc<BoundedDisk>),
    /// A store that keeps namespaces apart itself (`serve --s3-bucket`).
    Stores(Stores),
}

/// The un-namespaced store, and the namespaces' stores as they are used.
pub struct Stores {
    root: Arc<dyn RemoteStore>,
    open: Box<Opener>,
    kept: Mutex<HashMap<Namespace, Arc<dyn RemoteStore>>>,
}

impl fmt::Debug for Stores {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stores")
            .field("root", &self.root)
            .field("kept", &crate::sync::lock(&self.kept).len())
            .finish()
    }
}

/// One namespace's storage, as one request uses it.
pub(super) struct Place {
    pub store: Arc<dyn RemoteStore>,
    /// The same store, when it is a namespace of a storage directory: a `PUT` is then
    /// admitted under the bound, spooled into its `tmp/` and committed by a rename
    /// ([`BoundedSpace::commit_verified`]). `None` for any other store (and for a read of a
    /// namespace that has no directory).
    pub disk: Option<BoundedSpace>,
}

impl Storage {
    /// A store for the un-namespaced entries, and `open` to make a namespace's (each called
    /// once per namespace, when it is first used).
    pub fn stores(
        root: Arc<dyn RemoteStore>,
        open: impl Fn(&Namespace) -> Result<Arc<dyn RemoteStore>, RemoteError> + Send + Sync + 'static,
    ) -> Self {
        Storage::Stores(Stores {
            root,
            open: Box::new(open),
            kept: Mutex::new(HashMap::new()),
        })
    }

    /// Where the entries are, for messages.
    pub fn location(&self) -> String {
        match self {
            Storage::Disk(disk) => disk.root().location(),
            Storage::Stores(stores) => stores.root.location(),
        }
    }

    /// The storage directory's figures, for `/metrics` (all namespaces together).
    pub fn usage(&self) -> Option<Usage> {
        match self {
            Storage::Disk(disk) => Some(disk.usage()),
            Storage::Stores(_) => None,
        }
    }

    /// The storage of `namespace` (`None`: the un-namespaced entries), for a request that
    /// writes (`write`) or only reads.
    pub(super) async fn place(
        &self,
        namespace: Option<&Namespace>,
        write: bool,
    ) -> Result<Place, RemoteError> {
        match (self, namespace) {
            (Storage::Disk(disk), None) => Ok(Place::disk(disk.root())),
            (Storage::Disk(disk), Some(namespace)) => {
                if let Some(space) = disk.opened(namespace) {
                    return Ok(Place::disk(space));
                }
                // The first use of a namespace looks at (or makes) its directory.
                let (disk, namespace) = (disk.clone(), namespace.clone());
                let space = tokio::task::spawn_blocking(move || disk.namespace(&namespace, write))
                    .await
                    .map_err(|err| RemoteError::Other(err.to_string()))?
                    .map_err(|err| RemoteError::Other(format!("storage: {err}")))?;
                Ok(match space {
                    Some(space) => Place::disk(space),
                    None => Place {
                        store: Arc::new(Absent),
                        disk: None,
                    },
                })
            }
            (Storage::Stores(stores), None) => Ok(Place {
                store: stores.root.clone(),
                disk: None,
            }),
            (Storage::Stores(stores), Some(namespace)) => Ok(Place {
                store: stores.get(namespace)?,
                disk: None,
            }),
        }
    }
}

impl Place {
    fn disk(space: BoundedSpace) -> Self {
        Self {
            store: Arc::new(space.clone()),
            disk: Some(space),
        }
    }
}

impl Stores {
    /// The store of `namespace`, made now if it was not yet.
    fn get(&self, namespace: &Namespace) -> Result<Arc<dyn RemoteStore>, RemoteError> {
        if let Some(store) = crate::sync::lock(&self.kept).get(namespace) {
            return Ok(store.clone());
        }
        let store = (self.open)(namespace)?;
        let mut kept = crate::sync::lock(&self.kept);
        if let Some(made) = kept.get(namespace) {
            // Another request made it meanwhile: one store per namespace.
            return Ok(made.clone());
        }
        if kept.len() < MAX_KEPT {
            kept.insert(namespace.clone(), store.clone());
        }
        Ok(store)
    }
}

/// A namespace of a storage directory that has no directory: nothing in it. Only reads get
/// here (a write makes the directory).
#[derive(Debug)]
pub(super) struct Absent;

#[async_trait]
impl RemoteStore for Absent {
    async fn get(&self, _: &ActionId) -> Result<Option<ByteStream>, RemoteError> {
        Ok(None)
    }

    async fn put(&self, _: &ActionId, _: Upload) -> Result<PutOutcome, RemoteError> {
        Err(RemoteError::Other("a namespace without a directory".into()))
    }

    async fn head(&self, _: &ActionId) -> Result<Option<u64>, RemoteError> {
        Ok(None)
    }

    async fn clear(&self, _: &(dyn Fn(u64) + Send + Sync)) -> Result<u64, RemoteError> {
        Ok(0)
    }

    fn location(&self) -> String {
        "a namespace with nothing stored".into()
    }

    async fn get_manifest(&self, _: &BuildKey) -> Result<Option<Bytes>, RemoteError> {
        Ok(None)
    }

    async fn put_manifest(&self, _: &BuildKey, _: Bytes) -> Result<(), RemoteError> {
        Err(RemoteError::Other("a namespace without a directory".into()))
    }

    async fn get_filter(&self) -> Result<Option<Bytes>, RemoteError> {
        let empty = crate::store::filter::KeyFilter::empty(std::time::SystemTime::now());
        Ok(Some(Bytes::from(empty.encode())))
    }
}
