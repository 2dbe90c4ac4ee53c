//! The terms of a lease: how long it lives and, for a JWT, its audiences
//! and scopes. A request may ask for less than its Grant allows, never
//! more; a pure function decides, so every rule is unit-tested.

use std::time::Duration;

use ferry_contract::wire::SecretRequest;
use k8s_openapi::jiff::Timestamp;

use ferry_api::duration::{format_duration, parse_duration};
use ferry_api::resources::{BrokeredSecretSpec, GrantSpec};

/// What one lease may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseTerms {
    /// The lease's lifetime from issuance.
    pub ttl: Duration,
    /// When the lease (renewals included) must end at the latest, in Unix
    /// seconds: issuance plus the Grant's maxTtl, or the Grant's
    /// validUntil if that comes first.
    pub max_expires_at: i64,
    /// JWT audiences (empty: not a JWT).
    pub audience: Vec<String>,
    /// JWT scopes.
    pub scopes: Vec<String>,
    /// x509 DNS name templates the certificate carries, rendered by the
    /// provider (empty: not x509, or none allowed).
    pub dns_names: Vec<String>,
}

/// Why a request asks for more than its Grant allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TermsError {
    /// The requested ttl is not a duration.
    #[error("ttl {0:?} is not a duration such as 5m or 1h30m")]
    BadTtl(String),
    /// The requested ttl exceeds the Grant's maxTtl.
    #[error("ttl {asked} is longer than the grant's maxTtl {max}")]
    TtlTooLong {
        /// What was asked.
        asked: String,
        /// What the Grant allows.
        max: String,
    },
    /// Audiences or scopes asked of a secret that has none (neither a
    /// jwt nor an oauth2 source).
    #[error("audience and scopes apply only to jwt and oauth2 secrets")]
    NotAJwt,
    /// Audiences the Grant does not include.
    #[error("audience {0:?} is not granted")]
    AudienceNotGranted(Vec<String>),
    /// Scopes the Grant does not include.
    #[error("scopes {0:?} are not granted")]
    ScopesNotGranted(Vec<String>),
    /// The Grant's validUntil has passed.
    #[error("the grant ended at its validUntil")]
    GrantEnded,
    /// The Grant or secret holds a duration the schema should have refused.
    #[error("the grant or secret holds an invalid duration: {0}")]
    Invalid(String),
}

