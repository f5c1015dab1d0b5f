//! `goremotecache clear-remote`: deletes the entries and prefetch manifests of the selected
//! namespaces of a remote store, one namespace after the other, with progress on stderr and
//! a line per namespace on stdout. With `--modules`, the module proxy's files
//! (`<prefix>/mod/`, its own store laid out like an un-namespaced one) go last, on a line of
//! their own; without it they are never listed: no namespace's store reaches into `mod/`,
//! and `--all-namespaces` finds namespaces under `ns/` only.

use anyhow::Context;

use crate::config::{ClearRemoteConfig, RemoteMode, Selection, StoreConfig};
use crate::store;
use crate::store::inventory::{self, Found, NAMESPACES, describe};
use crate::store::s3::MODULES;

/// `clear-remote`: deletes every entry and prefetch manifest of the selected namespaces, one
/// namespace after the other, each reported. `--all-namespaces` finds the namespaces by
/// listing `<prefix>/ns/` (a bucket or container only: an HTTP server refuses clear-remote whatever the
/// namespaces); each namespace's own store lists only its `v1/` and `prefetch/`, so the
/// un-namespaced area never reaches into `ns/`. `--modules` adds the module files
/// (`<prefix>/mod/`) after them: it never replaces the namespace selection, so that the
/// flag's only effect is one more line.
pub fn clear_remote(clear: &ClearRemoteConfig) -> anyhow::Result<()> {
    let config = clear.store.as_ref().context(
        "no remote store is configured: set --s3-bucket, --gcs-bucket or --azblob-container (and \
         its prefix), or --http-url",
    )?;
    let location = store::open_store(config, RemoteMode::ReadWrite, clear.timeout)?.location();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let found = match (&clear.namespaces, config.objects()) {
        (Selection::All, Some(root)) => {
            let root = root?;
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
        let modules = match clear.modules {
            true => format!(", and every module file under {location}/{MODULES}"),
            false => String::new(),
        };
        anyhow::bail!(
            "this deletes every entry and prefetch manifest {what}{modules}; run again with --yes \
             to do it"
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
    if clear.modules {
        total += clear_modules(clear, config, &runtime, total)?;
    }
    if clear.namespaces == Selection::All {
        skipped();
        let namespaces = match named.len() {
            1 => "1 namespace".to_string(),
            n => format!("{n} namespaces"),
        };
        let modules = match clear.modules {
            true => " and the module files",
            false => "",
        };
        println!("total: deleted {total} entries, un-namespaced and in {namespaces}{modules}");
    }
    Ok(())
}

/// `--modules`: deletes the module proxy's files, its store's entries (`mod/v1/`) and
/// manifests (`mod/prefetch/`), and says how many on a line of their own. `before` is what
/// the namespaces lost first, for the message of a failure.
fn clear_modules(
    clear: &ClearRemoteConfig,
    config: &StoreConfig,
    runtime: &tokio::runtime::Runtime,
    before: u64,
) -> anyhow::Result<u64> {
    let Some(modules) = config.for_modules() else {
        // Not reached: an HTTP server refuses the namespaces' clear before this. Its module
        // files are in its storage, like its entries.
        anyhow::bail!(
            "clear-remote does not go through the HTTP server: clear the server's storage instead"
        );
    };
    let store = store::open_store(&modules, RemoteMode::ReadWrite, clear.timeout)?;
    let label = format!("{} (module files)", store.location());
    let progress = |n: u64| eprintln!("goremotecache: {label}: deleted {n} entries so far");
    let deleted = runtime.block_on(store.clear(&progress)).with_context(|| {
        let before = match before {
            0 => String::new(),
            n => format!(" ({n} entries of the namespaces before it were deleted)"),
        };
        format!("clearing {label}{before}")
    })?;
    println!("{label}: deleted {deleted} entries");
    Ok(deleted)
}
