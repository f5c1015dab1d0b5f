//! `gc-remote`: deletes the entries and prefetch manifests of a store's prefix that were last
//! modified more than a given duration ago, except the entries that a recent manifest lists.
//! What the last builds asked for survives, however old it is; what no recent build asked for
//! goes once it is old.
//!
//! A manifest's modified time is the time a build last used it, give or take a day: a run that
//! leaves its manifest unchanged writes it again once it is more than [`REFRESH`] old
//! ([`super::prefetch`]). An entry's modified time is its upload: entries are never rewritten.
//!
//! Namespaces (`<prefix>/ns/<NAME>/`, docs/s3.md): the run collects the ones selected (the
//! un-namespaced area by default, one with `--namespace`, all with `--all-namespaces`), but
//! it reads the recent manifests of every namespace, selected or not. A manifest may list
//! entries of another namespace (a pull request's lists the entries of main that it read), and
//! an entry is kept if any recent manifest lists it in the namespace it lives in: the kept set
//! is keyed by (namespace, action). Only the entries and manifests of the selected namespaces
//! are ever deleted.
//!
//! The order of the work is what keeps it safe:
//!
//! 1. One cutoff (now minus the duration) decides everything: an object modified at or after
//!    it is recent and kept.
//! 2. The namespaces are listed (one level of `ns/`), then the manifests of every namespace,
//!    and every recent one is read before anything is deleted; the (namespace, action) pairs
//!    they list form the kept set. A recent manifest that cannot be read (a network or
//!    permission failure) stops the run with nothing deleted; one that does not decode is
//!    ignored by builds too, so it keeps nothing (and is said).
//! 3. The entries of the selected namespaces are listed: an old entry not in the kept set is
//!    to be deleted.
//! 4. With `--yes`, the old manifests of the selected namespaces are deleted first, then their
//!    old entries, in batches (one DeleteObjects request each on S3, a few at once). Deleting
//!    the manifests first means no build starting meanwhile prefetches entries that are about
//!    to go.
//!
//! Builds running meanwhile: what they upload is newer than the cutoff and never deleted. A
//! build may use an old entry that no recent manifest lists and name it in the manifest it
//! writes at close, after that entry was deleted; the next run of that build then misses it
//! and builds it again. That costs a compile, never a wrong result. Likewise an old manifest
//! that a build rewrites between the listing and the delete is lost, which costs that build
//! one run without prefetch. A namespace created after the listing of `ns/` is neither read
//! nor collected: everything in it is new.
//!
//! Only keys of the two shapes this program writes are touched, in each namespace:
//! `v1/<64 hex digits>` (an entry) and `prefetch/v1/<64 hex digits>` (a manifest). Anything
//! else in a namespace's `v1/` and `prefetch/` (other files, later formats) is counted and
//! kept; anything else under the prefix is not even listed.
//!
//! The module proxy's files (`<prefix>/mod/`, docs/goproxy.md) are a store of their own, laid
//! out like the un-namespaced area: its immutable answers as entries (`mod/v1/<hex>`), its
//! changing ones (version lists, `@latest`) as manifests (`mod/prefetch/v1/<hex>`). They are
//! collected only with `--modules` ([`plan_modules`]), as one more section of the plan, by age
//! alone: a build manifest never lists a module file and a module manifest lists nothing, so
//! an old one goes whatever refers to it. An immutable answer is written once, so its age is
//! its upload, not its last use: a `.zip` that builds still download can go, and the proxy
//! then fetches it from upstream again (a download, never a wrong answer). The same two key
//! shapes are the only ones touched there.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime};

use futures::{StreamExt, TryStreamExt};

use super::manifest::{Manifest, REFRESH};
use crate::ids::{ActionId, Namespace};
use crate::store::filter::{self, KeyFilter};
use crate::store::inventory::{
    self, Area, Inventory, NAMESPACES, StoredObject, below_namespace, namespace_dir,
};
use crate::store::namespace::Selection;
use crate::store::s3::MODULES;
use crate::store::{MAX_MANIFEST, RemoteError, entry_key};

mod report;

