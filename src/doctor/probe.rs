//! What doctor asks the store: reachable (a missing key is a miss), a probe entry written,
//! read back and deleted, the latency and throughput, and the key filter. Every failure is
//! said with its cause and fix ([`cause_and_fix`]).

use std::time::{Instant, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest, Sha256};

use crate::config::{DoctorConfig, RemoteConfig, StoreConfig};
use crate::ids::{ActionId, OutputId};
use crate::store::filter::KeyFilter;
use crate::store::format::{self, Header};
use crate::store::http::HttpStore;
use crate::store::inventory::Inventory;
use crate::store::timeout::Timeout;
use crate::store::{PutOutcome, RemoteError, RemoteMode, RemoteStore, Upload, entry_key};

use super::setup::about;
use super::{Check, LARGE, Report, SAMPLES, estimate, fail, group, ms, pass, rough_age, round2};

/// The store the probes use (the own namespace's, unwrapped but time-bounded), and the way
/// to delete probe keys if the backend has one. The other match on the backend, with
/// [`about`].
#[allow(clippy::type_complexity)]
fn probe_store(
    remote: &RemoteConfig,
) -> Result<(Box<dyn RemoteStore>, Option<Box<dyn Inventory>>), RemoteError> {
    let config = remote.store.in_namespace(remote.namespaces.own.as_ref());
    if let StoreConfig::Http(http) = &config {
        return Ok((
            Box::new(Timeout::new(HttpStore::new(http)?, remote.timeout)),
            None,
        ));
    }
    match config.objects() {
        Some(store) => {
            let store = store?;
            Ok((
                Box::new(Timeout::new(store.clone(), remote.timeout)),
                Some(Box::new(store)),
            ))
        }
        None => Err(RemoteError::Other(format!("no probe for {config:?}"))),
    }
}

/// A valid entry of `body` (uncompressed), as a build would upload it.
fn entry(body: &[u8]) -> Bytes {
    let header = Header {
        flags: 0,
        output_id: OutputId::of(body),
        size: body.len() as u64,
        time: SystemTime::now(),
    };
    let mut out = Vec::with_capacity(body.len() + format::HEADER_LEN);
    format::write_entry(&header, &mut &body[..], &mut out).expect("writing to memory");
    Bytes::from(out)
}

/// A key for `what`: the same on every run where the probes cannot be deleted (so that they
/// are not piled up), else fresh each run (so that concurrent doctors do not meet).
fn probe_key(what: &str, fresh: bool) -> ActionId {
    let mut hash = Sha256::new();
    hash.update(b"goremotecache doctor probe ");
    hash.update(what.as_bytes());
    if fresh {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        hash.update(nanos.to_le_bytes());
        hash.update(std::process::id().to_le_bytes());
    }
    ActionId(hash.finalize().into())
}

/// Reads the entry of `key` whole: `None` for a miss.
async fn read_all(store: &dyn RemoteStore, key: &ActionId) -> Result<Option<Vec<u8>>, RemoteError> {
    let Some(mut stream) = store.get(key).await? else {
        return Ok(None);
    };
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(Some(out))
}

