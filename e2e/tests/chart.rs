//! The Helm chart `charts/ferry`: it lints strictly, renders for the default
//! values and variations, keeps one source of truth with the repository
//! (CRDs, RBAC, the MutatingWebhookConfiguration, the README's values
//! table), refuses bad values by its schema, passes a server-side dry run
//! against a real apiserver, installs, upgrades and uninstalls (keeping the
//! CRDs), and gives each component's service account exactly its rights.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use ferry_contract::lease_api::{self, API_SERVICE_NAME};
use ferry_e2e::{Cluster, controlplane_bin_dir, eventually};
use ferry_webhook::configuration::{WebhookEndpoint, mutating_webhook_configuration};
use serde::Deserialize;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn chart() -> PathBuf {
    repo().join("charts/ferry")
}

fn helm() -> Command {
    Command::new(controlplane_bin_dir().unwrap().join("helm"))
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Parses a multi-document YAML stream into its (non-empty) documents.
fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).unwrap())
        .filter(|doc| !doc.is_null())
        .collect()
}

/// `helm template` of the chart in `namespace` with `--set` values `sets`.
fn render_in(namespace: &str, sets: &[&str]) -> Vec<Value> {
    let mut command = helm();
    command
        .args(["template", "ferry"])
        .arg(chart())
        .args(["--namespace", namespace]);
    for set in sets {
        command.args(["--set", set]);
    }
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "helm template {sets:?}: {}",
        stderr(&output)
    );
    documents(&stdout(&output))
}

fn render(sets: &[&str]) -> Vec<Value> {
    render_in("ferry-system", sets)
}

