//! Who is asking: a pod, proven by its projected service-account token.
//! The token is checked with a TokenReview for the broker's audience; it
//! must be bound to a pod (the pod-name and pod-uid extras), and that pod
//! must exist and not be terminating (a terminating pod may still revoke
//! its leases as it shuts down). Reviews are cached briefly by the
//! SHA-256 of the token, in a bounded least-recently-used map; the pod
//! check is made on every request, from the pod index, so a deleted pod's
//! token stops working at once even while its review is cached.
//!
//! A review costs the apiserver work, so nobody gets one for free: a token
//! that is not a JWT, has expired, or names other audiences is refused
//! after a cheap look at its claims (the signature is not checked: the
//! review decides), and reviews are rate-limited, in all and per client
//! address, before they are made.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};

use ferry_api::resources::SecretReference;
use ferry_api::revocation::Holder;
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
    /// Whether the pod's deletion has begun, as the pod index knew when
    /// the request was authenticated (only a revocation is served then).
    pub terminating: bool,
}

impl PodIdentity {
    /// The pod as the holder of `secret`, as Revocations and Grants judge it.
    pub fn holder<'a>(&'a self, secret: &'a SecretReference) -> Holder<'a> {
        Holder {
            namespace: &self.namespace,
            pod: &self.pod_name,
            service_account: &self.service_account,
            secret,
        }
    }

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
    /// Too many tokens to review, from this address or from everyone.
    #[error("too many token reviews {scope}; retry in {retry_after_seconds}s")]
    Throttled {
        /// `from this address` or `in all`.
        scope: &'static str,
        /// When a review may be made again.
        retry_after_seconds: u64,
    },
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
            Self::Throttled { .. } => "review_throttled",
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

/// How many TokenReviews may be made, before any is: in all (what the
/// apiserver is asked to bear) and per client address (so one client cannot
/// take everyone's share).
#[derive(Debug, Clone, Copy)]
pub struct ReviewLimits {
    /// Reviews a second from all clients, with its burst.
    pub global: Quota,
    /// Reviews a second from one address (an IPv6 client by its /64).
    pub per_address: Quota,
}

impl Default for ReviewLimits {
    /// 100 a second in all (bursts of 200), 10 a second per address
    /// (bursts of 20).
    fn default() -> Self {
        let quota = |rate: u32, burst: u32| {
            Quota::per_second(NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN))
                .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN))
        };
        Self {
            global: quota(100, 200),
            per_address: quota(10, 20),
        }
    }
}

/// The review limiters.
struct ReviewLimiters {
    global: DefaultDirectRateLimiter,
    per_address: DefaultKeyedRateLimiter<IpAddr>,
}

impl ReviewLimiters {
    fn new(limits: ReviewLimits) -> Self {
        Self {
            global: governor::RateLimiter::direct(limits.global),
            per_address: governor::RateLimiter::keyed(limits.per_address),
        }
    }

    /// Takes one review from `peer`'s share and then from the global one.
    fn check(&self, peer: Option<IpAddr>) -> Result<(), AuthError> {
        let throttled = |scope, not_until: governor::NotUntil<_>| AuthError::Throttled {
            scope,
            retry_after_seconds: not_until
                .wait_time_from(DefaultClock::default().now())
                .as_secs()
                .max(1),
        };
        if let Some(peer) = peer {
            self.per_address
                .check_key(&address_key(peer))
                .map_err(|not_until| throttled("from this address", not_until))?;
        }
        self.global
            .check()
            .map_err(|not_until| throttled("in all", not_until))
    }
}

/// The key an address is limited by: IPv4 as is, IPv6 by its /64 (one
/// host usually holds a whole /64).
fn address_key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => {
            let mut segments = v6.segments();
            segments[4..].fill(0);
            IpAddr::V6(segments.into())
        }
    }
}

/// Why a token is refused without a review, if it is: not three base64url
/// parts, a header or claims that are not JSON objects, no `exp` in the
/// future, or an `aud` that does not name `audience`. The signature is
/// left to the TokenReview.
pub fn check_token_shape(token: &str, audience: &str, now: SystemTime) -> Result<(), String> {
    /// Far above a projected token (about 1 KiB), far below a header limit.
    const MAX_TOKEN_BYTES: usize = 16 * 1024;
    if token.len() > MAX_TOKEN_BYTES {
        return Err(format!("token is longer than {MAX_TOKEN_BYTES} bytes"));
    }
    let mut parts = token.split('.');
    let (Some(header), Some(claims), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not a JWT (three base64url parts separated by dots)".into());
    };
    let json_object = |part: &str, what: &str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .ok()
            .and_then(|bytes| {
                serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&bytes).ok()
            })
            .ok_or_else(|| format!("not a JWT: its {what} is not a base64url JSON object"))
    };
    json_object(header, "header")?;
    let claims = json_object(claims, "claims")?;
    if signature.is_empty() || URL_SAFE_NO_PAD.decode(signature).is_err() {
        return Err("not a JWT: its signature is not base64url".into());
    }
    let now = now
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64());
    match claims.get("exp").and_then(serde_json::Value::as_f64) {
        Some(exp) if exp > now => {}
        Some(_) => return Err("token has expired".into()),
        None => return Err("token has no exp claim".into()),
    }
    let names_audience = match claims.get("aud") {
        None => true,
        Some(serde_json::Value::String(aud)) => aud == audience,
        Some(serde_json::Value::Array(auds)) => {
            auds.iter().any(|aud| aud.as_str() == Some(audience))
        }
        Some(_) => false,
    };
    if names_audience {
        Ok(())
    } else {
        Err("audience not in the token".into())
    }
}

