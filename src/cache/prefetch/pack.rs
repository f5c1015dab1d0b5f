//! Prefetch from a pack ([`crate::store::pack`]): the manifest's entries in one object per
//! build key, read with a few ranged GETs instead of one GET per entry, and written after the
//! session when the pack is missing or no longer fits the manifest (docs/prefetch.md).
//!
//! Reading: at start, beside the manifest lookup, one ranged GET brings the pack's header and
//! table of contents (a second if the table is longer). The manifest's entries that the pack
//! holds and the local cache lacks are fetched in ranges of consecutive entries
//! ([`plan_ranges`]), `--prefetch-concurrency`/4 at once. Every entry goes through the tier's
//! fetch-once registry, as a batch's entries do: claimed before its range is asked for (a get
//! of it joins the fetch), decoded and verified like any fetched entry. An entry that does
//! not verify, or that a range cut off, is fetched on its own afterwards; nothing of a bad
//! entry is stored. A pack whose table does not parse is ignored.
//!
//! Writing: after the manifest, from the local cache, in the manifest's order and within the
//! prefetch budget, each entry encoded exactly as an upload encodes it
//! ([`super::super::upload::encode_to`]), streamed to a temporary file and uploaded from it.
//! A direct session writes it once the go command has its last answer and stdout is closed
//! ([`super::Prefetcher::write_due_pack`]), a daemon at its flush. Only when the pack is
//! missing or stale ([`pack_is_stale`]): it re-encodes and uploads every entry.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, Seek, SeekFrom, Write};
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;

use super::Prefetcher;
use crate::cache::manifest::Manifest;
use crate::cache::remote::{Claim, EntryWriter, FetchError, Outcome};
use crate::cache::stats::add;
use crate::cache::upload::{Job, encode_to};
use crate::ids::ActionId;
use crate::local::disk::DiskCache;
use crate::store::Upload;
use crate::store::pack::{
    FIRST_READ, HEADER_LEN, MAX_GAP, PackHeader, PackRange, RANGE_TARGET, ROW_LEN, Toc, TocEntry,
    plan_ranges,
};
use crate::sync::lock;

/// Rewrite the pack when it holds less than this share of the bytes it would hold now.
const MIN_COVERED: f64 = 0.9;
/// Rewrite the pack when more than this share of its bytes are entries the manifest no
/// longer lists.
const MAX_STALE: f64 = 0.25;

impl Prefetcher {
    /// The table of contents of the pack in the namespace at `index`; `None` if there is
    /// none, the store keeps no packs, or it cannot be read or parsed.
    pub(super) async fn load_toc(&self, index: usize) -> Option<Toc> {
        let store = self.tier.namespaces.store(index);
        if !store.has_packs() || !store.usable() {
            return None;
        }
        let mut head = self.read_pack_bytes(index, 0..FIRST_READ).await?;
        let header = match PackHeader::decode(&head) {
            Ok(header) => header,
            Err(err) => {
                tracing::warn!("the prefetch pack {} is unusable: {err}", self.key);
                return None;
            }
        };
        if header.toc_end() > head.len() as u64 && head.len() as u64 == FIRST_READ {
            let rest = self
                .read_pack_bytes(index, FIRST_READ..header.toc_end())
                .await?;
            head.extend_from_slice(&rest);
        }
        match Toc::parse(&head) {
            Ok(toc) => {
                tracing::debug!(key = %self.key, entries = toc.entries.len(), "prefetch pack");
                Some(toc)
            }
            Err(err) => {
                tracing::warn!("the prefetch pack {} is unusable: {err}", self.key);
                None
            }
        }
    }

    /// The bytes `range` of the pack, whole, counted; `None` if there is no pack or the
    /// request failed.
    async fn read_pack_bytes(&self, index: usize, range: std::ops::Range<u64>) -> Option<Vec<u8>> {
        let stats = self.tier.remote_stats();
        add(&stats.pack_requests, 1);
        let store = self.tier.namespaces.store(index);
        let mut stream = match store.get_pack(&self.key, range.clone()).await {
            Ok(found) => found?,
            Err(err) => {
                tracing::debug!("reading the prefetch pack failed: {err}");
                return None;
            }
        };
        let mut bytes = Vec::new();
        while let Some(piece) = stream.next().await {
            match piece {
                Ok(piece) => {
                    add(&stats.pack_bytes_down, piece.len() as u64);
                    add(&stats.bytes_down, piece.len() as u64);
                    bytes.extend_from_slice(&piece);
                    if bytes.len() as u64 > range.end - range.start {
                        tracing::debug!("the prefetch pack answered more than the range asked");
                        return None;
                    }
                }
                // A read past the pack's end (a pack under FIRST_READ bytes) ends with an
                // error after its last byte on OpenDAL's stores: what came is the pack's, and
                // the table's parse says whether it is whole.
                Err(err) if !bytes.is_empty() => {
                    tracing::debug!("the prefetch pack ended before the range: {err}");
                    break;
                }
                Err(err) => {
                    tracing::debug!("reading the prefetch pack failed: {err}");
                    return None;
                }
            }
        }
        Some(bytes)
    }

