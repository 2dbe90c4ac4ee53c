//! `jwt`: mints a short-lived JWT for the pod, ES256 by default or EdDSA
//! (Ed25519) as the BrokeredSecret's `algorithm` says, signed by a key the
//! broker keeps in a Kubernetes Secret (see [`crate::jwt_keys`]).
//! Claims: `iss`, `sub` (`system:serviceaccount:<ns>:<name>`), `aud` (the
//! Grant's audiences, or fewer), `scope`, `iat`, `nbf`, `exp` (at the
//! lease's expiry), `jti`, `pod_uid`, `ferry.dev/secret` (the
//! BrokeredSecret, `<namespace>/<name>`, which no spec can set, so tokens of
//! two namespaces minted with the same settings differ), and the secret's
//! own extra claims. A token with no audience is never minted.
//! The JWKS (`/v1/jwks`) publishes, for each algorithm, the key that signs
//! and the keys that are about to sign or signed until the last rotation,
//! so tokens verify across a rotation. Kids are RFC 7638 thumbprints.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::{IssueRequest, Issued, Provider, ProviderError};
use crate::auth::PodIdentity;
use crate::lease_id::LeaseClaims;
use ferry_api::resources::JwtAlgorithm;

/// The file a JWT lease writes.
pub const TOKEN_FILE: &str = "token";

/// The JOSE `alg` of an algorithm.
pub fn jose_name(algorithm: JwtAlgorithm) -> &'static str {
    match algorithm {
        JwtAlgorithm::ES256 => "ES256",
        JwtAlgorithm::EdDSA => "EdDSA",
    }
}

enum Pair {
    Es256(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

/// One signing key and its public JWK.
pub struct SigningKey {
    kid: String,
    pair: Pair,
    jwk: Value,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.jwk["alg"])
            .field("kid", &self.kid)
            .finish()
    }
}

impl SigningKey {
    /// The key for `algorithm` in PKCS#8 DER (v1 or v2 for Ed25519).
    pub fn from_pkcs8(algorithm: JwtAlgorithm, pkcs8: &[u8]) -> Result<Self, ProviderError> {
        match algorithm {
            JwtAlgorithm::ES256 => {
                let pair = EcdsaKeyPair::from_pkcs8(
                    &ECDSA_P256_SHA256_FIXED_SIGNING,
                    pkcs8,
                    &SystemRandom::new(),
                )
                .map_err(|_| {
                    ProviderError::Invalid("JWT signing key is not a P-256 PKCS#8 key".into())
                })?;
                // An uncompressed point: 0x04, then x and y, 32 bytes each.
                let point = pair.public_key().as_ref();
                let (x, y) = (
                    BASE64URL.encode(&point[1..33]),
                    BASE64URL.encode(&point[33..65]),
                );
                // RFC 7638: the required members, in lexicographic order.
                let kid = thumbprint(&format!(
                    r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#
                ));
                let jwk = json!({
                    "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
                    "x": x, "y": y,
                });
                Ok(Self {
                    kid,
                    pair: Pair::Es256(pair),
                    jwk,
                })
            }
            JwtAlgorithm::EdDSA => {
                let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8).map_err(|_| {
                    ProviderError::Invalid("JWT signing key is not an Ed25519 PKCS#8 key".into())
                })?;
                let x = BASE64URL.encode(pair.public_key().as_ref());
                let kid = thumbprint(&format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#));
                let jwk = json!({
                    "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": kid,
                    "x": x,
                });
                Ok(Self {
                    kid,
                    pair: Pair::Ed25519(pair),
                    jwk,
                })
            }
        }
    }

    /// The key id: its RFC 7638 JWK thumbprint.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK.
    pub fn jwk(&self) -> &Value {
        &self.jwk
    }

    fn sign(&self, rng: &SystemRandom, message: &[u8]) -> Result<Vec<u8>, ProviderError> {
        match &self.pair {
            Pair::Es256(pair) => pair
                .sign(rng, message)
                .map(|signature| signature.as_ref().to_vec())
                .map_err(|_| ProviderError::Unavailable("signing the JWT failed".into())),
            Pair::Ed25519(pair) => Ok(pair.sign(message).as_ref().to_vec()),
        }
    }
}

fn thumbprint(canonical_jwk: &str) -> String {
    BASE64URL.encode(Sha256::digest(canonical_jwk.as_bytes()))
}

