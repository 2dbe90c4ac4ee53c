//! Proves the harness runs a real control plane: real storage, real RBAC,
//! real service-account tokens, real controllers, and nothing left behind.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use ferry_e2e::{Cluster, eventually};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::authentication::v1::{
    BoundObjectReference, TokenRequest, TokenRequestSpec, TokenReview, TokenReviewSpec,
};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;

const TEST_AUDIENCE: &str = "ferry-test";

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]}
    }))
    .unwrap()
}

#[tokio::test]
async fn apiserver_reports_the_real_kubernetes_version() {
    let cluster = Cluster::shared().await.unwrap();
    let info = cluster.client().unwrap().apiserver_version().await.unwrap();
    let output = Command::new(cluster.bin("kube-apiserver"))
        .arg("--version")
        .output()
        .unwrap();
    let printed = String::from_utf8(output.stdout).unwrap();

    assert!(
        info.git_version.starts_with("v1."),
        "server reports {:?}",
        info.git_version
    );
    assert_ne!(info.minor, "0");
    assert_eq!(printed.trim(), format!("Kubernetes {}", info.git_version));
}

#[tokio::test]
async fn configmap_can_be_created_read_and_deleted_in_a_new_namespace() {
    let cluster = Cluster::shared().await.unwrap();
    let ns = cluster.create_namespace("harness-cm").await.unwrap();
    let configmaps: Api<ConfigMap> = Api::namespaced(cluster.client().unwrap(), &ns);
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "greeting"}, "data": {"hello": "world"}
    }))
    .unwrap();

    configmaps
        .create(&PostParams::default(), &cm)
        .await
        .unwrap();
    let read = configmaps.get("greeting").await.unwrap();
    assert_eq!(read.data.unwrap()["hello"], "world");

    configmaps
        .delete("greeting", &DeleteParams::default())
        .await
        .unwrap();
    assert!(configmaps.get_opt("greeting").await.unwrap().is_none());
}

#[tokio::test]
async fn new_namespace_gets_its_default_service_account_from_the_controller_manager() {
    let cluster = Cluster::shared().await.unwrap();
    let ns = format!("harness-sa-{}", std::process::id());
    let client = cluster.client().unwrap();
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
        )
        .await
        .unwrap();

    let accounts: Api<ServiceAccount> = Api::namespaced(client, &ns);
    eventually(
        "the default ServiceAccount",
        Duration::from_secs(60),
        || async { accounts.get_opt("default").await.unwrap() },
    )
    .await;
}

#[tokio::test]
async fn pod_bound_token_is_accepted_for_its_audience_with_pod_extras_and_refused_for_another() {
    let cluster = Cluster::shared().await.unwrap();
    let ns = cluster.create_namespace("harness-token").await.unwrap();
    let client = cluster.client().unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod = pods
        .create(&PostParams::default(), &pod("token-holder"))
        .await
        .unwrap();
    let uid = pod.metadata.uid.clone().unwrap();

    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![TEST_AUDIENCE.into()],
            expiration_seconds: Some(600),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some("token-holder".into()),
                uid: Some(uid.clone()),
            }),
        },
        ..TokenRequest::default()
    };
    let token = accounts
        .create_token_request("default", &PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .unwrap()
        .token;

    let reviews: Api<TokenReview> = Api::all(client);
    let review = |audience: &str| TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.clone()),
            audiences: Some(vec![audience.into()]),
        },
        ..TokenReview::default()
    };

    let accepted = reviews
        .create(&PostParams::default(), &review(TEST_AUDIENCE))
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(
        accepted.authenticated,
        Some(true),
        "error: {:?}",
        accepted.error
    );
    assert_eq!(accepted.audiences, Some(vec![TEST_AUDIENCE.to_string()]));
    let user = accepted.user.unwrap();
    assert_eq!(
        user.username.unwrap(),
        format!("system:serviceaccount:{ns}:default")
    );
    let extra: BTreeMap<String, Vec<String>> = user.extra.unwrap();
    assert_eq!(
        extra["authentication.kubernetes.io/pod-name"],
        vec!["token-holder".to_string()]
    );
    assert_eq!(extra["authentication.kubernetes.io/pod-uid"], vec![uid]);

    let refused = reviews
        .create(&PostParams::default(), &review("someone-else"))
        .await
        .unwrap()
        .status
        .unwrap();
    assert_ne!(refused.authenticated, Some(true));
    assert!(refused.user.is_none_or(|u| u.username.is_none()));
}

