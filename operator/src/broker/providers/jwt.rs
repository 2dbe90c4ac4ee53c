//! `jwt`: mints a short-lived ES256 JWT for the pod, signed by a key the
//! broker keeps in a Kubernetes Secret. Claims: `iss`, `sub`
//! (`system:serviceaccount:<ns>:<name>`), `aud` (the Grant's audiences, or
//! fewer), `scope`, `iat`, `nbf`, `exp` (at the lease's expiry), `jti`,
//! `pod_uid`, and the secret's own extra claims. The JWKS (`/v1/jwks`)
//! publishes the current and the previous public key, so tokens signed
//! before a rotation still verify.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::{IssueRequest, Issued, Provider, ProviderError};
use crate::broker::lease_id::LeaseClaims;
use crate::resources::JwtAlgorithm;

/// The file a JWT lease writes.
pub const TOKEN_FILE: &str = "token";

/// One ES256 signing key and its public JWK.
struct SigningKey {
    kid: String,
    pair: EcdsaKeyPair,
    jwk: Value,
}

impl SigningKey {
    fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, ProviderError> {
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng)
            .map_err(|_| {
                ProviderError::Invalid("JWT signing key is not a P-256 PKCS#8 key".into())
            })?;
        // An uncompressed point: 0x04, then x and y, 32 bytes each.
        let point = pair.public_key().as_ref();
        let (x, y) = (&point[1..33], &point[33..65]);
        let kid = BASE64URL.encode(&Sha256::digest(point)[..12]);
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
            "x": BASE64URL.encode(x), "y": BASE64URL.encode(y),
        });
        Ok(Self { kid, pair, jwk })
    }
}

/// A new ES256 signing key, as PKCS#8 DER.
pub fn generate_signing_key() -> Result<Zeroizing<Vec<u8>>, ring::error::Unspecified> {
    let document =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())?;
    Ok(Zeroizing::new(document.as_ref().to_vec()))
}

/// The `jwt` provider.
pub struct JwtProvider {
    issuer: String,
    current: SigningKey,
    previous: Vec<SigningKey>,
    rng: SystemRandom,
}

#[derive(Serialize)]
struct Header<'a> {
    alg: &'static str,
    typ: &'static str,
    kid: &'a str,
}

impl JwtProvider {
    /// A provider signing with the PKCS#8 key `current` (and publishing
    /// `previous` too), naming itself `issuer` unless a secret says otherwise.
    pub fn new(issuer: &str, current: &[u8], previous: &[&[u8]]) -> Result<Self, ProviderError> {
        Ok(Self {
            issuer: issuer.to_owned(),
            current: SigningKey::from_pkcs8(current)?,
            previous: previous
                .iter()
                .map(|pkcs8| SigningKey::from_pkcs8(pkcs8))
                .collect::<Result<_, _>>()?,
            rng: SystemRandom::new(),
        })
    }

    /// The default `iss`.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The JWKS document: the current and previous public keys.
    pub fn jwks(&self) -> Value {
        let keys: Vec<&Value> = std::iter::once(&self.current)
            .chain(&self.previous)
            .map(|key| &key.jwk)
            .collect();
        json!({ "keys": keys })
    }

    /// The OpenID discovery document for `jwks_uri`.
    pub fn openid_configuration(&self, jwks_uri: &str) -> Value {
        json!({
            "issuer": self.issuer,
            "jwks_uri": jwks_uri,
            "id_token_signing_alg_values_supported": ["ES256"],
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
        })
    }

    fn mint(&self, request: IssueRequest<'_>) -> Result<Issued, ProviderError> {
        let source = request
            .secret
            .spec
            .source
            .jwt
            .as_ref()
            .ok_or_else(|| ProviderError::Invalid("not a jwt BrokeredSecret".into()))?;
        if source.algorithm != JwtAlgorithm::ES256 {
            return Err(ProviderError::Invalid(
                "algorithm EdDSA is not served by this broker version yet; use ES256".into(),
            ));
        }
        let mut jti = [0u8; 16];
        self.rng
            .fill(&mut jti)
            .map_err(|_| ProviderError::Unavailable("the OS random source failed".into()))?;
        let now = request.now.as_second();
        let mut claims: BTreeMap<String, Value> = source
            .claims
            .iter()
            .map(|(name, value)| (name.clone(), Value::String(value.clone())))
            .collect();
        // The schema forbids extra claims from setting these; set last anyway.
        claims.extend([
            (
                "iss".to_owned(),
                json!(source.issuer.as_deref().unwrap_or(&self.issuer)),
            ),
            ("sub".to_owned(), json!(request.pod.subject())),
            ("aud".to_owned(), json!(request.terms.audience)),
            ("scope".to_owned(), json!(request.terms.scopes.join(" "))),
            ("iat".to_owned(), json!(now)),
            ("nbf".to_owned(), json!(now)),
            ("exp".to_owned(), json!(request.expires_at)),
            ("jti".to_owned(), json!(BASE64URL.encode(jti))),
            ("pod_uid".to_owned(), json!(request.pod.pod_uid)),
        ]);
        let header = Header {
            alg: "ES256",
            typ: "JWT",
            kid: &self.current.kid,
        };
        // Structs of strings and numbers always serialise.
        let header = serde_json::to_vec(&header).unwrap_or_default();
        let claims = serde_json::to_vec(&claims).unwrap_or_default();
        let signing_input = format!("{}.{}", BASE64URL.encode(header), BASE64URL.encode(claims));
        let signature = self
            .current
            .pair
            .sign(&self.rng, signing_input.as_bytes())
            .map_err(|_| ProviderError::Unavailable("signing the JWT failed".into()))?;
        let token = format!("{signing_input}.{}", BASE64URL.encode(signature.as_ref()));
        Ok(Issued {
            files: BTreeMap::from([(TOKEN_FILE.to_owned(), Zeroizing::new(token.into_bytes()))]),
            handle: String::new(),
        })
    }
}

impl Provider for JwtProvider {
    fn kind(&self) -> &'static str {
        "jwt"
    }

    async fn issue(&self, request: IssueRequest<'_>) -> Result<Issued, ProviderError> {
        self.mint(request)
    }

    async fn renew(
        &self,
        request: IssueRequest<'_>,
        _lease: &LeaseClaims,
    ) -> Result<Option<Issued>, ProviderError> {
        // A JWT cannot be extended: renewal is a fresh token.
        self.mint(request).map(Some)
    }

    async fn revoke(
        &self,
        _secret: Option<&crate::resources::BrokeredSecret>,
        _lease: &LeaseClaims,
    ) -> Result<(), ProviderError> {
        // Nothing to take back: the token expires by itself, within its ttl.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwks_publishes_the_current_and_the_previous_key() {
        let (current, previous) = (
            generate_signing_key().unwrap(),
            generate_signing_key().unwrap(),
        );
        let provider = JwtProvider::new("https://broker", &current, &[&previous]).unwrap();
        let jwks = provider.jwks();
        let keys = jwks["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 2);
        assert_ne!(keys[0]["kid"], keys[1]["kid"]);
        for key in keys {
            assert_eq!(key["crv"], "P-256");
            assert_eq!(
                BASE64URL.decode(key["x"].as_str().unwrap()).unwrap().len(),
                32
            );
        }
    }

    #[test]
    fn a_key_that_is_not_p256_pkcs8_is_refused() {
        let error = JwtProvider::new("https://broker", b"not a key", &[])
            .err()
            .unwrap();
        assert!(error.to_string().contains("P-256 PKCS#8"), "{error}");
    }
}
