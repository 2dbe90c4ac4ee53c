//! ferry's controllers run in-process against a harness cluster, the way
//! `ferry-operator run` runs them, so tests can start, stop and restart
//! them and run them as a chosen identity.

use std::sync::Arc;
use std::thread::JoinHandle;

use ferry_operator::metrics::OperatorMetrics;
use tokio_util::sync::CancellationToken;

use crate::HarnessError;

/// The controllers running on a thread of their own (with their own tokio
/// runtime, so they outlive any single test's runtime). Stopped on drop.
pub struct RunningOperator {
    shutdown: CancellationToken,
    thread: Option<JoinHandle<()>>,
    metrics: Arc<OperatorMetrics>,
}

impl RunningOperator {
    /// Starts the controllers with the identity of `config`.
    pub fn start(config: kube::Config) -> Result<Self, HarnessError> {
        let shutdown = CancellationToken::new();
        let registry = prometheus::Registry::new();
        let metrics = Arc::new(
            OperatorMetrics::new(&registry)
                .map_err(|e| HarnessError::Process(format!("registering metrics: {e}")))?,
        );
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|source| HarnessError::Io {
                what: "starting the operator's runtime".into(),
                source,
            })?;
        let (token, thread_metrics) = (shutdown.clone(), metrics.clone());
        let thread = std::thread::Builder::new()
            .name("ferry-operator".into())
            .spawn(move || {
                runtime.block_on(async move {
                    match kube::Client::try_from(config) {
                        Ok(client) => {
                            ferry_operator::controller::run(
                                client,
                                thread_metrics,
                                Some("e2e".into()),
                                token,
                            )
                            .await
                        }
                        Err(error) => tracing::error!(%error, "operator client"),
                    }
                });
            })
            .map_err(|source| HarnessError::Io {
                what: "starting the operator's thread".into(),
                source,
            })?;
        Ok(Self {
            shutdown,
            thread: Some(thread),
            metrics,
        })
    }

    /// The operator's metrics.
    pub fn metrics(&self) -> &OperatorMetrics {
        &self.metrics
    }

    /// Stops the controllers and waits for them to finish.
    pub fn stop(mut self) {
        self.shutdown_and_join();
    }

    fn shutdown_and_join(&mut self) {
        self.shutdown.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for RunningOperator {
    fn drop(&mut self) {
        self.shutdown_and_join();
    }
}