/// Recent manifests read at once.
const READ_CONCURRENCY: usize = 8;
/// Delete requests in flight at once.
const DELETE_CONCURRENCY: usize = 4;
/// Tries of one delete request that fails with a transient error.
const DELETE_TRIES: u32 = 3;

/// Why `gc-remote` stopped.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error("listing {dir} in {location}: {source}")]
    List {
        dir: String,
        location: String,
        source: RemoteError,
    },
    #[error(
        "reading the recent prefetch manifest {location}/{key}: {source}; nothing was deleted \
         (every recent manifest must be read first: the entries it lists are kept)"
    )]
    Manifest {
        location: String,
        key: String,
        source: RemoteError,
    },
    #[error("deleting from {location}: {source} ({deleted} objects deleted before that)")]
    Delete {
        location: String,
        deleted: u64,
        source: RemoteError,
    },
}

/// A number of objects and their bytes in the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub count: u64,
    pub bytes: u64,
}

impl Tally {
    fn add(&mut self, object: &StoredObject) {
        self.count += 1;
        self.bytes += object.size;
    }

    fn plus(self, other: Tally) -> Tally {
        Tally {
            count: self.count + other.count,
            bytes: self.bytes + other.bytes,
        }
    }
}

/// What one namespace collected holds, sorted by what `gc-remote` does with it, and the keys
/// to delete there.
#[derive(Debug, Clone, Default)]
pub struct Section {
    /// `None`: the un-namespaced layout (or the module files, if `modules`).
    pub namespace: Option<Namespace>,
    /// The module proxy's files (`<prefix>/mod/`), not a namespace: their entries are its
    /// immutable answers, their manifests its changing ones, and none keeps another.
    pub modules: bool,
    /// Old manifests: deleted.
    pub old_manifests: Tally,
    /// Old entries that no recent manifest lists: deleted.
    pub old_entries: Tally,
    /// Manifests modified since the cutoff: kept, and their entries with them.
    pub recent_manifests: Tally,
    /// Recent manifests that do not decode: kept, but they keep no entry (builds ignore them).
    pub unreadable_manifests: u64,
    /// Entries modified since the cutoff: kept.
    pub recent_entries: Tally,
    /// Old entries that a recent manifest (of any namespace) lists: kept.
    pub listed_entries: Tally,
    /// Packs whose manifest is deleted or gone: deleted.
    pub old_packs: Tally,
    /// Objects in `v1/`, `prefetch/` or `pack/` that are neither an entry, a manifest nor a
    /// pack: never touched.
    pub other: Tally,
    /// Keys relative to the store's prefix.
    manifest_keys: Vec<String>,
    entry_keys: Vec<ActionId>,
    /// The entries kept (recent, or listed by a recent manifest): the key filter written
    /// after the sweep.
    kept_keys: Vec<ActionId>,

    /// Keys relative to the store's prefix.
    pack_keys: Vec<String>,
}

impl Section {
    fn new(namespace: Option<Namespace>) -> Self {
        Section {
            namespace,
            ..Section::default()
        }
    }

    /// The folder of this section below the store's prefix, with its slash: `ns/<NAME>/`,
    /// `mod/`, or nothing.
    fn dir(&self) -> String {
        match self.modules {
            true => format!("{MODULES}/"),
            false => namespace_dir(self.namespace.as_ref()),
        }
    }

    /// The sum of `self` and `other`, without keys (for the report's total).
    fn plus(&self, other: &Section) -> Section {
        Section {
            namespace: None,
            modules: false,
            old_manifests: self.old_manifests.plus(other.old_manifests),
            old_entries: self.old_entries.plus(other.old_entries),
            recent_manifests: self.recent_manifests.plus(other.recent_manifests),
            unreadable_manifests: self.unreadable_manifests + other.unreadable_manifests,
            recent_entries: self.recent_entries.plus(other.recent_entries),
            listed_entries: self.listed_entries.plus(other.listed_entries),
            old_packs: self.old_packs.plus(other.old_packs),
            other: self.other.plus(other.other),
            manifest_keys: Vec::new(),
            entry_keys: Vec::new(),
            kept_keys: Vec::new(),
            pack_keys: Vec::new(),
        }
    }
}

