#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Table tests of the pure mutation: pods in, patched pods or refusals out.

use std::collections::HashSet;

use ferry_api::grants::GrantLookup;
use ferry_api::resources::SecretReference;
use ferry_contract as contract;
use ferry_webhook::config::{InjectionConfig, MissingGrant};
use ferry_webhook::mutation::{Injection, Refusal, Untouched, inject_sidecar};
use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

/// Grants as a plain set of (namespace, service account, "ns/name").
#[derive(Default)]
struct Grants(HashSet<(String, String, String)>);

impl Grants {
    fn with(mut self, namespace: &str, service_account: &str, secret: &str) -> Self {
        self.0
            .insert((namespace.into(), service_account.into(), secret.into()));
        self
    }
}

impl GrantLookup for Grants {
    fn is_granted(
        &self,
        namespace: &str,
        sa: &str,
        secret: &SecretReference,
        _: Timestamp,
    ) -> bool {
        let secret = format!("{}/{}", secret.namespace, secret.name);
        self.0.contains(&(namespace.into(), sa.into(), secret))
    }
}

/// The grants most tests need: `app/default` and `app/api` may have
/// `app/orders-db`, `app/api` also `payments/orders-key`.
fn grants() -> Grants {
    Grants::default()
        .with("app", "default", "app/orders-db")
        .with("app", "api", "app/orders-db")
        .with("app", "api", "payments/orders-key")
        .with("app", "api", "app/cache")
}

fn pod(value: Value) -> Pod {
    serde_json::from_value(value).unwrap()
}

/// An opted-in pod in `app` asking for `secrets`, with one container.
fn opted_in(secrets: &str) -> Value {
    json!({
        "metadata": {
            "generateName": "api-",
            "labels": {"ferry.dev/inject": "true", "app": "api"},
            "annotations": {"ferry.dev/secrets": secrets},
        },
        "spec": {"containers": [{"name": "app", "image": "app:1"}]},
    })
}

fn decide(pod_json: Value, config: &InjectionConfig) -> Result<Injection, Refusal> {
    inject_sidecar(&pod(pod_json), "app", config, &grants(), Timestamp::now())
}

/// Runs the mutation and applies its patch, returning the patched pod.
fn injected(pod_json: Value) -> Pod {
    injected_with(pod_json, &InjectionConfig::default())
}

fn injected_with(pod_json: Value, config: &InjectionConfig) -> Pod {
    match decide(pod_json.clone(), config).unwrap() {
        Injection::Injected { patch, .. } => {
            let mut document = pod_json;
            json_patch::patch(&mut document, &patch).unwrap();
            pod(document)
        }
        other => panic!("expected an injection, got {other:?}"),
    }
}

fn refusal(pod_json: Value) -> Refusal {
    decide(pod_json, &InjectionConfig::default()).unwrap_err()
}

fn sidecar(pod: &Pod) -> &Container {
    let init = pod.spec.as_ref().unwrap().init_containers.as_ref().unwrap();
    assert_eq!(
        init.iter()
            .filter(|c| c.name == contract::SIDECAR_CONTAINER_NAME)
            .count(),
        1,
        "exactly one sidecar"
    );
    &init[0]
}

fn env(container: &Container, name: &str) -> Option<String> {
    container
        .env
        .iter()
        .flatten()
        .find(|var| var.name == name)
        .and_then(|var| var.value.clone())
}

fn secrets_mount(container: &Container) -> Option<(String, Option<bool>)> {
    container
        .volume_mounts
        .iter()
        .flatten()
        .find(|mount| mount.name == contract::SECRETS_VOLUME_NAME)
        .map(|mount| (mount.mount_path.clone(), mount.read_only))
}

