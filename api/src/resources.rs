//! ferry's custom resources (`ferry.dev/v1alpha1`): `BrokeredSecret` (what a
//! secret is and where it comes from), `AccessPolicy` (who may have it, how
//! narrowly, for how long) and `Grant` (derived by the reconciler; the one
//! thing the webhook and the broker read).
//!
//! Doc comments become the schema's descriptions (`kubectl explain`).
//! Validation lives in the schema wherever it can: patterns, bounds, enums
//! and CEL rules, so the apiserver refuses a malformed object with a clear
//! message before any controller sees it.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Go-style duration as the schema accepts it: number-unit pairs with the
/// units `s`, `m` and `h`, for example `90s`, `15m` or `1h30m`.
pub const DURATION_PATTERN: &str = r"^([0-9]{1,6}(s|m|h))+$";

/// A DNS-1123 subdomain: names of secrets and service accounts.
const SUBDOMAIN_PATTERN: &str = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$";

/// A DNS-1123 label: namespace names.
const LABEL_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// Guards a CEL rule over the duration-valued `fields` (CEL paths such as
/// `self` or `self.ttl`) so that it only judges strings the schema's
/// pattern admits. The apiserver runs CEL rules even when the pattern
/// already refused the value, and `duration()` on such a string fails with
/// a type-conversion error that buries the pattern's clear message.
fn on_durations(fields: &[&str], rule: &str) -> String {
    let malformed: Vec<String> = fields
        .iter()
        .map(|field| format!("!{field}.matches('{DURATION_PATTERN}')"))
        .collect();
    format!("{} || ({rule})", malformed.join(" || "))
}

fn default_ttl() -> String {
    "15m".into()
}

fn default_max_ttl() -> String {
    "1h".into()
}

/// A secret that ferry brokers: where its material comes from, how long one
/// issued credential lives, and the files it is rendered into in a pod.
/// Lives in the namespace of the team that owns the backend.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ferry.dev",
    version = "v1alpha1",
    kind = "BrokeredSecret",
    doc = "A secret that ferry brokers to pods, short-lived and narrowed.",
    namespaced,
    shortname = "bs",
    category = "ferry",
    status = "BrokeredSecretStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Source","type":"string","jsonPath":".status.source"}"#,
    printcolumn = r#"{"name":"TTL","type":"string","jsonPath":".spec.ttl"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(on_durations(&["self.ttl", "self.maxTtl"], "duration(self.ttl) <= duration(self.maxTtl)")).message("ttl must not exceed maxTtl"))]
#[x_kube(validation = Rule::new("!has(self.source.x509) || !has(self.files) || size(self.files) == 0").message("an x509 source writes tls.crt, tls.key and ca.crt; files cannot be set"))]
pub struct BrokeredSecretSpec {
    /// Default lifetime of one issued credential, like `15m` or `1h`
    /// (between 10s and 24h).
    #[serde(default = "default_ttl")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = 32))]
    #[x_kube(validation = Rule::new(on_durations(&["self"], "duration(self) >= duration('10s') && duration(self) <= duration('24h')")).message("ttl must be between 10s and 24h"))]
    pub ttl: String,
    /// Hard cap on a credential's lifetime, renewals included (at most 168h).
    #[serde(default = "default_max_ttl")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = 32))]
    #[x_kube(validation = Rule::new(on_durations(&["self"], "duration(self) >= duration('10s') && duration(self) <= duration('168h')")).message("maxTtl must be between 10s and 168h"))]
    pub max_ttl: String,
    /// Where the material comes from: exactly one of `postgres`,
    /// `kubernetesSecret`, `jwt`, `x509` or `oauth2`.
    pub source: SecretSource,
    /// Files written into the pod's secrets directory: file name to
    /// template. Names are plain file names (no `/`, no `..`, no leading
    /// dot). Without files, each source writes its natural keys.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    #[x_kube(validation = Rule::new("self.all(k, size(k) <= 253 && k.matches('^[A-Za-z0-9_-][A-Za-z0-9._-]*$') && !k.contains('..'))").message("file names must be plain names: letters, digits, '.', '_' or '-', no '/', no '..', no leading dot"))]
    #[x_kube(validation = Rule::new("self.all(k, size(self[k]) <= 16384)").message("a file template may be at most 16384 characters"))]
    pub files: BTreeMap<String, String>,
}

/// Where a secret's material comes from. Exactly one field is set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.postgres), has(self.kubernetesSecret), has(self.jwt), has(self.x509), has(self.oauth2)].filter(x, x).size() == 1").message("exactly one of postgres, kubernetesSecret, jwt, x509 or oauth2 must be set"))]
pub struct SecretSource {
    /// A dynamic PostgreSQL role per pod: `CREATE ROLE ... VALID UNTIL`,
    /// member of roles the database owner already defined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresSource>,
    /// A copy of a static Secret in this namespace (a migration path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_secret: Option<KubernetesSecretSource>,
    /// A JWT minted and signed by the broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtSource>,
    /// A short-lived certificate for a key the pod makes, signed by a CA
    /// of this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x509: Option<X509Source>,
    /// An access token from an OAuth2 authorization server, acquired by
    /// the broker with credentials only the broker holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2: Option<OAuth2Source>,
}

