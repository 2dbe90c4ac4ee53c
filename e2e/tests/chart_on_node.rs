//! The Helm chart for real: `helm install` of charts/ferry onto the
//! harness's node with a pod network, with the images built here. The
//! operator, the broker and the webhook run as pods, two replicas each; the
//! operator's leader issues the certificates; the apiserver calls the
//! webhook; an opted-in Deployment's pods get their secret. `helm upgrade`
//! rolls every component while pods keep being admitted, and `helm
//! uninstall` leaves only the Secrets the README says stay.
//!
//! Nothing of ferry runs as a process of the harness here: what the tests
//! see is what a user's cluster would do with the chart's default values
//! (only the pull policy says the images are already on the node).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use ferry_api::testing;
use ferry_contract::{BROKERABLE, BROKERABLE_LABEL, SIDECAR_CONTAINER_NAME};
use ferry_e2e::images::{self, BUSYBOX_IMAGE};
use ferry_e2e::{
    Cluster, RealNode, controlplane_bin_dir, create_brokered_secret, create_object, eventually,
    grant, workspace_binary,
};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Client;
use kube::api::{Api, ListParams, LogParams, PostParams};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(300);
const COMPONENTS: [&str; 3] = ["ferry-operator", "ferry-broker", "ferry-webhook"];

/// The value planted in the team's Secret. Apps print its digest, never it.
const PLANTED: &str = "planted-chart-api-key-51c2";
const PLANTED_SHA256: &str = "06baa68ce599f57eb8a9507e7f8a359e22dec73838c58957204257430854c48c";

fn assert_not_in_logs(log: &str, whose: &str) {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(PLANTED);
    assert!(
        !log.contains(PLANTED),
        "the planted value is in {whose} log"
    );
    assert!(
        !log.contains(&encoded),
        "the planted value's base64 is in {whose} log"
    );
}

fn chart() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../charts/ferry")
}

fn helm(cluster: &Cluster, args: &[&str]) -> Output {
    Command::new(controlplane_bin_dir().unwrap().join("helm"))
        .env("KUBECONFIG", cluster.kubeconfig())
        .args(args)
        .output()
        .unwrap()
}

fn kubectl(cluster: &Cluster, args: &[&str]) -> String {
    let output = Command::new(controlplane_bin_dir().unwrap().join("kubectl"))
        .env("KUBECONFIG", cluster.kubeconfig())
        .args(args)
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// What a reader needs when the chart does not come up: the pods, the
/// events and every ferry container's log tail.
fn diagnose(cluster: &Cluster, node: &RealNode, namespace: &str) -> String {
    let mut report = kubectl(
        cluster,
        &[
            "get",
            "pods,deploy,svc,endpointslices",
            "-o",
            "wide",
            "-n",
            namespace,
        ],
    );
    report += &kubectl(
        cluster,
        &["get", "events", "-n", namespace, "--sort-by=.lastTimestamp"],
    );
    for component in COMPONENTS {
        report += &format!("--- logs of {component}\n");
        report += &kubectl(
            cluster,
            &[
                "logs",
                "-n",
                namespace,
                "--tail=20",
                "--prefix",
                "--all-containers",
                "-l",
                &format!(
                    "app.kubernetes.io/component={}",
                    component.trim_start_matches("ferry-")
                ),
            ],
        );
    }
    for part in ["kubelet", "kube-proxy", "coredns"] {
        report += &format!("--- {part}\n{}\n", node.log_tail(part, 15));
    }
    report
}

async fn install(cluster: &Cluster, node: &RealNode, namespace: &str, extra: &[&str]) -> Output {
    let chart = chart();
    let mut args = vec![
        "upgrade",
        "--install",
        "ferry",
        chart.to_str().unwrap(),
        "--namespace",
        namespace,
        "--set",
        "image.pullPolicy=Never",
        "--set",
        "sidecar.pullPolicy=Never",
        "--wait",
        "--timeout",
        "5m",
    ];
    args.extend_from_slice(extra);
    let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
    let cluster_kubeconfig = cluster.kubeconfig().to_path_buf();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(controlplane_bin_dir().unwrap().join("helm"))
            .env("KUBECONFIG", cluster_kubeconfig)
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "helm failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        diagnose(cluster, node, namespace)
    );
    output
}

