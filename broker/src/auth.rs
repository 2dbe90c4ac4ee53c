//! Who is asking: a pod, proven by its projected service-account token.
//! The token is checked with a TokenReview for the broker's audience; it
//! must be bound to a pod (the pod-name and pod-uid extras), and that pod
//! must exist and not be terminating (a terminating pod may still revoke
//! its leases as it shuts down). Reviews are cached briefly by the
//! SHA-256 of the token, in a bounded map; the pod check is made on every
//! request, from the pod index, so a deleted pod's token stops working at
//! once even while its review is cached.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::Api;
use kube::api::PostParams;
use sha2::{Digest, Sha256};

use super::pods::PodIndex;

/// The user-info extra naming the pod a token is bound to.
pub const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";

/// The user-info extra carrying the uid of the pod a token is bound to.
pub const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";

/// How long a TokenReview may take before the request fails with 503.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);

/// The pod a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodIdentity {
    /// The pod's namespace.
    pub namespace: String,
    /// Its service account.
    pub service_account: String,
    /// The pod's name.
    pub pod_name: String,
    /// The pod's uid.
    pub pod_uid: String,
}

impl PodIdentity {
    /// `system:serviceaccount:<namespace>:<name>`, the token's subject.
    pub fn subject(&self) -> String {
        format!(
            "system:serviceaccount:{}:{}",
            self.namespace, self.service_account
        )
    }
}

/// Why a request is not authenticated. The messages never include the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    #[error(
        "no bearer token: send the pod's projected service-account token as Authorization: Bearer"
    )]
    MissingToken,
    /// The apiserver did not authenticate the token for the broker's audience.
    #[error("token not accepted for audience {audience}: {reason}")]
    NotAuthenticated {
        /// The broker's audience.
        audience: String,
        /// What the TokenReview said.
        reason: String,
    },
    /// Authenticated, but not a service account's token.
    #[error("token does not belong to a service account")]
    NotAServiceAccount,
    /// A service account's token, but not bound to a pod.
    #[error("token is not bound to a pod: use the projected token the ferry webhook mounts")]
    NotPodBound,
    /// The token's pod is gone or terminating.
    #[error("pod {namespace}/{name} no longer exists or is terminating")]
    PodGone {
        /// The pod's namespace.
        namespace: String,
        /// The pod's name.
        name: String,
    },
    /// The TokenReview could not be made.
    #[error("cannot review the token: {0}")]
    Unavailable(String),
}

impl AuthError {
    /// Whether the caller should retry later (503) rather than fix its
    /// credentials (401).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }

    /// A short label for metrics and audit lines.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MissingToken => "missing_token",
            Self::NotAuthenticated { .. } => "not_authenticated",
            Self::NotAServiceAccount => "not_a_service_account",
            Self::NotPodBound => "not_pod_bound",
            Self::PodGone { .. } => "pod_gone",
            Self::Unavailable(_) => "review_unavailable",
        }
    }
}

/// Bounds of the review cache.
#[derive(Debug, Clone, Copy)]
pub struct CacheLimits {
    /// How long a review is reused.
    pub ttl: Duration,
    /// The most tokens remembered at once.
    pub capacity: usize,
}

impl Default for CacheLimits {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(10),
            capacity: 10_000,
        }
    }
}

type Review = Result<PodIdentity, AuthError>;

#[derive(Default)]
struct ReviewCache {
    entries: HashMap<[u8; 32], (Instant, Review)>,
}

/// Authenticates pods by their projected tokens.
pub struct Authenticator {
    reviews: Api<TokenReview>,
    audience: String,
    pods: PodIndex,
    limits: CacheLimits,
    cache: Mutex<ReviewCache>,
}

/// Whether a lookup was answered from the cache, for the hit-ratio metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheUse {
    /// Answered from the cache.
    Hit,
    /// A TokenReview was made.
    Miss,
}

impl Authenticator {
    /// An authenticator for tokens with `audience`, checking pods in `pods`.
    pub fn new(client: kube::Client, audience: &str, pods: PodIndex, limits: CacheLimits) -> Self {
        Self {
            reviews: Api::all(client),
            audience: audience.to_owned(),
            pods,
            limits,
            cache: Mutex::default(),
        }
    }