    /// Fetches the entries of `todo` (each with its namespace's index) that their
    /// namespace's pack holds, the packs of all namespaces at once: a pull request's own
    /// manifest lists the main branch's entries too, which main's pack holds. The own
    /// namespace's table of contents was read at start; another's is read now. Returns the
    /// entries left to fetch alone, in their order.
    pub(super) async fn prefetch_from_packs(
        &self,
        disk: &DiskCache,
        todo: Vec<(ActionId, usize)>,
    ) -> Vec<(ActionId, usize)> {
        let mut by_namespace: BTreeMap<usize, Vec<(ActionId, usize)>> = BTreeMap::new();
        for item in &todo {
            by_namespace.entry(item.1).or_default().push(*item);
        }
        let own = lock(&self.own_toc).clone();
        let left: HashSet<ActionId> =
            futures::future::join_all(by_namespace.into_iter().map(|(index, items)| {
                let own = own.clone();
                async move {
                    let toc = match index {
                        0 => own,
                        _ => self.load_toc(index).await,
                    };
                    match toc {
                        Some(toc) => self.prefetch_from_pack(disk, index, &toc, items).await,
                        None => items,
                    }
                }
            }))
            .await
            .into_iter()
            .flatten()
            .map(|(action, _)| action)
            .collect();
        todo.into_iter()
            .filter(|(action, _)| left.contains(action))
            .collect()
    }

    /// Fetches `todo`'s entries of the namespace at `index` that the pack (of that
    /// namespace, with table `toc`) holds, in ranges; returns the rest of `todo`, to be
    /// fetched entry by entry, with the entries the pack failed to give.
    async fn prefetch_from_pack(
        &self,
        disk: &DiskCache,
        index: usize,
        toc: &Toc,
        todo: Vec<(ActionId, usize)>,
    ) -> Vec<(ActionId, usize)> {
        let in_pack: HashMap<ActionId, TocEntry> =
            toc.entries.iter().map(|e| (e.action, *e)).collect();
        let (packed, mut rest): (Vec<_>, Vec<_>) = todo
            .into_iter()
            .partition(|(action, i)| *i == index && in_pack.contains_key(action));
        let wanted: Vec<TocEntry> = packed.iter().map(|(a, _)| in_pack[a]).collect();
        let ranges = plan_ranges(wanted, RANGE_TARGET, MAX_GAP);
        let concurrency = (self.config.concurrency / 4).max(1);
        let failed: Vec<Vec<ActionId>> = futures::stream::iter(ranges)
            .map(|range| self.prefetch_range(disk, index, range))
            .buffer_unordered(concurrency)
            .collect()
            .await;
        rest.extend(failed.into_iter().flatten().map(|action| (action, index)));
        rest
    }

