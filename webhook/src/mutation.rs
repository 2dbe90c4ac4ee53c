//! The mutation itself: a pure function from a pod (with its namespace, the
//! webhook's configuration and the Grants) to the JSON patch that injects
//! the ferry sidecar, or a refusal that tells the pod's author what to fix.
//!
//! The sidecar is a native sidecar (an init container with `restartPolicy:
//! Always`) placed first, whose startup probe passes only once every secret
//! is written, so the kubelet starts nothing else before the secrets exist;
//! its readiness probe, the same check, makes the pod NotReady while it has
//! lost them (revoked, or expired unrenewed).

use std::collections::BTreeMap;

use ferry_api::grants::GrantLookup;
use ferry_api::resources::SecretReference;
use ferry_contract::reload::{self, PROCESS_ANNOTATION, SIGNAL_ANNOTATION, URL_ANNOTATION};
use ferry_contract::{
    self as contract, INJECT_LABEL, MOUNT_PATH_ANNOTATION, SECRETS_ANNOTATION, SECRETS_VOLUME_NAME,
    SIDECAR_COMMAND, SIDECAR_CONTAINER_NAME, SIDECAR_PROBE_ARG, SIDECAR_RUN_ARG, STATUS_ANNOTATION,
    TOKEN_FILE_NAME, TOKEN_MOUNT_PATH, TOKEN_VOLUME_NAME,
};
use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, ExecAction,
    ObjectFieldSelector, Pod, PodSpec, Probe, ProjectedVolumeSource, ResourceRequirements,
    SeccompProfile, SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount,
    VolumeProjection,
};
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;
use serde_json::Value;

use crate::annotations::{
    MountPathError, Quoted, SecretsAnnotationError, parse_secrets_annotation, qualified,
    validate_mount_path,
};
use crate::config::{InjectionConfig, MissingGrant};

/// How often the kubelet checks that a started sidecar still has every
/// secret written and current (its readiness probe).
pub const READINESS_PERIOD_SECONDS: i32 = 5;

/// Namespaces whose pods are never touched, besides ferry's own.
pub const SYSTEM_NAMESPACES: &[&str] = &["kube-system"];

/// What the webhook does with a pod it admits.
#[derive(Debug, Clone, PartialEq)]
pub enum Injection {
    /// The pod is admitted as it is.
    Untouched(Untouched),
    /// The pod is admitted with the sidecar, its volumes and mounts.
    Injected {
        /// The JSON patch to apply.
        patch: Patch,
        /// The secrets the sidecar will fetch.
        secrets: Vec<SecretReference>,
        /// Admission warnings for the pod's author (missing Grants in warn mode).
        warnings: Vec<String>,
    },
}

/// Why a pod was admitted untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Untouched {
    /// The pod does not carry `ferry.dev/inject: "true"`.
    NotOptedIn,
    /// The pod already carries `ferry.dev/status`: injected before.
    AlreadyInjected,
    /// The pod is in kube-system or ferry's own namespace.
    ProtectedNamespace,
}

impl Untouched {
    /// A short label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotOptedIn => "not_opted_in",
            Self::AlreadyInjected => "already_injected",
            Self::ProtectedNamespace => "protected_namespace",
        }
    }
}

/// Why a pod was refused. The message is what `kubectl` shows the pod's author.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Opted in without saying which secrets.
    #[error(
        "pod has label {INJECT_LABEL}=true but no annotation {SECRETS_ANNOTATION}: list the BrokeredSecrets it needs, or remove the label"
    )]
    NoSecretsAnnotation,
    /// `ferry.dev/secrets` is malformed.
    #[error(transparent)]
    SecretsAnnotation(#[from] SecretsAnnotationError),
    /// `ferry.dev/mount-path` is malformed or protected.
    #[error(transparent)]
    MountPath(#[from] MountPathError),
    /// The pod already uses a name or path ferry needs.
    #[error("{0}")]
    Clash(String),
    /// A container other than ferry's sidecar mounts the token volume.
    #[error(
        "container {0} mounts volume {TOKEN_VOLUME_NAME}: only ferry's sidecar may hold the pod's broker token; remove that volumeMount"
    )]
    TokenMounted(String),
    /// A reload annotation cannot be honoured.
    #[error("{0}")]
    Reload(String),
    /// The service account lacks a Grant for some requested secrets.
    #[error("{}", missing_grants_message(.namespace, .service_account, .missing))]
    MissingGrants {
        /// The pod's namespace.
        namespace: String,
        /// The pod's service account.
        service_account: String,
        /// The secrets it has no Grant for.
        missing: Vec<SecretReference>,
    },
}

