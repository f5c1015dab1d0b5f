//! `--metrics-push-url`: the run's figures pushed once, at the end of the run, to a Prometheus
//! Pushgateway or to VictoriaMetrics' import endpoint. A CI job lives too short to be
//! scraped, so it hands its figures over as it ends (cacheprog's metrics push).
//!
//! The body is Prometheus text exposition (version 0.0.4): the same figures as `--stats`,
//! named `goremotecache_build_*` so that they never collide with the server's own
//! `goremotecache_*` metrics (`src/server/metrics.rs`), each with its HELP and TYPE lines and
//! the `--metrics-push-labels` on every sample. It is sent with one POST, which a Pushgateway
//! takes as "replace these metrics of the group the URL names" and VictoriaMetrics as an
//! import. The push is bounded by [`PUSH_TIMEOUT`] in all; a failure is one warning on
//! stderr (or in the log file), never a failed build.

use std::fmt::Write as _;
use std::time::Duration;

use super::stats::Report;
use crate::config::MetricsPush;

/// The whole push, connecting included, ends within this.
pub const PUSH_TIMEOUT: Duration = Duration::from_secs(5);

impl MetricsPush {
    /// Pushes `report`'s figures; a failure is one warning. Never longer than
    /// [`PUSH_TIMEOUT`].
    pub async fn push(&self, report: &Report) {
        let body = exposition(report, &self.labels);
        match tokio::time::timeout(PUSH_TIMEOUT, self.send(body)).await {
            Ok(Ok(())) => tracing::debug!(url = %self.shown_url(), "metrics pushed"),
            Ok(Err(why)) => tracing::warn!(
                "metrics push to {} failed: {why} (the build is not affected)",
                self.shown_url()
            ),
            Err(_) => tracing::warn!(
                "metrics push to {} failed: no answer within {}s (the build is not affected)",
                self.shown_url(),
                PUSH_TIMEOUT.as_secs()
            ),
        }
    }