pub(super) async fn remote_checks(
    remote: &RemoteConfig,
    config: &DoctorConfig,
    report: &mut Report,
) {
    report.push(about(&remote.store).credentials);
    let (store, deleter) = match probe_store(remote) {
        Ok(opened) => opened,
        Err(err) => {
            report.push(fail(
                "store",
                err.to_string(),
                "fix the options named above",
            ));
            return;
        }
    };
    let store = store.as_ref();
    report.location = Some(store.location());
    let reads = remote.mode != RemoteMode::WriteOnly;
    let writes = remote.mode != RemoteMode::ReadOnly;

    // Reachable: a key that cannot exist must be a miss.
    let missing = probe_key("missing", true);
    let started = Instant::now();
    let miss = read_all(store, &missing).await;
    let miss_took = started.elapsed();
    let trap_suspect = match &miss {
        Ok(None) => {
            report.push(pass(
                "reachable",
                format!(
                    "{} answered a read of a missing key with a miss in {}",
                    store.location(),
                    ms(miss_took)
                ),
            ));
            false
        }
        Ok(Some(_)) => {
            report.push(fail(
                "reachable",
                "a read of a key no one writes returned an entry",
                "check that the endpoint is an S3 store or a goremotecache server",
            ));
            return;
        }
        Err(RemoteError::Denied(why)) if why.contains("AccessDenied") => {
            // Decided once the probe has been read: the ListBucket trap, or no read at all.
            true
        }
        Err(err) => {
            let mut check = failure("reachable", "", err);
            check.required = reads || writes;
            report.push(check);
            return;
        }
    };

    // Write, read, delete a small probe entry.
    let body = b"goremotecache doctor probe: a valid entry under a key no build asks for\n";
    let small = probe_key("small", deleter.is_some());
    let small_entry = entry(body);
    let mut written = false;
    if writes {
        match store.put(&small, Upload::Bytes(small_entry.clone())).await {
            Ok(PutOutcome::Stored | PutOutcome::Exists) => {
                written = true;
                report.push(pass(
                    "write",
                    format!("wrote a probe entry ({} bytes)", small_entry.len()),
                ));
            }
            Ok(PutOutcome::Skipped) => report.push(fail(
                "write",
                "the token may only read: the server refused the probe entry (403)",
                "use a read-write token (--http-token), or --remote-mode read-only for builds that should not upload",
            )),
            Err(err) => report.push(failure("write", "writing the probe entry", &err)),
        }
    } else {
        report.push(pass(
            "write",
            "not tried: --remote-mode read-only never writes",
        ));
    }
    let mut probe_read = false;
    if written {
        match read_all(store, &small).await {
            Ok(Some(bytes)) if bytes == small_entry[..] || verifies(&bytes) => {
                probe_read = true;
                report.push(pass("read", "read the probe entry back, intact"));
            }
            Ok(Some(_)) => report.push(fail(
                "read",
                "the probe entry came back different from what was written",
                "check that nothing between here and the store rewrites objects (a proxy, a compressing gateway)",
            )),
            Ok(None) => report.push(fail(
                "read",
                "the probe entry just written is not there",
                "check that the store is not a caching proxy that drops writes, and --namespace",
            )),
            Err(err) => {
                let mut check = failure("read", "reading the probe entry", &err);
                check.required = reads;
                report.push(check);
            }
        }
    }
    if trap_suspect {
        let (detail, fix) = match probe_read {
            true => (
                "a read of a missing key is refused (403 AccessDenied) while the probe entry reads fine: \
                 the credentials lack s3:ListBucket, so S3 answers every miss with 403 and the cache \
                 would switch the store off at the first miss",
                "grant s3:ListBucket on the bucket (arn:aws:s3:::BUCKET, not BUCKET/*)",
            ),
            false => (
                "reads are refused (403 AccessDenied)",
                "grant s3:GetObject and s3:ListBucket on the bucket",
            ),
        };
        let mut check = fail("missing keys are misses", detail, fix);
        check.required = reads;
        report.push(check);
    } else if matches!(miss, Ok(None)) {
        report.push(pass(
            "missing keys are misses",
            "a read of a missing key is a miss (404), as the cache needs",
        ));
    }

    // Latency: 20 small reads, of the probe entry if there is one, else of the missing key.
    let sample_key = if probe_read { small } else { missing };
    if reads && !trap_suspect {
        let mut times = Vec::with_capacity(SAMPLES);
        let mut failed = None;
        for _ in 0..SAMPLES {
            let started = Instant::now();
            match read_all(store, &sample_key).await {
                Ok(_) => times.push(started.elapsed()),
                Err(err) => {
                    failed = Some(err);
                    break;
                }
            }
        }
        match failed {
            None => {
                times.sort();
                let median = times[SAMPLES / 2].as_secs_f64() * 1000.0;
                let p90 = times[SAMPLES * 9 / 10].as_secs_f64() * 1000.0;
                report.figures.latency_median_ms = Some(round2(median));
                report.figures.latency_p90_ms = Some(round2(p90));
                report.figures.latency_of = Some(match probe_read {
                    true => "probe entry",
                    false => "missing key",
                });
                report.push(pass(
                    "latency",
                    format!("{SAMPLES} small reads: median {median:.1} ms, p90 {p90:.1} ms"),
                ));
            }
            Some(err) => report.push(failure("latency", "a timed read failed", &err)),
        }
    }

    // Throughput: one 8 MiB entry, written, read back, deleted.
    let large = probe_key("large", deleter.is_some());
    let mut large_written = false;
    if written && reads {
        let body: Vec<u8> = (0..LARGE)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let large_entry = entry(&body);
        match store.put(&large, Upload::Bytes(large_entry.clone())).await {
            Ok(PutOutcome::Stored | PutOutcome::Exists) => {
                large_written = true;
                let started = Instant::now();
                match read_all(store, &large).await {
                    Ok(Some(bytes)) if bytes.len() == large_entry.len() => {
                        let took = started.elapsed().as_secs_f64().max(1e-6);
                        let rate = bytes.len() as f64 / took / f64::from(1u32 << 20);
                        report.figures.throughput_mib_s = Some(round2(rate));
                        report.push(pass(
                            "throughput",
                            format!(
                                "one 8 MiB read in {} ms: {rate:.1} MiB/s",
                                (took * 1000.0).round()
                            ),
                        ));
                    }
                    Ok(_) => report.push(fail(
                        "throughput",
                        "the 8 MiB probe entry came back incomplete",
                        "check the store's object size limits and any proxy in between",
                    )),
                    Err(err) => {
                        report.push(failure("throughput", "reading the 8 MiB probe entry", &err))
                    }
                }
            }
            Ok(PutOutcome::Skipped) => {}
            Err(err) => {
                let mut check = failure("throughput", "writing the 8 MiB probe entry", &err);
                // A store full for now refuses big writes: not a broken store.
                check.required = !matches!(err, RemoteError::Full(_));
                report.push(check);
            }
        }
    }

    // Delete what was written.
    let mut keys = Vec::new();
    if written {
        keys.push(small);
    }
    if large_written {
        keys.push(large);
    }
    if !keys.is_empty() {
        let listed: Vec<String> = keys.iter().map(entry_key).collect();
        let mut check = match &deleter {
            Some(deleter) => match deleter.delete(&listed).await {
                Ok(()) => pass(
                    "delete",
                    format!("deleted the probe entries ({})", listed.join(", ")),
                ),
                Err(err) => fail(
                    "delete",
                    format!("the probe entries are left ({}): {err}", listed.join(", ")),
                    "builds never delete, but gc-remote and clear-remote need s3:DeleteObject; delete the probes by hand or let a lifecycle rule expire them",
                ),
            },
            None => Check {
                name: "delete",
                ok: true,
                required: false,
                detail: format!(
                    "this backend has no delete: the probe entries are left on the server ({}; the same keys on every run), and its eviction removes them in time",
                    listed.join(", ")
                ),
                fix: None,
            },
        };
        check.required = false;
        report.push(check);
    }

    report.push(key_filter(store, remote).await);

    report.figures.estimate = estimate(
        &report.figures,
        remote,
        config.prefetch_concurrency,
        store.batch_limit(),
    );
}

