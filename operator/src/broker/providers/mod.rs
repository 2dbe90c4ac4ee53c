//! Where credentials come from. Every provider implements [`Provider`]:
//! issue a credential for a pod under given terms, renew it, revoke it, and
//! reap what it issued that should no longer exist. Each provider is one
//! module; the broker picks one by the BrokeredSecret's `source`.

pub mod jwt;
pub mod kubernetes_secret;
pub mod secret_reader;

use std::collections::BTreeMap;
use std::future::Future;

use k8s_openapi::jiff::Timestamp;
use zeroize::Zeroizing;

use super::auth::PodIdentity;
use super::lease_id::LeaseClaims;
use super::terms::LeaseTerms;
use crate::resources::BrokeredSecret;

/// A credential's files: name to content. The content is wiped from memory
/// when dropped.
pub type Files = BTreeMap<String, Zeroizing<Vec<u8>>>;

/// What a provider issued.
pub struct Issued {
    /// The files the sidecar writes.
    pub files: Files,
    /// The provider's handle for renewal and revocation (such as a role
    /// name); empty when there is nothing to revoke. Carried in the lease
    /// id, so it must not be secret.
    pub handle: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("files", &self.files.keys().collect::<Vec<_>>())
            .field("handle", &self.handle)
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

    /// Makes the credential of `lease` stop working now.
    fn revoke(&self, lease: &LeaseClaims)
    -> impl Future<Output = Result<(), ProviderError>> + Send;
}