    async fn send(&self, body: String) -> Result<(), String> {
        crate::store::install_crypto_provider();
        let client = reqwest::Client::builder()
            .connect_timeout(PUSH_TIMEOUT)
            .timeout(PUSH_TIMEOUT)
            .build()
            .map_err(|err| format!("building the HTTP client: {err}"))?;
        let mut request = client
            .post(&self.url)
            .header(
                reqwest::header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )
            .body(body);
        for (name, value) in &self.headers {
            let mut value = reqwest::header::HeaderValue::from_str(value)
                .map_err(|_| format!("header {name} has a bad value"))?;
            value.set_sensitive(true);
            request = request.header(name.as_str(), value);
        }
        let response = request.send().await.map_err(|err| {
            let mut text = err.to_string();
            let mut source = std::error::Error::source(&err);
            while let Some(inner) = source {
                text = format!("{text}: {inner}");
                source = inner.source();
            }
            text
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let detail = response.text().await.unwrap_or_default();
        let detail = detail.trim();
        Err(match detail.is_empty() {
            true => format!("the server answered {status}"),
            false => format!(
                "the server answered {status}: {}",
                detail.chars().take(200).collect::<String>()
            ),
        })
    }

    /// The URL without any user name or password in it, for messages.
    fn shown_url(&self) -> String {
        match reqwest::Url::parse(&self.url) {
            Ok(mut url) => {
                let _ = url.set_username("");
                let _ = url.set_password(None);
                url.to_string()
            }
            Err(_) => self.url.clone(),
        }
    }
}

/// A label value in the text format: backslash, double quote and newline escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One metric of the exposition: name (without the prefix), type, help, value.
struct Sample {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    value: f64,
}

fn counter(name: &'static str, help: &'static str, value: u64) -> Sample {
    Sample {
        name,
        kind: "counter",
        help,
        value: value as f64,
    }
}

fn seconds(name: &'static str, help: &'static str, value: f64) -> Sample {
    Sample {
        name,
        kind: "counter",
        help,
        value,
    }
}

fn gauge(name: &'static str, help: &'static str, value: f64) -> Sample {
    Sample {
        name,
        kind: "gauge",
        help,
        value,
    }
}

/// The metric name prefix of every pushed sample.
pub const PREFIX: &str = "goremotecache_build_";

/// The samples of `report`: those of `--stats-file`, under Prometheus names.
fn samples(report: &Report) -> Vec<Sample> {
    let mut out = vec![
        counter(
            "gets_total",
            "Gets the go command asked in the run",
            report.gets,
        ),
        counter("hits_total", "Gets answered with an entry", report.hits),
        counter("misses_total", "Gets answered with a miss", report.misses),
        counter(
            "get_errors_total",
            "Gets that failed on a local I/O error (answered as misses)",
            report.get_errors,
        ),
        counter(
            "hit_bytes_total",
            "Output bytes of the hits",
            report.hit_bytes,
        ),
        seconds(
            "get_seconds_total",
            "Time spent answering gets, summed over concurrent gets",
            report.get_seconds,
        ),
        counter("puts_total", "Puts the go command made", report.puts),
        counter(
            "put_errors_total",
            "Puts that could not be stored",
            report.put_errors,
        ),
        counter("put_bytes_total", "Output bytes put", report.put_bytes),
        counter(
            "puts_already_stored_total",
            "Puts whose output was on local disk already",
            report.puts_already_stored,
        ),
        seconds(
            "put_seconds_total",
            "Time spent storing puts, summed over concurrent puts",
            report.put_seconds,
        ),
        counter(
            "bad_requests_total",
            "Requests that could not be parsed or were invalid",
            report.bad_requests,
        ),
        gauge(
            "run_seconds",
            "Time from the start of the run to its end",
            report.run_seconds,
        ),
    ];
    if let Some(rss) = report.peak_rss_bytes {
        out.push(gauge(
            "peak_rss_bytes",
            "Peak resident memory of the process",
            rss as f64,
        ));
    }
    let Some(r) = &report.remote else {
        return out;
    };
    out.extend([
        counter(
            "remote_hits_total",
            "Local misses the remote store filled",
            r.hits,
        ),
        counter(
            "remote_misses_total",
            "Local misses the remote store did not have",
            r.misses,
        ),
        counter("remote_errors_total", "Remote gets that failed", r.errors),
        counter(
            "remote_corrupt_total",
            "Remote entries that failed verification",
            r.corrupt,
        ),
        counter(
            "remote_bytes_down_total",
            "Entry bytes received from the remote store",
            r.bytes_down,
        ),
        seconds(
            "remote_wait_seconds_total",
            "Time gets waited on the remote store, summed over concurrent gets",
            r.wait_seconds,
        ),
        counter("uploads_total", "Entries uploaded", r.uploads),
        counter(
            "uploads_existing_total",
            "Uploads that found the entry there already",
            r.uploads_existing,
        ),
        counter(
            "upload_errors_total",
            "Uploads that failed",
            r.upload_errors,
        ),
        counter(
            "uploads_dropped_total",
            "Uploads not done: queue full, remote switched off, or pending at the end",
            r.uploads_dropped,
        ),
        counter(
            "uploads_small_total",
            "Entries not uploaded because they are under --upload-min-size",
            r.uploads_small,
        ),
        counter(
            "upload_bytes_total",
            "Entry bytes sent to the remote store",
            r.bytes_up,
        ),
        counter(
            "upload_raw_bytes_total",
            "Output bytes the uploaded entries hold, before compression",
            r.raw_bytes_up,
        ),
        gauge(
            "upload_queue_high_water",
            "The most uploads waiting at once",
            r.queue_high_water as f64,
        ),
        seconds(
            "upload_close_wait_seconds_total",
            "Time the end of the run waited for uploads",
            r.close_wait_seconds,
        ),
    ]);
    if let Some(p) = &r.prefetch {
        out.extend([
            counter(
                "prefetch_listed_total",
                "Entries in the prefetch manifest found at start",
                p.listed,
            ),
            counter(
                "prefetch_already_local_total",
                "Manifest entries already on local disk",
                p.already_local,
            ),
            counter("prefetch_fetched_total", "Entries prefetched", p.fetched),
            counter("prefetch_bytes_total", "Output bytes prefetched", p.bytes),
            counter(
                "prefetch_missing_total",
                "Manifest entries the remote did not have",
                p.missing,
            ),
            counter("prefetch_errors_total", "Prefetches that failed", p.errors),
            counter(
                "prefetch_used_total",
                "Prefetched entries the go command asked for",
                p.used,
            ),
            counter(
                "prefetch_wasted_total",
                "Prefetched entries never asked for",
                p.wasted,
            ),
            gauge(
                "prefetch_seconds",
                "Time until prefetching ended",
                p.seconds,
            ),
        ]);
    }
    out
}

/// The Prometheus text exposition of `report`, with `labels` on every sample.
pub fn exposition(report: &Report, labels: &[(String, String)]) -> String {
    let labels = match labels.is_empty() {
        true => String::new(),
        false => {
            let inner: Vec<String> = (labels.iter())
                .map(|(name, value)| format!("{name}=\"{}\"", escape(value)))
                .collect();
            format!("{{{}}}", inner.join(","))
        }
    };
    let mut out = String::new();
    for sample in samples(report) {
        let name = format!("{PREFIX}{}", sample.name);
        let _ = writeln!(out, "# HELP {name} {}.", sample.help);
        let _ = writeln!(out, "# TYPE {name} {}", sample.kind);
        let _ = writeln!(out, "{name}{labels} {}", sample.value);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::stats::Stats;

    #[test]
    fn the_exposition_has_help_type_and_labels() {
        let stats = Stats::with_remote(true);
        stats.record_get(Some(10), Duration::from_millis(1));
        stats.record_get(None, Duration::from_millis(1));
        let text = exposition(
            &stats.report(),
            &[
                ("repo".into(), "a\"b".into()),
                ("os".into(), "linux".into()),
            ],
        );
        assert!(
            text.contains("# HELP goremotecache_build_hits_total "),
            "{text}"
        );
        assert!(
            text.contains("# TYPE goremotecache_build_hits_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("goremotecache_build_hits_total{repo=\"a\\\"b\",os=\"linux\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("goremotecache_build_misses_total{repo=\"a\\\"b\",os=\"linux\"} 1\n")
        );
        assert!(
            text.contains("goremotecache_build_remote_hits_total{"),
            "{text}"
        );
        // Every sample line starts with the prefix.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with(PREFIX), "{line}");
        }
    }
}
