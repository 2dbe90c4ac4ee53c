//! The broker's keys, kept in Secrets of ferry's namespace that every
//! replica shares: the lease key that seals lease ids, and the JWT signing
//! keys, created when absent and rotated by whichever replica finds a
//! rotation due first (the others adopt what it stored).

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_contract::{BROKER_MANAGER, MANAGED_BY_LABEL};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use tokio_util::sync::CancellationToken;

use crate::jwt_keys::{StoredJwtKeys, maintain};
use crate::lease_id::{LEASE_KEY_BYTES, LeaseKeys, generate_lease_key};
use crate::providers::jwt::{JwtKeyHandle, JwtProvider, generate_key};
use ferry_runtime::secrets::{self, UpsertError};

/// The key of the lease-key Secret holding the current key.
pub const LEASE_KEY_CURRENT: &str = "current";

/// The key of the lease-key Secret holding the previous key, if any.
pub const LEASE_KEY_PREVIOUS: &str = "previous";

/// A key Secret could not be read, created or used: `namespace/name: why`.
#[derive(Debug, thiserror::Error)]
#[error("key Secret {0}")]
pub struct KeyError(String);

/// A signing key as the broker keeps it: the `current` key, and the
/// `previous` one after a rotation.
struct StoredKeys {
    current: Vec<u8>,
    previous: Option<Vec<u8>>,
}

impl StoredKeys {
    fn previous(&self) -> Vec<&[u8]> {
        self.previous.as_deref().into_iter().collect()
    }
}

