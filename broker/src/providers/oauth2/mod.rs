//! `oauth2`: access tokens for a third-party API, acquired by the broker
//! from the API's authorization server with credentials only the broker
//! holds (a client secret, an assertion-signing key, a refresh token in
//! custody), or on the pod's own behalf (RFC 8693 token exchange: the
//! broker presents a JWT naming the pod, signed with its JWKS keys). A pod
//! gets the access token alone, narrowed to its lease's scopes and
//! audiences: those are the token request's parameters, so the server
//! itself issues the narrower token.
//!
//! Upstream load is bounded three ways: a per-BrokeredSecret rate limit
//! (`requestsPerMinute`), a pause when the server answers 429 or 5xx (as
//! long as its `Retry-After` says, else a second), and with
//! `tokenSharing: Shared`, one cached token per (secret, scopes,
//! audiences) that concurrent requests wait for instead of each asking.
//!
//! A `PerLease` token is revoked upstream (RFC 7009, when the secret names
//! a `revocationUrl`) when its lease is revoked, when its pod goes away
//! without revoking (the reaper), and a minute after a renewal replaced it.
//! The handle in the lease id is the token sealed under the lease key (see
//! [`crate::seal`]), so any replica can revoke it. What this replica must
//! still revoke (pods that may vanish, replaced tokens, revocations that
//! failed) it remembers until the token expires; a replica that restarts
//! forgets, and those tokens die at their expiry instead. A `Shared` token
//! is never revoked at a pod's end: other pods hold it.

pub mod custody;
pub mod token;
pub mod upstream;

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::IntCounter;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use k8s_openapi::jiff::Timestamp;
use zeroize::Zeroizing;

use self::custody::Custody;
use self::token::{Client, Refused, Token};
use self::upstream::{Endpoint, Form};
use super::jwt::IdentityTokens;
use super::secret_reader::SecretReader;
use super::{Files, IssueRequest, Issued, Provider, ProviderError, ReapContext, Reaped};
use crate::lease_id::LeaseClaims;
use crate::pods::PodPresence;
use crate::seal::Seal;
use ferry_api::checks::oauth2_keys;
use ferry_api::duration::parse_duration;
use ferry_api::resources::{
    BrokeredSecret, ClientAuthentication, OAuth2Grant, OAuth2Source, TokenSharing,
};

/// How an `oauth2` lease's handle (its sealed token) begins.
pub const HANDLE_PREFIX: &str = "oauth2:";

/// How long a token a renewal replaced stays valid before it is revoked:
/// the pod's app may be finishing a request with it.
pub const SUPERSEDED_GRACE: i64 = 60;

/// The file names a lease gets.
pub const ACCESS_TOKEN_FILE: &str = "access_token";
/// The token's type, such as `Bearer`.
pub const TOKEN_TYPE_FILE: &str = "token_type";
/// When the token expires, RFC 3339.
pub const EXPIRES_AT_FILE: &str = "expires_at";

/// The most tokens this replica remembers to revoke; beyond it, tokens
/// are left to expire (and the sidecar still revokes its own).
const MAX_OUTSTANDING: usize = 65_536;

/// The most (secret, scopes, audiences) keys of shared tokens kept.
const MAX_SHARED_KEYS: usize = 4096;

/// The shortest lease of a shared token; one that would be shorter waits
/// for a fresh token.
const MIN_SHARED_LEASE: i64 = 10;

/// The longest a request waits for the rate limit before it is told to
/// retry.
const MAX_RATE_WAIT: Duration = Duration::from_secs(2);

/// The pause after a 429 or 5xx without `Retry-After`.
const DEFAULT_PAUSE: Duration = Duration::from_secs(1);

/// A BrokeredSecret by namespace and name.
type SecretKey = (String, String);

/// A shared token's key: the secret, and the sorted scopes and audiences.
type SharedKey = (String, String, Vec<String>, Vec<String>);

/// The provider.
pub struct OAuth2Provider {
    reader: Arc<SecretReader>,
    identity: IdentityTokens,
    custody: Custody,
    seal: Seal,
    shared: Mutex<HashMap<SharedKey, Arc<SharedCell>>>,
    upstreams: Mutex<HashMap<SecretKey, Upstream>>,
    outstanding: Mutex<HashMap<String, Outstanding>>,
    requests: IntCounter,
}