#[test]
fn opted_in_pod_gets_a_native_sidecar_first_with_probe_and_hardening() {
    let pod = injected(opted_in("orders-db"));
    let sidecar = sidecar(&pod);
    assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
    assert_eq!(
        sidecar.command.as_deref(),
        Some(&[contract::SIDECAR_COMMAND.to_owned()][..])
    );
    let probe = sidecar.startup_probe.as_ref().unwrap();
    assert_eq!(
        probe.exec.as_ref().unwrap().command.as_ref().unwrap(),
        &vec![contract::SIDECAR_COMMAND.to_owned(), "probe".to_owned()]
    );
    assert_eq!(probe.failure_threshold, Some(120));
    // Once started, the same check decides readiness: a pod that lost its
    // secrets (revoked) fails it at the first period.
    let readiness = sidecar.readiness_probe.as_ref().unwrap();
    assert_eq!(readiness.exec, probe.exec);
    assert_eq!(readiness.failure_threshold, Some(1));

    let security = sidecar.security_context.as_ref().unwrap();
    assert_eq!(security.run_as_non_root, Some(true));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(
        security.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_owned()][..])
    );
    assert_eq!(
        security.seccomp_profile.as_ref().unwrap().type_,
        "RuntimeDefault"
    );
    let resources = sidecar.resources.as_ref().unwrap();
    assert!(resources.requests.as_ref().unwrap().contains_key("memory"));
    assert!(resources.limits.as_ref().unwrap().contains_key("memory"));

    assert_eq!(
        env(sidecar, contract::env::SECRETS).as_deref(),
        Some("app/orders-db")
    );
    assert_eq!(
        env(sidecar, contract::env::SECRETS_DIR).as_deref(),
        Some(contract::DEFAULT_MOUNT_PATH)
    );
    let downward: Vec<(&str, &str)> = sidecar
        .env
        .iter()
        .flatten()
        .filter_map(|var| {
            let field = var.value_from.as_ref()?.field_ref.as_ref()?;
            Some((var.name.as_str(), field.field_path.as_str()))
        })
        .collect();
    assert_eq!(
        downward,
        [
            (contract::env::POD_NAME, "metadata.name"),
            (contract::env::POD_NAMESPACE, "metadata.namespace"),
            (contract::env::POD_UID, "metadata.uid"),
        ]
    );
    // The sidecar writes the volume; the token is mounted into it alone.
    assert_eq!(
        secrets_mount(sidecar),
        Some((contract::DEFAULT_MOUNT_PATH.to_owned(), None))
    );
    assert!(
        sidecar
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| m.name == contract::TOKEN_VOLUME_NAME && m.read_only == Some(true))
    );
}

#[test]
fn opted_in_pod_gets_a_memory_volume_and_a_projected_token_for_the_broker() {
    let pod = injected(opted_in("orders-db"));
    let volumes = pod.spec.as_ref().unwrap().volumes.as_ref().unwrap();
    assert_eq!(volumes.len(), 2);
    let secrets = volumes
        .iter()
        .find(|v| v.name == contract::SECRETS_VOLUME_NAME)
        .unwrap();
    let empty_dir = secrets.empty_dir.as_ref().unwrap();
    assert_eq!(empty_dir.medium.as_deref(), Some("Memory"));
    assert_eq!(empty_dir.size_limit.as_ref().unwrap().0, "1Mi");
    let token = volumes
        .iter()
        .find(|v| v.name == contract::TOKEN_VOLUME_NAME)
        .unwrap();
    let projection = token.projected.as_ref().unwrap().sources.as_ref().unwrap()[0]
        .service_account_token
        .clone()
        .unwrap();
    assert_eq!(
        projection.audience.as_deref(),
        Some(contract::DEFAULT_BROKER_AUDIENCE)
    );
    assert_eq!(projection.expiration_seconds, Some(600));
}

#[test]
fn app_container_gets_the_secrets_read_only_but_never_the_token() {
    let pod = injected(opted_in("orders-db"));
    let app = &pod.spec.as_ref().unwrap().containers[0];
    assert_eq!(
        secrets_mount(app),
        Some((contract::DEFAULT_MOUNT_PATH.to_owned(), Some(true)))
    );
    assert!(
        !app.volume_mounts
            .iter()
            .flatten()
            .any(|m| m.name == contract::TOKEN_VOLUME_NAME)
    );
}

#[test]
fn status_annotation_records_the_injection_and_keeps_other_annotations() {
    let pod = injected(opted_in("orders-db"));
    let annotations = pod.metadata.annotations.unwrap();
    assert_eq!(annotations["ferry.dev/secrets"], "orders-db");
    let status: Value = serde_json::from_str(&annotations[contract::STATUS_ANNOTATION]).unwrap();
    assert_eq!(status["secrets"], json!(["app/orders-db"]));
    assert_eq!(status["mountPath"], contract::DEFAULT_MOUNT_PATH);
}