/// Reviews remembered by token digest, evicting the least recently used
/// when full.
struct ReviewCache {
    capacity: usize,
    entries: HashMap<[u8; 32], CachedReview>,
    // Last use → key; the first entry is the least recently used.
    by_use: BTreeMap<u64, [u8; 32]>,
    uses: u64,
}

struct CachedReview {
    expires: Instant,
    review: Review,
    used: u64,
}

impl ReviewCache {
    fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            entries: HashMap::new(),
            by_use: BTreeMap::new(),
            uses: 0,
        }
    }

    fn tick(&mut self) -> u64 {
        self.uses += 1;
        self.uses
    }

    /// The review of `key` if it has not expired by `now`, marked as used.
    fn get(&mut self, key: &[u8; 32], now: Instant) -> Option<Review> {
        let tick = self.tick();
        let entry = self.entries.get_mut(key)?;
        if entry.expires <= now {
            self.by_use.remove(&entry.used);
            self.entries.remove(key);
            return None;
        }
        self.by_use.remove(&entry.used);
        entry.used = tick;
        self.by_use.insert(tick, *key);
        Some(entry.review.clone())
    }

    fn insert(&mut self, key: [u8; 32], expires: Instant, review: Review) {
        let used = self.tick();
        if let Some(old) = self.entries.remove(&key) {
            self.by_use.remove(&old.used);
        }
        while self.entries.len() >= self.capacity {
            let Some((_, oldest)) = self.by_use.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
        }
        self.entries.insert(
            key,
            CachedReview {
                expires,
                review,
                used,
            },
        );
        self.by_use.insert(used, key);
    }

    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Authenticates pods by their projected tokens.
pub struct Authenticator {
    reviews: Api<TokenReview>,
    audience: String,
    pods: PodIndex,
    limits: CacheLimits,
    cache: Mutex<ReviewCache>,
    limiters: ReviewLimiters,
}

/// Whether a lookup was answered from the cache, for the hit-ratio metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheUse {
    /// Answered from the cache.
    Hit,
    /// A TokenReview was made (or tried).
    Miss,
    /// Refused before any review: not a usable token, or throttled.
    Skipped,
}

impl Authenticator {
    /// An authenticator for tokens with `audience`, checking pods in `pods`.
    pub fn new(client: kube::Client, audience: &str, pods: PodIndex, limits: CacheLimits) -> Self {
        Self {
            reviews: Api::all(client),
            audience: audience.to_owned(),
            pods,
            limits,
            cache: Mutex::new(ReviewCache::new(limits.capacity)),
            limiters: ReviewLimiters::new(ReviewLimits::default()),
        }
    }

    /// Limits the TokenReviews made to `limits` (default
    /// [`ReviewLimits::default`]).
    #[must_use]
    pub fn with_review_limits(mut self, limits: ReviewLimits) -> Self {
        self.limiters = ReviewLimiters::new(limits);
        self
    }

    /// Forgets addresses quiet long enough to be back at a full burst, so
    /// the per-address limiter's memory stays bounded.
    pub fn forget_quiet_addresses(&self) {
        self.limiters.per_address.retain_recent();
    }

    /// Authenticates `token` sent from `peer`, as [`Self::authenticate`]
    /// or, when `terminating_too`, [`Self::authenticate_ending`] do.
    pub async fn authenticate_from(
        &self,
        token: &str,
        peer: Option<IpAddr>,
        terminating_too: bool,
    ) -> (Result<PodIdentity, AuthError>, CacheUse) {
        self.authenticate_pod(token, peer, terminating_too).await
    }

    /// Authenticates `token`: the pod it was issued to, which must still
    /// exist and not be terminating.
    pub async fn authenticate(&self, token: &str) -> (Result<PodIdentity, AuthError>, CacheUse) {
        self.authenticate_pod(token, None, false).await
    }

    /// Like [`Self::authenticate`], also accepting a terminating pod: the
    /// sidecar revokes its leases while its pod shuts down.
    pub async fn authenticate_ending(
        &self,
        token: &str,
    ) -> (Result<PodIdentity, AuthError>, CacheUse) {
        self.authenticate_pod(token, None, true).await
    }