/// What a store holds, sorted by what `gc-remote` does with it: the dry run's report, and
/// the keys to delete.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The store's prefix (the un-namespaced one).
    pub location: String,
    pub older_than: Duration,
    /// Objects modified before this are old.
    pub cutoff: SystemTime,
    /// Whether the selection was every namespace (the report then gives a total).
    pub all: bool,
    /// The namespaces collected, in order: the un-namespaced area first if it is one.
    pub sections: Vec<Section>,
    /// Recent manifests of the namespaces not collected: read for the entries they list.
    pub read_elsewhere: Tally,
    /// How many of those do not decode.
    pub unreadable_elsewhere: u64,
    /// Folders under `ns/` whose names are not namespace names: neither read nor collected.
    pub skipped: Vec<(String, String)>,
}

impl Plan {
    /// Every section added up (the module files among the entries, their lists among the
    /// manifests).
    pub fn total(&self) -> Section {
        self.sections
            .iter()
            .fold(Section::default(), |sum, section| sum.plus(section))
    }

    /// The section of `namespace`, if it is collected.
    pub fn section(&self, namespace: Option<&Namespace>) -> Option<&Section> {
        self.sections
            .iter()
            .find(|s| !s.modules && s.namespace.as_ref() == namespace)
    }

    /// The section of the module files, if they are collected.
    pub fn modules(&self) -> Option<&Section> {
        self.sections.iter().find(|s| s.modules)
    }
}

/// What `--yes` deleted in one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweptSection {
    pub namespace: Option<Namespace>,
    /// The module files' section ([`Section::modules`]).
    pub modules: bool,
    pub manifests: u64,
    pub entries: u64,
    pub packs: u64,
    pub bytes: u64,
}

/// What `--yes` deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Swept {
    pub location: String,
    /// Whether the selection was every namespace (the report then gives a total).
    pub all: bool,
    /// Per namespace collected, in the plan's order.
    pub sections: Vec<SweptSection>,
    pub elapsed: Duration,
}

impl Swept {
    /// Every namespace added up.
    pub fn total(&self) -> SweptSection {
        let mut total = SweptSection {
            namespace: None,
            modules: false,
            manifests: 0,
            entries: 0,
            packs: 0,
            bytes: 0,
        };
        for section in &self.sections {
            total.manifests += section.manifests;
            total.entries += section.entries;
            total.packs += section.packs;
            total.bytes += section.bytes;
        }
        total
    }
}

/// The (namespace, action) pairs that recent manifests list.
type Kept = HashMap<Option<Namespace>, HashSet<ActionId>>;