/// Two ready replicas of each component, every one of them updated to the
/// Deployment's current template.
async fn assert_rolled_out(client: &Client, namespace: &str) {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    for name in COMPONENTS {
        let deployment = deployments.get(name).await.unwrap();
        let status = deployment.status.unwrap();
        assert_eq!(status.ready_replicas, Some(2), "{name}: {status:?}");
        assert_eq!(status.updated_replicas, Some(2), "{name}: {status:?}");
        assert_eq!(
            status.observed_generation, deployment.metadata.generation,
            "{name}"
        );
    }
}

/// A team namespace with `orders-api-key` granted to `checkout` of an app
/// namespace; returns the team's and the app's namespaces.
async fn team(cluster: &Cluster) -> (String, String) {
    let client = cluster.client().unwrap();
    let owner = cluster.create_namespace("chart-owner").await.unwrap();
    let app = cluster.create_namespace("chart-app").await.unwrap();
    create_object::<Secret>(
        &client,
        &owner,
        json!({"metadata": {"name": "api-key", "labels": {BROKERABLE_LABEL: BROKERABLE}},
               "stringData": {"token": PLANTED}}),
    )
    .await
    .unwrap();
    create_brokered_secret(
        &client,
        &testing::brokered_secret(&owner, "orders-api-key")
            .kubernetes_secret("api-key")
            .build(),
    )
    .await
    .unwrap();
    grant(
        &client,
        testing::access_policy(&owner, "checkout")
            .service_account(&app, "checkout")
            .secret("orders-api-key")
            .build(),
    )
    .await
    .unwrap();
    (owner, app)
}

/// An opted-in pod template of `checkout` on the pod network: the app
/// prints the digest of the file it found, then waits.
fn opted_in_template(owner: &str) -> serde_json::Value {
    json!({
        "metadata": {"labels": {"app": "checkout", "ferry.dev/inject": "true"},
                     "annotations": {"ferry.dev/secrets": format!("{owner}/orders-api-key")}},
        "spec": {
            "serviceAccountName": "checkout",
            "terminationGracePeriodSeconds": 5,
            "securityContext": {"runAsUser": 1000, "runAsNonRoot": true},
            "containers": [{
                "name": "app", "image": BUSYBOX_IMAGE, "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-c",
                    "sha256sum /var/run/secrets/ferry/orders-api-key/token; exec sleep 3600"],
            }],
        },
    })
}

/// What `kubectl ferry leases -n <owner> -o json` printed for a user
/// whose kubeconfig is `kubeconfig`, and whether it succeeded.
async fn ferry_leases(kubeconfig: &std::path::Path, owner: &str) -> (bool, String, String) {
    ferry(kubeconfig, &["leases", "-n", owner, "-o", "json"]).await
}

