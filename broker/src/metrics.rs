//! The broker's Prometheus metrics (`ferry_broker_*`).

use std::time::Duration;

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use super::auth::CacheUse;
use super::providers::Reaped;

/// The broker's metrics, registered on one registry.
#[derive(Clone, Debug)]
pub struct BrokerMetrics {
    decisions: IntCounterVec,
    duration: HistogramVec,
    reviews: IntCounterVec,
    provider_errors: IntCounterVec,
    reaped: IntCounterVec,
    reap_failures: IntCounterVec,
    revocable: IntGaugeVec,
    oauth2_token_requests: IntCounter,
    custody_age: IntGaugeVec,
    custody_writes: IntCounter,
    admin_rotations: IntCounterVec,
    withdrawals: IntCounterVec,
    watches: IntGauge,
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
                    "Token authentications by cache use (hit, miss, skipped: refused before any review): the hit ratio of the TokenReview cache, and with miss the TokenReviews made.",
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
            reaped: IntCounterVec::new(
                Opts::new(
                    "ferry_broker_reaped_total",
                    "Credentials the reaper dropped, by provider and reason (expired, pod_gone, withdrawn).",
                ),
                &["provider", "reason"],
            )?,
            reap_failures: IntCounterVec::new(
                Opts::new(
                    "ferry_broker_reap_failures_total",
                    "Backends (databases) or credentials the reaper could not reach or drop, by provider; each is retried on the next pass.",
                ),
                &["provider"],
            )?,
            oauth2_token_requests: IntCounter::new(
                "ferry_broker_oauth2_token_requests_total",
                "Token requests sent to authorization servers (oauth2 sources): with shared tokens, far fewer than leases.",
            )?,
            withdrawals: IntCounterVec::new(
                Opts::new(
                    "ferry_broker_withdrawals_total",
                    "Live leases revoked because a Revocation took them away (revoked) or no valid Grant allows them any more (grant_lost), by result (allowed: revoked; denied: the backend failed, retried by the reaper).",
                ),
                &["reason", "result"],
            )?,
            watches: IntGauge::new(
                "ferry_broker_revocation_watches",
                "Sidecars waiting on this replica to hear of a revocation (one held request each).",
            )?,
            revocable: IntGaugeVec::new(
                Opts::new(
                    "ferry_broker_active_leases",
                    "Revocable credentials alive in their backends at the last reaper pass, by provider (cluster-wide, read from the backends).",
                ),
                &["provider"],
            )?,
            custody_age: IntGaugeVec::new(
                Opts::new(
                    "ferry_broker_custody_age_seconds",
                    "Seconds since each credential the broker holds was last rotated, by credential (lease_key, jwt_signing_key, postgres_admin, oauth2_client, x509_ca, kubernetes_secret), namespace and Secret; names only, never a value.",
                ),
                &["credential", "namespace", "secret"],
            )?,
            custody_writes: IntCounter::new(
                "ferry_broker_custody_status_writes_total",
                "Custody status writes to BrokeredSecrets (at most one a minute per secret for lastUsed alone).",
            )?,
            admin_rotations: IntCounterVec::new(
                Opts::new(
                    "ferry_broker_admin_rotations_total",
                    "Rotations of postgres admin credentials by result (completed, rolled_back, failed).",
                ),
                &["result"],
            )?,
        };
        registry.register(Box::new(metrics.custody_age.clone()))?;
        registry.register(Box::new(metrics.custody_writes.clone()))?;
        registry.register(Box::new(metrics.admin_rotations.clone()))?;
        registry.register(Box::new(metrics.reaped.clone()))?;
        registry.register(Box::new(metrics.revocable.clone()))?;
        registry.register(Box::new(metrics.reap_failures.clone()))?;
        registry.register(Box::new(metrics.decisions.clone()))?;
        registry.register(Box::new(metrics.duration.clone()))?;
        registry.register(Box::new(metrics.reviews.clone()))?;
        registry.register(Box::new(metrics.provider_errors.clone()))?;
        registry.register(Box::new(metrics.oauth2_token_requests.clone()))?;
        registry.register(Box::new(metrics.withdrawals.clone()))?;
        registry.register(Box::new(metrics.watches.clone()))?;
        Ok(metrics)
    }

    /// Sets the custody ages to exactly `ages` (credential, namespace,
    /// Secret, seconds), forgetting credentials no longer held.
    pub fn custody_ages(&self, ages: &[(&'static str, String, String, i64)]) {
        self.custody_age.reset();
        for (credential, namespace, secret, seconds) in ages {
            self.custody_age
                .with_label_values(&[credential, namespace.as_str(), secret.as_str()])
                .set(*seconds);
        }
    }

    /// Counts one custody status write.
    pub fn custody_written(&self) {
        self.custody_writes.inc();
    }

    /// Counts one rotation of an admin credential.
    pub fn admin_rotation(&self, result: &str) {
        self.admin_rotations.with_label_values(&[result]).inc();
    }

    /// Counts one decision.
    pub fn observe_decision(&self, action: &str, result: &str) {
        self.decisions.with_label_values(&[action, result]).inc();
    }

    /// Counts one live lease revoked by a sweep.
    pub fn observe_withdrawal(&self, reason: &str, result: &str) {
        self.withdrawals.with_label_values(&[reason, result]).inc();
    }

    /// The gauge of sidecars watching for revocations here.
    pub fn watches(&self) -> IntGauge {
        self.watches.clone()
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
            CacheUse::Skipped => "skipped",
        };
        self.reviews.with_label_values(&[label]).inc();
    }

    /// Counts one backend failure.
    pub fn observe_provider_error(&self, provider: &str) {
        self.provider_errors.with_label_values(&[provider]).inc();
    }

    /// Records one reaper pass of `provider`.
    pub fn observe_reaped(&self, provider: &str, reaped: &Reaped) {
        let dropped = reaped.expired + reaped.pod_gone + reaped.withdrawn;
        for (reason, count) in [
            ("expired", reaped.expired),
            ("pod_gone", reaped.pod_gone),
            ("withdrawn", reaped.withdrawn),
        ] {
            self.reaped
                .with_label_values(&[provider, reason])
                .inc_by(u64::try_from(count).unwrap_or(u64::MAX));
        }
        self.reap_failures
            .with_label_values(&[provider])
            .inc_by(u64::try_from(reaped.failed).unwrap_or(u64::MAX));
        if reaped.failed == 0 {
            self.revocable
                .with_label_values(&[provider])
                .set(i64::try_from(reaped.found - dropped.min(reaped.found)).unwrap_or(i64::MAX));
        }
    }

    /// The counter of token requests sent to authorization servers, for
    /// the oauth2 provider to count with.
    pub fn oauth2_token_requests(&self) -> IntCounter {
        self.oauth2_token_requests.clone()
    }

    /// How many decisions of `action` had `result` (for tests).
    pub fn decisions(&self, action: &str, result: &str) -> u64 {
        self.decisions.with_label_values(&[action, result]).get()
    }
}