    /// Fetches one range of the pack in the namespace at `index`, storing each entry as it
    /// completes. Returns the entries it claimed and did not store (the range failed or was
    /// cut, or the entry did not verify).
    async fn prefetch_range(
        &self,
        disk: &DiskCache,
        index: usize,
        range: PackRange,
    ) -> Vec<ActionId> {
        let store = self.tier.namespaces.store(index);
        if !store.usable() {
            return Vec::new();
        }
        // Entries being fetched already (by a get) are left to that fetch.
        let mut claims: HashMap<ActionId, Claim<'_>> = HashMap::new();
        for entry in &range.entries {
            if let Ok(claim) = self.tier.claim(entry.action) {
                if let Ok(Some(_)) = disk.get(&entry.action) {
                    claim.end(Outcome::Found);
                    continue;
                }
                claims.insert(entry.action, claim);
            }
        }
        if claims.is_empty() {
            return Vec::new();
        }
        let stats = self.tier.remote_stats();
        add(&stats.pack_requests, 1);
        let mut stream = match store.get_pack(&self.key, range.range.clone()).await {
            Ok(Some(stream)) => stream,
            Ok(None) => {
                tracing::debug!("the prefetch pack went away");
                return claims.into_keys().collect();
            }
            Err(err) => {
                tracing::debug!("a prefetch pack range failed: {err}");
                return claims.into_keys().collect();
            }
        };
        let mut failed = Vec::new();
        let mut entries = range.entries.iter().peekable();
        let mut pos = range.range.start;
        // The entry being received: its table row, its writer (`None`: not claimed, its
        // bytes are skipped) and whether its decoder still takes bytes.
        let mut current: Option<(TocEntry, Option<EntryWriter>)> = None;
        while let Some(piece) = stream.next().await {
            let mut piece = match piece {
                Ok(piece) => piece,
                Err(err) => {
                    tracing::debug!("a prefetch pack range was cut: {err}");
                    break;
                }
            };
            add(&stats.pack_bytes_down, piece.len() as u64);
            add(&stats.bytes_down, piece.len() as u64);
            while !piece.is_empty() {
                if current.is_none() {
                    let Some(next) = entries.peek() else {
                        piece = Bytes::new(); // past the last entry: not asked for
                        continue;
                    };
                    if pos < next.offset {
                        let skip = (next.offset - pos).min(piece.len() as u64);
                        let _ = piece.split_to(skip as usize);
                        pos += skip;
                        continue;
                    }
                    let next = *entries.next().expect("peeked");
                    let writer = match claims.contains_key(&next.action) {
                        true => {
                            match EntryWriter::start(disk, next.action, self.tier.max_entry_size) {
                                Ok(writer) => {
                                    self.prefetch_begins(next.action);
                                    Some(writer)
                                }
                                Err(err) => {
                                    tracing::debug!("storing a prefetched entry failed: {err}");
                                    None
                                }
                            }
                        }
                        false => None,
                    };
                    current = Some((next, writer));
                }
                let (entry, writer) = current.as_mut().expect("set above");
                let take = (entry.end() - pos).min(piece.len() as u64) as usize;
                let bytes = piece.split_to(take);
                pos += take as u64;
                if let Some(w) = writer
                    && !w.send(bytes).await
                {
                    // The decoder gave up: the entry is bad; its other bytes are skipped.
                    let w = writer.take().expect("some");
                    self.pack_entry_done(entry.action, w.finish().await, &mut claims, index)
                        .then(|| failed.push(entry.action));
                }
                if pos == entry.end() {
                    let (entry, writer) = current.take().expect("set");
                    if let Some(writer) = writer {
                        self.pack_entry_done(
                            entry.action,
                            writer.finish().await,
                            &mut claims,
                            index,
                        )
                        .then(|| failed.push(entry.action));
                    } else if claims.remove(&entry.action).is_some() {
                        failed.push(entry.action);
                    }
                }
            }
        }
        if let Some((entry, writer)) = current {
            if let Some(writer) = writer {
                writer.abort().await;
            }
            lock(&self.unused).remove(&entry.action);
        }
        // Claimed and not settled (cut off): fetched on their own.
        failed.extend(claims.into_keys());
        failed
    }

    /// Settles a pack entry whose bytes ended: stored, or (damaged, or not stored) its claim
    /// ends failed so that a get asks itself; `true` when it is to be fetched on its own.
    fn pack_entry_done(
        &self,
        action: ActionId,
        done: Result<crate::local::disk::Entry, FetchError>,
        claims: &mut HashMap<ActionId, Claim<'_>>,
        index: usize,
    ) -> bool {
        let Some(claim) = claims.remove(&action) else {
            return false;
        };
        match done {
            Ok(entry) => {
                add(&self.tier.remote_stats().pack_entries, 1);
                self.prefetched(claim, &entry, index);
                false
            }
            Err(err) => {
                if let FetchError::Corrupt(err) = &err {
                    add(&self.tier.remote_stats().pack_damaged, 1);
                    tracing::warn!(
                        "the prefetch pack's entry for {action} is damaged ({err}); fetching it on its own"
                    );
                } else if let FetchError::Local(err) = &err {
                    tracing::debug!(action = %action, "storing a pack entry failed: {err}");
                }
                // Not the remote entry's fault: not marked damaged, and asked for again.
                self.prefetch_failed(claim, Outcome::Failed);
                true
            }
        }
    }