impl std::fmt::Debug for OAuth2Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuth2Provider")
            .field("requests", &self.requests.get())
            .finish_non_exhaustive()
    }
}

/// One BrokeredSecret's upstream budget.
struct Upstream {
    per_minute: u32,
    limiter: Arc<DefaultDirectRateLimiter>,
    /// No request before this (the server asked for a pause).
    paused_until: Option<Instant>,
}

/// A shared token and who is fetching it.
#[derive(Default)]
struct SharedCell {
    /// Fetches started, so a request that waited through a failed fetch
    /// takes its error instead of asking again at once.
    fetches: AtomicU64,
    slot: tokio::sync::Mutex<SharedSlot>,
}

#[derive(Default)]
struct SharedSlot {
    token: Option<Arc<IssuedToken>>,
    /// The last fetch's number and error, when it failed.
    failed: Option<(u64, ProviderError)>,
}

/// A token as leases get it.
struct IssuedToken {
    access_token: Zeroizing<String>,
    token_type: String,
    issued_at: i64,
    expires_at: i64,
    /// The scopes granted (space-separated).
    scope: String,
}

impl IssuedToken {
    /// `token` as leases get it; the scopes `asked` when the server did
    /// not say which it granted (RFC 6749 5.1: then they are those).
    fn from_token(token: &Token, asked: &[String]) -> Self {
        Self {
            access_token: token.access_token.clone(),
            token_type: token.token_type.clone(),
            issued_at: token.issued_at,
            expires_at: token.expires_at,
            scope: token.scope.clone().unwrap_or_else(|| asked.join(" ")),
        }
    }

    /// When a lease of this shared token ends: `min_remaining` before it
    /// expires, or halfway through a lifetime shorter than twice that.
    fn usable_until(&self, min_remaining: i64) -> i64 {
        let margin = min_remaining.min((self.expires_at - self.issued_at) / 2);
        self.expires_at - margin
    }

    /// Whether a lease handed out at `now` would last [`MIN_SHARED_LEASE`].
    fn fresh(&self, min_remaining: i64, now: i64) -> bool {
        self.usable_until(min_remaining) - now >= MIN_SHARED_LEASE
    }
}

/// Scopes that grant no API access (OpenID Connect's): a token may carry
/// them beyond the lease's scopes.
const META_SCOPES: [&str; 2] = ["openid", "offline_access"];

/// The token's granted scopes must be within the lease's: a server that
/// did not narrow as asked (Hydra ignores `scope` on a refresh) gets its
/// token refused, never handed out wider.
fn within_lease(token: &IssuedToken, request: IssueRequest<'_>) -> Result<(), ProviderError> {
    let allowed = &request.terms.scopes;
    if allowed.is_empty() {
        return Ok(());
    }
    let wider: Vec<&str> = token
        .scope
        .split(' ')
        .filter(|scope| !scope.is_empty())
        .filter(|scope| !META_SCOPES.contains(scope) && !allowed.iter().any(|a| a == scope))
        .collect();
    if wider.is_empty() {
        return Ok(());
    }
    Err(ProviderError::Refused(format!(
        "the authorization server granted scopes {wider:?} beyond the lease's {allowed:?} \
         (it did not narrow the token; a refresh-token grant is not narrowed by Hydra and \
         others): the token was not handed out"
    )))
}

/// A token this replica must still revoke upstream.
#[derive(Debug, Clone)]
struct Outstanding {
    namespace: String,
    name: String,
    pod_uid: String,
    /// When the token expires: nothing to do after.
    expires_at: i64,
    /// Revoke at this time whatever the pod does (a replaced token, or a
    /// revocation that failed).
    revoke_at: Option<i64>,
}

impl OAuth2Provider {
    /// A provider reading credentials with `reader`, naming pods to
    /// servers with `identity` (token exchange), keeping refresh tokens
    /// with `custody`, sealing handles with `seal`, counting its token
    /// requests on `requests`.
    pub fn new(
        reader: Arc<SecretReader>,
        identity: IdentityTokens,
        custody: Custody,
        seal: Seal,
        requests: IntCounter,
    ) -> Self {
        Self {
            reader,
            identity,
            custody,
            seal,
            shared: Mutex::default(),
            upstreams: Mutex::default(),
            outstanding: Mutex::default(),
            requests,
        }
    }