/// A new signing key for `algorithm`, as PKCS#8 DER.
pub fn generate_key(
    algorithm: JwtAlgorithm,
) -> Result<Zeroizing<Vec<u8>>, ring::error::Unspecified> {
    let rng = SystemRandom::new();
    let document = match algorithm {
        JwtAlgorithm::ES256 => {
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)?
        }
        JwtAlgorithm::EdDSA => Ed25519KeyPair::generate_pkcs8(&rng)?,
    };
    Ok(Zeroizing::new(document.as_ref().to_vec()))
}

/// A new ES256 signing key, as PKCS#8 DER.
pub fn generate_signing_key() -> Result<Zeroizing<Vec<u8>>, ring::error::Unspecified> {
    generate_key(JwtAlgorithm::ES256)
}

/// One algorithm's keys: the one that signs, and the others published.
#[derive(Debug)]
struct AlgorithmKeys {
    signing: SigningKey,
    published: Vec<SigningKey>,
}

/// The broker's signing keys: for each algorithm it serves, the key that
/// signs and the keys only published (the next and the previous).
#[derive(Debug, Default)]
pub struct SigningKeys {
    es256: Option<AlgorithmKeys>,
    eddsa: Option<AlgorithmKeys>,
}

impl SigningKeys {
    /// No keys: no algorithm is served.
    pub fn new() -> Self {
        Self::default()
    }

    /// These keys, with `algorithm` signing with the PKCS#8 key `signing`
    /// and publishing `published` too.
    pub fn with_algorithm(
        mut self,
        algorithm: JwtAlgorithm,
        signing: &[u8],
        published: &[&[u8]],
    ) -> Result<Self, ProviderError> {
        let keys = AlgorithmKeys {
            signing: SigningKey::from_pkcs8(algorithm, signing)?,
            published: published
                .iter()
                .map(|pkcs8| SigningKey::from_pkcs8(algorithm, pkcs8))
                .collect::<Result<_, _>>()?,
        };
        *self.slot(algorithm) = Some(keys);
        Ok(self)
    }

    fn slot(&mut self, algorithm: JwtAlgorithm) -> &mut Option<AlgorithmKeys> {
        match algorithm {
            JwtAlgorithm::ES256 => &mut self.es256,
            JwtAlgorithm::EdDSA => &mut self.eddsa,
        }
    }

    fn get(&self, algorithm: JwtAlgorithm) -> Option<&AlgorithmKeys> {
        match algorithm {
            JwtAlgorithm::ES256 => self.es256.as_ref(),
            JwtAlgorithm::EdDSA => self.eddsa.as_ref(),
        }
    }

    fn served(&self) -> impl Iterator<Item = (JwtAlgorithm, &AlgorithmKeys)> {
        [JwtAlgorithm::ES256, JwtAlgorithm::EdDSA]
            .into_iter()
            .filter_map(|algorithm| Some((algorithm, self.get(algorithm)?)))
    }

    /// The kid that signs for `algorithm`, if it is served.
    pub fn signing_kid(&self, algorithm: JwtAlgorithm) -> Option<&str> {
        self.get(algorithm).map(|keys| keys.signing.kid())
    }

    /// Every published kid, signing ones first within each algorithm.
    pub fn kids(&self) -> Vec<&str> {
        self.served()
            .flat_map(|(_, keys)| std::iter::once(&keys.signing).chain(&keys.published))
            .map(SigningKey::kid)
            .collect()
    }
}

/// Where a [`JwtProvider`] reads its keys from; replacing them here takes
/// effect for the next token and the next JWKS request.
#[derive(Clone, Default)]
pub struct JwtKeyHandle(Arc<RwLock<Arc<SigningKeys>>>);

impl JwtKeyHandle {
    /// The keys in use now (cheap: an `Arc` clone under a read lock).
    pub fn load(&self) -> Arc<SigningKeys> {
        Arc::clone(&self.0.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Makes `keys` the keys in use.
    pub fn replace(&self, keys: SigningKeys) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
    }
}

/// The `jwt` provider.
pub struct JwtProvider {
    issuer: String,
    keys: JwtKeyHandle,
    rng: SystemRandom,
}

#[derive(Serialize)]
struct Header<'a> {
    alg: &'static str,
    typ: &'static str,
    kid: &'a str,
}

impl JwtProvider {
    /// A provider signing ES256 with the PKCS#8 key `current` (and
    /// publishing `previous` too), naming itself `issuer` unless a secret
    /// says otherwise. It serves no EdDSA.
    pub fn new(issuer: &str, current: &[u8], previous: &[&[u8]]) -> Result<Self, ProviderError> {
        Ok(Self::with_keys(
            issuer,
            SigningKeys::new().with_algorithm(JwtAlgorithm::ES256, current, previous)?,
        ))
    }

