//! `kubernetesSecret`: hands a pod a copy of the keys of a Secret in the
//! BrokeredSecret's namespace. Nothing to revoke: the copy lives in the
//! pod's tmpfs and dies with it.
//!
//! Secrets are read through [`SecretReader`]: `get` and a few seconds of
//! cache, never a watch.

use std::sync::Arc;

use super::secret_reader::SecretReader;
use super::{IssueRequest, Issued, Provider, ProviderError};
use crate::lease_id::LeaseClaims;
use ferry_api::resources::BrokeredSecret;

/// The `kubernetesSecret` provider.
pub struct KubernetesSecretProvider {
    secrets: Arc<SecretReader>,
}

impl KubernetesSecretProvider {
    /// A provider reading Secrets through `secrets`.
    pub fn new(secrets: Arc<SecretReader>) -> Self {
        Self { secrets }
    }

    async fn copy(&self, request: IssueRequest<'_>) -> Result<Issued, ProviderError> {
        let spec = &request.secret.spec;
        let source = spec.source.kubernetes_secret.as_ref().ok_or_else(|| {
            ProviderError::Invalid("not a kubernetesSecret BrokeredSecret".into())
        })?;
        let namespace = request
            .secret
            .metadata
            .namespace
            .as_deref()
            .unwrap_or_default();
        let files = self.secrets.data(namespace, &source.name).await?;
        Ok(Issued {
            files: files
                .iter()
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect(),
            handle: String::new(),
            variables: Default::default(),
            expires_at: None,
        })
    }
}

impl Provider for KubernetesSecretProvider {
    fn kind(&self) -> &'static str {
        "kubernetesSecret"
    }

    async fn issue(&self, request: IssueRequest<'_>) -> Result<Issued, ProviderError> {
        self.copy(request).await
    }

    async fn renew(
        &self,
        request: IssueRequest<'_>,
        _lease: &LeaseClaims,
    ) -> Result<Option<Issued>, ProviderError> {
        // The current content, so a rotated Secret reaches pods at renewal.
        self.copy(request).await.map(Some)
    }

    async fn revoke(
        &self,
        _secret: Option<&BrokeredSecret>,
        _lease: &LeaseClaims,
    ) -> Result<(), ProviderError> {
        Ok(())
    }
}
