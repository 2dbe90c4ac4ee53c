//! The operator's own certificate manager, for installs without
//! cert-manager: a CA and serving certificates for the webhook and broker
//! Services, kept in `kubernetes.io/tls` Secrets in ferry's namespace and
//! renewed well before they expire, and the CA patched into the
//! MutatingWebhookConfiguration's `caBundle` (and the broker's live-lease
//! APIService's, when it is installed).
//!
//! The pure part (generate, issue, decide whether a stored certificate is
//! still good) is separate from the part that reads and writes Secrets.
//! Only the leader runs it; writes are creates (409 when another replica
//! won) or replaces under the resourceVersion just read.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_contract::{MANAGED_BY_LABEL, OPERATOR_MANAGER, PART_OF, PART_OF_LABEL};
use ferry_runtime::secrets::{self, UpsertError};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::api::{Api, Patch, PatchParams};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

/// Default name of the Secret holding the CA certificate and key.
pub const DEFAULT_CA_SECRET: &str = "ferry-ca";
/// Default name of the webhook's serving-certificate Secret.
pub const DEFAULT_WEBHOOK_TLS_SECRET: &str = "ferry-webhook-tls";
/// Default name of the broker's serving-certificate Secret.
pub const DEFAULT_BROKER_TLS_SECRET: &str = "ferry-broker-tls";
/// Key of the issuing CA in a serving-certificate Secret (as cert-manager writes it).
pub const CA_KEY: &str = "ca.crt";
/// Key of the certificate in a `kubernetes.io/tls` Secret.
pub const CERT_KEY: &str = "tls.crt";
/// Key of the private key in a `kubernetes.io/tls` Secret.
pub const PRIVATE_KEY_KEY: &str = "tls.key";
/// Common name of the CA ferry generates.
const CA_COMMON_NAME: &str = "ferry-ca";

/// Why the certificates could not be generated or stored.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    /// rcgen could not build or sign a certificate.
    #[error("generating {what}: {source}")]
    Generate {
        /// Which certificate.
        what: String,
        /// The underlying error.
        source: rcgen::Error,
    },
    /// A certificate read back could not be parsed.
    #[error("{what}: not a PEM certificate: {reason}")]
    Parse {
        /// Which certificate.
        what: String,
        /// What was wrong.
        reason: String,
    },
    /// Reading or writing a Secret or the webhook configuration failed.
    #[error("{what}: {source}")]
    Kube {
        /// The call that failed, with the object it was about.
        what: String,
        /// The underlying error.
        source: kube::Error,
    },
    /// Other writers kept changing a Secret while it was being written.
    #[error("{0}")]
    Contended(String),
}

/// A CA or serving certificate with its private key, both PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct CertifiedKey {
    /// The certificate.
    pub cert_pem: String,
    /// Its PKCS#8 private key.
    pub key_pem: String,
}

impl std::fmt::Debug for CertifiedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("CertifiedKey")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

fn generate_error(what: &str) -> impl FnOnce(rcgen::Error) -> CertificateError + '_ {
    move |source| CertificateError::Generate {
        what: what.to_owned(),
        source,
    }
}

fn validity_window(now: OffsetDateTime, validity: Duration) -> (OffsetDateTime, OffsetDateTime) {
    // Backdated a little for clocks that lag the leader's.
    let not_before = now - time::Duration::minutes(5);
    let not_after = now + time::Duration::seconds(i64::try_from(validity.as_secs()).unwrap_or(0));
    (not_before, not_after)
}