#[test]
fn a_second_invocation_on_the_injected_pod_changes_nothing() {
    let once = injected(opted_in("orders-db"));
    let again = inject_sidecar(
        &once,
        "app",
        &InjectionConfig::default(),
        &grants(),
        Timestamp::now(),
    )
    .unwrap();
    assert_eq!(again, Injection::Untouched(Untouched::AlreadyInjected));
}

#[test]
fn pods_that_did_not_opt_in_are_untouched() {
    let mut unlabelled = opted_in("orders-db");
    unlabelled["metadata"]["labels"] = json!({"app": "api"});
    let mut not_true = opted_in("orders-db");
    not_true["metadata"]["labels"] = json!({"ferry.dev/inject": "True"});
    for pod_json in [unlabelled, not_true] {
        assert_eq!(
            decide(pod_json, &InjectionConfig::default()).unwrap(),
            Injection::Untouched(Untouched::NotOptedIn)
        );
    }
}

#[test]
fn pods_in_kube_system_and_ferrys_namespace_are_untouched() {
    let config = InjectionConfig::default();
    for namespace in ["kube-system", config.ferry_namespace.as_str()] {
        let decision = inject_sidecar(
            &pod(opted_in("orders-db")),
            namespace,
            &config,
            &Grants::default(),
            Timestamp::now(),
        )
        .unwrap();
        assert_eq!(
            decision,
            Injection::Untouched(Untouched::ProtectedNamespace)
        );
    }
}

#[test]
fn sidecar_goes_before_existing_init_containers_which_keep_their_order_and_get_the_secrets() {
    let mut pod_json = opted_in("orders-db");
    pod_json["spec"]["initContainers"] = json!([
        {"name": "migrate", "image": "migrate:1"},
        {"name": "warm", "image": "warm:1", "volumeMounts": [{"name": "cache", "mountPath": "/cache"}]},
    ]);
    pod_json["spec"]["volumes"] = json!([{"name": "cache", "emptyDir": {}}]);
    let pod = injected(pod_json);
    let spec = pod.spec.as_ref().unwrap();
    let names: Vec<&str> = spec
        .init_containers
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(names, [contract::SIDECAR_CONTAINER_NAME, "migrate", "warm"]);
    let init = spec.init_containers.as_ref().unwrap();
    assert!(secrets_mount(&init[1]).is_some());
    assert_eq!(init[2].volume_mounts.as_ref().unwrap().len(), 2);
    let volumes: Vec<&str> = spec
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(
        volumes,
        [
            "cache",
            contract::SECRETS_VOLUME_NAME,
            contract::TOKEN_VOLUME_NAME
        ]
    );
}

#[test]
fn every_app_container_gets_the_secrets_mount_next_to_its_own() {
    let mut pod_json = opted_in("orders-db");
    pod_json["spec"]["containers"] = json!([
        {"name": "app", "image": "app:1"},
        {"name": "proxy", "image": "proxy:1", "volumeMounts": [{"name": "conf", "mountPath": "/etc/proxy"}]},
        {"name": "logger", "image": "logger:1"},
    ]);
    pod_json["spec"]["volumes"] = json!([{"name": "conf", "emptyDir": {}}]);
    let pod = injected(pod_json);
    let containers = &pod.spec.as_ref().unwrap().containers;
    assert_eq!(containers.len(), 3);
    for container in containers {
        assert_eq!(
            secrets_mount(container),
            Some((contract::DEFAULT_MOUNT_PATH.to_owned(), Some(true))),
            "{}",
            container.name
        );
    }
    assert_eq!(
        containers[1].volume_mounts.as_ref().unwrap()[0].name,
        "conf"
    );
}

#[test]
fn cross_namespace_secrets_are_requested_fully_qualified() {
    let mut pod_json = opted_in(" orders-db ,payments/orders-key");
    pod_json["spec"]["serviceAccountName"] = json!("api");
    let pod = injected(pod_json);
    assert_eq!(
        env(sidecar(&pod), contract::env::SECRETS).as_deref(),
        Some("app/orders-db,payments/orders-key")
    );
}

#[test]
fn mount_path_annotation_moves_every_mount() {
    let mut pod_json = opted_in("orders-db");
    pod_json["metadata"]["annotations"]["ferry.dev/mount-path"] = json!("/secrets/ferry");
    let pod = injected(pod_json);
    assert_eq!(
        secrets_mount(&pod.spec.as_ref().unwrap().containers[0])
            .unwrap()
            .0,
        "/secrets/ferry"
    );
    assert_eq!(
        env(sidecar(&pod), contract::env::SECRETS_DIR).as_deref(),
        Some("/secrets/ferry")
    );
}