    /// A token for `request`, the lease's handle, and when the lease ends.
    async fn token_for(
        &self,
        request: IssueRequest<'_>,
        source: &OAuth2Source,
    ) -> Result<(Arc<IssuedToken>, String, i64), ProviderError> {
        let min_remaining = parse_duration(&source.min_remaining_lifetime)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .map_err(|error| {
                ProviderError::Invalid(format!("spec.source.oauth2.minRemainingLifetime: {error}"))
            })?;
        let terms = request.terms;
        if source.grant == OAuth2Grant::TokenExchange
            && source.token_sharing == TokenSharing::Shared
        {
            return Err(ProviderError::Invalid(
                "spec.source.oauth2: a TokenExchange token names one pod and cannot be shared \
                 (set tokenSharing: PerLease)"
                    .into(),
            ));
        }
        if source.token_sharing == TokenSharing::Shared || source.grant == OAuth2Grant::RefreshToken
        {
            // A refresh token makes one access token at a time: asked for
            // with the secret's scopes, shared by every lease it covers.
            let (scopes, audience) = match source.grant {
                OAuth2Grant::RefreshToken => (&source.scopes, &source.audience),
                OAuth2Grant::ClientCredentials | OAuth2Grant::TokenExchange => {
                    (&terms.scopes, &terms.audience)
                }
            };
            let token = self
                .shared_token(request.secret, source, scopes, audience, min_remaining)
                .await?;
            within_lease(&token, request)?;
            let ends = token.usable_until(min_remaining);
            return Ok((token, String::new(), ends));
        }
        let token = Arc::new(
            self.fetch(
                request.secret,
                source,
                &terms.scopes,
                &terms.audience,
                min_remaining,
                Some(request),
            )
            .await?,
        );
        let handle = match &source.revocation_url {
            None => String::new(),
            Some(_) => {
                let sealed = self
                    .seal
                    .seal(token.access_token.as_bytes())
                    .map_err(|error| ProviderError::Unavailable(error.to_string()))?;
                let handle = format!("{HANDLE_PREFIX}{sealed}");
                self.remember(
                    &handle,
                    Outstanding {
                        namespace: namespace_of(request.secret).to_owned(),
                        name: name_of(request.secret).to_owned(),
                        pod_uid: request.pod.pod_uid.clone(),
                        expires_at: token.expires_at,
                        revoke_at: None,
                    },
                );
                handle
            }
        };
        if let Err(error) = within_lease(&token, request) {
            // Never handed out: revoked at once where the server can.
            if !handle.is_empty() {
                let _ = self
                    .revoke_upstream(source, namespace_of(request.secret), &handle)
                    .await;
                self.forget(&handle);
            }
            return Err(error);
        }
        Ok((Arc::clone(&token), handle, token.expires_at))
    }

    /// The shared token of (secret, `scopes`, `audience`): the cached one
    /// while a lease of it can still last [`MIN_SHARED_LEASE`] and end
    /// `min_remaining` before it expires, else one fetch for all who ask
    /// meanwhile.
    async fn shared_token(
        &self,
        secret: &BrokeredSecret,
        source: &OAuth2Source,
        scopes: &[String],
        audience: &[String],
        min_remaining: i64,
    ) -> Result<Arc<IssuedToken>, ProviderError> {
        let mut sorted_scopes = scopes.to_vec();
        sorted_scopes.sort();
        let mut sorted_audience = audience.to_vec();
        sorted_audience.sort();
        let key = (
            namespace_of(secret).to_owned(),
            name_of(secret).to_owned(),
            sorted_scopes,
            sorted_audience,
        );
        let cell = {
            let mut shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
            if shared.len() >= MAX_SHARED_KEYS && !shared.contains_key(&key) {
                // Cells nobody is using; a cached token is only a saving.
                shared.retain(|_, cell| Arc::strong_count(cell) > 1);
            }
            Arc::clone(shared.entry(key).or_default())
        };
        let waited_from = cell.fetches.load(Ordering::Acquire);
        let mut slot = cell.slot.lock().await;
        if let Some(token) = &slot.token
            && token.fresh(min_remaining, Timestamp::now().as_second())
        {
            return Ok(Arc::clone(token));
        }
        if let Some((fetch, error)) = &slot.failed
            && *fetch > waited_from
        {
            // A fetch made while this request waited failed: asking again
            // at once would double the load on a failing server.
            return Err(error.clone());
        }
        let fetch = cell.fetches.fetch_add(1, Ordering::AcqRel) + 1;
        match self
            .fetch(secret, source, scopes, audience, min_remaining, None)
            .await
        {
            Ok(token) => {
                let token = Arc::new(token);
                slot.token = Some(Arc::clone(&token));
                slot.failed = None;
                Ok(token)
            }
            Err(error) => {
                slot.failed = Some((fetch, error.clone()));
                Err(error)
            }
        }
    }

