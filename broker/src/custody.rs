//! The custody inventory: every credential the broker holds or uses,
//! listed where a platform team reads it with `kubectl`, never with a
//! value.
//!
//! - Per BrokeredSecret, `status.custody` (written by the broker with
//!   server-side apply as field manager `ferry-broker`; the operator owns
//!   the conditions): the Secret and keys it uses, a fingerprint of each,
//!   when a broker last used it (at most a minute behind: status is
//!   written when something else changed or `lastUsed` moved on by a
//!   minute, never per issuance), when it was last rotated, and the admin
//!   credential's rotation ([`crate::admin_rotation`]).
//! - Installation-wide, the ConfigMap `ferry-broker-custody` in ferry's
//!   namespace: the lease key and the JWT signing keys, their
//!   fingerprints (RFC 7638 thumbprints for the public JWT keys), when each
//!   was made and when the next rotation is due.
//! - `ferry_broker_custody_age_seconds{credential,namespace,secret}`: how
//!   long since each was last rotated.
//!
//! A fingerprint is `hmac-sha256:<32 hex>`, an HMAC-SHA256 of the value
//! under the fingerprint key kept in the lease-key Secret: stable across
//! replicas and restarts, equal for equal values in one installation, and
//! useless for testing guesses of a low-entropy password offline without
//! that key (a plain hash would not be). Uid+resourceVersion digests were
//! the alternative; they change on any write to the Secret (the oauth2
//! claim annotation changes every refresh), so they would not say whether
//! the credential itself changed.
//!
//! What a replica knows comes from the Secrets it reads anyway
//! ([`crate::providers::secret_reader`] reports each read here): no extra
//! reads of tenant Secrets.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::Store;
use ring::hmac;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::key_slots::StoredSlots;
use crate::lease_keys::StoredLeaseKeys;
use crate::metrics::BrokerMetrics;
use crate::providers::jwt::SigningKey;
use ferry_api::checks::oauth2_keys;
use ferry_api::resources::{BrokeredSecret, CustodyStatus, HeldCredential, HeldKey, JwtAlgorithm};
use ferry_contract::{BROKER_CUSTODY_CONFIGMAP, BROKER_MANAGER, ROTATED_AT_ANNOTATION};

/// `lastUsed` in status moves on by at least this much, unless something
/// else changed too: one status write a minute per secret at most.
pub const LAST_USED_RESOLUTION: Duration = Duration::from_secs(60);

/// How often the writer looks for status to write.
pub const WRITE_INTERVAL: Duration = Duration::from_secs(10);

/// Makes fingerprints: HMAC-SHA256 under a key only the broker holds.
pub struct Fingerprinter(hmac::Key);

impl Fingerprinter {
    /// Fingerprints under `key` (the lease-key Secret's fingerprint key).
    pub fn new(key: &[u8]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, key))
    }

    /// `hmac-sha256:<32 hex digits>` of `value`.
    pub fn fingerprint(&self, value: &[u8]) -> String {
        use std::fmt::Write as _;
        let tag = hmac::sign(&self.0, value);
        tag.as_ref()[..16]
            .iter()
            .fold(String::from("hmac-sha256:"), |mut out, byte| {
                let _ = write!(out, "{byte:02x}");
                out
            })
    }
}

/// What a replica knows of one Secret it read: fingerprints of its keys,
/// when it last used it, when it was made and last rotated by a broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// Key name to fingerprint.
    pub fingerprints: BTreeMap<String, String>,
    /// When this replica last used it.
    pub last_used: Timestamp,
    /// The Secret's `ferry.dev/rotated-at`.
    pub rotated_at: Option<Timestamp>,
    /// The Secret's creation.
    pub created: Option<Timestamp>,
}

/// The outcome of the last rotation of a BrokeredSecret's admin credential.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RotationNote {
    /// The request a completed rotation satisfied.
    pub request: Option<String>,
    /// Why the last one failed; `None` after one succeeded.
    pub error: Option<String>,
}

/// One installation-wide credential, as the ConfigMap lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InstallationCredential {
    /// `namespace/name` of the Secret holding it.
    pub secret: String,
    /// Per slot (`next`, `current`, `previous`): a fingerprint (a JWK
    /// thumbprint for a public key) and when it was made.
    pub keys: BTreeMap<String, String>,
    /// When the current key became current.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_rotated: Option<Timestamp>,
    /// When the next rotation is due.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_rotation: Option<Timestamp>,
}

