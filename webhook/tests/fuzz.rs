//! Property-based fuzzing of what the webhook parses from whoever creates a
//! pod: AdmissionReview bodies (any bytes, any JSON, and generated reviews
//! of pods with hostile `ferry.dev/*` annotations, names, containers and
//! volumes) and the annotation values themselves. Nothing panics; a body
//! that is not a review is refused with a reason; every review is answered
//! for its uid, every denial says why, and every patch applies to the pod
//! it was made for and leaves a valid pod.
//!
//! `FERRY_FUZZ_CASES` sets the number of cases (`make fuzz` runs many).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use base64::Engine as _;
use ferry_api::grants::GrantLookup;
use ferry_api::resources::SecretReference;
use ferry_webhook::admission::review_pod_admission;
use ferry_webhook::annotations::{
    MAX_MOUNT_PATH_BYTES, is_dns_label, is_dns_subdomain, parse_secrets_annotation,
    validate_mount_path,
};
use ferry_webhook::config::InjectionConfig;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use proptest::prelude::*;
use serde_json::{Value, json};

fn config() -> ProptestConfig {
    let cases = std::env::var("FERRY_FUZZ_CASES")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Every secret is granted, so that opted-in pods get as far as a patch.
struct Everything;

impl GrantLookup for Everything {
    fn is_granted(&self, _: &str, _: &str, _: &SecretReference, _: Timestamp) -> bool {
        true
    }
}

/// Nothing is granted.
struct Nothing;

impl GrantLookup for Nothing {
    fn is_granted(&self, _: &str, _: &str, _: &SecretReference, _: Timestamp) -> bool {
        false
    }
}

/// Names as pods carry them: valid ones, ferry's own, and hostile ones.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z][a-z0-9-]{0,10}",
        1 => prop::sample::select(vec![
            "ferry-sidecar", "ferry-secrets", "ferry-token", "app", "default", "..", ".",
            "kube-system", "ferry-system", "A", "-x", "x-", "a.b",
        ]).prop_map(str::to_owned),
        1 => any::<String>(),
    ]
}

/// `ferry.dev/secrets` values: lists of names, well formed or not.
fn secrets_annotation() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => name_list("[a-z][a-z0-9-]{0,10}"),
        2 => prop::collection::vec(
            (proptest::option::of(name()), name(), prop::sample::select(vec![",", ", ", " ,", ",,", "/", " "])),
            0..6,
        )
        .prop_map(|entries| {
            entries
                .into_iter()
                .map(|(namespace, name, separator)| match namespace {
                    Some(namespace) => format!("{namespace}/{name}{separator}"),
                    None => format!("{name}{separator}"),
                })
                .collect::<String>()
        }),
        1 => any::<String>(),
        1 => "[a-z,/ ]{0,5000}",
    ]
}

fn mount_path() -> impl Strategy<Value = String> {
    prop_oneof![
        "(/[a-z.]{0,6}){0,5}/?",
        Just("/var/run/secrets/ferry.dev/serviceaccount".to_owned()),
        Just("/".to_owned()),
        Just("/etc/../root".to_owned()),
        any::<String>(),
    ]
}

/// A number as a pod may put it where an integer goes.
fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        40 => (-5i64..70_000).prop_map(Value::from),
        1 => Just(json!(i64::MAX)),
        1 => Just(json!(u64::MAX)),
        1 => Just(json!(-1)),
        1 => Just(json!(0)),
        1 => Just(json!(1.5)),
        1 => Just(json!("1000")),
    ]
}

fn container() -> impl Strategy<Value = Value> {
    (
        name(),
        prop::collection::vec((name(), mount_path()), 0..3),
        proptest::option::of(number()),
    )
        .prop_map(|(name, mounts, run_as_user)| {
            let mounts: Vec<Value> = mounts
                .into_iter()
                .map(|(name, path)| json!({"name": name, "mountPath": path}))
                .collect();
            let mut container = json!({"name": name, "image": "app:1", "volumeMounts": mounts});
            if let Some(user) = run_as_user {
                container["securityContext"] = json!({"runAsUser": user});
            }
            container
        })
}