    /// A provider signing with `keys`, naming itself `issuer` unless a
    /// secret says otherwise.
    pub fn with_keys(issuer: &str, keys: SigningKeys) -> Self {
        let handle = JwtKeyHandle::default();
        handle.replace(keys);
        Self {
            issuer: issuer.to_owned(),
            keys: handle,
            rng: SystemRandom::new(),
        }
    }

    /// The handle through which rotated keys are swapped in.
    pub fn key_handle(&self) -> JwtKeyHandle {
        self.keys.clone()
    }

    /// What mints identity tokens with these keys and this issuer.
    pub fn identity_tokens(&self) -> IdentityTokens {
        IdentityTokens {
            issuer: self.issuer.clone(),
            keys: self.keys.clone(),
            rng: SystemRandom::new(),
        }
    }

    /// The default `iss`.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The JWKS document: every published public key.
    pub fn jwks(&self) -> Value {
        let keys = self.keys.load();
        let jwks: Vec<&Value> = keys
            .served()
            .flat_map(|(_, keys)| std::iter::once(&keys.signing).chain(&keys.published))
            .map(SigningKey::jwk)
            .collect();
        json!({ "keys": jwks })
    }

    /// The OpenID discovery document for `jwks_uri`.
    pub fn openid_configuration(&self, jwks_uri: &str) -> Value {
        let algorithms: Vec<&str> = self
            .keys
            .load()
            .served()
            .map(|(algorithm, _)| jose_name(algorithm))
            .collect();
        json!({
            "issuer": self.issuer,
            "jwks_uri": jwks_uri,
            "id_token_signing_alg_values_supported": algorithms,
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
        let jti = random_jti(&self.rng)?;
        let secret_namespace = request
            .secret
            .metadata
            .namespace
            .as_deref()
            .unwrap_or_default();
        let secret_name = request.secret.metadata.name.as_deref().unwrap_or_default();
        if request.terms.audience.is_empty() {
            // A token without `aud` is accepted by any relying party that
            // skips the check: never mint one.
            return Err(ProviderError::Invalid(format!(
                "BrokeredSecret {secret_namespace}/{secret_name}: a token needs at least one \
                 audience; ask for a non-empty subset of the granted audiences"
            )));
        }
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
            ("jti".to_owned(), json!(jti)),
            ("pod_uid".to_owned(), json!(request.pod.pod_uid)),
            (
                ferry_contract::SECRET_CLAIM.to_owned(),
                json!(format!("{secret_namespace}/{secret_name}")),
            ),
        ]);
        let token = sign(&self.keys.load(), source.algorithm, &self.rng, &claims)?;
        Ok(Issued {
            files: BTreeMap::from([(TOKEN_FILE.to_owned(), Zeroizing::new(token.into_bytes()))]),
            // The token's id: what a revocation publishes.
            handle: format!("{HANDLE_PREFIX}{jti}"),
            variables: Default::default(),
            expires_at: None,
        })
    }
}

/// Marks a jwt lease's handle, followed by its current token's `jti`.
pub const HANDLE_PREFIX: &str = "jwt:";

/// A fresh `jti`: 128 random bits, base64url.
fn random_jti(rng: &SystemRandom) -> Result<String, ProviderError> {
    let mut jti = [0u8; 16];
    rng.fill(&mut jti)
        .map_err(|_| ProviderError::Unavailable("the OS random source failed".into()))?;
    Ok(BASE64URL.encode(jti))
}

/// `claims` as a compact JWS signed by `algorithm`'s signing key.
fn sign(
    keys: &SigningKeys,
    algorithm: JwtAlgorithm,
    rng: &SystemRandom,
    claims: &BTreeMap<String, Value>,
) -> Result<String, ProviderError> {
    let key = &keys
        .get(algorithm)
        .ok_or_else(|| {
            ProviderError::Invalid(format!(
                "this broker has no {} signing key",
                jose_name(algorithm)
            ))
        })?
        .signing;
    let header = Header {
        alg: jose_name(algorithm),
        typ: "JWT",
        kid: key.kid(),
    };
    // Structs of strings and numbers always serialise.
    let header = serde_json::to_vec(&header).unwrap_or_default();
    let claims = serde_json::to_vec(claims).unwrap_or_default();
    let signing_input = format!("{}.{}", BASE64URL.encode(header), BASE64URL.encode(claims));
    let signature = key.sign(rng, signing_input.as_bytes())?;
    Ok(format!("{signing_input}.{}", BASE64URL.encode(signature)))
}

