//! The objects most tests start from: a BrokeredSecret, and an
//! AccessPolicy granting secrets to one service account, created with the
//! account, waited on until the operator has made the Grants.

use std::time::Duration;

use ferry_api::resources::{AccessPolicy, BrokeredSecret, Grant};
use ferry_api::testing;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};

use crate::{HarnessError, create_object, poll_until};

/// How long the operator may take to make Grants.
const GRANTS_DEADLINE: Duration = Duration::from_secs(60);

/// Creates `object` (built with `ferry_api::testing`, say) in the
/// namespace its metadata names, and returns it as stored.
pub async fn create_resource<K>(client: &kube::Client, object: &K) -> Result<K, HarnessError>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let namespace = object
        .meta()
        .namespace
        .as_deref()
        .ok_or_else(|| HarnessError::Process(format!("{object:?} names no namespace")))?;
    Ok(Api::<K>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), object)
        .await?)
}

/// Creates the BrokeredSecret `secret`.
pub async fn create_brokered_secret(
    client: &kube::Client,
    secret: &BrokeredSecret,
) -> Result<BrokeredSecret, HarnessError> {
    create_resource(client, secret).await
}

/// Creates, in `namespace`, the admin Secret `db-admin` holding `dsn` under
/// key `dsn` (brokerable, and its owner allowing the broker to rotate that
/// key) and the postgres BrokeredSecret `orders-db` using it, whose roles
/// join `member_of`: the fixture of the admin-rotation tests.
pub async fn rotatable_orders_db(
    client: &kube::Client,
    namespace: &str,
    dsn: &str,
    member_of: &str,
) -> Result<BrokeredSecret, HarnessError> {
    create_object::<k8s_openapi::api::core::v1::Secret>(
        client,
        namespace,
        json!({"metadata": {
                "name": "db-admin",
                "labels": {"ferry.dev/brokerable": "true"},
                "annotations": {"ferry.dev/rotatable-key": "dsn"},
            },
            "stringData": {"dsn": dsn}}),
    )
    .await?;
    let orders_db = testing::brokered_secret(namespace, "orders-db")
        .postgres("db-admin", "dsn")
        .member_of(&[member_of])
        .build();
    create_brokered_secret(client, &orders_db).await
}

/// Creates the BrokeredSecret `namespace/name` with `spec` as JSON, for
/// tests whose point is the spec as a user writes it.
pub async fn create_brokered_secret_from(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    spec: Value,
) -> Result<BrokeredSecret, HarnessError> {
    let mut secret = testing::brokered_secret(namespace, name).build();
    secret.spec = serde_json::from_value(spec)
        .map_err(|error| HarnessError::Process(format!("BrokeredSecret {name}: {error}")))?;
    create_brokered_secret(client, &secret).await
}

/// A service account an AccessPolicy grants to.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// The service account's namespace.
    pub namespace: &'a str,
    /// The service account's name.
    pub name: &'a str,
}

/// [`grant`] of the AccessPolicy `owner/policy` granting `secrets` (its
/// `spec.secrets` entries, as JSON) to `subject`.
pub async fn grant_to(
    client: &kube::Client,
    owner: &str,
    policy: &str,
    subject: Subject<'_>,
    secrets: Value,
) -> Result<(), HarnessError> {
    let mut built = testing::access_policy(owner, policy)
        .service_account(subject.namespace, subject.name)
        .build();
    built.spec.secrets = serde_json::from_value(secrets)
        .map_err(|error| HarnessError::Process(format!("AccessPolicy {policy}: {error}")))?;
    grant(client, built).await
}

/// Creates the AccessPolicy `policy`, creates the service accounts it
/// names if missing, and waits until the operator has made one Grant per
/// service account and secret.
pub async fn grant(client: &kube::Client, policy: AccessPolicy) -> Result<(), HarnessError> {
    let created = create_resource(client, &policy).await?;
    let owner = created.metadata.namespace.clone().unwrap_or_default();
    let name = created.metadata.name.clone().unwrap_or_default();
    let expected = created.spec.secrets.len();
    let accounts = created
        .spec
        .subjects
        .iter()
        .filter_map(|subject| subject.service_account.clone());
    for account in accounts {
        ensure_service_account(client, &account.namespace, &account.name).await?;
        let grants: Api<Grant> = Api::namespaced(client.clone(), &account.namespace);
        let what = format!(
            "the operator to make {expected} Grants of AccessPolicy {owner}/{name} for {}/{}",
            account.namespace, account.name
        );
        poll_until(&what, GRANTS_DEADLINE, || async {
            let made = grants
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .iter()
                .filter(|grant| {
                    grant.spec.service_account == account.name
                        && grant.spec.policy.namespace == owner
                        && grant.spec.policy.name == name
                })
                .count();
            (made >= expected).then_some(())
        })
        .await?;
    }
    Ok(())
}

