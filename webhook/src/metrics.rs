//! The webhook's Prometheus metrics (`ferry_webhook_*`).

use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};

use crate::admission::Decision;

/// The webhook's metrics, registered on one registry.
#[derive(Clone, Debug)]
pub struct WebhookMetrics {
    admissions: IntCounterVec,
    bad_requests: IntCounterVec,
    duration: Histogram,
    grants: IntGauge,
}

impl WebhookMetrics {
    /// Creates the metrics and registers them on `registry`.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self {
            admissions: IntCounterVec::new(
                Opts::new(
                    "ferry_webhook_admissions_total",
                    "Admission reviews answered, by result (injected, untouched, refused) and reason.",
                ),
                &["result", "reason"],
            )?,
            bad_requests: IntCounterVec::new(
                Opts::new(
                    "ferry_webhook_bad_requests_total",
                    "Requests answered with a 4xx or 5xx instead of a review, by HTTP status.",
                ),
                &["status"],
            )?,
            duration: Histogram::with_opts(
                HistogramOpts::new(
                    "ferry_webhook_admission_duration_seconds",
                    "Time from a request's body being read to its review being serialised.",
                )
                .buckets(vec![
                    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.1,
                ]),
            )?,
            grants: IntGauge::new("ferry_webhook_grants", "Grants in the webhook's index.")?,
        };
        registry.register(Box::new(metrics.admissions.clone()))?;
        registry.register(Box::new(metrics.bad_requests.clone()))?;
        registry.register(Box::new(metrics.duration.clone()))?;
        registry.register(Box::new(metrics.grants.clone()))?;
        Ok(metrics)
    }

    /// Counts one answered review and how long it took.
    pub fn observe(&self, decision: &Decision, took: Duration) {
        self.admissions
            .with_label_values(&[decision.result(), decision.reason()])
            .inc();
        self.duration.observe(took.as_secs_f64());
    }

    /// Counts one request answered with an HTTP error.
    pub fn observe_bad_request(&self, status: u16) {
        self.bad_requests
            .with_label_values(&[&status.to_string()])
            .inc();
    }

    /// Records the size of the Grant index.
    pub fn set_grants(&self, count: usize) {
        self.grants.set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// How many reviews ended with `result`, whatever the reason (for tests).
    pub fn admissions(&self, result: &str) -> u64 {
        self.admissions
            .collect()
            .iter()
            .flat_map(|family| family.get_metric())
            .filter(|metric| {
                metric
                    .get_label()
                    .iter()
                    .any(|label| label.name() == "result" && label.value() == result)
            })
            // Counters hold whole numbers; f64 is their storage type.
            .map(|metric| metric.get_counter().get_value() as u64)
            .sum()
    }
}