impl Refusal {
    /// A short label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoSecretsAnnotation => "no_secrets_annotation",
            Self::SecretsAnnotation(_) => "invalid_secrets_annotation",
            Self::MountPath(_) => "invalid_mount_path",
            Self::Clash(_) => "clash",
            Self::TokenMounted(_) => "token_mounted",
            Self::Reload(_) => "invalid_reload",
            Self::MissingGrants { .. } => "missing_grant",
        }
    }
}

fn missing_grants_message(
    namespace: &str,
    service_account: &str,
    missing: &[SecretReference],
) -> String {
    let listed: Vec<String> = missing.iter().map(qualified).collect();
    let owners: std::collections::BTreeSet<&str> = missing
        .iter()
        .map(|secret| secret.namespace.as_str())
        .collect();
    let owners: Vec<&str> = owners.into_iter().collect();
    format!(
        "service account {namespace}/{service_account} has no Grant for BrokeredSecret {}: \
         an AccessPolicy in namespace {} must name this service account \
         (kubectl get grants -n {namespace} shows what it holds)",
        listed.join(", "),
        owners.join(", "),
    )
}

/// Decides what to do with `pod`, created in `namespace`: leave it, inject
/// it, or refuse it. Pure: the Grants are looked up in `grants` as of `now`.
pub fn inject_sidecar(
    pod: &Pod,
    namespace: &str,
    config: &InjectionConfig,
    grants: &impl GrantLookup,
    now: Timestamp,
) -> Result<Injection, Refusal> {
    if namespace == config.ferry_namespace || SYSTEM_NAMESPACES.contains(&namespace) {
        return Ok(Injection::Untouched(Untouched::ProtectedNamespace));
    }
    let labels = pod.metadata.labels.as_ref();
    if labels
        .and_then(|labels| labels.get(INJECT_LABEL))
        .map(String::as_str)
        != Some("true")
    {
        return Ok(Injection::Untouched(Untouched::NotOptedIn));
    }
    let annotations = pod.metadata.annotations.as_ref();
    let annotation = |key: &str| annotations.and_then(|annotations| annotations.get(key));
    // Also on reinvocation: another webhook may have added a container
    // since ferry injected the pod.
    check_token_confined(pod)?;
    if annotation(STATUS_ANNOTATION).is_some() {
        return Ok(Injection::Untouched(Untouched::AlreadyInjected));
    }
    let requested = annotation(SECRETS_ANNOTATION).ok_or(Refusal::NoSecretsAnnotation)?;
    let secrets = parse_secrets_annotation(requested, namespace, config.max_secrets)?;
    let mount_path = match annotation(MOUNT_PATH_ANNOTATION) {
        Some(path) => {
            validate_mount_path(path)?;
            path.as_str()
        }
        None => contract::DEFAULT_MOUNT_PATH,
    };
    check_clashes(pod, mount_path)?;
    let reload = reload_settings(pod, annotation)?;

    let service_account = pod
        .spec
        .as_ref()
        .and_then(|spec| spec.service_account_name.as_deref())
        .filter(|name| !name.is_empty())
        .unwrap_or("default");
    let missing: Vec<SecretReference> = secrets
        .iter()
        .filter(|secret| !grants.is_granted(namespace, service_account, secret, now))
        .cloned()
        .collect();
    let mut warnings = Vec::new();
    if !missing.is_empty() {
        let refusal = Refusal::MissingGrants {
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
            missing,
        };
        match config.missing_grant {
            MissingGrant::Deny => return Err(refusal),
            MissingGrant::Warn => warnings.push(refusal.to_string()),
        }
    }

    let patch = build_patch(pod, config, &secrets, mount_path, &reload);
    Ok(Injection::Injected {
        patch,
        secrets,
        warnings,
    })
}

