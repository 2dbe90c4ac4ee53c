//! The sidecar's configuration: the environment the webhook sets (see
//! [`ferry_contract::env`]), parsed and checked before anything is fetched.

use std::path::PathBuf;

use crate::names::{NameError, check_object_name};
use ferry_contract::env;
use ferry_contract::reload::{self, LoopbackUrl};
use ferry_contract::wire::SecretRef;

/// Why the environment does not describe a sidecar that can run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A required variable is unset or empty.
    #[error("{0} is not set: the ferry webhook sets it on the sidecar container")]
    Missing(&'static str),
    /// A variable is set but cannot be used.
    #[error("{var}: {reason}")]
    Malformed {
        /// The variable's name.
        var: &'static str,
        /// What is wrong with its value (never the value of a secret).
        reason: String,
    },
}

/// Where the broker is: an `https://` URL split into what a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    /// Host name or IP address (without IPv6 brackets), for DNS and SNI.
    pub host: String,
    /// TCP port (443 unless given).
    pub port: u16,
    /// Path prefix without a trailing slash (usually empty).
    pub path_prefix: String,
}

impl BrokerUrl {
    /// Parses an `https://host[:port][/prefix]` URL; plain HTTP is refused
    /// because the request carries the pod's token.
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| format!("{url:?} is not an https:// URL"))?;
        let (authority, path) = match rest.find('/') {
            Some(at) => rest.split_at(at),
            None => (rest, ""),
        };
        if authority.contains('@') || path.contains(['?', '#']) {
            return Err(format!(
                "{url:?} must be https://host[:port][/path], without credentials, query or fragment"
            ));
        }
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| format!("{url:?} has an unclosed IPv6 bracket"))?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(format!("{url:?} has no host"));
        }
        let port = match port {
            Some(port) => port
                .parse::<u16>()
                .map_err(|_| format!("{url:?} has an invalid port {port:?}"))?,
            None => 443,
        };
        Ok(Self {
            host: host.into(),
            port,
            path_prefix: path.trim_end_matches('/').into(),
        })
    }

    /// The `Host` header value.
    pub fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == 443 {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// Who this sidecar runs for (downward API), for log lines only: the broker
/// learns the pod from its token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodIdentity {
    /// The pod's namespace, if given.
    pub namespace: Option<String>,
    /// The pod's name, if given.
    pub name: Option<String>,
    /// The pod's uid, if given.
    pub uid: Option<String>,
}

/// Everything `run` and `init` need, from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarConfig {
    /// The broker's location.
    pub broker_url: BrokerUrl,
    /// PEM bundle to trust for the broker; `None` means the system roots.
    pub broker_ca_pem: Option<String>,
    /// The secrets to keep, in the order the pod asked for them.
    pub secrets: Vec<SecretRef>,
    /// The secrets volume.
    pub secrets_dir: PathBuf,
    /// The projected service-account token, re-read for every request.
    pub token_file: PathBuf,
    /// The pod, for logs.
    pub pod: PodIdentity,
    /// The pod's fsGroup: files become group-readable by it.
    pub fs_group: Option<u32>,
    /// How the app is told that a renewal changed its files.
    pub reload: ReloadConfig,
}

/// How the app asks to be told of new files (see [`ferry_contract::reload`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadConfig {
    /// The signal (`SIGHUP`) and the name of the processes to send it to.
    pub signal: Option<(String, String)>,
    /// A loopback URL to POST to.
    pub url: Option<LoopbackUrl>,
}

impl ReloadConfig {
    /// Whether any reload is asked for.
    pub fn is_set(&self) -> bool {
        self.signal.is_some() || self.url.is_some()
    }
}