/// The key filter that makes misses instant (docs/prefetch.md): its keys and age, or why
/// misses ask the store. Never required: without a filter builds work, only slower to miss.
async fn key_filter(store: &dyn RemoteStore, remote: &RemoteConfig) -> Check {
    const NAME: &str = "key filter";
    let off = match remote.instant_misses {
        Some(_) => "",
        None => " (instant misses are off here: --instant-misses=on uses it)",
    };
    let mut check = match store.get_filter().await {
        Ok(Some(bytes)) => match KeyFilter::decode(&bytes) {
            Ok(filter) if filter.is_empty() => pass(
                NAME,
                format!(
                    "the store holds no entries yet: the first build's misses are instant, and it begins the filter{off}"
                ),
            ),
            Ok(filter) => {
                let age = SystemTime::now()
                    .duration_since(filter.made())
                    .unwrap_or_default();
                pass(
                    NAME,
                    format!(
                        "{} keys, made {} ago: a miss of any other key is answered without asking the store{off}",
                        group(filter.len() as u64),
                        rough_age(age)
                    ),
                )
            }
            Err(err) => fail(
                NAME,
                format!("the stored key filter is unusable ({err}): every miss asks the store"),
                "run `goremotecache gc-remote --yes` to write a new one",
            ),
        },
        Ok(None) if store.clients_keep_filter() => fail(
            NAME,
            "none: the store has entries but no key filter, so every miss asks the store",
            "run `goremotecache gc-remote --yes` once to write it; builds keep it up to date after that",
        ),
        Ok(None) => pass(NAME, "this store keeps none: every miss asks it"),
        Err(err) => failure(NAME, "reading the key filter", &err),
    };
    check.required = false;
    check
}

/// Whether `bytes` is a well-formed entry whose body matches its header (a store may hand
/// back the same entry with another put time, when the probe existed already).
fn verifies(bytes: &[u8]) -> bool {
    let mut body = Vec::new();
    match format::read_entry(&mut &bytes[..], &mut body) {
        Ok(header) => header.output_id == OutputId::of(&body),
        Err(_) => false,
    }
}

/// The fix part of a store error: the sentence after its last `: ` (the explanations put
/// the fix there), else a pointer to --debug.
/// The explained sentence of `err` ([`crate::store::explain`]) split into its cause and its
/// fix, so that a check prints the fix once, on its own line.
pub(super) fn cause_and_fix(err: &RemoteError) -> (String, String) {
    let text = err.to_string();
    match text.rsplit_once("): ") {
        Some((cause, fix)) => (format!("{cause})"), fix.to_string()),
        None => (
            text,
            "run again with --debug for the store's own answer".into(),
        ),
    }
}

/// A failed check for `err`, met while `doing` ("writing the probe entry", or nothing).
fn failure(name: &'static str, doing: &str, err: &RemoteError) -> Check {
    let (cause, fix) = cause_and_fix(err);
    match doing {
        "" => fail(name, cause, fix),
        doing => fail(name, format!("{doing}: {cause}"), fix),
    }
}