/// What a pod asked for in its reload annotations, checked.
#[derive(Debug, Default)]
struct Reload {
    /// The signal (`SIGHUP`) and the name of the processes to send it to.
    signal: Option<(String, String)>,
    /// The loopback URL to POST to.
    url: Option<String>,
}

/// The longest reload URL accepted, in bytes.
const MAX_RELOAD_URL_BYTES: usize = 2048;

/// Reads and checks the reload annotations (see [`contract::reload`]). A
/// signal needs the pod's containers to share a process namespace (set
/// here unless the pod says `false`) and the sidecar to run as the app's
/// user, which the pod must therefore name.
fn reload_settings<'a>(
    pod: &Pod,
    annotation: impl Fn(&str) -> Option<&'a String>,
) -> Result<Reload, Refusal> {
    let refuse = |key: &str, value: &str, why: String| {
        Refusal::Reload(format!("annotation {key}: {} {why}", Quoted::new(value)))
    };
    let signal = match (
        annotation(SIGNAL_ANNOTATION),
        annotation(PROCESS_ANNOTATION),
    ) {
        (None, None) => None,
        (Some(_), None) => {
            return Err(Refusal::Reload(format!(
                "annotation {SIGNAL_ANNOTATION} needs annotation {PROCESS_ANNOTATION}: the name of the app's process to signal"
            )));
        }
        (None, Some(_)) => {
            return Err(Refusal::Reload(format!(
                "annotation {PROCESS_ANNOTATION} needs annotation {SIGNAL_ANNOTATION}: the signal to send it, such as HUP"
            )));
        }
        (Some(signal), Some(process)) => {
            let canonical = reload::parse_signal(signal)
                .map_err(|why| refuse(SIGNAL_ANNOTATION, signal, why))?;
            reload::check_process_name(process)
                .map_err(|why| refuse(PROCESS_ANNOTATION, process, why))?;
            let spec = pod.spec.as_ref();
            if spec.and_then(|spec| spec.share_process_namespace) == Some(false) {
                return Err(Refusal::Reload(format!(
                    "annotation {SIGNAL_ANNOTATION}: the sidecar can signal the app only if the pod's containers share a process namespace; remove shareProcessNamespace: false (ferry sets it to true)"
                )));
            }
            if app_user(pod).is_none() {
                return Err(Refusal::Reload(format!(
                    "annotation {SIGNAL_ANNOTATION}: the sidecar may signal only processes of its own user, and runs as the app's only when the pod names it; set a non-root runAsUser on the pod (or the same one on every container)"
                )));
            }
            Some((canonical, process.clone()))
        }
    };
    let url = match annotation(URL_ANNOTATION) {
        None => None,
        Some(url) if url.len() > MAX_RELOAD_URL_BYTES => {
            return Err(refuse(
                URL_ANNOTATION,
                url,
                format!("is longer than {MAX_RELOAD_URL_BYTES} bytes"),
            ));
        }
        Some(url) => {
            reload::parse_loopback_url(url.trim())
                .map_err(|why| refuse(URL_ANNOTATION, url, why))?;
            Some(url.trim().to_owned())
        }
    };
    Ok(Reload { signal, url })
}