    async fn authenticate_pod(
        &self,
        token: &str,
        peer: Option<IpAddr>,
        terminating_too: bool,
    ) -> (Result<PodIdentity, AuthError>, CacheUse) {
        if token.is_empty() {
            return (Err(AuthError::MissingToken), CacheUse::Miss);
        }
        if let Err(reason) = check_token_shape(token, &self.audience, SystemTime::now()) {
            let refused = AuthError::NotAuthenticated {
                audience: self.audience.clone(),
                reason,
            };
            return (Err(refused), CacheUse::Skipped);
        }
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = Instant::now();
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key, now);
        let (review, used) = match cached {
            Some(review) => (review, CacheUse::Hit),
            None => {
                if let Err(throttled) = self.limiters.check(peer) {
                    return (Err(throttled), CacheUse::Skipped);
                }
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
            if let Some(pod) = known.filter(|pod| terminating_too || !pod.terminating) {
                Ok(PodIdentity {
                    terminating: pod.terminating,
                    ..identity
                })
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
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, expires, review);
    }

    /// How many reviews are cached now.
    pub fn cached_reviews(&self) -> usize {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
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
            terminating: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &serde_json::Value) -> String {
        let part = |value: &serde_json::Value| URL_SAFE_NO_PAD.encode(value.to_string());
        format!(
            "{}.{}.{}",
            part(&serde_json::json!({"alg": "RS256"})),
            part(claims),
            URL_SAFE_NO_PAD.encode(b"not checked here")
        )
    }

    const AUDIENCE: &str = "ferry-broker";

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_000_000)
    }

    #[test]
    fn a_jwt_for_the_audience_that_has_not_expired_goes_on_to_review() {
        for aud in [
            serde_json::json!(AUDIENCE),
            serde_json::json!(["other", AUDIENCE]),
        ] {
            let token = jwt(&serde_json::json!({"exp": 1_000_600, "aud": aud}));
            assert_eq!(check_token_shape(&token, AUDIENCE, now()), Ok(()));
        }
        let no_aud = jwt(&serde_json::json!({"exp": 1_000_600}));
        assert_eq!(check_token_shape(&no_aud, AUDIENCE, now()), Ok(()));
    }

    #[test]
    fn tokens_that_cannot_pass_a_review_are_refused_with_a_reason() {
        let refused = |token: &str| check_token_shape(token, AUDIENCE, now()).unwrap_err();
        assert!(refused("random-garbage").contains("not a JWT"));
        assert!(refused("a.b.c.d").contains("not a JWT"));
        assert!(refused("e30.e30.").contains("signature"));
        assert!(refused("!!.e30.c2ln").contains("header"));
        assert!(refused("e30.W10.c2ln").contains("claims"));
        assert!(refused(&jwt(&serde_json::json!({"exp": 999_999}))).contains("expired"));
        assert!(refused(&jwt(&serde_json::json!({"aud": AUDIENCE}))).contains("no exp"));
        assert!(
            refused(&jwt(
                &serde_json::json!({"exp": 1_000_600, "aud": ["https://kubernetes.default.svc"]})
            ))
            .contains("audience")
        );
        assert!(refused(&"a".repeat(20_000)).contains("longer"));
    }

    #[test]
    fn a_full_cache_evicts_the_least_recently_used_review_only() {
        let mut cache = ReviewCache::new(2);
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        cache.insert([1; 32], later, Err(AuthError::NotPodBound));
        cache.insert([2; 32], later, Err(AuthError::NotAServiceAccount));
        // Using the first makes the second the least recently used.
        assert!(cache.get(&[1; 32], now).is_some());
        cache.insert([3; 32], later, Err(AuthError::MissingToken));
        assert_eq!(cache.len(), 2);
        assert!(cache.get(&[2; 32], now).is_none());
        assert!(cache.get(&[1; 32], now).is_some());
        assert!(cache.get(&[3; 32], now).is_some());
    }

    #[test]
    fn an_expired_review_is_not_answered() {
        let mut cache = ReviewCache::new(2);
        let now = Instant::now();
        cache.insert([1; 32], now, Err(AuthError::NotPodBound));
        assert!(cache.get(&[1; 32], now).is_none());
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn one_address_is_throttled_before_the_global_share_runs_out() {
        let one = |n| Quota::per_hour(NonZeroU32::new(n).unwrap());
        let limiters = ReviewLimiters::new(ReviewLimits {
            global: one(3),
            per_address: one(2),
        });
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        assert!(limiters.check(Some(a)).is_ok());
        assert!(limiters.check(Some(a)).is_ok());
        let error = limiters.check(Some(a)).unwrap_err();
        assert!(error.to_string().contains("from this address"), "{error}");
        assert!(limiters.check(Some(b)).is_ok());
        let error = limiters.check(Some(b)).unwrap_err();
        assert!(error.to_string().contains("in all"), "{error}");
    }

    #[test]
    fn ipv6_clients_are_limited_by_their_64() {
        let one: IpAddr = "2001:db8:1:2:3:4:5:6".parse().unwrap();
        let same: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
        assert_eq!(address_key(one), address_key(same));
    }
}