    /// Writes this build's pack from the local cache if the one found at start is missing
    /// or stale for `manifest`.
    pub(super) async fn write_pack(&self, manifest: &Manifest) {
        let store = self.tier.store();
        if !store.has_packs() || !store.usable() {
            return;
        }
        let Some(disk) = self.disk.get().cloned() else {
            return;
        };
        let start = Instant::now();
        let _timed = Timed(start, &self.tier.remote_stats().pack_write_nanos);
        let namespaces = &self.tier.namespaces;
        // This namespace's entries, in the manifest's order, within the prefetch budget.
        let mut budget = self.config.max_bytes;
        let listed: Vec<(ActionId, u64)> = manifest
            .entries
            .iter()
            .filter(|e| e.size <= self.tier.max_entry_size)
            .filter(|e| namespaces.index_of(e.namespace.as_ref()) == Some(0))
            .take(self.config.max_entries)
            .take_while(|e| match budget.checked_sub(e.size) {
                Some(left) => {
                    budget = left;
                    true
                }
                None => false,
            })
            .map(|e| (e.action, e.size))
            .collect();
        let all: HashSet<ActionId> = manifest.entries.iter().map(|e| e.action).collect();
        let found = lock(&self.own_toc).clone();
        let local = disk.clone();
        let Ok(jobs) = tokio::task::spawn_blocking(move || local_jobs(&local, &listed)).await
        else {
            return;
        };
        let wanted: Vec<(ActionId, u64)> = jobs.iter().map(|j| (j.action, j.size)).collect();
        if !pack_is_stale(found.as_ref(), &wanted, &all) {
            return;
        }
        let tmp = disk.tmp_dir().to_path_buf();
        let built = tokio::task::spawn_blocking(move || build_pack(&jobs, &tmp)).await;
        let (temp, toc, len) = match built {
            Ok(Ok(built)) => built,
            Ok(Err(err)) => {
                tracing::debug!("building the prefetch pack failed: {err}");
                return;
            }
            Err(err) => {
                tracing::debug!("building the prefetch pack failed: {err}");
                return;
            }
        };
        let upload = Upload::File {
            path: temp.path().to_path_buf(),
            len,
        };
        match store.put_pack(&self.key, upload).await {
            Ok(()) => {
                let stats = self.tier.remote_stats();
                stats
                    .pack_written
                    .store(toc.entries.len() as u64, Ordering::Relaxed);
                stats.pack_bytes_written.store(len, Ordering::Relaxed);
                *lock(&self.own_toc) = Some(toc);
                tracing::debug!(
                    key = %self.key,
                    bytes = len,
                    seconds = start.elapsed().as_secs_f64(),
                    "prefetch pack written"
                );
            }
            Err(err) => tracing::debug!("writing the prefetch pack failed: {err}"),
        }
        drop(temp);
    }
}

/// Adds the time since its start to a counter when dropped (every way out of a function).
struct Timed<'a>(Instant, &'a std::sync::atomic::AtomicU64);

impl Drop for Timed<'_> {
    fn drop(&mut self) {
        add(self.1, crate::cache::stats::nanos(self.0.elapsed()));
    }
}

/// The upload jobs of the `listed` entries that are in the local cache.
fn local_jobs(disk: &DiskCache, listed: &[(ActionId, u64)]) -> Vec<Job> {
    listed
        .iter()
        .filter_map(|(action, _)| {
            let entry = disk.get(action).ok().flatten()?;
            Some(Job {
                action: *action,
                output: entry.output_id,
                size: entry.size,
                time: entry.time,
                path: entry.disk_path,
            })
        })
        .collect()
}

/// Whether a pack should be written: there is none, it holds under [`MIN_COVERED`] of the
/// bytes of `wanted` (the entries it would hold now), or over [`MAX_STALE`] of its bytes are
/// entries that `listed` (the whole manifest) no longer has. Nothing to pack: no.
pub(crate) fn pack_is_stale(
    found: Option<&Toc>,
    wanted: &[(ActionId, u64)],
    listed: &HashSet<ActionId>,
) -> bool {
    let want: u64 = wanted.iter().map(|(_, size)| size).sum();
    if wanted.is_empty() {
        return false;
    }
    let Some(toc) = found else {
        return true;
    };
    let held: HashSet<ActionId> = toc.entries.iter().map(|e| e.action).collect();
    let covered: u64 = (wanted.iter())
        .filter(|(action, _)| held.contains(action))
        .map(|(_, size)| size)
        .sum();
    let stale: u64 = (toc.entries.iter())
        .filter(|e| !listed.contains(&e.action))
        .map(|e| e.len)
        .sum();
    (covered as f64) < MIN_COVERED * want as f64 || (stale as f64) > MAX_STALE * toc.bytes() as f64
}