/// The terms for `request` under `grant` for a secret with `secret`'s spec,
/// issued at `now`.
pub fn lease_terms(
    secret: &BrokeredSecretSpec,
    grant: &GrantSpec,
    request: &SecretRequest,
    now: Timestamp,
) -> Result<LeaseTerms, TermsError> {
    let parse =
        |value: &str| parse_duration(value).map_err(|error| TermsError::Invalid(error.to_string()));
    let max_ttl = parse(&grant.max_ttl)?.min(parse(&secret.max_ttl)?);
    let default_ttl = parse(&secret.ttl)?.min(max_ttl);
    let ttl = match &request.ttl {
        None => default_ttl,
        Some(asked) => {
            let ttl = parse_duration(asked).map_err(|_| TermsError::BadTtl(asked.clone()))?;
            if ttl.is_zero() {
                return Err(TermsError::BadTtl(asked.clone()));
            }
            if ttl > max_ttl {
                return Err(TermsError::TtlTooLong {
                    asked: asked.clone(),
                    max: format_duration(max_ttl),
                });
            }
            ttl
        }
    };

    let seconds = |duration: Duration| i64::try_from(duration.as_secs()).unwrap_or(i64::MAX);
    let mut max_expires_at = now.as_second().saturating_add(seconds(max_ttl));
    if let Some(until) = &grant.valid_until {
        let until = until.0.as_second();
        if until <= now.as_second() {
            return Err(TermsError::GrantEnded);
        }
        max_expires_at = max_expires_at.min(until);
    }
    let ttl = ttl.min(Duration::from_secs(
        u64::try_from(max_expires_at - now.as_second()).unwrap_or(0),
    ));

    let narrowable = secret.source.audience_and_scopes();
    if narrowable.is_none() && (request.audience.is_some() || request.scopes.is_some()) {
        return Err(TermsError::NotAJwt);
    }
    let narrowed = |asked: &Option<Vec<String>>, granted: &[String]| match asked {
        None => Ok(granted.to_vec()),
        Some(asked) => {
            let extra: Vec<String> = asked
                .iter()
                .filter(|value| !granted.contains(value))
                .cloned()
                .collect();
            if extra.is_empty() {
                Ok(asked.clone())
            } else {
                Err(extra)
            }
        }
    };
    // A Grant is a cache of a policy's decision, not an authority: what it
    // names beyond the secret's own audiences and scopes is never issued.
    let (secret_audience, secret_scopes) = narrowable.unwrap_or_default();
    let within = |granted: &[String], allowed: &[String]| -> Vec<String> {
        granted
            .iter()
            .filter(|value| allowed.contains(value))
            .cloned()
            .collect()
    };
    let granted_audience = within(&grant.audience, secret_audience);
    let granted_scopes = within(&grant.scopes, secret_scopes);
    let audience =
        narrowed(&request.audience, &granted_audience).map_err(TermsError::AudienceNotGranted)?;
    let scopes =
        narrowed(&request.scopes, &granted_scopes).map_err(TermsError::ScopesNotGranted)?;
    // The DNS names an x509 certificate may carry: the secret's, as far as
    // the Grant allows (all of them when it does not say).
    let dns_names = secret
        .source
        .x509
        .as_ref()
        .map(|x509| match &grant.dns_names {
            None => x509.dns_names.clone(),
            Some(granted) => within(&x509.dns_names, granted),
        })
        .unwrap_or_default();
    Ok(LeaseTerms {
        ttl,
        max_expires_at,
        audience,
        scopes,
        dns_names,
    })
}

#[cfg(test)]
mod tests {
    use ferry_api::testing;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::json;

    use super::*;

    fn jwt_secret() -> BrokeredSecretSpec {
        testing::brokered_secret("payments", "orders-token")
            .jwt(&["orders", "billing"])
            .scopes(&["read", "write"])
            .spec()
    }

    fn grant(max_ttl: &str) -> GrantSpec {
        testing::grant("shop", "checkout", ("payments", "orders-token"))
            .max_ttl(max_ttl)
            .audience(&["orders"])
            .scopes(&["read"])
            .spec()
    }

