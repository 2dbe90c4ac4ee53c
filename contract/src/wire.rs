//! The broker's HTTP API as JSON types, shared by the broker and the
//! sidecar. Plain serde types: the sidecar links no Kubernetes crate.
//!
//! ```text
//! POST   /v1/leases              LeaseRequest  -> LeasesResponse
//! POST   /v1/leases/{id}/renew   RenewRequest  -> LeasesResponse (one lease)
//! DELETE /v1/leases/{id}                       -> 204
//! POST   /v1/leases/watch        WatchRequest  -> WatchResponse (held until
//!                                                 a revocation or the wait)
//! GET    /v1/jwks/revoked                      -> RevokedTokens
//! errors                                       -> ErrorResponse
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Path of the issue endpoint.
pub const LEASES_PATH: &str = "/v1/leases";

/// Path of the revocation watch.
pub const WATCH_PATH: &str = "/v1/leases/watch";

/// How long the broker holds a watch when the sidecar does not say.
pub const DEFAULT_WATCH_SECONDS: u64 = 60;

/// The longest a watch is held, whatever the sidecar asks.
pub const MAX_WATCH_SECONDS: u64 = 300;

/// An ECDSA P-256 key, in [`KeyRequired::algorithm`].
pub const KEY_ECDSA_P256: &str = "ecdsa-p256";

/// An Ed25519 key, in [`KeyRequired::algorithm`].
pub const KEY_ED25519: &str = "ed25519";

/// A BrokeredSecret by namespace and name.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    /// Namespace of the BrokeredSecret.
    pub namespace: String,
    /// Name of the BrokeredSecret.
    pub name: String,
}

/// One secret a pod asks for, optionally narrower than its Grant allows.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretRequest {
    /// Namespace of the BrokeredSecret.
    pub namespace: String,
    /// Name of the BrokeredSecret.
    pub name: String,
    /// A shorter lifetime than the Grant's, such as `5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// A subset of the Grant's JWT audiences.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<Vec<String>>,
    /// A subset of the Grant's JWT scopes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    /// For a certificate: a PKCS #10 CSR for a key the pod made, DER in
    /// base64. The broker answers 422 with [`ErrorDetail::keys_required`]
    /// when a secret needs one and none was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csr: Option<String>,
}

/// `POST /v1/leases/{id}/renew`: what a renewal sends (may be `{}`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RenewRequest {
    /// For a certificate: a CSR for a new key, as in [`SecretRequest::csr`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csr: Option<String>,
}

/// `POST /v1/leases`: the secrets a pod wants now.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LeaseRequest {
    /// What to issue, one lease each.
    pub secrets: Vec<SecretRequest>,
}

/// One issued credential.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Lease {
    /// Opaque, self-describing id for renewal and revocation.
    pub id: String,
    /// The secret this lease is for.
    pub secret: SecretRef,
    /// File name to content, base64-encoded. Secret material: never log it.
    pub files: BTreeMap<String, String>,
    /// Lifetime from issuance, in seconds.
    pub ttl: u64,
    /// Seconds from issuance after which to renew (about two thirds of ttl).
    pub renew_after: u64,
    /// When the credential stops working (RFC 3339, UTC).
    pub expires_at: String,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The files are secret material; only their names are shown.
        f.debug_struct("Lease")
            .field("id", &self.id)
            .field("secret", &self.secret)
            .field("files", &self.files.keys().collect::<Vec<_>>())
            .field("ttl", &self.ttl)
            .field("renew_after", &self.renew_after)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// The answer to an issue or renew request.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct LeasesResponse {
    /// One lease per requested secret, in request order.
    pub leases: Vec<Lease>,
}

/// `POST /v1/leases/watch`: the pod's live leases, to hear at once when
/// one of them is revoked.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WatchRequest {
    /// The ids of the leases the pod holds.
    pub leases: Vec<String>,
    /// How long to hold the request when nothing is revoked (default
    /// [`DEFAULT_WATCH_SECONDS`], at most [`MAX_WATCH_SECONDS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_seconds: Option<u64>,
}

/// The answer to a watch: the secrets the pod may no longer have (its
/// leases of them are revoked; wipe their files), or none when the wait
/// ended first.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct WatchResponse {
    /// The secrets whose leases are revoked.
    pub revoked: Vec<SecretRef>,
}

/// `GET /v1/jwks/revoked`: the ids of revoked tokens the broker minted that
/// have not yet expired, for relying parties that check.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct RevokedTokens {
    /// One entry per revoked token.
    pub revoked: Vec<RevokedToken>,
}

/// One revoked token.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RevokedToken {
    /// Its `jti` claim.
    pub jti: String,
    /// Its `exp` claim: after it, the token is refused anyway.
    pub exp: i64,
}

/// Every error the broker answers with.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ErrorResponse {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The body of an [`ErrorResponse`].
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ErrorDetail {
    /// The HTTP status code.
    pub code: u16,
    /// What to fix, for an operator.
    pub message: String,
    /// With 422: the secrets that need a CSR, and for which key type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys_required: Vec<KeyRequired>,
}

/// A secret that is a certificate: the pod must make a key and send a CSR.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct KeyRequired {
    /// The secret.
    pub secret: SecretRef,
    /// The key type: [`KEY_ECDSA_P256`] or [`KEY_ED25519`].
    pub algorithm: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_prints_its_file_names_but_never_their_content() {
        let lease = Lease {
            id: "id".into(),
            secret: SecretRef {
                namespace: "payments".into(),
                name: "orders-db".into(),
            },
            files: BTreeMap::from([("password".into(), "c2VjcmV0LXZhbHVl".into())]),
            ttl: 900,
            renew_after: 600,
            expires_at: "2026-11-23T13:00:00Z".into(),
        };
        let printed = format!("{lease:?}");
        assert!(printed.contains("password"));
        assert!(!printed.contains("c2VjcmV0LXZhbHVl"));
    }

    #[test]
    fn requests_with_unknown_fields_are_refused() {
        let error = serde_json::from_str::<LeaseRequest>(
            r#"{"secrets": [{"namespace": "a", "name": "b", "tll": "5m"}]}"#,
        )
        .unwrap_err();
        assert!(error.to_string().contains("unknown field `tll`"), "{error}");
    }
}