fn pod() -> impl Strategy<Value = Value> {
    (
        (
            prop_oneof![8 => Just(Some("true")), 1 => Just(Some("True")), 1 => Just(Some("false")), 1 => Just(None)],
            prop_oneof![8 => secrets_annotation().prop_map(Some), 1 => Just(None)],
            prop_oneof![4 => Just(None), 1 => mount_path().prop_map(Some)],
            prop_oneof![8 => Just(None), 1 => any::<String>().prop_map(Some)],
        ),
        (proptest::option::of(name()), proptest::option::of(name())),
        prop::collection::vec(container(), 0..3),
        prop::collection::vec(container(), 0..2),
        prop::collection::vec(name(), 0..3),
        (proptest::option::of(number()), proptest::option::of(number())),
    )
        .prop_map(
            |(
                (inject, secrets, mount, status),
                (service_account, pod_name),
                containers,
                init_containers,
                volumes,
                (fs_group, run_as_user),
            )| {
                let mut labels = json!({"app": "api"});
                if let Some(value) = inject {
                    labels["ferry.dev/inject"] = json!(value);
                }
                let mut annotations = json!({});
                if let Some(value) = secrets {
                    annotations["ferry.dev/secrets"] = json!(value);
                }
                if let Some(value) = mount {
                    annotations["ferry.dev/mount-path"] = json!(value);
                }
                if let Some(value) = status {
                    annotations["ferry.dev/status"] = json!(value);
                }
                let mut pod = json!({
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"labels": labels, "annotations": annotations, "generateName": "api-"},
                    "spec": {
                        "containers": containers,
                        "initContainers": init_containers,
                        "volumes": volumes.into_iter().map(|n| json!({"name": n, "emptyDir": {}})).collect::<Vec<_>>(),
                        "securityContext": {},
                    },
                });
                if let Some(name) = pod_name {
                    pod["metadata"]["name"] = json!(name);
                }
                if let Some(account) = service_account {
                    pod["spec"]["serviceAccountName"] = json!(account);
                }
                if let Some(group) = fs_group {
                    pod["spec"]["securityContext"]["fsGroup"] = group;
                }
                if let Some(user) = run_as_user {
                    pod["spec"]["securityContext"]["runAsUser"] = user;
                }
                pod
            },
        )
}

fn review() -> impl Strategy<Value = (Value, Value)> {
    (
        pod(),
        any::<String>(),
        prop_oneof![8 => Just("CREATE"), 1 => Just("UPDATE"), 1 => Just("DELETE"), 1 => Just("CONNECT"), 1 => Just("BOGUS")],
        prop_oneof![8 => Just(("", "v1", "Pod")), 1 => Just(("apps", "v1", "Deployment")), 1 => Just(("", "v1", "Secret"))],
        prop_oneof![4 => "[a-z][a-z0-9-]{0,10}".prop_map(Some), 1 => proptest::option::of(name())],
    )
        .prop_map(|(pod, uid, operation, (group, version, kind), namespace)| {
            let mut request = json!({
                "uid": uid,
                "kind": {"group": group, "version": version, "kind": kind},
                "resource": {"group": group, "version": version, "resource": "pods"},
                "operation": operation,
                "userInfo": {"username": "someone"},
                "object": pod,
            });
            if let Some(namespace) = namespace {
                request["namespace"] = json!(namespace);
            }
            let review = json!({
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "request": request,
            });
            (review, pod)
        })
}

/// Checks an answer: for the asked uid, a denial with its reason, and a
/// patch that applies to `pod` and leaves a valid pod.
/// `ferry.dev/secrets` values that parse: one to three DNS labels, some
/// with a namespace.
fn valid_secrets_annotation() -> impl Strategy<Value = String> {
    name_list("[a-z]([a-z0-9-]{0,9}[a-z0-9])?")
}