/// A new self-signed CA valid for `validity` from `now`.
pub fn generate_ca(
    now: OffsetDateTime,
    validity: Duration,
) -> Result<CertifiedKey, CertificateError> {
    let fail = generate_error("the CA");
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
    params
        .distinguished_name
        .push(DnType::CommonName, CA_COMMON_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    (params.not_before, params.not_after) = validity_window(now, validity);
    let key = KeyPair::generate().map_err(generate_error("the CA key"))?;
    let cert = params.self_signed(&key).map_err(generate_error("the CA"))?;
    Ok(CertifiedKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A serving certificate for `dns_names`, signed by `ca`, valid for
/// `validity` from `now`.
pub fn issue_serving_certificate(
    ca: &CertifiedKey,
    dns_names: &[String],
    now: OffsetDateTime,
    validity: Duration,
) -> Result<CertifiedKey, CertificateError> {
    let what = format!("the serving certificate for {}", dns_names.join(", "));
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(generate_error("the CA key"))?;
    let issuer =
        Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).map_err(generate_error("the CA"))?;
    let mut params = CertificateParams::new(dns_names.to_vec()).map_err(generate_error(&what))?;
    if let Some(first) = dns_names.first() {
        params.distinguished_name.push(DnType::CommonName, first);
    }
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    (params.not_before, params.not_after) = validity_window(now, validity);
    let key = KeyPair::generate().map_err(generate_error(&what))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(generate_error(&what))?;
    Ok(CertifiedKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// What a stored certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFacts {
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// DNS subject alternative names.
    pub dns_names: Vec<String>,
}

/// Reads validity and DNS names from the first certificate of `pem`.
pub fn certificate_facts(what: &str, pem: &str) -> Result<CertificateFacts, CertificateError> {
    use x509_parser::extensions::GeneralName;
    let fail = |reason: String| CertificateError::Parse {
        what: what.to_owned(),
        reason,
    };
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| fail(e.to_string()))?;
    let cert = pem.parse_x509().map_err(|e| fail(e.to_string()))?;
    let validity = cert.validity();
    let time = |t: x509_parser::time::ASN1Time| {
        OffsetDateTime::from_unix_timestamp(t.timestamp()).map_err(|e| fail(e.to_string()))
    };
    let dns_names = cert
        .subject_alternative_name()
        .map_err(|e| fail(e.to_string()))?
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::DNSName(dns) => Some((*dns).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(CertificateFacts {
        not_before: time(validity.not_before)?,
        not_after: time(validity.not_after)?,
        dns_names,
    })
}

/// Whether a certificate is due for renewal at `now`: once less than a
/// third of its lifetime is left (as cert-manager does by default), so a
/// missed pass or two never lets it expire.
pub fn renewal_due(facts: &CertificateFacts, now: OffsetDateTime) -> bool {
    let lifetime = facts.not_after - facts.not_before;
    now >= facts.not_after - lifetime / 3
}

/// The DNS names a Service is reached by from inside the cluster.
pub fn service_dns_names(service: &str, namespace: &str, cluster_domain: &str) -> Vec<String> {
    vec![
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.{cluster_domain}"),
    ]
}

/// One serving certificate to keep: its Secret and the names it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServingCertificate {
    /// Name of the `kubernetes.io/tls` Secret in ferry's namespace.
    pub secret: String,
    /// DNS names the certificate must cover.
    pub dns_names: Vec<String>,
}

/// What the certificate manager keeps, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateConfig {
    /// ferry's namespace: every Secret lives here.
    pub namespace: String,
    /// Name of the CA Secret (`tls.crt`, `tls.key`).
    pub ca_secret: String,
    /// The serving certificates signed by the CA.
    pub serving: Vec<ServingCertificate>,
    /// The MutatingWebhookConfiguration whose webhooks get the CA as `caBundle`.
    pub webhook_configuration: String,
    /// The APIService (the broker's live-lease API) that gets the CA as
    /// `caBundle`, when the installation serves it.
    pub api_service: Option<String>,
    /// Lifetime of a new CA.
    pub ca_validity: Duration,
    /// Lifetime of a new serving certificate.
    pub serving_validity: Duration,
}

/// What one pass of [`ensure_certificates`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnsureOutcome {
    /// Secrets written (created or replaced).
    pub written: Vec<String>,
    /// Whether the webhook configuration's caBundle was patched.
    pub ca_bundle_patched: bool,
    /// Whether the APIService's caBundle was patched.
    pub api_service_patched: bool,
}