/// Refuses a pod in which any container but ferry's sidecar mounts the
/// token volume: the token proves the pod to the broker, and the README
/// promises that only the sidecar holds it. A container mounting it before
/// injection would get it once the webhook adds the volume.
fn check_token_confined(pod: &Pod) -> Result<(), Refusal> {
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(());
    };
    let sidecar = |name: &str| name == SIDECAR_CONTAINER_NAME;
    let containers = spec
        .containers
        .iter()
        .map(|c| (&c.name, &c.volume_mounts, false))
        .chain(
            spec.init_containers
                .iter()
                .flatten()
                .map(|c| (&c.name, &c.volume_mounts, true)),
        )
        .chain(
            spec.ephemeral_containers
                .iter()
                .flatten()
                .map(|c| (&c.name, &c.volume_mounts, false)),
        );
    for (name, mounts, init) in containers {
        // The sidecar is ferry's init container; an app container of that
        // name is refused as a clash elsewhere.
        if init && sidecar(name) {
            continue;
        }
        if mounts.iter().flatten().any(|m| m.name == TOKEN_VOLUME_NAME) {
            return Err(Refusal::TokenMounted(Quoted::new(name).to_string()));
        }
    }
    Ok(())
}

/// Refuses pods that already use a volume, container or mount path ferry
/// would add: patching over them would break the pod in confusing ways.
fn check_clashes(pod: &Pod, mount_path: &str) -> Result<(), Refusal> {
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(());
    };
    for volume in spec.volumes.iter().flatten() {
        if volume.name == SECRETS_VOLUME_NAME || volume.name == TOKEN_VOLUME_NAME {
            return Err(Refusal::Clash(format!(
                "pod already has a volume named {}; ferry needs the names {SECRETS_VOLUME_NAME} and {TOKEN_VOLUME_NAME}",
                volume.name
            )));
        }
    }
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    for container in containers {
        if container.name == SIDECAR_CONTAINER_NAME {
            return Err(Refusal::Clash(format!(
                "pod already has a container named {SIDECAR_CONTAINER_NAME}, but no {STATUS_ANNOTATION} annotation; rename the container"
            )));
        }
        for mount in container.volume_mounts.iter().flatten() {
            if mount.mount_path.trim_end_matches('/') == mount_path {
                return Err(Refusal::Clash(format!(
                    "container {} already mounts volume {} at {}; set annotation {MOUNT_PATH_ANNOTATION} to another path",
                    Quoted::new(&container.name),
                    Quoted::new(&mount.name),
                    Quoted::new(mount_path),
                )));
            }
        }
    }
    Ok(())
}

/// Collects JSON-patch `add` operations.
#[derive(Default)]
struct PatchBuilder(Vec<PatchOperation>);

impl PatchBuilder {
    fn add<'t>(
        &mut self,
        path: impl IntoIterator<Item: Into<json_patch::jsonptr::Token<'t>>>,
        value: Value,
    ) {
        self.0.push(PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(path),
            value,
        }));
    }

    /// Appends `items` to the array at `path`, creating it when `exists` is false.
    fn append(&mut self, path: &[&str], exists: bool, items: Vec<Value>) {
        if exists {
            for item in items {
                self.add(path.iter().copied().chain(["-"]), item);
            }
        } else {
            self.add(path.iter().copied(), Value::Array(items));
        }
    }
}

fn to_value(value: impl Serialize) -> Value {
    // Serialising k8s-openapi types to a Value cannot fail: they hold only
    // strings, numbers, maps and lists.
    serde_json::to_value(value).unwrap_or(Value::Null)
}