/// Runs `kubectl ferry` with `kubeconfig` and `args`: whether it
/// succeeded, its stdout and its stderr.
async fn ferry(kubeconfig: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let output = tokio::process::Command::new(workspace_binary("kubectl-ferry").unwrap())
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .await
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The broker's live leases through the apiserver, as the chart registers
/// them (APIService v1alpha1.leases.ferry.dev, its caBundle kept by the
/// operator, RBAC from rbac/broker-lease-api.yaml): `kubectl ferry leases`
/// shows the team's viewer the checkout pods' leases, names and times
/// only; a user with `view` (which aggregates `list liveleases`) but no
/// `get brokeredsecrets` there sees none; a user with neither is refused
/// by the apiserver.
async fn live_leases_through_the_apiserver(
    cluster: &Cluster,
    client: &Client,
    owner: &str,
    app: &str,
) {
    let bind = |name: &str, user: &str, kind: &str, role: &str| {
        json!({"metadata": {"name": name},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role},
               "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]})
    };
    create_object::<Role>(
        client,
        owner,
        json!({"metadata": {"name": "brokeredsecret-reader"},
               "rules": [{"apiGroups": ["ferry.dev"], "resources": ["brokeredsecrets"], "verbs": ["get"]}]}),
    )
    .await
    .unwrap();
    for (name, user, kind, role) in [
        ("viewer-view", "lease-viewer", "ClusterRole", "view"),
        (
            "viewer-secrets",
            "lease-viewer",
            "Role",
            "brokeredsecret-reader",
        ),
        ("stranger-view", "lease-stranger", "ClusterRole", "view"),
    ] {
        create_object::<RoleBinding>(client, owner, bind(name, user, kind, role))
            .await
            .unwrap();
    }
    let viewer = cluster.user_kubeconfig("lease-viewer", None).unwrap();
    let stranger = cluster.user_kubeconfig("lease-stranger", None).unwrap();
    let nobody = cluster.user_kubeconfig("lease-nobody", None).unwrap();

    // Each broker replica answers from its own book: ask until the one
    // answering holds a checkout pod's lease.
    let leases = eventually(
        "kubectl ferry leases to show a checkout pod's lease",
        WAIT,
        || async {
            let (ok, stdout, _) = ferry_leases(&viewer, owner).await;
            let listed: serde_json::Value = serde_json::from_str(&stdout).ok()?;
            let leases = listed["leases"].as_array()?.clone();
            (ok && leases.iter().any(|lease| {
                lease["pod"]
                    .as_str()
                    .is_some_and(|pod| pod.starts_with(&format!("{app}/checkout-")))
            }))
            .then_some((listed, stdout))
        },
    )
    .await;
    let (listed, stdout) = leases;
    println!(
        "kubectl ferry leases through the apiserver: {} lease(s) from replica {}",
        listed["leases"].as_array().map_or(0, Vec::len),
        listed["replica"]
    );
    let lease = &listed["leases"][0];
    assert_eq!(lease["secret"], format!("{owner}/orders-api-key"));
    assert!(lease["serial"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(
        listed["replica"]
            .as_str()
            .is_some_and(|r| r.starts_with("ferry-broker-")),
        "{listed}"
    );
    assert!(
        !stdout.contains("\"id\""),
        "a lease id left the broker: {stdout}"
    );
    assert_not_in_logs(&stdout, "kubectl ferry leases'");
    // The table a person reads (printed for the README's session).
    let (ok, table, stderr) = ferry(&viewer, &["leases", "-n", owner]).await;
    assert!(ok && table.contains("orders-api-key"), "{table}{stderr}");
    println!("$ kubectl ferry leases -n {owner}\n{table}");

    // Allowed to list by the apiserver, but not to get the BrokeredSecrets:
    // the broker shows nothing.
    for _ in 0..4 {
        let (ok, stdout, stderr) = ferry_leases(&stranger, owner).await;
        assert!(ok, "{stderr}");
        let listed: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(listed["leases"], json!([]), "{stdout}");
    }
    // Not allowed to list liveleases at all: the apiserver refuses.
    let (ok, _, stderr) = ferry_leases(&nobody, owner).await;
    assert!(!ok, "a user without rights listed leases");
    assert!(
        stderr.contains("forbidden") || stderr.contains("Forbidden"),
        "{stderr}"
    );
}

#[tokio::test]
async fn helm_runs_every_component_twice_injects_pods_rolls_without_refusals_and_uninstalls() {
    let cluster = Cluster::shared().await.unwrap();
    let node = RealNode::shared_with_pod_network().await.unwrap();
    let client = cluster.client().unwrap();
    let components = images::build_component_images(&node.dir().join("component-images"))
        .await
        .unwrap();
    node.import_images(&components).unwrap();
    let ns = cluster.create_namespace("ferry").await.unwrap();

    // Install with the chart's defaults: two replicas of each component.
    install(cluster, node, &ns, &[]).await;
    assert_rolled_out(&client, &ns).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let running = pods.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(running.len(), 6, "{}", diagnose(cluster, node, &ns));
    let addresses: BTreeSet<String> = running
        .iter()
        .filter_map(|pod| pod.status.as_ref()?.pod_ip.clone())
        .collect();
    assert_eq!(
        addresses.len(),
        6,
        "each pod on its own address: {addresses:?}"
    );

    // The operator's leader issued the certificates and the CA bundle.
    let configuration = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get("ferry-sidecar-injector")
        .await
        .unwrap();
    let bundle = configuration.webhooks.unwrap()[0]
        .client_config
        .ca_bundle
        .clone();
    assert!(bundle.is_some_and(|b| !b.0.is_empty()), "no caBundle");

    // An opted-in Deployment's pods get the secret, through the broker's
    // Service, before the app starts.
    let (owner, app) = team(cluster).await;
    create_object::<Deployment>(
        &client,
        &app,
        json!({"metadata": {"name": "checkout"},
               "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "checkout"}},
                        "template": opted_in_template(&owner)}}),
    )
    .await
    .unwrap();
    let app_pods: Api<Pod> = Api::namespaced(client.clone(), &app);
    eventually(
        "both checkout pods to print their secret's digest",
        WAIT,
        || async {
            let listed = app_pods
                .list(&ListParams::default().labels("app=checkout"))
                .await
                .ok()?;
            if listed.items.len() != 2 {
                return None;
            }
            for pod in &listed.items {
                let name = pod.metadata.name.clone()?;
                let log = app_pods
                    .logs(
                        &name,
                        &LogParams {
                            container: Some("app".into()),
                            ..LogParams::default()
                        },
                    )
                    .await
                    .ok()?;
                if !log.contains(PLANTED_SHA256) {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    for pod in app_pods
        .list(&ListParams::default().labels("app=checkout"))
        .await
        .unwrap()
        .items
    {
        let name = pod.metadata.name.clone().unwrap();
        let init = pod.spec.unwrap().init_containers.unwrap_or_default();
        assert!(
            init.iter().any(|c| c.name == SIDECAR_CONTAINER_NAME),
            "the sidecar was injected"
        );
        let sidecar_log = app_pods
            .logs(
                &name,
                &LogParams {
                    container: Some(SIDECAR_CONTAINER_NAME.into()),
                    ..LogParams::default()
                },
            )
            .await
            .unwrap();
        assert!(sidecar_log.contains("secret_written"), "{sidecar_log}");
        assert_not_in_logs(&sidecar_log, "the sidecar's");
    }
    // Nor in any of ferry's pods' logs.
    for pod in pods.list(&ListParams::default()).await.unwrap().items {
        let name = pod.metadata.name.unwrap();
        let log = pods.logs(&name, &LogParams::default()).await.unwrap();
        assert_not_in_logs(&log, &name);
    }

    live_leases_through_the_apiserver(cluster, &client, &owner, &app).await;

    // Upgrade: every component's pods are replaced, one at a time, while
    // opted-in pods keep being admitted (server-side dry runs, so nothing
    // is left to clean up). None may be refused.
    let admitted = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let admissions = {
        let (admitted, refused, stop) = (admitted.clone(), refused.clone(), stop.clone());
        let (app_pods, owner) = (app_pods.clone(), owner.clone());
        tokio::spawn(async move {
            let mut pod: Pod = serde_json::from_value(opted_in_template(&owner)).unwrap();
            pod.metadata.generate_name = Some("admitted-".into());
            let dry_run = PostParams {
                dry_run: true,
                ..PostParams::default()
            };
            while !stop.load(Ordering::SeqCst) {
                match app_pods.create(&dry_run, &pod).await {
                    Ok(created)
                        if created
                            .spec
                            .as_ref()
                            .and_then(|s| s.init_containers.as_ref())
                            .is_some_and(|c| {
                                c.iter().any(|c| c.name == SIDECAR_CONTAINER_NAME)
                            }) =>
                    {
                        admitted.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(_) => refused
                        .lock()
                        .unwrap()
                        .push("admitted without the sidecar".into()),
                    Err(error) => refused.lock().unwrap().push(error.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    install(
        cluster,
        node,
        &ns,
        &[
            "--set",
            "operator.logFormat=text",
            "--set",
            "broker.logFormat=text",
            "--set",
            "webhook.logFormat=text",
        ],
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    admissions.await.unwrap();
    assert_rolled_out(&client, &ns).await;
    let refused = refused.lock().unwrap().clone();
    eprintln!(
        "during the upgrade: {} opted-in pods admitted with the sidecar, {} refused",
        admitted.load(Ordering::SeqCst),
        refused.len()
    );
    assert!(
        refused.is_empty(),
        "pods refused during the upgrade: {refused:?}"
    );
    assert!(
        admitted.load(Ordering::SeqCst) > 0,
        "no pod was tried during the upgrade"
    );
    for name in COMPONENTS {
        let args = Api::<Deployment>::namespaced(client.clone(), &ns)
            .get(name)
            .await
            .unwrap()
            .spec
            .unwrap()
            .template
            .spec
            .unwrap()
            .containers[0]
            .args
            .clone()
            .unwrap_or_default();
        assert!(
            args.contains(&"--log-format=text".to_owned()),
            "{name}: {args:?}"
        );
    }

    // The broker lists what it holds in its custody ConfigMap at start.
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), &ns);
    eventually("the broker's custody ConfigMap", WAIT, || async {
        config_maps
            .get_opt("ferry-broker-custody")
            .await
            .ok()
            .flatten()
    })
    .await;

    // Uninstall: ferry's pods, Services and webhook configuration go; what
    // stays in its namespace is the Secrets the README names.
    let output = helm(
        cluster,
        &["uninstall", "ferry", "--namespace", &ns, "--wait"],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    eventually("ferry's pods to be gone", WAIT, || async {
        pods.list(&ListParams::default())
            .await
            .ok()?
            .items
            .is_empty()
            .then_some(())
    })
    .await;
    assert!(
        Api::<MutatingWebhookConfiguration>::all(client.clone())
            .get_opt("ferry-sidecar-injector")
            .await
            .unwrap()
            .is_none()
    );
    let secrets: BTreeSet<String> = Api::<Secret>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .collect();
    let readme =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let stays = readme
        .split("## Uninstall")
        .nth(1)
        .and_then(|section| section.split("\n## ").next())
        .unwrap()
        .to_owned();
    for secret in &secrets {
        assert!(
            stays.contains(&format!("`{secret}`")),
            "Secret {secret} stays but the README's Uninstall does not say so"
        );
    }
    let config_maps: Vec<String> = Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .filter(|name| name != "kube-root-ca.crt")
        .collect();
    // The broker's custody ConfigMap is written at run time, not by the
    // chart: it stays, and the README says so (it holds no secret).
    assert_eq!(config_maps, ["ferry-broker-custody"]);
    assert!(
        stays.contains("`ferry-broker-custody`"),
        "the custody ConfigMap stays but the README's Uninstall does not say so"
    );
    let left = kubectl(
        cluster,
        &[
            "get",
            "deploy,svc,pdb,role,rolebinding,serviceaccount",
            "-n",
            &ns,
            "-o",
            "name",
        ],
    );
    assert_eq!(left.trim(), "serviceaccount/default", "{left}");
}