fn secret_data(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()
        .and_then(|data| data.get(key))
        .and_then(|value| String::from_utf8(value.0.clone()).ok())
}

fn stored_key(secret: &Secret) -> Option<CertifiedKey> {
    Some(CertifiedKey {
        cert_pem: secret_data(secret, CERT_KEY)?,
        key_pem: secret_data(secret, PRIVATE_KEY_KEY)?,
    })
}

/// Whether the CA stored in `secret` can go on signing at `now`.
fn usable_ca(secret: &Secret, now: OffsetDateTime) -> Option<CertifiedKey> {
    let ca = stored_key(secret)?;
    let facts = certificate_facts("the CA", &ca.cert_pem).ok()?;
    (!renewal_due(&facts, now) && KeyPair::from_pem(&ca.key_pem).is_ok()).then_some(ca)
}

/// Whether the serving certificate in `secret` is good at `now`: signed by
/// `ca`, covering `dns_names`, not due for renewal.
fn usable_serving(
    secret: &Secret,
    ca: &CertifiedKey,
    dns_names: &[String],
    now: OffsetDateTime,
) -> bool {
    let (Some(stored), Some(stored_ca)) = (stored_key(secret), secret_data(secret, CA_KEY)) else {
        return false;
    };
    if stored_ca != ca.cert_pem || secret.type_.as_deref() != Some("kubernetes.io/tls") {
        return false;
    }
    let Ok(facts) = certificate_facts("a serving certificate", &stored.cert_pem) else {
        return false;
    };
    let mut wanted = dns_names.to_vec();
    let mut have = facts.dns_names.clone();
    wanted.sort();
    have.sort();
    wanted == have && !renewal_due(&facts, now)
}

fn tls_secret(namespace: &str, name: &str, key: &CertifiedKey, ca_pem: Option<&str>) -> Secret {
    let mut data = BTreeMap::from([
        (
            CERT_KEY.to_owned(),
            ByteString(key.cert_pem.clone().into_bytes()),
        ),
        (
            PRIVATE_KEY_KEY.to_owned(),
            ByteString(key.key_pem.clone().into_bytes()),
        ),
    ]);
    if let Some(ca) = ca_pem {
        data.insert(CA_KEY.to_owned(), ByteString(ca.as_bytes().to_vec()));
    }
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([
                (PART_OF_LABEL.to_owned(), PART_OF.to_owned()),
                (MANAGED_BY_LABEL.to_owned(), OPERATOR_MANAGER.to_owned()),
            ])),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(data),
        ..Secret::default()
    }
}

/// Reads `name`; when `keep` says it is unusable, writes what `build`
/// makes (see [`secrets::upsert`]). Returns the Secret as stored and
/// whether this call wrote it.
async fn ensure_secret(
    secrets: &Api<Secret>,
    name: &str,
    keep: impl Fn(&Secret) -> bool,
    build: impl Fn() -> Result<Secret, CertificateError>,
) -> Result<(Secret, bool), CertificateError> {
    let upserted = secrets::upsert(secrets, name, |existing| match existing {
        Some(secret) if keep(secret) => Ok(None),
        _ => build().map(Some),
    })
    .await
    .map_err(|error| match error {
        UpsertError::Decide(error) => error,
        UpsertError::Kube {
            action,
            namespace,
            name,
            source,
        } => CertificateError::Kube {
            what: format!("{action} Secret {namespace}/{name}"),
            source,
        },
        contended @ UpsertError::Contended { .. } => {
            CertificateError::Contended(contended.to_string())
        }
    })?;
    // `build` always makes a Secret, so one is stored whenever we get here.
    let secret = upserted.secret.ok_or_else(|| {
        CertificateError::Contended(format!("Secret {name} vanished after it was written"))
    })?;
    Ok((secret, upserted.written))
}

