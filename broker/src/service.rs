//! The broker's decisions: for an authenticated pod, issue, renew or revoke
//! leases, each refused with the status and message an operator needs.
//! Every decision is one audit line (`target: ferry::audit`) naming who,
//! which pod, which secret, the lease, its ttl, the result and the reason,
//! and never the material.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ferry_contract::wire::{KeyRequired, Lease, LeaseRequest, SecretRef, SecretRequest};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector::{ObjectRef, Store};
use zeroize::Zeroizing;

use super::auth::PodIdentity;
use super::lease_book::{LeaseBook, LiveLease};
use super::lease_id::{CLAIMS_VERSION, LeaseClaims, LeaseIdError, LeaseKeys, generate_serial};
use super::live_leases::LiveLeases;
use super::metrics::BrokerMetrics;
use super::pods::PodIndex;
use super::providers::jwt::{self, JwtProvider};
use super::providers::kubernetes_secret::KubernetesSecretProvider;
use super::providers::oauth2::{self, OAuth2Provider};
use super::providers::postgres::PostgresProvider;
use super::providers::x509::{self, X509Provider};
use super::providers::{IssueRequest, Issued, Provider, ProviderError, ReapContext, Reaped};
use super::revocation_index::{Block, RevocationIndex};
use super::revoked_leases::{RevocationError, RevokedLeases};
use super::templates::{Variables, render_files};
use super::terms::{TermsError, lease_terms};
use ferry_api::confinement::Installation;
use ferry_api::grants::grant_is_valid_at;
use ferry_api::resources::{BrokeredSecret, Grant, SecretReference, SourceKind};
use ferry_api::revocation::Holder;
use ferry_api::templates::{OAUTH2_VARIABLES, POSTGRES_VARIABLES, TemplateError, check_variables};
use ferry_runtime::grant_index::GrantIndex;

/// The most secrets one request may ask for.
pub const MAX_SECRETS_PER_REQUEST: usize = 32;

/// A refused request: the HTTP status and what to tell the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    /// 400: the request itself is wrong.
    #[error("{0}")]
    BadRequest(String),
    /// 401: the caller is not an authenticated live pod.
    #[error("{0}")]
    Unauthenticated(String),
    /// 403: no Grant, or not this pod's lease, or wider than the Grant.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such BrokeredSecret, or its backend object is missing.
    #[error("{0}")]
    NotFound(String),
    /// 409: the lease expired or reached its maxTtl.
    #[error("{0}")]
    Conflict(String),
    /// 429: the pod holds as many live leases for the secret as allowed.
    #[error("{0}")]
    TooManyLeases(String),
    /// 429: the replica, or the pod, holds as many revocation watches as
    /// allowed; retry after [`crate::held_watches::RETRY_AFTER_SECONDS`].
    #[error("{0}")]
    TooManyWatches(String),
    /// 429: the service account asks too often; retry after the seconds.
    #[error("too many requests from this service account; retry in {0}s")]
    RateLimited(u64),
    /// 422: these secrets are certificates: send a CSR for each.
    #[error("{}", keys_required_message(.0))]
    KeysRequired(Vec<KeyRequired>),
    /// 501: the source is not served by this broker version.
    #[error("{0}")]
    NotImplemented(String),
    /// 503: a backend is unavailable; retry later.
    #[error("{0}")]
    Unavailable(String),
}

impl BrokerError {
    /// The HTTP status code.
    pub fn status(&self) -> u16 {
        match self {
            Self::BadRequest(_) => 400,
            Self::Unauthenticated(_) => 401,
            Self::Forbidden(_) => 403,
            Self::NotFound(_) => 404,
            Self::Conflict(_) => 409,
            Self::RateLimited(_) | Self::TooManyLeases(_) | Self::TooManyWatches(_) => 429,
            Self::KeysRequired(_) => 422,
            Self::NotImplemented(_) => 501,
            Self::Unavailable(_) => 503,
        }
    }

    /// A short label for metrics and audit lines.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::Unauthenticated(_) => "unauthenticated",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::Conflict(_) => "conflict",
            Self::RateLimited(_) => "rate_limited",
            Self::TooManyLeases(_) => "too_many_leases",
            Self::TooManyWatches(_) => "too_many_watches",
            Self::KeysRequired(_) => "keys_required",
            Self::NotImplemented(_) => "not_implemented",
            Self::Unavailable(_) => "unavailable",
        }
    }
}

/// The pod's CSR, decoded from base64 (its size is bounded by the
/// request body's).
fn decode_csr(csr: Option<&str>) -> Result<Option<Vec<u8>>, BrokerError> {
    csr.map(|encoded| {
        BASE64.decode(encoded).map_err(|_| {
            BrokerError::BadRequest("csr is not base64 (standard alphabet, padded)".into())
        })
    })
    .transpose()
}