    /// Asks the server for a token, within the secret's upstream budget
    /// (for a refresh token: the one another replica stored, while fresh);
    /// `lease` is the lease it is for, unless it is shared.
    async fn fetch(
        &self,
        secret: &BrokeredSecret,
        source: &OAuth2Source,
        scopes: &[String],
        audience: &[String],
        min_remaining: i64,
        lease: Option<IssueRequest<'_>>,
    ) -> Result<IssuedToken, ProviderError> {
        let (namespace, name) = (namespace_of(secret), name_of(secret));
        let endpoint = Endpoint::parse(&source.token_url, "spec.source.oauth2.tokenUrl")?;
        let asked = TokenAsk {
            endpoint: &endpoint,
            source,
            scopes,
            audience,
            namespace,
        };
        let result = match source.grant {
            OAuth2Grant::ClientCredentials | OAuth2Grant::TokenExchange => {
                self.admit(namespace, name, source.requests_per_minute)
                    .await?;
                let subject_token = match source.grant {
                    OAuth2Grant::TokenExchange => Some(self.subject_token(secret, source, lease)?),
                    _ => None,
                };
                self.requests.inc();
                let grant = match &subject_token {
                    Some(subject_token) => GrantParameters::TokenExchange(subject_token),
                    None => GrantParameters::ClientCredentials,
                };
                match self
                    .reader
                    .data(namespace, &source.credentials_secret_name)
                    .await
                {
                    Ok(data) => asked.request(&data, grant).await,
                    Err(error) => Err(Refused::Request(error)),
                }
            }
            OAuth2Grant::RefreshToken => {
                let now = || Timestamp::now().as_second();
                let fresh = |token: &Token| {
                    IssuedToken::from_token(token, scopes).fresh(min_remaining, now())
                };
                let spend = |refresh_token: Zeroizing<Vec<u8>>, data: Files| async move {
                    self.admit(namespace, name, source.requests_per_minute)
                        .await
                        .map_err(Refused::Request)?;
                    self.requests.inc();
                    asked
                        .request(&data, GrantParameters::RefreshToken(&refresh_token))
                        .await
                };
                self.custody
                    .current_or_spend(
                        namespace,
                        &source.credentials_secret_name,
                        now,
                        fresh,
                        spend,
                    )
                    .await
            }
        };
        if let Err(Refused::Unavailable { retry_after, .. }) = &result {
            self.pause(namespace, name, retry_after.unwrap_or(DEFAULT_PAUSE));
        }
        let token = result.map_err(|refused| refused.error().clone())?;
        Ok(IssuedToken::from_token(&token, scopes))
    }

    /// The JWT naming `lease`'s pod that a token exchange presents.
    fn subject_token(
        &self,
        secret: &BrokeredSecret,
        source: &OAuth2Source,
        lease: Option<IssueRequest<'_>>,
    ) -> Result<Zeroizing<String>, ProviderError> {
        let (Some(exchange), Some(lease)) = (&source.token_exchange, lease) else {
            return Err(ProviderError::Invalid(
                "spec.source.oauth2: grant TokenExchange needs tokenExchange, and a token \
                 of its own for each lease (tokenSharing: PerLease)"
                    .into(),
            ));
        };
        self.identity.mint(
            lease.pod,
            &exchange.subject_token_audience,
            &format!("{}/{}", namespace_of(secret), name_of(secret)),
            lease.now.as_second(),
        )
    }

