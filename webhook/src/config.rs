//! What the webhook injects, as configured by flags (and the chart's values):
//! the sidecar's image, resources and user, the broker it talks to, and how
//! strict admission is.

use ferry_contract::DEFAULT_BROKER_AUDIENCE;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// The shortest projected-token lifetime the kubelet accepts (10 minutes).
pub const MIN_TOKEN_EXPIRATION_SECONDS: i64 = 600;

/// The longest projected-token lifetime ferry allows: the token only has to
/// last until the kubelet rotates it, at 80% of its life.
pub const MAX_TOKEN_EXPIRATION_SECONDS: i64 = 86_400;

/// What to do with a pod asking for a secret its service account has no
/// Grant for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum MissingGrant {
    /// Refuse the pod, naming the missing Grant.
    #[default]
    Deny,
    /// Admit and inject it, with an admission warning naming the missing
    /// Grant (the sidecar will be refused by the broker until it exists).
    Warn,
}

/// Everything the mutation needs besides the pod and the Grants.
#[derive(Debug, Clone, PartialEq)]
pub struct InjectionConfig {
    /// ferry's own namespace, whose pods are never touched.
    pub ferry_namespace: String,
    /// The sidecar image.
    pub sidecar_image: String,
    /// The sidecar's imagePullPolicy.
    pub image_pull_policy: String,
    /// HTTPS URL of the broker, as the sidecar reaches it.
    pub broker_url: String,
    /// PEM bundle the sidecar trusts for the broker; `None`: system roots.
    pub broker_ca_pem: Option<String>,
    /// The audience of the projected token the sidecar presents.
    pub broker_audience: String,
    /// Lifetime of the projected token, in seconds.
    pub token_expiration_seconds: i64,
    /// Size limit of the memory-backed secrets volume.
    pub volume_size_limit: Quantity,
    /// The sidecar's CPU request.
    pub cpu_request: Quantity,
    /// The sidecar's memory request.
    pub memory_request: Quantity,
    /// The sidecar's CPU limit, if any.
    pub cpu_limit: Option<Quantity>,
    /// The sidecar's memory limit.
    pub memory_limit: Quantity,
    /// The uid the sidecar runs as unless the pod sets one.
    pub default_run_as_user: i64,
    /// How long the sidecar may take to write every secret before the
    /// kubelet restarts it, in seconds.
    pub startup_timeout_seconds: i32,
    /// The most secrets one pod may ask for.
    pub max_secrets: usize,
    /// What to do when a Grant is missing.
    pub missing_grant: MissingGrant,
}

impl Default for InjectionConfig {
    fn default() -> Self {
        Self {
            ferry_namespace: ferry_contract::DEFAULT_NAMESPACE.into(),
            sidecar_image: format!(
                "ghcr.io/ferry-dev/ferry-sidecar:{}",
                env!("CARGO_PKG_VERSION")
            ),
            image_pull_policy: "IfNotPresent".into(),
            broker_url: ferry_contract::DEFAULT_BROKER_URL.into(),
            broker_ca_pem: None,
            broker_audience: DEFAULT_BROKER_AUDIENCE.into(),
            token_expiration_seconds: MIN_TOKEN_EXPIRATION_SECONDS,
            volume_size_limit: Quantity("1Mi".into()),
            cpu_request: Quantity("5m".into()),
            memory_request: Quantity("8Mi".into()),
            cpu_limit: None,
            memory_limit: Quantity("16Mi".into()),
            default_run_as_user: 65532,
            startup_timeout_seconds: 120,
            max_secrets: 16,
            missing_grant: MissingGrant::Deny,
        }
    }
}

/// A configuration that would make the webhook inject pods the kubelet
/// cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("webhook configuration: {0}")]
pub struct ConfigError(String);

impl InjectionConfig {
    /// Checks the values a typo would turn into pods that never start.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |message: String| Err(ConfigError(message));
        if !(MIN_TOKEN_EXPIRATION_SECONDS..=MAX_TOKEN_EXPIRATION_SECONDS)
            .contains(&self.token_expiration_seconds)
        {
            return fail(format!(
                "token expiration {}s is outside {MIN_TOKEN_EXPIRATION_SECONDS}..={MAX_TOKEN_EXPIRATION_SECONDS}s \
                 (the kubelet refuses projected tokens shorter than 10 minutes)",
                self.token_expiration_seconds
            ));
        }
        if !self.broker_url.starts_with("https://") {
            return fail(format!(
                "broker URL {:?} must start with https:// (tokens and secrets cross it)",
                self.broker_url
            ));
        }
        if self.sidecar_image.trim().is_empty() {
            return fail("the sidecar image is empty".into());
        }
        if !matches!(
            self.image_pull_policy.as_str(),
            "Always" | "IfNotPresent" | "Never"
        ) {
            return fail(format!(
                "image pull policy {:?} is not one of Always, IfNotPresent, Never",
                self.image_pull_policy
            ));
        }
        if self.broker_audience.trim().is_empty() {
            return fail("the broker audience is empty".into());
        }
        if self.default_run_as_user <= 0 {
            return fail(format!(
                "the sidecar's user {} must be a non-root uid",
                self.default_run_as_user
            ));
        }
        if self.startup_timeout_seconds <= 0 {
            return fail("the startup timeout must be positive".into());
        }
        if self.max_secrets == 0 {
            return fail("max secrets per pod must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_configuration_is_valid() {
        InjectionConfig::default().validate().unwrap();
    }

    #[test]
    fn a_token_shorter_than_the_kubelet_accepts_is_refused() {
        let config = InjectionConfig {
            token_expiration_seconds: 300,
            ..InjectionConfig::default()
        };
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("300s"), "{error}");
    }

    #[test]
    fn a_plain_http_broker_is_refused() {
        let config = InjectionConfig {
            broker_url: "http://broker:8080".into(),
            ..InjectionConfig::default()
        };
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("https://")
        );
    }
}