impl SidecarConfig {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `lookup` (the environment, or a map
    /// in tests). Empty values count as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |var: &str| lookup(var).filter(|value| !value.trim().is_empty());
        let required = |var: &'static str| get(var).ok_or(ConfigError::Missing(var));

        let broker_url = BrokerUrl::parse(required(env::BROKER_URL)?.trim()).map_err(|reason| {
            ConfigError::Malformed {
                var: env::BROKER_URL,
                reason,
            }
        })?;
        let secrets = parse_secrets(&required(env::SECRETS)?)?;
        let fs_group = get(env::FS_GROUP)
            .map(|group| {
                group
                    .trim()
                    .parse::<u32>()
                    .map_err(|_| ConfigError::Malformed {
                        var: env::FS_GROUP,
                        reason: format!("{group:?} is not a numeric group id"),
                    })
            })
            .transpose()?;
        let malformed =
            |var: &'static str| move |reason: String| ConfigError::Malformed { var, reason };
        let signal = match (get(env::RELOAD_SIGNAL), get(env::RELOAD_PROCESS)) {
            (None, None) => None,
            (Some(_), None) => return Err(ConfigError::Missing(env::RELOAD_PROCESS)),
            (None, Some(_)) => return Err(ConfigError::Missing(env::RELOAD_SIGNAL)),
            (Some(signal), Some(process)) => {
                let signal =
                    reload::parse_signal(&signal).map_err(malformed(env::RELOAD_SIGNAL))?;
                reload::check_process_name(&process).map_err(malformed(env::RELOAD_PROCESS))?;
                Some((signal, process))
            }
        };
        let url = get(env::RELOAD_URL)
            .map(|url| reload::parse_loopback_url(url.trim()).map_err(malformed(env::RELOAD_URL)))
            .transpose()?;
        Ok(Self {
            broker_url,
            broker_ca_pem: get(env::BROKER_CA),
            secrets,
            secrets_dir: PathBuf::from(required(env::SECRETS_DIR)?),
            token_file: PathBuf::from(required(env::TOKEN_FILE)?),
            pod: PodIdentity {
                namespace: get(env::POD_NAMESPACE),
                name: get(env::POD_NAME),
                uid: get(env::POD_UID),
            },
            fs_group,
            reload: ReloadConfig { signal, url },
        })
    }
}

