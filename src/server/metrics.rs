//! The server's Prometheus metrics, served as OpenMetrics text on `/metrics`: requests by
//! method and status, hits, misses, bytes in and out, storage errors, latency histograms;
//! and for a storage directory ([`Metrics::with_storage`]) its entries, their bytes, the
//! evictions and the age of the least recently used entry, read from its index when
//! `/metrics` is asked.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::store::bounded::Usage;

// The method is a name the handlers give (`"GET"`), never the client's: no allocation per
// request for the label, and no label made from client input.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
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
    /// `goremotecache_goproxy_requests_total{kind,result}` (`serve --goproxy`).
    pub goproxy: crate::goproxy::http::RequestCounts,
    storage: Option<StorageGauges>,
}

/// The storage directory's figures: set from its index before each encoding.
#[derive(Clone, Debug, Default)]
struct StorageGauges {
    bytes: Gauge,
    entries: Gauge,
    evictions: Counter,
    oldest_access_age: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// The metrics of a server on a storage directory: [`Metrics::new`]'s and
    /// `goremotecache_storage_bytes`, `goremotecache_storage_entries`,
    /// `goremotecache_evictions_total` and `goremotecache_storage_oldest_access_age_seconds`.
    pub fn with_storage() -> Self {
        let mut metrics = Self::new();
        let storage = StorageGauges::default();
        let registry = Arc::get_mut(&mut metrics.registry).expect("not shared yet");
        registry.register(
            "storage_bytes",
            "Bytes of the entries in the storage directory",
            storage.bytes.clone(),
        );
        registry.register(
            "storage_entries",
            "Entries in the storage directory",
            storage.entries.clone(),
        );
        registry.register(
            "evictions",
            "Entries deleted to keep the storage directory under --max-size",
            storage.evictions.clone(),
        );
        registry.register(
            "storage_oldest_access_age_seconds",
            "Seconds since the least recently used entry was last read or written",
            storage.oldest_access_age.clone(),
        );
        metrics.storage = Some(storage);
        metrics
    }

    /// Sets the storage figures (nothing without [`Metrics::with_storage`]).
    pub fn set_storage(&self, usage: Usage) {
        let Some(storage) = &self.storage else { return };
        let gauge = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        storage.bytes.set(gauge(usage.bytes));
        storage.entries.set(gauge(usage.entries));
        storage
            .oldest_access_age
            .set(gauge(usage.oldest_access_age));
        // The store counts; the counter follows it (fetch_max: two scrapes at once cannot
        // both add the same evictions).
        storage
            .evictions
            .inner()
            .fetch_max(usage.evictions, std::sync::atomic::Ordering::Relaxed);
    }

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
        let goproxy = crate::goproxy::http::RequestCounts::default();
        registry.register(
            "goproxy_requests",
            "Module proxy requests (serve --goproxy) by kind (info, mod, zip, list, latest, \
             sumdb, invalid) and result (hit, miss, fallback, not_found, upstream_error, \
             local, bad_request)",
            goproxy.clone(),
        );
        Self {
            registry: Arc::new(registry),
            goproxy,
            requests,
            latency,
            hits,
            misses,
            bytes_in,
            bytes_out,
            storage_errors,
            storage: None,
        }
    }

    /// Counts a request.
    pub fn observe(&self, method: &'static str, status: u16, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels { method, status })
            .inc();
        self.latency
            .get_or_create(&MethodLabels { method })
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
