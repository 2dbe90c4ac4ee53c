//! The read-only API of live leases (`ferry_contract::lease_api`), served
//! to the apiserver's aggregation layer on a port of its own.
//!
//! Who is asking: the apiserver's service proxy strips a caller's
//! credentials before it forwards a request, so a plain proxied call
//! carries no identity, and a bearer token sent straight to the broker
//! would leave out every kubeconfig that authenticates with a client
//! certificate or an exec plugin. So the API is an aggregated API (an
//! `APIService` for `leases.ferry.dev/v1alpha1`): the apiserver
//! authenticates the caller however it is configured to, authorizes the
//! request (`list liveleases.leases.ferry.dev`), and forwards it with the
//! caller's name and groups in the request headers, over a TLS connection
//! on which it presents its front-proxy client certificate. This port
//! accepts only connections whose client certificate the front-proxy CA
//! signed, with a common name among the allowed names — all read from the
//! ConfigMap `kube-system/extension-apiserver-authentication`, as every
//! aggregated API server reads them — so those headers are believed only
//! from the apiserver.
//!
//! What the caller sees: a lease is shown only if a SubjectAccessReview
//! says the caller may `get` BrokeredSecrets in the lease's secret's
//! namespace (cached for a few seconds per caller and namespace). Only
//! names, times, the source kind and the serial leave: never a lease id,
//! a provider handle or any material.
//!
//! Each replica answers from its own [`crate::lease_book::LeaseBook`]: the
//! leases it issued, renewed or watches for a sidecar.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ferry_contract::lease_api::{self, LiveLeaseItem, LiveLeaseList};
use ferry_runtime::https::{ReloadingCertificate, json_error};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::PostParams;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DistinguishedName, RootCertStore, ServerConfig, SignatureScheme};
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{HeaderMap, StatusCode};
use warp::reply::{Reply, Response};

use crate::lease_book::LiveLease;
use crate::routes::BrokerState;

/// The ConfigMap the apiserver publishes its front-proxy settings in.
pub const AUTHENTICATION_CONFIG_MAP: (&str, &str) =
    ("kube-system", "extension-apiserver-authentication");

/// How long one SubjectAccessReview's answer is reused.
const REVIEW_TTL: Duration = Duration::from_secs(10);

/// Cached answers are dropped whole past this many, so callers cannot
/// grow the cache without bound.
const REVIEW_CACHE_MAX: usize = 4096;

/// Why the lease API cannot start or answer.
#[derive(Debug, thiserror::Error)]
pub enum LeaseApiError {
    /// The front-proxy settings could not be read.
    #[error(
        "reading ConfigMap kube-system/extension-apiserver-authentication (the apiserver's \
         front-proxy CA; the broker needs the Role extension-apiserver-authentication-reader): {0}"
    )]
    Settings(String),
    /// The TLS configuration could not be built.
    #[error("lease API TLS: {0}")]
    Tls(String),
}

/// How the apiserver's aggregation layer identifies itself and its callers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontProxy {
    /// The CA that signs the apiserver's front-proxy client certificate (PEM).
    pub ca_pem: String,
    /// Common names the client certificate may have; empty: any.
    pub allowed_names: Vec<String>,
    /// Headers naming the user (the first present one counts).
    pub username_headers: Vec<String>,
    /// Headers naming the groups (each value one group).
    pub group_headers: Vec<String>,
    /// Prefixes of headers carrying the user's extra attributes.
    pub extra_prefixes: Vec<String>,
}

impl FrontProxy {
    /// Reads the settings the apiserver publishes for aggregated APIs.
    pub async fn from_cluster(client: &kube::Client) -> Result<Self, LeaseApiError> {
        let (namespace, name) = AUTHENTICATION_CONFIG_MAP;
        let map = Api::<ConfigMap>::namespaced(client.clone(), namespace)
            .get(name)
            .await
            .map_err(|error| LeaseApiError::Settings(error.to_string()))?;
        Self::from_data(&map.data.unwrap_or_default())
    }

    /// Reads the settings from the ConfigMap's data.
    pub fn from_data(data: &BTreeMap<String, String>) -> Result<Self, LeaseApiError> {
        let list = |key: &str| -> Result<Vec<String>, LeaseApiError> {
            match data.get(key) {
                None => Ok(Vec::new()),
                Some(text) => serde_json::from_str(text)
                    .map_err(|error| LeaseApiError::Settings(format!("{key}: {error}"))),
            }
        };
        let ca_pem = data
            .get("requestheader-client-ca-file")
            .cloned()
            .ok_or_else(|| {
                LeaseApiError::Settings(
                    "no requestheader-client-ca-file: the apiserver runs without \
                     --requestheader-client-ca-file, so it cannot aggregate APIs"
                        .into(),
                )
            })?;
        Ok(Self {
            ca_pem,
            allowed_names: list("requestheader-allowed-names")?,
            username_headers: list("requestheader-username-headers")?,
            group_headers: list("requestheader-group-headers")?,
            extra_prefixes: list("requestheader-extra-headers-prefix")?,
        })
    }