/// Parses `FERRY_SECRETS`: comma-separated `namespace/name` pairs, at least
/// one, no two with the same name (each name is a directory of the volume).
pub fn parse_secrets(value: &str) -> Result<Vec<SecretRef>, ConfigError> {
    let malformed = |reason: String| ConfigError::Malformed {
        var: env::SECRETS,
        reason,
    };
    let mut secrets: Vec<SecretRef> = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (namespace, name) = entry
            .split_once('/')
            .ok_or_else(|| malformed(format!("{entry:?} is not namespace/name")))?;
        let check = |part: &str| {
            check_object_name(part)
                .map(str::to_owned)
                .map_err(|error: NameError| malformed(format!("{entry:?}: {error}")))
        };
        let secret = SecretRef {
            namespace: check(namespace)?,
            name: check(name)?,
        };
        if let Some(other) = secrets.iter().find(|s| s.name == secret.name) {
            return Err(malformed(format!(
                "{}/{} and {}/{} would both be written to the directory {:?}",
                other.namespace, other.name, secret.namespace, secret.name, secret.name
            )));
        }
        secrets.push(secret);
    }
    if secrets.is_empty() {
        return Err(malformed("names no secret".into()));
    }
    Ok(secrets)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn complete() -> BTreeMap<&'static str, String> {
        BTreeMap::from([
            (
                env::BROKER_URL,
                "https://ferry-broker.ferry-system.svc:8443".into(),
            ),
            (env::SECRETS, "payments/orders-db, payments/signing".into()),
            (env::SECRETS_DIR, "/var/run/secrets/ferry".into()),
            (env::TOKEN_FILE, "/var/run/token".into()),
            (env::POD_NAME, "orders-0".into()),
            (env::FS_GROUP, "2000".into()),
        ])
    }

    fn parse(vars: &BTreeMap<&'static str, String>) -> Result<SidecarConfig, ConfigError> {
        SidecarConfig::from_lookup(|name| vars.get(name).cloned())
    }

    #[test]
    fn a_reload_is_a_signal_for_a_named_process_or_a_loopback_url() {
        let mut vars = complete();
        assert!(!parse(&vars).unwrap().reload.is_set());
        vars.insert(env::RELOAD_SIGNAL, "hup".into());
        vars.insert(env::RELOAD_PROCESS, "nginx".into());
        vars.insert(env::RELOAD_URL, "http://127.0.0.1:9090/-/reload".into());
        let reload = parse(&vars).unwrap().reload;
        assert_eq!(reload.signal, Some(("SIGHUP".into(), "nginx".into())));
        assert_eq!(reload.url.unwrap().port, 9090);

        vars.remove(env::RELOAD_PROCESS);
        assert!(matches!(
            parse(&vars),
            Err(ConfigError::Missing(env::RELOAD_PROCESS))
        ));
        vars.insert(env::RELOAD_PROCESS, "nginx".into());
        vars.insert(env::RELOAD_SIGNAL, "KILL".into());
        assert!(matches!(
            parse(&vars),
            Err(ConfigError::Malformed {
                var: env::RELOAD_SIGNAL,
                ..
            })
        ));
        vars.insert(env::RELOAD_SIGNAL, "HUP".into());
        vars.insert(env::RELOAD_URL, "http://10.0.0.1/reload".into());
        assert!(matches!(
            parse(&vars),
            Err(ConfigError::Malformed {
                var: env::RELOAD_URL,
                ..
            })
        ));
    }

    #[test]
    fn the_webhooks_environment_parses() {
        let config = parse(&complete()).unwrap();
        assert_eq!(config.broker_url.host, "ferry-broker.ferry-system.svc");
        assert_eq!(config.broker_url.port, 8443);
        assert_eq!(config.secrets.len(), 2);
        assert_eq!(config.secrets[1].name, "signing");
        assert_eq!(config.fs_group, Some(2000));
        assert_eq!(config.broker_ca_pem, None);
        assert_eq!(config.pod.name.as_deref(), Some("orders-0"));
    }

    #[test]
    fn each_missing_required_variable_is_named() {
        for var in [
            env::BROKER_URL,
            env::SECRETS,
            env::SECRETS_DIR,
            env::TOKEN_FILE,
        ] {
            let mut vars = complete();
            vars.remove(var);
            let error = parse(&vars).unwrap_err();
            assert!(
                matches!(error, ConfigError::Missing(v) if v == var),
                "{error}"
            );
            vars.insert(var, "  ".into());
            assert!(matches!(parse(&vars), Err(ConfigError::Missing(_))));
        }
    }

    #[test]
    fn malformed_secret_lists_are_refused_with_the_entry() {
        for (value, expect) in [
            ("orders-db", "not namespace/name"),
            ("payments/", "the name is empty"),
            ("payments/../x", "path separator"),
            ("payments/.x", "starts with a dot"),
            ("payments/a/b", "path separator"),
            ("Payments/db", "not a Kubernetes object name"),
            (" , ", "names no secret"),
            ("a/db,b/db", "both be written"),
        ] {
            let error = parse_secrets(value).unwrap_err().to_string();
            assert!(error.contains(expect), "{value}: {error}");
            assert!(error.starts_with(env::SECRETS), "{error}");
        }
    }

    #[test]
    fn malformed_values_name_their_variable() {
        let mut vars = complete();
        vars.insert(env::FS_GROUP, "staff".into());
        assert!(
            parse(&vars)
                .unwrap_err()
                .to_string()
                .contains(env::FS_GROUP)
        );
        let mut vars = complete();
        vars.insert(env::BROKER_URL, "http://broker:8080".into());
        assert!(parse(&vars).unwrap_err().to_string().contains("https://"));
    }

    #[test]
    fn broker_urls_split_into_host_port_and_prefix() {
        let url = BrokerUrl::parse("https://[::1]:9443/ferry/").unwrap();
        assert_eq!(
            (url.host.as_str(), url.port, url.path_prefix.as_str()),
            ("::1", 9443, "/ferry")
        );
        assert_eq!(url.host_header(), "[::1]:9443");
        let url = BrokerUrl::parse("https://broker").unwrap();
        assert_eq!((url.port, url.host_header().as_str()), (443, "broker"));
        for bad in [
            "https://",
            "https://a:b",
            "https://u@h",
            "https://h/?q",
            "ftp://h",
        ] {
            assert!(BrokerUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