    /// Authenticates `token`: the pod it was issued to, which must still
    /// exist and not be terminating.
    pub async fn authenticate(&self, token: &str) -> (Result<PodIdentity, AuthError>, CacheUse) {
        self.authenticate_pod(token, false).await
    }

    /// Like [`Self::authenticate`], also accepting a terminating pod: the
    /// sidecar revokes its leases while its pod shuts down.
    pub async fn authenticate_ending(
        &self,
        token: &str,
    ) -> (Result<PodIdentity, AuthError>, CacheUse) {
        self.authenticate_pod(token, true).await
    }

    async fn authenticate_pod(
        &self,
        token: &str,
        terminating_too: bool,
    ) -> (Result<PodIdentity, AuthError>, CacheUse) {
        if token.is_empty() {
            return (Err(AuthError::MissingToken), CacheUse::Miss);
        }
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = Instant::now();
        let cached = {
            let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            cache
                .entries
                .get(&key)
                .filter(|(expires, _)| *expires > now)
                .map(|(_, review)| review.clone())
        };
        let (review, used) = match cached {
            Some(review) => (review, CacheUse::Hit),
            None => {
                let review = self.review(token).await;
                // An unavailable apiserver is not an answer worth keeping.
                if !matches!(review, Err(AuthError::Unavailable(_))) {
                    self.remember(key, now + self.limits.ttl, review.clone());
                }
                (review, CacheUse::Miss)
            }
        };
        let checked = review.and_then(|identity| {
            let known = self
                .pods
                .get(&identity.pod_uid)
                .filter(|pod| pod.namespace == identity.namespace && pod.name == identity.pod_name);
            if known.is_some_and(|pod| terminating_too || !pod.terminating) {
                Ok(identity)
            } else {
                Err(AuthError::PodGone {
                    namespace: identity.namespace,
                    name: identity.pod_name,
                })
            }
        });
        (checked, used)
    }

    fn remember(&self, key: [u8; 32], expires: Instant, review: Review) {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.entries.len() >= self.limits.capacity {
            let now = Instant::now();
            cache.entries.retain(|_, (expires, _)| *expires > now);
            if cache.entries.len() >= self.limits.capacity {
                // Still full of live entries: start over rather than grow.
                cache.entries.clear();
            }
        }
        cache.entries.insert(key, (expires, review));
    }

    async fn review(&self, token: &str) -> Review {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..TokenReview::default()
        };
        let created = tokio::time::timeout(
            REVIEW_TIMEOUT,
            self.reviews.create(&PostParams::default(), &review),
        )
        .await
        .map_err(|_| AuthError::Unavailable(format!("TokenReview took over {REVIEW_TIMEOUT:?}")))?
        .map_err(|error| AuthError::Unavailable(error.to_string()))?;
        let status = created.status.unwrap_or_default();
        let not_authenticated = |reason: String| AuthError::NotAuthenticated {
            audience: self.audience.clone(),
            reason,
        };
        if status.authenticated != Some(true) {
            let reason = status
                .error
                .filter(|error| !error.is_empty())
                .unwrap_or_else(|| "not authenticated".into());
            return Err(not_authenticated(reason));
        }
        if !status
            .audiences
            .unwrap_or_default()
            .contains(&self.audience)
        {
            return Err(not_authenticated("audience not in the token".into()));
        }
        let user = status.user.unwrap_or_default();
        let (namespace, service_account) = user
            .username
            .as_deref()
            .and_then(|name| name.strip_prefix("system:serviceaccount:"))
            .and_then(|rest| rest.split_once(':'))
            .ok_or(AuthError::NotAServiceAccount)?;
        let extra = user.extra.unwrap_or_default();
        let single = |key: &str| {
            extra
                .get(key)
                .and_then(|values| values.first())
                .filter(|value| !value.is_empty())
                .cloned()
        };
        let (Some(pod_name), Some(pod_uid)) = (single(POD_NAME_EXTRA), single(POD_UID_EXTRA))
        else {
            return Err(AuthError::NotPodBound);
        };
        Ok(PodIdentity {
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
            pod_name,
            pod_uid,
        })
    }
}