    /// Waits for the secret's rate limit (briefly) and refuses while the
    /// server asked for a pause.
    async fn admit(
        &self,
        namespace: &str,
        name: &str,
        per_minute: u32,
    ) -> Result<(), ProviderError> {
        let limiter = {
            let mut upstreams = self
                .upstreams
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let key = (namespace.to_owned(), name.to_owned());
            let upstream = upstreams
                .entry(key)
                .or_insert_with(|| Upstream::new(per_minute));
            if upstream.per_minute != per_minute {
                *upstream = Upstream::new(per_minute);
            }
            if let Some(until) = upstream.paused_until {
                let left = until.saturating_duration_since(Instant::now());
                if !left.is_zero() {
                    return Err(ProviderError::Unavailable(format!(
                        "the authorization server of BrokeredSecret {namespace}/{name} asked \
                         for a pause; retry in {}s",
                        left.as_secs().max(1)
                    )));
                }
                upstream.paused_until = None;
            }
            Arc::clone(&upstream.limiter)
        };
        match limiter.check() {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(governor::clock::Clock::now(
                    &governor::clock::DefaultClock::default(),
                ));
                if wait > MAX_RATE_WAIT {
                    return Err(ProviderError::Unavailable(format!(
                        "BrokeredSecret {namespace}/{name} reached its upstream rate limit of \
                         {per_minute} token requests a minute (requestsPerMinute); retry in {}s",
                        wait.as_secs().max(1)
                    )));
                }
                limiter.until_ready().await;
                Ok(())
            }
        }
    }

    fn pause(&self, namespace: &str, name: &str, pause: Duration) {
        let mut upstreams = self
            .upstreams
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(upstream) = upstreams.get_mut(&(namespace.to_owned(), name.to_owned())) {
            upstream.paused_until = Some(Instant::now() + pause);
        }
    }

    fn remember(&self, handle: &str, outstanding: Outstanding) {
        let mut tokens = self
            .outstanding
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if tokens.len() >= MAX_OUTSTANDING {
            let now = Timestamp::now().as_second();
            tokens.retain(|_, token| token.expires_at > now);
            if tokens.len() >= MAX_OUTSTANDING {
                tracing::warn!(
                    limit = MAX_OUTSTANDING,
                    "too many oauth2 tokens to remember; this one is left to expire if its pod \
                     vanishes without revoking it"
                );
                return;
            }
        }
        tokens.insert(handle.to_owned(), outstanding);
    }

    fn forget(&self, handle: &str) {
        self.outstanding
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(handle);
    }

    /// Revokes the token sealed in `handle` upstream (RFC 7009).
    async fn revoke_upstream(
        &self,
        source: &OAuth2Source,
        namespace: &str,
        handle: &str,
    ) -> Result<(), ProviderError> {
        let Some(revocation_url) = &source.revocation_url else {
            return Ok(());
        };
        let endpoint = Endpoint::parse(revocation_url, "spec.source.oauth2.revocationUrl")?;
        let sealed = handle.strip_prefix(HANDLE_PREFIX).unwrap_or(handle);
        let token = self
            .seal
            .open(sealed)
            .map_err(|error| ProviderError::Invalid(format!("lease handle: {error}")))?;
        // Revocation authenticates the client from its Secret; for a
        // refresh-token source the refresh token is not needed.
        let data = self
            .reader
            .data(namespace, &source.credentials_secret_name)
            .await?;
        let client = client_of(source, namespace, &data)?;
        let tls = tls_for(source, &data)?;
        let mut form = Form::default();
        form.add("token", &token)
            .add("token_type_hint", b"access_token");
        let authorization =
            token::authenticate(&client, &endpoint, &mut form, Timestamp::now().as_second())?;
        let reply = upstream::post_form(tls, &endpoint, form, authorization).await?;
        match reply.status {
            // RFC 7009: 200 for a revoked token and for one the server
            // does not know (already expired or revoked).
            200 => Ok(()),
            status => Err(ProviderError::Unavailable(format!(
                "revocation endpoint {revocation_url} answered {status}"
            ))),
        }
    }

    fn issued(token: &IssuedToken, handle: String, ends: i64) -> Issued {
        let expires_at = Timestamp::from_second(token.expires_at)
            .map(|at| at.to_string())
            .unwrap_or_default();
        let mut files = BTreeMap::new();
        files.insert(
            ACCESS_TOKEN_FILE.to_owned(),
            Zeroizing::new(token.access_token.as_bytes().to_vec()),
        );
        files.insert(
            TOKEN_TYPE_FILE.to_owned(),
            Zeroizing::new(token.token_type.as_bytes().to_vec()),
        );
        files.insert(
            EXPIRES_AT_FILE.to_owned(),
            Zeroizing::new(expires_at.into_bytes()),
        );
        Issued {
            files,
            handle,
            variables: BTreeMap::from([("scope".to_owned(), token.scope.clone())]),
            expires_at: Some(ends),
        }
    }
}