/// How long an identity token is valid: long enough for one exchange.
pub const IDENTITY_TOKEN_LIFETIME: i64 = 60;

/// Mints the JWTs that name a pod to an authorization server (the subject
/// token of an RFC 8693 exchange), with the `jwt` provider's ES256 keys and
/// issuer, so a server trusts them through the broker's JWKS.
#[derive(Clone)]
pub struct IdentityTokens {
    issuer: String,
    keys: JwtKeyHandle,
    rng: SystemRandom,
}

impl std::fmt::Debug for IdentityTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityTokens")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl IdentityTokens {
    /// A token naming `pod`, for `audience` alone, about BrokeredSecret
    /// `secret` (`<namespace>/<name>`), valid [`IDENTITY_TOKEN_LIFETIME`]
    /// from `now`: `iss`, `sub` (`system:serviceaccount:<ns>:<name>`),
    /// `aud`, `iat`, `nbf`, `exp`, `jti`, `pod_uid`, `pod`
    /// (`<namespace>/<name>`) and `ferry.dev/secret`.
    pub fn mint(
        &self,
        pod: &PodIdentity,
        audience: &str,
        secret: &str,
        now: i64,
    ) -> Result<Zeroizing<String>, ProviderError> {
        let claims = BTreeMap::from([
            ("iss".to_owned(), json!(self.issuer)),
            ("sub".to_owned(), json!(pod.subject())),
            ("aud".to_owned(), json!(audience)),
            ("iat".to_owned(), json!(now)),
            ("nbf".to_owned(), json!(now)),
            ("exp".to_owned(), json!(now + IDENTITY_TOKEN_LIFETIME)),
            ("jti".to_owned(), json!(random_jti(&self.rng)?)),
            ("pod_uid".to_owned(), json!(pod.pod_uid)),
            (
                "pod".to_owned(),
                json!(format!("{}/{}", pod.namespace, pod.pod_name)),
            ),
            (ferry_contract::SECRET_CLAIM.to_owned(), json!(secret)),
        ]);
        sign(&self.keys.load(), JwtAlgorithm::ES256, &self.rng, &claims).map(Zeroizing::new)
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
        _secret: Option<&ferry_api::resources::BrokeredSecret>,
        _lease: &LeaseClaims,
    ) -> Result<(), ProviderError> {
        // Nothing to take back: the token expires by itself, within its ttl.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use jsonwebtoken::{Algorithm, DecodingKey, Validation};
    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use crate::auth::PodIdentity;
    use crate::terms::LeaseTerms;
    use ferry_api::resources::BrokeredSecret;
    use ferry_api::testing;

    fn keys_for_both(published: usize) -> SigningKeys {
        let mut keys = SigningKeys::new();
        for algorithm in [JwtAlgorithm::ES256, JwtAlgorithm::EdDSA] {
            let signing = generate_key(algorithm).unwrap();
            let others: Vec<Zeroizing<Vec<u8>>> = (0..published)
                .map(|_| generate_key(algorithm).unwrap())
                .collect();
            let others: Vec<&[u8]> = others.iter().map(|k| k.as_slice()).collect();
            keys = keys.with_algorithm(algorithm, &signing, &others).unwrap();
        }
        keys
    }

    fn secret(algorithm: JwtAlgorithm) -> BrokeredSecret {
        testing::brokered_secret("payments", "orders-jwt")
            .jwt(&["orders"])
            .scopes(&["read"])
            .claim("team", "payments")
            .algorithm(algorithm)
            .build()
    }

    /// Pod `shop/api` of service account `checkout`.
    fn checkout_pod() -> PodIdentity {
        PodIdentity {
            namespace: "shop".into(),
            service_account: "checkout".into(),
            pod_name: "api".into(),
            pod_uid: "uid-1".into(),
            terminating: false,
        }
    }

    /// Mints a token with `provider` for a pod of `shop/checkout`.
    fn mint(provider: &JwtProvider, algorithm: JwtAlgorithm) -> Result<String, ProviderError> {
        let secret = secret(algorithm);
        let pod = checkout_pod();
        let now = Timestamp::now();
        let terms = LeaseTerms {
            ttl: Duration::from_secs(600),
            max_expires_at: now.as_second() + 3600,
            audience: vec!["orders".into()],
            scopes: vec!["read".into()],
            dns_names: vec![],
        };
        let issued = provider.mint(IssueRequest {
            secret: &secret,
            pod: &pod,
            terms: &terms,
            now,
            expires_at: now.as_second() + 600,
            csr: None,
        })?;
        Ok(String::from_utf8(issued.files[TOKEN_FILE].to_vec()).unwrap())
    }

    /// Verifies `token` as a relying party would: the JWK with its kid
    /// from the JWKS, the algorithm the JWK names.
    fn verify(jwks: &Value, token: &str) -> jsonwebtoken::errors::Result<Value> {
        let kid = jsonwebtoken::decode_header(token)?.kid.unwrap();
        let jwk = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|key| key["kid"] == kid.as_str())
            .ok_or(jsonwebtoken::errors::ErrorKind::InvalidKeyFormat)?;
        let (key, algorithm) = match jwk["kty"].as_str().unwrap() {
            "EC" => (
                DecodingKey::from_ec_components(
                    jwk["x"].as_str().unwrap(),
                    jwk["y"].as_str().unwrap(),
                )?,
                Algorithm::ES256,
            ),
            _ => (
                DecodingKey::from_ed_components(jwk["x"].as_str().unwrap())?,
                Algorithm::EdDSA,
            ),
        };
        let mut validation = Validation::new(algorithm);
        validation.set_audience(&["orders"]);
        validation.set_issuer(&["https://broker"]);
        jsonwebtoken::decode::<Value>(token, &key, &validation).map(|data| data.claims)
    }

    #[test]
    fn an_identity_token_names_the_pod_for_one_audience_and_a_minute() {
        let provider = JwtProvider::with_keys("https://broker", keys_for_both(0));
        let pod = checkout_pod();
        let now = Timestamp::now().as_second();
        let token = provider
            .identity_tokens()
            .mint(&pod, "orders", "payments/crm", now)
            .unwrap();
        let claims = verify(&provider.jwks(), &token).unwrap();
        assert_eq!(claims["sub"], "system:serviceaccount:shop:checkout");
        assert_eq!(claims["aud"], "orders");
        assert_eq!(claims["pod"], "shop/api");
        assert_eq!(claims["pod_uid"], "uid-1");
        assert_eq!(claims[ferry_contract::SECRET_CLAIM], "payments/crm");
        assert_eq!(claims["exp"], now + IDENTITY_TOKEN_LIFETIME);
        assert_eq!(
            jsonwebtoken::decode_header(&token).unwrap().alg,
            Algorithm::ES256
        );
        let other = provider
            .identity_tokens()
            .mint(&pod, "orders", "payments/crm", now)
            .unwrap();
        assert_ne!(
            verify(&provider.jwks(), &other).unwrap()["jti"],
            claims["jti"],
            "every token has its own jti"
        );
    }

    #[test]
    fn jwks_publishes_every_key_of_every_algorithm_with_its_shape() {
        let provider = JwtProvider::with_keys("https://broker", keys_for_both(2));
        let jwks = provider.jwks();
        let keys = jwks["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 6);
        let kids: std::collections::BTreeSet<&str> =
            keys.iter().map(|k| k["kid"].as_str().unwrap()).collect();
        assert_eq!(kids.len(), 6, "kids are distinct");
        for key in &keys[..3] {
            assert_eq!(
                key.as_object().unwrap().keys().collect::<Vec<_>>(),
                ["alg", "crv", "kid", "kty", "use", "x", "y"]
            );
            assert_eq!(
                (&key["kty"], &key["crv"], &key["alg"]),
                (&json!("EC"), &json!("P-256"), &json!("ES256"))
            );
            assert_eq!(key["use"], "sig");
            assert_eq!(
                BASE64URL.decode(key["x"].as_str().unwrap()).unwrap().len(),
                32
            );
            assert_eq!(
                BASE64URL.decode(key["y"].as_str().unwrap()).unwrap().len(),
                32
            );
        }
        for key in &keys[3..] {
            assert_eq!(
                key.as_object().unwrap().keys().collect::<Vec<_>>(),
                ["alg", "crv", "kid", "kty", "use", "x"]
            );
            assert_eq!(
                (&key["kty"], &key["crv"], &key["alg"]),
                (&json!("OKP"), &json!("Ed25519"), &json!("EdDSA"))
            );
            assert_eq!(
                BASE64URL.decode(key["x"].as_str().unwrap()).unwrap().len(),
                32
            );
        }
        assert_eq!(
            provider.openid_configuration("https://broker/v1/jwks")["id_token_signing_alg_values_supported"],
            json!(["ES256", "EdDSA"])
        );
    }

    #[test]
    fn kids_are_rfc7638_thumbprints() {
        // RFC 8037, appendix A.3: the thumbprint of its Ed25519 example key.
        let x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
        assert_eq!(
            thumbprint(&format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#)),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
        // And a key's kid is stable across loads.
        let pkcs8 = generate_key(JwtAlgorithm::EdDSA).unwrap();
        assert_eq!(
            SigningKey::from_pkcs8(JwtAlgorithm::EdDSA, &pkcs8)
                .unwrap()
                .kid(),
            SigningKey::from_pkcs8(JwtAlgorithm::EdDSA, &pkcs8)
                .unwrap()
                .kid()
        );
    }

    #[test]
    fn tokens_of_each_algorithm_verify_against_the_jwks_with_the_claims() {
        let provider = JwtProvider::with_keys("https://broker", keys_for_both(1));
        for (algorithm, alg) in [
            (JwtAlgorithm::ES256, "ES256"),
            (JwtAlgorithm::EdDSA, "EdDSA"),
        ] {
            let token = mint(&provider, algorithm).unwrap();
            let header = jsonwebtoken::decode_header(&token).unwrap();
            assert_eq!(format!("{:?}", header.alg), alg);
            assert_eq!(
                header.kid.as_deref(),
                provider.key_handle().load().signing_kid(algorithm)
            );
            let claims = verify(&provider.jwks(), &token).unwrap();
            assert_eq!(claims["sub"], "system:serviceaccount:shop:checkout");
            assert_eq!(claims["aud"], json!(["orders"]));
            assert_eq!(claims["scope"], "read");
            assert_eq!(claims["team"], "payments");
            assert_eq!(claims["pod_uid"], "uid-1");
            assert_eq!(
                claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
                600
            );
        }
    }

    #[test]
    fn a_token_signed_before_a_rotation_verifies_until_its_key_drops_out() {
        let [next, current, newer] = [0, 1, 2].map(|_| generate_key(JwtAlgorithm::EdDSA).unwrap());
        let provider = JwtProvider::with_keys(
            "https://broker",
            SigningKeys::new()
                .with_algorithm(JwtAlgorithm::EdDSA, &current, &[&next])
                .unwrap(),
        );
        let token = mint(&provider, JwtAlgorithm::EdDSA).unwrap();
        // Rotation: next signs, current is previous, a newer key is next.
        provider.key_handle().replace(
            SigningKeys::new()
                .with_algorithm(JwtAlgorithm::EdDSA, &next, &[&newer, &current])
                .unwrap(),
        );
        let after = mint(&provider, JwtAlgorithm::EdDSA).unwrap();
        assert_ne!(
            jsonwebtoken::decode_header(&after).unwrap().kid,
            jsonwebtoken::decode_header(&token).unwrap().kid
        );
        verify(&provider.jwks(), &token).unwrap();
        verify(&provider.jwks(), &after).unwrap();
        // One rotation later the old key is gone, and so is its token.
        provider.key_handle().replace(
            SigningKeys::new()
                .with_algorithm(JwtAlgorithm::EdDSA, &newer, &[&next])
                .unwrap(),
        );
        assert!(verify(&provider.jwks(), &token).is_err());
        verify(&provider.jwks(), &after).unwrap();
    }

    #[test]
    fn an_algorithm_without_keys_is_refused_by_name() {
        let provider =
            JwtProvider::new("https://broker", &generate_signing_key().unwrap(), &[]).unwrap();
        let error = mint(&provider, JwtAlgorithm::EdDSA).unwrap_err();
        assert_eq!(error.to_string(), "this broker has no EdDSA signing key");
        mint(&provider, JwtAlgorithm::ES256).unwrap();
    }

    #[test]
    fn a_key_of_the_wrong_kind_is_refused() {
        let error = JwtProvider::new("https://broker", b"not a key", &[])
            .err()
            .unwrap();
        assert!(error.to_string().contains("P-256 PKCS#8"), "{error}");
        let ed25519 = generate_key(JwtAlgorithm::EdDSA).unwrap();
        assert!(SigningKey::from_pkcs8(JwtAlgorithm::ES256, &ed25519).is_err());
        let p256 = generate_key(JwtAlgorithm::ES256).unwrap();
        let error = SigningKey::from_pkcs8(JwtAlgorithm::EdDSA, &p256).unwrap_err();
        assert!(error.to_string().contains("Ed25519 PKCS#8"), "{error}");
    }
}
