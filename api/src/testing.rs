//! Builders for ferry's resources in tests: one place that knows how a
//! plausible Grant, BrokeredSecret or AccessPolicy is put together, so a
//! test states only what it is about. Behind the `testing` feature, which
//! only dev-dependencies and the e2e harness enable; no shipped binary
//! links it.
//!
//! ```
//! use ferry_api::testing;
//! let secret = testing::brokered_secret("payments", "orders-db")
//!     .postgres("admin", "dsn")
//!     .files(&[("dsn", "{{ dsn }}")])
//!     .build();
//! let policy = testing::access_policy("payments", "checkout-reads")
//!     .service_account("shop", "checkout")
//!     .secret("orders-db")
//!     .build();
//! let grant = testing::grant("shop", "checkout", ("payments", "orders-db")).build();
//! # let _ = (secret, policy, grant);
//! ```

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};

use crate::resources::{
    AccessPolicy, AccessPolicySpec, Approval, Approvers, AudienceParameter, BrokeredSecret,
    BrokeredSecretSpec, CertificateUsage, ClientAuthentication, Grant, GrantSpec, JwtAlgorithm,
    JwtSource, KeyAlgorithm, KubernetesSecretSource, OAuth2Grant, OAuth2Source, PolicyReference,
    PostgresSource, SecretAccess, SecretKeyRef, SecretReference, SecretSource, ServiceAccountRef,
    Subject, TokenSharing, X509Source,
};

fn strings(values: &[&str]) -> Vec<String> {
    values.iter().map(ToString::to_string).collect()
}

fn metadata(namespace: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(namespace.into()),
        name: Some(name.into()),
        ..ObjectMeta::default()
    }
}

/// A BrokeredSecret `namespace/name`: ttl 15m, maxTtl 1h (the schema's
/// defaults), no source until one is chosen, no files.
pub fn brokered_secret(namespace: &str, name: &str) -> BrokeredSecretBuilder {
    BrokeredSecretBuilder {
        metadata: metadata(namespace, name),
        spec: BrokeredSecretSpec {
            ttl: "15m".into(),
            max_ttl: "1h".into(),
            source: SecretSource::default(),
            files: BTreeMap::new(),
        },
    }
}

/// Builds a [`BrokeredSecret`]; see [`brokered_secret`].
#[derive(Debug, Clone)]
#[must_use]
pub struct BrokeredSecretBuilder {
    metadata: ObjectMeta,
    spec: BrokeredSecretSpec,
}

impl BrokeredSecretBuilder {
    /// Sets `spec.ttl`.
    pub fn ttl(mut self, ttl: &str) -> Self {
        self.spec.ttl = ttl.into();
        self
    }

    /// Sets `spec.maxTtl`.
    pub fn max_ttl(mut self, max_ttl: &str) -> Self {
        self.spec.max_ttl = max_ttl.into();
        self
    }

    /// A postgres source whose admin DSN is key `key` of Secret `secret`.
    pub fn postgres(mut self, secret: &str, key: &str) -> Self {
        self.spec.source = SecretSource {
            postgres: Some(PostgresSource {
                connection_secret_ref: SecretKeyRef {
                    name: secret.into(),
                    key: key.into(),
                },
                member_of: Vec::new(),
                admin_rotation_period: None,
            }),
            ..SecretSource::default()
        };
        self
    }

    /// How often the admin credential rotates (after [`Self::postgres`];
    /// ignored for other sources).
    pub fn admin_rotation_period(mut self, period: &str) -> Self {
        if let Some(postgres) = self.spec.source.postgres.as_mut() {
            postgres.admin_rotation_period = Some(period.into());
        }
        self
    }

    /// The roles each issued postgres role is made a member of (after
    /// [`Self::postgres`]; ignored for other sources).
    pub fn member_of(mut self, roles: &[&str]) -> Self {
        if let Some(postgres) = self.spec.source.postgres.as_mut() {
            postgres.member_of = strings(roles);
        }
        self
    }

    /// A kubernetesSecret source copying Secret `secret`.
    pub fn kubernetes_secret(mut self, secret: &str) -> Self {
        self.spec.source = SecretSource {
            kubernetes_secret: Some(KubernetesSecretSource {
                name: secret.into(),
            }),
            ..SecretSource::default()
        };
        self
    }

    /// An x509 source signing with the CA in Secret `ca_secret`, for
    /// client authentication with a P-256 key, no common or DNS names.
    pub fn x509(mut self, ca_secret: &str) -> Self {
        self.spec.source = SecretSource {
            x509: Some(X509Source {
                ca_secret_name: ca_secret.into(),
                trust_domain: "cluster.local".into(),
                common_name: None,
                dns_names: Vec::new(),
                usages: vec![CertificateUsage::ClientAuth],
                key_algorithm: KeyAlgorithm::default(),
            }),
            ..SecretSource::default()
        };
        self
    }

