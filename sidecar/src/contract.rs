//! One place for the facts every component agrees on: the API group, label
//! and annotation keys, default paths. Import these; never retype them.

/// The Kubernetes API group of ferry's custom resources.
pub const API_GROUP: &str = "ferry.dev";

/// The API version of ferry's custom resources.
pub const API_VERSION: &str = "v1alpha1";

/// Pod label that opts a pod into injection (the webhook's objectSelector).
pub const INJECT_LABEL: &str = "ferry.dev/inject";

/// Pod annotation listing the BrokeredSecrets a pod asks for.
pub const SECRETS_ANNOTATION: &str = "ferry.dev/secrets";

/// Pod annotation overriding where the secrets volume is mounted.
pub const MOUNT_PATH_ANNOTATION: &str = "ferry.dev/mount-path";

/// Pod annotation recording what the webhook injected.
pub const STATUS_ANNOTATION: &str = "ferry.dev/status";

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
}
