//! What ferry says of a BrokeredSecret before any pod asks for it: whether
//! the Secret it names exists with the key it needs, and whether its file
//! templates parse and use only variables its source provides. A pure
//! function of the object and of what was found, so the operator's status,
//! a test and `kubectl ferry lint` all reach the same verdict.

use std::collections::BTreeMap;

use crate::confinement::{Installation, SecretUse, brokerable_for};
use crate::resources::{BrokeredSecret, ClientAuthentication, OAuth2Grant, SourceKind};
use crate::templates::{
    JWT_VARIABLES, OAUTH2_VARIABLES, POSTGRES_VARIABLES, check_templates, check_variables,
};

/// The Secret a BrokeredSecret's source names, as far as the checks need
/// it: its name, and the keys it must hold (none: the source copies
/// whatever keys it has).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference<'a> {
    /// The Secret's name (in the BrokeredSecret's namespace).
    pub name: &'a str,
    /// The keys the source reads.
    pub keys: Vec<&'a str>,
}

/// The keys an `x509` source's CA Secret must hold.
pub const X509_CA_KEYS: [&str; 3] = ["tls.crt", "tls.key", "ca.crt"];

/// The keys of an `oauth2` source's credentials Secret: the client's id,
/// its secret or its assertion-signing key (PKCS #8 PEM), the key's id
/// (optional), and the refresh token the broker holds in custody.
pub mod oauth2_keys {
    /// The client id.
    pub const CLIENT_ID: &str = "client_id";
    /// The client secret (`ClientSecretBasic`, `ClientSecretPost`).
    pub const CLIENT_SECRET: &str = "client_secret";
    /// The assertion-signing key (`PrivateKeyJwt`).
    pub const PRIVATE_KEY: &str = "private_key";
    /// The `kid` of assertions, when the server needs one (optional).
    pub const KEY_ID: &str = "key_id";
    /// The refresh token (`RefreshToken` grant).
    pub const REFRESH_TOKEN: &str = "refresh_token";
}

/// The variables `x509` name templates (`commonName`, `dnsNames`) use.
pub const X509_NAME_VARIABLES: [&str; 3] = ["namespace", "serviceAccount", "podName"];

/// The Secret `secret`'s source names, if its source names one.
pub fn reference(secret: &BrokeredSecret) -> Option<Reference<'_>> {
    let source = &secret.spec.source;
    if let Some(postgres) = &source.postgres {
        Some(Reference {
            name: &postgres.connection_secret_ref.name,
            keys: vec![&postgres.connection_secret_ref.key],
        })
    } else if let Some(x509) = &source.x509 {
        Some(Reference {
            name: &x509.ca_secret_name,
            keys: X509_CA_KEYS.to_vec(),
        })
    } else if let Some(oauth2) = &source.oauth2 {
        let mut keys = vec![oauth2_keys::CLIENT_ID];
        keys.push(match oauth2.client_authentication {
            ClientAuthentication::ClientSecretBasic | ClientAuthentication::ClientSecretPost => {
                oauth2_keys::CLIENT_SECRET
            }
            ClientAuthentication::PrivateKeyJwt => oauth2_keys::PRIVATE_KEY,
        });
        if oauth2.grant == OAuth2Grant::RefreshToken {
            keys.push(oauth2_keys::REFRESH_TOKEN);
        }
        keys.extend(oauth2.ca_key.as_deref());
        Some(Reference {
            name: &oauth2.credentials_secret_name,
            keys,
        })
    } else {
        source.kubernetes_secret.as_ref().map(|k8s| Reference {
            name: &k8s.name,
            keys: vec![],
        })
    }
}

/// The outcome: a `Ready` condition's status, reason and message, and the
/// source kind status reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the BrokeredSecret can serve pods.
    pub ready: bool,
    /// A CamelCase reason: `Resolved`, `SecretNotFound`, `KeyNotFound`,
    /// `InvalidTemplate`.
    pub reason: &'static str,
    /// What a person reads.
    pub message: String,
    /// `spec.source`'s kind.
    pub source: SourceKind,
}

