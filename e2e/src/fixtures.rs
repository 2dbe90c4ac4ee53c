//! The objects most tests start from: a BrokeredSecret, and an
//! AccessPolicy granting secrets to one service account, created with the
//! account, waited on until the operator has made the Grants.

use std::time::Duration;

use ferry_api::resources::{AccessPolicy, BrokeredSecret, Grant};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};

use crate::{HarnessError, create_object};

/// How long the operator may take to make Grants.
const GRANTS_DEADLINE: Duration = Duration::from_secs(60);

/// Creates the BrokeredSecret `namespace/name` with `spec`.
pub async fn create_brokered_secret(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    spec: Value,
) -> Result<BrokeredSecret, HarnessError> {
    create_object(
        client,
        namespace,
        json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "BrokeredSecret",
               "metadata": {"name": name}, "spec": spec}),
    )
    .await
}

/// Who is granted: a service account and its namespace.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// The service account's namespace.
    pub namespace: &'a str,
    /// The service account's name.
    pub name: &'a str,
}

/// Creates the AccessPolicy `owner/policy` granting `secrets` (its
/// `spec.secrets` entries) to `subject`, creates the service account if
/// missing, and waits until the operator has made one Grant per entry.
pub async fn grant(
    client: &kube::Client,
    owner: &str,
    policy: &str,
    subject: Subject<'_>,
    secrets: Value,
) -> Result<(), HarnessError> {
    let expected = secrets.as_array().map_or(0, Vec::len);
    create_object::<AccessPolicy>(
        client,
        owner,
        json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "AccessPolicy",
               "metadata": {"name": policy},
               "spec": {"subjects": [{"serviceAccount":
                                       {"name": subject.name, "namespace": subject.namespace}}],
                        "secrets": secrets}}),
    )
    .await?;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), subject.namespace);
    if accounts.get_opt(subject.name).await?.is_none() {
        let account: ServiceAccount =
            serde_json::from_value(json!({"metadata": {"name": subject.name}}))
                .map_err(|e| HarnessError::Process(e.to_string()))?;
        match accounts.create(&PostParams::default(), &account).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(error) => return Err(error.into()),
        }
    }
    let grants: Api<Grant> = Api::namespaced(client.clone(), subject.namespace);
    let started = std::time::Instant::now();
    loop {
        let made = grants
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|grant| {
                grant.spec.service_account == subject.name
                    && grant.spec.policy.namespace == owner
                    && grant.spec.policy.name == policy
            })
            .count();
        if made >= expected {
            return Ok(());
        }
        if started.elapsed() > GRANTS_DEADLINE {
            return Err(HarnessError::Process(format!(
                "the operator made {made} of {expected} Grants of AccessPolicy {owner}/{policy} \
                 in {GRANTS_DEADLINE:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
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
        json!({"metadata": {"name": "api-key"},
               "stringData": {"token": "x".repeat(64), "url": "https://orders.payments.svc"}}),
    )
    .await?;
    for (name, spec) in secrets {
        create_brokered_secret(client, "payments", name, spec.clone()).await?;
        direct_grant(
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