#[test]
fn sidecar_runs_as_the_apps_user_so_it_can_read_the_files() {
    let cases = [
        (json!({"runAsUser": 1000}), json!([{"name": "app"}]), 1000),
        (
            json!({}),
            json!([{"name": "a", "securityContext": {"runAsUser": 2000}},
                   {"name": "b", "securityContext": {"runAsUser": 2000}}]),
            2000,
        ),
        (
            json!({}),
            json!([{"name": "a", "securityContext": {"runAsUser": 2000}},
                   {"name": "b", "securityContext": {"runAsUser": 3000}}]),
            65532,
        ),
        (json!({"runAsUser": 0}), json!([{"name": "app"}]), 65532),
        (json!({}), json!([{"name": "app"}]), 65532),
    ];
    for (pod_security, containers, expected) in cases {
        let mut pod_json = opted_in("orders-db");
        pod_json["spec"]["securityContext"] = pod_security.clone();
        pod_json["spec"]["containers"] = containers.clone();
        let pod = injected(pod_json);
        let security = sidecar(&pod).security_context.clone().unwrap();
        assert_eq!(
            security.run_as_user,
            Some(expected),
            "{pod_security} {containers}"
        );
    }
}

#[test]
fn fs_group_and_broker_ca_reach_the_sidecar() {
    let mut pod_json = opted_in("orders-db");
    pod_json["spec"]["securityContext"] = json!({"fsGroup": 3000});
    let config = InjectionConfig {
        broker_ca_pem: Some("-----BEGIN CERTIFICATE-----\n...".into()),
        ..InjectionConfig::default()
    };
    let pod = injected_with(pod_json, &config);
    let sidecar = sidecar(&pod);
    assert_eq!(
        env(sidecar, contract::env::FS_GROUP).as_deref(),
        Some("3000")
    );
    assert!(
        env(sidecar, contract::env::BROKER_CA)
            .unwrap()
            .starts_with("-----BEGIN")
    );
}

#[test]
fn service_account_without_a_grant_is_refused_with_the_missing_grant_named() {
    let mut pod_json = opted_in("orders-db, payments/orders-key, cache");
    pod_json["spec"]["serviceAccountName"] = json!("web");
    let refusal = refusal(pod_json);
    assert_eq!(refusal.reason(), "missing_grant");
    let message = refusal.to_string();
    assert!(message.contains("app/web"), "{message}");
    assert!(
        message.contains("app/orders-db, payments/orders-key, app/cache"),
        "{message}"
    );
    assert!(message.contains("namespace app, payments"), "{message}");
}

#[test]
fn a_pod_without_service_account_name_is_checked_as_default() {
    // `default` holds app/orders-db but not app/cache.
    injected(opted_in("orders-db"));
    let message = refusal(opted_in("cache")).to_string();
    assert!(message.contains("app/default"), "{message}");
}

#[test]
fn warn_mode_injects_and_warns_about_the_missing_grant() {
    let config = InjectionConfig {
        missing_grant: MissingGrant::Warn,
        ..InjectionConfig::default()
    };
    match decide(opted_in("cache"), &config).unwrap() {
        Injection::Injected { warnings, .. } => {
            assert_eq!(warnings.len(), 1);
            assert!(warnings[0].contains("app/cache"), "{warnings:?}");
        }
        other => panic!("expected an injection, got {other:?}"),
    }
}

#[test]
fn malformed_secrets_annotations_are_refused_with_a_reason() {
    let huge = "a".repeat(1 << 20);
    let cases: &[(&str, &str)] = &[
        ("", "is empty"),
        ("   ", "is empty"),
        ("orders-db,", "entry 2 is empty"),
        ("orders-db,,cache", "entry 2 is empty"),
        ("..", "not a valid BrokeredSecret name"),
        ("../etc", "invalid namespace"),
        ("app/..", "not a valid BrokeredSecret name"),
        ("a/b/c", "more than one '/'"),
        ("Orders-DB", "not a valid BrokeredSecret name"),
        ("orders_db", "not a valid BrokeredSecret name"),
        ("-orders", "not a valid BrokeredSecret name"),
        ("orders-db\n--- evil", "not a valid BrokeredSecret name"),
        ("/orders-db", "invalid namespace"),
        ("orders-db, orders-db", "lists app/orders-db twice"),
        ("orders-db, app/orders-db", "lists app/orders-db twice"),
        (
            "orders-db, payments/orders-db",
            "would share the directory orders-db/",
        ),
        (&huge, "at most 4096 are accepted"),
        (
            "a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,q",
            "lists 17 secrets; at most 16",
        ),
    ];
    for (value, expected) in cases {
        let refusal = refusal(opted_in(value));
        assert_eq!(
            refusal.reason(),
            "invalid_secrets_annotation",
            "{value:.40}"
        );
        let message = refusal.to_string();
        assert!(message.contains(expected), "{value:.40}: {message}");
        assert!(message.len() < 400, "message stays short: {message}");
        assert!(!message.contains('\n'), "hostile value escaped: {message}");
    }
}

