//! `goremotecache doctor`: checks, with the options a build would use, whether the remote
//! store works and whether it pays off, and says each problem with its fix (docs/doctor.md).
//!
//! The checks run in order, each on what the ones before established: the configuration;
//! the local cache directory; the credentials found and where from; the store reachable (a
//! read of a key that cannot exist, which must be a miss); a probe entry written, read back
//! and deleted; the latency of 20 small reads and the throughput of one 8 MiB read; and from
//! those figures an estimate of what the latency costs a warm build with and without
//! prefetch. The probe entries are valid entries under keys no build asks for.
//!
//! Everything about the store goes through [`RemoteStore`](crate::store::RemoteStore)
//! (unwrapped by the circuit breaker and retries, so that each failure is seen as it is, but
//! bounded by `--remote-timeout`). What depends on the backend is small and in two matches:
//! `probe::probe_store` (the store, and how to delete the probes if the backend can) and
//! `setup::about` (its name, its settings in words, and where its credentials come from,
//! described without the secret). A new backend adds an arm to each. `setup` holds the checks
//! made before the store is asked anything, `probe` those that ask it.

use std::time::Duration;

use serde::Serialize;

use crate::config::{DoctorConfig, RemoteConfig};
use crate::store::RemoteMode;

mod probe;
mod setup;

use probe::remote_checks;
use setup::{about, cache_dir, configuration};

/// Small reads timed for the latency figures.
pub const SAMPLES: usize = 20;
/// The size of the probe read for the throughput figure.
pub const LARGE: usize = 8 << 20;
/// The warm build of the estimate: packages, one remote entry each.
pub const PACKAGES: u64 = 1000;
/// The mean entry size the estimate assumes (a compiled package's archive).
pub const ENTRY_BYTES: u64 = 200 << 10;

/// One check: what was looked at, whether it is fine, and if not, what to do.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    /// Whether the exit status depends on it (a delete, say, is only reported).
    pub required: bool,
    pub detail: String,
    pub fix: Option<String>,
}

/// The measured figures and the estimate drawn from them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Figures {
    pub latency_median_ms: Option<f64>,
    pub latency_p90_ms: Option<f64>,
    /// What the latency reads read: `probe entry` or `missing key`.
    pub latency_of: Option<&'static str>,
    pub throughput_mib_s: Option<f64>,
    pub estimate: Option<Estimate>,
}

/// What the latency costs a warm build of [`PACKAGES`] packages (see docs/doctor.md).
#[derive(Debug, Clone, Serialize)]
pub struct Estimate {
    pub packages: u64,
    pub entry_bytes: u64,
    pub without_prefetch_s: f64,
    pub with_prefetch_s: f64,
    pub prefetch_concurrency: usize,
    /// Entries per prefetch request (1: one get each; a server's batches take up to 256).
    pub batch: usize,
    pub prefetch_on: bool,
}

/// Everything doctor found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub ok: bool,
    pub backend: &'static str,
    pub location: Option<String>,
    pub mode: Option<RemoteMode>,
    pub checks: Vec<Check>,
    pub figures: Figures,
}

impl Report {
    fn push(&mut self, check: Check) {
        self.checks.push(check);
    }
}

fn pass(name: &'static str, detail: impl Into<String>) -> Check {
    Check {
        name,
        ok: true,
        required: true,
        detail: detail.into(),
        fix: None,
    }
}

fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        name,
        ok: false,
        required: true,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

/// Runs every check. Call it inside a tokio runtime.
pub async fn run(config: &DoctorConfig) -> Report {
    let build = &config.build;
    let mut report = Report {
        ok: true,
        backend: "disk",
        location: None,
        mode: build.remote.as_ref().map(|r| r.mode),
        checks: Vec::new(),
        figures: Figures::default(),
    };
    report.push(configuration(config));
    report.push(cache_dir(config));
    if let Some(remote) = &build.remote {
        report.backend = about(&remote.store).name;
        remote_checks(remote, config, &mut report).await;
    }
    report.ok = report.checks.iter().all(|c| c.ok || !c.required);
    report
}

