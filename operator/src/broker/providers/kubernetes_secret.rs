//! `kubernetesSecret`: hands a pod a copy of the keys of a Secret in the
//! BrokeredSecret's namespace. Nothing to revoke: the copy lives in the
//! pod's tmpfs and dies with it.
//!
//! Secrets are read with `get` and kept for a few seconds, in a bounded
//! cache, rather than watched: a watch would hold every Secret of the
//! cluster in the broker's memory and need cluster-wide `list` and `watch`
//! on Secrets, a far larger blast radius than `get` on the few referenced.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use zeroize::Zeroizing;

use super::{Files, IssueRequest, Issued, Provider, ProviderError};
use crate::broker::lease_id::LeaseClaims;

/// How long a read Secret is reused.
const CACHE_TTL: Duration = Duration::from_secs(5);

/// The most Secrets kept at once.
const CACHE_CAPACITY: usize = 4096;

/// How long reading a Secret may take.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Recently read Secrets: (namespace, name) to (reuse until, files).
type SecretCache = HashMap<(String, String), (Instant, Arc<Files>)>;

/// The `kubernetesSecret` provider.
pub struct KubernetesSecretProvider {
    client: kube::Client,
    cache: Mutex<SecretCache>,
}

impl KubernetesSecretProvider {
    /// A provider reading Secrets with `client`.
    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            cache: Mutex::default(),
        }
    }

    async fn files(&self, namespace: &str, name: &str) -> Result<Arc<Files>, ProviderError> {
        let key = (namespace.to_owned(), name.to_owned());
        let now = Instant::now();
        if let Some((_, files)) = self
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .filter(|(expires, _)| *expires > now)
        {
            return Ok(Arc::clone(files));
        }
        let secrets = Api::<Secret>::namespaced(self.client.clone(), namespace);
        let secret = tokio::time::timeout(READ_TIMEOUT, secrets.get_opt(name))
            .await
            .map_err(|_| {
                ProviderError::Unavailable(format!(
                    "reading Secret {namespace}/{name} took over {READ_TIMEOUT:?}"
                ))
            })?
            .map_err(|error| {
                ProviderError::Unavailable(format!("reading Secret {namespace}/{name}: {error}"))
            })?
            .ok_or_else(|| {
                ProviderError::NotFound(format!("Secret {namespace}/{name} not found"))
            })?;
        let files: Files = secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(key, value)| (key, Zeroizing::new(value.0)))
            .collect();
        if files.is_empty() {
            return Err(ProviderError::NotFound(format!(
                "Secret {namespace}/{name} has no data"
            )));
        }
        let files = Arc::new(files);
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= CACHE_CAPACITY {
            cache.retain(|_, (expires, _)| *expires > now);
            if cache.len() >= CACHE_CAPACITY {
                cache.clear();
            }
        }
        cache.insert(key, (now + CACHE_TTL, Arc::clone(&files)));
        Ok(files)
    }

    async fn copy(&self, request: IssueRequest<'_>) -> Result<Issued, ProviderError> {
        let spec = &request.secret.spec;
        let source = spec.source.kubernetes_secret.as_ref().ok_or_else(|| {
            ProviderError::Invalid("not a kubernetesSecret BrokeredSecret".into())
        })?;
        if !spec.files.is_empty() {
            return Err(ProviderError::Invalid(
                "file templates are not supported by this broker version yet; remove spec.files"
                    .into(),
            ));
        }
        let namespace = request
            .secret
            .metadata
            .namespace
            .as_deref()
            .unwrap_or_default();
        let files = self.files(namespace, &source.name).await?;
        Ok(Issued {
            files: files
                .iter()
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect(),
            handle: String::new(),
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

    async fn revoke(&self, _lease: &LeaseClaims) -> Result<(), ProviderError> {
        Ok(())
    }
}