/// Lists `store` and decides what to delete in the namespaces `selection` names: entries and
/// manifests modified more than `older_than` before `now`, except the entries listed in a
/// manifest, of any namespace, modified since. Nothing is deleted here.
pub async fn plan(
    store: &dyn Inventory,
    selection: &Selection,
    older_than: Duration,
    now: SystemTime,
) -> Result<Plan, GcError> {
    let location = store.location();
    let cutoff = now
        .checked_sub(older_than)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let list_error = |dir: String| {
        let location = location.clone();
        move |source| GcError::List {
            dir: dir.clone(),
            location: location.clone(),
            source,
        }
    };
    let found = inventory::namespaces(store)
        .await
        .map_err(list_error(NAMESPACES.to_string()))?;
    for (dir, why) in &found.skipped {
        tracing::warn!("{location}/{NAMESPACES}{dir}/: skipped, not a namespace: {why}");
    }
    let mut plan = Plan {
        location: location.clone(),
        older_than,
        cutoff,
        all: *selection == Selection::All,
        sections: found
            .select(selection)
            .into_iter()
            .map(Section::new)
            .collect(),
        read_elsewhere: Tally::default(),
        unreadable_elsewhere: 0,
        skipped: found.skipped.clone(),
    };

    // The manifests of every namespace: those found, and the one selected even if it was not.
    let mut every: Vec<Option<Namespace>> = std::iter::once(None)
        .chain(found.namespaces.iter().cloned().map(Some))
        .collect();
    for section in &plan.sections {
        if !every.contains(&section.namespace) {
            every.push(section.namespace.clone());
        }
    }
    let mut recent = Vec::new();
    for namespace in every {
        let dir = Area::Manifests.dir_in(namespace.as_ref());
        let mut manifests = store
            .list(namespace.as_ref(), Area::Manifests)
            .await
            .map_err(list_error(dir.clone()))?;
        let mut section = plan.sections.iter_mut().find(|s| s.namespace == namespace);
        while let Some(object) = manifests
            .try_next()
            .await
            .map_err(list_error(dir.clone()))?
        {
            if !is_manifest_key(&object.key, namespace.as_ref()) {
                if let Some(section) = section.as_deref_mut() {
                    section.other.add(&object);
                }
            } else if object.modified >= cutoff {
                match section.as_deref_mut() {
                    Some(section) => section.recent_manifests.add(&object),
                    None => plan.read_elsewhere.add(&object),
                }
                recent.push((namespace.clone(), object));
            } else if let Some(section) = section.as_deref_mut() {
                section.old_manifests.add(&object);
                section.manifest_keys.push(object.key);
            }
        }
    }

    let recent_keys: HashSet<String> = recent.iter().map(|(_, o)| o.key.clone()).collect();
    let kept = read_manifests(store, recent, &mut plan).await?;

    for section in &mut plan.sections {
        let namespace = section.namespace.clone();
        let dir = Area::Entries.dir_in(namespace.as_ref());
        let kept = kept.get(&namespace);
        let mut entries = store
            .list(namespace.as_ref(), Area::Entries)
            .await
            .map_err(list_error(dir.clone()))?;
        while let Some(object) = entries.try_next().await.map_err(list_error(dir.clone()))? {
            let Some(action) = below_namespace(&object.key, namespace.as_ref())
                .and_then(|key| key.strip_prefix("v1/"))
                .and_then(ActionId::from_key)
            else {
                section.other.add(&object);
                continue;
            };
            if object.modified >= cutoff {
                section.recent_entries.add(&object);
                section.kept_keys.push(action);
            } else if kept.is_some_and(|kept| kept.contains(&action)) {
                section.listed_entries.add(&object);
                section.kept_keys.push(action);
            } else {
                section.old_entries.add(&object);
                section.entry_keys.push(action);
            }
        }
        plan_packs(store, section, &recent_keys, &list_error).await?;
    }
    Ok(plan)
}

/// Sorts the packs of `section`'s namespace: a pack whose manifest is not among the recent
/// ones (`recent_keys`: old, so deleted, or gone) is deleted with it; a pack is worth
/// nothing without its manifest, which names the entries prefetch wants.
async fn plan_packs<E>(
    store: &dyn Inventory,
    section: &mut Section,
    recent_keys: &HashSet<String>,
    list_error: &impl Fn(String) -> E,
) -> Result<(), GcError>
where
    E: FnMut(RemoteError) -> GcError,
{
    let namespace = section.namespace.clone();
    let dir = Area::Packs.dir_in(namespace.as_ref());
    let mut packs = store
        .list(namespace.as_ref(), Area::Packs)
        .await
        .map_err(list_error(dir.clone()))?;
    while let Some(object) = packs.try_next().await.map_err(list_error(dir.clone()))? {
        let Some(key) = below_namespace(&object.key, namespace.as_ref())
            .and_then(|key| key.strip_prefix("pack/v1/"))
            .and_then(crate::ids::BuildKey::from_key)
        else {
            section.other.add(&object);
            continue;
        };
        let manifest = format!(
            "{}{}",
            namespace_dir(namespace.as_ref()),
            crate::store::manifest_key(&key)
        );
        if !recent_keys.contains(&manifest) {
            section.old_packs.add(&object);
            section.pack_keys.push(object.key);
        }
    }
    Ok(())
}