/// The model of docs/doctor.md: without prefetch each package's entry is one request the
/// go command waits for, one after another; with prefetch they go `concurrency` (or, with
/// batches, `concurrency / 8` batches) at once. Both add the bytes at the measured
/// throughput.
fn estimate(
    figures: &Figures,
    remote: &RemoteConfig,
    concurrency: usize,
    batch_limit: usize,
) -> Option<Estimate> {
    let latency = figures.latency_median_ms? / 1000.0;
    let (batch, in_flight) = match batch_limit {
        0 => (1, concurrency.max(1)),
        limit => (limit, (concurrency / 8).max(1)),
    };
    let requests = PACKAGES.div_ceil(batch as u64);
    let rounds = requests.div_ceil(in_flight as u64);
    let transfer = figures
        .throughput_mib_s
        .map(|rate| (PACKAGES * ENTRY_BYTES) as f64 / (rate * f64::from(1u32 << 20)))
        .unwrap_or(0.0);
    let without = PACKAGES as f64 * latency + transfer;
    Some(Estimate {
        packages: PACKAGES,
        entry_bytes: ENTRY_BYTES,
        without_prefetch_s: round2(without),
        with_prefetch_s: round2(rounds as f64 * latency + transfer),
        prefetch_concurrency: concurrency,
        batch,
        prefetch_on: remote.prefetch.is_some(),
    })
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// An age in the largest unit that keeps it at 2 or more: "45s", "10m", "3h", "12d".
fn rough_age(age: Duration) -> String {
    let secs = age.as_secs();
    match secs {
        0..120 => format!("{secs}s"),
        120..7_200 => format!("{}m", secs / 60),
        7_200..172_800 => format!("{}h", secs / 3_600),
        _ => format!("{}d", secs / 86_400),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for check in &self.checks {
            let mark = match (check.ok, check.required) {
                (true, _) => "ok  ",
                (false, true) => "FAIL",
                (false, false) => "warn",
            };
            writeln!(f, "{mark} {}: {}", check.name, check.detail)?;
            if let Some(fix) = &check.fix {
                writeln!(f, "     fix: {fix}")?;
            }
        }
        if let Some(estimate) = &self.figures.estimate {
            let latency = self.figures.latency_median_ms.unwrap_or_default();
            let latency = match latency < 10.0 {
                true => format!("{latency:.1}"),
                false => format!("{latency:.0}"),
            };
            writeln!(
                f,
                "\nat {latency} ms per request, a warm build of {} packages spends about {:.1} s waiting without prefetch,",
                group(estimate.packages),
                estimate.without_prefetch_s
            )?;
            let how = match estimate.batch {
                1 => format!("{} gets at once", estimate.prefetch_concurrency),
                n => format!(
                    "batches of up to {n}, {} at once",
                    (estimate.prefetch_concurrency / 8).max(1)
                ),
            };
            let throughput = match self.figures.throughput_mib_s {
                Some(rate) => format!(
                    "{} KiB entries at {rate:.0} MiB/s",
                    estimate.entry_bytes >> 10
                ),
                None => "transfer time not measured".into(),
            };
            writeln!(
                f,
                "and about {:.1} s with prefetch ({how}; {throughput}){}",
                estimate.with_prefetch_s,
                match estimate.prefetch_on {
                    true => "",
                    false => "; prefetch is off here: --prefetch=on turns it on",
                }
            )?;
        }
        let verdict = match (self.ok, self.location.as_deref()) {
            (true, Some(location)) => format!("\nthe remote store {location} works"),
            (true, None) => "\nno remote store: the local disk only".into(),
            (false, Some(location)) => {
                format!("\nthe remote store {location} does not work as configured: see FAIL above")
            }
            (false, None) => "\nthe local cache is not usable: see FAIL above".into(),
        };
        writeln!(f, "{verdict}")
    }
}

/// 1000 as `1,000`.
fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::probe::cause_and_fix;
    use super::*;
    use crate::store::RemoteError;

    #[test]
    fn the_estimate_follows_the_documented_model() {
        let figures = Figures {
            latency_median_ms: Some(34.0),
            throughput_mib_s: Some(100.0),
            ..Figures::default()
        };
        let remote = crate::config::Config::from_args(&test_args())
            .unwrap()
            .remote
            .unwrap();
        let gets = estimate(&figures, &remote, 32, 0).unwrap();
        // 1000 gets one after another, plus 1000 × 200 KiB at 100 MiB/s.
        let transfer = 1000.0 * 200.0 / 1024.0 / 100.0;
        assert_eq!(gets.without_prefetch_s, round2(34.0 + transfer));
        // 1000 gets, 32 at once: 32 rounds of 34 ms, plus the same bytes.
        assert_eq!(gets.with_prefetch_s, round2(32.0 * 0.034 + transfer));
        // Batches of 256, 4 at once: 4 requests, one round.
        let batches = estimate(&figures, &remote, 32, 256).unwrap();
        assert_eq!(batches.with_prefetch_s, round2(0.034 + transfer));
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(999), "999");
    }

    fn test_args() -> crate::config::MainArgs {
        crate::config::Cli::try_parse_args(["goremotecache", "--s3-bucket", "b"])
            .map(|cli| cli.main)
            .unwrap_or_else(|err| panic!("{err}"))
    }

    #[test]
    fn fixes_are_taken_from_the_explained_sentence() {
        let err = RemoteError::Config(
            "the bucket does not exist (NoSuchBucket): create it, or check --s3-bucket".into(),
        );
        assert_eq!(
            cause_and_fix(&err),
            (
                "not usable: the bucket does not exist (NoSuchBucket)".to_string(),
                "create it, or check --s3-bucket".to_string()
            )
        );
    }
}
