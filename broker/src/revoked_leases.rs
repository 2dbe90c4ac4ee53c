//! Revoked leases, shared by every broker replica and kept across restarts.
//!
//! Lease ids are stateless (see [`crate::lease_id`]): any replica renews
//! any lease. For a PostgreSQL lease revocation drops the role, so a
//! renewal fails on its own; a kubernetesSecret or jwt lease has nothing
//! upstream to drop, and without a record its id would renew again. So
//! every revocation is recorded as a ConfigMap in ferry's namespace, named
//! after the lease's serial (`ferry-revoked-lease-<serial>`) and holding
//! only names: the pod's uid, the secret and until when the lease could
//! have been renewed. Each replica keeps the records it has seen in memory
//! from a watch; a renewal whose serial is not among them asks the
//! apiserver once by name, so a revocation made by another replica a
//! moment ago is never missed. Without an answer the renewal is refused
//! for now (503), never granted.
//!
//! A record is needed only while the lease could still be renewed: until
//! its maxTtl, and only while its pod exists, since a pod's projected
//! token stops authenticating once the pod is gone (and another pod cannot
//! renew it: a lease names its pod). The reaper deletes the rest, so the
//! records stay as few as the live pods' revoked leases.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use ferry_runtime::watch_index::{self, WatchedIndex};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::lease_id::LeaseClaims;
use crate::pods::PodPresence;
use crate::providers::Reaped;

/// The label every revocation record carries (value `true`).
pub const REVOKED_LEASE_LABEL: &str = "ferry.dev/revoked-lease";

/// Names of revocation records start with this, then the lease's serial.
pub const RECORD_PREFIX: &str = "ferry-revoked-lease-";

/// A revocation could not be recorded or checked: the apiserver did not
/// answer as expected. The message names no lease id.
#[derive(Debug, thiserror::Error)]
#[error("revoked leases cannot be {action} now: {source}")]
pub struct RevocationError {
    action: &'static str,
    #[source]
    source: kube::Error,
}

/// What a replica remembers of one revoked lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The uid of the lease's pod.
    pod_uid: String,
    /// The lease's maxTtl end, in Unix seconds: after it, no renewal.
    until: i64,
    /// When the record was made, in Unix seconds.
    since: i64,
    /// For a jwt lease: its current token's `jti` and expiry, published
    /// as revoked until then.
    token: Option<(String, i64)>,
}

/// The revoked leases: a watched, in-memory copy of the records, and the
/// API to write them. Cheap to clone; clones share the copy.
#[derive(Clone)]
pub struct RevokedLeases {
    api: Api<ConfigMap>,
    records: Arc<RwLock<HashMap<String, Record>>>,
    synced: watch::Sender<bool>,
}

impl std::fmt::Debug for RevokedLeases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RevokedLeases")
            .field("records", &self.len())
            .finish_non_exhaustive()
    }
}

fn record_name(serial: &str) -> String {
    format!("{RECORD_PREFIX}{serial}")
}

/// The serial and record a ConfigMap holds, if it is a revocation record.
fn parse(object: &ConfigMap) -> Option<(String, Record)> {
    let serial = object
        .metadata
        .name
        .as_deref()?
        .strip_prefix(RECORD_PREFIX)?;
    let data = object.data.as_ref();
    let field = |key: &str| data.and_then(|data| data.get(key)).cloned();
    Some((
        serial.to_owned(),
        Record {
            pod_uid: field("pod").unwrap_or_default(),
            // A record that says nothing readable of its end is kept until
            // its pod is gone.
            until: field("until")
                .and_then(|until| until.parse().ok())
                .unwrap_or(i64::MAX),
            since: object
                .metadata
                .creation_timestamp
                .as_ref()
                .map_or(0, |at| at.0.as_second()),
            token: field("jti").map(|jti| {
                let expires = field("jti-expires")
                    .and_then(|at| at.parse().ok())
                    .unwrap_or(i64::MAX);
                (jti, expires)
            }),
        },
    ))
}

