//! `gc-remote`: deletes the entries and prefetch manifests of a store's prefix that were last
//! modified more than a given duration ago, except the entries that a recent manifest lists.
//! What the last builds asked for survives, however old it is; what no recent build asked for
//! goes once it is old.
//!
//! A manifest's modified time is the time a build last used it, give or take a day: a run that
//! leaves its manifest unchanged writes it again once it is more than [`REFRESH`] old
//! ([`super::prefetch`]). An entry's modified time is its upload: entries are never rewritten.
//!
//! The order of the work is what keeps it safe:
//!
//! 1. One cutoff (now minus the duration) decides everything: an object modified at or after
//!    it is recent and kept.
//! 2. The manifests are listed, and every recent one is read before anything is deleted; the
//!    action IDs they list form the kept set. A recent manifest that cannot be read (a
//!    network or permission failure) stops the run with nothing deleted; one that does not
//!    decode is ignored by builds too, so it keeps nothing (and is said).
//! 3. The entries are listed: an old entry not in the kept set is to be deleted.
//! 4. With `--yes`, the old manifests are deleted first, then the old entries, in batches
//!    (one DeleteObjects request each on S3, a few at once). Deleting the manifests first
//!    means no build starting meanwhile prefetches entries that are about to go.
//!
//! Builds running meanwhile: what they upload is newer than the cutoff and never deleted. A
//! build may use an old entry that no recent manifest lists and name it in the manifest it
//! writes at close, after that entry was deleted; the next run of that build then misses it
//! and builds it again. That costs a compile, never a wrong result. Likewise an old manifest
//! that a build rewrites between the listing and the delete is lost, which costs that build
//! one run without prefetch.
//!
//! Only keys of the two shapes this program writes are touched: `v1/<64 hex digits>` (an
//! entry) and `prefetch/v1/<64 hex digits>` (a manifest). Anything else under the prefix
//! (other files, later formats) is counted and kept.

use std::collections::HashSet;
use std::fmt::{self, Write as _};
use std::time::{Duration, Instant, SystemTime};

use futures::{StreamExt, TryStreamExt};

use super::manifest::{Manifest, REFRESH};
use super::stats::human_bytes;
use crate::ids::ActionId;
use crate::store::inventory::{Area, Inventory, StoredObject};
use crate::store::{MAX_MANIFEST, RemoteError, entry_key};

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
        dir: &'static str,
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
}

/// What a store holds, sorted by what `gc-remote` does with it: the dry run's report, and
/// the keys to delete.
#[derive(Debug, Clone)]
pub struct Plan {
    pub location: String,
    pub older_than: Duration,
    /// Objects modified before this are old.
    pub cutoff: SystemTime,
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
    /// Old entries that a recent manifest lists: kept.
    pub listed_entries: Tally,
    /// Objects that are neither an entry nor a manifest: never touched.
    pub other: Tally,
    manifest_keys: Vec<String>,
    entry_keys: Vec<ActionId>,
}

/// What `--yes` deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub manifests: u64,
    pub entries: u64,
    pub bytes: u64,
    pub elapsed: Duration,
}

/// Lists `store` and decides what to delete: entries and manifests modified more than
/// `older_than` before `now`, except the entries listed in a manifest modified since.
/// Nothing is deleted here.
pub async fn plan(
    store: &dyn Inventory,
    older_than: Duration,
    now: SystemTime,
) -> Result<Plan, GcError> {
    let location = store.location();
    let cutoff = now
        .checked_sub(older_than)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut plan = Plan {
        location: location.clone(),
        older_than,
        cutoff,
        old_manifests: Tally::default(),
        old_entries: Tally::default(),
        recent_manifests: Tally::default(),
        unreadable_manifests: 0,
        recent_entries: Tally::default(),
        listed_entries: Tally::default(),
        other: Tally::default(),
        manifest_keys: Vec::new(),
        entry_keys: Vec::new(),
    };
    let list_error = |area: Area| {
        let location = location.clone();
        move |source| GcError::List {
            dir: area.dir(),
            location: location.clone(),
            source,
        }
    };

    let mut recent = Vec::new();
    let mut manifests = store
        .list(Area::Manifests)
        .await
        .map_err(list_error(Area::Manifests))?;
    while let Some(object) = manifests
        .try_next()
        .await
        .map_err(list_error(Area::Manifests))?
    {
        if !is_manifest_key(&object.key) {
            plan.other.add(&object);
        } else if object.modified >= cutoff {
            plan.recent_manifests.add(&object);
            recent.push(object);
        } else {
            plan.old_manifests.add(&object);
            plan.manifest_keys.push(object.key);
        }
    }

    let kept = read_manifests(store, recent, &mut plan).await?;

    let mut entries = store
        .list(Area::Entries)
        .await
        .map_err(list_error(Area::Entries))?;
    while let Some(object) = entries
        .try_next()
        .await
        .map_err(list_error(Area::Entries))?
    {
        let Some(action) = object.key.strip_prefix("v1/").and_then(ActionId::from_key) else {
            plan.other.add(&object);
            continue;
        };
        if object.modified >= cutoff {
            plan.recent_entries.add(&object);
        } else if kept.contains(&action) {
            plan.listed_entries.add(&object);
        } else {
            plan.old_entries.add(&object);
            plan.entry_keys.push(action);
        }
    }
    Ok(plan)
}