/// The kind of a BrokeredSecret's source: which provider serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKind {
    /// `postgres`: a dynamic role per lease.
    Postgres,
    /// `kubernetesSecret`: a copy of a Secret.
    KubernetesSecret,
    /// `jwt`: a token minted by the broker.
    Jwt,
    /// `x509`: a certificate signed by the broker.
    X509,
    /// `oauth2`: an access token from an authorization server.
    OAuth2,
}

impl SourceKind {
    /// The field name in `spec.source`, as status and metrics show it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::KubernetesSecret => "kubernetesSecret",
            Self::Jwt => "jwt",
            Self::X509 => "x509",
            Self::OAuth2 => "oauth2",
        }
    }
}

impl std::fmt::Display for SourceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl SecretSource {
    /// Which source is set; `None` when none is (the schema refuses that,
    /// but an object stored before a schema change could still say so).
    pub fn kind(&self) -> Option<SourceKind> {
        if self.postgres.is_some() {
            Some(SourceKind::Postgres)
        } else if self.kubernetes_secret.is_some() {
            Some(SourceKind::KubernetesSecret)
        } else if self.jwt.is_some() {
            Some(SourceKind::Jwt)
        } else if self.x509.is_some() {
            Some(SourceKind::X509)
        } else if self.oauth2.is_some() {
            Some(SourceKind::OAuth2)
        } else {
            None
        }
    }

    /// The audiences and scopes a token of this source may carry, which
    /// policies and requests narrow: `None` for sources without them
    /// (only `jwt` and `oauth2` have them).
    pub fn audience_and_scopes(&self) -> Option<(&[String], &[String])> {
        if let Some(jwt) = &self.jwt {
            Some((&jwt.audience, &jwt.scopes))
        } else {
            self.oauth2
                .as_ref()
                .map(|oauth2| (oauth2.audience.as_slice(), oauth2.scopes.as_slice()))
        }
    }
}

/// Issues one PostgreSQL role per pod lease.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PostgresSource {
    /// The Secret (in this namespace) holding the admin connection string
    /// the broker uses to create and drop roles. Only the broker reads it.
    pub connection_secret_ref: SecretKeyRef,
    /// Existing roles each issued role is made a member of; privileges are
    /// managed in the database, never in this spec. Plain PostgreSQL role
    /// names: lower-case letters, digits and `_`, at most 63 characters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(regex(pattern = r"^[a-z_][a-z0-9_]{0,62}$")))]
    pub member_of: Vec<String>,
    /// How often the broker rotates the admin role's password, like
    /// `720h` (at least 1h); unset: only when asked with the annotation
    /// `ferry.dev/rotate-admin-credential`. The Secret's owner must allow
    /// it with the annotation `ferry.dev/rotatable-key: <key>` on the
    /// Secret. The new connection string is stored under `<key>.next`
    /// before the database changes, then promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = 32))]
    #[x_kube(validation = Rule::new(on_durations(&["self"], "duration(self) >= duration('1h')")).message("adminRotationPeriod must be at least 1h"))]
    pub admin_rotation_period: Option<String>,
}

/// A key of a Secret in the resource's own namespace.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(regex(pattern = SUBDOMAIN_PATTERN), length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret.
    #[serde(default = "default_dsn_key")]
    #[schemars(regex(pattern = r"^[-._a-zA-Z0-9]+$"), length(min = 1, max = 253))]
    pub key: String,
}

fn default_dsn_key() -> String {
    "dsn".into()
}

/// Copies every key of a Secret in the resource's namespace.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KubernetesSecretSource {
    /// Name of the Secret to copy.
    #[schemars(regex(pattern = SUBDOMAIN_PATTERN), length(min = 1, max = 253))]
    pub name: String,
}

/// A JWT minted by the broker for each lease.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JwtSource {
    /// The `iss` claim; defaults to the broker's issuer URL. Another issuer
    /// must be allowed for this namespace by the installation
    /// (`allowedIssuers`), or the BrokeredSecret is not Ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub issuer: Option<String>,
    /// The audiences a token may carry; a policy may narrow them.
    #[schemars(length(min = 1, max = 16), inner(length(min = 1, max = 253)))]
    pub audience: Vec<String>,
    /// The scopes a token may carry (the `scope` claim); a policy may
    /// narrow them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(regex(pattern = r"^[!#-\[\]-~]{1,128}$")))]
    pub scopes: Vec<String>,
    /// Extra static claims. Registered claims and `ferry.dev/secret` (this
    /// BrokeredSecret, `<namespace>/<name>`) are set by the broker and
    /// cannot be overridden.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 16))]
    #[x_kube(validation = Rule::new("self.all(k, size(k) <= 64 && !(k in ['iss', 'sub', 'aud', 'exp', 'nbf', 'iat', 'jti', 'scope', 'pod_uid', 'ferry.dev/secret']) && size(self[k]) <= 1024)").message("claims may not set iss, sub, aud, exp, nbf, iat, jti, scope, pod_uid or ferry.dev/secret; names are at most 64 and values at most 1024 characters"))]
    pub claims: BTreeMap<String, String>,
    /// The signing algorithm.
    #[serde(default)]
    pub algorithm: JwtAlgorithm,
}

