//! ferry's contract: the facts every component agrees on, each defined once.
//! The API group and version, label and annotation keys, the environment the
//! webhook gives the sidecar, default names and paths, and the broker's wire
//! types ([`wire`]). Import these; never retype them.
//!
//! This crate is the root of the workspace's dependency graph: serde and
//! nothing else. It must never depend on kube, k8s-openapi, tokio or any
//! other ferry crate, because the sidecar (injected into every pod, so its
//! size is a feature) depends on it; `e2e/tests/dependencies.rs`
//! checks what the sidecar links.

pub mod lease_api;
pub mod reload;
pub mod wire;

/// The Kubernetes API group of ferry's custom resources.
pub const API_GROUP: &str = "ferry.dev";

/// The API version of ferry's custom resources.
pub const API_VERSION: &str = "v1alpha1";

/// `apiVersion` of ferry's custom resources: `ferry.dev/v1alpha1`.
pub const GROUP_VERSION: &str = "ferry.dev/v1alpha1";

/// ferry's own namespace unless an installation says otherwise: where its
/// components, keys and certificates live. Never injected, and no tenant
/// object is honoured there.
pub const DEFAULT_NAMESPACE: &str = "ferry-system";

/// The field manager of everything the operator applies, and the
/// `app.kubernetes.io/managed-by` value of the objects it owns (Grants,
/// certificate Secrets).
pub const OPERATOR_MANAGER: &str = "ferry-operator";

/// The `app.kubernetes.io/managed-by` value of the Secrets the broker
/// creates (its lease and JWT keys), and its PostgreSQL application name.
pub const BROKER_MANAGER: &str = "ferry-broker";

/// The standard label naming who manages an object.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";

/// The standard label naming the application an object is part of.
pub const PART_OF_LABEL: &str = "app.kubernetes.io/part-of";

/// The value of [`PART_OF_LABEL`] on ferry's own objects.
pub const PART_OF: &str = "ferry";

/// Label on each Grant naming the uid of the AccessPolicy it comes from.
pub const POLICY_UID_LABEL: &str = "ferry.dev/policy-uid";

/// Label a Secret's owner puts on it to let BrokeredSecrets of its
/// namespace use it (as a `kubernetesSecret` source or a `postgres` admin
/// connection). Without it the broker refuses to read the Secret, so
/// whoever may create a BrokeredSecret cannot reach every Secret of the
/// namespace through the broker.
pub const BROKERABLE_LABEL: &str = "ferry.dev/brokerable";

/// The value of [`BROKERABLE_LABEL`] that opts an ordinary Secret in.
pub const BROKERABLE: &str = "true";

/// The value of [`BROKERABLE_LABEL`] that opts in a Secret of a type that
/// holds Kubernetes' own credentials (`kubernetes.io/service-account-token`,
/// `bootstrap.kubernetes.io/token`, `kubernetes.io/tls`): `true` is not
/// enough for those.
pub const BROKERABLE_SENSITIVE: &str = "including-kubernetes-credentials";

/// The Secret in ferry's namespace holding the broker's JWT signing keys,
/// which every replica may rotate (the broker's default; its RBAC and the
/// admission policy on its Secret writes name it too).
pub const BROKER_JWT_KEY_SECRET: &str = "ferry-broker-jwt-keys";

/// The Secret in ferry's namespace holding the key that seals lease ids
/// (rotated by every replica like the JWT keys) and the key custody
/// fingerprints are made with (the broker's default; its RBAC and the
/// admission policy on its Secret writes name it too).
pub const BROKER_LEASE_KEY_SECRET: &str = "ferry-broker-lease-key";

/// The ConfigMap in ferry's namespace where the broker lists the
/// installation-wide credentials it holds (lease key, JWT keys): what
/// they are, fingerprints, when made and rotated, never a value.
pub const BROKER_CUSTODY_CONFIGMAP: &str = "ferry-broker-custody";