    /// The DNS name templates of an x509 source (after [`Self::x509`]).
    pub fn dns_names(mut self, names: &[&str]) -> Self {
        if let Some(x509) = self.spec.source.x509.as_mut() {
            x509.dns_names = strings(names);
        }
        self
    }

    /// A jwt source for `audience`, ES256, no scopes or claims.
    pub fn jwt(mut self, audience: &[&str]) -> Self {
        self.spec.source = SecretSource {
            jwt: Some(JwtSource {
                issuer: None,
                audience: strings(audience),
                scopes: Vec::new(),
                claims: BTreeMap::new(),
                algorithm: JwtAlgorithm::default(),
            }),
            ..SecretSource::default()
        };
        self
    }

    /// The scopes a jwt or oauth2 source allows (after [`Self::jwt`] or
    /// [`Self::oauth2`]).
    pub fn scopes(mut self, scopes: &[&str]) -> Self {
        if let Some(jwt) = self.spec.source.jwt.as_mut() {
            jwt.scopes = strings(scopes);
        }
        if let Some(oauth2) = self.spec.source.oauth2.as_mut() {
            oauth2.scopes = strings(scopes);
        }
        self
    }

    /// An oauth2 source: client credentials from Secret
    /// `credentials_secret` at `token_url`, for `audience`, no scopes.
    pub fn oauth2(mut self, token_url: &str, credentials_secret: &str, audience: &[&str]) -> Self {
        self.spec.source = SecretSource {
            oauth2: Some(OAuth2Source {
                token_url: token_url.into(),
                revocation_url: None,
                authorization_url: None,
                credentials_secret_name: credentials_secret.into(),
                ca_key: None,
                client_authentication: ClientAuthentication::default(),
                grant: OAuth2Grant::default(),
                token_exchange: None,
                scopes: Vec::new(),
                audience: strings(audience),
                audience_parameter: AudienceParameter::default(),
                token_sharing: TokenSharing::default(),
                min_remaining_lifetime: "2m".into(),
                requests_per_minute: 600,
            }),
            ..SecretSource::default()
        };
        self
    }

    /// A static claim of a jwt source (after [`Self::jwt`]).
    pub fn claim(mut self, name: &str, value: &str) -> Self {
        if let Some(jwt) = self.spec.source.jwt.as_mut() {
            jwt.claims.insert(name.into(), value.into());
        }
        self
    }

    /// The signing algorithm of a jwt source (after [`Self::jwt`]).
    pub fn algorithm(mut self, algorithm: JwtAlgorithm) -> Self {
        if let Some(jwt) = self.spec.source.jwt.as_mut() {
            jwt.algorithm = algorithm;
        }
        self
    }

    /// Adds files: file name and template.
    pub fn files(mut self, files: &[(&str, &str)]) -> Self {
        self.spec.files.extend(
            files
                .iter()
                .map(|(name, template)| (name.to_string(), template.to_string())),
        );
        self
    }

    /// The spec alone.
    pub fn spec(self) -> BrokeredSecretSpec {
        self.spec
    }

    /// The BrokeredSecret.
    pub fn build(self) -> BrokeredSecret {
        BrokeredSecret {
            metadata: self.metadata,
            spec: self.spec,
            status: None,
        }
    }
}

/// An AccessPolicy `namespace/name` with uid `<name>-uid`, no subjects and
/// no secrets until added.
pub fn access_policy(namespace: &str, name: &str) -> AccessPolicyBuilder {
    let mut metadata = metadata(namespace, name);
    metadata.uid = Some(format!("{name}-uid"));
    AccessPolicyBuilder {
        metadata,
        spec: AccessPolicySpec {
            subjects: Vec::new(),
            secrets: Vec::new(),
            valid_until: None,
            approval: None,
        },
    }
}

/// Builds an [`AccessPolicy`]; see [`access_policy`].
#[derive(Debug, Clone)]
#[must_use]
pub struct AccessPolicyBuilder {
    metadata: ObjectMeta,
    spec: AccessPolicySpec,
}

impl AccessPolicyBuilder {
    /// Sets `metadata.uid`.
    pub fn uid(mut self, uid: &str) -> Self {
        self.metadata.uid = Some(uid.into());
        self
    }

    /// Adds the subject service account `namespace/name`.
    pub fn service_account(mut self, namespace: &str, name: &str) -> Self {
        self.spec.subjects.push(Subject {
            service_account: Some(ServiceAccountRef {
                name: name.into(),
                namespace: namespace.into(),
            }),
            ..Subject::default()
        });
        self
    }

    /// Adds the subject: service account `name` in every namespace that
    /// `selector` matches.
    pub fn namespace_selector(mut self, selector: LabelSelector, name: &str) -> Self {
        self.spec.subjects.push(Subject {
            namespace_selector: Some(selector),
            service_account_name: Some(name.into()),
            ..Subject::default()
        });
        self
    }

    /// Grants BrokeredSecret `name` as the secret allows it.
    pub fn secret(self, name: &str) -> Self {
        self.narrowed(secret_access(name))
    }

