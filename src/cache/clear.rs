//! `goremotecache clear-remote`: deletes the entries and prefetch manifests of the selected
//! namespaces of a remote store, one namespace after the other, with progress on stderr and
//! a line per namespace on stdout.

use anyhow::Context;

use crate::config::{ClearRemoteConfig, RemoteMode, Selection, StoreConfig};
use crate::store;
use crate::store::inventory::{self, Found, NAMESPACES, describe};

/// `clear-remote`: deletes every entry and prefetch manifest of the selected namespaces, one
/// namespace after the other, each reported. `--all-namespaces` finds the namespaces by
/// listing `<prefix>/ns/` (S3 only: an HTTP server refuses clear-remote whatever the
/// namespaces); each namespace's own store lists only its `v1/` and `prefetch/`, so the
/// un-namespaced area never reaches into `ns/`.
pub fn clear_remote(clear: &ClearRemoteConfig) -> anyhow::Result<()> {
    let config = clear.store.as_ref().context(
        "no remote store is configured: set --s3-bucket (and --s3-prefix) or --http-url",
    )?;
    let location = store::open_store(config, RemoteMode::ReadWrite, clear.timeout)?.location();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let found = match (&clear.namespaces, config) {
        (Selection::All, StoreConfig::S3(s3)) => {
            let root = store::s3::S3Store::new(s3)?;
            runtime
                .block_on(inventory::namespaces(&root))
                .with_context(|| format!("listing the namespaces in {location}/{NAMESPACES}"))?
        }
        _ => Found::default(),
    };
    let targets = found.select(&clear.namespaces);
    let named: Vec<&str> = targets.iter().flatten().map(|ns| ns.as_str()).collect();
    let skipped = || {
        for (dir, why) in &found.skipped {
            println!("{location}/{NAMESPACES}{dir}/: skipped, not a namespace ({why})");
        }
    };
    if !clear.yes {
        skipped();
        let what = match &clear.namespaces {
            Selection::Unnamespaced => {
                format!("of {location}, the un-namespaced ones only (nothing in its namespaces)")
            }
            Selection::One(ns) => format!("of {}", describe(&location, Some(ns))),
            Selection::All if named.is_empty() => {
                format!("under {location} (no namespace was found in it)")
            }
            Selection::All => format!(
                "under {location}, un-namespaced and in the namespaces {}",
                named.join(", ")
            ),
        };
        anyhow::bail!(
            "this deletes every entry and prefetch manifest {what}; run again with --yes to do it"
        );
    }
    let mut total = 0u64;
    for namespace in &targets {
        let label = describe(&location, namespace.as_ref());
        let store = store::open_store(
            &config.in_namespace(namespace.as_ref()),
            RemoteMode::ReadWrite,
            clear.timeout,
        )?;
        let progress = |n: u64| eprintln!("goremotecache: {label}: deleted {n} entries so far");
        let deleted = runtime.block_on(store.clear(&progress)).with_context(|| {
            let before = match total {
                0 => String::new(),
                n => format!(" ({n} entries of the namespaces before it were deleted)"),
            };
            format!("clearing {label}{before}")
        })?;
        println!("{label}: deleted {deleted} entries");
        total += deleted;
    }
    if clear.namespaces == Selection::All {
        skipped();
        let namespaces = match named.len() {
            1 => "1 namespace".to_string(),
            n => format!("{n} namespaces"),
        };
        println!("total: deleted {total} entries, un-namespaced and in {namespaces}");
    }
    Ok(())
}