fn keys_required_message(required: &[KeyRequired]) -> String {
    let listed: Vec<String> = required
        .iter()
        .map(|key| {
            format!(
                "{} ({})",
                qualified(&key.secret.namespace, &key.secret.name),
                key.algorithm
            )
        })
        .collect();
    format!(
        "these secrets are certificates: make a key and send a CSR for each: {}",
        listed.join(", ")
    )
}

impl From<ProviderError> for BrokerError {
    fn from(error: ProviderError) -> Self {
        match error {
            ProviderError::NotFound(message) => Self::NotFound(message),
            ProviderError::Unavailable(message) => Self::Unavailable(message),
            ProviderError::Invalid(message) => Self::BadRequest(message),
            ProviderError::Gone(message) => Self::Conflict(message),
            ProviderError::Refused(message) => Self::Forbidden(message),
        }
    }
}

impl From<RevocationError> for BrokerError {
    fn from(error: RevocationError) -> Self {
        Self::Unavailable(error.to_string())
    }
}

impl From<LeaseIdError> for BrokerError {
    fn from(error: LeaseIdError) -> Self {
        Self::BadRequest(error.to_string())
    }
}

/// Everything a decision needs: the Grants, the BrokeredSecrets, the
/// lease keys and the providers.
pub struct Broker {
    /// Who holds which Grants.
    pub grants: GrantIndex,
    /// The BrokeredSecrets of the cluster.
    pub secrets: Store<BrokeredSecret>,
    /// Seal and open lease ids.
    pub keys: LeaseKeys,
    /// The `kubernetesSecret` provider.
    pub kubernetes_secret: KubernetesSecretProvider,
    /// The `jwt` provider.
    pub jwt: JwtProvider,
    /// The `postgres` provider.
    pub postgres: PostgresProvider,
    /// The `x509` provider.
    pub x509: X509Provider,
    /// The `oauth2` provider.
    pub oauth2: OAuth2Provider,
    /// Counters and latencies.
    pub metrics: BrokerMetrics,
    /// What the installation lets BrokeredSecrets reach.
    pub installation: Installation,
    /// Live leases per (pod, secret), capped.
    pub live_leases: LiveLeases,
    /// The leases revoked by any replica, which never renew.
    pub revoked_leases: RevokedLeases,
    /// The Revocations in force: what incident responders took away.
    pub revocation_orders: RevocationIndex,
    /// The live leases this replica knows of, for revocation and listing.
    pub lease_book: LeaseBook,
    /// Counts the changes that may take access away (a Revocation, a
    /// Grant, a policy), for the sidecars watching and the reaper.
    pub access_changed: tokio::sync::watch::Sender<u64>,
}

/// Why a holder may no longer have a secret, for the sweep and the
/// sidecars' watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Withdrawal {
    /// A Revocation in force takes it away.
    Revoked(Block),
    /// No valid Grant allows it any more (policy deleted or edited,
    /// validUntil passed, approval ended).
    GrantLost,
}

impl Withdrawal {
    /// The audit log's reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Revoked(_) => "revoked",
            Self::GrantLost => "grant_lost",
        }
    }
}

/// The audit record of one decision.
struct Audit<'a> {
    action: &'static str,
    pod: &'a PodIdentity,
    secret: String,
    lease: String,
    ttl: u64,
}

impl Audit<'_> {
    fn record(&self, metrics: &BrokerMetrics, result: Result<(), &BrokerError>) {
        let (outcome, reason, message) = match result {
            Ok(()) => ("allowed", "", String::new()),
            Err(error) => ("denied", error.reason(), error.to_string()),
        };
        metrics.observe_decision(self.action, outcome);
        tracing::info!(
            target: "ferry::audit",
            action = self.action,
            actor = %self.pod.subject(),
            pod = %format!("{}/{}", self.pod.namespace, self.pod.pod_name),
            pod_uid = %self.pod.pod_uid,
            secret = %self.secret,
            lease = %self.lease,
            ttl = self.ttl,
            result = outcome,
            reason,
            message = %message,
        );
    }
}

/// Records a refusal made before the request reached a decision on a
/// secret: authentication (no pod known yet) or rate limiting.
pub fn audit_refused(
    metrics: &BrokerMetrics,
    action: &'static str,
    pod: Option<&PodIdentity>,
    error: &BrokerError,
) {
    metrics.observe_decision(action, "denied");
    tracing::info!(
        target: "ferry::audit",
        action,
        actor = %pod.map(PodIdentity::subject).unwrap_or_default(),
        pod = %pod.map(|pod| format!("{}/{}", pod.namespace, pod.pod_name)).unwrap_or_default(),
        result = "denied",
        reason = error.reason(),
        message = %error,
    );
}