/// Writes a pack of `jobs`' entries to a temporary file in `tmp`: the table of contents is
/// reserved for every job, the entries are encoded after it one by one (a job whose file is
/// gone is left out), then the header and table are written at the start. Returns the file,
/// its table and its length.
fn build_pack(
    jobs: &[Job],
    tmp: &std::path::Path,
) -> io::Result<(tempfile::NamedTempFile, Toc, u64)> {
    let mut temp = tempfile::Builder::new().prefix("pack-").tempfile_in(tmp)?;
    let data_offset = HEADER_LEN + ROW_LEN * jobs.len() as u64;
    let mut toc = Toc::default();
    let file = temp.as_file_mut();
    file.seek(SeekFrom::Start(data_offset))?;
    let mut out = io::BufWriter::with_capacity(256 * 1024, &mut *file);
    let mut offset = data_offset;
    for job in jobs {
        match encode_to(job, &mut out) {
            Ok(len) => {
                toc.entries.push(TocEntry {
                    action: job.action,
                    offset,
                    len,
                });
                offset += len;
            }
            Err(err) => {
                // Nothing of it was written if its file cannot be opened; a failure in the
                // middle leaves bytes that no row points at, which readers skip.
                tracing::debug!(action = %job.action, "left out of the pack: {err}");
                out.flush()?;
                offset = out.get_mut().stream_position()?;
            }
        }
    }
    out.flush()?;
    drop(out);
    file.seek(SeekFrom::Start(0))?;
    file.write_all(&toc.encode(data_offset))?;
    file.sync_data().ok();
    Ok((temp, toc, offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toc(entries: &[(u8, u64)]) -> Toc {
        let mut offset = 1000;
        Toc {
            entries: entries
                .iter()
                .map(|(n, len)| {
                    let e = TocEntry {
                        action: ActionId([*n; 32]),
                        offset,
                        len: *len,
                    };
                    offset += len;
                    e
                })
                .collect(),
        }
    }

    fn wanted(entries: &[(u8, u64)]) -> Vec<(ActionId, u64)> {
        entries
            .iter()
            .map(|(n, s)| (ActionId([*n; 32]), *s))
            .collect()
    }

    fn listed(ns: &[u8]) -> HashSet<ActionId> {
        ns.iter().map(|n| ActionId([*n; 32])).collect()
    }

    #[test]
    fn a_pack_is_written_when_missing_and_never_for_nothing() {
        assert!(pack_is_stale(None, &wanted(&[(1, 10)]), &listed(&[1])));
        assert!(!pack_is_stale(None, &[], &listed(&[])));
    }

    #[test]
    fn a_pack_covering_most_of_the_manifest_is_kept() {
        let found = toc(&[(1, 100), (2, 100), (3, 100)]);
        let now = wanted(&[(1, 100), (2, 100), (3, 100), (4, 20)]);
        // 300 of 320 bytes covered (94%), nothing stale.
        assert!(!pack_is_stale(Some(&found), &now, &listed(&[1, 2, 3, 4])));
        // 300 of 400 covered (75%): rewritten.
        let now = wanted(&[(1, 100), (2, 100), (3, 100), (4, 100)]);
        assert!(pack_is_stale(Some(&found), &now, &listed(&[1, 2, 3, 4])));
    }

    #[test]
    fn a_pack_of_entries_the_manifest_dropped_is_rewritten() {
        let found = toc(&[(1, 100), (2, 100), (3, 100), (9, 50)]);
        let now = wanted(&[(1, 100), (2, 100), (3, 100)]);
        // 50 of 350 bytes stale (14%): kept.
        assert!(!pack_is_stale(Some(&found), &now, &listed(&[1, 2, 3])));
        let found = toc(&[(1, 100), (2, 100), (3, 100), (9, 150)]);
        // 150 of 450 (33%): rewritten.
        assert!(pack_is_stale(Some(&found), &now, &listed(&[1, 2, 3])));
    }
}
