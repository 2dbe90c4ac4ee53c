//! The one way ferry writes a Secret it owns (the certificate manager's
//! CA and serving certificates, the broker's lease and JWT keys): read it,
//! let the caller decide whether it is right, and when it is not, create
//! it (absent) or replace it under the resourceVersion just read. A
//! conflict means another replica wrote first: read again and decide again,
//! so replicas racing converge on what was stored and never overwrite each
//! other blindly.

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::PostParams;

/// How many read-decide-write rounds before giving up on a Secret that
/// keeps changing underneath.
const ATTEMPTS: usize = 3;

/// What [`upsert`] did.
#[derive(Debug, Clone)]
pub struct Upserted {
    /// The Secret as stored now: as read when it was kept (`None` when it
    /// is absent and the caller chose to leave it so), else as written.
    pub secret: Option<Secret>,
    /// Whether this call wrote it.
    pub written: bool,
}

/// Why [`upsert`] failed.
#[derive(Debug, thiserror::Error)]
pub enum UpsertError<E: std::error::Error + 'static> {
    /// The apiserver refused a read or a write.
    #[error("{action} Secret {namespace}/{name}: {source}")]
    Kube {
        /// `reading` or `writing`.
        action: &'static str,
        /// The Secret's namespace.
        namespace: String,
        /// The Secret's name.
        name: String,
        /// What the apiserver said.
        #[source]
        source: kube::Error,
    },
    /// The caller's `decide` failed.
    #[error(transparent)]
    Decide(E),
    /// Every attempt lost a race with another writer.
    #[error("Secret {namespace}/{name} kept changing while it was being written")]
    Contended {
        /// The Secret's namespace.
        namespace: String,
        /// The Secret's name.
        name: String,
    },
}

/// Reads the Secret `name` of `secrets`, asks `decide` what it should be
/// (`Ok(None)`: keep it as it is; `Ok(Some(desired))`: write `desired`),
/// and writes it: a create when absent, else a replace carrying the
/// resourceVersion read, so a concurrent write makes this one fail with a
/// conflict instead of being lost. After a conflict it reads and decides
/// again, up to three times in all.
pub async fn upsert<E: std::error::Error + 'static>(
    secrets: &Api<Secret>,
    name: &str,
    mut decide: impl FnMut(Option<&Secret>) -> Result<Option<Secret>, E>,
) -> Result<Upserted, UpsertError<E>> {
    let namespace = secrets.namespace().unwrap_or_default().to_owned();
    let kube_error = |action, source| UpsertError::Kube {
        action,
        namespace: namespace.clone(),
        name: name.to_owned(),
        source,
    };
    for _ in 0..ATTEMPTS {
        let existing = secrets
            .get_opt(name)
            .await
            .map_err(|source| kube_error("reading", source))?;
        let Some(mut desired) = decide(existing.as_ref()).map_err(UpsertError::Decide)? else {
            return Ok(Upserted {
                secret: existing,
                written: false,
            });
        };
        desired.metadata.name = Some(name.to_owned());
        let written = match existing {
            None => {
                desired.metadata.resource_version = None;
                secrets.create(&PostParams::default(), &desired).await
            }
            Some(current) => {
                desired.metadata.resource_version = current.metadata.resource_version;
                secrets
                    .replace(name, &PostParams::default(), &desired)
                    .await
            }
        };
        match written {
            Ok(secret) => {
                return Ok(Upserted {
                    secret: Some(secret),
                    written: true,
                });
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(source) => return Err(kube_error("writing", source)),
        }
    }
    Err(UpsertError::Contended {
        namespace: namespace.clone(),
        name: name.to_owned(),
    })
}