impl RevokedLeases {
    /// RevokedLeases recorded in `namespace` (ferry's) through `client`.
    pub fn new(client: kube::Client, namespace: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            records: Arc::default(),
            synced: watch::Sender::new(false),
        }
    }

    /// How many revoked leases this replica knows of.
    pub fn len(&self) -> usize {
        self.records
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether this replica knows of no revoked lease.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn remember(&self, serial: String, record: Record) {
        self.records
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(serial, record);
    }

    /// Records that the lease `claims` names is revoked, for every replica.
    /// Recording it again succeeds.
    pub async fn record(&self, claims: &LeaseClaims, now: i64) -> Result<(), RevocationError> {
        let serial = claims.serial();
        let token = claims
            .handle
            .strip_prefix(crate::providers::jwt::HANDLE_PREFIX)
            .map(|jti| (jti.to_owned(), claims.expires_at));
        let mut object: ConfigMap = serde_json::from_value(json!({
            "metadata": {
                "name": record_name(&serial),
                "labels": {
                    REVOKED_LEASE_LABEL: "true",
                    "app.kubernetes.io/managed-by": "ferry-broker",
                },
            },
            "data": {
                "pod": claims.pod_uid,
                "secret": format!("{}/{}", claims.secret_namespace, claims.secret_name),
                "until": claims.max_expires_at.to_string(),
            },
        }))
        .unwrap_or_default();
        if let (Some((jti, expires)), Some(data)) = (&token, object.data.as_mut()) {
            data.insert("jti".into(), jti.clone());
            data.insert("jti-expires".into(), expires.to_string());
        }
        match self.api.create(&PostParams::default(), &object).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(source) => {
                return Err(RevocationError {
                    action: "recorded",
                    source,
                });
            }
        }
        self.remember(
            serial,
            Record {
                pod_uid: claims.pod_uid.clone(),
                until: claims.max_expires_at,
                since: now,
                token,
            },
        );
        Ok(())
    }

    /// Whether the lease `claims` names was revoked, by any replica. Known
    /// here, or else asked of the apiserver by name.
    pub async fn is_revoked(&self, claims: &LeaseClaims) -> Result<bool, RevocationError> {
        let serial = claims.serial();
        let known = self
            .records
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&serial);
        if known {
            return Ok(true);
        }
        match self.api.get_opt(&record_name(&serial)).await {
            Ok(None) => Ok(false),
            Ok(Some(object)) => {
                if let Some((serial, record)) = parse(&object) {
                    self.remember(serial, record);
                }
                Ok(true)
            }
            Err(source) => Err(RevocationError {
                action: "checked",
                source,
            }),
        }
    }

    /// Deletes the records no renewal can need any more: past their
    /// lease's maxTtl, or whose pod is gone (seen leaving, or unknown for
    /// longer than `unknown_pod_grace` seconds: another replica's pod watch
    /// may be ahead of this one's).
    pub async fn reap(
        &self,
        presence: &(dyn Fn(&str) -> PodPresence + Sync),
        now: i64,
        unknown_pod_grace: i64,
    ) -> Reaped {
        let candidates: Vec<(String, Record)> = self
            .records
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(serial, record)| (serial.clone(), record.clone()))
            .collect();
        let mut reaped = Reaped {
            found: candidates.len(),
            ..Reaped::default()
        };
        for (serial, record) in candidates {
            // A revoked token stays published until it expires, even
            // after its pod is gone: a relying party may still be shown it.
            if record
                .token
                .as_ref()
                .is_some_and(|(_, expires)| *expires > now)
            {
                continue;
            }
            let expired = record.until <= now;
            let pod_gone = match presence(&record.pod_uid) {
                PodPresence::Present => false,
                PodPresence::Departed => true,
                PodPresence::Unknown => now.saturating_sub(record.since) > unknown_pod_grace,
            };
            if !expired && !pod_gone {
                continue;
            }
            match self
                .api
                .delete(&record_name(&serial), &DeleteParams::default())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(error) => {
                    tracing::warn!(%error, serial, "could not delete a revocation record");
                    reaped.failed += 1;
                    continue;
                }
            }
            self.records
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&serial);
            if expired {
                reaped.expired += 1;
            } else {
                reaped.pod_gone += 1;
            }
        }
        reaped
    }

    /// The ids (`jti`) of revoked tokens not yet expired at `now`, with
    /// their expiry, as every replica publishes them.
    pub fn revoked_tokens(&self, now: i64) -> Vec<(String, i64)> {
        let mut tokens: Vec<(String, i64)> = self
            .records
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter_map(|record| record.token.clone())
            .filter(|(_, expires)| *expires > now)
            .collect();
        tokens.sort();
        tokens
    }

    /// Whether the copy has been filled from a complete list.
    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// Waits until the copy has been filled from a complete list.
    pub async fn wait_synced(&self) {
        let mut synced = self.synced.subscribe();
        let _ = synced.wait_for(|synced| *synced).await;
    }

    /// Keeps the copy in step with the records until `shutdown`.
    pub async fn maintain(&self, shutdown: CancellationToken) {
        let config = watcher::Config::default().labels(&format!("{REVOKED_LEASE_LABEL}=true"));
        watch_index::maintain(self, self.api.clone(), config, shutdown).await;
    }
}

impl WatchedIndex<ConfigMap> for RevokedLeases {
    type Entry = (String, Record);
    const KIND: &'static str = "revoked-lease ConfigMap";

    fn entry(&self, object: ConfigMap) -> Option<(String, Record)> {
        parse(&object)
    }

    fn apply(&self, object: ConfigMap) {
        if let Some((serial, record)) = parse(&object) {
            self.remember(serial, record);
        }
    }

    fn delete(&self, object: ConfigMap) {
        if let Some((serial, _)) = parse(&object) {
            self.records
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&serial);
        }
    }

    fn replace(&self, entries: Vec<(String, Record)>) {
        let entries: HashMap<String, Record> = entries.into_iter().collect();
        *self.records.write().unwrap_or_else(PoisonError::into_inner) = entries;
        self.synced.send_replace(true);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn config_map(name: &str, data: &[(&str, &str)]) -> ConfigMap {
        ConfigMap {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn a_record_is_read_back_by_serial() {
        let (serial, record) = parse(&config_map(
            "ferry-revoked-lease-00112233445566778899aabbccddeeff",
            &[
                ("pod", "uid-1"),
                ("secret", "ns/db"),
                ("until", "1800003600"),
            ],
        ))
        .unwrap();
        assert_eq!(serial, "00112233445566778899aabbccddeeff");
        assert_eq!(record.pod_uid, "uid-1");
        assert_eq!(record.until, 1_800_003_600);
    }

    #[test]
    fn other_config_maps_are_not_records_and_unreadable_ends_never_expire() {
        assert!(parse(&config_map("kube-root-ca.crt", &[])).is_none());
        let (_, record) = parse(&config_map(
            "ferry-revoked-lease-ab",
            &[("pod", "uid-1"), ("until", "soon")],
        ))
        .unwrap();
        assert_eq!(record.until, i64::MAX);
    }
}