    /// A TLS configuration serving `certificate` that accepts only
    /// clients with a certificate of the front-proxy CA and an allowed
    /// common name.
    pub fn server_config(
        &self,
        certificate: Arc<ReloadingCertificate>,
    ) -> Result<ServerConfig, LeaseApiError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for der in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            let der = der.map_err(|e| LeaseApiError::Tls(format!("front-proxy CA: {e}")))?;
            roots
                .add(der)
                .map_err(|e| LeaseApiError::Tls(format!("front-proxy CA: {e}")))?;
        }
        let inner =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                .build()
                .map_err(|e| LeaseApiError::Tls(e.to_string()))?;
        let verifier = Arc::new(AllowedNames {
            inner,
            allowed: self.allowed_names.clone(),
        });
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| LeaseApiError::Tls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(certificate);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }

    /// The caller the apiserver vouches for in `headers`, if it names one.
    pub fn caller(&self, headers: &HeaderMap) -> Option<Caller> {
        let values = |name: &str| -> Vec<String> {
            headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(str::to_owned)
                .collect()
        };
        let user = self
            .username_headers
            .iter()
            .find_map(|name| values(name).into_iter().find(|v| !v.is_empty()))?;
        let groups = self
            .group_headers
            .iter()
            .flat_map(|name| values(name))
            .collect();
        let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, value) in headers {
            let name = name.as_str();
            let prefix = self.extra_prefixes.iter().find(|prefix| {
                name.len() > prefix.len() && name[..prefix.len()].eq_ignore_ascii_case(prefix)
            });
            if let (Some(prefix), Ok(value)) = (prefix, value.to_str()) {
                let key = unescape(&name[prefix.len()..].to_ascii_lowercase());
                extra.entry(key).or_default().push(value.to_owned());
            }
        }
        Some(Caller {
            user,
            groups,
            extra,
        })
    }
}