impl Upstream {
    fn new(per_minute: u32) -> Self {
        let quota = Quota::per_minute(NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN));
        Self {
            per_minute,
            limiter: Arc::new(RateLimiter::direct(quota)),
            paused_until: None,
        }
    }
}

/// One token request's parameters.
#[derive(Clone, Copy)]
struct TokenAsk<'a> {
    endpoint: &'a Endpoint,
    source: &'a OAuth2Source,
    scopes: &'a [String],
    audience: &'a [String],
    namespace: &'a str,
}

/// What a token request sends besides the scopes and audiences.
#[derive(Clone, Copy)]
enum GrantParameters<'a> {
    /// The client's own access.
    ClientCredentials,
    /// The refresh token in custody.
    RefreshToken(&'a [u8]),
    /// An identity token naming the pod (RFC 8693).
    TokenExchange(&'a str),
}

/// RFC 8693's grant type.
const TOKEN_EXCHANGE_GRANT: &[u8] = b"urn:ietf:params:oauth:grant-type:token-exchange";

/// RFC 8693's type of a JWT subject token.
const JWT_TOKEN_TYPE: &[u8] = b"urn:ietf:params:oauth:token-type:jwt";

/// RFC 8693's type of the access token asked for.
const ACCESS_TOKEN_TYPE: &[u8] = b"urn:ietf:params:oauth:token-type:access_token";

impl TokenAsk<'_> {
    /// Asks with the client in `data` for the grant `grant`.
    async fn request(&self, data: &Files, grant: GrantParameters<'_>) -> Result<Token, Refused> {
        let client = client_of(self.source, self.namespace, data).map_err(Refused::Request)?;
        let tls = tls_for(self.source, data).map_err(Refused::Request)?;
        let mut form = Form::default();
        match grant {
            GrantParameters::ClientCredentials => form.add("grant_type", b"client_credentials"),
            GrantParameters::RefreshToken(refresh_token) => form
                .add("grant_type", b"refresh_token")
                .add("refresh_token", refresh_token),
            GrantParameters::TokenExchange(subject_token) => form
                .add("grant_type", TOKEN_EXCHANGE_GRANT)
                .add("subject_token", subject_token.as_bytes())
                .add("subject_token_type", JWT_TOKEN_TYPE)
                .add("requested_token_type", ACCESS_TOKEN_TYPE),
        };
        if !self.scopes.is_empty() {
            form.add("scope", self.scopes.join(" ").as_bytes());
        }
        let audience_parameter = self.source.audience_parameter.name();
        for audience in self.audience {
            form.add(audience_parameter, audience.as_bytes());
        }
        let now = Timestamp::now().as_second();
        let authorization = token::authenticate(&client, self.endpoint, &mut form, now)
            .map_err(Refused::Request)?;
        let reply = upstream::post_form(tls, self.endpoint, form, authorization)
            .await
            .map_err(|error| match error {
                ProviderError::Unavailable(_) => Refused::Unavailable {
                    error,
                    retry_after: None,
                },
                error => Refused::Request(error),
            })?;
        token::read_token_reply(self.endpoint, &reply, now)
    }
}