/// A new key Secret of the broker's, holding `data`.
fn key_secret(data: BTreeMap<String, ByteString>) -> Secret {
    Secret {
        metadata: ObjectMeta {
            labels: Some(BTreeMap::from([(
                MANAGED_BY_LABEL.to_owned(),
                BROKER_MANAGER.to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Secret::default()
    }
}

/// An [`UpsertError`] of a key Secret as the broker reports it.
fn key_secret_error(namespace: &str, name: &str) -> impl Fn(UpsertError<KeyError>) -> KeyError {
    move |error| match error {
        UpsertError::Decide(error) => error,
        UpsertError::Kube { source, .. } => KeyError(format!("{namespace}/{name}: {source}")),
        UpsertError::Contended { .. } => KeyError(format!(
            "{namespace}/{name}: kept changing while it was being updated"
        )),
    }
}

/// The keys in the broker's own Secret `namespace/name`, creating it with a
/// `current` key from `generate()` when absent. Replicas racing to create
/// it all end up with the one that was stored.
async fn load_or_create_keys(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    generate: impl Fn() -> Option<Vec<u8>>,
) -> Result<StoredKeys, KeyError> {
    let secrets = Api::<Secret>::namespaced(client.clone(), namespace);
    let fail = |what: String| KeyError(format!("{namespace}/{name}: {what}"));
    let upserted = secrets::upsert(&secrets, name, |existing| match existing {
        Some(_) => Ok(None),
        None => {
            let key = generate().ok_or_else(|| fail("the OS random source failed".into()))?;
            Ok(Some(key_secret(BTreeMap::from([(
                LEASE_KEY_CURRENT.to_owned(),
                ByteString(key),
            )]))))
        }
    })
    .await
    .map_err(key_secret_error(namespace, name))?;
    if upserted.written {
        tracing::info!(secret = %format!("{namespace}/{name}"), "created the broker's key Secret");
    }
    let mut data = upserted
        .secret
        .and_then(|secret| secret.data)
        .unwrap_or_default();
    let current = data
        .remove(LEASE_KEY_CURRENT)
        .ok_or_else(|| fail(format!("has no {LEASE_KEY_CURRENT} key")))?;
    Ok(StoredKeys {
        current: current.0,
        previous: data.remove(LEASE_KEY_PREVIOUS).map(|key| key.0),
    })
}

/// The lease keys from the Secret `namespace/name` (keys `current` and,
/// after a rotation, `previous`), created with a random key when absent.
pub async fn load_or_create_lease_keys(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<LeaseKeys, KeyError> {
    let keys = load_or_create_keys(client, namespace, name, || {
        generate_lease_key().ok().map(|key| key.to_vec())
    })
    .await?;
    if keys.current.len() < LEASE_KEY_BYTES {
        return Err(KeyError(format!(
            "{namespace}/{name}: has no {LEASE_KEY_CURRENT} key of at least {LEASE_KEY_BYTES} bytes"
        )));
    }
    Ok(LeaseKeys::new(&keys.current, &keys.previous()))
}

/// The JWT provider with signing keys from the Secret `namespace/name`
/// (see [`super::jwt_keys`] for its layout), created when absent and
/// completed or rotated as `rotation_period` says; `issuer` is the default
/// `iss`. Keep its keys current with [`refresh_jwt_keys_periodically`].
pub async fn load_or_create_jwt_provider(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    issuer: &str,
    rotation_period: Duration,
) -> Result<JwtProvider, KeyError> {
    let stored = refresh_jwt_keys(client, namespace, name, rotation_period).await?;
    let keys = stored
        .signing_keys()
        .map_err(|error| KeyError(format!("{namespace}/{name}: {error}")))?;
    tracing::info!(secret = %format!("{namespace}/{name}"), kids = ?keys.kids(), "loaded the JWT signing keys");
    Ok(JwtProvider::with_keys(issuer, keys))
}

/// Reads the JWT key Secret `namespace/name` and, when keys are missing or
/// a rotation is due, writes the maintained keys back: created when absent,
/// replaced under the resourceVersion read, so of replicas racing only one
/// rotates and the others adopt what it stored.
pub async fn refresh_jwt_keys(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    rotation_period: Duration,
) -> Result<StoredJwtKeys, KeyError> {
    let secrets = Api::<Secret>::namespaced(client.clone(), namespace);
    let generate = |algorithm| generate_key(algorithm).ok();
    let stored_keys = |secret: Option<&Secret>| {
        let data: BTreeMap<String, Vec<u8>> = secret
            .and_then(|secret| secret.data.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|(key, value)| (key, value.0))
            .collect();
        StoredJwtKeys::from_data(&data)
    };
    // What the last decision wrote, and why.
    let mut written = None;
    let upserted = secrets::upsert(&secrets, name, |existing| {
        let stored = stored_keys(existing);
        let Some((maintained, changed)) =
            maintain(&stored, Timestamp::now(), rotation_period, generate)
        else {
            return Ok(None);
        };
        let data = maintained
            .to_data()
            .iter()
            .map(|(key, value)| (key.clone(), ByteString(value.to_vec())))
            .collect();
        written = Some((maintained, changed));
        Ok(Some(match existing {
            // Everything else about the Secret stays as it is.
            Some(secret) => Secret {
                data: Some(data),
                ..secret.clone()
            },
            None => key_secret(data),
        }))
    })
    .await
    .map_err(key_secret_error(namespace, name))?;
    match written {
        Some((maintained, changes)) if upserted.written => {
            tracing::info!(secret = %format!("{namespace}/{name}"), ?changes, "updated the JWT signing keys");
            Ok(maintained)
        }
        _ => Ok(stored_keys(upserted.secret.as_ref())),
    }
}

/// Re-reads the JWT key Secret every `every` until `shutdown`, rotating
/// when due and swapping changed keys into `handle`, so every replica
/// signs with the current key within `every` of a rotation. A failed
/// refresh keeps the keys in use and is retried at the next tick.
pub async fn refresh_jwt_keys_periodically(
    client: kube::Client,
    namespace: String,
    name: String,
    rotation_period: Duration,
    handle: JwtKeyHandle,
    every: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let keys = refresh_jwt_keys(&client, &namespace, &name, rotation_period)
            .await
            .and_then(|stored| {
                stored
                    .signing_keys()
                    .map_err(|error| KeyError(format!("{namespace}/{name}: {error}")))
            });
        match keys {
            Ok(keys) if keys.kids() != handle.load().kids() => {
                tracing::info!(kids = ?keys.kids(), "now signing and publishing new JWT keys");
                handle.replace(keys);
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, "could not refresh the JWT signing keys; keeping the current ones")
            }
        }
    }
}
