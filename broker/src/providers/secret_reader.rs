//! Reads the Secrets providers need (the keys a `kubernetesSecret` copies,
//! a `postgres` admin connection string) with `get`, keeping each for a few
//! seconds in a bounded cache rather than watching them: a watch would hold
//! every Secret of the cluster in the broker's memory and need cluster-wide
//! `list` and `watch` on Secrets, a far larger blast radius than `get` on
//! the few referenced.
//!
//! A Secret is handed out only if its owner opted in
//! ([`ferry_api::confinement::brokerable`]): being allowed to create a
//! BrokeredSecret in a namespace is not being allowed to read its Secrets.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use zeroize::Zeroizing;

use super::{Files, ProviderError};
use crate::custody::CustodyLog;
use ferry_api::confinement::SecretUse;

/// How long a read Secret is reused.
const CACHE_TTL: Duration = Duration::from_secs(5);

/// The most Secrets kept at once.
const CACHE_CAPACITY: usize = 4096;

/// How long reading a Secret may take.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Recently read Secrets: (namespace, name, use) to (reuse until, data).
/// The use is part of the key: a Secret allowed for signing only must not
/// be served from the cache to a source that copies it.
type Cache = HashMap<(String, String, SecretUse), (Instant, Arc<Files>)>;

/// Whether `secret` (`namespace/name`) may be used as `used`: its owner
/// opted it in ([`ferry_api::confinement::brokerable_for`]).
pub fn opted_in(
    used: SecretUse,
    namespace: &str,
    name: &str,
    secret: &Secret,
) -> Result<(), ProviderError> {
    ferry_api::confinement::brokerable_for(
        used,
        namespace,
        name,
        secret.type_.as_deref(),
        secret
            .metadata
            .labels
            .as_ref()
            .and_then(|labels| labels.get(ferry_contract::BROKERABLE_LABEL))
            .map(String::as_str),
    )
    .map_err(|refusal| ProviderError::Refused(refusal.message))
}

/// A Secret's data as files, each wiped when dropped.
pub fn files_of(data: Option<BTreeMap<String, ByteString>>) -> Files {
    data.unwrap_or_default()
        .into_iter()
        .map(|(key, value)| (key, Zeroizing::new(value.0)))
        .collect()
}

/// Reads Secrets' data through a short-lived, bounded cache.
pub struct SecretReader {
    client: kube::Client,
    cache: Mutex<Cache>,
    custody: Option<Arc<CustodyLog>>,
}

impl SecretReader {
    /// A reader using `client`.
    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            cache: Mutex::default(),
            custody: None,
        }
    }

    /// The same, telling `custody` of every Secret read and used.
    pub fn with_custody(self, custody: Arc<CustodyLog>) -> Self {
        Self {
            custody: Some(custody),
            ..self
        }
    }

    /// Forgets what is cached of Secret `namespace/name` (the broker just
    /// changed it).
    pub fn forget(&self, namespace: &str, name: &str) {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(ns, n, _), _| !(ns == namespace && n == name));
    }

    /// The data of Secret `namespace/name`: refused when missing or empty.
    pub async fn data(&self, namespace: &str, name: &str) -> Result<Arc<Files>, ProviderError> {
        self.data_for(SecretUse::Read, namespace, name).await
    }

    /// The data of Secret `namespace/name` for `used`.
    pub async fn data_for(
        &self,
        used: SecretUse,
        namespace: &str,
        name: &str,
    ) -> Result<Arc<Files>, ProviderError> {
        let key = (namespace.to_owned(), name.to_owned(), used);
        let now = Instant::now();
        if let Some((_, files)) = self
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .filter(|(expires, _)| *expires > now)
        {
            if let Some(custody) = &self.custody {
                custody.used(namespace, name);
            }
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
        opted_in(used, namespace, name, &secret)?;
        if let Some(custody) = &self.custody {
            custody.read(namespace, name, &secret);
        }
        let files = files_of(secret.data);
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
}