/// Signing algorithm of minted JWTs.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum JwtAlgorithm {
    /// ECDSA with P-256 and SHA-256.
    #[default]
    ES256,
    /// Ed25519.
    EdDSA,
}

/// Signs, for each lease, a certificate for a key pair the pod's sidecar
/// generates: the private key never leaves the pod, the broker sees only a
/// certificate signing request, and sets every name in the certificate
/// itself. The pod gets `tls.crt` (the certificate, then the CA's when it
/// is not the root), `tls.key` and `ca.crt`, replaced together at each
/// renewal with a new key.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct X509Source {
    /// A `kubernetes.io/tls` Secret in this namespace holding the CA that
    /// signs: `tls.crt` and `tls.key` (the CA's certificate and key) and
    /// `ca.crt` (what pods trust). Its owner must opt it in with the label
    /// `ferry.dev/brokerable=true`.
    #[schemars(regex(pattern = SUBDOMAIN_PATTERN), length(min = 1, max = 253))]
    pub ca_secret_name: String,
    /// The trust domain of the SPIFFE ID every certificate carries as a URI
    /// name: `spiffe://<trustDomain>/ns/<namespace>/sa/<service account>`.
    #[serde(default = "default_trust_domain")]
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9._]*[a-z0-9])?$"),
        length(min = 1, max = 255)
    )]
    pub trust_domain: String,
    /// The subject's common name, a template over `namespace`,
    /// `serviceAccount` and `podName`, such as
    /// `{{ serviceAccount }}.{{ namespace }}`. None when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub common_name: Option<String>,
    /// DNS names, templates like `commonName`'s, such as
    /// `{{ serviceAccount }}.{{ namespace }}.svc`. Each must render to a
    /// lower-case DNS name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 256)))]
    pub dns_names: Vec<String>,
    /// What the certificate may be used for (extended key usages).
    #[serde(default = "default_usages")]
    #[schemars(length(min = 1, max = 2))]
    pub usages: Vec<CertificateUsage>,
    /// The key pair the sidecar generates.
    #[serde(default)]
    pub key_algorithm: KeyAlgorithm,
}

fn default_trust_domain() -> String {
    "cluster.local".into()
}

fn default_usages() -> Vec<CertificateUsage> {
    vec![CertificateUsage::ClientAuth]
}

/// An extended key usage of an issued certificate.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum CertificateUsage {
    /// TLS client authentication (mTLS clients, PostgreSQL `cert` login).
    ClientAuth,
    /// TLS server authentication.
    ServerAuth,
}

/// The key pair a pod generates for its certificate.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum KeyAlgorithm {
    /// ECDSA over P-256.
    #[default]
    ECDSAP256,
    /// Ed25519 (not every TLS peer accepts it).
    Ed25519,
}

impl KeyAlgorithm {
    /// The name in the broker's API, as the sidecar knows it.
    pub fn wire_name(self) -> &'static str {
        match self {
            Self::ECDSAP256 => ferry_contract::wire::KEY_ECDSA_P256,
            Self::Ed25519 => ferry_contract::wire::KEY_ED25519,
        }
    }
}