/// The TLS configuration that verifies the source's servers: the CA in
/// the credentials Secret's `caKey`, or the system's roots.
pub(crate) fn tls_for(
    source: &OAuth2Source,
    data: &Files,
) -> Result<Arc<rustls::ClientConfig>, ProviderError> {
    let ca_pem = match &source.ca_key {
        None => None,
        Some(key) => Some(data.get(key).map(|pem| pem.as_slice()).ok_or_else(|| {
            ProviderError::NotFound(format!(
                "Secret {} has no key {key:?} (spec.source.oauth2.caKey)",
                source.credentials_secret_name
            ))
        })?),
    };
    super::tls::client_config(ca_pem, source.ca_key.as_deref().unwrap_or_default())
}

/// The client in the credentials Secret's `data`.
pub(crate) fn client_of<'a>(
    source: &'a OAuth2Source,
    namespace: &str,
    data: &'a Files,
) -> Result<Client<'a>, ProviderError> {
    let secret_name = &source.credentials_secret_name;
    let key = |key: &str| {
        data.get(key).map(|value| value.as_slice()).ok_or_else(|| {
            ProviderError::NotFound(format!(
                "Secret {namespace}/{secret_name} has no key {key:?}"
            ))
        })
    };
    let text = |key_name: &str, value: &'a [u8]| {
        std::str::from_utf8(value)
            .map(str::trim)
            .ok()
            .filter(|text| !text.is_empty() && text.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| {
                ProviderError::Invalid(format!(
                    "Secret {namespace}/{secret_name}: key {key_name:?} is not printable ASCII"
                ))
            })
    };
    let id = text(oauth2_keys::CLIENT_ID, key(oauth2_keys::CLIENT_ID)?)?;
    let secret = match source.client_authentication {
        ClientAuthentication::ClientSecretBasic | ClientAuthentication::ClientSecretPost => {
            key(oauth2_keys::CLIENT_SECRET)?
        }
        ClientAuthentication::PrivateKeyJwt => key(oauth2_keys::PRIVATE_KEY)?,
    };
    let key_id = match data.get(oauth2_keys::KEY_ID) {
        None => None,
        Some(value) => Some(text(oauth2_keys::KEY_ID, value)?),
    };
    Ok(Client {
        authentication: source.client_authentication,
        id,
        secret,
        key_id,
    })
}

fn oauth2_source(secret: &BrokeredSecret) -> Result<&OAuth2Source, ProviderError> {
    secret.spec.source.oauth2.as_ref().ok_or_else(|| {
        ProviderError::Invalid(format!(
            "BrokeredSecret {}/{} has no oauth2 source",
            namespace_of(secret),
            name_of(secret)
        ))
    })
}

fn namespace_of(secret: &BrokeredSecret) -> &str {
    secret.metadata.namespace.as_deref().unwrap_or_default()
}

fn name_of(secret: &BrokeredSecret) -> &str {
    secret.metadata.name.as_deref().unwrap_or_default()
}