fn qualified(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

impl Broker {
    /// Issues one lease per requested secret, all or none: if one is
    /// refused, those already issued are revoked.
    pub async fn issue(
        &self,
        pod: &PodIdentity,
        request: LeaseRequest,
        now: Timestamp,
    ) -> Result<Vec<Lease>, BrokerError> {
        if request.secrets.is_empty() {
            return Err(BrokerError::BadRequest(
                "secrets is empty: ask for at least one".into(),
            ));
        }
        if request.secrets.len() > MAX_SECRETS_PER_REQUEST {
            return Err(BrokerError::BadRequest(format!(
                "{} secrets asked for; at most {MAX_SECRETS_PER_REQUEST} per request",
                request.secrets.len()
            )));
        }
        let mut asked = std::collections::BTreeSet::new();
        for secret in &request.secrets {
            if !asked.insert((secret.namespace.as_str(), secret.name.as_str())) {
                return Err(BrokerError::BadRequest(format!(
                    "secret {} asked for twice: ask for each secret once per request",
                    qualified(&secret.namespace, &secret.name)
                )));
            }
        }
        // Before anything is issued: a certificate asked for without a CSR
        // is answered with the keys to make, and nothing else happens.
        let keys_required: Vec<KeyRequired> = request
            .secrets
            .iter()
            .filter(|asked| asked.csr.is_none())
            .filter_map(|asked| {
                let (secret, _) = self
                    .authorize(pod, &asked.namespace, &asked.name, now)
                    .ok()?;
                let x509 = secret.spec.source.x509.as_ref()?;
                Some(KeyRequired {
                    secret: SecretRef {
                        namespace: asked.namespace.clone(),
                        name: asked.name.clone(),
                    },
                    algorithm: x509.key_algorithm.wire_name().to_owned(),
                })
            })
            .collect();
        if !keys_required.is_empty() {
            return Err(BrokerError::KeysRequired(keys_required));
        }
        let mut leases: Vec<(Lease, LeaseClaims)> = Vec::with_capacity(request.secrets.len());
        for asked in &request.secrets {
            let mut audit = Audit {
                action: "issue",
                pod,
                secret: qualified(&asked.namespace, &asked.name),
                lease: String::new(),
                ttl: 0,
            };
            match self.issue_one(pod, asked, now).await {
                Ok((lease, claims)) => {
                    audit.lease = lease.id.clone();
                    audit.ttl = lease.ttl;
                    audit.record(&self.metrics, Ok(()));
                    leases.push((lease, claims));
                }
                Err(error) => {
                    audit.record(&self.metrics, Err(&error));
                    for (_, claims) in &leases {
                        let _ = self.revoke_claims(claims).await;
                    }
                    return Err(error);
                }
            }
        }
        Ok(leases.into_iter().map(|(lease, _)| lease).collect())
    }

    async fn issue_one(
        &self,
        pod: &PodIdentity,
        asked: &SecretRequest,
        now: Timestamp,
    ) -> Result<(Lease, LeaseClaims), BrokerError> {
        let (secret, grant) = self.authorize(pod, &asked.namespace, &asked.name, now)?;
        let terms = lease_terms(&secret.spec, &grant.spec, asked, now).map_err(terms_error)?;
        let csr = decode_csr(asked.csr.as_deref())?;
        let serial = generate_serial().map_err(|_| {
            BrokerError::Unavailable("the system's random number generator failed".into())
        })?;
        let expires_at = now.as_second() + seconds(terms.ttl);
        if !self.live_leases.reserve(
            &pod.pod_uid,
            &asked.namespace,
            &asked.name,
            terms.max_expires_at,
            now.as_second(),
        ) {
            return Err(BrokerError::TooManyLeases(format!(
                "pod {}/{} already holds {} live leases for {}, the cap; revoke one or let it end",
                pod.namespace,
                pod.pod_name,
                self.live_leases.cap(),
                qualified(&asked.namespace, &asked.name)
            )));
        }
        let forget = || {
            self.live_leases.forget(
                &pod.pod_uid,
                &asked.namespace,
                &asked.name,
                terms.max_expires_at,
            );
        };
        let request = IssueRequest {
            secret: &secret,
            pod,
            terms: &terms,
            now,
            expires_at,
            csr: csr.as_deref(),
        };
        let issued = match self.provide(&secret, request, None).await {
            Ok(Some(issued)) => issued,
            Ok(None) => {
                forget();
                return Err(BrokerError::Unavailable(
                    "the provider issued nothing".into(),
                ));
            }
            Err(error) => {
                forget();
                return Err(error);
            }
        };
        // A credential that dies upstream first (an access token) ends
        // the lease with it.
        let expires_at = issued
            .expires_at
            .map_or(expires_at, |dies| dies.min(expires_at));
        // Renewal asks for the narrowing the lease was issued with.
        let narrowable = secret.spec.source.audience_and_scopes().is_some();
        let claims = LeaseClaims {
            version: CLAIMS_VERSION,
            secret_namespace: asked.namespace.clone(),
            secret_name: asked.name.clone(),
            pod_uid: pod.pod_uid.clone(),
            handle: issued.handle.clone(),
            issued_at: now.as_second(),
            expires_at,
            max_expires_at: terms.max_expires_at,
            audience: if narrowable {
                terms.audience.clone()
            } else {
                vec![]
            },
            scopes: narrowable.then(|| terms.scopes.clone()),
            serial,
        };
        let lease = self.lease(&claims, Some(issued), now);
        self.lease_book
            .record(&claims, kind_name(&secret), pod, now.as_second());
        Ok((lease, claims))
    }

    /// The BrokeredSecret and the pod's valid Grant for it, or why not.
    fn authorize(
        &self,
        pod: &PodIdentity,
        namespace: &str,
        name: &str,
        now: Timestamp,
    ) -> Result<(std::sync::Arc<BrokeredSecret>, std::sync::Arc<Grant>), BrokerError> {
        let reference = SecretReference {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        let grant = self.allowing_grant(&pod.holder(&reference), now).map_err(|withdrawal| {
            BrokerError::Forbidden(match withdrawal {
                // The responder's reason is not the pod's to read.
                Withdrawal::Revoked(block) => format!(
                    "access of pod {}/{} to BrokeredSecret {namespace}/{name} is revoked by Revocation {}",
                    pod.namespace, pod.pod_name, block.revocation
                ),
                Withdrawal::GrantLost => format!(
                    "service account {}/{} has no Grant for BrokeredSecret {namespace}/{name}",
                    pod.namespace, pod.service_account
                ),
            })
        })?;
        let secret = self
            .secrets
            .get(&ObjectRef::new(name).within(namespace))
            .ok_or_else(|| {
                BrokerError::NotFound(format!("BrokeredSecret {namespace}/{name} not found"))
            })?;
        if let Some(refusal) = self.installation.refusal(&secret) {
            return Err(BrokerError::Forbidden(refusal.message));
        }
        Ok((secret, grant))
    }

    /// The valid Grant that lets `holder` have its secret now, or why none
    /// does: a Revocation blocking the pod, its service account or the
    /// secret, or no valid Grant whose policy is not revoked.
    fn allowing_grant(
        &self,
        holder: &Holder<'_>,
        now: Timestamp,
    ) -> Result<std::sync::Arc<Grant>, Withdrawal> {
        if let Some(block) = self.revocation_orders.blocking(holder) {
            return Err(Withdrawal::Revoked(block));
        }
        let mut voided = None;
        for grant in self
            .grants
            .grants_for(holder.namespace, holder.service_account, holder.secret)
        {
            if !grant_is_valid_at(&grant, now) {
                continue;
            }
            match self.revocation_orders.voiding(&grant.spec.policy) {
                None => return Ok(grant),
                Some(block) => voided = Some(block),
            }
        }
        Err(voided.map_or(Withdrawal::GrantLost, Withdrawal::Revoked))
    }

    /// Why `holder` may no longer have its secret at `now`, if so.
    pub fn withdrawal(&self, holder: &Holder<'_>, now: Timestamp) -> Option<Withdrawal> {
        self.allowing_grant(holder, now).err()
    }

    /// Wakes everyone waiting for access to change: the watching sidecars
    /// and the reaper.
    pub fn announce_access_change(&self) {
        self.access_changed
            .send_modify(|count| *count = count.wrapping_add(1));
    }

    /// Waits, at most `wait`, until `pod` may no longer have one of the
    /// secrets its leases `ids` are for; those secrets, or none when the
    /// wait ends first. The leases go into the book, so a replica learns
    /// of live leases again from the sidecars after a restart. A broker
    /// shutting down (`stopping`) answers at once: the sidecar asks again,
    /// of another replica.
    pub async fn watch(
        &self,
        pod: &PodIdentity,
        ids: &[String],
        wait: Duration,
        stopping: &tokio_util::sync::CancellationToken,
        now: Timestamp,
    ) -> Result<Vec<SecretRef>, BrokerError> {
        if ids.len() > MAX_SECRETS_PER_REQUEST {
            return Err(BrokerError::BadRequest(format!(
                "{} leases to watch; at most {MAX_SECRETS_PER_REQUEST} per request",
                ids.len()
            )));
        }
        let mut secrets = std::collections::BTreeSet::new();
        for id in ids {
            let claims = self.open_own(pod, id)?;
            if claims.expires_at <= now.as_second() {
                continue;
            }
            let secret = self
                .secrets
                .get(&ObjectRef::new(&claims.secret_name).within(&claims.secret_namespace));
            let kind = secret.as_deref().map_or("unknown", kind_name);
            self.lease_book.record(&claims, kind, pod, now.as_second());
            secrets.insert(SecretReference {
                namespace: claims.secret_namespace,
                name: claims.secret_name,
            });
        }
        let mut changes = self.access_changed.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Seen before looking, so a change while looking wakes again.
            changes.mark_unchanged();
            let withdrawn: Vec<SecretRef> = secrets
                .iter()
                .filter(|secret| {
                    self.withdrawal(&pod.holder(secret), Timestamp::now())
                        .is_some()
                })
                .map(|secret| SecretRef {
                    namespace: secret.namespace.clone(),
                    name: secret.name.clone(),
                })
                .collect();
            if !withdrawn.is_empty() {
                return Ok(withdrawn);
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return Ok(Vec::new()) },
                () = tokio::time::sleep_until(deadline) => return Ok(Vec::new()),
                () = stopping.cancelled() => return Ok(Vec::new()),
            }
        }
    }

    /// Revokes every live lease in the book that may no longer be held (a
    /// Revocation took it away, or its Grant is gone), at once: upstream
    /// (a PostgreSQL role dropped, a token revoked), and for JWTs by
    /// recording the revocation so every replica publishes the token's id.
    /// Returns how many leases were revoked.
    pub async fn sweep(&self, now: Timestamp) -> usize {
        use futures::StreamExt as _;
        /// Revocations under way at once: a policy's hundred pods are
        /// revoked in parallel, the backend's connections permitting.
        const CONCURRENT: usize = 32;
        let withdrawn = self.lease_book.take_withdrawn(now.as_second(), |lease| {
            self.withdrawal(&lease.holder(&lease.secret()), now)
        });
        let count = withdrawn.len();
        futures::stream::iter(withdrawn)
            .for_each_concurrent(CONCURRENT, |(lease, withdrawal)| async move {
                self.withdraw(&lease, &withdrawal, now).await;
            })
            .await;
        count
    }

    /// Revokes one live lease the sweep took out of the book, and audits it.
    async fn withdraw(&self, lease: &LiveLease, withdrawal: &Withdrawal, now: Timestamp) {
        let claims = &lease.claims;
        let pod = PodIdentity {
            namespace: lease.pod_namespace.clone(),
            service_account: lease.service_account.clone(),
            pod_name: lease.pod_name.clone(),
            pod_uid: claims.pod_uid.clone(),
            terminating: false,
        };
        let (revocation, reason) = match withdrawal {
            Withdrawal::Revoked(block) => (block.revocation.as_str(), block.reason.as_str()),
            Withdrawal::GrantLost => ("", "no valid Grant allows it any more"),
        };
        // A JWT cannot be called back: its id is published as revoked for
        // relying parties that check, by every replica.
        let recorded = if claims.handle.starts_with(jwt::HANDLE_PREFIX) {
            self.revoked_leases
                .record(claims, now.as_second())
                .await
                .map_err(BrokerError::from)
        } else {
            Ok(())
        };
        let result = match recorded {
            Ok(()) => self.revoke_claims(claims).await,
            Err(error) => Err(error),
        };
        let (outcome, message) = match &result {
            Ok(()) => ("allowed", String::new()),
            Err(error) => ("denied", error.to_string()),
        };
        self.metrics
            .observe_withdrawal(withdrawal.reason(), outcome);
        tracing::info!(
            target: "ferry::audit",
            action = "withdraw",
            actor = %pod.subject(),
            pod = %format!("{}/{}", pod.namespace, pod.pod_name),
            pod_uid = %pod.pod_uid,
            secret = %qualified(&claims.secret_namespace, &claims.secret_name),
            serial = %claims.serial(),
            kind = lease.kind,
            result = outcome,
            reason = withdrawal.reason(),
            revocation,
            why = reason,
            message = %message,
        );
    }

    /// Asks the secret's provider to issue, or with `renewing`, to renew.
    async fn provide(
        &self,
        secret: &BrokeredSecret,
        request: IssueRequest<'_>,
        renewing: Option<&LeaseClaims>,
    ) -> Result<Option<Issued>, BrokerError> {
        async fn call<P: Provider>(
            broker: &Broker,
            provider: &P,
            request: IssueRequest<'_>,
            renewing: Option<&LeaseClaims>,
        ) -> Result<Option<Issued>, BrokerError> {
            let result = match renewing {
                None => provider.issue(request).await.map(Some),
                Some(lease) => provider.renew(request, lease).await,
            };
            let issued = result.map_err(|error| broker.provider_error(provider, error))?;
            issued
                .map(|issued| render(request.secret, issued))
                .transpose()
        }
        match secret.spec.source.kind() {
            Some(SourceKind::KubernetesSecret) => {
                call(self, &self.kubernetes_secret, request, renewing).await
            }
            Some(SourceKind::Jwt) => call(self, &self.jwt, request, renewing).await,
            Some(SourceKind::X509) => call(self, &self.x509, request, renewing).await,
            Some(SourceKind::OAuth2) => {
                check_variables(&secret.spec.files, &OAUTH2_VARIABLES)
                    .map_err(|error| template_error(secret, &error))?;
                call(self, &self.oauth2, request, renewing).await
            }
            Some(SourceKind::Postgres) => {
                // A role is created before its templates render: refuse
                // templates that cannot render first, so no role is left over.
                check_variables(&secret.spec.files, &POSTGRES_VARIABLES)
                    .map_err(|error| template_error(secret, &error))?;
                call(self, &self.postgres, request, renewing).await
            }
            None => Err(unsupported(secret)),
        }
    }

    fn provider_error(&self, provider: &impl Provider, error: ProviderError) -> BrokerError {
        if matches!(error, ProviderError::Unavailable(_)) {
            self.metrics.observe_provider_error(provider.kind());
        }
        error.into()
    }

    fn lease(&self, claims: &LeaseClaims, issued: Option<Issued>, now: Timestamp) -> Lease {
        let ttl = u64::try_from(claims.expires_at - now.as_second()).unwrap_or(0);
        Lease {
            id: self.keys.seal(claims),
            secret: SecretRef {
                namespace: claims.secret_namespace.clone(),
                name: claims.secret_name.clone(),
            },
            files: issued
                .map(|issued| {
                    issued
                        .files
                        .iter()
                        .map(|(name, value)| (name.clone(), BASE64.encode(value.as_slice())))
                        .collect()
                })
                .unwrap_or_default(),
            ttl,
            renew_after: ttl * 2 / 3,
            expires_at: Timestamp::from_second(claims.expires_at)
                .map(|at| at.to_string())
                .unwrap_or_default(),
        }
    }

    /// Opens `id` and checks it belongs to `pod`.
    fn open_own(&self, pod: &PodIdentity, id: &str) -> Result<LeaseClaims, BrokerError> {
        let claims = self.keys.open(id)?;
        if claims.pod_uid != pod.pod_uid {
            return Err(BrokerError::Forbidden(format!(
                "lease for {} belongs to another pod",
                qualified(&claims.secret_namespace, &claims.secret_name)
            )));
        }
        Ok(claims)
    }

    /// Renews the lease `id` for `pod`: a new id, and new files when the
    /// credential changes, with the expiry moved on by the lease's ttl but
    /// never past its maxTtl; refused once the Grant or secret is gone.
    pub async fn renew(
        &self,
        pod: &PodIdentity,
        id: &str,
        csr: Option<&str>,
        now: Timestamp,
    ) -> Result<Lease, BrokerError> {
        let mut audit = Audit {
            action: "renew",
            pod,
            secret: String::new(),
            lease: String::new(),
            ttl: 0,
        };
        let result = self.renew_checked(pod, id, csr, now, &mut audit).await;
        audit.record(&self.metrics, result.as_ref().map(|_| ()));
        result
    }

    async fn renew_checked(
        &self,
        pod: &PodIdentity,
        id: &str,
        csr: Option<&str>,
        now: Timestamp,
        audit: &mut Audit<'_>,
    ) -> Result<Lease, BrokerError> {
        let claims = self.open_own(pod, id)?;
        audit.secret = qualified(&claims.secret_namespace, &claims.secret_name);
        audit.lease = id.to_owned();
        if claims.expires_at <= now.as_second() {
            return Err(BrokerError::Conflict(format!(
                "lease for {} expired; request a new one",
                audit.secret
            )));
        }
        if self.revoked_leases.is_revoked(&claims).await? {
            return Err(BrokerError::Conflict(format!(
                "lease for {} was revoked; request a new one",
                audit.secret
            )));
        }
        let (secret, grant) =
            self.authorize(pod, &claims.secret_namespace, &claims.secret_name, now)?;
        // Renewal keeps the narrowing the lease was issued with.
        let asked = SecretRequest {
            namespace: claims.secret_namespace.clone(),
            name: claims.secret_name.clone(),
            ttl: None,
            audience: (!claims.audience.is_empty()).then(|| claims.audience.clone()),
            scopes: claims.scopes.clone(),
            csr: None,
        };
        let terms = lease_terms(&secret.spec, &grant.spec, &asked, now).map_err(terms_error)?;
        let ttl = claims.expires_at - claims.issued_at;
        let max_expires_at = claims.max_expires_at.min(terms.max_expires_at);
        if max_expires_at <= now.as_second() {
            return Err(BrokerError::Conflict(format!(
                "lease for {} reached its maxTtl; request a new one",
                audit.secret
            )));
        }
        let expires_at = (now.as_second() + ttl).min(max_expires_at);
        let renewed = LeaseClaims {
            issued_at: now.as_second(),
            expires_at,
            max_expires_at,
            ..claims.clone()
        };
        let csr = decode_csr(csr)?;
        let request = IssueRequest {
            secret: &secret,
            pod,
            terms: &terms,
            now,
            expires_at,
            csr: csr.as_deref(),
        };
        let issued = self.provide(&secret, request, Some(&claims)).await?;
        // A new credential (a new certificate or token) has a handle of
        // its own, and may die before the lease would end.
        let renewed = match &issued {
            Some(issued) => LeaseClaims {
                handle: if issued.handle.is_empty() {
                    renewed.handle
                } else {
                    issued.handle.clone()
                },
                expires_at: issued
                    .expires_at
                    .map_or(renewed.expires_at, |dies| dies.min(renewed.expires_at)),
                ..renewed
            },
            None => renewed,
        };
        let lease = self.lease(&renewed, issued, now);
        self.lease_book
            .record(&renewed, kind_name(&secret), pod, now.as_second());
        audit.ttl = lease.ttl;
        Ok(lease)
    }

    /// Revokes the lease `id` for `pod` now: no replica renews it again
    /// (the revocation is recorded for all of them before anything else),
    /// and the provider drops what it can (a PostgreSQL role). Revoking an
    /// expired lease, or one of a secret since deleted, succeeds: its
    /// credential is gone or going either way.
    pub async fn revoke(
        &self,
        pod: &PodIdentity,
        id: &str,
        now: Timestamp,
    ) -> Result<(), BrokerError> {
        let mut audit = Audit {
            action: "revoke",
            pod,
            secret: String::new(),
            lease: id.to_owned(),
            ttl: 0,
        };
        let result = match self.open_own(pod, id) {
            Ok(claims) => {
                audit.secret = qualified(&claims.secret_namespace, &claims.secret_name);
                // Nothing to record when no id of the lease can renew
                // anyway: past its maxTtl, or for a terminating pod (never
                // served a renewal again), which is how every sidecar gives
                // its leases back at pod end.
                let recorded = if claims.max_expires_at > now.as_second() && !pod.terminating {
                    self.revoked_leases.record(&claims, now.as_second()).await
                } else {
                    Ok(())
                };
                match recorded {
                    Ok(()) => self.revoke_claims(&claims).await,
                    Err(error) => Err(error.into()),
                }
            }
            Err(error) => Err(error),
        };
        if result.is_err() {
            audit.lease = String::new();
        }
        audit.record(&self.metrics, result.as_ref().map(|_| ()));
        result
    }

    async fn revoke_claims(&self, claims: &LeaseClaims) -> Result<(), BrokerError> {
        self.lease_book.forget(&claims.serial());
        self.live_leases.forget(
            &claims.pod_uid,
            &claims.secret_namespace,
            &claims.secret_name,
            claims.max_expires_at,
        );
        async fn call<P: Provider>(
            broker: &Broker,
            provider: &P,
            secret: Option<&BrokeredSecret>,
            claims: &LeaseClaims,
        ) -> Result<(), BrokerError> {
            provider
                .revoke(secret, claims)
                .await
                .map_err(|error| broker.provider_error(provider, error))
        }
        let secret = self
            .secrets
            .get(&ObjectRef::new(&claims.secret_name).within(&claims.secret_namespace));
        let kind = secret
            .as_deref()
            .and_then(|secret| secret.spec.source.kind());
        // Only postgres, x509 and oauth2 leases carry a handle, x509's and
        // oauth2's marked: a lease with one is of that source even when its
        // BrokeredSecret is gone.
        match kind {
            _ if claims.handle.starts_with(x509::HANDLE_PREFIX) => {
                call(self, &self.x509, secret.as_deref(), claims).await
            }
            _ if claims.handle.starts_with(oauth2::HANDLE_PREFIX) => {
                call(self, &self.oauth2, secret.as_deref(), claims).await
            }
            _ if claims.handle.starts_with(jwt::HANDLE_PREFIX) => {
                call(self, &self.jwt, secret.as_deref(), claims).await
            }
            _ if !claims.handle.is_empty() => {
                call(self, &self.postgres, secret.as_deref(), claims).await
            }
            Some(SourceKind::Postgres) => {
                call(self, &self.postgres, secret.as_deref(), claims).await
            }
            Some(SourceKind::Jwt) => call(self, &self.jwt, secret.as_deref(), claims).await,
            Some(SourceKind::X509) => call(self, &self.x509, secret.as_deref(), claims).await,
            Some(SourceKind::OAuth2) => call(self, &self.oauth2, secret.as_deref(), claims).await,
            Some(SourceKind::KubernetesSecret) | None => {
                call(self, &self.kubernetes_secret, secret.as_deref(), claims).await
            }
        }
    }

    /// One reaper pass over every provider: drops what should no longer
    /// exist. `pods` must be a complete index.
    pub async fn reap(
        &self,
        pods: &PodIndex,
        unknown_pod_grace: Duration,
        now: Timestamp,
    ) -> Reaped {
        let secrets = self.secrets.state();
        let withdrawn = |uid: &str, secret: &str| {
            let (Some(pod), Some((namespace, name))) = (pods.get(uid), secret.split_once('/'))
            else {
                return false;
            };
            let secret = SecretReference {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            };
            self.withdrawal(&pod.holder(&secret), now).is_some()
        };
        let context = ReapContext {
            secrets: &secrets,
            presence: &|uid| pods.presence(uid),
            withdrawn: &withdrawn,
            now: now.as_second(),
            unknown_pod_grace: seconds(unknown_pod_grace),
        };
        // kubernetesSecret copies, JWTs and certificates die on their own.
        let reaped = self.postgres.reap(context).await;
        self.metrics.observe_reaped(self.postgres.kind(), &reaped);
        let tokens = self.oauth2.reap(context).await;
        self.metrics.observe_reaped(self.oauth2.kind(), &tokens);
        let records = self
            .revoked_leases
            .reap(
                &|uid| pods.presence(uid),
                now.as_second(),
                seconds(unknown_pod_grace),
            )
            .await;
        self.metrics.observe_reaped("revocation_record", &records);
        Reaped {
            found: reaped.found + tokens.found,
            expired: reaped.expired + tokens.expired,
            pod_gone: reaped.pod_gone + tokens.pod_gone,
            withdrawn: reaped.withdrawn + tokens.withdrawn,
            failed: reaped.failed + tokens.failed,
        }
    }
}

