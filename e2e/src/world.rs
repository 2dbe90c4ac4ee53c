//! The setup the broker, pod-lifecycle and sidecar test binaries share:
//! one [`World`] per test binary (the shared cluster with the CRDs, the
//! operator and an in-process broker), and one [`Tenant`] per test (a
//! namespace owning secrets and a namespace of workloads).

use ferry_api::resources::BrokeredSecret;
use ferry_api::testing::{self, BrokeredSecretBuilder};
use ferry_broker::lease_id::LeaseKeys;
use ferry_contract::{BROKERABLE, BROKERABLE_LABEL, DEFAULT_BROKER_AUDIENCE, INJECT_LABEL};
use k8s_openapi::api::core::v1::{Pod, Secret};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use crate::{
    Cluster, HarnessError, RunningBroker, RunningOperator, capture_logs, create_brokered_secret,
    create_object, grant, install_crds, pod_bound_token,
};

/// The key the shared broker seals lease ids with; a second broker given
/// it accepts the first one's leases.
pub const LEASE_KEY: [u8; 32] = [42; 32];

/// The shared cluster with the CRDs, the operator and the broker, started
/// once per test binary; log lines are captured from before it starts.
pub struct World {
    _operator: RunningOperator,
    /// The broker, keyed with [`LEASE_KEY`].
    pub broker: RunningBroker,
}

impl World {
    /// This test binary's world, started on first use.
    pub async fn shared() -> Result<&'static World, HarnessError> {
        static WORLD: OnceCell<World> = OnceCell::const_new();
        capture_logs();
        WORLD
            .get_or_try_init(|| async {
                let cluster = Cluster::shared().await?;
                install_crds(&cluster.client()?).await?;
                Ok(World {
                    _operator: RunningOperator::start(cluster.config().clone())?,
                    broker: RunningBroker::start(cluster, LeaseKeys::new(&LEASE_KEY, &[]))?,
                })
            })
            .await
    }
}

/// One test's namespaces in the shared cluster: `owner` holds the Secrets,
/// BrokeredSecrets and AccessPolicies, `app` the workloads.
pub struct Tenant {
    /// A client of the shared cluster.
    pub client: kube::Client,
    /// The namespace that owns the secrets.
    pub owner: String,
    /// The namespace of the workloads.
    pub app: String,
}

impl Tenant {
    /// Creates the namespaces `<prefix>-owner-…` and `<prefix>-app-…` in
    /// the shared cluster.
    pub async fn create(prefix: &str) -> Result<Self, HarnessError> {
        Self::create_in(Cluster::shared().await?, prefix).await
    }

    /// Like [`Self::create`], in `cluster`.
    pub async fn create_in(cluster: &Cluster, prefix: &str) -> Result<Self, HarnessError> {
        Ok(Self {
            client: cluster.client()?,
            owner: cluster.create_namespace(&format!("{prefix}-owner")).await?,
            app: cluster.create_namespace(&format!("{prefix}-app")).await?,
        })
    }

    /// Creates the Secret `name` in the owner's namespace with `string_data`.
    pub async fn secret(&self, name: &str, string_data: Value) -> Result<Secret, HarnessError> {
        create_object(
            &self.client,
            &self.owner,
            json!({"metadata": {"name": name, "labels": {BROKERABLE_LABEL: BROKERABLE}},
                   "stringData": string_data}),
        )
        .await
    }

    /// A BrokeredSecret `name` in the owner's namespace, to finish and pass
    /// to [`Self::create_brokered_secret`].
    pub fn brokered_secret(&self, name: &str) -> BrokeredSecretBuilder {
        testing::brokered_secret(&self.owner, name)
    }

    /// Creates the BrokeredSecret `secret` describes.
    pub async fn create_brokered_secret(
        &self,
        secret: BrokeredSecretBuilder,
    ) -> Result<BrokeredSecret, HarnessError> {
        create_brokered_secret(&self.client, &secret.build()).await
    }

    /// Grants `secrets` of the owner's namespace to the service account
    /// `account` of the app namespace by an AccessPolicy named after the
    /// account, and waits for the Grants.
    pub async fn grant(&self, account: &str, secrets: &[&str]) -> Result<(), HarnessError> {
        let policy = secrets.iter().fold(
            testing::access_policy(&self.owner, account).service_account(&self.app, account),
            |policy, secret| policy.secret(secret),
        );
        grant(&self.client, policy.build()).await
    }

    /// Creates the opted-in pod `name` of service account `account` in the
    /// app namespace (it never runs: the broker only needs it to exist),
    /// and returns it with a token bound to it for the broker.
    pub async fn pod(&self, name: &str, account: &str) -> Result<(Pod, String), HarnessError> {
        broker_pod(&self.client, &self.app, name, account).await
    }
}

/// Creates the opted-in pod `namespace/name` of service account `account`
/// (it never runs: the broker only needs it to exist), and returns it with
/// a token bound to it for the broker.
pub async fn broker_pod(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    account: &str,
) -> Result<(Pod, String), HarnessError> {
    let pod: Pod = create_object(
        client,
        namespace,
        json!({"metadata": {"name": name, "labels": {INJECT_LABEL: "true"}},
               "spec": {"serviceAccountName": account,
                        "containers": [{"name": "app", "image": "app:1"}]}}),
    )
    .await?;
    let token = pod_bound_token(client, &pod, DEFAULT_BROKER_AUDIENCE, 600).await?;
    Ok((pod, token))
}