/// Annotation on a postgres BrokeredSecret asking the broker to rotate its
/// admin credential now; any new value (such as a timestamp) asks again.
/// The value is at most 63 letters, digits, `.`, `_` or `-`; the broker
/// records in status (`custody.rotationRequest`) the last one a
/// completed rotation satisfied.
pub const ROTATE_ADMIN_CREDENTIAL_ANNOTATION: &str = "ferry.dev/rotate-admin-credential";

/// Annotation by which the owner of a postgres admin Secret lets the
/// broker rotate the password in one of its keys (the value: that key,
/// such as `dsn`). Without it the broker refuses to rotate; the admission
/// policy on the broker's Secret writes lets it change only that key and
/// `<key>.next`. The broker never changes this annotation.
pub const ROTATABLE_KEY_ANNOTATION: &str = "ferry.dev/rotatable-key";

/// Annotation the broker writes on an admin Secret when it promotes a
/// rotated credential: when (RFC 3339).
pub const ROTATED_AT_ANNOTATION: &str = "ferry.dev/rotated-at";

/// The suffix of the Secret key where the broker stages a new admin
/// connection string (`dsn.next` for `dsn`) before it changes the
/// database, so a crash at any step leaves a working credential stored.
pub const NEXT_KEY_SUFFIX: &str = ".next";

/// Annotation on an oauth2 source's credentials Secret by which one broker
/// replica at a time claims its refresh token (`<holder> <unix-seconds>`).
/// The broker writes it; the admission policy that narrows the broker's
/// Secret writes lets it change.
pub const REFRESH_TOKEN_CLAIM_ANNOTATION: &str = "ferry.dev/refresh-token-claim";

/// The key of an oauth2 source's credentials Secret under which the broker
/// shares the current access token between its replicas, sealed with the
/// lease key. The broker adds, replaces and removes it; the admission
/// policy that narrows the broker's Secret writes lets it.
pub const CURRENT_ACCESS_TOKEN_KEY: &str = "ferry.dev-current-access-token";

/// Secret types that hold Kubernetes' own credentials: brokered only with
/// [`BROKERABLE_SENSITIVE`].
pub const SENSITIVE_SECRET_TYPES: [&str; 3] = [
    "kubernetes.io/service-account-token",
    "bootstrap.kubernetes.io/token",
    "kubernetes.io/tls",
];

/// Namespaces whose BrokeredSecrets are never served, besides ferry's own:
/// the cluster's control plane keeps its credentials there.
pub const REFUSED_NAMESPACES: [&str; 1] = ["kube-system"];

/// The claim of every minted JWT naming the BrokeredSecret it comes from,
/// `<namespace>/<name>`; set by the broker, never by a spec, so a relying
/// party can tell two namespaces' tokens apart.
pub const SECRET_CLAIM: &str = "ferry.dev/secret";

/// Name of the MutatingWebhookConfiguration that routes pods to the webhook.
pub const WEBHOOK_CONFIGURATION_NAME: &str = "ferry-sidecar-injector";

/// The broker's URL as sidecars reach it through its Service, and the
/// default `iss` of the JWTs it mints.
pub const DEFAULT_BROKER_URL: &str = "https://ferry-broker.ferry-system.svc:8443";

/// Pod label that opts a pod into injection (the webhook's objectSelector).
pub const INJECT_LABEL: &str = "ferry.dev/inject";

/// Pod annotation listing the BrokeredSecrets a pod asks for.
pub const SECRETS_ANNOTATION: &str = "ferry.dev/secrets";

/// Pod annotation overriding where the secrets volume is mounted.
pub const MOUNT_PATH_ANNOTATION: &str = "ferry.dev/mount-path";

/// Pod annotation recording what the webhook injected.
pub const STATUS_ANNOTATION: &str = "ferry.dev/status";

/// What the webhook records in [`STATUS_ANNOTATION`] of a pod it injected,
/// as JSON: read by the webhook on reinvocation and by `kubectl ferry
/// explain pod`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InjectionStatus {
    /// The webhook's version.
    pub version: String,
    /// The secrets injected, `namespace/name`.
    pub secrets: Vec<String>,
    /// Where the secrets volume is mounted in app containers.
    pub mount_path: String,
}