/// An access token for a third-party API, acquired from its OAuth2
/// authorization server by the broker. The client secret, signing key or
/// refresh token stay in a Secret only the broker reads: a pod gets the
/// access token alone (files `access_token`, `token_type`, `expires_at`),
/// narrowed to the scopes and audiences its policy allows.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(on_durations(&["self.minRemainingLifetime"], "duration(self.minRemainingLifetime) <= duration('1h')")).message("minRemainingLifetime must be at most 1h"))]
#[x_kube(validation = Rule::new("!has(self.grant) || self.grant != 'RefreshToken' || (has(self.tokenSharing) && self.tokenSharing == 'Shared')").message("grant RefreshToken makes one access token at a time (a refresh revokes the previous one on servers such as Hydra): set tokenSharing: Shared"))]
#[x_kube(validation = Rule::new("!has(self.grant) || self.grant != 'TokenExchange' || !has(self.tokenSharing) || self.tokenSharing == 'PerLease'").message("grant TokenExchange gets a token naming one pod: it cannot be shared (set tokenSharing: PerLease)"))]
#[x_kube(validation = Rule::new("(has(self.grant) && self.grant == 'TokenExchange') == has(self.tokenExchange)").message("tokenExchange is set exactly when grant is TokenExchange"))]
#[x_kube(validation = Rule::new("!has(self.audienceParameter) || self.audienceParameter != 'Resource' || !has(self.audience) || self.audience.all(a, a.matches('^[a-zA-Z][a-zA-Z0-9+.-]*://[^#]+$'))").message("with audienceParameter Resource every audience must be an absolute URI without a fragment (RFC 8707)"))]
pub struct OAuth2Source {
    /// The token endpoint, an `https://` URL.
    #[schemars(regex(pattern = HTTPS_URL_PATTERN), length(max = 2048))]
    pub token_url: String,
    /// The RFC 7009 revocation endpoint, an `https://` URL. When set, a
    /// lease's own token is revoked there when the lease is revoked or its
    /// pod goes away; unset, tokens live until they expire upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = HTTPS_URL_PATTERN), length(max = 2048))]
    pub revocation_url: Option<String>,
    /// The authorization endpoint, an `https://` URL: only for the
    /// `refreshToken` grant, where `ferry-operator oauth2-consent` sends a
    /// person to consent once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = HTTPS_URL_PATTERN), length(max = 2048))]
    pub authorization_url: Option<String>,
    /// A Secret in this namespace with the client's credentials, which only
    /// the broker reads: `client_id`, and `client_secret` (client secret
    /// authentication) or `private_key` (PKCS #8 PEM, P-256, for
    /// `privateKeyJwt`; optional `key_id`), and `refresh_token` for the
    /// `refreshToken` grant, which the broker writes back when the server
    /// rotates it. Its owner must opt it in with the label
    /// `ferry.dev/brokerable=true`.
    #[schemars(regex(pattern = SUBDOMAIN_PATTERN), length(min = 1, max = 253))]
    pub credentials_secret_name: String,
    /// A key of that Secret holding PEM CA certificates that verify the
    /// token endpoint; unset: the system's trusted roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[-._a-zA-Z0-9]+$"), length(min = 1, max = 253))]
    pub ca_key: Option<String>,
    /// How the broker authenticates as the client.
    #[serde(default)]
    pub client_authentication: ClientAuthentication,
    /// How the broker obtains a token.
    #[serde(default)]
    pub grant: OAuth2Grant,
    /// The subject token the broker presents for the `TokenExchange`
    /// grant; set exactly with that grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_exchange: Option<TokenExchange>,
    /// The scopes a token may carry; a policy may narrow them. Each token
    /// request asks for exactly the lease's scopes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(regex(pattern = r"^[!#-\[\]-~]{1,128}$")))]
    pub scopes: Vec<String>,
    /// The audiences a token may be for; a policy may narrow them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 253)))]
    pub audience: Vec<String>,
    /// How the audiences go to the server: `Audience` (default) as
    /// `audience` parameters (Hydra, Auth0, RFC 8693); `Resource` as RFC
    /// 8707 `resource` indicators, for servers that ignore `audience`
    /// (node-oidc-provider, Keycloak); then each must be an absolute URI.
    #[serde(default)]
    pub audience_parameter: AudienceParameter,
    /// `PerLease` (default): every lease gets a token of its own, revoked
    /// with the lease. `Shared`: pods with the same scopes and audiences
    /// share one cached token, fetched once for all who ask at the same
    /// time, and never revoked at a pod's end (others still use it); a
    /// lease of it ends `minRemainingLifetime` before the token expires.
    #[serde(default)]
    pub token_sharing: TokenSharing,
    /// A shared token's leases end this long before it expires (or halfway
    /// through a token lifetime shorter than twice this), so a pod never
    /// holds a token about to expire; a lease never outlives its token.
    #[serde(default = "default_min_remaining_lifetime")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = 32))]
    pub min_remaining_lifetime: String,
    /// At most this many token requests a minute go to the server for
    /// this BrokeredSecret, whatever the number of pods; beyond it pods
    /// are told to retry.
    #[serde(default = "default_requests_per_minute")]
    #[schemars(range(min = 1, max = 6000))]
    pub requests_per_minute: u32,
}

/// An `https://` URL (no whitespace).
const HTTPS_URL_PATTERN: &str = r"^https://[^\s/?#]+[^\s]*$";

fn default_min_remaining_lifetime() -> String {
    "2m".into()
}

fn default_requests_per_minute() -> u32 {
    600
}

/// How the broker authenticates to the token endpoint.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ClientAuthentication {
    /// `client_secret_basic`: `client_id` and `client_secret` in HTTP
    /// Basic authentication.
    #[default]
    ClientSecretBasic,
    /// `client_secret_post`: `client_id` and `client_secret` in the form.
    ClientSecretPost,
    /// `private_key_jwt` (RFC 7523): a short ES256 assertion signed with
    /// `private_key`; the server knows the public key.
    PrivateKeyJwt,
}

/// How the broker obtains an access token.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OAuth2Grant {
    /// The client's own access (`client_credentials`).
    #[default]
    ClientCredentials,
    /// A person's delegated access: the broker spends the `refresh_token`
    /// it holds, and stores the rotated one back, one replica at a time.
    /// Needs `tokenSharing: Shared`: one access token at a time, shared by
    /// every lease and replica, asked for with the secret's scopes (a
    /// policy that narrows them gets refused where the server does not
    /// narrow refreshed tokens).
    RefreshToken,
    /// The pod's own delegated access (RFC 8693 token exchange): the
    /// broker presents a JWT it signs naming the pod (`sub`
    /// `system:serviceaccount:<namespace>:<name>`, `pod_uid`), which the
    /// server trusts through the broker's JWKS, and gets a token for that
    /// pod. Needs `tokenExchange`; tokens are never shared.
    TokenExchange,
}