/// The (namespace, action) pairs that the `recent` manifests list, each manifest read as
/// stored in its namespace (an entry without a namespace of its own is in the manifest's).
async fn read_manifests(
    store: &dyn Inventory,
    recent: Vec<(Option<Namespace>, StoredObject)>,
    plan: &mut Plan,
) -> Result<Kept, GcError> {
    let mut kept = Kept::new();
    let mut reads = futures::stream::iter(recent)
        .map(|(namespace, object)| async move {
            let read = if object.size > MAX_MANIFEST as u64 {
                Ok(None)
            } else {
                store.read(&object.key, MAX_MANIFEST).await.map(Some)
            };
            (namespace, object, read)
        })
        .buffer_unordered(READ_CONCURRENCY);
    while let Some((namespace, object, read)) = reads.next().await {
        let unusable = match read {
            Ok(Some(Some(bytes))) => match Manifest::decode(&bytes, namespace.as_ref()) {
                Ok(manifest) => {
                    for entry in manifest.entries {
                        kept.entry(entry.namespace)
                            .or_default()
                            .insert(entry.action);
                    }
                    None
                }
                Err(err) => Some(format!("not a usable manifest: {err}")),
            },
            // Deleted since the listing: it keeps nothing any more.
            Ok(Some(None)) => None,
            Ok(None) => Some("too large to be a manifest".to_string()),
            Err(source) => {
                return Err(GcError::Manifest {
                    location: plan.location.clone(),
                    key: object.key,
                    source,
                });
            }
        };
        if let Some(why) = unusable {
            tracing::warn!("{}/{}: {why}", plan.location, object.key);
            match plan.sections.iter_mut().find(|s| s.namespace == namespace) {
                Some(section) => section.unreadable_manifests += 1,
                None => plan.unreadable_elsewhere += 1,
            }
        }
    }
    Ok(kept)
}

/// Adds the module files to `plan`, as its last section: `modules` is the module proxy's
/// store (`config.for_modules().open()`), whose keys are relative to `<prefix>/mod`.
/// Its `v1/` and `prefetch/` are listed, and every entry and manifest modified before the
/// plan's cutoff is to be deleted; nothing keeps one. Other objects there are counted and
/// kept, as in a namespace. Nothing is deleted here.
pub async fn plan_modules(modules: &dyn Inventory, plan: &mut Plan) -> Result<(), GcError> {
    let mut section = Section {
        modules: true,
        ..Section::default()
    };
    for area in [Area::Manifests, Area::Entries] {
        let dir = format!("{MODULES}/{}", area.dir());
        let list_error = |source| GcError::List {
            dir: dir.clone(),
            location: plan.location.clone(),
            source,
        };
        let mut objects = modules.list(None, area).await.map_err(list_error)?;
        while let Some(object) = objects.try_next().await.map_err(list_error)? {
            let recent = object.modified >= plan.cutoff;
            match area {
                Area::Manifests if !is_manifest_key(&object.key, None) => {
                    section.other.add(&object)
                }
                Area::Manifests if recent => section.recent_manifests.add(&object),
                Area::Manifests => {
                    section.old_manifests.add(&object);
                    section
                        .manifest_keys
                        .push(format!("{MODULES}/{}", object.key));
                }
                // Not listed here: the module proxy writes no packs.
                Area::Packs => section.other.add(&object),
                Area::Entries => {
                    match object.key.strip_prefix("v1/").and_then(ActionId::from_key) {
                        None => section.other.add(&object),
                        Some(_) if recent => section.recent_entries.add(&object),
                        Some(action) => {
                            section.old_entries.add(&object);
                            section.entry_keys.push(action);
                        }
                    }
                }
            }
        }
    }
    plan.sections.push(section);
    Ok(())
}

/// `prefetch/v1/<64 lowercase hex digits>` in `namespace`: a key
/// [`crate::store::manifest_key`] makes.
fn is_manifest_key(key: &str, namespace: Option<&Namespace>) -> bool {
    below_namespace(key, namespace)
        .and_then(|key| key.strip_prefix("prefetch/v1/"))
        .and_then(crate::ids::BuildKey::from_key)
        .is_some()
}

