//! Prometheus metrics: request counts and latency by matched route and status, pool gauges,
//! and domain counters recorded where they happen.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sqlx::PgPool;

/// Latency buckets in seconds, dense under 100 ms where this service should live, with an edge
/// at each latency target (30 ms for clock-in and user lists, 100 ms for sync, 150 ms for
/// login), so the share of requests within one is counted, not interpolated.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.03, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Requests served by one shared statement (`db::coalesce`), up to its maximum.
const BATCH_SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

#[derive(Clone)]
pub struct Metrics {
    handle: PrometheusHandle,
}

impl Metrics {
    /// The process-wide recorder (the `metrics` macros write to a global one), installed on
    /// first use.
    pub fn global() -> Self {
        static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
        let handle = HANDLE.get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("http_request_duration_seconds".into()),
                    LATENCY_BUCKETS,
                )
                .expect("the bucket list is not empty")
                .set_buckets_for_metric(
                    Matcher::Full("coalesced_batch_size".into()),
                    BATCH_SIZE_BUCKETS,
                )
                .expect("the bucket list is not empty")
                .install_recorder()
                .expect("no other metrics recorder is installed")
        });
        Self {
            handle: handle.clone(),
        }
    }

    /// Drains the histograms' recorded samples into their buckets. The recorder keeps every
    /// sample until this or a scrape runs, so the jobs call it every few seconds.
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// Renders the exposition text, refreshing the pool gauges first.
    pub fn render(&self, pool: &PgPool) -> String {
        metrics::gauge!("db_pool_connections").set(pool.size() as f64);
        metrics::gauge!("db_pool_idle_connections").set(pool.num_idle() as f64);
        self.handle.render()
    }
}

/// The method as a label: the standard ones by name, any other token as `OTHER`, so a client
/// inventing methods cannot add series without bound.
pub fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

pub fn record_request(method: &'static str, route: &str, status: u16, seconds: f64) {
    let labels = [
        ("method", method.to_string()),
        ("route", route.to_string()),
        ("status", status.to_string()),
    ];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels).record(seconds);
}
