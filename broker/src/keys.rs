//! The broker's keys, kept in Secrets of ferry's namespace that every
//! replica shares: the lease key that seals lease ids (with the key custody
//! fingerprints are made with), and the JWT signing keys, created when
//! absent and rotated by whichever replica finds a rotation due first (the
//! others adopt what it stored).

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_contract::{BROKER_MANAGER, MANAGED_BY_LABEL};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use tokio_util::sync::CancellationToken;

use zeroize::Zeroizing;

use crate::jwt_keys::{StoredJwtKeys, maintain};
use crate::lease_id::{LEASE_KEY_BYTES, LeaseKeys};
use crate::lease_keys::{self, StoredLeaseKeys};
use crate::providers::jwt::{JwtKeyHandle, JwtProvider, generate_key};
use ferry_runtime::secrets::{self, UpsertError};

/// A key Secret could not be read, created or used: `namespace/name: why`.
#[derive(Debug, thiserror::Error)]
#[error("key Secret {0}")]
pub struct KeyError(String);

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

/// The lease keys from the Secret `namespace/name` (see
/// [`crate::lease_keys`] for its layout), created when absent and
/// completed or rotated as `rotation_period` says, with the fingerprint
/// key kept there. Keep them current with [`refresh_lease_keys_periodically`].
pub async fn load_or_create_lease_keys(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    rotation_period: Duration,
) -> Result<(LeaseKeys, StoredLeaseKeys), KeyError> {
    let stored = refresh_lease_keys(client, namespace, name, rotation_period).await?;
    let keys = stored.lease_keys().ok_or_else(|| {
        KeyError(format!(
            "{namespace}/{name}: has no current key of at least {LEASE_KEY_BYTES} bytes"
        ))
    })?;
    tracing::info!(secret = %format!("{namespace}/{name}"), keys = ?stored, "loaded the lease keys");
    Ok((keys, stored))
}

/// Reads the lease-key Secret `namespace/name` and, when keys are missing
/// or a rotation is due, writes the maintained keys back, as
/// [`refresh_jwt_keys`] does for the JWT keys.
pub async fn refresh_lease_keys(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    rotation_period: Duration,
) -> Result<StoredLeaseKeys, KeyError> {
    let generate = |len: usize| {
        let mut key = Zeroizing::new(vec![0u8; len]);
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
            .ok()
            .map(|()| key)
    };
    maintain_key_secret(
        client,
        namespace,
        name,
        StoredLeaseKeys::from_data,
        |stored| lease_keys::maintain(stored, Timestamp::now(), rotation_period, generate),
        StoredLeaseKeys::to_data,
    )
    .await
}

/// Re-reads the lease-key Secret every `every` until `shutdown`, rotating
/// when due and installing changed keys into `handle` (and so into every
/// clone of it and its seal), so every replica seals with the same key
/// within `every` of a rotation and opens what any replica sealed. A
/// failed refresh keeps the keys in use and is retried at the next tick.
/// `observe` sees the keys after each successful refresh.
#[allow(clippy::too_many_arguments)]
pub async fn refresh_lease_keys_periodically(
    client: kube::Client,
    namespace: String,
    name: String,
    rotation_period: Duration,
    handle: LeaseKeys,
    every: Duration,
    shutdown: CancellationToken,
    observe: impl Fn(&StoredLeaseKeys) + Send,
) {
    let mut installed = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        match refresh_lease_keys(&client, &namespace, &name, rotation_period).await {
            Ok(stored) => {
                let created = stored.created();
                if installed != Some(created) {
                    if stored.install(&handle) {
                        tracing::info!(keys = ?stored, "now sealing and opening with new lease keys");
                        installed = Some(created);
                    } else {
                        tracing::warn!(secret = %format!("{namespace}/{name}"), "the lease-key Secret has no usable current key; keeping the keys in use");
                    }
                }
                observe(&stored);
            }
            Err(error) => {
                tracing::warn!(%error, "could not refresh the lease keys; keeping the current ones")
            }
        }
    }
}

/// Reads the broker's key Secret `namespace/name` and, when `maintain`
/// says its keys (read with `read`) must change, writes what it returns
/// (as data by `write`): created when absent, replaced under the
/// resourceVersion read, so of replicas racing only one writes and the
/// others adopt what it stored. Returns the keys as stored.
async fn maintain_key_secret<K, C: std::fmt::Debug>(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    read: impl Fn(&BTreeMap<String, Vec<u8>>) -> K,
    mut maintain: impl FnMut(&K) -> Option<(K, C)>,
    write: impl Fn(&K) -> BTreeMap<String, Zeroizing<Vec<u8>>>,
) -> Result<K, KeyError> {
    let secrets = Api::<Secret>::namespaced(client.clone(), namespace);
    let stored_keys = |secret: Option<&Secret>| {
        let data: BTreeMap<String, Vec<u8>> = secret
            .and_then(|secret| secret.data.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|(key, value)| (key, value.0))
            .collect();
        read(&data)
    };
    // What the last decision wrote, and why.
    let mut written = None;
    let upserted = secrets::upsert(&secrets, name, |existing| {
        let stored = stored_keys(existing);
        let Some((maintained, changed)) = maintain(&stored) else {
            return Ok(None);
        };
        let data = write(&maintained)
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
            tracing::info!(secret = %format!("{namespace}/{name}"), ?changes, "updated the broker's keys");
            Ok(maintained)
        }
        _ => Ok(stored_keys(upserted.secret.as_ref())),
    }
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
) -> Result<(JwtProvider, StoredJwtKeys), KeyError> {
    let stored = refresh_jwt_keys(client, namespace, name, rotation_period).await?;
    let keys = stored
        .signing_keys()
        .map_err(|error| KeyError(format!("{namespace}/{name}: {error}")))?;
    tracing::info!(secret = %format!("{namespace}/{name}"), kids = ?keys.kids(), "loaded the JWT signing keys");
    Ok((JwtProvider::with_keys(issuer, keys), stored))
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
    let generate = |algorithm| generate_key(algorithm).ok();
    maintain_key_secret(
        client,
        namespace,
        name,
        StoredJwtKeys::from_data,
        |stored| maintain(stored, Timestamp::now(), rotation_period, generate),
        StoredJwtKeys::to_data,
    )
    .await
}

/// Re-reads the JWT key Secret every `every` until `shutdown`, rotating
/// when due and swapping changed keys into `handle`, so every replica
/// signs with the current key within `every` of a rotation. A failed
/// refresh keeps the keys in use and is retried at the next tick.
/// `observe` sees the keys after each successful refresh.
#[allow(clippy::too_many_arguments)]
pub async fn refresh_jwt_keys_periodically(
    client: kube::Client,
    namespace: String,
    name: String,
    rotation_period: Duration,
    handle: JwtKeyHandle,
    every: Duration,
    shutdown: CancellationToken,
    observe: impl Fn(&StoredJwtKeys) + Send,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let stored = match refresh_jwt_keys(&client, &namespace, &name, rotation_period).await {
            Ok(stored) => stored,
            Err(error) => {
                tracing::warn!(%error, "could not refresh the JWT signing keys; keeping the current ones");
                continue;
            }
        };
        observe(&stored);
        match stored.signing_keys() {
            Ok(keys) if keys.kids() != handle.load().kids() => {
                tracing::info!(kids = ?keys.kids(), "now signing and publishing new JWT keys");
                handle.replace(keys);
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(secret = %format!("{namespace}/{name}"), %error, "could not use the refreshed JWT signing keys; keeping the current ones")
            }
        }
    }
}