/// Deletes what `plan` found old: the manifests of every namespace first, then the entries,
/// in batches, a few at once; `progress` gets the running count after every thousand or so.
pub async fn sweep(
    store: &dyn Inventory,
    plan: &Plan,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<Swept, GcError> {
    let start = Instant::now();
    let batch = store.delete_batch().max(1);
    let mut deleted = 0u64;
    // The manifests first, all of them, then the entries; keys are made a batch at a time.
    let manifests = plan
        .sections
        .iter()
        .flat_map(|section| section.manifest_keys.chunks(batch).map(<[String]>::to_vec));
    let entries = plan.sections.iter().flat_map(|section| {
        let dir = section.dir();
        section.entry_keys.chunks(batch).map(move |actions| {
            actions
                .iter()
                .map(|action| format!("{dir}{}", entry_key(action)))
                .collect::<Vec<_>>()
        })
    });
    // The packs after their manifests: a build that finds no manifest reads no pack.
    let packs = plan
        .sections
        .iter()
        .flat_map(|section| section.pack_keys.chunks(batch).map(<[String]>::to_vec));
    let phases: [Box<dyn Iterator<Item = Vec<String>> + Send + '_>; 3] =
        [Box::new(manifests), Box::new(packs), Box::new(entries)];
    for batches in phases {
        let mut deletes = futures::stream::iter(batches)
            .map(|keys| async move { delete_retried(store, &keys).await.map(|()| keys.len()) })
            .buffered(DELETE_CONCURRENCY);
        while let Some(done) = deletes.next().await {
            let done = done.map_err(|source| GcError::Delete {
                location: plan.location.clone(),
                deleted,
                source,
            })? as u64;
            let before = deleted;
            deleted += done;
            if deleted / 1000 > before / 1000 {
                progress(deleted);
            }
        }
    }
    Ok(Swept {
        location: plan.location.clone(),
        all: plan.all,
        sections: plan
            .sections
            .iter()
            .map(|section| SweptSection {
                namespace: section.namespace.clone(),
                modules: section.modules,
                manifests: section.manifest_keys.len() as u64,
                entries: section.entry_keys.len() as u64,
                packs: section.pack_keys.len() as u64,
                bytes: section.old_manifests.bytes
                    + section.old_entries.bytes
                    + section.old_packs.bytes,
            })
            .collect(),
        elapsed: start.elapsed(),
    })
}

/// After a sweep, writes each collected namespace's key filter ([`crate::store::filter`]):
/// the entries kept. That is the filter that builds extend afterwards, smaller than before by
/// what was deleted, and a bucket's first one if builds kept none yet. A filter that a build
/// wrote since `started` (the plan's listing may have missed what it stored) is merged in, not
/// replaced. Returns the filters written and the keys in them; a failure is said and skipped:
/// builds then keep using the filter that is there.
pub async fn write_filters(store: &dyn Inventory, plan: &Plan, started: SystemTime) -> (u64, u64) {
    let (mut filters, mut keys) = (0, 0);
    for section in plan.sections.iter().filter(|s| !s.modules) {
        let key = format!("{}{}", section.dir(), crate::store::FILTER_KEY);
        let mut filter = KeyFilter::of(section.kept_keys.iter().copied(), SystemTime::now());
        if let Ok(Some(bytes)) = store.read(&key, filter::MAX_FILTER).await
            && let Ok(current) = KeyFilter::decode(&bytes)
            && current.made() >= started
        {
            filter = current.with(section.kept_keys.iter().copied(), SystemTime::now());
        }
        match store.write(&key, filter.encode().into()).await {
            Ok(()) => {
                filters += 1;
                keys += filter.len() as u64;
            }
            Err(err) => eprintln!(
                "goremotecache: {}: writing the key filter failed: {err}",
                inventory::describe(&plan.location, section.namespace.as_ref())
            ),
        }
    }
    (filters, keys)
}

/// One delete request, tried again after a transient failure.
async fn delete_retried(store: &dyn Inventory, keys: &[String]) -> Result<(), RemoteError> {
    let mut tries = 0;
    loop {
        tries += 1;
        match store.delete(keys).await {
            Err(RemoteError::Transient(why)) if tries < DELETE_TRIES => {
                tracing::debug!(
                    "a delete of {} keys failed ({why}); trying again",
                    keys.len()
                );
                tokio::time::sleep(Duration::from_millis(250) * tries).await;
            }
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests;