/// The action IDs that the `recent` manifests list.
async fn read_manifests(
    store: &dyn Inventory,
    recent: Vec<StoredObject>,
    plan: &mut Plan,
) -> Result<HashSet<ActionId>, GcError> {
    let mut kept = HashSet::new();
    let mut reads = futures::stream::iter(recent)
        .map(|object| async move {
            let read = if object.size > MAX_MANIFEST as u64 {
                Ok(None)
            } else {
                store.read(&object.key, MAX_MANIFEST).await.map(Some)
            };
            (object, read)
        })
        .buffer_unordered(READ_CONCURRENCY);
    while let Some((object, read)) = reads.next().await {
        match read {
            Ok(Some(Some(bytes))) => match Manifest::decode(&bytes, None) {
                Ok(manifest) => kept.extend(manifest.entries.iter().map(|e| e.action)),
                Err(err) => {
                    tracing::warn!(
                        "{}/{}: not a usable manifest: {err}",
                        plan.location,
                        object.key
                    );
                    plan.unreadable_manifests += 1;
                }
            },
            // Deleted since the listing: it keeps nothing any more.
            Ok(Some(None)) => {}
            Ok(None) => {
                tracing::warn!(
                    "{}/{}: too large to be a manifest",
                    plan.location,
                    object.key
                );
                plan.unreadable_manifests += 1;
            }
            Err(source) => {
                return Err(GcError::Manifest {
                    location: plan.location.clone(),
                    key: object.key,
                    source,
                });
            }
        }
    }
    Ok(kept)
}

/// `prefetch/v1/<64 lowercase hex digits>`: a key [`crate::store::manifest_key`] makes.
fn is_manifest_key(key: &str) -> bool {
    key.strip_prefix("prefetch/v1/")
        .and_then(crate::ids::BuildKey::from_key)
        .is_some()
}

/// Deletes what `plan` found old: the manifests first, then the entries, in batches, a few
/// at once; `progress` gets the running count after every thousand or so.
pub async fn sweep(
    store: &dyn Inventory,
    plan: &Plan,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<Swept, GcError> {
    let start = Instant::now();
    let batch = store.delete_batch().max(1);
    let mut deleted = 0u64;
    // The manifests first, all of them, then the entries; keys are made a batch at a time.
    let manifests = plan.manifest_keys.chunks(batch).map(<[String]>::to_vec);
    let entries = plan
        .entry_keys
        .chunks(batch)
        .map(|actions| actions.iter().map(entry_key).collect::<Vec<_>>());
    let phases: [Box<dyn Iterator<Item = Vec<String>> + Send + '_>; 2] =
        [Box::new(manifests), Box::new(entries)];
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
        manifests: plan.manifest_keys.len() as u64,
        entries: plan.entry_keys.len() as u64,
        bytes: plan.old_manifests.bytes + plan.old_entries.bytes,
        elapsed: start.elapsed(),
    })
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

impl fmt::Display for Plan {
    /// The report of a run: what is deleted and what is kept, and why.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tally =
            |one: &str, t: Tally| format!("{} ({})", counted(t.count, one), human_bytes(t.bytes));
        let mut text = format!(
            "{}: entries and prefetch manifests last modified before {} ({} ago)\n",
            self.location,
            humantime::format_rfc3339_seconds(self.cutoff),
            humantime::format_duration(self.older_than),
        );
        let _ = writeln!(
            text,
            "  to delete: {}, {}",
            tally("entry", self.old_entries),
            tally("manifest", self.old_manifests)
        );
        let _ = writeln!(
            text,
            "  kept: {} modified since",
            tally("entry", self.recent_entries)
        );
        let _ = writeln!(
            text,
            "  kept: {} older but listed in a recent manifest",
            tally("entry", self.listed_entries)
        );
        let _ = writeln!(
            text,
            "  kept: {} modified since",
            tally("manifest", self.recent_manifests)
        );
        if self.unreadable_manifests > 0 {
            let _ = writeln!(
                text,
                "  ({} could not be decoded and keep no entry)",
                counted(self.unreadable_manifests, "recent manifest")
            );
        }
        if self.other.count > 0 {
            let _ = writeln!(
                text,
                "  kept: {} that are neither entries nor manifests",
                tally("other object", self.other)
            );
        }
        if self.older_than <= REFRESH {
            let _ = writeln!(
                text,
                "  note: a build that leaves its manifest unchanged writes it again only once it \
                 is a day old, so builds that ran within {} may lose their entries too: \
                 choose days, not hours",
                humantime::format_duration(self.older_than),
            );
        }
        f.write_str(text.trim_end())
    }
}

/// `1 entry`, `2 entries`, `1 manifest`, `0 manifests`.
fn counted(n: u64, one: &str) -> String {
    match (n, one.strip_suffix('y')) {
        (1, _) => format!("1 {one}"),
        (_, Some(stem)) => format!("{n} {stem}ies"),
        (_, None) => format!("{n} {one}s"),
    }
}

impl fmt::Display for Swept {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "deleted {} and {} ({}) in {:.1}s",
            counted(self.entries, "entry"),
            counted(self.manifests, "manifest"),
            human_bytes(self.bytes),
            self.elapsed.as_secs_f64()
        )
    }
}

#[cfg(test)]
mod tests;
