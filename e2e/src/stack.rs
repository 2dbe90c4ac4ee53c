//! All of ferry running against one cluster, as the demo and the
//! end-to-end tests need it: the CRDs, the operator, the broker, the
//! webhook registered with the apiserver and pointing pods at that broker,
//! and the node stand-in that runs the injected sidecar.

use std::sync::{Mutex, PoisonError};

use ferry_broker::lease_id::{LeaseKeys, generate_lease_key};
use ferry_webhook::config::InjectionConfig;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};

use crate::{
    Cluster, HarnessError, NodeStandIn, RunningBroker, RunningOperator, RunningWebhook,
    install_crds, workspace_binary,
};

/// ferry's namespace in the stack.
pub const FERRY_NAMESPACE: &str = "ferry-system";

/// ferry's components, running until dropped.
pub struct Stack {
    /// Runs injected sidecars; dropped first, so sidecars still reach the
    /// broker to revoke when the stack stops.
    pub node: NodeStandIn,
    /// The mutating webhook, registered.
    pub webhook: RunningWebhook,
    broker: Mutex<Option<RunningBroker>>,
    broker_url: String,
    /// The operator (Grants).
    pub operator: RunningOperator,
}

impl Stack {
    /// Installs and starts everything against `cluster`.
    pub async fn start(cluster: &Cluster) -> Result<Self, HarnessError> {
        let (operator, broker, webhook) =
            start_components(cluster, InjectionConfig::default()).await?;
        let broker_url = broker.url();
        let node = NodeStandIn::start(
            cluster.config().clone(),
            &workspace_binary("ferry-sidecar")?,
        )?;
        Ok(Self {
            node,
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
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(use_broker)
    }

    /// Stops the broker, as an outage would.
    pub fn stop_broker(&self) {
        let broker = self
            .broker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(broker) = broker {
            broker.stop();
        }
    }
}

/// Installs the CRDs and ferry's namespace and starts the operator, a
/// broker and the webhook (registered), the webhook injecting as
/// `injection` says, pointed at that broker in ferry's namespace.
pub(crate) async fn start_components(
    cluster: &Cluster,
    injection: InjectionConfig,
) -> Result<(RunningOperator, RunningBroker, RunningWebhook), HarnessError> {
    let client = cluster.client()?;
    install_crds(&client).await?;
    let namespace = Namespace {
        metadata: kube::api::ObjectMeta {
            name: Some(FERRY_NAMESPACE.into()),
            ..Default::default()
        },
        ..Namespace::default()
    };
    match Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(error) => return Err(error.into()),
    }
    let operator = RunningOperator::start(cluster.config().clone())?;
    let key =
        generate_lease_key().map_err(|_| HarnessError::Process("generating a lease key".into()))?;
    let broker = RunningBroker::start(cluster, LeaseKeys::new(&key, &[]))?;
    let webhook = RunningWebhook::start(
        cluster,
        InjectionConfig {
            ferry_namespace: FERRY_NAMESPACE.into(),
            broker_url: broker.url(),
            broker_ca_pem: Some(cluster.authority().cert_pem()),
            ..injection
        },
    )?;
    webhook.register(&client, FERRY_NAMESPACE).await?;
    Ok((operator, broker, webhook))
}
