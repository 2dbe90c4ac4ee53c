//! Rotating the admin credential of a `postgres` source without ever
//! losing it. The new password goes into the Secret before the database
//! changes, and the old one leaves the Secret only after the new one is
//! proven to log in:
//!
//! 1. **stage**: write the connection string with a new random password
//!    under `<key>.next` (replace under the resourceVersion read: of
//!    replicas racing, one stages and the others find its `next`);
//! 2. **change**: `ALTER ROLE CURRENT_USER PASSWORD '<SCRAM verifier>'`
//!    over a connection made with the current string (the database's
//!    statement log sees the verifier only), then log in with `next`;
//! 3. **promote**: `<key>` ← `next`, `next` removed, the annotation
//!    `ferry.dev/rotated-at` set, in one replace.
//!
//! Whatever step a broker dies after, the Secret holds a string that logs
//! in: `<key>` before step 2, `<key>.next` from step 2 until step 3, `<key>`
//! after. Every admin connection tries `<key>.next` when the server refuses
//! `<key>` ([`connect_stored`]), so no replica stops issuing in between, and
//! a broker finding a staged `next` completes it: if `next` logs in, the
//! database changed and it promotes; if only `<key>` does, it changes the
//! database and promotes; should the database refuse the new password
//! (a password policy), it removes `next`: rolled back. Completing is
//! idempotent, so replicas doing it at once agree. Only a database that
//! refuses both strings (changed by someone else) is left as found,
//! reported and retried.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use zeroize::Zeroizing;

use super::super::secret_reader::{files_of, opted_in};
use super::{
    CONNECT_TIMEOUT, ConnectError, Database, PASSWORD_BYTES, PostgresProvider, ProviderError,
    QUERY_TIMEOUT, connect, quote_literal, scram_verifier,
};
use ferry_api::confinement::SecretUse;
use ferry_contract::{NEXT_KEY_SUFFIX, ROTATABLE_KEY_ANNOTATION, ROTATED_AT_ANNOTATION};

/// The env var that makes the broker abort right after a rotation step
/// (1 staged, 2 database changed, 3 promoted): for tests that kill the
/// real process between the steps. Never set in production.
pub const CRASH_AFTER_STEP_ENV: &str = "FERRY_TEST_CRASH_AFTER_ROTATION_STEP";

/// How many times a rotation re-reads a Secret that changed underneath.
const ATTEMPTS: usize = 3;

/// The key a rotated connection string is staged under.
pub fn next_key(key: &str) -> String {
    format!("{key}{NEXT_KEY_SUFFIX}")
}

/// Whether the server refused the login itself: a wrong password or an
/// unknown role, as opposed to a server that cannot be reached.
pub(super) fn login_refused(error: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    error.as_db_error().is_some_and(|db| {
        *db.code() == SqlState::INVALID_PASSWORD
            || *db.code() == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
    })
}

/// Connects with the stored connection string `dsn`, or, when the server
/// refuses that login and a rotation has staged `next`, with `next`: a
/// rotation that a broker left between changing the database and
/// promoting still issues.
pub(super) async fn connect_stored(
    database: &Database,
    dsn: &[u8],
    next: Option<&Zeroizing<Vec<u8>>>,
    ca: Option<&[u8]>,
) -> Result<(tokio_postgres::Client, BTreeMap<String, String>), ProviderError> {
    match (connect(database, dsn, ca).await, next) {
        (Ok(connected), _) => Ok(connected),
        (
            Err(ConnectError {
                login_refused: true,
                ..
            }),
            Some(next),
        ) => {
            let connected = connect(database, next, ca).await.map_err(|e| e.error)?;
            tracing::info!(database = %database, "the stored admin credential is refused and the staged one logs in: a rotation is being completed");
            Ok(connected)
        }
        (Err(refused), _) => Err(refused.error),
    }
}

