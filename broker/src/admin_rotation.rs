//! When the broker rotates the admin credential of `postgres` sources: on
//! a schedule (`spec.source.postgres.adminRotationPeriod`), on demand (the
//! annotation `ferry.dev/rotate-admin-credential` with a value status does
//! not record as satisfied yet), and to complete a rotation a broker left
//! staged (at start, and whenever an admin connection finds one). The
//! steps and why a crash at any of them loses nothing are in
//! [`crate::providers::postgres::rotation`]. Every replica runs this; the
//! steps are safe to race.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use tokio_util::sync::CancellationToken;

use crate::custody::{RotationNote, write_custody};
use crate::providers::ProviderError;
use crate::providers::postgres::rotation::{Rotated, Start};
use crate::routes::BrokerState;
use ferry_api::duration::parse_duration;
use ferry_api::resources::BrokeredSecret;
use ferry_contract::ROTATE_ADMIN_CREDENTIAL_ANNOTATION;

/// How often each replica looks for rotations to make.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// How long a scheduled rotation that failed waits before it is tried
/// again (a request is tried once per value).
const RETRY_AFTER: Duration = Duration::from_secs(300);

/// The longest request value.
const MAX_REQUEST: usize = 63;

/// What `secret` asks for on demand: the annotation's value when it is
/// well-formed and not yet satisfied (by status or by this replica);
/// `Err` says why a value is refused.
pub fn requested(secret: &BrokeredSecret, handled: Option<&str>) -> Option<Result<String, String>> {
    let value = secret
        .metadata
        .annotations
        .as_ref()?
        .get(ROTATE_ADMIN_CREDENTIAL_ANNOTATION)?;
    let satisfied = secret
        .status
        .as_ref()
        .and_then(|status| status.custody.as_ref())
        .and_then(|custody| custody.rotation_request.as_deref());
    if satisfied == Some(value.as_str()) || handled == Some(value.as_str()) {
        return None;
    }
    let well_formed = !value.is_empty()
        && value.len() <= MAX_REQUEST
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    Some(if well_formed {
        Ok(value.clone())
    } else {
        Err(format!(
            "annotation {ROTATE_ADMIN_CREDENTIAL_ANNOTATION} must be 1 to {MAX_REQUEST} letters, \
             digits, '.', '_' or '-'"
        ))
    })
}

/// The schedule of `secret`, if it has one that parses (the schema
/// checks it; an older object may not).
fn period(secret: &BrokeredSecret) -> Option<Duration> {
    let text = secret
        .spec
        .source
        .postgres
        .as_ref()?
        .admin_rotation_period
        .as_deref()?;
    parse_duration(text).ok()
}

/// Rotates as asked until `shutdown`: a first pass at once completes what
/// a broker left staged, then every [`CHECK_INTERVAL`].
pub async fn rotate_admin_credentials_until(
    client: kube::Client,
    state: Arc<BrokerState>,
    crash_after: Option<u8>,
    shutdown: CancellationToken,
) {
    // Values this replica has acted on, and when a scheduled rotation last
    // failed, per BrokeredSecret.
    let mut handled: HashMap<(String, String), String> = HashMap::new();
    let mut failed: HashMap<(String, String), Instant> = HashMap::new();
    let mut first = true;
    loop {
        if !first {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(CHECK_INTERVAL) => {}
            }
        }
        let postgres = &state.broker.postgres;
        let staged = postgres.take_staged();
        let mut done = HashSet::new();
        for secret in state.broker.secrets.state() {
            let Some(database) = postgres.admin_database(&secret) else {
                continue;
            };
            let (Some(ns), Some(name)) = (
                secret.metadata.namespace.clone(),
                secret.metadata.name.clone(),
            ) else {
                continue;
            };
            let key = (ns.clone(), name.clone());
            let request = requested(&secret, handled.get(&key).map(String::as_str));
            let request = match request {
                Some(Err(why)) => {
                    handled.insert(key.clone(), annotation(&secret));
                    note(&client, &state, &secret, None, Some(why)).await;
                    continue;
                }
                Some(Ok(request)) => Some(request),
                None => None,
            };
            let start = match (&request, period(&secret)) {
                (Some(_), _) => Start::Now,
                (None, Some(period))
                    if failed
                        .get(&key)
                        .is_none_or(|at| at.elapsed() >= RETRY_AFTER) =>
                {
                    Start::DueAfter(period)
                }
                _ if first || staged.contains(&database) => Start::Never,
                _ => continue,
            };
            if request.is_none() && done.contains(&database) {
                continue;
            }
            let outcome = postgres
                .rotate_admin(&client, &database, start, crash_after)
                .await;
            if let Some(request) = &request {
                handled.insert(key.clone(), request.clone());
            }
            let (result, error) = match outcome {
                Ok(Rotated::Nothing) => continue,
                Ok(Rotated::Completed) => {
                    postgres.reread_admin_secret(&database).await;
                    done.insert(database.clone());
                    failed.remove(&key);
                    tracing::info!(target: "ferry::audit", action = "rotate-admin-credential", secret = %format!("{ns}/{name}"), database = %database, result = "completed", "rotated the admin credential");
                    ("completed", None)
                }
                Ok(Rotated::RolledBack(why)) => ("rolled_back", Some(why)),
                Err(error) => {
                    let error = match error {
                        ProviderError::Refused(why) | ProviderError::Invalid(why) => why,
                        other => other.to_string(),
                    };
                    ("failed", Some(error))
                }
            };
            if let Some(why) = &error {
                failed.insert(key.clone(), Instant::now());
                tracing::warn!(target: "ferry::audit", action = "rotate-admin-credential", secret = %format!("{ns}/{name}"), database = %database, result, reason = %why, "the admin credential was not rotated");
            }
            state.broker.metrics.admin_rotation(result);
            // A completed rotation satisfies the request standing now.
            let satisfied =
                (error.is_none()).then(|| request.unwrap_or_else(|| annotation(&secret)));
            note(
                &client,
                &state,
                &secret,
                satisfied.filter(|r| !r.is_empty()),
                error,
            )
            .await;
        }
        first = false;
    }
}