/// The verdict on `secret`, given the key names of the Secret its source
/// names (`found`: `None` when that Secret does not exist; ignored when the
/// source names none). Only key names are looked at, never values.
pub fn verdict(secret: &BrokeredSecret, found: Option<&[String]>) -> Verdict {
    let namespace = secret.metadata.namespace.as_deref().unwrap_or_default();
    // The schema requires exactly one source; an object without one is
    // judged as a jwt source, which needs nothing.
    let source = secret.spec.source.kind().unwrap_or(SourceKind::Jwt);
    // The variables the source gives templates, when known.
    let mut provided: Option<Vec<String>> = match source {
        SourceKind::Postgres => Some(POSTGRES_VARIABLES.map(String::from).to_vec()),
        SourceKind::Jwt => Some(JWT_VARIABLES.map(String::from).to_vec()),
        SourceKind::KubernetesSecret => None,
        // It writes its own files; the schema refuses spec.files.
        SourceKind::X509 => Some(vec![]),
        SourceKind::OAuth2 => Some(OAUTH2_VARIABLES.map(String::from).to_vec()),
    };
    let (ready, reason, message) = match reference(secret) {
        None => (
            true,
            "Resolved",
            format!("{source} source needs no reference"),
        ),
        Some(Reference { name, keys: needed }) => {
            if needed.is_empty() {
                // A copied Secret provides its keys as variables.
                provided = found.map(<[String]>::to_vec);
            }
            let missing = found.and_then(|keys| {
                needed
                    .iter()
                    .find(|key| !keys.iter().any(|k| k == *key))
                    .copied()
            });
            match (found, missing) {
                (None, _) => (
                    false,
                    "SecretNotFound",
                    format!("Secret {namespace}/{name} not found"),
                ),
                (Some(_), Some(key)) if key == oauth2_keys::REFRESH_TOKEN => (
                    false,
                    "KeyNotFound",
                    format!(
                        "Secret {namespace}/{name} has no key {key:?}: a person must consent \
                         once (ferry-operator oauth2-consent {} --namespace {namespace})",
                        secret.metadata.name.as_deref().unwrap_or_default()
                    ),
                ),
                (Some(_), Some(key)) => (
                    false,
                    "KeyNotFound",
                    format!("Secret {namespace}/{name} has no key {key:?}"),
                ),
                _ => (true, "Resolved", format!("Secret {namespace}/{name} found")),
            }
        }
    };
    let problem = template_problem(&secret.spec.files, provided.as_deref())
        .or_else(|| name_template_problem(secret));
    match problem {
        Some(problem) => Verdict {
            ready: false,
            reason: "InvalidTemplate",
            message: problem,
            source,
        },
        None => Verdict {
            ready,
            reason,
            message,
            source,
        },
    }
}

/// What is known of the Secret a BrokeredSecret's source names: never a
/// value, only what the checks read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FoundSecret {
    /// Its key names.
    pub keys: Vec<String>,
    /// Its `type`.
    pub secret_type: Option<String>,
    /// The value of its [`ferry_contract::BROKERABLE_LABEL`], if labelled.
    pub brokerable: Option<String>,
}

/// The whole verdict on `secret` as the operator writes it into the
/// `Ready` condition: [`verdict`], outranked by the installation's limits
/// and by the named Secret's opt-in (`found`: `None` when it does not
/// exist). `kubectl ferry lint` calls this same function.
pub fn judge(
    secret: &BrokeredSecret,
    found: Option<&FoundSecret>,
    installation: &Installation,
) -> Verdict {
    let keys = found.map(|found| found.keys.as_slice());
    let mut verdict = verdict(secret, keys);
    let namespace = secret.metadata.namespace.as_deref().unwrap_or_default();
    let opted_in = match (reference(secret), found) {
        (Some(Reference { name, .. }), Some(found)) => {
            let used = if secret.spec.source.x509.is_some() {
                SecretUse::Sign
            } else {
                SecretUse::Read
            };
            brokerable_for(
                used,
                namespace,
                name,
                found.secret_type.as_deref(),
                found.brokerable.as_deref(),
            )
            .err()
        }
        _ => None,
    };
    // The installation's limits outrank the rest: the broker refuses these
    // whatever else is right.
    if let Some(refusal) = installation.refusal(secret).or(opted_in) {
        verdict.ready = false;
        verdict.reason = refusal.reason;
        verdict.message = refusal.message;
    }
    verdict
}