/// A connection string with its password replaced by `password`. Only a
/// `postgres://` URL with `user:password@`, or a keyword string of plain
/// `key=value` words (no quotes, no spaces around `=`), is rewritten;
/// anything else is refused with why, and so is a result that does not
/// parse back to the same user and hosts with the new password.
pub fn with_password(dsn: &str, password: &str) -> Result<String, String> {
    let rewritten = if let Some(rest) = dsn
        .strip_prefix("postgres://")
        .map(|rest| ("postgres://", rest))
        .or_else(|| {
            dsn.strip_prefix("postgresql://")
                .map(|rest| ("postgresql://", rest))
        }) {
        let (scheme, rest) = rest;
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let Some((userinfo, hosts)) = authority.rsplit_once('@') else {
            return Err("the connection string names no user".into());
        };
        let user = userinfo.split(':').next().unwrap_or_default();
        if user.is_empty() {
            return Err("the connection string names no user".into());
        }
        if tail.contains("password=") {
            return Err(
                "the connection string has a password parameter; put the password \
                        in user:password@ instead"
                    .into(),
            );
        }
        format!("{scheme}{user}:{password}@{hosts}{tail}")
    } else {
        let mut words = Vec::new();
        let mut replaced = false;
        for word in dsn.split_ascii_whitespace() {
            if word.contains(['\'', '\\']) || !word.contains('=') || word.starts_with('=') {
                return Err(
                    "only a postgres:// URL or plain key=value words (no quotes, no \
                            spaces around =) can be rewritten"
                        .into(),
                );
            }
            if word.starts_with("password=") {
                words.push(format!("password={password}"));
                replaced = true;
            } else {
                words.push(word.to_owned());
            }
        }
        if !replaced {
            words.push(format!("password={password}"));
        }
        words.join(" ")
    };
    let parse = |text: &str| {
        let (text, _) = super::super::postgres_tls::tls_mode(text);
        text.parse::<tokio_postgres::Config>()
            .map_err(|_| "the connection string does not parse".to_owned())
    };
    let (before, after) = (parse(dsn)?, parse(&rewritten)?);
    let same = before.get_user() == after.get_user()
        && before.get_hosts() == after.get_hosts()
        && before.get_ports() == after.get_ports()
        && before.get_dbname() == after.get_dbname()
        && after.get_password() == Some(password.as_bytes());
    if !same {
        return Err(
            "the rewritten connection string would not name the same role and server".into(),
        );
    }
    Ok(rewritten)
}

/// The password in a connection string.
fn password_of(dsn: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    let text = std::str::from_utf8(dsn).ok()?;
    let (text, _) = super::super::postgres_tls::tls_mode(text);
    let text = Zeroizing::new(text);
    let config = text.parse::<tokio_postgres::Config>().ok()?;
    config.get_password().map(|p| Zeroizing::new(p.to_vec()))
}

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotated {
    /// Nothing was staged, and no new rotation was asked for.
    Nothing,
    /// The new credential is in `<key>` and logs in; the old one does not.
    Completed,
    /// The database refused the new password: `next` was removed, the
    /// stored credential is unchanged. Says why.
    RolledBack(String),
}

/// Whether [`PostgresProvider::rotate_admin`] starts a new rotation when
/// none is staged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Only complete a staged one.
    Never,
    /// Start one (asked for on demand).
    Now,
    /// Start one if the credential was last rotated (the Secret's
    /// `ferry.dev/rotated-at`, else its creation) this long ago.
    DueAfter(std::time::Duration),
}

impl Start {
    /// Whether to start a rotation of `secret` at `now`.
    pub fn starts(self, secret: &Secret, now: Timestamp) -> bool {
        match self {
            Self::Never => false,
            Self::Now => true,
            Self::DueAfter(period) => {
                let rotated = secret
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|annotations| annotations.get(ROTATED_AT_ANNOTATION))
                    .and_then(|text| text.parse::<Timestamp>().ok())
                    .or_else(|| secret.metadata.creation_timestamp.as_ref().map(|t| t.0));
                let period = k8s_openapi::jiff::SignedDuration::try_from(period)
                    .unwrap_or(k8s_openapi::jiff::SignedDuration::MAX);
                rotated.is_some_and(|at| now.duration_since(at) >= period)
            }
        }
    }
}

/// A rotation step, for the crash hook of tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The new connection string is stored under `<key>.next`.
    Staged = 1,
    /// The database has the new password.
    DatabaseChanged = 2,
    /// The new connection string is `<key>`.
    Promoted = 3,
}

/// Aborts the process after `step` when the tests asked for it: the
/// process dies as a killed one would, with nothing cleaned up.
fn crash_point(crash_after: Option<u8>, step: Step) {
    if crash_after == Some(step as u8) {
        tracing::error!(
            step = step as u8,
            "aborting after this rotation step, as {CRASH_AFTER_STEP_ENV} asks"
        );
        std::process::abort();
    }
}

