//! The broker's Prometheus metrics (`ferry_broker_*`).

use std::time::Duration;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

use super::auth::CacheUse;

/// The broker's metrics, registered on one registry.
#[derive(Clone, Debug)]
pub struct BrokerMetrics {
    decisions: IntCounterVec,
    duration: HistogramVec,
    reviews: IntCounterVec,
    provider_errors: IntCounterVec,
}

impl BrokerMetrics {
    /// Creates the metrics and registers them on `registry`.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self {
            decisions: IntCounterVec::new(
                Opts::new(
                    "ferry_broker_decisions_total",
                    "Decisions by action (issue, renew, revoke) and result (allowed, denied).",
                ),
                &["action", "result"],
            )?,
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "ferry_broker_request_duration_seconds",
                    "Time to answer a request, authentication included, by action.",
                )
                .buckets(vec![
                    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.1, 0.5, 2.5,
                ]),
                &["action"],
            )?,
            reviews: IntCounterVec::new(
                Opts::new(
                    "ferry_broker_token_reviews_total",
                    "Token authentications by cache use (hit, miss): the hit ratio of the TokenReview cache.",
                ),
                &["cache"],
            )?,
            provider_errors: IntCounterVec::new(
                Opts::new(
                    "ferry_broker_provider_errors_total",
                    "Backend failures by provider.",
                ),
                &["provider"],
            )?,
        };
        registry.register(Box::new(metrics.decisions.clone()))?;
        registry.register(Box::new(metrics.duration.clone()))?;
        registry.register(Box::new(metrics.reviews.clone()))?;
        registry.register(Box::new(metrics.provider_errors.clone()))?;
        Ok(metrics)
    }

    /// Counts one decision.
    pub fn observe_decision(&self, action: &str, result: &str) {
        self.decisions.with_label_values(&[action, result]).inc();
    }

    /// Records how long a request took.
    pub fn observe_duration(&self, action: &str, took: Duration) {
        self.duration
            .with_label_values(&[action])
            .observe(took.as_secs_f64());
    }

    /// Counts one token authentication.
    pub fn observe_review(&self, used: CacheUse) {
        let label = match used {
            CacheUse::Hit => "hit",
            CacheUse::Miss => "miss",
        };
        self.reviews.with_label_values(&[label]).inc();
    }

    /// Counts one backend failure.
    pub fn observe_provider_error(&self, provider: &str) {
        self.provider_errors.with_label_values(&[provider]).inc();
    }

    /// How many decisions of `action` had `result` (for tests).
    pub fn decisions(&self, action: &str, result: &str) -> u64 {
        self.decisions.with_label_values(&[action, result]).get()
    }
}