fn build_patch(
    pod: &Pod,
    config: &InjectionConfig,
    secrets: &[SecretReference],
    mount_path: &str,
    reload: &Reload,
) -> Patch {
    let mut patch = PatchBuilder::default();
    let empty = PodSpec::default();
    let spec = pod.spec.as_ref().unwrap_or(&empty);

    let status = contract::InjectionStatus {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        secrets: secrets.iter().map(qualified).collect(),
        mount_path: mount_path.to_owned(),
    };
    let status = serde_json::to_string(&status).unwrap_or_default();
    if pod.metadata.annotations.is_some() {
        patch.add(
            ["metadata", "annotations", STATUS_ANNOTATION],
            Value::String(status),
        );
    } else {
        let annotations = BTreeMap::from([(STATUS_ANNOTATION, status)]);
        patch.add(["metadata", "annotations"], to_value(annotations));
    }

    patch.append(
        &["spec", "volumes"],
        spec.volumes.is_some(),
        vec![
            to_value(secrets_volume(config)),
            to_value(token_volume(config)),
        ],
    );

    let app_mount = to_value(VolumeMount {
        name: SECRETS_VOLUME_NAME.into(),
        mount_path: mount_path.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    });
    for (index, container) in spec.containers.iter().enumerate() {
        let index = index.to_string();
        patch.append(
            &["spec", "containers", &index, "volumeMounts"],
            container.volume_mounts.is_some(),
            vec![app_mount.clone()],
        );
    }
    // Init containers after the sidecar may use the secrets too (database
    // migrations, say). Their mounts are added before the sidecar is
    // inserted, while their indices are still the original ones.
    for (index, container) in spec.init_containers.iter().flatten().enumerate() {
        let index = index.to_string();
        patch.append(
            &["spec", "initContainers", &index, "volumeMounts"],
            container.volume_mounts.is_some(),
            vec![app_mount.clone()],
        );
    }
    if reload.signal.is_some() && spec.share_process_namespace.is_none() {
        patch.add(["spec", "shareProcessNamespace"], Value::Bool(true));
    }
    let sidecar = to_value(sidecar_container(pod, config, secrets, mount_path, reload));
    if spec.init_containers.is_some() {
        patch.add(["spec", "initContainers", "0"], sidecar);
    } else {
        patch.add(["spec", "initContainers"], Value::Array(vec![sidecar]));
    }
    Patch(patch.0)
}

fn secrets_volume(config: &InjectionConfig) -> Volume {
    Volume {
        name: SECRETS_VOLUME_NAME.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: Some("Memory".into()),
            size_limit: Some(config.volume_size_limit.clone()),
        }),
        ..Volume::default()
    }
}

fn token_volume(config: &InjectionConfig) -> Volume {
    Volume {
        name: TOKEN_VOLUME_NAME.into(),
        projected: Some(ProjectedVolumeSource {
            default_mode: Some(0o440),
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: Some(config.broker_audience.clone()),
                    expiration_seconds: Some(config.token_expiration_seconds),
                    path: TOKEN_FILE_NAME.into(),
                }),
                ..VolumeProjection::default()
            }]),
        }),
        ..Volume::default()
    }
}