/// The subject token of an RFC 8693 exchange: a JWT the broker signs
/// (ES256, the keys of its JWKS at `/v1/jwks`, `iss` the broker's issuer)
/// naming the pod, valid for a minute, for the server alone.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TokenExchange {
    /// The subject token's `aud`: what the authorization server expects
    /// (often its issuer URL), so no other party accepts the token.
    #[schemars(length(min = 1, max = 253))]
    pub subject_token_audience: String,
}

/// The form parameter that carries a token request's audiences.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AudienceParameter {
    /// `audience` (Hydra, Auth0, RFC 8693).
    #[default]
    Audience,
    /// `resource` (RFC 8707 resource indicators).
    Resource,
}

impl AudienceParameter {
    /// The form parameter's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Audience => "audience",
            Self::Resource => "resource",
        }
    }
}

/// Whether pods share access tokens.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TokenSharing {
    /// One token per lease.
    #[default]
    PerLease,
    /// One cached token per set of scopes and audiences.
    Shared,
}

/// Observed state of a BrokeredSecret.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BrokeredSecretStatus {
    /// `Ready` says whether the secret's references resolve.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The kind of source (`postgres`, `kubernetesSecret`, `jwt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The credentials the broker holds for this secret, written by the
    /// broker (field manager `ferry-broker`): never a value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custody: Option<CustodyStatus>,
}

/// What the broker holds for a BrokeredSecret, as last seen by a broker
/// replica that used it.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CustodyStatus {
    /// The Secrets (in this namespace) whose keys the broker uses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<HeldCredential>,
    /// The last `ferry.dev/rotate-admin-credential` request a completed
    /// rotation of the admin credential satisfied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_request: Option<String>,
    /// Why the last rotation of the admin credential failed or was
    /// refused; unset after one succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_error: Option<String>,
}

/// One Secret whose keys the broker uses.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct HeldCredential {
    /// The Secret's name.
    pub secret: String,
    /// The keys the broker uses, each with a fingerprint of its value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<HeldKey>,
    /// When the broker last used it (at most a minute behind).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used: Option<Time>,
    /// When it was last rotated: by the broker (the Secret's
    /// `ferry.dev/rotated-at`), else when a broker first saw a new value,
    /// else when the Secret was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotated: Option<Time>,
}

/// One key of a held Secret.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct HeldKey {
    /// The key's name.
    pub name: String,
    /// `hmac-sha256:<32 hex digits>`: an HMAC of the value under a key only
    /// the broker holds, so equal values have equal fingerprints in one
    /// installation while a fingerprint cannot be used to test guesses of
    /// the value offline.
    pub fingerprint: String,
}

/// Who may have which secrets of this namespace, how narrowly, and for how
/// long. Lives in the secrets' namespace: the team that owns a secret
/// consents to every grant of it. Deny by default.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ferry.dev",
    version = "v1alpha1",
    kind = "AccessPolicy",
    doc = "Which service accounts may have which secrets of this namespace.",
    namespaced,
    shortname = "ap",
    category = "ferry",
    status = "AccessPolicyStatus",
    printcolumn = r#"{"name":"Subjects","type":"integer","jsonPath":".status.subjects"}"#,
    printcolumn = r#"{"name":"Secrets","type":"string","jsonPath":".status.secretNames"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AccessPolicySpec {
    /// The service accounts that may have the secrets.
    #[schemars(length(min = 1, max = 64))]
    pub subjects: Vec<Subject>,
    /// The secrets (BrokeredSecrets in this namespace) and how narrowly
    /// they are granted. Each secret is listed once.
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = Rule::new("self.all(s, self.exists_one(t, t.name == s.name))").message("each secret may be listed only once"))]
    pub secrets: Vec<SecretAccess>,
    /// When set, access ends at this time and the grants are removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<Time>,
    /// When set, subjects hold no Grant of their own: each needs an
    /// AccessRequest in this namespace approved by one of `approvers`, and
    /// holds Grants only for the approved duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
}

fn default_max_duration() -> String {
    "8h".into()
}

fn default_request_ttl() -> String {
    "1h".into()
}

/// Just-in-time access: who approves requests, and how much they may grant.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Approval {
    /// Who may approve or deny requests (as the apiserver authenticates
    /// them); never the requester themselves.
    pub approvers: Approvers,
    /// The longest access one approval may grant, like `8h` (between 1m
    /// and 168h). A request asking for more is Invalid.
    #[serde(default = "default_max_duration")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = 32))]
    #[x_kube(validation = Rule::new(on_durations(&["self"], "duration(self) >= duration('1m') && duration(self) <= duration('168h')")).message("maxDuration must be between 1m and 168h"))]
    pub max_duration: String,
    /// How long a request may wait for a decision before it expires, like
    /// `1h` (between 10s and 168h).
    #[serde(default = "default_request_ttl")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = 32))]
    #[x_kube(validation = Rule::new(on_durations(&["self"], "duration(self) >= duration('10s') && duration(self) <= duration('168h')")).message("requestTtl must be between 10s and 168h"))]
    pub request_ttl: String,
}

