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