fn sidecar_container(
    pod: &Pod,
    config: &InjectionConfig,
    secrets: &[SecretReference],
    mount_path: &str,
    reload: &Reload,
) -> Container {
    let pod_security = pod
        .spec
        .as_ref()
        .and_then(|spec| spec.security_context.as_ref());
    let fs_group = pod_security.and_then(|context| context.fs_group);
    let run_as_group = pod_security.and_then(|context| context.run_as_group);

    let plain = |name: &str, value: String| EnvVar {
        name: name.into(),
        value: Some(value),
        value_from: None,
    };
    let from_field = |name: &str, field: &str| EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: Some("v1".into()),
                field_path: field.into(),
            }),
            ..EnvVarSource::default()
        }),
    };
    let mut env = vec![
        plain(contract::env::BROKER_URL, config.broker_url.clone()),
        plain(
            contract::env::SECRETS,
            secrets.iter().map(qualified).collect::<Vec<_>>().join(","),
        ),
        plain(contract::env::SECRETS_DIR, mount_path.into()),
        plain(
            contract::env::TOKEN_FILE,
            format!("{TOKEN_MOUNT_PATH}/{TOKEN_FILE_NAME}"),
        ),
        from_field(contract::env::POD_NAME, "metadata.name"),
        from_field(contract::env::POD_NAMESPACE, "metadata.namespace"),
        from_field(contract::env::POD_UID, "metadata.uid"),
    ];
    if let Some(ca) = &config.broker_ca_pem {
        env.push(plain(contract::env::BROKER_CA, ca.clone()));
    }
    if let Some(group) = fs_group {
        env.push(plain(contract::env::FS_GROUP, group.to_string()));
    }
    if let Some((signal, process)) = &reload.signal {
        env.push(plain(contract::env::RELOAD_SIGNAL, signal.clone()));
        env.push(plain(contract::env::RELOAD_PROCESS, process.clone()));
    }
    if let Some(url) = &reload.url {
        env.push(plain(contract::env::RELOAD_URL, url.clone()));
    }

    let mut limits = BTreeMap::from([("memory".to_owned(), config.memory_limit.clone())]);
    if let Some(cpu) = &config.cpu_limit {
        limits.insert("cpu".into(), cpu.clone());
    }
    Container {
        name: SIDECAR_CONTAINER_NAME.into(),
        image: Some(config.sidecar_image.clone()),
        image_pull_policy: Some(config.image_pull_policy.clone()),
        command: Some(vec![SIDECAR_COMMAND.into()]),
        args: Some(vec![SIDECAR_RUN_ARG.into()]),
        restart_policy: Some("Always".into()),
        env: Some(env),
        volume_mounts: Some(vec![
            VolumeMount {
                name: SECRETS_VOLUME_NAME.into(),
                mount_path: mount_path.into(),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: TOKEN_VOLUME_NAME.into(),
                mount_path: TOKEN_MOUNT_PATH.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
        ]),
        startup_probe: Some(Probe {
            exec: Some(ExecAction {
                command: Some(vec![SIDECAR_COMMAND.into(), SIDECAR_PROBE_ARG.into()]),
            }),
            period_seconds: Some(1),
            timeout_seconds: Some(1),
            failure_threshold: Some(config.startup_timeout_seconds),
            ..Probe::default()
        }),
        // The same check keeps reporting once started: a pod whose secrets
        // were revoked (or expired unrenewed) goes NotReady within a
        // period and leaves its Services' endpoints until it has them again.
        readiness_probe: Some(Probe {
            exec: Some(ExecAction {
                command: Some(vec![SIDECAR_COMMAND.into(), SIDECAR_PROBE_ARG.into()]),
            }),
            period_seconds: Some(READINESS_PERIOD_SECONDS),
            timeout_seconds: Some(1),
            failure_threshold: Some(1),
            ..Probe::default()
        }),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_owned(), config.cpu_request.clone()),
                ("memory".to_owned(), config.memory_request.clone()),
            ])),
            limits: Some(limits),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(sidecar_user(pod, config)),
            run_as_group,
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..SecurityContext::default()
        }),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Container::default()
    }
}

/// The uid the sidecar runs as: the files it writes are owned by it and
/// mode 0400, so it takes the app's uid when the pod sets one (pod-wide, or
/// the same on every app container), and the configured default otherwise
/// (then the pod's fsGroup makes the files group-readable).
fn sidecar_user(pod: &Pod, config: &InjectionConfig) -> i64 {
    app_user(pod).unwrap_or(config.default_run_as_user)
}

/// The app's non-root uid, when the pod sets one: pod-wide, or the same on
/// every app container.
fn app_user(pod: &Pod) -> Option<i64> {
    let spec = pod.spec.as_ref()?;
    let non_root = |uid: Option<i64>| uid.filter(|uid| *uid > 0);
    if let Some(uid) = non_root(spec.security_context.as_ref().and_then(|c| c.run_as_user)) {
        return Some(uid);
    }
    let mut uids = spec.containers.iter().map(|container| {
        non_root(
            container
                .security_context
                .as_ref()
                .and_then(|c| c.run_as_user),
        )
    });
    match uids.next().flatten() {
        Some(first) if uids.all(|uid| uid == Some(first)) => Some(first),
        _ => None,
    }
}
