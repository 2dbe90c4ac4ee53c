//! ferry's components for pods on the real node: the CRDs, the operator,
//! the broker and the webhook, with the webhook injecting the sidecar image
//! the node imported and pointing it at the broker on 127.0.0.1 (pods use
//! the host's network). Like [`crate::Stack`], without the node stand-in.

use std::sync::Mutex;

use ferry_broker::lease_id::{LeaseKeys, generate_lease_key};
use ferry_webhook::config::InjectionConfig;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};

use crate::{
    Cluster, FERRY_NAMESPACE, HarnessError, RealNode, RunningBroker, RunningOperator,
    RunningWebhook, images, install_crds,
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
        let key = generate_lease_key()
            .map_err(|_| HarnessError::Process("generating a lease key".into()))?;
        let broker = RunningBroker::start(cluster, LeaseKeys::new(&key, &[]))?;
        let broker_url = broker.url();
        let webhook = RunningWebhook::start(
            cluster,
            InjectionConfig {
                ferry_namespace: FERRY_NAMESPACE.into(),
                broker_url: broker_url.clone(),
                broker_ca_pem: Some(cluster.authority().cert_pem()),
                sidecar_image: images::sidecar_image(),
                // The image was imported; nothing can be pulled here.
                image_pull_policy: "Never".into(),
                ..InjectionConfig::default()
            },
        )?;
        webhook.register(&client, FERRY_NAMESPACE).await?;
        Ok(Self {
            webhook,
            broker: Mutex::new(Some(broker)),
            broker_url,
            operator,
        })
    }

    /// The broker's URL.
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
}
