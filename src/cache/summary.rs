//! The CI step summary (`--step-summary`, else `GITHUB_STEP_SUMMARY`): at the end of each go
//! command's run, a short Markdown table of what the cache did is appended to the file, which
//! GitHub Actions shows on the job's page (docs/ci.md shows an example).
//!
//! Several go commands of one step may end at the same moment (`go vet` and `go test` run in
//! parallel by a Makefile, say): each appends its table with one `write` on a file opened with
//! `O_APPEND`, so that the tables never interleave.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::stats::{Report, human_bytes};

/// The Markdown appended for `report`: a heading line and a one-row table.
pub fn markdown(report: &Report) -> String {
    let rate = match report.gets {
        0 => 0.0,
        gets => 100.0 * report.hits as f64 / gets as f64,
    };
    let remote = report.remote.as_ref();
    let cell = |value: Option<String>| value.unwrap_or_else(|| "-".to_string());
    let remote_hits = cell(remote.map(|r| r.hits.to_string()));
    let down = cell(remote.map(|r| human_bytes(r.bytes_down)));
    let up = cell(remote.map(|r| human_bytes(r.bytes_up)));
    let wait = cell(remote.map(|r| format!("{:.2}s", r.wait_seconds)));
    let uploads = cell(remote.map(|r| r.uploads.to_string()));
    let prefetch = cell(
        remote
            .and_then(|r| r.prefetch.as_ref())
            .map(|p| p.used.to_string()),
    );
    format!(
        "\n#### goremotecache: {} gets, {rate:.1}% hits, {:.1}s\n\n\
         | hits | misses | remote hits | down | up | waited on remote | uploads | prefetch used |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|\n\
         | {} | {} | {remote_hits} | {down} | {up} | {wait} | {uploads} | {prefetch} |\n",
        report.gets, report.run_seconds, report.hits, report.misses,
    )
}

/// Appends `report`'s table to `path` (created if missing) with one write; a failure is one
/// warning, never a failed build.
pub fn append(path: &Path, report: &Report) {
    let text = markdown(report);
    let written = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o644)
        .open(path)
        .and_then(|mut file| file.write_all(text.as_bytes()));
    if let Err(err) = written {
        tracing::warn!(
            "cannot append the step summary to {}: {}",
            path.display(),
            crate::fsutil::explain_io(&err)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::stats::Stats;
    use std::time::Duration;

    #[test]
    fn the_table_has_the_figures() {
        let stats = Stats::with_remote(true);
        stats.record_get(Some(10), Duration::from_millis(1));
        stats.record_get(None, Duration::from_millis(1));
        let remote = stats.remote.as_ref().unwrap();
        crate::cache::stats::add(&remote.hits, 3);
        crate::cache::stats::add(&remote.bytes_down, 2048);
        let text = markdown(&stats.report());
        assert!(
            text.contains("| 1 | 1 | 3 | 2.0 KiB | 0 B | 0.00s | 0 | - |\n"),
            "{text}"
        );
        assert!(text.contains("2 gets, 50.0% hits"), "{text}");
        let local = markdown(&Stats::new().report());
        assert!(
            local.contains("| 0 | 0 | - | - | - | - | - | - |\n"),
            "{local}"
        );
    }
}
