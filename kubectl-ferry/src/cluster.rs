//! The plugin's I/O edge: a client from the caller's kubeconfig (kube's
//! own loading: `--kubeconfig`, `KUBECONFIG`, `~/.kube/config`, in-cluster;
//! `--context`), and the reads the commands make, each failing with an
//! error that names what was read and what right it needs.

use ferry_contract::lease_api::{self, LiveLeaseList};
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::api::{Api, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde::de::DeserializeOwned;

/// How to reach the cluster, from the global flags.
#[derive(Debug, Clone, Default)]
pub struct Connection {
    /// `--kubeconfig`.
    pub kubeconfig: Option<std::path::PathBuf>,
    /// `--context`.
    pub context: Option<String>,
    /// `-n/--namespace`.
    pub namespace: Option<String>,
}

/// A client and the namespace commands default to.
pub struct Cluster {
    /// The client, as the caller.
    pub client: Client,
    /// `-n`, else the context's namespace, else `default`.
    pub namespace: String,
}

impl Connection {
    /// Connects as the kubeconfig says.
    pub async fn connect(&self) -> anyhow::Result<Cluster> {
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..KubeConfigOptions::default()
        };
        let config = match &self.kubeconfig {
            Some(path) => {
                let kubeconfig = Kubeconfig::read_from(path).map_err(|error| {
                    anyhow::anyhow!("--kubeconfig {}: {error}", path.display())
                })?;
                Config::from_custom_kubeconfig(kubeconfig, &options).await?
            }
            None if self.context.is_some() => Config::from_kubeconfig(&options).await?,
            None => Config::infer().await.map_err(|error| {
                anyhow::anyhow!(
                    "no cluster to talk to: {error} (set KUBECONFIG, pass --kubeconfig, or run in a pod)"
                )
            })?,
        };
        let namespace = self
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        Ok(Cluster {
            client: Client::try_from(config)?,
            namespace,
        })
    }
}

/// `error` from reading `what`, with a hint for the usual causes.
pub fn failed(what: &str, error: kube::Error) -> anyhow::Error {
    match error {
        kube::Error::Api(status) if status.code == 403 => anyhow::anyhow!(
            "{what}: forbidden: {} (ask your cluster admin for that right, or run as someone who has it)",
            status.message
        ),
        kube::Error::Api(status)
            if status.code == 404
                && status
                    .message
                    .contains("the server could not find the requested resource") =>
        {
            anyhow::anyhow!(
                "{what}: the cluster does not serve this resource: is ferry installed (its CRDs applied)?"
            )
        }
        kube::Error::Api(status) => anyhow::anyhow!("{what}: {} ({})", status.message, status.code),
        other => anyhow::anyhow!("{what}: {other}"),
    }
}

/// Lists every `K` in `namespace` (all namespaces when `None`).
pub async fn list<K>(client: &Client, namespace: Option<&str>, what: &str) -> anyhow::Result<Vec<K>>
where
    K: kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
{
    let api: Api<K> = match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    };
    let whence = namespace.map_or_else(
        || "in all namespaces".to_owned(),
        |ns| format!("in namespace {ns}"),
    );
    api.list(&ListParams::default())
        .await
        .map(|list| list.items)
        .map_err(|error| failed(&format!("listing {what} {whence}"), error))
}

/// Gets `namespace/name`, `None` when it does not exist.
pub async fn get<K>(
    client: &Client,
    namespace: &str,
    name: &str,
    what: &str,
) -> anyhow::Result<Option<K>>
where
    K: kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
{
    Api::<K>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(|error| failed(&format!("reading {what} {namespace}/{name}"), error))
}

/// The caller's username, as the apiserver authenticates it.
pub async fn whoami(client: &Client) -> anyhow::Result<String> {
    let review = Api::<SelfSubjectReview>::all(client.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .map_err(|error| {
            failed(
                "asking the apiserver who you are (SelfSubjectReview)",
                error,
            )
        })?;
    review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "the apiserver did not say who you are (SelfSubjectReview has no username)"
            )
        })
}

/// The live leases the broker shows the caller, of `namespace` (the
/// secrets' namespace) or of every namespace it may see.
pub async fn live_leases(
    client: &Client,
    namespace: Option<&str>,
) -> anyhow::Result<LiveLeaseList> {
    let path = lease_api::list_path(namespace);
    let request = http::Request::get(&path)
        .body(Vec::new())
        .map_err(|error| anyhow::anyhow!("building GET {path}: {error}"))?;
    client.request::<LiveLeaseList>(request).await.map_err(|error| match error {
        kube::Error::Api(status) if status.code == 404 || status.code == 503 => anyhow::anyhow!(
            "the broker's lease API ({}) is not available: {} (is the APIService {} installed and the broker running?)",
            lease_api::GROUP,
            status.message,
            lease_api::API_SERVICE_NAME
        ),
        other => failed(&format!("reading live leases (GET {path})"), other),
    })
}
