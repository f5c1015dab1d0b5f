//! The server's Prometheus metrics, served as OpenMetrics text on `/metrics`: requests by
//! method and status, hits, misses, bytes in and out, storage errors, latency histograms.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

type Latency = Family<MethodLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.1 ms to about 3 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// The metrics; cheap to clone (all share one registry).
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Arc<Registry>,
    requests: Family<RequestLabels, Counter>,
    latency: Latency,
    pub hits: Counter,
    pub misses: Counter,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    pub storage_errors: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("goremotecache");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency: Latency = Family::new_with_constructor(latency_histogram);
        let hits = Counter::default();
        let misses = Counter::default();
        let bytes_in = Counter::default();
        let bytes_out = Counter::default();
        let storage_errors = Counter::default();
        registry.register(
            "requests",
            "HTTP requests by method and status",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time to answer a request (to the start of the body for GET)",
            latency.clone(),
        );
        registry.register("hits", "GETs that found an entry", hits.clone());
        registry.register("misses", "GETs that found no entry", misses.clone());
        registry.register(
            "received_bytes",
            "Entry bytes received by PUT",
            bytes_in.clone(),
        );
        registry.register("sent_bytes", "Entry bytes sent by GET", bytes_out.clone());
        registry.register(
            "storage_errors",
            "Storage operations that failed",
            storage_errors.clone(),
        );
        Self {
            registry: Arc::new(registry),
            requests,
            latency,
            hits,
            misses,
            bytes_in,
            bytes_out,
            storage_errors,
        }
    }

    /// Counts a request.
    pub fn observe(&self, method: &str, status: u16, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                method: method.to_string(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&MethodLabels {
                method: method.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    /// The OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String");
        text
    }
}
