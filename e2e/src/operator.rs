//! ferry's controllers run in-process against a harness cluster, the way
//! `ferry-operator run` runs them, so tests can start, stop and restart
//! them and run them as a chosen identity.

use std::sync::Arc;

use crate::HarnessError;
use crate::background::Background;
use ferry_api::confinement::Installation;
use ferry_operator::controller::GrantLimits;
use ferry_operator::metrics::OperatorMetrics;

/// The controllers running on a thread of their own (with their own tokio
/// runtime, so they outlive any single test's runtime). Stopped on drop.
pub struct RunningOperator {
    background: Background,
    metrics: Arc<OperatorMetrics>,
}

impl RunningOperator {
    /// Starts the controllers with the identity of `config`.
    pub fn start(config: kube::Config) -> Result<Self, HarnessError> {
        Self::start_with(config, Installation::default(), GrantLimits::default())
    }

    /// Starts the controllers with the identity of `config`, judging
    /// BrokeredSecrets by `installation`'s limits.
    pub fn start_in(
        config: kube::Config,
        installation: Installation,
    ) -> Result<Self, HarnessError> {
        Self::start_with(config, installation, GrantLimits::default())
    }

    /// Starts the controllers with the identity of `config`, capping
    /// Grants at `limits`.
    pub fn start_with_limits(
        config: kube::Config,
        limits: GrantLimits,
    ) -> Result<Self, HarnessError> {
        Self::start_with(config, Installation::default(), limits)
    }

    /// Starts the controllers with every setting given.
    fn start_with(
        config: kube::Config,
        installation: Installation,
        limits: GrantLimits,
    ) -> Result<Self, HarnessError> {
        let registry = prometheus::Registry::new();
        let metrics = Arc::new(
            OperatorMetrics::new(&registry)
                .map_err(|e| HarnessError::Process(format!("registering metrics: {e}")))?,
        );
        let thread_metrics = metrics.clone();
        let background = Background::spawn("ferry-operator", move |shutdown| async move {
            match kube::Client::try_from(config) {
                Ok(client) => {
                    ferry_operator::controller::run_with(
                        client,
                        thread_metrics,
                        Some("e2e".into()),
                        installation,
                        limits,
                        shutdown,
                    )
                    .await
                }
                Err(error) => tracing::error!(%error, "operator client"),
            }
        })?;
        Ok(Self {
            background,
            metrics,
        })
    }

    /// The operator's metrics.
    pub fn metrics(&self) -> &OperatorMetrics {
        &self.metrics
    }

    /// Stops the controllers and waits for them to finish.
    pub fn stop(mut self) {
        self.background.stop();
    }
}