/// Where secrets are mounted in app containers unless overridden.
pub const DEFAULT_MOUNT_PATH: &str = "/var/run/secrets/ferry";

/// The audience of the projected token the sidecar presents to the broker.
pub const DEFAULT_BROKER_AUDIENCE: &str = "ferry.dev/broker";

/// Name of the sidecar container the webhook injects.
pub const SIDECAR_CONTAINER_NAME: &str = "ferry-sidecar";

/// The sidecar's executable inside its image; the node stand-in of the e2e
/// harness maps it to the binary built from this repository.
pub const SIDECAR_COMMAND: &str = "/ferry-sidecar";

/// Name of the memory-backed volume the secrets are written to.
pub const SECRETS_VOLUME_NAME: &str = "ferry-secrets";

/// Name of the projected service-account token volume (sidecar only).
pub const TOKEN_VOLUME_NAME: &str = "ferry-token";

/// Where the token volume is mounted in the sidecar; never in app containers.
pub const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/ferry.dev/serviceaccount";

/// File name of the projected token inside [`TOKEN_MOUNT_PATH`].
pub const TOKEN_FILE_NAME: &str = "token";

/// Hidden file in the secrets directory that exists while every secret is
/// written and current; the startup probe checks it. It holds nothing secret.
pub const READY_MARKER: &str = "..ferry-ready";

/// The sidecar's subcommand the webhook runs as the container's main process.
pub const SIDECAR_RUN_ARG: &str = "run";

/// The sidecar's subcommand the startup probe executes.
pub const SIDECAR_PROBE_ARG: &str = "probe";

/// The environment the webhook gives the sidecar container: the sidecar's
/// whole configuration.
pub mod env {
    /// HTTPS URL of the broker.
    pub const BROKER_URL: &str = "FERRY_BROKER_URL";
    /// PEM bundle the sidecar trusts for the broker (absent: system roots).
    pub const BROKER_CA: &str = "FERRY_BROKER_CA";
    /// The secrets to fetch: comma-separated `namespace/name` pairs.
    pub const SECRETS: &str = "FERRY_SECRETS";
    /// Directory the secrets volume is mounted at; each secret is written
    /// to `<dir>/<secret name>/<file>`.
    pub const SECRETS_DIR: &str = "FERRY_SECRETS_DIR";
    /// Path of the projected service-account token file.
    pub const TOKEN_FILE: &str = "FERRY_TOKEN_FILE";
    /// The pod's name (downward API).
    pub const POD_NAME: &str = "FERRY_POD_NAME";
    /// The pod's namespace (downward API).
    pub const POD_NAMESPACE: &str = "FERRY_POD_NAMESPACE";
    /// The pod's uid (downward API).
    pub const POD_UID: &str = "FERRY_POD_UID";
    /// The pod's fsGroup when it has one: files are then made group-readable.
    pub const FS_GROUP: &str = "FERRY_FS_GROUP";
    /// Seconds `run`/`init` may take to write every secret before giving up
    /// (optional; the sidecar's default applies when unset).
    pub const STARTUP_TIMEOUT_SECONDS: &str = "FERRY_STARTUP_TIMEOUT_SECONDS";
    /// The signal to send after each renewal's files are in place (see
    /// [`crate::reload`]), with [`RELOAD_PROCESS`].
    pub const RELOAD_SIGNAL: &str = "FERRY_RELOAD_SIGNAL";
    /// The name of the process to signal.
    pub const RELOAD_PROCESS: &str = "FERRY_RELOAD_PROCESS";
    /// A loopback `http://` URL to POST to after each renewal.
    pub const RELOAD_URL: &str = "FERRY_RELOAD_URL";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_version_is_group_and_version() {
        assert_eq!(GROUP_VERSION, format!("{API_GROUP}/{API_VERSION}"));
    }

    #[test]
    fn the_default_broker_url_is_the_broker_service_in_the_default_namespace() {
        assert!(DEFAULT_BROKER_URL.contains(&format!("{BROKER_MANAGER}.{DEFAULT_NAMESPACE}.svc")));
    }
}