/// The request annotation's value, or empty.
fn annotation(secret: &BrokeredSecret) -> String {
    secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|annotations| annotations.get(ROTATE_ADMIN_CREDENTIAL_ANNOTATION))
        .cloned()
        .unwrap_or_default()
}

/// Notes a rotation's outcome and writes it to status at once, so other
/// replicas see the request satisfied.
async fn note(
    client: &kube::Client,
    state: &BrokerState,
    secret: &BrokeredSecret,
    request: Option<String>,
    error: Option<String>,
) {
    let (Some(ns), Some(name)) = (
        secret.metadata.namespace.as_deref(),
        secret.metadata.name.as_deref(),
    ) else {
        return;
    };
    let custody = &state.custody;
    custody.rotation(ns, name, RotationNote { request, error });
    write_custody(
        client,
        secret,
        custody,
        &state.broker.metrics,
        Timestamp::now(),
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_api::resources::{BrokeredSecretStatus, CustodyStatus};
    use ferry_api::testing;

    fn asking(value: &str, satisfied: Option<&str>) -> BrokeredSecret {
        let mut secret = testing::brokered_secret("payments", "orders-db")
            .postgres("orders-db-admin", "dsn")
            .build();
        secret.metadata.annotations = Some(
            [(
                ROTATE_ADMIN_CREDENTIAL_ANNOTATION.to_owned(),
                value.to_owned(),
            )]
            .into(),
        );
        secret.status = Some(BrokeredSecretStatus {
            custody: Some(CustodyStatus {
                rotation_request: satisfied.map(str::to_owned),
                ..CustodyStatus::default()
            }),
            ..BrokeredSecretStatus::default()
        });
        secret
    }

    #[test]
    fn a_new_request_value_asks_once() {
        assert_eq!(requested(&asking("r1", None), None), Some(Ok("r1".into())));
        assert_eq!(requested(&asking("r1", Some("r1")), None), None);
        assert_eq!(
            requested(&asking("r2", Some("r1")), None),
            Some(Ok("r2".into()))
        );
        assert_eq!(requested(&asking("r2", Some("r1")), Some("r2")), None);
        let plain = testing::brokered_secret("a", "b")
            .postgres("s", "dsn")
            .build();
        assert_eq!(requested(&plain, None), None);
    }

    #[test]
    fn a_malformed_request_is_refused_with_why() {
        for bad in ["", "a b", "x;y", &"a".repeat(64)] {
            let refused = requested(&asking(bad, None), None).unwrap().unwrap_err();
            assert!(
                refused.contains(ROTATE_ADMIN_CREDENTIAL_ANNOTATION),
                "{refused}"
            );
        }
    }
}