/// Users and groups, as the apiserver authenticates them.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.users) ? size(self.users) : 0) + (has(self.groups) ? size(self.groups) : 0) >= 1").message("name at least one approver: a user or a group"))]
pub struct Approvers {
    /// Usernames, such as `alice` or `system:serviceaccount:ops:approver`.
    #[serde(default)]
    #[schemars(length(max = 64), inner(length(min = 1, max = 512)))]
    pub users: Vec<String>,
    /// Group names; any member may decide.
    #[serde(default)]
    #[schemars(length(max = 64), inner(length(min = 1, max = 512)))]
    pub groups: Vec<String>,
}

/// One subject: a service account by name, or a service account name in
/// every namespace matching a selector.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.serviceAccount) != has(self.namespaceSelector)").message("set exactly one of serviceAccount or namespaceSelector"))]
#[x_kube(validation = Rule::new("has(self.namespaceSelector) == has(self.serviceAccountName)").message("namespaceSelector needs serviceAccountName (and serviceAccountName needs namespaceSelector)"))]
pub struct Subject {
    /// A single service account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<ServiceAccountRef>,
    /// Namespaces whose service account `serviceAccountName` is a subject.
    /// An empty selector matches every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// The service account name used with `namespaceSelector`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = SUBDOMAIN_PATTERN), length(min = 1, max = 253))]
    pub service_account_name: Option<String>,
}

/// A service account in a namespace.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountRef {
    /// Name of the service account.
    #[schemars(regex(pattern = SUBDOMAIN_PATTERN), length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the service account.
    #[schemars(regex(pattern = LABEL_PATTERN), length(min = 1, max = 63))]
    pub namespace: String,
}

/// Access to one BrokeredSecret, optionally narrower than the secret.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SecretAccess {
    /// Name of a BrokeredSecret in the policy's namespace.
    #[schemars(regex(pattern = SUBDOMAIN_PATTERN), length(min = 1, max = 253))]
    pub name: String,
    /// Caps credential lifetime below the secret's own maxTtl.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = 32))]
    #[x_kube(validation = Rule::new(on_durations(&["self"], "duration(self) >= duration('10s')")).message("maxTtl must be at least 10s"))]
    pub max_ttl: Option<String>,
    /// JWT audiences allowed; a subset of the secret's audiences.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16), inner(length(min = 1, max = 253)))]
    pub audience: Option<Vec<String>>,
    /// JWT scopes allowed; a subset of the secret's scopes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 128)))]
    pub scopes: Option<Vec<String>>,
    /// x509 DNS names allowed: a subset of the secret's `dnsNames`
    /// templates, written the same way. Unset: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 256)))]
    pub dns_names: Option<Vec<String>>,
}

/// Observed state of an AccessPolicy.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AccessPolicyStatus {
    /// `Ready` says whether every listed secret is granted as written; the
    /// reason names what is wrong (SecretNotFound, InvalidNarrowing,
    /// Expired).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// How many service accounts currently hold grants from this policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subjects: Option<i64>,
    /// How many Grants this policy currently produces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grants: Option<i64>,
    /// Every secret the policy lists, for `kubectl get`'s SECRETS column
    /// (a JSONPath column shows only the first of a list): the names
    /// joined by commas, or the first ones and how many more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_names: Option<String>,
}

/// Derived permission: one service account may have one secret, this
/// narrowly, because of exactly one AccessPolicy. Written by the
/// reconciler only, in the service account's namespace; edits and
/// deletions are repaired.
#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ferry.dev",
    version = "v1alpha1",
    kind = "Grant",
    doc = "One service account may have one secret, derived from one AccessPolicy.",
    namespaced,
    category = "ferry",
    printcolumn = r#"{"name":"ServiceAccount","type":"string","jsonPath":".spec.serviceAccount"}"#,
    printcolumn = r#"{"name":"Secret","type":"string","jsonPath":".spec.secret.name"}"#,
    printcolumn = r#"{"name":"From","type":"string","jsonPath":".spec.secret.namespace"}"#,
    printcolumn = r#"{"name":"MaxTTL","type":"string","jsonPath":".spec.maxTtl"}"#,
    printcolumn = r#"{"name":"ValidUntil","type":"date","jsonPath":".spec.validUntil"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct GrantSpec {
    /// The service account (in this Grant's namespace) that may have the secret.
    pub service_account: String,
    /// The BrokeredSecret granted.
    pub secret: SecretReference,
    /// Upper bound on a credential's lifetime, renewals included.
    pub max_ttl: String,
    /// JWT audiences allowed (empty: not a JWT secret).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audience: Vec<String>,
    /// JWT scopes allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// x509 DNS name templates allowed; unset: all of the secret's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_names: Option<Vec<String>>,
    /// When the grant ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<Time>,
    /// The AccessPolicy this grant comes from.
    pub policy: PolicyReference,
}