#[tokio::test]
async fn identity_without_a_binding_is_denied_by_rbac_until_bound() {
    let cluster = Cluster::shared().await.unwrap();
    let ns = cluster.create_namespace("harness-rbac").await.unwrap();
    let nobody = cluster.user_client("ferry-e2e-nobody", None).unwrap();
    let as_nobody: Api<ConfigMap> = Api::namespaced(nobody, &ns);

    match as_nobody.list(&ListParams::default()).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 403, "{status:?}");
            assert!(
                status.message.contains("ferry-e2e-nobody"),
                "{}",
                status.message
            );
        }
        other => panic!("expected 403 Forbidden, got {other:?}"),
    }

    // The same identity is allowed once RBAC says so: the 403 above came
    // from authorization, not from a broken client certificate.
    let binding = RoleBinding {
        metadata: kube::api::ObjectMeta {
            name: Some("nobody-views".into()),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: "view".into(),
        },
        subjects: Some(vec![Subject {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "User".into(),
            name: "ferry-e2e-nobody".into(),
            namespace: None,
        }]),
    };
    Api::<RoleBinding>::namespaced(cluster.client().unwrap(), &ns)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    eventually(
        "the RoleBinding to take effect",
        Duration::from_secs(30),
        || async { as_nobody.list(&ListParams::default()).await.ok() },
    )
    .await;
}

#[tokio::test]
async fn impersonated_service_account_gets_only_its_own_rights() {
    let cluster = Cluster::shared().await.unwrap();
    let ns = cluster
        .create_namespace("harness-impersonate")
        .await
        .unwrap();
    let user = format!("system:serviceaccount:{ns}:default");
    let client = cluster
        .impersonating_client(&user, &["system:serviceaccounts"])
        .unwrap();

    let message = forbidden(
        Api::<ConfigMap>::namespaced(client, &ns)
            .list(&ListParams::default())
            .await,
    );
    assert!(message.contains(&user), "{message}");
}

#[tokio::test]
async fn deployment_gets_a_replicaset_and_pods_and_garbage_is_collected() {
    let cluster = Cluster::shared().await.unwrap();
    let ns = cluster.create_namespace("harness-deploy").await.unwrap();
    let client = cluster.client().unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "app", "image": "registry.invalid/web:1"}]}
            }
        }
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let listed = eventually(
        "two pods from the Deployment",
        Duration::from_secs(60),
        || async {
            let list = pods
                .list(&ListParams::default().labels("app=web"))
                .await
                .unwrap();
            (list.items.len() == 2).then_some(list.items)
        },
    )
    .await;
    let owner = &listed[0].metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(owner.kind, "ReplicaSet");

    deployments
        .delete("web", &DeleteParams::background())
        .await
        .unwrap();
    let replicasets: Api<ReplicaSet> = Api::namespaced(client, &ns);
    eventually(
        "the garbage collector to delete the ReplicaSet",
        Duration::from_secs(60),
        || async {
            replicasets
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .is_empty()
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn second_cluster_runs_beside_the_shared_one_and_leaves_nothing_when_dropped() {
    let shared = Cluster::shared().await.unwrap();
    let own = Cluster::start().await.unwrap();
    assert_ne!(own.server(), shared.server());
    let own_ns = own.create_namespace("private").await.unwrap();
    let shared_namespaces: Api<k8s_openapi::api::core::v1::Namespace> =
        Api::all(shared.client().unwrap());
    assert!(
        shared_namespaces.get_opt(&own_ns).await.unwrap().is_none(),
        "clusters must not share storage"
    );

    let dir = own.dir().to_path_buf();
    let group = own.process_group();
    drop(own);

    assert!(!dir.exists(), "{} should be removed", dir.display());
    assert!(
        !process_group_alive(group),
        "process group {group} should be gone"
    );
}

#[tokio::test]
async fn killing_the_process_that_holds_a_cluster_stops_the_whole_control_plane() {
    // `ferry-e2e demo` holds a cluster; SIGKILL gives it no chance to drop it.
    let mut demo = Command::new(env!("CARGO_BIN_EXE_ferry-e2e"))
        .arg("demo")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(demo.stdout.take().unwrap());
    let mut kubeconfig = None;
    let mut group = None;
    for line in stdout.lines() {
        let line = line.unwrap();
        if let Some(path) = line.strip_prefix("kubeconfig: ") {
            kubeconfig = Some(std::path::PathBuf::from(path));
        }
        if let Some(pgid) = line.strip_prefix("control-plane process group: ") {
            group = Some(pgid.parse::<i32>().unwrap());
        }
        if kubeconfig.is_some() && group.is_some() {
            break;
        }
    }
    let (kubeconfig, group) = (
        kubeconfig.expect("demo printed no kubeconfig"),
        group.unwrap(),
    );
    assert!(process_group_alive(group));

    demo.kill().unwrap();
    demo.wait().unwrap();

    eventually(
        "the control plane to stop",
        Duration::from_secs(30),
        || async { (!process_group_alive(group) && !kubeconfig.exists()).then_some(()) },
    )
    .await;
}

/// Asserts that a call was refused with 403 Forbidden; returns the message.
fn forbidden<T: std::fmt::Debug>(result: kube::Result<T>) -> String {
    match result {
        Err(kube::Error::Api(status)) if status.code == 403 => status.message,
        other => panic!("expected 403 Forbidden, got {other:?}"),
    }
}

fn process_group_alive(pgid: i32) -> bool {
    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), None).is_ok()
}
