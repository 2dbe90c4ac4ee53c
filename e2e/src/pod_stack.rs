//! ferry's components for pods on the real node: the CRDs, the operator,
//! the broker and the webhook, with the webhook injecting the sidecar image
//! the node imported and pointing it at the broker on 127.0.0.1 (pods use
//! the host's network). Unlike the demo's fallback [`crate::Stack`], the
//! broker can be stopped under running pods ([`PodStack::stop_broker`]).
//!
//! The components run in the test process and log through its subscriber:
//! call [`crate::capture_logs_at`] (`"trace"`, say) before starting the
//! stack to choose their level, as `RUST_LOG` would for the binaries. The
//! sidecar has no levels; its log is the container's, read through the
//! apiserver like any pod's.

use std::sync::Mutex;

use ferry_webhook::config::InjectionConfig;

use crate::stack::start_components;
use crate::{
    Cluster, HarnessError, RealNode, RunningBroker, RunningOperator, RunningWebhook, images,
};

/// ferry running for the real node's pods, until dropped.
pub struct PodStack {
    /// The mutating webhook, registered.
    pub webhook: RunningWebhook,
    broker: Mutex<Option<RunningBroker>>,
    broker_url: String,
    /// The operator (Grants).
    pub operator: RunningOperator,
}

impl PodStack {
    /// Installs and starts everything against `cluster`, whose pods run on
    /// `node`.
    pub async fn start(cluster: &Cluster, node: &RealNode) -> Result<Self, HarnessError> {
        let _ = node;
        let (operator, broker, webhook) = start_components(
            cluster,
            InjectionConfig {
                sidecar_image: images::sidecar_image(),
                // The image was imported; nothing can be pulled here.
                image_pull_policy: "Never".into(),
                ..InjectionConfig::default()
            },
        )
        .await?;
        let broker_url = broker.url();
        Ok(Self {
            webhook,
            broker: Mutex::new(Some(broker)),
            broker_url,
            operator,
        })
    }

    /// The broker's URL (also after it was stopped).
    pub fn broker_url(&self) -> &str {
        &self.broker_url
    }

    /// Runs `use_broker` with the broker, if it still runs.
    pub fn with_broker<T>(&self, use_broker: impl FnOnce(&RunningBroker) -> T) -> Option<T> {
        self.broker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .map(use_broker)
    }

    /// Stops the broker, as an outage would; pods keep running.
    pub fn stop_broker(&self) {
        let broker = self
            .broker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(broker) = broker {
            broker.stop();
        }
    }
}