/// What is wrong with a BrokeredSecret's file templates, if anything: a
/// template does not parse, leaves ferry's template subset, or uses a
/// variable its source does not provide (`provided`, when known).
pub fn template_problem(
    files: &BTreeMap<String, String>,
    provided: Option<&[String]>,
) -> Option<String> {
    let checked = match provided {
        Some(names) => {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            check_variables(files, &names)
        }
        None => check_templates(files),
    };
    checked.err().map(|error| format!("spec.files: {error}"))
}

/// What is wrong with an `x509` source's name templates, if anything.
fn name_template_problem(secret: &BrokeredSecret) -> Option<String> {
    let x509 = secret.spec.source.x509.as_ref()?;
    let mut templates = BTreeMap::new();
    if let Some(common_name) = &x509.common_name {
        templates.insert("commonName".to_owned(), common_name.clone());
    }
    for (index, dns_name) in x509.dns_names.iter().enumerate() {
        templates.insert(format!("dnsNames[{index}]"), dns_name.clone());
    }
    check_variables(&templates, &X509_NAME_VARIABLES)
        .err()
        .map(|error| format!("spec.source.x509: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{self, BrokeredSecretBuilder};

    fn orders_db() -> BrokeredSecretBuilder {
        testing::brokered_secret("payments", "orders-db")
    }

    fn keys(names: &[&str]) -> Vec<String> {
        names.iter().map(ToString::to_string).collect()
    }

    fn files(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(f, t)| (f.to_string(), t.to_string()))
            .collect()
    }

    #[test]
    fn a_jwt_source_needs_no_reference_and_is_ready() {
        let secret = orders_db().jwt(&["api"]).build();
        assert_eq!(reference(&secret), None);
        assert_eq!(
            verdict(&secret, None),
            Verdict {
                ready: true,
                reason: "Resolved",
                message: "jwt source needs no reference".into(),
                source: SourceKind::Jwt,
            }
        );
    }

    #[test]
    fn an_x509_source_needs_its_ca_secret_with_all_three_keys() {
        let secret = orders_db().x509("shop-ca").build();
        let missing = verdict(&secret, Some(&keys(&["tls.crt", "tls.key"])));
        assert_eq!(
            (missing.ready, missing.reason, missing.message.as_str()),
            (
                false,
                "KeyNotFound",
                r#"Secret payments/shop-ca has no key "ca.crt""#
            )
        );
        let found = verdict(&secret, Some(&keys(&["ca.crt", "tls.crt", "tls.key"])));
        assert_eq!((found.ready, found.source), (true, SourceKind::X509));
        assert_eq!(verdict(&secret, None).reason, "SecretNotFound");
    }

    #[test]
    fn an_oauth2_source_needs_the_keys_its_client_and_grant_use() {
        let mut secret = orders_db()
            .oauth2("https://auth.example/token", "crm-client", &[])
            .build();
        fn needed(secret: &BrokeredSecret) -> Vec<&str> {
            reference(secret).unwrap().keys
        }
        assert_eq!(needed(&secret), ["client_id", "client_secret"]);
        let oauth2 = secret.spec.source.oauth2.as_mut().unwrap();
        oauth2.client_authentication = ClientAuthentication::PrivateKeyJwt;
        oauth2.grant = OAuth2Grant::RefreshToken;
        oauth2.ca_key = Some("ca.crt".into());
        assert_eq!(
            needed(&secret),
            ["client_id", "private_key", "refresh_token", "ca.crt"]
        );
        let found = verdict(
            &secret,
            Some(&keys(&["client_id", "private_key", "ca.crt"])),
        );
        assert_eq!(
            (found.ready, found.reason, found.message.as_str()),
            (
                false,
                "KeyNotFound",
                "Secret payments/crm-client has no key \"refresh_token\": a person must consent \
                 once (ferry-operator oauth2-consent orders-db --namespace payments)"
            )
        );
        secret.spec.files = files(&[("token", "Bearer {{ access_token }} {{ scope }}")]);
        let all = keys(&["client_id", "private_key", "refresh_token", "ca.crt"]);
        assert!(verdict(&secret, Some(&all)).ready);
        secret.spec.files = files(&[("token", "{{ client_secret }}")]);
        assert_eq!(verdict(&secret, Some(&all)).reason, "InvalidTemplate");
    }

    #[test]
    fn x509_name_templates_may_use_only_the_pods_names() {
        let mut secret = orders_db().x509("shop-ca").build();
        let x509 = secret.spec.source.x509.as_mut().unwrap();
        x509.common_name = Some("{{ serviceAccount }}.{{ namespace }}".into());
        x509.dns_names = vec![
            "{{ podName }}.{{ namespace }}.svc".into(),
            "{{ password }}".into(),
        ];
        let found = keys(&X509_CA_KEYS);
        let judged = verdict(&secret, Some(&found));
        assert_eq!(judged.reason, "InvalidTemplate");
        assert!(judged.message.contains("dnsNames[1]"), "{}", judged.message);
        assert!(judged.message.contains("password"), "{}", judged.message);
        secret.spec.source.x509.as_mut().unwrap().dns_names.pop();
        assert!(verdict(&secret, Some(&found)).ready);
    }

    #[test]
    fn a_missing_connection_secret_is_named() {
        let verdict = verdict(&orders_db().postgres("admin", "dsn").build(), None);
        assert!(!verdict.ready);
        assert_eq!(verdict.reason, "SecretNotFound");
        assert_eq!(verdict.message, "Secret payments/admin not found");
        assert_eq!(verdict.source, SourceKind::Postgres);
    }

    #[test]
    fn a_connection_secret_without_the_key_is_named_with_the_key() {
        let found = keys(&["url"]);
        let verdict = verdict(&orders_db().postgres("admin", "dsn").build(), Some(&found));
        assert_eq!(verdict.reason, "KeyNotFound");
        assert_eq!(verdict.message, "Secret payments/admin has no key \"dsn\"");
    }

    #[test]
    fn a_copied_secret_provides_its_own_keys_to_templates() {
        let source = orders_db().kubernetes_secret("static");
        let good = source
            .clone()
            .files(&[("env", "TOKEN={{ token }}")])
            .build();
        let found = keys(&["token"]);
        assert!(verdict(&good, Some(&found)).ready);
        let bad = source.files(&[("env", "TOKEN={{ tokn }}")]).build();
        let verdict = verdict(&bad, Some(&found));
        assert_eq!(verdict.reason, "InvalidTemplate");
        assert!(
            verdict.message.contains("{{ tokn }}"),
            "{}",
            verdict.message
        );
    }

    #[test]
    fn a_template_problem_outranks_a_resolved_reference() {
        let secret = orders_db()
            .postgres("admin", "dsn")
            .files(&[("dsn", "{{ pasword }}")])
            .build();
        let found = keys(&["dsn"]);
        let verdict = verdict(&secret, Some(&found));
        assert!(!verdict.ready);
        assert_eq!(verdict.reason, "InvalidTemplate");
    }

    #[test]
    fn valid_templates_are_no_problem() {
        let provided = ["username".to_string(), "password".to_string()];
        let dsn = files(&[(
            "dsn",
            "postgres://{{ username }}:{{ password | urlencode }}@db/x",
        )]);
        assert_eq!(template_problem(&dsn, Some(&provided)), None);
        assert_eq!(template_problem(&BTreeMap::new(), Some(&[])), None);
    }

    #[test]
    fn a_template_that_does_not_parse_is_named_with_its_line() {
        let problem =
            template_problem(&files(&[("dsn", "ok\n{{ username ")]), None).expect("a syntax error");
        assert!(
            problem.starts_with("spec.files: file \"dsn\", line 2: syntax error"),
            "{problem}"
        );
    }

    #[test]
    fn a_variable_the_source_does_not_provide_is_named_with_what_it_does() {
        let provided = ["username".to_string(), "password".to_string()];
        let problem = template_problem(
            &files(&[("dsn", "{{ username }}:{{ pasword }}")]),
            Some(&provided),
        )
        .expect("an undefined variable");
        assert_eq!(
            problem,
            "spec.files: file \"dsn\": undefined variable {{ pasword }} (the source provides: password, username)"
        );
    }
}