impl PostgresProvider {
    /// Completes a rotation of the admin credential of `database` that a
    /// broker staged, or as `start` says, starts and completes a new one;
    /// see the module's documentation for the steps. `crash_after` is the
    /// tests' [`CRASH_AFTER_STEP_ENV`].
    pub(crate) async fn rotate_admin(
        &self,
        client: &kube::Client,
        database: &Database,
        start: Start,
        crash_after: Option<u8>,
    ) -> Result<Rotated, ProviderError> {
        let api = Api::<Secret>::namespaced(client.clone(), &database.namespace);
        let staged_key = next_key(&database.key);
        for _ in 0..ATTEMPTS {
            let secret = read_admin_secret(&api, database).await?;
            let data = files_of(secret.data.clone());
            let current = data.get(&database.key).ok_or_else(|| {
                ProviderError::NotFound(format!("{database} not found (no such key)"))
            })?;
            let secret = if data.contains_key(&staged_key) {
                rotatable(&secret, database)?;
                secret
            } else if !start.starts(&secret, Timestamp::now()) {
                return Ok(Rotated::Nothing);
            } else {
                rotatable(&secret, database)?;
                let password = Zeroizing::new(base64::Engine::encode(
                    &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                    self.random_bytes::<PASSWORD_BYTES>()?,
                ));
                let current = std::str::from_utf8(current)
                    .map_err(|_| ProviderError::Invalid(format!("{database} is not text")))?;
                let next = Zeroizing::new(with_password(current, &password).map_err(|why| {
                    ProviderError::Invalid(format!("{database} cannot be rotated: {why}"))
                })?);
                let mut staged = secret.clone();
                staged.data.get_or_insert_default().insert(
                    staged_key.clone(),
                    k8s_openapi::ByteString(next.as_bytes().to_vec()),
                );
                match replace(&api, database, &staged, "staging a rotated credential").await? {
                    Some(written) => {
                        tracing::info!(database = %database, step = 1, "staged a new admin credential");
                        crash_point(crash_after, Step::Staged);
                        written
                    }
                    // Another writer came first: read again and decide again.
                    None => continue,
                }
            };
            return self.complete(&api, database, secret, crash_after).await;
        }
        Err(ProviderError::Unavailable(format!(
            "{database} kept changing while its admin credential was being rotated"
        )))
    }

    /// Completes the rotation staged in `secret` (as read): changes the
    /// database unless it already has the new password, and promotes.
    async fn complete(
        &self,
        api: &Api<Secret>,
        database: &Database,
        secret: Secret,
        crash_after: Option<u8>,
    ) -> Result<Rotated, ProviderError> {
        let staged_key = next_key(&database.key);
        let data = files_of(secret.data.clone());
        let (Some(current), Some(next)) = (data.get(&database.key), data.get(&staged_key)) else {
            return Ok(Rotated::Nothing);
        };
        let ca = data
            .get(super::super::postgres_tls::CA_KEY)
            .map(|ca| ca.as_slice());
        match connect(database, next, ca).await {
            // The database already has it: only the promotion is missing.
            Ok(_) => {}
            Err(refused) if refused.login_refused => {
                let (admin, _) = match connect(database, current, ca).await {
                    Ok(connected) => connected,
                    Err(both) if both.login_refused => {
                        return Err(ProviderError::Unavailable(format!(
                            "{database}: neither the stored admin credential nor the staged \
                             one ({staged_key}) logs in; the role's password was changed \
                             elsewhere: store a working one in {}",
                            database.key
                        )));
                    }
                    Err(other) => return Err(other.error),
                };
                let password = password_of(next).ok_or_else(|| {
                    ProviderError::Invalid(format!("{database}: {staged_key} has no password"))
                })?;
                let verifier = scram_verifier(&password, &self.random_bytes::<16>()?);
                let sql = format!(
                    "ALTER ROLE CURRENT_USER PASSWORD {}",
                    quote_literal(&verifier)
                );
                match tokio::time::timeout(QUERY_TIMEOUT, admin.batch_execute(&sql)).await {
                    Ok(Ok(())) => {
                        tracing::info!(database = %database, step = 2, "changed the admin role's password");
                        crash_point(crash_after, Step::DatabaseChanged);
                    }
                    // The database said no: it will not say yes later.
                    Ok(Err(error)) if error.as_db_error().is_some() => {
                        let why = error
                            .as_db_error()
                            .map(|db| db.message().to_owned())
                            .unwrap_or_default();
                        self.roll_back(api, database, secret).await?;
                        return Ok(Rotated::RolledBack(format!(
                            "{database}: the database refused the new password ({why}); the \
                             rotation was rolled back, the stored credential is unchanged"
                        )));
                    }
                    // Unknown whether it took: the next attempt finds out
                    // by logging in with `next`.
                    Ok(Err(error)) => {
                        return Err(ProviderError::Unavailable(format!(
                            "{database}: changing the admin role's password: {error}"
                        )));
                    }
                    Err(_) => {
                        return Err(ProviderError::Unavailable(format!(
                            "{database}: changing the admin role's password took over \
                             {QUERY_TIMEOUT:?}"
                        )));
                    }
                }
                connect(database, next, ca).await.map_err(|error| {
                    ProviderError::Unavailable(format!(
                        "{database}: the new admin credential does not log in after the \
                         change ({}); it stays staged in {staged_key}",
                        error.error
                    ))
                })?;
            }
            Err(other) => return Err(other.error),
        }
        self.promote(api, database, secret).await?;
        tracing::info!(database = %database, step = 3, "promoted the new admin credential");
        crash_point(crash_after, Step::Promoted);
        self.secrets.forget(&database.namespace, &database.secret);
        Ok(Rotated::Completed)
    }