#[test]
fn a_long_hostile_entry_is_quoted_shortened() {
    let value = format!("{}\u{1b}[31m", "x".repeat(300));
    let message = refusal(opted_in(&value)).to_string();
    assert!(message.contains("… (305 bytes)"), "{message}");
    assert!(!message.contains('\u{1b}'), "{message}");
}

#[test]
fn opted_in_pod_without_the_secrets_annotation_is_refused() {
    let mut pod_json = opted_in("x");
    pod_json["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("annotations");
    let refusal = refusal(pod_json);
    assert_eq!(refusal, Refusal::NoSecretsAnnotation);
    assert!(refusal.to_string().contains("ferry.dev/secrets"));
}

#[test]
fn mount_paths_over_system_directories_are_refused() {
    let cases = [
        "relative/path",
        "/",
        "/etc",
        "/etc/ferry",
        "/proc/self",
        "/usr/local/secrets",
        "/var/run/secrets/kubernetes.io/serviceaccount",
        "/run/secrets/kubernetes.io",
        "/var/run",
        "/tmp",
        "/secrets/../etc",
        "/secrets/./x",
        "/secrets//x",
        "/secrets/",
        "/sec\nrets",
        "C:\\secrets",
    ];
    for path in cases {
        let mut pod_json = opted_in("orders-db");
        pod_json["metadata"]["annotations"]["ferry.dev/mount-path"] = json!(path);
        let refusal = refusal(pod_json);
        assert_eq!(refusal.reason(), "invalid_mount_path", "{path:?}");
        assert!(
            refusal.to_string().contains("ferry.dev/mount-path"),
            "{refusal}"
        );
    }
    let mut long = opted_in("orders-db");
    long["metadata"]["annotations"]["ferry.dev/mount-path"] =
        json!(format!("/{}", "a".repeat(300)));
    assert!(refusal(long).to_string().contains("too long"));
}

#[test]
fn mount_paths_near_but_outside_system_directories_are_accepted() {
    for path in [
        "/etcetera",
        "/var/run/secrets/ferry",
        "/tmp/ferry",
        "/srv/secrets",
    ] {
        let mut pod_json = opted_in("orders-db");
        pod_json["metadata"]["annotations"]["ferry.dev/mount-path"] = json!(path);
        injected(pod_json);
    }
}

#[test]
fn pods_already_using_ferrys_names_or_mount_path_are_refused() {
    let mut volume = opted_in("orders-db");
    volume["spec"]["volumes"] = json!([{"name": "ferry-secrets", "emptyDir": {}}]);
    let mut container = opted_in("orders-db");
    container["spec"]["initContainers"] = json!([{"name": "ferry-sidecar", "image": "x"}]);
    let mut mount = opted_in("orders-db");
    mount["spec"]["containers"] = json!([{"name": "app", "volumeMounts": [
        {"name": "mine", "mountPath": "/var/run/secrets/ferry/"}
    ]}]);
    for (pod_json, expected) in [
        (volume, "volume named ferry-secrets"),
        (container, "container named ferry-sidecar"),
        (mount, "already mounts volume \"mine\""),
    ] {
        let refusal = refusal(pod_json);
        assert_eq!(refusal.reason(), "clash");
        assert!(refusal.to_string().contains(expected), "{refusal}");
    }
}

/// An opted-in pod asking for `orders-db` with `annotations` added, its
/// app running as uid 1000 unless `spec` replaces the spec.
fn with_reload(annotations: Value, spec: Option<Value>) -> Value {
    let mut pod = opted_in("orders-db");
    for (key, value) in annotations.as_object().unwrap() {
        pod["metadata"]["annotations"][key] = value.clone();
    }
    pod["spec"] = spec.unwrap_or_else(|| {
        json!({"securityContext": {"runAsUser": 1000},
               "containers": [{"name": "app", "image": "app:1"}]})
    });
    pod
}

#[test]
fn a_signal_reload_shares_the_process_namespace_and_tells_the_sidecar_what_to_signal() {
    let pod = injected(with_reload(
        json!({"ferry.dev/reload-signal": "hup", "ferry.dev/reload-process": "nginx",
               "ferry.dev/reload-url": "http://127.0.0.1:8080/-/reload"}),
        None,
    ));
    assert_eq!(
        pod.spec.as_ref().unwrap().share_process_namespace,
        Some(true)
    );
    let container = sidecar(&pod);
    assert_eq!(
        env(container, contract::env::RELOAD_SIGNAL).as_deref(),
        Some("SIGHUP")
    );
    assert_eq!(
        env(container, contract::env::RELOAD_PROCESS).as_deref(),
        Some("nginx")
    );
    assert_eq!(
        env(container, contract::env::RELOAD_URL).as_deref(),
        Some("http://127.0.0.1:8080/-/reload")
    );
    assert_eq!(
        container.security_context.as_ref().unwrap().run_as_user,
        Some(1000),
        "the sidecar runs as the app, so it may signal it"
    );

    // A URL alone changes nothing about processes.
    let pod = injected(with_reload(
        json!({"ferry.dev/reload-url": "http://localhost:9090/"}),
        None,
    ));
    assert_eq!(pod.spec.as_ref().unwrap().share_process_namespace, None);
    assert_eq!(env(sidecar(&pod), contract::env::RELOAD_SIGNAL), None);
}

#[test]
fn reload_annotations_that_cannot_be_honoured_are_refused_with_the_reason() {
    let app_as_1000 = None;
    let cases = [
        (
            json!({"ferry.dev/reload-signal": "KILL", "ferry.dev/reload-process": "nginx"}),
            app_as_1000.clone(),
            "annotation ferry.dev/reload-signal: \"KILL\" is not a signal a reload may send",
        ),
        (
            json!({"ferry.dev/reload-signal": "HUP"}),
            app_as_1000.clone(),
            "annotation ferry.dev/reload-signal needs annotation ferry.dev/reload-process",
        ),
        (
            json!({"ferry.dev/reload-process": "nginx"}),
            app_as_1000.clone(),
            "annotation ferry.dev/reload-process needs annotation ferry.dev/reload-signal",
        ),
        (
            json!({"ferry.dev/reload-signal": "HUP", "ferry.dev/reload-process": "/usr/sbin/nginx"}),
            app_as_1000.clone(),
            "is not a process name",
        ),
        (
            json!({"ferry.dev/reload-url": "http://10.0.0.7:8080/reload"}),
            app_as_1000.clone(),
            "is not on the pod's loopback interface",
        ),
        (
            json!({"ferry.dev/reload-url": "https://127.0.0.1/reload"}),
            app_as_1000.clone(),
            "must be an http:// URL",
        ),
        (
            json!({"ferry.dev/reload-signal": "HUP", "ferry.dev/reload-process": "nginx"}),
            Some(json!({"containers": [{"name": "app", "image": "app:1"}]})),
            "set a non-root runAsUser",
        ),
        (
            json!({"ferry.dev/reload-signal": "HUP", "ferry.dev/reload-process": "nginx"}),
            Some(
                json!({"shareProcessNamespace": false, "securityContext": {"runAsUser": 1000},
                        "containers": [{"name": "app", "image": "app:1"}]}),
            ),
            "remove shareProcessNamespace: false",
        ),
    ];
    for (annotations, spec, expected) in cases {
        let refusal = refusal(with_reload(annotations.clone(), spec));
        assert_eq!(refusal.reason(), "invalid_reload", "{annotations}");
        assert!(
            refusal.to_string().contains(expected),
            "{annotations}: {refusal}"
        );
    }
    let long = format!("http://127.0.0.1/{}", "a".repeat(4096));
    let message = refusal(with_reload(json!({"ferry.dev/reload-url": long}), None)).to_string();
    assert!(message.contains("longer than 2048 bytes"), "{message}");
    assert!(message.len() < 300, "the value is not echoed whole");
}
