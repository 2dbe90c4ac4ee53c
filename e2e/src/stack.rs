//! ferry's components against one cluster: the CRDs, the operator, the
//! broker and the webhook registered with the apiserver and pointing pods
//! at that broker ([`start_components`], which [`crate::PodStack`] runs for
//! the real node), and [`Stack`], the same with the node stand-in.

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

/// ferry's components with the node stand-in running the injected
/// sidecar, until dropped.
///
/// Only `make demo` uses it, as its fallback where this machine cannot run
/// containers (not root, or no containerd: the demo says which), so the
/// demo still shows a pod's secrets end to end. Every behaviour of ferry is
/// tested on the real node ([`crate::PodStack`] with [`crate::RealNode`]);
/// the stand-in is tested only for what the demo relies on
/// (`e2e/tests/node.rs`).
pub struct Stack {
    /// Runs injected sidecars; dropped first, so sidecars still reach the
    /// broker to revoke when the stack stops.
    pub node: NodeStandIn,
    /// The mutating webhook, registered.
    pub webhook: RunningWebhook,
    /// The broker the webhook points sidecars at.
    pub broker: RunningBroker,
    /// The operator (Grants).
    pub operator: RunningOperator,
}

impl Stack {
    /// Installs and starts everything against `cluster`.
    pub async fn start(cluster: &Cluster) -> Result<Self, HarnessError> {
        let (operator, broker, webhook) =
            start_components(cluster, InjectionConfig::default()).await?;
        let node = NodeStandIn::start(
            cluster.config().clone(),
            &workspace_binary("ferry-sidecar")?,
        )?;
        Ok(Self {
            node,
            webhook,
            broker,
            operator,
        })
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