/// Percent-decoding of extra header names, as the apiserver encodes them.
fn unescape(name: &str) -> String {
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match decoded {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The WebPKI client verifier, also requiring an allowed common name.
#[derive(Debug)]
struct AllowedNames {
    inner: Arc<dyn ClientCertVerifier>,
    allowed: Vec<String>,
}

impl ClientCertVerifier for AllowedNames {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if self.allowed.is_empty() {
            return Ok(verified);
        }
        let (_, certificate) = x509_parser::parse_x509_certificate(end_entity.as_ref())
            .map_err(|_| rustls::Error::General("unreadable client certificate".into()))?;
        let allowed = certificate
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok())
            .any(|cn| self.allowed.iter().any(|name| name == cn));
        if allowed {
            Ok(verified)
        } else {
            Err(rustls::Error::General(
                "client certificate's common name is not among the front-proxy's allowed names"
                    .into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A caller as the apiserver authenticated it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Caller {
    /// The username.
    pub user: String,
    /// Its groups.
    pub groups: Vec<String>,
    /// Its extra attributes.
    pub extra: BTreeMap<String, Vec<String>>,
}

/// The leases of `leases` in namespaces `may_see` allows (and in
/// `namespace`, when one is asked for), as the API shows them.
pub fn visible(
    leases: &[LiveLease],
    namespace: Option<&str>,
    may_see: impl Fn(&str) -> bool,
) -> Vec<LiveLeaseItem> {
    let mut items: Vec<LiveLeaseItem> = leases
        .iter()
        .filter(|lease| namespace.is_none_or(|ns| lease.claims.secret_namespace == ns))
        .filter(|lease| may_see(&lease.claims.secret_namespace))
        .map(|lease| LiveLeaseItem {
            serial: lease.claims.serial(),
            kind: lease.kind.to_owned(),
            secret_namespace: lease.claims.secret_namespace.clone(),
            secret_name: lease.claims.secret_name.clone(),
            pod_namespace: lease.pod_namespace.clone(),
            pod_name: lease.pod_name.clone(),
            pod_uid: lease.claims.pod_uid.clone(),
            service_account: lease.service_account.clone(),
            issued_at: lease.claims.issued_at,
            expires_at: lease.claims.expires_at,
            max_expires_at: lease.claims.max_expires_at,
        })
        .collect();
    items.sort_by(|a, b| (a.expires_at, &a.serial).cmp(&(b.expires_at, &b.serial)));
    items
}

/// The lease API's state: the broker's, and the answers of recent reviews.
pub struct LeaseApi {
    state: Arc<BrokerState>,
    client: kube::Client,
    front_proxy: FrontProxy,
    replica: String,
    reviews: Mutex<HashMap<(Caller, String), (bool, Instant)>>,
}

impl LeaseApi {
    /// The API over `state`'s lease book, asking `client`'s apiserver for
    /// SubjectAccessReviews.
    pub fn new(state: Arc<BrokerState>, client: kube::Client, front_proxy: FrontProxy) -> Self {
        Self {
            state,
            client,
            front_proxy,
            replica: ferry_runtime::leader::default_identity(),
            reviews: Mutex::default(),
        }
    }

    /// Whether `caller` may `get` BrokeredSecrets in `namespace`.
    async fn may_get_secrets(&self, caller: &Caller, namespace: &str) -> Result<bool, kube::Error> {
        let key = (caller.clone(), namespace.to_owned());
        if let Some((allowed, at)) = self
            .reviews
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .copied()
            && at.elapsed() < REVIEW_TTL
        {
            return Ok(allowed);
        }
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(caller.user.clone()),
                groups: Some(caller.groups.clone()),
                extra: Some(caller.extra.clone()),
                resource_attributes: Some(ResourceAttributes {
                    group: Some(ferry_contract::API_GROUP.to_owned()),
                    resource: Some("brokeredsecrets".to_owned()),
                    verb: Some("get".to_owned()),
                    namespace: Some(namespace.to_owned()),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let answer = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await?;
        let allowed = answer.status.is_some_and(|s| s.allowed);
        let mut reviews = self.reviews.lock().unwrap_or_else(PoisonError::into_inner);
        if reviews.len() >= REVIEW_CACHE_MAX {
            reviews.clear();
        }
        reviews.insert(key, (allowed, Instant::now()));
        Ok(allowed)
    }

    async fn list(&self, headers: &HeaderMap, namespace: Option<String>) -> Response {
        let Some(caller) = self.front_proxy.caller(headers) else {
            return json_error(
                StatusCode::UNAUTHORIZED,
                "no user in the request: this API is served through the apiserver \
                 (kubectl ferry leases, or GET /apis/leases.ferry.dev/v1alpha1/...)",
            );
        };
        let now = k8s_openapi::jiff::Timestamp::now().as_second();
        let leases = self.state.broker.lease_book.list(now);
        let mut namespaces: Vec<&str> = leases
            .iter()
            .map(|lease| lease.claims.secret_namespace.as_str())
            .filter(|ns| namespace.as_deref().is_none_or(|wanted| wanted == *ns))
            .collect();
        namespaces.sort_unstable();
        namespaces.dedup();
        let mut allowed = Vec::new();
        for ns in namespaces {
            match self.may_get_secrets(&caller, ns).await {
                Ok(true) => allowed.push(ns.to_owned()),
                Ok(false) => {}
                Err(error) => {
                    return json_error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!(
                            "cannot ask the apiserver what {} may see: {error}",
                            caller.user
                        ),
                    );
                }
            }
        }
        let items = visible(&leases, namespace.as_deref(), |ns| {
            allowed.iter().any(|a| a == ns)
        });
        tracing::info!(user = %caller.user, namespace = ?namespace, shown = items.len(), "live leases listed");
        warp::reply::json(&LiveLeaseList {
            api_version: format!("{}/{}", lease_api::GROUP, lease_api::VERSION),
            kind: lease_api::LIST_KIND.to_owned(),
            items,
            replica: self.replica.clone(),
        })
        .into_response()
    }
}

/// The discovery document of the group version.
fn discovery() -> serde_json::Value {
    serde_json::json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": format!("{}/{}", lease_api::GROUP, lease_api::VERSION),
        "resources": [{
            "name": lease_api::RESOURCE,
            "singularName": "livelease",
            "namespaced": true,
            "kind": "LiveLease",
            "verbs": ["list"],
            "categories": ["ferry"],
        }],
    })
}

/// The lease API's routes.
pub fn lease_api_routes(api: Arc<LeaseApi>) -> BoxedFilter<(Response,)> {
    let with_api = warp::any().map(move || Arc::clone(&api));
    let group = warp::path("apis")
        .and(warp::path(lease_api::GROUP))
        .and(warp::path(lease_api::VERSION));
    let discovery = group
        .and(warp::path::end())
        .and(warp::get())
        .map(|| warp::reply::json(&discovery()).into_response());
    let all = group
        .and(warp::path(lease_api::RESOURCE))
        .and(warp::path::end())
        .and(warp::get())
        .and(warp::header::headers_cloned())
        .and(with_api.clone())
        .then(
            |headers: HeaderMap, api: Arc<LeaseApi>| async move { api.list(&headers, None).await },
        );
    let namespaced = group
        .and(warp::path("namespaces"))
        .and(warp::path::param::<String>())
        .and(warp::path(lease_api::RESOURCE))
        .and(warp::path::end())
        .and(warp::get())
        .and(warp::header::headers_cloned())
        .and(with_api)
        .then(
            |namespace: String, headers: HeaderMap, api: Arc<LeaseApi>| async move {
                api.list(&headers, Some(namespace)).await
            },
        );
    discovery
        .or(all)
        .unify()
        .or(namespaced)
        .unify()
        .recover(|rejection: warp::Rejection| async move {
            Ok::<_, std::convert::Infallible>(ferry_runtime::https::rejection_reply(
                &rejection,
                "GET /apis/leases.ferry.dev/v1alpha1[/namespaces/{namespace}]/liveleases",
                0,
            ))
        })
        .unify()
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use warp::http::HeaderValue;

    fn front_proxy() -> FrontProxy {
        FrontProxy::from_data(&BTreeMap::from([
            ("requestheader-client-ca-file".to_owned(), "PEM".to_owned()),
            (
                "requestheader-allowed-names".to_owned(),
                r#"["front-proxy-client"]"#.to_owned(),
            ),
            (
                "requestheader-username-headers".to_owned(),
                r#"["X-Remote-User"]"#.to_owned(),
            ),
            (
                "requestheader-group-headers".to_owned(),
                r#"["X-Remote-Group"]"#.to_owned(),
            ),
            (
                "requestheader-extra-headers-prefix".to_owned(),
                r#"["X-Remote-Extra-"]"#.to_owned(),
            ),
        ]))
        .unwrap()
    }

    #[test]
    fn the_caller_is_read_from_the_front_proxys_headers() {
        let mut headers = HeaderMap::new();
        headers.insert("x-remote-user", HeaderValue::from_static("alice"));
        headers.append("x-remote-group", HeaderValue::from_static("secops"));
        headers.append(
            "x-remote-group",
            HeaderValue::from_static("system:authenticated"),
        );
        headers.insert(
            "x-remote-extra-scopes%2fread",
            HeaderValue::from_static("yes"),
        );
        let caller = front_proxy().caller(&headers).unwrap();
        assert_eq!(caller.user, "alice");
        assert_eq!(caller.groups, ["secops", "system:authenticated"]);
        assert_eq!(caller.extra["scopes/read"], ["yes"]);
        assert_eq!(front_proxy().caller(&HeaderMap::new()), None);
    }

    fn lease(secret_namespace: &str, serial: &str, expires_at: i64) -> LiveLease {
        LiveLease {
            claims: crate::lease_id::LeaseClaims {
                version: 1,
                secret_namespace: secret_namespace.into(),
                secret_name: "orders-db".into(),
                pod_uid: "uid-1".into(),
                handle: "ferry_role_handle".into(),
                issued_at: 100,
                expires_at,
                max_expires_at: 3700,
                audience: vec![],
                scopes: None,
                // Serials are 32 hex digits.
                serial: serial.repeat(32),
            },
            kind: "postgres",
            pod_namespace: "shop".into(),
            pod_name: "checkout-1".into(),
            service_account: "checkout".into(),
        }
    }

    #[test]
    fn only_leases_of_namespaces_the_caller_may_see_are_shown_and_never_a_handle() {
        let leases = [
            lease("payments", "b", 900),
            lease("ledger", "c", 600),
            lease("payments", "a", 300),
        ];
        let shown = visible(&leases, None, |ns| ns == "payments");
        let serials: Vec<&str> = shown.iter().map(|i| &i.serial[..1]).collect();
        assert_eq!(serials, ["a", "b"], "soonest expiry first");
        assert!(
            !serde_json::to_string(&shown)
                .unwrap()
                .contains("ferry_role_handle")
        );
        assert!(visible(&leases, Some("ledger"), |ns| ns == "payments").is_empty());
        assert_eq!(visible(&leases, Some("ledger"), |_| true).len(), 1);
    }

    #[test]
    fn settings_without_a_ca_say_the_apiserver_cannot_aggregate() {
        let error = FrontProxy::from_data(&BTreeMap::new()).unwrap_err();
        assert!(
            error.to_string().contains("--requestheader-client-ca-file"),
            "{error}"
        );
    }
}