/// A BrokeredSecret by namespace and name.
#[derive(
    JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
#[serde(rename_all = "camelCase")]
pub struct SecretReference {
    /// Namespace of the BrokeredSecret.
    pub namespace: String,
    /// Name of the BrokeredSecret.
    pub name: String,
}

/// The AccessPolicy a Grant comes from.
#[derive(
    JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
#[serde(rename_all = "camelCase")]
pub struct PolicyReference {
    /// Namespace of the policy (always the secret's namespace).
    pub namespace: String,
    /// Name of the policy.
    pub name: String,
    /// UID of the policy, so a policy recreated under the same name does
    /// not inherit the old one's grants.
    pub uid: String,
}

/// A request for just-in-time access under an AccessPolicy that requires
/// approval. Created by the requester in the policy's namespace; decided
/// once, by an approver other than the requester, through
/// `spec.decision`. The operator judges it and writes its status; an
/// approved request yields Grants until `status.validUntil`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ferry.dev",
    version = "v1alpha1",
    kind = "AccessRequest",
    doc = "A request for time-boxed access under an AccessPolicy that requires approval.",
    namespaced,
    shortname = "ar",
    category = "ferry",
    status = "AccessRequestStatus",
    printcolumn = r#"{"name":"Policy","type":"string","jsonPath":".spec.policy"}"#,
    printcolumn = r#"{"name":"Requester","type":"string","jsonPath":".spec.requester"}"#,
    printcolumn = r#"{"name":"Duration","type":"string","jsonPath":".spec.duration"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Approver","type":"string","jsonPath":".status.approver"}"#,
    printcolumn = r#"{"name":"ValidUntil","type":"date","jsonPath":".status.validUntil"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.policy == oldSelf.policy && self.duration == oldSelf.duration && self.reason == oldSelf.reason && self.requester == oldSelf.requester && has(self.secrets) == has(oldSelf.secrets) && (!has(self.secrets) || self.secrets == oldSelf.secrets) && has(self.serviceAccount) == has(oldSelf.serviceAccount) && (!has(self.serviceAccount) || self.serviceAccount == oldSelf.serviceAccount)").message("a request cannot be edited: only spec.decision may be set after it is created"))]
#[x_kube(validation = Rule::new("!has(oldSelf.decision) || (has(self.decision) && self.decision == oldSelf.decision)").message("the request is already decided: a decision cannot be changed or removed"))]
pub struct AccessRequestSpec {
    /// The AccessPolicy (in this namespace) to request access under; it
    /// must require approval.
    #[schemars(regex(pattern = SUBDOMAIN_PATTERN), length(min = 1, max = 253))]
    pub policy: String,
    /// The policy's secrets wanted, by name; empty or unset: all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(regex(pattern = SUBDOMAIN_PATTERN), length(min = 1, max = 253)))]
    #[x_kube(validation = Rule::new("self.all(s, self.exists_one(t, t == s))").message("each secret may be listed only once"))]
    pub secrets: Vec<String>,
    /// The one service account (among the policy's subjects) to grant;
    /// unset: every subject of the policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<ServiceAccountRef>,
    /// How long access lasts once approved, like `30m` (at least 10s, and
    /// at most the policy's `approval.maxDuration`).
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = 32))]
    #[x_kube(validation = Rule::new(on_durations(&["self"], "duration(self) >= duration('10s') && duration(self) <= duration('168h')")).message("duration must be between 10s and 168h"))]
    pub duration: String,
    /// Why access is needed (for the approver and the audit trail).
    #[schemars(length(min = 1, max = 1024))]
    pub reason: String,
    /// The requesting user: must be the username the apiserver
    /// authenticated the creation as (an admission policy checks).
    #[schemars(length(min = 1, max = 512))]
    pub requester: String,
    /// The approver's decision, set once by an approver who is not the
    /// requester, while the request is Pending; `approver` must be the
    /// username the apiserver authenticated (an admission policy checks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
}

/// An approver's decision on an AccessRequest.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// `Approved` or `Denied`.
    pub verdict: Verdict,
    /// The approver's username, as the apiserver authenticates them.
    #[schemars(length(min = 1, max = 512))]
    pub approver: String,
    /// Why (kept in status and an Event).
    #[schemars(length(min = 1, max = 1024))]
    pub reason: String,
}

/// An approver's verdict.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Access is granted for the requested duration.
    Approved,
    /// Access is refused.
    Denied,
}

/// Where an AccessRequest stands.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestPhase {
    /// Valid, waiting for a decision until `expiresAt`.
    Pending,
    /// Approved: Grants exist until `validUntil`.
    Approved,
    /// Denied by an approver.
    Denied,
    /// Not decided in time (or decided only after `expiresAt`).
    Expired,
    /// Was approved; `validUntil` has passed (or the policy no longer
    /// allows it), and its Grants are gone.
    Ended,
    /// The request does not fit its policy; the condition says why.
    Invalid,
}