    /// `<key>` ← `<key>.next`, which goes, and the rotation time noted.
    async fn promote(
        &self,
        api: &Api<Secret>,
        database: &Database,
        mut secret: Secret,
    ) -> Result<(), ProviderError> {
        let staged_key = next_key(&database.key);
        let Some(next) = files_of(secret.data.clone()).remove(&staged_key) else {
            return Ok(());
        };
        for _ in 0..ATTEMPTS {
            let mut promoted = secret.clone();
            let data = promoted.data.get_or_insert_default();
            data.remove(&staged_key);
            data.insert(database.key.clone(), k8s_openapi::ByteString(next.to_vec()));
            promoted
                .metadata
                .annotations
                .get_or_insert_default()
                .insert(
                    ROTATED_AT_ANNOTATION.to_owned(),
                    Timestamp::now().to_string(),
                );
            if replace(api, database, &promoted, "promoting the rotated credential")
                .await?
                .is_some()
            {
                return Ok(());
            }
            secret = read_admin_secret(api, database).await?;
            let data = files_of(secret.data.clone());
            match (data.get(&staged_key), data.get(&database.key)) {
                (Some(staged), _) if *staged == next => continue,
                // Another replica promoted it.
                (None, Some(current)) if *current == next => return Ok(()),
                _ => {
                    return Err(ProviderError::Unavailable(format!(
                        "{database} changed while its rotated credential was being promoted; \
                         check which password the role has"
                    )));
                }
            }
        }
        Err(ProviderError::Unavailable(format!(
            "{database} kept changing while its rotated credential was being promoted"
        )))
    }

    /// Removes `<key>.next`: the database refused it.
    async fn roll_back(
        &self,
        api: &Api<Secret>,
        database: &Database,
        mut secret: Secret,
    ) -> Result<(), ProviderError> {
        let staged_key = next_key(&database.key);
        for _ in 0..ATTEMPTS {
            let mut rolled_back = secret.clone();
            if rolled_back
                .data
                .get_or_insert_default()
                .remove(&staged_key)
                .is_none()
            {
                return Ok(());
            }
            if replace(api, database, &rolled_back, "rolling back a rotation")
                .await?
                .is_some()
            {
                return Ok(());
            }
            secret = read_admin_secret(api, database).await?;
        }
        Err(ProviderError::Unavailable(format!(
            "{database} kept changing while a refused rotation was being rolled back"
        )))
    }
}

/// The admin Secret of `database`, as stored now, if its owner opted it in.
async fn read_admin_secret(
    api: &Api<Secret>,
    database: &Database,
) -> Result<Secret, ProviderError> {
    let (namespace, name) = (&database.namespace, &database.secret);
    let secret = tokio::time::timeout(CONNECT_TIMEOUT, api.get_opt(name))
        .await
        .map_err(|_| {
            ProviderError::Unavailable(format!("reading Secret {namespace}/{name} timed out"))
        })?
        .map_err(|error| {
            ProviderError::Unavailable(format!("reading Secret {namespace}/{name}: {error}"))
        })?
        .ok_or_else(|| ProviderError::NotFound(format!("Secret {namespace}/{name} not found")))?;
    opted_in(SecretUse::Read, namespace, name, &secret)?;
    Ok(secret)
}