/// One to three names matching `name`, some with a namespace, as a
/// `ferry.dev/secrets` list.
fn name_list(name: &'static str) -> impl Strategy<Value = String> {
    prop::collection::vec((proptest::option::of(name), name), 1..4).prop_map(|entries| {
        entries
            .into_iter()
            .map(|(namespace, name)| match namespace {
                Some(namespace) => format!("{namespace}/{name}"),
                None => name,
            })
            .collect::<Vec<_>>()
            .join(", ")
    })
}

/// Reviews of a pod's creation that opt in properly, with a parsable
/// secrets list, so that they get past the opt-in and annotation checks to
/// the Grant check and (granted) the patch, while their containers,
/// volumes, names, users and mount path stay as hostile as [`pod`] makes them.
fn injectable_review() -> impl Strategy<Value = (Value, Value)> {
    (
        pod(),
        valid_secrets_annotation(),
        "[a-z0-9-]{1,36}",
        "[a-z][a-z0-9-]{0,10}",
    )
        .prop_map(|(mut pod, secrets, uid, namespace)| {
            pod["metadata"]["labels"]["ferry.dev/inject"] = json!("true");
            let annotations = &mut pod["metadata"]["annotations"];
            annotations["ferry.dev/secrets"] = json!(secrets);
            if let Some(annotations) = annotations.as_object_mut() {
                annotations.remove("ferry.dev/status");
            }
            let review = json!({
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "request": {
                    "uid": uid,
                    "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "resource": {"group": "", "version": "v1", "resource": "pods"},
                    "namespace": namespace,
                    "operation": "CREATE",
                    "userInfo": {"username": "someone"},
                    "object": pod,
                },
            });
            (review, pod)
        })
}