    fn request(value: serde_json::Value) -> SecretRequest {
        let mut base = json!({"namespace": "payments", "name": "orders-token"});
        base.as_object_mut()
            .unwrap()
            .extend(value.as_object().unwrap().clone());
        serde_json::from_value(base).unwrap()
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    #[test]
    fn a_certificate_carries_the_secrets_dns_names_as_far_as_the_grant_allows() {
        let secret = testing::brokered_secret("payments", "orders-token")
            .x509("ca")
            .dns_names(&["a.svc", "b.svc"])
            .spec();
        let mut granted = testing::grant("shop", "checkout", ("payments", "orders-token")).spec();
        let terms = lease_terms(&secret, &granted, &request(json!({})), now()).unwrap();
        assert_eq!(terms.dns_names, ["a.svc", "b.svc"]);
        // A Grant naming more than the secret (edited by hand) gains nothing.
        granted.dns_names = Some(vec!["b.svc".into(), "evil.example".into()]);
        let terms = lease_terms(&secret, &granted, &request(json!({})), now()).unwrap();
        assert_eq!(terms.dns_names, ["b.svc"]);
        assert!(
            lease_terms(&jwt_secret(), &grant("30m"), &request(json!({})), now())
                .unwrap()
                .dns_names
                .is_empty()
        );
    }

    #[test]
    fn defaults_are_the_secrets_ttl_and_the_grants_audience_and_scopes() {
        let terms = lease_terms(&jwt_secret(), &grant("30m"), &request(json!({})), now()).unwrap();
        assert_eq!(terms.ttl, Duration::from_secs(15 * 60));
        assert_eq!(terms.max_expires_at, 1_800_000_000 + 30 * 60);
        assert_eq!(terms.audience, ["orders"]);
        assert_eq!(terms.scopes, ["read"]);
    }

    #[test]
    fn the_default_ttl_never_exceeds_the_grants_max() {
        let terms = lease_terms(&jwt_secret(), &grant("5m"), &request(json!({})), now()).unwrap();
        assert_eq!(terms.ttl, Duration::from_secs(5 * 60));
    }

    #[test]
    fn a_request_may_narrow_but_never_widen() {
        let narrower = request(json!({"ttl": "2m", "audience": ["orders"], "scopes": []}));
        let terms = lease_terms(&jwt_secret(), &grant("30m"), &narrower, now()).unwrap();
        assert_eq!(terms.ttl, Duration::from_secs(120));
        assert!(terms.scopes.is_empty());

        for (wider, expected) in [
            (json!({"ttl": "31m"}), "longer than the grant's maxTtl 30m"),
            (json!({"ttl": "0s"}), "is not a duration"),
            (json!({"ttl": "forever"}), "is not a duration"),
            (
                json!({"audience": ["orders", "billing"]}),
                "audience [\"billing\"] is not granted",
            ),
            (
                json!({"scopes": ["write"]}),
                "scopes [\"write\"] are not granted",
            ),
        ] {
            let error = lease_terms(&jwt_secret(), &grant("30m"), &request(wider.clone()), now())
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{wider}: {error}");
        }
    }

    #[test]
    fn a_grant_wider_than_its_secret_issues_only_what_the_secret_has() {
        let mut wide = grant("30m");
        wide.audience = vec!["orders".into(), "admin-api".into()];
        wide.scopes = vec!["read".into(), "superuser".into()];
        let terms = lease_terms(&jwt_secret(), &wide, &request(json!({})), now()).unwrap();
        assert_eq!(terms.audience, ["orders"]);
        assert_eq!(terms.scopes, ["read"]);
        let error = lease_terms(
            &jwt_secret(),
            &wide,
            &request(json!({"audience": ["admin-api"]})),
            now(),
        )
        .unwrap_err();
        assert_eq!(
            error,
            TermsError::AudienceNotGranted(vec!["admin-api".into()])
        );
        let error = lease_terms(
            &jwt_secret(),
            &wide,
            &request(json!({"scopes": ["superuser"]})),
            now(),
        )
        .unwrap_err();
        assert_eq!(
            error,
            TermsError::ScopesNotGranted(vec!["superuser".into()])
        );
    }

    #[test]
    fn audience_asked_of_a_non_jwt_secret_is_refused() {
        let secret = testing::brokered_secret("payments", "api-key")
            .kubernetes_secret("api-key")
            .spec();
        let mut plain = grant("30m");
        plain.audience.clear();
        plain.scopes.clear();
        let error =
            lease_terms(&secret, &plain, &request(json!({"audience": ["x"]})), now()).unwrap_err();
        assert_eq!(error, TermsError::NotAJwt);
        let terms = lease_terms(&secret, &plain, &request(json!({})), now()).unwrap();
        assert!(terms.audience.is_empty());
    }

    #[test]
    fn a_grant_ending_soon_caps_the_lease_and_an_ended_one_refuses() {
        let mut ending = grant("30m");
        ending.valid_until = Some(Time(Timestamp::from_second(1_800_000_060).unwrap()));
        let terms = lease_terms(&jwt_secret(), &ending, &request(json!({})), now()).unwrap();
        assert_eq!(terms.ttl, Duration::from_secs(60));
        assert_eq!(terms.max_expires_at, 1_800_000_060);

        ending.valid_until = Some(Time(now()));
        assert_eq!(
            lease_terms(&jwt_secret(), &ending, &request(json!({})), now()),
            Err(TermsError::GrantEnded)
        );
    }
}