impl RequestPhase {
    /// The phase as status and Events spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Approved => "Approved",
            Self::Denied => "Denied",
            Self::Expired => "Expired",
            Self::Ended => "Ended",
            Self::Invalid => "Invalid",
        }
    }

    /// Whether nothing can change this phase any more.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Pending | Self::Approved)
    }
}

/// Observed state of an AccessRequest, written by the operator only.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AccessRequestStatus {
    /// Where the request stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RequestPhase>,
    /// Who may decide: the policy's approvers, copied here for the
    /// admission policy that checks the decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvers: Option<Approvers>,
    /// UID of the policy the request was judged against, so a policy
    /// recreated under the same name does not inherit approvals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_uid: Option<String>,
    /// When a Pending request expires undecided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// Who decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approver: Option<String>,
    /// Why, in the approver's words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision_reason: Option<String>,
    /// When the operator first saw the decision: access starts then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<Time>,
    /// When approved access ends: `decidedAt` plus `spec.duration`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<Time>,
    /// The Grants (`<namespace>/<name>`) this approval yields.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grants: Vec<String>,
    /// `Ready` is True while the request grants access; its reason is the
    /// phase and its message says why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// An incident responder's order to take access away now: every live
/// lease of a pod, of a service account's pods, of a BrokeredSecret, or
/// that an AccessPolicy's Grants allowed is revoked at once (PostgreSQL
/// roles dropped, tokens revoked upstream, JWT ids published as revoked,
/// the pods' files wiped), and no lease is issued to the target while the
/// Revocation exists. Deleting it lifts the block; it is never edited.
/// Every name is in the Revocation's own namespace: a team revokes its own
/// pods and service accounts, or its own secrets and policies.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ferry.dev",
    version = "v1alpha1",
    kind = "Revocation",
    doc = "An order to revoke live leases now and refuse new ones while it exists.",
    namespaced,
    shortname = "rv",
    category = "ferry",
    status = "RevocationStatus",
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".status.target"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".spec.reason","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.pod), has(self.serviceAccount), has(self.secret), has(self.policy)].filter(x, x).size() == 1").message("name exactly one target: pod, serviceAccount, secret or policy"))]
#[x_kube(validation = Rule::new("self == oldSelf").message("a revocation cannot be edited: delete it to lift it, and create another"))]
pub struct RevocationSpec {
    /// A pod in this namespace: its leases, and the next pod of that name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = SUBDOMAIN_PATTERN), length(min = 1, max = 253))]
    pub pod: Option<String>,
    /// A service account in this namespace: the leases of all its pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = SUBDOMAIN_PATTERN), length(min = 1, max = 253))]
    pub service_account: Option<String>,
    /// A BrokeredSecret in this namespace: every lease of it, in every
    /// namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = SUBDOMAIN_PATTERN), length(min = 1, max = 253))]
    pub secret: Option<String>,
    /// An AccessPolicy in this namespace: its Grants stop counting, and
    /// every lease no other Grant allows is revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = SUBDOMAIN_PATTERN), length(min = 1, max = 253))]
    pub policy: Option<String>,
    /// Why (kept in Events and the broker's audit log; never shown to the
    /// revoked pods).
    #[schemars(length(min = 1, max = 1024))]
    pub reason: String,
}

/// Where a Revocation stands.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RevocationPhase {
    /// Its target exists: its leases are revoked and refused.
    Active,
    /// Its target does not exist: nothing was revoked, nothing is
    /// refused; the condition says what was not found.
    Invalid,
}

impl RevocationPhase {
    /// The phase as status and Events spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "Active",
            Self::Invalid => "Invalid",
        }
    }
}

/// Observed state of a Revocation, written by the operator only.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RevocationStatus {
    /// Whether the Revocation is in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RevocationPhase>,
    /// What it revokes, as `kind namespace/name` (such as `pod shop/web-1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// `Ready` is True while the Revocation is in force; its reason is
    /// `Active` or what was not found.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The five CRDs, in the order they should be applied.
pub fn crds()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    use kube::CustomResourceExt;
    vec![
        BrokeredSecret::crd(),
        AccessPolicy::crd(),
        Grant::crd(),
        AccessRequest::crd(),
        Revocation::crd(),
    ]
}

/// The first line of every generated CRD file and stream.
const GENERATED_HEADER: &str = "# Generated by `ferry-operator crds` (make crds). Do not edit.\n";

/// The CRDs as one multi-document YAML stream, as printed by
/// `ferry-operator crds`.
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::from(GENERATED_HEADER);
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}

/// One YAML file per CRD, as committed under `crds/`: the file name
/// (`<crd name>.yaml`, such as `brokeredsecrets.ferry.dev.yaml`) and its
/// content, in the order the CRDs should be applied.
pub fn crd_files() -> Result<Vec<(String, String)>, serde_yaml::Error> {
    crds()
        .into_iter()
        .map(|crd| {
            let name = format!("{}.yaml", kube::ResourceExt::name_any(&crd));
            let yaml = format!("{GENERATED_HEADER}{}", serde_yaml::to_string(&crd)?);
            Ok((name, yaml))
        })
        .collect()
}