impl Provider for OAuth2Provider {
    fn kind(&self) -> &'static str {
        "oauth2"
    }

    async fn issue(&self, request: IssueRequest<'_>) -> Result<Issued, ProviderError> {
        let source = oauth2_source(request.secret)?;
        let (token, handle, ends) = self.token_for(request, source).await?;
        tracing::info!(
            audit = "oauth2_token",
            secret = %format!("{}/{}", namespace_of(request.secret), name_of(request.secret)),
            pod = %format!("{}/{}", request.pod.namespace, request.pod.pod_name),
            scope = %token.scope,
            shared = source.token_sharing == TokenSharing::Shared,
            expires_at = token.expires_at,
            "access token handed out"
        );
        Ok(Self::issued(&token, handle, ends))
    }

    async fn renew(
        &self,
        request: IssueRequest<'_>,
        lease: &LeaseClaims,
    ) -> Result<Option<Issued>, ProviderError> {
        let issued = self.issue(request).await?;
        if lease.handle.starts_with(HANDLE_PREFIX) && lease.handle != issued.handle {
            // The replaced token is revoked once the app has moved on.
            self.remember(
                &lease.handle,
                Outstanding {
                    namespace: lease.secret_namespace.clone(),
                    name: lease.secret_name.clone(),
                    pod_uid: lease.pod_uid.clone(),
                    expires_at: lease
                        .expires_at
                        .max(request.now.as_second() + SUPERSEDED_GRACE),
                    revoke_at: Some(request.now.as_second() + SUPERSEDED_GRACE),
                },
            );
        }
        Ok(Some(issued))
    }

    async fn revoke(
        &self,
        secret: Option<&BrokeredSecret>,
        lease: &LeaseClaims,
    ) -> Result<(), ProviderError> {
        if !lease.handle.starts_with(HANDLE_PREFIX) {
            // A shared token, or a server without revocation: it expires.
            return Ok(());
        }
        let Some(source) = secret.and_then(|secret| secret.spec.source.oauth2.as_ref()) else {
            tracing::warn!(
                secret = %format!("{}/{}", lease.secret_namespace, lease.secret_name),
                "the BrokeredSecret is gone: its lease's access token cannot be revoked \
                 upstream and lives until it expires"
            );
            self.forget(&lease.handle);
            return Ok(());
        };
        match self
            .revoke_upstream(source, &lease.secret_namespace, &lease.handle)
            .await
        {
            Ok(()) => {
                self.forget(&lease.handle);
                Ok(())
            }
            Err(error) => {
                // The reaper tries again until the token expires.
                tracing::warn!(
                    secret = %format!("{}/{}", lease.secret_namespace, lease.secret_name),
                    %error,
                    "revoking an access token upstream failed; retrying from the reaper"
                );
                self.remember(
                    &lease.handle,
                    Outstanding {
                        namespace: lease.secret_namespace.clone(),
                        name: lease.secret_name.clone(),
                        pod_uid: lease.pod_uid.clone(),
                        expires_at: lease.expires_at,
                        revoke_at: Some(Timestamp::now().as_second()),
                    },
                );
                Ok(())
            }
        }
    }

    async fn reap(&self, context: ReapContext<'_>) -> Reaped {
        let due = {
            let mut tokens = self
                .outstanding
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            tokens.retain(|_, token| token.expires_at > context.now);
            let due: Vec<(String, Outstanding)> = tokens
                .iter()
                .filter(|(_, token)| {
                    token.revoke_at.is_some_and(|at| at <= context.now)
                        || (context.presence)(&token.pod_uid) == PodPresence::Departed
                })
                .map(|(handle, token)| (handle.clone(), token.clone()))
                .collect();
            // Expired tokens are forgotten: nothing upstream to revoke.
            (tokens.len(), due)
        };
        let (found, due) = due;
        let mut reaped = Reaped {
            found,
            ..Reaped::default()
        };
        for (handle, token) in due {
            let source = context
                .secrets
                .iter()
                .find(|secret| {
                    namespace_of(secret) == token.namespace && name_of(secret) == token.name
                })
                .and_then(|secret| secret.spec.source.oauth2.clone());
            let Some(source) = source else {
                self.forget(&handle);
                continue;
            };
            match self
                .revoke_upstream(&source, &token.namespace, &handle)
                .await
            {
                Ok(()) => {
                    self.forget(&handle);
                    if token.revoke_at.is_some() {
                        reaped.expired += 1;
                    } else {
                        reaped.pod_gone += 1;
                    }
                }
                Err(error) => {
                    reaped.failed += 1;
                    tracing::warn!(
                        secret = %format!("{}/{}", token.namespace, token.name),
                        %error,
                        "revoking an access token upstream failed; retrying at the next pass"
                    );
                }
            }
        }
        reaped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(issued_at: i64, expires_at: i64, scope: &str) -> IssuedToken {
        IssuedToken {
            access_token: Zeroizing::new("at".into()),
            token_type: "bearer".into(),
            issued_at,
            expires_at,
            scope: scope.into(),
        }
    }

    #[test]
    fn a_shared_tokens_leases_end_min_remaining_before_it_expires() {
        let hour = token(0, 3600, "");
        assert_eq!(hour.usable_until(120), 3480);
        assert!(hour.fresh(120, 3470));
        assert!(!hour.fresh(120, 3471), "a lease must last 10s");
        // A token shorter than twice the margin is used for half its life.
        let minute = token(0, 60, "");
        assert_eq!(minute.usable_until(120), 30);
    }
}
