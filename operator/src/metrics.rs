//! The operator's Prometheus metrics (`ferry_operator_*`).

use std::time::Duration;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

/// The operator's metrics, registered on one registry.
#[derive(Clone)]
pub struct OperatorMetrics {
    reconciles: IntCounterVec,
    errors: IntCounterVec,
    duration: HistogramVec,
    grants: IntGauge,
    leader: IntGauge,
}

impl OperatorMetrics {
    /// Creates the metrics and registers them on `registry`.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self {
            reconciles: IntCounterVec::new(
                Opts::new(
                    "ferry_operator_reconciles_total",
                    "Reconciles by controller and result (ok or error).",
                ),
                &["controller", "result"],
            )?,
            errors: IntCounterVec::new(
                Opts::new(
                    "ferry_operator_reconcile_errors_total",
                    "Failed reconciles by controller and error kind.",
                ),
                &["controller", "reason"],
            )?,
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "ferry_operator_reconcile_duration_seconds",
                    "Time one reconcile takes.",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
                &["controller"],
            )?,
            grants: IntGauge::new(
                "ferry_operator_grants",
                "Grants currently managed by the operator.",
            )?,
            leader: IntGauge::new(
                "ferry_operator_leader",
                "1 while this replica is the leader, else 0.",
            )?,
        };
        registry.register(Box::new(metrics.reconciles.clone()))?;
        registry.register(Box::new(metrics.errors.clone()))?;
        registry.register(Box::new(metrics.duration.clone()))?;
        registry.register(Box::new(metrics.grants.clone()))?;
        registry.register(Box::new(metrics.leader.clone()))?;
        Ok(metrics)
    }

    /// Records one reconcile: its duration and whether it succeeded (the
    /// error kind when it did not).
    pub fn observe_reconcile(&self, controller: &str, took: Duration, result: Result<(), &str>) {
        self.duration
            .with_label_values(&[controller])
            .observe(took.as_secs_f64());
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.reconciles
            .with_label_values(&[controller, outcome])
            .inc();
    }

    /// Records a failed reconcile by error kind.
    pub fn observe_error(&self, controller: &str, reason: &str) {
        self.errors.with_label_values(&[controller, reason]).inc();
    }

    /// Sets how many Grants the operator manages.
    pub fn set_grants(&self, count: i64) {
        self.grants.set(count);
    }

    /// Sets whether this replica leads.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// How many reconciles of `controller` ended with `result` (`ok` or
    /// `error`); for tests and diagnostics.
    pub fn reconciles(&self, controller: &str, result: &str) -> u64 {
        self.reconciles
            .with_label_values(&[controller, result])
            .get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Encoder;

    #[test]
    fn registered_metrics_render_under_ferry_operator_names() {
        let registry = Registry::new();
        let metrics = OperatorMetrics::new(&registry).unwrap();
        metrics.observe_reconcile("accesspolicy", Duration::from_millis(3), Ok(()));
        metrics.observe_reconcile("accesspolicy", Duration::from_millis(3), Err("kube"));
        metrics.observe_error("accesspolicy", "kube");
        metrics.set_grants(7);
        metrics.set_leader(true);

        let mut text = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&registry.gather(), &mut text)
            .unwrap();
        let text = String::from_utf8(text).unwrap();
        for expected in [
            r#"ferry_operator_reconciles_total{controller="accesspolicy",result="ok"} 1"#,
            r#"ferry_operator_reconcile_errors_total{controller="accesspolicy",reason="kube"} 1"#,
            "ferry_operator_reconcile_duration_seconds_bucket",
            "ferry_operator_grants 7",
            "ferry_operator_leader 1",
        ] {
            assert!(text.contains(expected), "missing {expected} in\n{text}");
        }
        assert_eq!(metrics.reconciles("accesspolicy", "error"), 1);
    }
}