/// What this replica knows of the credentials it holds; shared by the
/// Secret reader, the key refreshers, the rotation of admin credentials
/// and the writer.
#[derive(Default)]
pub struct CustodyLog {
    fingerprinter: RwLock<Option<Arc<Fingerprinter>>>,
    held: Mutex<HashMap<(String, String), Held>>,
    rotations: Mutex<HashMap<(String, String), RotationNote>>,
    installation: Mutex<BTreeMap<String, InstallationCredential>>,
}

impl std::fmt::Debug for CustodyLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CustodyLog").finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl CustodyLog {
    /// Fingerprints are made with `key` from now on.
    pub fn set_fingerprint_key(&self, key: &[u8]) {
        *self
            .fingerprinter
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(Fingerprinter::new(key)));
    }

    /// The fingerprinter, once the key is known.
    pub fn fingerprinter(&self) -> Option<Arc<Fingerprinter>> {
        self.fingerprinter
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The Secret `namespace/name` was read (and is used) now.
    pub fn read(&self, namespace: &str, name: &str, secret: &Secret) {
        let Some(fingerprinter) = self.fingerprinter() else {
            return self.used(namespace, name);
        };
        let fingerprints = secret
            .data
            .iter()
            .flatten()
            .map(|(key, value)| (key.clone(), fingerprinter.fingerprint(&value.0)))
            .collect();
        let rotated_at = secret
            .metadata
            .annotations
            .as_ref()
            .and_then(|annotations| annotations.get(ROTATED_AT_ANNOTATION))
            .and_then(|text| text.parse().ok());
        lock(&self.held).insert(
            (namespace.to_owned(), name.to_owned()),
            Held {
                fingerprints,
                last_used: Timestamp::now(),
                rotated_at,
                created: secret.metadata.creation_timestamp.as_ref().map(|t| t.0),
            },
        );
    }

    /// The Secret `namespace/name` was used now (from a cache).
    pub fn used(&self, namespace: &str, name: &str) {
        if let Some(held) = lock(&self.held).get_mut(&(namespace.to_owned(), name.to_owned())) {
            held.last_used = Timestamp::now();
        }
    }

    /// What is known of the Secret `namespace/name`.
    pub fn held(&self, namespace: &str, name: &str) -> Option<Held> {
        lock(&self.held)
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Notes how the last rotation for BrokeredSecret `namespace/name` went.
    pub fn rotation(&self, namespace: &str, name: &str, note: RotationNote) {
        lock(&self.rotations).insert((namespace.to_owned(), name.to_owned()), note);
    }

    /// How the last rotation for BrokeredSecret `namespace/name` went.
    pub fn rotation_note(&self, namespace: &str, name: &str) -> Option<RotationNote> {
        lock(&self.rotations)
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Sets the installation-wide credential `name` (a ConfigMap key).
    pub fn installation_credential(&self, name: &str, credential: InstallationCredential) {
        lock(&self.installation).insert(name.to_owned(), credential);
    }

    /// The installation-wide credentials.
    pub fn installation(&self) -> BTreeMap<String, InstallationCredential> {
        lock(&self.installation).clone()
    }
}

/// The lease key's entry in the inventory: per slot the fingerprint of
/// the key (under the fingerprint key) and when it was made.
pub fn lease_key_inventory(
    secret: String,
    stored: &StoredLeaseKeys,
    period: Duration,
    fingerprinter: Option<&Fingerprinter>,
) -> InstallationCredential {
    slots_inventory(secret, &stored.slots, period, |key| {
        fingerprinter.map(|f| f.fingerprint(key))
    })
}

/// One JWT algorithm's entry in the inventory: per slot the key's id (its
/// public JWK's RFC 7638 thumbprint, as the JWKS shows it).
pub fn jwt_inventory(
    secret: String,
    slots: &StoredSlots,
    algorithm: JwtAlgorithm,
    period: Duration,
) -> InstallationCredential {
    slots_inventory(secret, slots, period, |key| {
        SigningKey::from_pkcs8(algorithm, key)
            .ok()
            .map(|key| format!("kid:{}", key.kid()))
    })
}

fn slots_inventory(
    secret: String,
    slots: &StoredSlots,
    period: Duration,
    fingerprint: impl Fn(&[u8]) -> Option<String>,
) -> InstallationCredential {
    let keys = slots
        .named()
        .into_iter()
        .filter_map(|(slot, key)| {
            let key = key.as_ref()?;
            let mut line = fingerprint(&key.key).unwrap_or_else(|| "unknown".into());
            if let Some(created) = key.created {
                line.push_str(&format!(", created {created}"));
            }
            Some((slot.to_owned(), line))
        })
        .collect();
    InstallationCredential {
        secret,
        keys,
        last_rotated: slots.last_rotated(),
        next_rotation: slots.rotation_due_at(period),
    }
}

/// Which credential a BrokeredSecret's source holds: the kind (a metric
/// label), its Secret and the keys used (`None`: every key).
pub fn held_by(secret: &BrokeredSecret) -> Option<(&'static str, &str, Option<Vec<&str>>)> {
    let source = &secret.spec.source;
    if let Some(postgres) = &source.postgres {
        let reference = &postgres.connection_secret_ref;
        Some((
            "postgres_admin",
            reference.name.as_str(),
            Some(vec![reference.key.as_str()]),
        ))
    } else if let Some(copied) = &source.kubernetes_secret {
        Some(("kubernetes_secret", copied.name.as_str(), None))
    } else if let Some(x509) = &source.x509 {
        Some((
            "x509_ca",
            x509.ca_secret_name.as_str(),
            Some(vec!["tls.key"]),
        ))
    } else {
        source.oauth2.as_ref().map(|oauth2| {
            (
                "oauth2_client",
                oauth2.credentials_secret_name.as_str(),
                Some(vec![
                    oauth2_keys::CLIENT_SECRET,
                    oauth2_keys::PRIVATE_KEY,
                    oauth2_keys::REFRESH_TOKEN,
                ]),
            )
        })
    }
}

/// The custody status a BrokeredSecret should have, from what this
/// replica knows (`held`: its Secret; `note`: its last rotation) and what
/// status says now (`current`), at `now`. `None`: nothing to say.
pub fn desired_custody(
    secret: &BrokeredSecret,
    held: Option<&Held>,
    note: Option<&RotationNote>,
    current: Option<&CustodyStatus>,
    now: Timestamp,
) -> Option<CustodyStatus> {
    let (_, name, keys) = held_by(secret)?;
    let previous = current.and_then(|c| c.credentials.iter().find(|c| c.secret == name));
    let credentials = match held {
        None => previous.cloned().into_iter().collect(),
        Some(held) => {
            let keys: Vec<HeldKey> = held
                .fingerprints
                .iter()
                .filter(|(key, _)| {
                    keys.as_ref()
                        .is_none_or(|keys| keys.contains(&key.as_str()))
                })
                .map(|(key, fingerprint)| HeldKey {
                    name: key.clone(),
                    fingerprint: fingerprint.clone(),
                })
                .collect();
            let changed = previous.is_some_and(|previous| previous.keys != keys);
            let last_rotated = held
                .rotated_at
                .filter(|at| {
                    !changed
                        || previous
                            .and_then(|p| p.last_rotated.as_ref())
                            .is_none_or(|p| p.0 < *at)
                })
                .or_else(|| changed.then_some(now))
                .or_else(|| previous.and_then(|p| p.last_rotated.as_ref()).map(|t| t.0))
                .or(held.created);
            vec![HeldCredential {
                secret: name.to_owned(),
                keys,
                last_used: Some(Time(whole_second(held.last_used))),
                last_rotated: last_rotated.map(|at| Time(whole_second(at))),
            }]
        }
    };
    let (rotation_request, rotation_error) = match note {
        Some(note) => (
            note.request
                .clone()
                .or_else(|| current.and_then(|c| c.rotation_request.clone())),
            note.error.clone(),
        ),
        None => (
            current.and_then(|c| c.rotation_request.clone()),
            current.and_then(|c| c.rotation_error.clone()),
        ),
    };
    Some(CustodyStatus {
        credentials,
        rotation_request,
        rotation_error,
    })
}

/// `at` to the second, as status keeps times (metav1.Time): a time with
/// a fraction would differ from its stored self at every comparison.
fn whole_second(at: Timestamp) -> Timestamp {
    Timestamp::from_second(at.as_second()).unwrap_or(at)
}

/// Whether `desired` is worth a status write over `current`: anything but
/// `lastUsed` changed, or `lastUsed` moved on by [`LAST_USED_RESOLUTION`].
pub fn worth_writing(current: Option<&CustodyStatus>, desired: &CustodyStatus) -> bool {
    let Some(current) = current else {
        return true;
    };
    let without_use = |status: &CustodyStatus| CustodyStatus {
        credentials: status
            .credentials
            .iter()
            .map(|c| HeldCredential {
                last_used: None,
                ..c.clone()
            })
            .collect(),
        ..status.clone()
    };
    if without_use(current) != without_use(desired) {
        return true;
    }
    let resolution = SignedDuration::try_from(LAST_USED_RESOLUTION).unwrap_or(SignedDuration::MAX);
    desired.credentials.iter().any(|wanted| {
        let had = current
            .credentials
            .iter()
            .find(|c| c.secret == wanted.secret)
            .and_then(|c| c.last_used.as_ref());
        match (had, &wanted.last_used) {
            (Some(had), Some(now)) => now.0.duration_since(had.0) >= resolution,
            (None, Some(_)) => true,
            _ => false,
        }
    })
}

/// Seconds from `at` to `now`, never negative.
fn age(at: Timestamp, now: Timestamp) -> i64 {
    now.duration_since(at).as_secs().max(0)
}

/// Writes custody to status, the ConfigMap and the age metric at start and
/// every [`WRITE_INTERVAL`] until `shutdown`. `namespace` is ferry's.
pub async fn write_custody_until(
    client: kube::Client,
    secrets: Store<BrokeredSecret>,
    log: Arc<CustodyLog>,
    metrics: BrokerMetrics,
    namespace: String,
    shutdown: CancellationToken,
) {
    let mut written_inventory = None;
    // The first pass runs at once: the installation inventory is known at
    // start, and a platform team looking right after install should find it.
    let mut ticks = tokio::time::interval(WRITE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let now = Timestamp::now();
        let mut ages = Vec::new();
        for secret in secrets.state() {
            if let Some(credential_ages) =
                write_custody(&client, &secret, &log, &metrics, now).await
            {
                ages.extend(credential_ages);
            }
        }
        let inventory = log.installation();
        for (name, credential) in &inventory {
            if let Some(rotated) = credential.last_rotated {
                let secret = credential
                    .secret
                    .rsplit('/')
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                let kind = if name.starts_with("jwt") {
                    "jwt_signing_key"
                } else {
                    "lease_key"
                };
                ages.push((kind, namespace.clone(), secret, age(rotated, now)));
            }
        }
        metrics.custody_ages(&ages);
        if !inventory.is_empty() && written_inventory.as_ref() != Some(&inventory) {
            match write_inventory(&client, &namespace, &inventory).await {
                Ok(()) => written_inventory = Some(inventory),
                Err(error) => tracing::warn!(%error, "could not write the custody ConfigMap"),
            }
        }
    }
}

/// A credential's age for the metric: kind, namespace, Secret, seconds.
type Age = (&'static str, String, String, i64);

/// Writes the custody status of `secret` when worth it; returns the ages
/// of the credentials it lists.
pub async fn write_custody(
    client: &kube::Client,
    secret: &BrokeredSecret,
    log: &CustodyLog,
    metrics: &BrokerMetrics,
    now: Timestamp,
) -> Option<Vec<Age>> {
    let (ns, name) = (
        secret.metadata.namespace.as_deref()?,
        secret.metadata.name.as_deref()?,
    );
    let (kind, held_secret, _) = held_by(secret)?;
    let held = log.held(ns, held_secret);
    let note = log.rotation_note(ns, name);
    let current = secret.status.as_ref().and_then(|s| s.custody.as_ref());
    let desired = desired_custody(secret, held.as_ref(), note.as_ref(), current, now)?;
    let ages = desired
        .credentials
        .iter()
        .filter_map(|credential| {
            let rotated = credential.last_rotated.as_ref()?;
            Some((
                kind,
                ns.to_owned(),
                credential.secret.clone(),
                age(rotated.0, now),
            ))
        })
        .collect();
    if (held.is_some() || note.is_some()) && worth_writing(current, &desired) {
        let api = Api::<BrokeredSecret>::namespaced(client.clone(), ns);
        let patch = json!({
            "apiVersion": ferry_contract::GROUP_VERSION,
            "kind": "BrokeredSecret",
            "status": {"custody": desired},
        });
        match api
            .patch_status(
                name,
                &PatchParams::apply(BROKER_MANAGER).force(),
                &Patch::Apply(patch),
            )
            .await
        {
            Ok(_) => metrics.custody_written(),
            Err(error) => {
                tracing::warn!(secret = %format!("{ns}/{name}"), %error, "could not write the custody status")
            }
        }
    }
    Some(ages)
}

/// Applies the ConfigMap listing the installation-wide credentials.
async fn write_inventory(
    client: &kube::Client,
    namespace: &str,
    inventory: &BTreeMap<String, InstallationCredential>,
) -> Result<(), kube::Error> {
    let data: BTreeMap<String, String> = inventory
        .iter()
        .map(|(name, credential)| {
            (
                name.clone(),
                serde_yaml::to_string(credential).unwrap_or_default(),
            )
        })
        .collect();
    let config_map = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": BROKER_CUSTODY_CONFIGMAP,
            "labels": {ferry_contract::MANAGED_BY_LABEL: BROKER_MANAGER},
        },
        "data": data,
    });
    Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .patch(
            BROKER_CUSTODY_CONFIGMAP,
            &PatchParams::apply(BROKER_MANAGER).force(),
            &Patch::Apply(config_map),
        )
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_api::testing;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn held(fingerprint: &str, used: &str) -> Held {
        Held {
            fingerprints: BTreeMap::from([
                ("dsn".to_owned(), fingerprint.to_owned()),
                ("ca.crt".to_owned(), "hmac-sha256:ca".to_owned()),
            ]),
            last_used: at(used),
            rotated_at: None,
            created: Some(at("2026-01-01T00:00:00Z")),
        }
    }

    fn postgres() -> BrokeredSecret {
        testing::brokered_secret("payments", "orders-db")
            .postgres("orders-db-admin", "dsn")
            .build()
    }

    #[test]
    fn fingerprints_are_keyed_stable_and_do_not_show_the_value() {
        let one = Fingerprinter::new(&[1; 32]);
        let print = one.fingerprint(b"hunter2");
        assert_eq!(print, one.fingerprint(b"hunter2"));
        assert!(print.starts_with("hmac-sha256:") && print.len() == 12 + 32);
        assert_ne!(print, one.fingerprint(b"hunter3"));
        // Another installation's key: another fingerprint, so a guess
        // cannot be checked without the key.
        assert_ne!(print, Fingerprinter::new(&[2; 32]).fingerprint(b"hunter2"));
        use sha2::Digest as _;
        let plain = sha2::Sha256::digest(b"hunter2");
        let plain: String = plain[..16].iter().map(|b| format!("{b:02x}")).collect();
        assert!(!print.contains(&plain));
    }

    #[test]
    fn status_lists_only_the_keys_the_source_uses_with_the_creation_as_last_rotation() {
        let now = at("2026-02-01T00:00:00Z");
        let status = desired_custody(
            &postgres(),
            Some(&held("hmac-sha256:a", "2026-02-01T00:00:00Z")),
            None,
            None,
            now,
        )
        .unwrap();
        let credential = &status.credentials[0];
        assert_eq!(credential.secret, "orders-db-admin");
        assert_eq!(
            credential.keys,
            [HeldKey {
                name: "dsn".into(),
                fingerprint: "hmac-sha256:a".into()
            }]
        );
        assert_eq!(
            credential.last_rotated,
            Some(Time(at("2026-01-01T00:00:00Z")))
        );
        assert_eq!(credential.last_used, Some(Time(now)));
    }

    #[test]
    fn a_new_value_seen_counts_as_a_rotation_and_the_brokers_own_time_wins() {
        let first = desired_custody(
            &postgres(),
            Some(&held("hmac-sha256:a", "2026-02-01T00:00:00Z")),
            None,
            None,
            at("2026-02-01T00:00:00Z"),
        )
        .unwrap();
        let later = at("2026-03-01T00:00:00Z");
        let changed = desired_custody(
            &postgres(),
            Some(&held("hmac-sha256:b", "2026-03-01T00:00:00Z")),
            None,
            Some(&first),
            later,
        )
        .unwrap();
        assert_eq!(changed.credentials[0].last_rotated, Some(Time(later)));
        let rotated = Held {
            rotated_at: Some(at("2026-02-15T00:00:00Z")),
            ..held("hmac-sha256:b", "2026-03-01T00:00:00Z")
        };
        let by_broker =
            desired_custody(&postgres(), Some(&rotated), None, Some(&first), later).unwrap();
        assert_eq!(
            by_broker.credentials[0].last_rotated,
            Some(Time(at("2026-02-15T00:00:00Z")))
        );
    }

    #[test]
    fn times_are_kept_to_the_second_so_a_stored_status_is_not_rewritten() {
        let rotated = Held {
            rotated_at: Some(at("2026-02-15T00:00:00.250Z")),
            ..held("hmac-sha256:a", "2026-03-01T00:00:00.750Z")
        };
        let now = at("2026-03-01T00:00:00.900Z");
        let written = desired_custody(&postgres(), Some(&rotated), None, None, now).unwrap();
        // What the apiserver gives back: the same times, to the second.
        let stored: CustodyStatus =
            serde_json::from_value(serde_json::to_value(&written).unwrap()).unwrap();
        let again = desired_custody(&postgres(), Some(&rotated), None, Some(&stored), now).unwrap();
        assert!(
            !worth_writing(Some(&stored), &again),
            "{stored:?} {again:?}"
        );
    }

    #[test]
    fn last_used_alone_is_written_at_most_once_a_minute() {
        let status = |used: &str| {
            desired_custody(
                &postgres(),
                Some(&held("hmac-sha256:a", used)),
                None,
                None,
                at(used),
            )
            .unwrap()
        };
        let written = status("2026-02-01T00:00:00Z");
        assert!(worth_writing(None, &written));
        assert!(!worth_writing(
            Some(&written),
            &status("2026-02-01T00:00:59Z")
        ));
        assert!(worth_writing(
            Some(&written),
            &status("2026-02-01T00:01:00Z")
        ));
        let mut refused = status("2026-02-01T00:00:01Z");
        refused.rotation_error = Some("the database refused".into());
        assert!(worth_writing(Some(&written), &refused));
    }

    #[test]
    fn a_rotation_note_sets_the_request_and_clears_or_keeps_the_error() {
        let note = RotationNote {
            request: Some("r1".into()),
            error: None,
        };
        let current = CustodyStatus {
            rotation_error: Some("old".into()),
            ..CustodyStatus::default()
        };
        let status = desired_custody(
            &postgres(),
            None,
            Some(&note),
            Some(&current),
            at("2026-02-01T00:00:00Z"),
        )
        .unwrap();
        assert_eq!(status.rotation_request.as_deref(), Some("r1"));
        assert_eq!(status.rotation_error, None);
    }

    #[test]
    fn the_inventory_lists_slots_with_fingerprints_and_the_next_rotation() {
        let stored = crate::lease_keys::maintain(
            &StoredLeaseKeys::default(),
            at("2026-01-01T00:00:00Z"),
            Duration::from_secs(30 * 24 * 3600),
            |len| Some(zeroize::Zeroizing::new(vec![7; len])),
        )
        .unwrap()
        .0;
        let fingerprinter = Fingerprinter::new(&[1; 32]);
        let entry = lease_key_inventory(
            "ferry-system/ferry-broker-lease-key".into(),
            &stored,
            Duration::from_secs(30 * 24 * 3600),
            Some(&fingerprinter),
        );
        assert_eq!(
            entry.keys["current"],
            format!(
                "{}, created 2026-01-01T00:00:00Z",
                fingerprinter.fingerprint(&[7; 32])
            )
        );
        assert_eq!(entry.next_rotation, Some(at("2026-01-31T00:00:00Z")));
        let yaml = serde_yaml::to_string(&entry).unwrap();
        assert!(yaml.contains("nextRotation"), "{yaml}");
    }

    #[test]
    fn each_source_names_the_keys_it_holds() {
        let copied = testing::brokered_secret("a", "b")
            .kubernetes_secret("api")
            .build();
        assert_eq!(held_by(&copied), Some(("kubernetes_secret", "api", None)));
        let jwt = testing::brokered_secret("a", "b").jwt(&["aud"]).build();
        assert_eq!(held_by(&jwt), None);
    }
}