/// One pass: make sure the CA and every serving certificate exist, are
/// consistent and are not due for renewal, and that the webhook
/// configuration trusts the CA. Idempotent; writes only what is wrong.
pub async fn ensure_certificates(
    client: &kube::Client,
    config: &CertificateConfig,
    now: OffsetDateTime,
) -> Result<EnsureOutcome, CertificateError> {
    let secrets = Api::<Secret>::namespaced(client.clone(), &config.namespace);
    let mut outcome = EnsureOutcome::default();
    let (ca_secret, wrote) = ensure_secret(
        &secrets,
        &config.ca_secret,
        |secret| usable_ca(secret, now).is_some(),
        || {
            let ca = generate_ca(now, config.ca_validity)?;
            Ok(tls_secret(&config.namespace, &config.ca_secret, &ca, None))
        },
    )
    .await?;
    if wrote {
        outcome.written.push(config.ca_secret.clone());
    }
    let ca = stored_key(&ca_secret).ok_or_else(|| CertificateError::Parse {
        what: format!("Secret {}/{}", config.namespace, config.ca_secret),
        reason: format!("has no {CERT_KEY} and {PRIVATE_KEY_KEY}"),
    })?;
    for serving in &config.serving {
        let (_, wrote) = ensure_secret(
            &secrets,
            &serving.secret,
            |secret| usable_serving(secret, &ca, &serving.dns_names, now),
            || {
                let issued = issue_serving_certificate(
                    &ca,
                    &serving.dns_names,
                    now,
                    config.serving_validity,
                )?;
                Ok(tls_secret(
                    &config.namespace,
                    &serving.secret,
                    &issued,
                    Some(&ca.cert_pem),
                ))
            },
        )
        .await?;
        if wrote {
            outcome.written.push(serving.secret.clone());
        }
    }
    outcome.ca_bundle_patched =
        patch_ca_bundle(client, &config.webhook_configuration, &ca.cert_pem).await?;
    if let Some(api_service) = &config.api_service {
        outcome.api_service_patched =
            patch_api_service_ca(client, api_service, &ca.cert_pem).await?;
    }
    Ok(outcome)
}

/// Sets the `caBundle` of the APIService `name` to `ca_pem`, unless it
/// already is. Returns whether it patched.
async fn patch_api_service_ca(
    client: &kube::Client,
    name: &str,
    ca_pem: &str,
) -> Result<bool, CertificateError> {
    let api = Api::<APIService>::all(client.clone());
    let kube_error = |what: &str| {
        let what = format!("{what} APIService {name}");
        move |source| CertificateError::Kube { what, source }
    };
    let service = api.get(name).await.map_err(kube_error("reading"))?;
    let current = service
        .spec
        .as_ref()
        .and_then(|spec| spec.ca_bundle.as_ref())
        .map(|bundle| bundle.0.as_slice());
    if current == Some(ca_pem.as_bytes()) {
        return Ok(false);
    }
    let patch = serde_json::json!({
        "spec": {"caBundle": ByteString(ca_pem.as_bytes().to_vec())},
    });
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(kube_error("patching the caBundle of"))?;
    Ok(true)
}

