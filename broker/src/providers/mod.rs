//! Where credentials come from. Every provider implements [`Provider`]:
//! issue a credential for a pod under given terms, renew it, revoke it, and
//! reap what it issued that should no longer exist. Each provider is one
//! module; the broker picks one by the BrokeredSecret's `source`.

pub mod jwt;
pub mod kubernetes_secret;
pub mod oauth2;
pub mod postgres;
mod postgres_tls;
pub mod secret_reader;
mod tls;
pub mod x509;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;

use super::auth::PodIdentity;
use super::lease_id::LeaseClaims;
use super::pods::PodPresence;
use super::terms::LeaseTerms;
use ferry_api::resources::BrokeredSecret;

pub use ferry_api::files::Files;

/// What a provider issued.
pub struct Issued {
    /// The files the sidecar writes.
    pub files: Files,
    /// The provider's handle for renewal and revocation (such as a role
    /// name); empty when there is nothing to revoke. Carried in the lease
    /// id, so it must not be secret.
    pub handle: String,
    /// Values templates may use besides the files (such as the database's
    /// host and port); never sent to the pod unless a template uses them.
    pub variables: BTreeMap<String, String>,
    /// When the credential dies upstream, in Unix seconds, if before the
    /// lease would end (an access token's expiry): the lease ends then.
    pub expires_at: Option<i64>,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("files", &self.files.keys().collect::<Vec<_>>())
            .field("handle", &self.handle)
            .field("variables", &self.variables.keys().collect::<Vec<_>>())
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// What a provider is asked to issue for.
#[derive(Debug, Clone, Copy)]
pub struct IssueRequest<'a> {
    /// The BrokeredSecret.
    pub secret: &'a BrokeredSecret,
    /// The pod it is for.
    pub pod: &'a PodIdentity,
    /// How long and how narrowly.
    pub terms: &'a LeaseTerms,
    /// Issuance time.
    pub now: Timestamp,
    /// When the lease expires, in Unix seconds.
    pub expires_at: i64,
    /// The pod's CSR (DER), for a certificate.
    pub csr: Option<&'a [u8]>,
}

/// Why a provider could not do what it was asked. Messages name objects and
/// keys, never values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// What the secret points at does not exist (404 to the caller).
    #[error("{0}")]
    NotFound(String),
    /// The backend is unreachable or failing (503 to the caller).
    #[error("{0}")]
    Unavailable(String),
    /// The BrokeredSecret asks for something this provider cannot do.
    #[error("{0}")]
    Invalid(String),
    /// The installation does not let this BrokeredSecret reach what it
    /// names (403 to the caller), such as a Secret its owner did not opt in.
    #[error("{0}")]
    Refused(String),
    /// The lease's credential no longer exists: revoked or reaped (409 to
    /// the caller).
    #[error("{0}")]
    Gone(String),
}

/// A source of credentials.
pub trait Provider: Send + Sync {
    /// The `source` field this provider serves, such as `kubernetesSecret`.
    fn kind(&self) -> &'static str;

    /// Issues a credential for `request.pod`.
    fn issue(
        &self,
        request: IssueRequest<'_>,
    ) -> impl Future<Output = Result<Issued, ProviderError>> + Send;

    /// Extends the credential of `lease` to `expires_at` (Unix seconds).
    /// Returns new files when the credential itself changes (a re-signed
    /// token), or `None` when the files the pod has stay valid.
    fn renew(
        &self,
        request: IssueRequest<'_>,
        lease: &LeaseClaims,
    ) -> impl Future<Output = Result<Option<Issued>, ProviderError>> + Send;

    /// Makes the credential of `lease` stop working now. `secret` is the
    /// lease's BrokeredSecret, `None` once it has been deleted.
    fn revoke(
        &self,
        secret: Option<&BrokeredSecret>,
        lease: &LeaseClaims,
    ) -> impl Future<Output = Result<(), ProviderError>> + Send;

    /// Removes what this provider issued that should no longer exist:
    /// expired credentials and those of pods that are gone. Providers whose
    /// credentials die on their own have nothing to reap.
    fn reap(&self, context: ReapContext<'_>) -> impl Future<Output = Reaped> + Send {
        let _ = context;
        std::future::ready(Reaped::default())
    }
}

/// What a reaper pass knows of the cluster.
#[derive(Clone, Copy)]
pub struct ReapContext<'a> {
    /// Every BrokeredSecret of the cluster.
    pub secrets: &'a [Arc<BrokeredSecret>],
    /// Whether the pod with this uid exists. Only complete pod indexes may
    /// be asked: a pod missing from a partial one would lose its lease.
    pub presence: &'a (dyn Fn(&str) -> PodPresence + Sync),
    /// Whether the pod with this uid (present in the index) may no longer
    /// have the BrokeredSecret `namespace/name`: a Revocation took it
    /// away, or no valid Grant allows it any more.
    pub withdrawn: &'a (dyn Fn(&str, &str) -> bool + Sync),
    /// The time of the pass, in Unix seconds.
    pub now: i64,
    /// How long a credential of a pod this replica has never seen is left
    /// alone: another replica's pod watch may be ahead of this one's.
    pub unknown_pod_grace: i64,
}

/// What one reaper pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reaped {
    /// Credentials found that this provider issued, before reaping.
    pub found: usize,
    /// Dropped because they expired.
    pub expired: usize,
    /// Dropped because their pod is gone.
    pub pod_gone: usize,
    /// Dropped because their access was withdrawn.
    pub withdrawn: usize,
    /// Backends that could not be reached or cleaned (each logged).
    pub failed: usize,
}