fn check_answer(answer: &Value, uid: &str, pod: &Value) -> Result<(), TestCaseError> {
    let response = &answer["response"];
    prop_assert_eq!(response["uid"].as_str(), Some(uid));
    if response["allowed"] == false {
        prop_assert_eq!(&response["status"]["code"], &json!(403));
        prop_assert!(!response["status"]["message"].as_str().unwrap().is_empty());
        prop_assert!(response.get("patch").is_none_or(Value::is_null));
    }
    if let Some(patch) = response.get("patch").and_then(Value::as_str) {
        prop_assert_eq!(response["allowed"].as_bool(), Some(true));
        let patch = base64::engine::general_purpose::STANDARD
            .decode(patch)
            .unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
        let mut patched = pod.clone();
        json_patch::patch(&mut patched, &patch).unwrap();
        serde_json::from_value::<Pod>(patched).unwrap();
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn generated_reviews_are_answered_for_their_uid_with_a_patch_that_applies(
        (review, pod) in review(),
        granted in any::<bool>(),
    ) {
        let body = serde_json::to_vec(&review).unwrap();
        let config = InjectionConfig::default();
        let now = Timestamp::now();
        let result = if granted {
            review_pod_admission(&body, &config, &Everything, now)
        } else {
            review_pod_admission(&body, &config, &Nothing, now)
        };
        match result {
            Ok(reviewed) => {
                let answer = serde_json::to_value(&reviewed.review).unwrap();
                let uid = review["request"]["uid"].as_str().unwrap();
                check_answer(&answer, uid, &pod)?;
            }
            Err(bad) => prop_assert!(!bad.to_string().is_empty()),
        }
    }

    #[test]
    fn opted_in_pods_with_hostile_specs_get_a_patch_that_applies((review, pod) in injectable_review()) {
        let body = serde_json::to_vec(&review).unwrap();
        let reviewed = review_pod_admission(&body, &InjectionConfig::default(), &Everything, Timestamp::now());
        match reviewed {
            Ok(reviewed) => {
                let answer = serde_json::to_value(&reviewed.review).unwrap();
                let uid = review["request"]["uid"].as_str().unwrap();
                check_answer(&answer, uid, &pod)?;
            }
            Err(bad) => prop_assert!(!bad.to_string().is_empty()),
        }
    }

    #[test]
    fn any_bytes_are_answered_or_refused_with_a_reason(
        body in prop::collection::vec(any::<u8>(), 0..1024)
    ) {
        let config = InjectionConfig::default();
        if let Err(bad) = review_pod_admission(&body, &config, &Everything, Timestamp::now()) {
            prop_assert!(!bad.to_string().is_empty());
        }
    }

    #[test]
    fn a_corrupted_review_is_answered_or_refused_with_a_reason(
        (review, _) in review(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 1..5),
    ) {
        let mut body = serde_json::to_vec(&review).unwrap();
        for (at, byte, how) in edits {
            let at = at.index(body.len().max(1)).min(body.len());
            match how {
                0 if at < body.len() => body[at] = byte,
                1 => body.truncate(at),
                _ => body.insert(at, byte),
            }
        }
        let config = InjectionConfig::default();
        match review_pod_admission(&body, &config, &Everything, Timestamp::now()) {
            Ok(reviewed) => {
                serde_json::to_vec(&reviewed.review).unwrap();
            }
            Err(bad) => prop_assert!(!bad.to_string().is_empty()),
        }
    }

    #[test]
    fn a_secrets_annotation_is_parsed_into_valid_names_or_refused_with_a_short_reason(
        value in secrets_annotation(),
        // The pod's namespace, which the apiserver has validated.
        namespace in "[a-z]([a-z0-9-]{0,9}[a-z0-9])?",
        max in 0usize..20,
    ) {
        match parse_secrets_annotation(&value, &namespace, max) {
            Ok(secrets) => {
                prop_assert!(!secrets.is_empty() && secrets.len() <= max);
                for secret in &secrets {
                    prop_assert!(is_dns_label(&secret.namespace), "{:?}", secret.namespace);
                    prop_assert!(is_dns_subdomain(&secret.name), "{:?}", secret.name);
                }
                for (i, a) in secrets.iter().enumerate() {
                    prop_assert!(secrets[..i].iter().all(|b| b.name != a.name));
                }
            }
            Err(error) => {
                let message = error.to_string();
                prop_assert!(!message.is_empty());
                // Values are quoted shortened: no 4 KiB echo.
                prop_assert!(message.len() < 1024, "{} bytes", message.len());
            }
        }
    }

    #[test]
    fn a_mount_path_is_absolute_and_climbs_nowhere_or_is_refused(path in mount_path()) {
        match validate_mount_path(&path) {
            Ok(()) => {
                prop_assert!(path.starts_with('/') && path.len() <= MAX_MOUNT_PATH_BYTES);
                prop_assert!(path.split('/').all(|part| part != ".."), "{path:?}");
            }
            Err(error) => {
                let message = error.to_string();
                prop_assert!(!message.is_empty() && message.len() < 1024);
            }
        }
    }
}

/// Opted-in pods are not all refused or skipped before the mutation: with
/// every secret granted, most reach patch generation, which is what
/// `opted_in_pods_with_hostile_specs_get_a_patch_that_applies` then checks.
#[test]
fn generated_reviews_reach_the_injection_path() {
    use proptest::strategy::ValueTree as _;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let config = InjectionConfig::default();
    let (mut injected, total) = (0, 256);
    for _ in 0..total {
        let (review, _) = injectable_review().new_tree(&mut runner).unwrap().current();
        let body = serde_json::to_vec(&review).unwrap();
        if let Ok(reviewed) = review_pod_admission(&body, &config, &Everything, Timestamp::now())
            && matches!(
                reviewed.decision,
                ferry_webhook::admission::Decision::Injected { .. }
            )
        {
            injected += 1;
        }
    }
    assert!(
        injected * 2 >= total,
        "only {injected} of {total} generated reviews reached injection"
    );
}