/// The files the pod gets: the provider's own, or with `spec.files`, those
/// templates rendered with the provider's files as variables (a Secret's
/// keys, `username` and `password`, or `token`).
fn render(secret: &BrokeredSecret, issued: Issued) -> Result<Issued, BrokerError> {
    let templates = &secret.spec.files;
    if templates.is_empty() {
        return Ok(issued);
    }
    let mut variables = Variables::from(issued.files);
    for (name, value) in issued.variables {
        variables.insert(name, Zeroizing::new(value.into_bytes()));
    }
    let files =
        render_files(templates, &variables).map_err(|error| template_error(secret, &error))?;
    Ok(Issued {
        files,
        handle: issued.handle,
        variables: BTreeMap::new(),
        expires_at: issued.expires_at,
    })
}

/// A template the secret's owner must fix: 503, since the pod can do
/// nothing but retry once they have.
fn template_error(secret: &BrokeredSecret, error: &TemplateError) -> BrokerError {
    BrokerError::Unavailable(format!(
        "BrokeredSecret {}/{}: spec.files: {error}",
        secret.metadata.namespace.as_deref().unwrap_or_default(),
        secret.metadata.name.as_deref().unwrap_or_default(),
    ))
}

fn unsupported(secret: &BrokeredSecret) -> BrokerError {
    BrokerError::NotImplemented(format!(
        "BrokeredSecret {}/{} has no source this broker version serves",
        secret.metadata.namespace.as_deref().unwrap_or_default(),
        secret.metadata.name.as_deref().unwrap_or_default(),
    ))
}

fn terms_error(error: TermsError) -> BrokerError {
    match error {
        TermsError::BadTtl(_) => BrokerError::BadRequest(error.to_string()),
        TermsError::Invalid(_) => BrokerError::Unavailable(error.to_string()),
        _ => BrokerError::Forbidden(error.to_string()),
    }
}

/// The source kind of `secret`, as the lease book lists it.
fn kind_name(secret: &BrokeredSecret) -> &'static str {
    secret
        .spec
        .source
        .kind()
        .map_or("unknown", SourceKind::as_str)
}

fn seconds(duration: Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
}