fn kinds(objects: &[Value]) -> BTreeMap<String, usize> {
    let mut kinds = BTreeMap::new();
    for object in objects {
        *kinds
            .entry(object["kind"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    kinds
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

fn container(deployment: &Value) -> &Value {
    &deployment["spec"]["template"]["spec"]["containers"][0]
}

fn args(deployment: &Value) -> Vec<String> {
    container(deployment)["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

const VARIATIONS: &[&[&str]] = &[
    &[],
    &["certManager.enabled=true"],
    &[
        "certManager.enabled=true",
        "certManager.issuerRef.kind=ClusterIssuer",
        "certManager.issuerRef.name=corp-ca",
    ],
    &["networkPolicy.enabled=true", "serviceMonitor.enabled=true"],
    &[
        "operator.replicas=1",
        "webhook.replicas=3",
        "webhook.missingGrant=warn",
        "image.tag=dev",
        "imagePullSecrets[0].name=regcred",
        "operator.nodeSelector.pool=system",
    ],
];

#[test]
fn chart_lints_strictly_with_default_and_varied_values() {
    for sets in VARIATIONS {
        let mut command = helm();
        command.args(["lint", "--strict"]).arg(chart());
        for set in *sets {
            command.args(["--set", set]);
        }
        let output = command.output().unwrap();
        assert!(
            output.status.success(),
            "helm lint --strict {sets:?}:\n{}{}",
            stdout(&output),
            stderr(&output)
        );
    }
}

#[test]
fn chart_crds_are_the_generated_crds() {
    let files = |dir: PathBuf| -> BTreeMap<String, String> {
        std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| {
                let path = entry.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                (name, std::fs::read_to_string(&path).unwrap())
            })
            .collect()
    };
    assert!(
        files(repo().join("crds")) == files(chart().join("crds")),
        "charts/ferry/crds differs from crds/: run `make crds`"
    );
}

#[test]
fn chart_rbac_files_are_the_repository_rbac() {
    for file in [
        "operator.yaml",
        "operator-certificates.yaml",
        "broker.yaml",
        "broker-lease-api.yaml",
        "webhook.yaml",
    ] {
        let ours = std::fs::read_to_string(repo().join("rbac").join(file)).unwrap();
        let chart = std::fs::read_to_string(chart().join("files/rbac").join(file)).unwrap();
        assert!(
            ours == chart,
            "charts/ferry/files/rbac/{file} differs from rbac/{file}: copy it over (rbac/ is the source)"
        );
    }
}

/// The RBAC objects of the repository's files, with `ferry-system`
/// replaced by `namespace` as the chart does.
fn repository_rbac(files: &[&str], namespace: &str) -> Vec<Value> {
    files
        .iter()
        .flat_map(|file| {
            let text = std::fs::read_to_string(repo().join("rbac").join(file)).unwrap();
            documents(&text.replace("ferry-system", namespace))
        })
        .collect()
}

fn without_labels(mut object: Value) -> Value {
    object["metadata"].as_object_mut().unwrap().remove("labels");
    object
}

fn rbac_objects(objects: &[Value]) -> Vec<Value> {
    let mut rbac: Vec<Value> = objects
        .iter()
        .filter(|o| o["apiVersion"] == "rbac.authorization.k8s.io/v1")
        .cloned()
        .map(without_labels)
        .collect();
    rbac.sort_by_key(|o| format!("{}/{}", o["kind"], o["metadata"]["name"]));
    rbac
}

#[test]
fn rendered_rbac_is_exactly_the_repository_rbac() {
    let all = [
        "operator.yaml",
        "operator-certificates.yaml",
        "broker.yaml",
        "broker-lease-api.yaml",
        "webhook.yaml",
    ];
    assert_eq!(
        rbac_objects(&render_in("ferry-x", &[])),
        rbac_objects(&repository_rbac(&all, "ferry-x"))
    );
    // cert-manager does the operator's certificate job: no rights for it.
    assert_eq!(
        rbac_objects(&render_in("ferry-x", &["certManager.enabled=true"])),
        rbac_objects(&repository_rbac(
            &all[..1]
                .iter()
                .chain(&all[2..])
                .copied()
                .collect::<Vec<_>>(),
            "ferry-x"
        ))
    );
}

#[test]
fn the_live_lease_api_is_registered_served_and_readable_by_viewers_unless_turned_off() {
    let rendered = render_in("ferry-x", &[]);
    let api_service = find(&rendered, "APIService", API_SERVICE_NAME);
    assert_eq!(api_service["spec"]["group"], lease_api::GROUP);
    assert_eq!(api_service["spec"]["version"], lease_api::VERSION);
    assert_eq!(
        api_service["spec"]["service"],
        json!({"namespace": "ferry-x", "name": "ferry-broker", "port": 8444})
    );
    // The operator keeps its caBundle; the broker serves it on that port.
    let operator = find(&rendered, "Deployment", "ferry-operator");
    assert!(args(operator).contains(&format!("--api-service={API_SERVICE_NAME}")));
    let broker = find(&rendered, "Deployment", "ferry-broker");
    assert!(args(broker).contains(&"--lease-api-addr=0.0.0.0:8444".to_owned()));
    let service = find(&rendered, "Service", "ferry-broker");
    assert!(
        service["spec"]["ports"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "leases", "port": 8444, "targetPort": "leases"})),
        "{service}"
    );
    // The RoleBinding to the front-proxy settings stays in kube-system; the
    // viewer role keeps its aggregation labels beside the chart's.
    let reader = find(
        &rendered,
        "RoleBinding",
        "ferry-broker-authentication-reader",
    );
    assert_eq!(reader["metadata"]["namespace"], "kube-system");
    assert_eq!(reader["subjects"][0]["namespace"], "ferry-x");
    let viewer = find(&rendered, "ClusterRole", "ferry-lease-viewer");
    assert_eq!(
        viewer["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"],
        "true"
    );
    assert_eq!(
        viewer["metadata"]["labels"]["app.kubernetes.io/part-of"],
        "ferry"
    );

    // With cert-manager, cert-manager injects the broker's CA instead.
    let with_cert_manager = render_in("ferry-x", &["certManager.enabled=true"]);
    assert_eq!(
        find(&with_cert_manager, "APIService", API_SERVICE_NAME)["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        "ferry-x/ferry-broker-tls"
    );

    // Turned off: nothing of it is rendered or granted.
    let off = render_in("ferry-x", &["leaseApi.enabled=false"]);
    assert!(!off.iter().any(|o| o["kind"] == "APIService"));
    assert!(
        !off.iter()
            .any(|o| o["metadata"]["name"] == "ferry-lease-viewer")
    );
    assert!(
        !args(find(&off, "Deployment", "ferry-broker"))
            .iter()
            .any(|a| a.starts_with("--lease-api-addr"))
    );
    assert!(
        !args(find(&off, "Deployment", "ferry-operator"))
            .iter()
            .any(|a| a.starts_with("--api-service"))
    );
}

#[test]
fn rendered_webhook_configuration_is_the_one_rust_builds() {
    for namespace in ["ferry-system", "secrets-broker"] {
        let rendered = render_in(namespace, &[]);
        let mut chart = find(
            &rendered,
            "MutatingWebhookConfiguration",
            "ferry-sidecar-injector",
        )
        .clone();
        let rust = serde_json::to_value(mutating_webhook_configuration(
            &WebhookEndpoint::Service {
                namespace: namespace.into(),
                name: "ferry-webhook".into(),
                port: 443,
            },
            b"",
            namespace,
        ))
        .unwrap();
        // Names, rules, selectors, policies, the Service reference: all equal.
        assert_eq!(chart["webhooks"], rust["webhooks"]);
        assert_eq!(chart["metadata"]["name"], rust["metadata"]["name"]);
        // The chart's labels are a superset of the Rust object's.
        for (key, value) in rust["metadata"]["labels"].as_object().unwrap() {
            assert_eq!(&chart["metadata"]["labels"][key], value, "label {key}");
        }
        chart["metadata"].as_object_mut().unwrap().remove("labels");
        assert_eq!(chart["metadata"], json!({"name": "ferry-sidecar-injector"}));
    }
    let with_cert_manager = render(&["certManager.enabled=true"]);
    let configuration = find(
        &with_cert_manager,
        "MutatingWebhookConfiguration",
        "ferry-sidecar-injector",
    );
    assert_eq!(
        configuration["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        "ferry-system/ferry-webhook-tls"
    );
}

#[test]
fn default_render_replicates_and_hardens_every_component() {
    let objects = render(&[]);
    let counts = kinds(&objects);
    for (kind, count) in [
        ("Deployment", 3),
        ("Service", 3),
        ("ServiceAccount", 3),
        ("PodDisruptionBudget", 2),
        ("MutatingWebhookConfiguration", 1),
    ] {
        assert_eq!(counts.get(kind), Some(&count), "{kind}: {counts:?}");
    }
    for absent in ["Certificate", "Issuer", "NetworkPolicy", "ServiceMonitor"] {
        assert!(!counts.contains_key(absent), "{absent} rendered by default");
    }
    for name in ["ferry-operator", "ferry-broker", "ferry-webhook"] {
        let deployment = find(&objects, "Deployment", name);
        assert_eq!(deployment["spec"]["replicas"], 2, "{name}");
        let pod = &deployment["spec"]["template"]["spec"];
        assert_eq!(pod["serviceAccountName"], name);
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        // The TLS Secret's files are mode 0440: the non-root process reads
        // them through its group (without it the pods crash-loop).
        assert_eq!(pod["securityContext"]["fsGroup"], 65532);
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        let security = &container(deployment)["securityContext"];
        assert_eq!(security["allowPrivilegeEscalation"], false, "{name}");
        assert_eq!(security["readOnlyRootFilesystem"], true, "{name}");
        assert_eq!(security["capabilities"]["drop"], json!(["ALL"]), "{name}");
        assert!(container(deployment)["livenessProbe"].is_object());
        assert!(container(deployment)["readinessProbe"].is_object());
        assert!(
            pod["affinity"]["podAntiAffinity"].is_object(),
            "{name} replicas spread over nodes"
        );
        assert_eq!(
            container(deployment)["env"][0]["valueFrom"]["fieldRef"]["fieldPath"],
            "metadata.namespace"
        );
    }
    use ferry_operator::certificates::{DEFAULT_BROKER_TLS_SECRET, DEFAULT_WEBHOOK_TLS_SECRET};
    for (name, secret) in [
        ("ferry-broker", DEFAULT_BROKER_TLS_SECRET),
        ("ferry-webhook", DEFAULT_WEBHOOK_TLS_SECRET),
    ] {
        let budget = find(&objects, "PodDisruptionBudget", name);
        assert_eq!(budget["spec"]["maxUnavailable"], 1);
        let deployment = find(&objects, "Deployment", name);
        let volume = &deployment["spec"]["template"]["spec"]["volumes"][0];
        // The Secrets the operator's certificate manager writes by default.
        assert_eq!(volume["secret"]["secretName"], secret);
    }
    let operator = args(find(&objects, "Deployment", "ferry-operator"));
    assert_eq!(operator[0], "run");
    assert!(operator.contains(&"--manage-certificates".to_owned()));
    let broker = args(find(&objects, "Deployment", "ferry-broker"));
    assert_eq!(broker[0], "broker");
    assert!(
        broker.contains(&"--postgres-admin-connections=4".to_owned()),
        "{broker:?}"
    );
    let webhook = args(find(&objects, "Deployment", "ferry-webhook"));
    for expected in [
        "--broker-url=https://ferry-broker.ferry-system.svc:8443",
        "--broker-ca-file=/etc/ferry/tls/ca.crt",
        "--sidecar-image=ghcr.io/ferry-dev/ferry-sidecar:0.1.0",
        "--missing-grant=deny",
    ] {
        assert!(
            webhook.contains(&expected.to_owned()),
            "{expected} in {webhook:?}"
        );
    }
    let images: Vec<_> = ["ferry-operator", "ferry-broker", "ferry-webhook"]
        .iter()
        .map(|name| container(find(&objects, "Deployment", name))["image"].clone())
        .collect();
    assert_eq!(
        images,
        [
            "ghcr.io/ferry-dev/ferry-operator:0.1.0",
            "ghcr.io/ferry-dev/ferry-operator:0.1.0",
            "ghcr.io/ferry-dev/ferry-webhook:0.1.0"
        ]
    );
    // The webhook Service is what the configuration points at.
    let service = find(&objects, "Service", "ferry-webhook");
    assert_eq!(service["spec"]["ports"][0]["port"], 443);
}

#[test]
fn variations_render_what_they_switch_on() {
    let cert_manager = render(&["certManager.enabled=true"]);
    let counts = kinds(&cert_manager);
    assert_eq!(counts.get("Certificate"), Some(&3));
    assert_eq!(counts.get("Issuer"), Some(&2));
    let operator = args(find(&cert_manager, "Deployment", "ferry-operator"));
    assert!(!operator.contains(&"--manage-certificates".to_owned()));
    let webhook_cert = find(&cert_manager, "Certificate", "ferry-webhook-tls");
    assert_eq!(
        webhook_cert["spec"]["dnsNames"],
        json!(ferry_operator::certificates::service_dns_names(
            "ferry-webhook",
            "ferry-system",
            "cluster.local"
        ))
    );

    let external = render(&[
        "certManager.enabled=true",
        "certManager.issuerRef.kind=ClusterIssuer",
        "certManager.issuerRef.name=corp-ca",
    ]);
    assert!(!kinds(&external).contains_key("Issuer"));
    assert_eq!(
        find(&external, "Certificate", "ferry-broker-tls")["spec"]["issuerRef"],
        json!({"kind": "ClusterIssuer", "name": "corp-ca"})
    );

    let extras = render(&["networkPolicy.enabled=true", "serviceMonitor.enabled=true"]);
    let counts = kinds(&extras);
    assert_eq!(counts.get("NetworkPolicy"), Some(&3));
    assert_eq!(counts.get("ServiceMonitor"), Some(&1));

    let tuned = render(&[
        "webhook.replicas=3",
        "webhook.missingGrant=warn",
        "image.tag=dev",
    ]);
    let webhook = find(&tuned, "Deployment", "ferry-webhook");
    assert_eq!(webhook["spec"]["replicas"], 3);
    assert!(args(webhook).contains(&"--missing-grant=warn".to_owned()));
    assert_eq!(
        container(webhook)["image"],
        "ghcr.io/ferry-dev/ferry-webhook:dev"
    );
}

#[test]
fn bad_values_are_refused_by_the_schema_with_the_path() {
    for (set, expected) in [
        ("operator.replicas=0", "/operator/replicas"),
        ("webhook.missingGrant=maybe", "/webhook/missingGrant"),
        (
            "sidecar.tokenExpirationSeconds=60",
            "/sidecar/tokenExpirationSeconds",
        ),
        ("broker.jwtRotationPeriod=soon", "/broker/jwtRotationPeriod"),
        (
            "broker.postgresAdminConnections=33",
            "/broker/postgresAdminConnections",
        ),
        ("operator.replica=3", "replica"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
    ] {
        let output = helm()
            .args(["template", "ferry"])
            .arg(chart())
            .args(["--set", set])
            .output()
            .unwrap();
        let message = stderr(&output);
        assert!(!output.status.success(), "{set} was accepted");
        assert!(
            message.contains("values don't meet the specifications of the schema")
                && message.contains(expected),
            "{set}: {message}"
        );
    }
}

/// Every leaf of values.yaml with its default, and the description of the
/// nearest `# --` comment on it or a parent, as README rows.
fn values_table() -> String {
    let text = std::fs::read_to_string(chart().join("values.yaml")).unwrap();
    let mut descriptions: BTreeMap<String, String> = BTreeMap::new();
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut pending: Option<String> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if let Some(description) = trimmed.strip_prefix("# -- ") {
            pending = Some(description.to_owned());
            continue;
        }
        let Some((key, _)) = trimmed.split_once(':') else {
            continue;
        };
        if trimmed.starts_with('#') || key.contains(' ') {
            continue;
        }
        stack.retain(|(i, _)| *i < indent);
        stack.push((indent, key.to_owned()));
        let path: Vec<_> = stack.iter().map(|(_, k)| k.as_str()).collect();
        if let Some(description) = pending.take() {
            descriptions.insert(path.join("."), description);
        }
    }
    fn leaves(prefix: &str, value: &serde_yaml::Value, out: &mut Vec<(String, String)>) {
        match value {
            serde_yaml::Value::Mapping(map) if !map.is_empty() => {
                for (key, value) in map {
                    let key = key.as_str().unwrap();
                    let path = if prefix.is_empty() {
                        key.to_owned()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    leaves(&path, value, out);
                }
            }
            serde_yaml::Value::String(s) if !s.is_empty() => out.push((prefix.into(), s.clone())),
            other => out.push((
                prefix.into(),
                serde_json::to_string(&serde_json::to_value(other).unwrap()).unwrap(),
            )),
        }
    }
    let values: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let mut rows = Vec::new();
    leaves("", &values, &mut rows);
    let mut table = String::from("| key | default | |\n|---|---|---|\n");
    for (key, default) in rows {
        let description = key
            .match_indices('.')
            .map(|(i, _)| &key[..i])
            .chain([key.as_str()])
            .filter_map(|prefix| descriptions.get(prefix))
            .next_back()
            .unwrap_or_else(|| panic!("values.yaml: {key} has no `# -- ` description"));
        table.push_str(&format!("| `{key}` | `{default}` | {description} |\n"));
    }
    table
}

#[test]
fn readme_values_table_is_values_yaml() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let begin = "<!-- values table: generated from charts/ferry/values.yaml, kept by e2e/tests/chart.rs -->\n";
    let start = readme
        .find(begin)
        .expect("README has the values table marker")
        + begin.len();
    let end = start + readme[start..].find("\n\n").unwrap() + 1;
    let expected = values_table();
    assert!(
        readme[start..end] == expected,
        "README's values table is out of date; replace it with:\n{expected}"
    );
}

/// Runs `helm` against `cluster` and returns its output, asserting success.
fn helm_on(cluster: &Cluster, args: &[&str]) -> String {
    let output = helm()
        .env("KUBECONFIG", cluster.kubeconfig())
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "helm {args:?}:\n{}{}",
        stdout(&output),
        stderr(&output)
    );
    stdout(&output)
}

fn kubectl_with_input(cluster: &Cluster, args: &[&str], input: &str) -> Output {
    use std::io::Write;
    let mut child = cluster
        .kubectl()
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[tokio::test]
async fn rendered_manifests_pass_a_server_side_dry_run() {
    let cluster = Cluster::shared().await.unwrap();
    let ns = cluster.create_namespace("chart-dry").await.unwrap();
    // cert-manager's and Prometheus' CRDs are absent here: those variations
    // are checked by rendering and linting only.
    let chart = chart();
    let chart = chart.to_str().unwrap();
    for sets in [
        &[][..],
        &["networkPolicy.enabled=true", "webhook.missingGrant=warn"][..],
    ] {
        let mut args = vec![
            "template",
            "ferry",
            chart,
            "--include-crds",
            "--namespace",
            &ns,
        ];
        for set in sets {
            args.extend(["--set", set]);
        }
        let manifests = helm_on(cluster, &args);
        let output = kubectl_with_input(
            cluster,
            &[
                "apply",
                "--dry-run=server",
                "--server-side",
                // Another test's install owns the cluster-scoped objects.
                "--force-conflicts",
                "--field-manager=chart-test",
                "-f",
                "-",
            ],
            &manifests,
        );
        assert!(
            output.status.success(),
            "server dry run of {sets:?} refused:\n{}{}",
            stdout(&output),
            stderr(&output)
        );
        let applied = stdout(&output);
        for object in [
            "deployment.apps/ferry-webhook",
            "mutatingwebhookconfiguration.admissionregistration.k8s.io/ferry-sidecar-injector",
            "poddisruptionbudget.policy/ferry-broker",
            "customresourcedefinition.apiextensions.k8s.io/grants.ferry.dev",
        ] {
            assert!(applied.contains(object), "{object} not in:\n{applied}");
        }
    }
}

/// `kubectl auth can-i` as `account` in `namespace`; `scope` is
/// `--all-namespaces` or `-n <ns>` etc.
/// What RBAC cannot say about the broker installed in `ns`, the chart's
/// admission policy does: of the Secrets it may update, it is refused
/// ferry's own (but its JWT and lease keys) and one its owner did not opt in.
async fn broker_secret_updates_are_narrowed(cluster: &Cluster, client: &kube::Client, ns: &str) {
    use ferry_e2e::create_object;
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{Api, PostParams};

    let tenant = cluster.create_namespace("chart-tenant").await.unwrap();
    let secrets = [
        (ns, "ferry-ca"),
        (tenant.as_str(), "not-opted-in"),
        (ns, "ferry-broker-jwt-keys"),
        (ns, "ferry-broker-lease-key"),
    ];
    for (namespace, name) in secrets {
        create_object::<Secret>(
            client,
            namespace,
            json!({"metadata": {"name": name}, "stringData": {"key": "value"}}),
        )
        .await
        .unwrap();
    }
    let groups = [
        "system:serviceaccounts".to_owned(),
        format!("system:serviceaccounts:{ns}"),
    ];
    let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
    let as_broker = cluster
        .impersonating_client(&format!("system:serviceaccount:{ns}:ferry-broker"), &groups)
        .unwrap();
    let update = |namespace: &str, name: &str| {
        let secrets = Api::<Secret>::namespaced(as_broker.clone(), namespace);
        let name = name.to_owned();
        async move {
            let mut secret = secrets.get(&name).await.unwrap();
            secret.string_data = Some([("key".to_owned(), "changed".to_owned())].into());
            secrets
                .replace(&name, &PostParams::default(), &secret)
                .await
        }
    };
    // The policy is in force within moments of the install.
    eventually("the chart's policy to refuse the broker", WAIT, || async {
        update(ns, "ferry-ca").await.is_err().then_some(())
    })
    .await;
    for (namespace, name) in &secrets[..2] {
        match update(namespace, name).await {
            Err(kube::Error::Api(status))
                if status.code == 403 && status.message.contains("ferry-broker-secret-writes") => {}
            other => panic!("the broker updating Secret {namespace}/{name}: {other:?}"),
        }
    }
    // Its own keys, which it rotates.
    update(ns, "ferry-broker-jwt-keys").await.unwrap();
    update(ns, "ferry-broker-lease-key").await.unwrap();
}

fn can_i(cluster: &Cluster, account: &str, verb: &str, resource: &str, scope: &[&str]) -> bool {
    let output = cluster
        .kubectl()
        .args(["auth", "can-i", verb, resource])
        .args(scope)
        .arg(format!("--as={account}"))
        .output()
        .unwrap();
    match stdout(&output).trim() {
        "yes" => true,
        "no" => false,
        other => panic!("can-i {verb} {resource}: {other} {}", stderr(&output)),
    }
}

#[tokio::test]
async fn helm_install_upgrade_and_uninstall_store_the_objects_keep_the_crds_and_grant_least_privilege()
 {
    let cluster = Cluster::shared().await.unwrap();
    let client = cluster.client().unwrap();
    let ns = cluster.create_namespace("ferry").await.unwrap();
    let chart = chart();
    let chart = chart.to_str().unwrap();
    helm_on(cluster, &["install", "ferry", chart, "--namespace", &ns]);

    // Accepted and stored (no kubelet: the pods stay Pending).
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    use kube::api::Api;
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
    for name in ["ferry-operator", "ferry-broker", "ferry-webhook"] {
        let deployment = deployments.get(name).await.unwrap();
        assert_eq!(deployment.spec.unwrap().replicas, Some(2), "{name}");
    }
    for name in ["ferry-broker", "ferry-webhook"] {
        Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns)
            .get(name)
            .await
            .unwrap();
    }
    let configuration = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get("ferry-sidecar-injector")
        .await
        .unwrap();
    let service = configuration.webhooks.unwrap()[0]
        .client_config
        .service
        .clone()
        .unwrap();
    assert_eq!(service.namespace, ns);

    let notes = helm_on(cluster, &["get", "notes", "ferry", "--namespace", &ns]);
    assert!(
        notes.contains(&format!("kubectl -n {ns} rollout status")),
        "{notes}"
    );

    let all = ["--all-namespaces"];
    let own = ["-n", ns.as_str()];
    let other = ["-n", "default"];
    let account = |name: &str| format!("system:serviceaccount:{ns}:{name}");
    type Check<'a> = (&'a str, &'a str, &'a [&'a str]);
    let operator_may: &[Check] = &[
        ("watch", "accesspolicies.ferry.dev", &all),
        ("watch", "accessrequests.ferry.dev", &all),
        ("patch", "accesspolicies.ferry.dev", &all),
        ("watch", "brokeredsecrets.ferry.dev", &all),
        ("create", "grants.ferry.dev", &all),
        ("delete", "grants.ferry.dev", &all),
        ("list", "namespaces", &all),
        ("get", "secrets", &all),
        ("create", "events.events.k8s.io", &all),
        ("update", "leases.coordination.k8s.io", &own),
        ("create", "secrets", &own),
        ("update", "secrets/ferry-ca", &own),
        ("update", "secrets/ferry-webhook-tls", &own),
        (
            "patch",
            "mutatingwebhookconfigurations.admissionregistration.k8s.io/ferry-sidecar-injector",
            &all,
        ),
    ];
    let broker_may: &[Check] = &[
        ("create", "tokenreviews.authentication.k8s.io", &all),
        ("watch", "grants.ferry.dev", &all),
        ("watch", "brokeredsecrets.ferry.dev", &all),
        ("watch", "pods", &all),
        ("get", "secrets", &all),
        ("create", "secrets", &own),
        ("update", "secrets/ferry-broker-jwt-keys", &own),
        ("update", "secrets/ferry-broker-lease-key", &own),
        ("patch", "configmaps/ferry-broker-custody", &own),
        // Anywhere, for the oauth2 write-back: the chart's admission
        // policy narrows it (checked below by trying).
        ("update", "secrets", &other),
    ];
    let webhook_may: &[Check] = &[
        ("watch", "grants.ferry.dev", &all),
        ("list", "grants.ferry.dev", &all),
    ];
    // What none of them may do: exec into pods, escalate through RBAC,
    // impersonate, or touch Secrets beyond their own.
    let nobody_may: &[Check] = &[
        ("create", "pods/exec", &all),
        ("create", "pods", &all),
        ("escalate", "clusterroles.rbac.authorization.k8s.io", &all),
        ("bind", "clusterroles.rbac.authorization.k8s.io", &all),
        (
            "create",
            "clusterrolebindings.rbac.authorization.k8s.io",
            &all,
        ),
        ("create", "rolebindings.rbac.authorization.k8s.io", &own),
        ("impersonate", "serviceaccounts", &all),
        ("list", "secrets", &all),
        ("watch", "secrets", &all),
        ("delete", "secrets", &own),
        ("create", "secrets", &other),
        (
            "patch",
            "mutatingwebhookconfigurations.admissionregistration.k8s.io/another",
            &all,
        ),
        (
            "create",
            "mutatingwebhookconfigurations.admissionregistration.k8s.io",
            &all,
        ),
        (
            "update",
            "customresourcedefinitions.apiextensions.k8s.io",
            &all,
        ),
    ];
    let operator_must_not: &[Check] = &[
        ("update", "secrets/ferry-broker-lease-key", &own),
        ("update", "secrets", &other),
    ];
    let broker_must_not: &[Check] = &[
        (
            "patch",
            "mutatingwebhookconfigurations.admissionregistration.k8s.io/ferry-sidecar-injector",
            &all,
        ),
        ("create", "grants.ferry.dev", &all),
        ("patch", "configmaps", &own),
        ("patch", "brokeredsecrets.ferry.dev", &all),
    ];
    let webhook_must_not: &[Check] = &[
        ("get", "secrets", &all),
        ("get", "secrets", &own),
        ("create", "secrets", &own),
        ("update", "secrets", &other),
        ("list", "pods", &all),
        ("create", "grants.ferry.dev", &all),
        (
            "patch",
            "mutatingwebhookconfigurations.admissionregistration.k8s.io/ferry-sidecar-injector",
            &all,
        ),
    ];
    for (name, may, must_not) in [
        ("ferry-operator", operator_may, operator_must_not),
        ("ferry-broker", broker_may, broker_must_not),
        ("ferry-webhook", webhook_may, webhook_must_not),
    ] {
        for (verb, resource, scope) in may {
            assert!(
                can_i(cluster, &account(name), verb, resource, scope),
                "{name} must be able to {verb} {resource} {scope:?}"
            );
        }
        for (verb, resource, scope) in must_not.iter().chain(nobody_may) {
            assert!(
                !can_i(cluster, &account(name), verb, resource, scope),
                "{name} must not be able to {verb} {resource} {scope:?}"
            );
        }
    }

    broker_secret_updates_are_narrowed(cluster, &client, &ns).await;

    // Upgrade with a changed value: applied in place.
    helm_on(
        cluster,
        &[
            "upgrade",
            "ferry",
            chart,
            "--namespace",
            &ns,
            "--set",
            "webhook.replicas=3",
        ],
    );
    let replicas = deployments
        .get("ferry-webhook")
        .await
        .unwrap()
        .spec
        .unwrap()
        .replicas;
    assert_eq!(replicas, Some(3));

    // A bad value is refused before anything reaches the cluster.
    let output = helm()
        .env("KUBECONFIG", cluster.kubeconfig())
        .args([
            "upgrade",
            "ferry",
            chart,
            "--namespace",
            &ns,
            "--set",
            "broker.replicas=0",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("/broker/replicas"),
        "{}",
        stderr(&output)
    );

    // Uninstall removes ferry but keeps the CRDs (and so users' objects).
    helm_on(
        cluster,
        &["uninstall", "ferry", "--namespace", &ns, "--wait"],
    );
    eventually("the Deployments to be gone", WAIT, || async {
        deployments
            .get_opt("ferry-webhook")
            .await
            .unwrap()
            .is_none()
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
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    Api::<CustomResourceDefinition>::all(client)
        .get("grants.ferry.dev")
        .await
        .expect("the CRDs stay after uninstall");
}

/// Runs `binary` with `args` and no reachable cluster: it fails for want of
/// certificates or a cluster, but never because clap refused an argument
/// (clap exits with 2 and says so).
fn accepts_arguments(binary: &Path, args: &[String]) {
    let output = Command::new(binary)
        .args(args)
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("POD_NAMESPACE", "ferry-system")
        .output()
        .unwrap();
    let message = stderr(&output);
    assert!(
        output.status.code() != Some(2)
            && !message.contains("unexpected argument")
            && !message.contains("invalid value"),
        "{} refused the chart's arguments {args:?}: {message}",
        binary.display()
    );
}

#[test]
fn binaries_accept_the_arguments_the_chart_renders() {
    let operator = ferry_e2e::workspace_binary("ferry-operator").unwrap();
    let webhook = ferry_e2e::workspace_binary("ferry-webhook").unwrap();
    for sets in [
        &[][..],
        &["certManager.enabled=true", "webhook.missingGrant=warn"][..],
    ] {
        let objects = render(sets);
        accepts_arguments(
            &operator,
            &args(find(&objects, "Deployment", "ferry-operator")),
        );
        accepts_arguments(
            &operator,
            &args(find(&objects, "Deployment", "ferry-broker")),
        );
        accepts_arguments(
            &webhook,
            &args(find(&objects, "Deployment", "ferry-webhook")),
        );
    }
}