    /// Grants a secret narrowed as `access` says.
    pub fn narrowed(mut self, access: SecretAccessBuilder) -> Self {
        self.spec.secrets.push(access.build());
        self
    }

    /// Requires approval by `users` and `groups`, granting at most
    /// `max_duration` per request, requests waiting at most `request_ttl`.
    pub fn approval(
        mut self,
        users: &[&str],
        groups: &[&str],
        max_duration: &str,
        request_ttl: &str,
    ) -> Self {
        self.spec.approval = Some(Approval {
            approvers: Approvers {
                users: strings(users),
                groups: strings(groups),
            },
            max_duration: max_duration.into(),
            request_ttl: request_ttl.into(),
        });
        self
    }

    /// Sets `spec.validUntil`.
    pub fn valid_until(mut self, until: k8s_openapi::jiff::Timestamp) -> Self {
        self.spec.valid_until = Some(Time(until));
        self
    }

    /// The AccessPolicy.
    pub fn build(self) -> AccessPolicy {
        AccessPolicy {
            metadata: self.metadata,
            spec: self.spec,
            status: None,
        }
    }
}

/// One entry of an AccessPolicy's `spec.secrets`, for
/// [`AccessPolicyBuilder::narrowed`].
pub fn secret_access(name: &str) -> SecretAccessBuilder {
    SecretAccessBuilder(SecretAccess {
        name: name.into(),
        ..SecretAccess::default()
    })
}

/// Builds a [`SecretAccess`]; see [`secret_access`].
#[derive(Debug, Clone)]
#[must_use]
pub struct SecretAccessBuilder(SecretAccess);

impl SecretAccessBuilder {
    /// Caps the lifetime.
    pub fn max_ttl(mut self, max_ttl: &str) -> Self {
        self.0.max_ttl = Some(max_ttl.into());
        self
    }

    /// Narrows a JWT's audiences.
    pub fn audience(mut self, audience: &[&str]) -> Self {
        self.0.audience = Some(strings(audience));
        self
    }

    /// Narrows a JWT's scopes.
    pub fn scopes(mut self, scopes: &[&str]) -> Self {
        self.0.scopes = Some(strings(scopes));
        self
    }

    /// Narrows an x509 secret's DNS name templates.
    pub fn dns_names(mut self, names: &[&str]) -> Self {
        self.0.dns_names = Some(strings(names));
        self
    }

    /// The entry.
    pub fn build(self) -> SecretAccess {
        self.0
    }
}

/// A Grant in `namespace` of BrokeredSecret `secret` (namespace, name) to
/// service account `service_account`: maxTtl 1h, from policy `p` (uid `u`)
/// in the secret's namespace, named as the operator names it.
pub fn grant(namespace: &str, service_account: &str, secret: (&str, &str)) -> GrantBuilder {
    GrantBuilder {
        namespace: namespace.into(),
        name: None,
        spec: GrantSpec {
            service_account: service_account.into(),
            secret: SecretReference {
                namespace: secret.0.into(),
                name: secret.1.into(),
            },
            max_ttl: "1h".into(),
            audience: Vec::new(),
            scopes: Vec::new(),
            dns_names: None,
            valid_until: None,
            policy: PolicyReference {
                namespace: secret.0.into(),
                name: "p".into(),
                uid: "u".into(),
            },
        },
    }
}

/// Builds a [`Grant`]; see [`grant`].
#[derive(Debug, Clone)]
#[must_use]
pub struct GrantBuilder {
    namespace: String,
    name: Option<String>,
    spec: GrantSpec,
}

impl GrantBuilder {
    /// Names the Grant `name` instead of the operator's name for it.
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Sets `spec.maxTtl`.
    pub fn max_ttl(mut self, max_ttl: &str) -> Self {
        self.spec.max_ttl = max_ttl.into();
        self
    }

    /// Sets the JWT audiences allowed.
    pub fn audience(mut self, audience: &[&str]) -> Self {
        self.spec.audience = strings(audience);
        self
    }

    /// Sets the JWT scopes allowed.
    pub fn scopes(mut self, scopes: &[&str]) -> Self {
        self.spec.scopes = strings(scopes);
        self
    }

    /// Sets `spec.validUntil`.
    pub fn valid_until(mut self, until: k8s_openapi::jiff::Timestamp) -> Self {
        self.spec.valid_until = Some(Time(until));
        self
    }

    /// The policy the Grant comes from: `name` with uid `uid`, in the
    /// secret's namespace.
    pub fn policy(mut self, name: &str, uid: &str) -> Self {
        self.spec.policy.name = name.into();
        self.spec.policy.uid = uid.into();
        self
    }

    /// The spec alone.
    pub fn spec(self) -> GrantSpec {
        self.spec
    }

    /// The Grant.
    pub fn build(self) -> Grant {
        let name = self
            .name
            .unwrap_or_else(|| crate::grants::grant_name(&self.spec));
        Grant {
            metadata: metadata(&self.namespace, &name),
            spec: self.spec,
        }
    }
}