/// Creates the service account `namespace/name` unless it exists.
async fn ensure_service_account(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<(), HarnessError> {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    if accounts.get_opt(name).await?.is_some() {
        return Ok(());
    }
    let account: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": name}}))
        .map_err(|e| HarnessError::Process(e.to_string()))?;
    match accounts.create(&PostParams::default(), &account).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// For tests and benchmarks that run no operator: writes, as the operator
/// would, the AccessPolicy `secret_namespace/policy` granting the secret
/// `secret_namespace/secret` to `subject`, and its Grant `grant_name` in
/// the subject's namespace, labelled and pointing at the policy's uid (the
/// broker and the webhook honour no other Grant).
pub async fn direct_grant(
    client: &kube::Client,
    subject: Subject<'_>,
    secret_namespace: &str,
    secret: &str,
    policy: &str,
    grant_name: &str,
) -> Result<Grant, HarnessError> {
    let policy_name = policy;
    let policy = create_object::<AccessPolicy>(
        client,
        secret_namespace,
        json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "AccessPolicy",
               "metadata": {"name": policy_name},
               "spec": {"subjects": [{"serviceAccount":
                                       {"name": subject.name, "namespace": subject.namespace}}],
                        "secrets": [{"name": secret}]}}),
    )
    .await;
    let policy = match policy {
        Ok(policy) => policy,
        // Several Grants of one policy: it names them all, or the test says so.
        Err(HarnessError::Kube(kube::Error::Api(status))) if status.code == 409 => {
            Api::<AccessPolicy>::namespaced(client.clone(), secret_namespace)
                .get(policy_name)
                .await?
        }
        Err(error) => return Err(error),
    };
    let uid = policy.metadata.uid.clone().unwrap_or_default();
    create_object::<Grant>(
        client,
        subject.namespace,
        json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "Grant",
               "metadata": {"name": grant_name,
                            "labels": {ferry_contract::MANAGED_BY_LABEL: ferry_contract::OPERATOR_MANAGER,
                                       ferry_contract::POLICY_UID_LABEL: uid}},
               "spec": {"serviceAccount": subject.name,
                        "secret": {"namespace": secret_namespace, "name": secret},
                        "maxTtl": "1h",
                        "policy": {"namespace": secret_namespace, "name": policy_name, "uid": uid}}}),
    )
    .await
}

/// For benchmarks, which run no operator: namespaces `payments` and
/// `shop`; in `payments` the Secret `api-key` (a 64-byte `token` and a
/// `url`) and each of `secrets` (name and spec) as a BrokeredSecret, each
/// granted to `shop/checkout` by a Grant written directly; the service
/// account; and the opted-in pod `shop/api`, which is returned.
pub async fn bench_tenant(
    client: &kube::Client,
    secrets: &[(&str, Value)],
) -> Result<k8s_openapi::api::core::v1::Pod, HarnessError> {
    use k8s_openapi::api::core::v1::{Namespace, Secret};
    for name in ["payments", "shop"] {
        let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))
            .map_err(|e| HarnessError::Process(e.to_string()))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await?;
    }
    create_object::<Secret>(
        client,
        "payments",
        json!({"metadata": {"name": "api-key", "labels": {"ferry.dev/brokerable": "true"}},
               "stringData": {"token": "x".repeat(64), "url": "https://orders.payments.svc"}}),
    )
    .await?;
    for (name, spec) in secrets {
        create_brokered_secret_from(client, "payments", name, spec.clone()).await?;
        let grant = direct_grant(
            client,
            Subject {
                namespace: "shop",
                name: "checkout",
            },
            "payments",
            name,
            &format!("bench-{name}"),
            &format!("{name}-for-checkout"),
        )
        .await?;
        // A JWT secret's Grant carries its audiences and scopes, as the
        // operator writes it: a token needs at least one audience.
        if let Some(jwt) = spec["source"].get("jwt") {
            Api::<Grant>::namespaced(client.clone(), "shop")
                .patch(
                    grant.metadata.name.as_deref().unwrap_or_default(),
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(json!({"spec": {
                        "audience": jwt["audience"], "scopes": jwt["scopes"]}})),
                )
                .await?;
        }
    }
    create_object::<ServiceAccount>(client, "shop", json!({"metadata": {"name": "checkout"}}))
        .await?;
    create_object(
        client,
        "shop",
        json!({"metadata": {"name": "api", "labels": {"ferry.dev/inject": "true"}},
               "spec": {"serviceAccountName": "checkout",
                        "containers": [{"name": "app", "image": "app:1"}]}}),
    )
    .await
}

/// For benchmarks of cold paths, after [`bench_tenant`]: `count` pods of
/// `shop/checkout` (`cold-<i>`), each granted a kubernetesSecret
/// BrokeredSecret of its own (`payments/cold-<i>`, copying a Secret of its
/// own), with a token bound to it for the broker: a pod's first request
/// then costs the broker a TokenReview and a Secret `get`, as a new pod's
/// does.
pub async fn bench_cold_pods(
    client: &kube::Client,
    count: u64,
) -> Result<Vec<ColdPod>, HarnessError> {
    use futures::StreamExt as _;
    use k8s_openapi::api::core::v1::Secret;
    futures::stream::iter(0..count)
        .map(|i| async move {
            let name = format!("cold-{i}");
            create_object::<Secret>(
                client,
                "payments",
                json!({"metadata": {"name": name, "labels": {"ferry.dev/brokerable": "true"}},
                       "stringData": {"token": "y".repeat(64)}}),
            )
            .await?;
            create_brokered_secret_from(
                client,
                "payments",
                &name,
                json!({"source": {"kubernetesSecret": {"name": name}}}),
            )
            .await?;
            direct_grant(
                client,
                Subject {
                    namespace: "shop",
                    name: "checkout",
                },
                "payments",
                &name,
                &name,
                &format!("{name}-for-checkout"),
            )
            .await?;
            let (pod, token) = crate::broker_pod(client, "shop", &name, "checkout").await?;
            Ok(ColdPod {
                uid: pod.metadata.uid.unwrap_or_default(),
                secret: name,
                token,
            })
        })
        .buffer_unordered(8)
        .collect::<Vec<Result<ColdPod, HarnessError>>>()
        .await
        .into_iter()
        .collect()
}

/// A pod of [`bench_cold_pods`]: named like its secret.
#[derive(Debug, Clone)]
pub struct ColdPod {
    /// The name of the pod and of its BrokeredSecret (`payments/<secret>`).
    pub secret: String,
    /// The pod's uid.
    pub uid: String,
    /// A token bound to the pod for the broker.
    pub token: String,
}