/// Refused unless the owner of `secret` lets the broker rotate the key of
/// `database`.
fn rotatable(secret: &Secret, database: &Database) -> Result<(), ProviderError> {
    let (namespace, name) = (&database.namespace, &database.secret);
    let allowed = secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|annotations| annotations.get(ROTATABLE_KEY_ANNOTATION));
    if allowed != Some(&database.key) {
        return Err(ProviderError::Refused(format!(
            "Secret {namespace}/{name} does not let the broker rotate key {key}: its owner \
             allows it with the annotation {ROTATABLE_KEY_ANNOTATION}={key}",
            key = database.key
        )));
    }
    Ok(())
}

/// Replaces the Secret under the resourceVersion it carries: the Secret
/// as written, or `None` when another writer came first.
async fn replace(
    api: &Api<Secret>,
    database: &Database,
    secret: &Secret,
    what: &str,
) -> Result<Option<Secret>, ProviderError> {
    let name = &database.secret;
    match tokio::time::timeout(
        CONNECT_TIMEOUT,
        api.replace(name, &PostParams::default(), secret),
    )
    .await
    {
        Ok(Ok(written)) => Ok(Some(written)),
        Ok(Err(kube::Error::Api(status))) if status.code == 409 => Ok(None),
        Ok(Err(error)) => Err(ProviderError::Unavailable(format!(
            "{what} in Secret {}/{name}: {error}",
            database.namespace
        ))),
        Err(_) => Err(ProviderError::Unavailable(format!(
            "{what} in Secret {}/{name} timed out",
            database.namespace
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_gets_the_new_password_and_keeps_everything_else() {
        assert_eq!(
            with_password(
                "postgres://admin:old@db.payments:5432/orders?sslmode=verify-full",
                "n3w"
            )
            .unwrap(),
            "postgres://admin:n3w@db.payments:5432/orders?sslmode=verify-full"
        );
        assert_eq!(
            with_password("postgresql://admin@db/orders", "n3w").unwrap(),
            "postgresql://admin:n3w@db/orders"
        );
        // An @ in the old password (percent-encoded or not) goes with it.
        assert_eq!(
            with_password("postgres://admin:o%40ld@db:5432/x", "n3w").unwrap(),
            "postgres://admin:n3w@db:5432/x"
        );
    }

    #[test]
    fn keyword_strings_get_the_new_password_in_place_or_added() {
        assert_eq!(
            with_password("host=db user=admin password=old dbname=orders", "n3w").unwrap(),
            "host=db user=admin password=n3w dbname=orders"
        );
        assert_eq!(
            with_password("host=db user=admin", "n3w").unwrap(),
            "host=db user=admin password=n3w"
        );
    }

    #[test]
    fn strings_that_cannot_be_rewritten_safely_are_refused_with_why() {
        for (dsn, why) in [
            ("postgres://db:5432/orders", "names no user"),
            ("postgres://:pw@db/orders", "names no user"),
            ("postgres://a:b@db/orders?password=c", "password parameter"),
            ("host=db user=admin password='a b'", "plain key=value"),
            ("host = db user=admin", "plain key=value"),
        ] {
            let error = with_password(dsn, "n3w").unwrap_err();
            assert!(error.contains(why), "{dsn}: {error}");
        }
    }

    #[test]
    fn a_scheduled_rotation_is_due_a_period_after_the_last_or_the_creation() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        let hour = std::time::Duration::from_secs(3600);
        let at = |text: &str| text.parse::<Timestamp>().unwrap();
        let mut secret = Secret::default();
        secret.metadata.creation_timestamp = Some(Time(at("2026-01-01T00:00:00Z")));
        assert!(!Start::DueAfter(hour).starts(&secret, at("2026-01-01T00:59:59Z")));
        assert!(Start::DueAfter(hour).starts(&secret, at("2026-01-01T01:00:00Z")));
        secret.metadata.annotations = Some(
            [(
                ROTATED_AT_ANNOTATION.to_owned(),
                "2026-01-01T05:00:00Z".to_owned(),
            )]
            .into(),
        );
        assert!(!Start::DueAfter(hour).starts(&secret, at("2026-01-01T05:30:00Z")));
        assert!(Start::Now.starts(&secret, at("2026-01-01T05:30:00Z")));
        assert!(!Start::Never.starts(&secret, at("2030-01-01T00:00:00Z")));
    }

    #[test]
    fn the_password_is_read_back_from_a_staged_string() {
        let staged = with_password("postgres://admin:old@db/x?sslmode=disable", "n3w").unwrap();
        assert_eq!(
            password_of(staged.as_bytes()).as_deref().map(Vec::as_slice),
            Some(&b"n3w"[..])
        );
        assert_eq!(next_key("dsn"), "dsn.next");
    }
}