/// Sets `caBundle` of every webhook in the configuration `name` to
/// `ca_pem`, unless it already is. Returns whether it patched.
async fn patch_ca_bundle(
    client: &kube::Client,
    name: &str,
    ca_pem: &str,
) -> Result<bool, CertificateError> {
    let api = Api::<MutatingWebhookConfiguration>::all(client.clone());
    let kube_error = |what: &str| {
        let what = format!("{what} MutatingWebhookConfiguration {name}");
        move |source| CertificateError::Kube { what, source }
    };
    let configuration = api.get(name).await.map_err(kube_error("reading"))?;
    let stale: Vec<&str> = configuration
        .webhooks
        .iter()
        .flatten()
        .filter(|webhook| {
            webhook
                .client_config
                .ca_bundle
                .as_ref()
                .map(|b| b.0.as_slice())
                != Some(ca_pem.as_bytes())
        })
        .map(|webhook| webhook.name.as_str())
        .collect();
    if stale.is_empty() {
        return Ok(false);
    }
    // Strategic merge: `webhooks` merges by name, so only caBundle changes.
    let bundle = ByteString(ca_pem.as_bytes().to_vec());
    let patch = serde_json::json!({
        "webhooks": stale
            .iter()
            .map(|name| serde_json::json!({"name": name, "clientConfig": {"caBundle": bundle}}))
            .collect::<Vec<_>>(),
    });
    api.patch(name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .map_err(kube_error("patching the caBundle of"))?;
    Ok(true)
}

/// Runs [`ensure_certificates`] now and every `interval` until `shutdown`,
/// retrying sooner after a failure. Logs what it wrote, never a key.
pub async fn run_certificate_manager(
    client: kube::Client,
    config: CertificateConfig,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let retry = interval.min(Duration::from_secs(10));
    loop {
        let wait = match ensure_certificates(&client, &config, OffsetDateTime::now_utc()).await {
            Ok(outcome) => {
                if !outcome.written.is_empty()
                    || outcome.ca_bundle_patched
                    || outcome.api_service_patched
                {
                    tracing::info!(
                        namespace = %config.namespace,
                        written = ?outcome.written,
                        ca_bundle_patched = outcome.ca_bundle_patched,
                        api_service_patched = outcome.api_service_patched,
                        "certificates updated"
                    );
                }
                interval
            }
            Err(error) => {
                tracing::warn!(%error, "could not ensure the certificates; retrying");
                retry
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn names() -> Vec<String> {
        service_dns_names("ferry-webhook", "ferry-system", "cluster.local")
    }

    #[test]
    fn service_dns_names_cover_every_short_form() {
        assert_eq!(
            names(),
            [
                "ferry-webhook",
                "ferry-webhook.ferry-system",
                "ferry-webhook.ferry-system.svc",
                "ferry-webhook.ferry-system.svc.cluster.local"
            ]
        );
    }

    #[test]
    fn issued_certificate_carries_the_names_and_validity_asked_for() {
        let now = OffsetDateTime::now_utc();
        let ca = generate_ca(now, 3650 * DAY).unwrap();
        let served = issue_serving_certificate(&ca, &names(), now, 365 * DAY).unwrap();
        let facts = certificate_facts("served", &served.cert_pem).unwrap();
        assert_eq!(facts.dns_names, names());
        let off = facts.not_after - now - time::Duration::days(365);
        assert!(off.abs() < time::Duration::seconds(2), "{off}");
    }

    #[test]
    fn renewal_is_due_once_two_thirds_of_the_lifetime_passed() {
        let now = OffsetDateTime::now_utc();
        let ca = generate_ca(now, 90 * DAY).unwrap();
        let facts = certificate_facts("ca", &ca.cert_pem).unwrap();
        assert!(!renewal_due(&facts, now));
        assert!(!renewal_due(&facts, now + time::Duration::days(55)));
        assert!(renewal_due(&facts, now + time::Duration::days(61)));
        assert!(renewal_due(&facts, now + time::Duration::days(100)));
    }

    #[test]
    fn serving_secret_is_reissued_when_names_ca_or_age_are_wrong() {
        let now = OffsetDateTime::now_utc();
        let ca = generate_ca(now, 3650 * DAY).unwrap();
        let served = issue_serving_certificate(&ca, &names(), now, 365 * DAY).unwrap();
        let secret = tls_secret("ferry-system", "s", &served, Some(&ca.cert_pem));
        assert!(usable_serving(&secret, &ca, &names(), now));
        assert!(!usable_serving(&secret, &ca, &names()[..2], now));
        let other_ca = generate_ca(now, 3650 * DAY).unwrap();
        assert!(!usable_serving(&secret, &other_ca, &names(), now));
        assert!(!usable_serving(
            &secret,
            &ca,
            &names(),
            now + time::Duration::days(300)
        ));
        let no_ca = tls_secret("ferry-system", "s", &served, None);
        assert!(!usable_serving(&no_ca, &ca, &names(), now));
    }

    #[test]
    fn debug_output_never_shows_the_key() {
        let ca = generate_ca(OffsetDateTime::now_utc(), DAY).unwrap();
        assert!(!format!("{ca:?}").contains("PRIVATE KEY"));
    }
}
