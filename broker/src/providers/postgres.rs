//! `postgres`: one PostgreSQL role per pod lease.
//!
//! Each lease is a role named `ferry_<pod namespace>_<random>` that can log
//! in with a random password until `VALID UNTIL`, and is a member of the
//! roles the BrokeredSecret lists (`memberOf`), so privileges are managed
//! in the database by its owner and no SQL travels through a spec. Every
//! identifier is validated and quoted before it reaches the server.
//!
//! The password never reaches the server either: the broker sends a
//! SCRAM-SHA-256 verifier computed here, which PostgreSQL stores as is, so
//! no statement log of the database can leak a credential.
//!
//! The role's comment records which pod it is for, which BrokeredSecret
//! and when it expires. That comment is the durable truth: a restarted
//! broker lists ferry's roles and reaps those that expired or whose pod is
//! gone ([`PostgresProvider::reap`]), so nothing is lost with the broker's
//! memory.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::str::FromStr;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as BASE64, URL_SAFE_NO_PAD};
use futures::StreamExt as _;
use ring::rand::{SecureRandom, SystemRandom};
use ring::{digest, hmac, pbkdf2};
use sha2::{Digest as _, Sha256};
use tokio_postgres::error::SqlState;
use zeroize::Zeroizing;

use super::secret_reader::SecretReader;
use super::{Files, IssueRequest, Issued, Provider, ProviderError, ReapContext, Reaped};
use crate::lease_id::LeaseClaims;
use crate::pods::PodPresence;

mod pool;
pub mod rotation;
use ferry_api::resources::{BrokeredSecret, SecretKeyRef};
pub use pool::{DEFAULT_ADMIN_CONNECTIONS, MAX_ADMIN_CONNECTIONS};

/// Every role ferry creates starts with this; the reaper looks at no other.
pub const ROLE_PREFIX: &str = "ferry_";

/// First word of the comment on every role ferry creates.
const COMMENT_MARKER: &str = "ferry:v1";

/// PostgreSQL's limit on identifier length, in bytes.
const MAX_IDENTIFIER: usize = 63;

/// How long connecting to a database may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the reaper spends on one database in one pass.
const REAP_DEADLINE: Duration = Duration::from_secs(30);

/// How long one round of statements may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// PBKDF2 iterations of the SCRAM verifier: PostgreSQL's own default.
const SCRAM_ITERATIONS: u32 = 4096;

/// Random bytes in a password (256 bits).
const PASSWORD_BYTES: usize = 32;

/// Which admin connection string: the Secret and key holding it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Database {
    namespace: String,
    secret: String,
    key: String,
}

impl std::fmt::Display for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Secret {}/{} key {}",
            self.namespace, self.secret, self.key
        )
    }
}

/// An open admin connection and where it points (`host`, `port`,
/// `database`, for templates).
struct AdminConnection {
    client: tokio_postgres::Client,
    endpoint: Arc<BTreeMap<String, String>>,
    /// The memberOf check ([`privileged_sql`]), prepared once: each
    /// issuance then sends only its parameters, and the server reuses
    /// the plan.
    member_check: tokio_postgres::Statement,
}

impl pool::Health for AdminConnection {
    fn is_closed(&self) -> bool {
        self.client.is_closed()
    }
}

/// An admin connection lent by a database's pool; back in it when dropped.
type Admin = pool::Pooled<AdminConnection>;

/// The `postgres` provider.
pub struct PostgresProvider {
    secrets: Arc<SecretReader>,
    /// Admin connections per database at most.
    admin_connections: usize,
    /// Per database; the map's own lock is held only to find or add a
    /// pool, never across I/O.
    pools: std::sync::Mutex<HashMap<Database, Arc<pool::Pool<AdminConnection>>>>,
    /// The database each BrokeredSecret used, so its leases can still be
    /// revoked and reaped after the BrokeredSecret is deleted.
    seen: std::sync::Mutex<HashMap<(String, String), Database>>,
    /// Databases whose admin Secret was found with a staged rotation, for
    /// the rotation to complete ([`Self::take_staged`]).
    staged: std::sync::Mutex<HashSet<Database>>,
    random: SystemRandom,
}

impl PostgresProvider {
    /// A provider reading admin connection strings through `secrets`,
    /// with at most `admin_connections` (clamped to 1 to
    /// [`MAX_ADMIN_CONNECTIONS`]) open to each database.
    pub fn new(secrets: Arc<SecretReader>, admin_connections: usize) -> Self {
        Self {
            secrets,
            admin_connections: admin_connections.clamp(1, MAX_ADMIN_CONNECTIONS),
            pools: std::sync::Mutex::default(),
            seen: std::sync::Mutex::default(),
            staged: std::sync::Mutex::default(),
            random: SystemRandom::new(),
        }
    }

    fn database_of(secret: &BrokeredSecret) -> Result<Database, ProviderError> {
        let source = secret
            .spec
            .source
            .postgres
            .as_ref()
            .ok_or_else(|| ProviderError::Invalid("not a postgres BrokeredSecret".into()))?;
        let SecretKeyRef { name, key } = &source.connection_secret_ref;
        Ok(Database {
            namespace: secret.metadata.namespace.clone().unwrap_or_default(),
            secret: name.clone(),
            key: key.clone(),
        })
    }

    /// The admin connection string a postgres BrokeredSecret uses.
    pub fn admin_database(&self, secret: &BrokeredSecret) -> Option<Database> {
        Self::database_of(secret).ok()
    }

    /// Reads the admin Secret of `database` afresh, so what custody knows
    /// of it (fingerprint, rotation time) is current after a rotation.
    pub async fn reread_admin_secret(&self, database: &Database) {
        self.secrets.forget(&database.namespace, &database.secret);
        if let Err(error) = self
            .secrets
            .data(&database.namespace, &database.secret)
            .await
        {
            tracing::warn!(database = %database, %error, "could not re-read the admin Secret after a rotation");
        }
    }

    /// The databases found with a staged rotation since the last call.
    pub fn take_staged(&self) -> HashSet<Database> {
        std::mem::take(&mut *self.staged.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn remember(&self, secret: &BrokeredSecret, database: &Database) {
        let key = (
            secret.metadata.namespace.clone().unwrap_or_default(),
            secret.metadata.name.clone().unwrap_or_default(),
        );
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, database.clone());
    }

    /// An admin connection to `database` from its pool: an idle one opened
    /// with the current connection string, or a new one (through
    /// [`rotation::connect_stored`], like every admin connection) while
    /// fewer than `--postgres-admin-connections` are open. Waits for one
    /// to come free at most [`QUERY_TIMEOUT`].
    async fn admin(&self, database: &Database) -> Result<Admin, ProviderError> {
        let data = self
            .secrets
            .data(&database.namespace, &database.secret)
            .await?;
        let dsn = data.get(&database.key).ok_or_else(|| {
            ProviderError::NotFound(format!("{database} not found (no such key)"))
        })?;
        let staged = data.get(&rotation::next_key(&database.key));
        if staged.is_some() {
            self.staged
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(database.clone());
        }
        let ca = data
            .get(super::postgres_tls::CA_KEY)
            .map(|ca| ca.as_slice());
        let dsn_digest: [u8; 32] = Sha256::new()
            .chain_update(dsn.as_slice())
            .chain_update(staged.map(|next| next.as_slice()).unwrap_or_default())
            .chain_update(ca.unwrap_or_default())
            .finalize()
            .into();
        let pool = Arc::clone(
            self.pools
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(database.clone())
                .or_insert_with(|| pool::Pool::new(self.admin_connections)),
        );
        // Only callers of this database wait here: for a free connection,
        // or for one connect timeout.
        pool.acquire(
            dsn_digest,
            QUERY_TIMEOUT,
            || async {
                let (client, endpoint) =
                    rotation::connect_stored(database, dsn, staged, ca).await?;
                let member_check = run(
                    database,
                    "preparing the memberOf check",
                    client.prepare(&privileged_sql(false)),
                )
                .await?;
                Ok(AdminConnection {
                    client,
                    endpoint: Arc::new(endpoint),
                    member_check,
                })
            },
            |size| {
                ProviderError::Unavailable(format!(
                    "all {size} admin connections to the database of {database} stayed busy                      for {QUERY_TIMEOUT:?}; the database is slow, or raise                      --postgres-admin-connections"
                ))
            },
        )
        .await
    }

    fn random_bytes<const N: usize>(&self) -> Result<[u8; N], ProviderError> {
        let mut bytes = [0u8; N];
        self.random.fill(&mut bytes).map_err(|_| {
            ProviderError::Unavailable("the operating system's random generator failed".into())
        })?;
        Ok(bytes)
    }
}

impl Provider for PostgresProvider {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    /// Creates the role for `request.pod` and returns its credentials.
    async fn issue(&self, request: IssueRequest<'_>) -> Result<Issued, ProviderError> {
        let database = Self::database_of(request.secret)?;
        let member_of = request
            .secret
            .spec
            .source
            .postgres
            .as_ref()
            .map_or(&[][..], |source| &source.member_of);
        // Everything but the round trips before a connection is taken: the
        // verifier costs a few thousand HMACs.
        let role = role_name(&request.pod.namespace, &self.random_bytes::<8>()?);
        let password =
            Zeroizing::new(URL_SAFE_NO_PAD.encode(self.random_bytes::<PASSWORD_BYTES>()?));
        let verifier = scram_verifier(password.as_bytes(), &self.random_bytes::<16>()?);
        let comment = RoleComment {
            pod_uid: request.pod.pod_uid.clone(),
            secret: secret_name(request.secret),
            issued_at: request.now.as_second(),
            expires_at: request.expires_at,
        };
        let sql = create_role(&role, &verifier, request.expires_at, member_of, &comment)?;

        let admin = self.admin(&database).await?;
        self.remember(request.secret, &database);
        // Two round trips: the memberOf check (prepared once per
        // connection), then the role and its comment in one transaction.
        let refused = privileged_roles(
            &database,
            &admin.client,
            &admin.member_check,
            member_of,
            false,
        )
        .await?;
        if !refused.is_empty() {
            return Err(ProviderError::Refused(format!(
                "BrokeredSecret {}: memberOf would give a pod's role too much: {}; ferry \
                 grants only roles without SUPERUSER, CREATEROLE, BYPASSRLS or REPLICATION \
                 that are not (and are not members of) superuser or pg_* roles",
                secret_name(request.secret),
                refused.join("; ")
            )));
        }
        run(
            &database,
            "creating a role",
            admin.client.batch_execute(&sql),
        )
        .await?;
        let endpoint = Arc::clone(&admin.endpoint);
        drop(admin);

        let files = Files::from([
            (
                "username".to_owned(),
                Zeroizing::new(role.clone().into_bytes()),
            ),
            (
                "password".to_owned(),
                Zeroizing::new(password.as_bytes().to_vec()),
            ),
        ]);
        Ok(Issued {
            files,
            handle: role,
            variables: BTreeMap::clone(&endpoint),
            expires_at: None,
        })
    }

    /// Moves the role's `VALID UNTIL` to `request.expires_at`. The files
    /// the pod has stay valid, so there are none to send.
    async fn renew(
        &self,
        request: IssueRequest<'_>,
        lease: &LeaseClaims,
    ) -> Result<Option<Issued>, ProviderError> {
        let role = own_role(&lease.handle)?;
        let database = Self::database_of(request.secret)?;
        let admin = self.admin(&database).await?;
        self.remember(request.secret, &database);
        let comment = RoleComment {
            pod_uid: lease.pod_uid.clone(),
            secret: secret_name(request.secret),
            issued_at: lease.issued_at,
            expires_at: request.expires_at,
        };
        let sql = extend_role(role, request.expires_at, &comment)?;
        match run(
            &database,
            "extending a role",
            admin.client.batch_execute(&sql),
        )
        .await
        {
            Err(ProviderError::NotFound(_)) => Err(ProviderError::Gone(format!(
                "role {role} no longer exists: the lease was revoked or reaped; request a new one"
            ))),
            other => other.map(|()| None),
        }
    }

    /// Drops the lease's role now, ending its sessions. `secret` is the
    /// BrokeredSecret when it still exists; without it, the database it
    /// last used on this replica is tried.
    async fn revoke(
        &self,
        secret: Option<&BrokeredSecret>,
        lease: &LeaseClaims,
    ) -> Result<(), ProviderError> {
        let role = own_role(&lease.handle)?;
        let database = match secret {
            Some(secret) => Self::database_of(secret)?,
            None => self
                .seen
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&(lease.secret_namespace.clone(), lease.secret_name.clone()))
                .cloned()
                .ok_or_else(|| {
                    ProviderError::NotFound(format!(
                        "BrokeredSecret {}/{} is gone; its role {role} is dropped by the \
                         reaper of a broker that used it, and cannot log in after its expiry",
                        lease.secret_namespace, lease.secret_name
                    ))
                })?,
        };
        let admin = self.admin(&database).await?;
        drop_role(&database, &admin.client, role).await
    }

    /// Drops, in every database the BrokeredSecrets (and those this
    /// replica has used) point at, the ferry roles that expired or whose
    /// pod is gone.
    async fn reap(&self, context: ReapContext<'_>) -> Reaped {
        let mut databases: HashSet<Database> = context
            .secrets
            .iter()
            .filter_map(|secret| Self::database_of(secret).ok())
            .collect();
        databases.extend(
            self.seen
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .values()
                .cloned(),
        );
        // Every database at once, each within its deadline: one that never
        // answers costs its own deadline, not every other database's pass.
        let passes = databases.into_iter().map(|database| async move {
            let mut reaped = Reaped::default();
            let pass = self.reap_database(&database, context, &mut reaped);
            let failure = match tokio::time::timeout(REAP_DEADLINE, pass).await {
                Ok(Ok(())) => None,
                Ok(Err(error)) => Some(error.to_string()),
                Err(_) => Some(format!("the pass took over {REAP_DEADLINE:?}")),
            };
            if let Some(error) = failure {
                reaped.failed += 1;
                tracing::warn!(database = %database, %error, "reaping ferry roles failed; retrying on the next pass");
            }
            reaped
        });
        futures::future::join_all(passes).await.into_iter().fold(
            Reaped::default(),
            |mut total, one| {
                total.found += one.found;
                total.expired += one.expired;
                total.pod_gone += one.pod_gone;
                total.withdrawn += one.withdrawn;
                total.failed += one.failed;
                total
            },
        )
    }
}

impl PostgresProvider {
    /// Lists ferry's roles in `database` over one connection, then drops
    /// those to go over up to half the pool's connections at once (the
    /// rest stay free for issuing), counting into `reaped` as it goes.
    async fn reap_database(
        &self,
        database: &Database,
        context: ReapContext<'_>,
        reaped: &mut Reaped,
    ) -> Result<(), ProviderError> {
        let rows = {
            let admin = self.admin(database).await?;
            run(
                database,
                "listing ferry roles",
                admin.client.query(
                    "SELECT rolname::text, shobj_description(oid, 'pg_authid') \
                     FROM pg_roles WHERE left(rolname, length($1)) = $1",
                    &[&ROLE_PREFIX],
                ),
            )
            .await?
        };
        let mut doomed = Vec::new();
        for row in rows {
            let role: String = row.get(0);
            let comment: Option<String> = row.get(1);
            let Some(comment) = comment.as_deref().and_then(RoleComment::parse) else {
                continue; // Not created by ferry: never touched.
            };
            reaped.found += 1;
            if let Some(reason) = comment.reap_reason(context) {
                doomed.push((role, comment, reason));
            }
        }
        let drops = futures::stream::iter(doomed)
            .map(|(role, comment, reason)| async move {
                let dropped = match self.admin(database).await {
                    Ok(admin) => drop_role(database, &admin.client, &role).await,
                    Err(error) => Err(error),
                };
                (role, comment, reason, dropped)
            })
            .buffer_unordered(self.admin_connections.div_ceil(2));
        let mut drops = std::pin::pin!(drops);
        while let Some((role, comment, reason, dropped)) = drops.next().await {
            // One role that cannot be dropped (a lock, a privilege) must not
            // keep the others alive: note it and go on.
            if let Err(error) = dropped {
                reaped.failed += 1;
                tracing::warn!(database = %database, role = %role, %error, "dropping a ferry role failed; retrying on the next pass");
                continue;
            }
            match reason {
                ReapReason::Expired => reaped.expired += 1,
                ReapReason::PodGone => reaped.pod_gone += 1,
                ReapReason::Withdrawn => reaped.withdrawn += 1,
            }
            tracing::info!(
                target: "ferry::audit",
                action = "reap",
                role = %role,
                pod_uid = %comment.pod_uid,
                secret = %comment.secret,
                reason = reason.as_str(),
                "dropped a ferry role"
            );
        }
        Ok(())
    }
}

/// Why an admin connection could not be opened: the error to report, and
/// whether the server refused the login itself (a wrong password), which
/// the rotation of the admin credential tells apart from an outage.
struct ConnectError {
    error: ProviderError,
    login_refused: bool,
}

impl From<ProviderError> for ConnectError {
    fn from(error: ProviderError) -> Self {
        Self {
            error,
            login_refused: false,
        }
    }
}

/// Opens an admin connection. Errors name the Secret, never the
/// connection string.
async fn connect(
    database: &Database,
    dsn: &[u8],
    ca: Option<&[u8]>,
) -> Result<(tokio_postgres::Client, BTreeMap<String, String>), ConnectError> {
    let invalid = || {
        ProviderError::Invalid(format!(
            "{database} is not a PostgreSQL connection string \
             (postgres://user:password@host:port/database)"
        ))
    };
    let dsn = std::str::from_utf8(dsn).map_err(|_| invalid())?;
    let (dsn, default_mode) = super::postgres_tls::tls_mode(dsn);
    let dsn = Zeroizing::new(dsn);
    let mut config = tokio_postgres::Config::from_str(&dsn).map_err(|_| invalid())?;
    if let Some(mode) = default_mode {
        config.ssl_mode(mode);
    }
    let endpoint = endpoint(&config);
    config.connect_timeout(CONNECT_TIMEOUT);
    config.application_name(ferry_contract::BROKER_MANAGER);
    let tls = super::postgres_tls::connector(ca).map_err(|error| match error {
        ProviderError::Invalid(message) => ProviderError::Invalid(format!("{database}: {message}")),
        other => other,
    })?;
    let (client, connection) = tokio::time::timeout(CONNECT_TIMEOUT, config.connect(tls))
        .await
        .map_err(|_| {
            ProviderError::Unavailable(format!(
                "connecting to the database of {database} took over {CONNECT_TIMEOUT:?}"
            ))
        })?
        .map_err(|error| {
            // The cause (a TLS or I/O error) is what an operator needs;
            // neither ever holds the connection string.
            let cause = std::error::Error::source(&error)
                .map(|cause| format!(": {cause}"))
                .unwrap_or_default();
            ConnectError {
                login_refused: rotation::login_refused(&error),
                error: ProviderError::Unavailable(format!(
                    "connecting to the database of {database}: {error}{cause}"
                )),
            }
        })?;
    let name = database.to_string();
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(database = %name, %error, "admin connection to PostgreSQL closed");
        }
    });
    // A superuser (or a member of one) could be steered into anything a
    // spec can reach; the README asks for CREATEROLE and no more.
    let privileged =
        privileged_roles(database, &client, privileged_sql(true).as_str(), &[], true).await?;
    if let Some(problem) = privileged.first() {
        return Err(ProviderError::Refused(format!(
            "{database}: a superuser admin connection is refused ({problem}); give the \
             broker a role with CREATEROLE that is not a superuser"
        ))
        .into());
    }
    Ok((client, endpoint))
}

/// The query [`privileged_roles`] asks: with `current`, of the connected
/// role; else of the roles in `$1`.
fn privileged_sql(current: bool) -> String {
    let start = if current {
        "SELECT oid, rolname::text FROM pg_roles WHERE rolname = current_user"
    } else {
        "SELECT oid, rolname::text FROM pg_roles WHERE rolname = ANY($1)"
    };
    format!(
        "WITH RECURSIVE reach(oid, via) AS ({start} \
           UNION SELECT m.roleid, r.via FROM pg_auth_members m JOIN reach r ON m.member = r.oid) \
         SELECT r.via, p.rolname::text, p.rolsuper, p.rolcreaterole, p.rolbypassrls, \
                p.rolreplication \
         FROM reach r JOIN pg_roles p ON p.oid = r.oid ORDER BY 1, 2"
    )
}

/// What makes roles too powerful to hand to a pod: for each role of
/// `names` (or, with `current`, the connected role, `names` being ignored),
/// itself or any role it is a member of, directly or not, that is a
/// superuser, a `pg_*` role, or has CREATEROLE, BYPASSRLS or REPLICATION.
/// With `current`, only superuser power counts: the admin role needs
/// CREATEROLE and `pg_signal_backend`. `statement` is
/// [`privileged_sql`]`(current)`, as text or prepared.
async fn privileged_roles<S>(
    database: &Database,
    client: &tokio_postgres::Client,
    statement: &S,
    names: &[String],
    current: bool,
) -> Result<Vec<String>, ProviderError>
where
    S: tokio_postgres::ToStatement + ?Sized + Sync,
{
    if names.is_empty() && !current {
        return Ok(Vec::new());
    }
    let rows = if current {
        run(
            database,
            "checking the admin role",
            client.query(statement, &[]),
        )
        .await?
    } else {
        run(
            database,
            "checking memberOf roles",
            client.query(statement, &[&names]),
        )
        .await?
    };
    let mut problems = Vec::new();
    for row in rows {
        let (via, role): (String, String) = (row.get(0), row.get(1));
        let flags: [(bool, &str); 4] = [
            (row.get(2), "SUPERUSER"),
            (row.get(3), "CREATEROLE"),
            (row.get(4), "BYPASSRLS"),
            (row.get(5), "REPLICATION"),
        ];
        let mut why: Vec<&str> = flags
            .iter()
            .filter(|(set, name)| *set && (!current || *name == "SUPERUSER"))
            .map(|(_, name)| *name)
            .collect();
        if !current && role.starts_with("pg_") {
            why.push("a predefined pg_* role");
        }
        if why.is_empty() {
            continue;
        }
        let what = why.join(", ");
        problems.push(if via == role {
            format!("role {role} is {what}")
        } else {
            format!("role {via} is a member of {role}, which is {what}")
        });
    }
    Ok(problems)
}

/// Where an admin connection string points, for templates: the first
/// host and port, and the database (PostgreSQL's defaults when unset).
fn endpoint(config: &tokio_postgres::Config) -> BTreeMap<String, String> {
    use tokio_postgres::config::Host;
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(host)) => host.clone(),
        Some(Host::Unix(path)) => path.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let database = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("postgres")
        .to_owned();
    BTreeMap::from([
        ("host".to_owned(), host),
        ("port".to_owned(), port.to_string()),
        ("database".to_owned(), database),
    ])
}

/// Runs `query` with the query timeout, mapping database errors to what
/// the caller should be told: only the server's message, which names
/// objects but never repeats a statement's text.
async fn run<T>(
    database: &Database,
    what: &str,
    query: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, ProviderError> {
    let result = tokio::time::timeout(QUERY_TIMEOUT, query)
        .await
        .map_err(|_| {
            ProviderError::Unavailable(format!(
                "{what} in the database of {database} took over {QUERY_TIMEOUT:?}"
            ))
        })?;
    result.map_err(|error| match error.as_db_error() {
        Some(db) if *db.code() == SqlState::UNDEFINED_OBJECT => ProviderError::NotFound(format!(
            "{what} in the database of {database}: {}",
            db.message()
        )),
        Some(db) if *db.code() == SqlState::INSUFFICIENT_PRIVILEGE => {
            ProviderError::Unavailable(format!(
                "{what} in the database of {database}: the admin role lacks a privilege: {}",
                db.message()
            ))
        }
        Some(db) => ProviderError::Unavailable(format!(
            "{what} in the database of {database}: {}",
            db.message()
        )),
        None => {
            ProviderError::Unavailable(format!("{what} in the database of {database}: {error}"))
        }
    })
}

/// Takes login away, ends the role's sessions, and drops it with what it
/// owns, in two round trips: login is gone (committed) before sessions
/// are ended, so none can start in between. A role already gone is fine.
/// `DROP OWNED` needs the role's privileges, which an admin that is not a
/// superuser gets by granting the role to itself first (CREATEROLE allows
/// that).
async fn drop_role(
    database: &Database,
    client: &tokio_postgres::Client,
    role: &str,
) -> Result<(), ProviderError> {
    let role_ident = quote_identifier(role)?;
    match run(
        database,
        "disabling a role",
        client.batch_execute(&format!("ALTER ROLE {role_ident} NOLOGIN")),
    )
    .await
    {
        // Dropped already (a revocation, another replica's reaper).
        Err(ProviderError::NotFound(_)) => return Ok(()),
        other => other?,
    }
    match run(
        database,
        "dropping a role",
        client.batch_execute(&drop_statements(role)?),
    )
    .await
    {
        // Dropped by someone else in between.
        Err(ProviderError::NotFound(_)) => Ok(()),
        other => other,
    }
}

/// The statements ending a role's sessions and dropping it with what it
/// owns: one implicit transaction (the sessions end at once, whatever
/// follows).
pub fn drop_statements(role: &str) -> Result<String, ProviderError> {
    let role_ident = quote_identifier(role)?;
    Ok(format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = {}; \
         GRANT {role_ident} TO CURRENT_USER; DROP OWNED BY {role_ident}; \
         DROP ROLE IF EXISTS {role_ident}",
        quote_literal(role)
    ))
}

/// `namespace/name` of a BrokeredSecret.
fn secret_name(secret: &BrokeredSecret) -> String {
    format!(
        "{}/{}",
        secret.metadata.namespace.as_deref().unwrap_or_default(),
        secret.metadata.name.as_deref().unwrap_or_default()
    )
}

/// A role name for a pod of `namespace`: the prefix, the namespace made
/// into a plain identifier and cut short, and 16 random hex digits.
pub fn role_name(namespace: &str, random: &[u8; 8]) -> String {
    let mut name = String::from(ROLE_PREFIX);
    let room = MAX_IDENTIFIER - ROLE_PREFIX.len() - 1 - 16;
    name.extend(
        namespace
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .take(room),
    );
    name.push('_');
    for byte in random {
        let _ = write!(name, "{byte:02x}");
    }
    name
}

/// Checks a lease's handle is a role ferry would have created.
fn own_role(handle: &str) -> Result<&str, ProviderError> {
    if handle.starts_with(ROLE_PREFIX) && is_plain_identifier(handle) {
        Ok(handle)
    } else {
        Err(ProviderError::Invalid(
            "the lease's handle is not a ferry PostgreSQL role".into(),
        ))
    }
}

/// Lower-case letters, digits and `_`, not starting with a digit, at most
/// 63 bytes: the identifiers ferry accepts, from a spec or its own.
pub fn is_plain_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_IDENTIFIER
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// `name` as a quoted SQL identifier; refused unless plain.
pub fn quote_identifier(name: &str) -> Result<String, ProviderError> {
    if is_plain_identifier(name) {
        Ok(postgres_protocol::escape::escape_identifier(name))
    } else {
        Err(ProviderError::Invalid(format!(
            "{name:?} is not a plain PostgreSQL role name (lower-case letters, digits and _, \
             at most 63 characters)"
        )))
    }
}

/// `text` as a quoted SQL string literal, read the same whatever
/// `standard_conforming_strings` says (libpq's quoting).
pub fn quote_literal(text: &str) -> String {
    postgres_protocol::escape::escape_literal(text)
}

/// `unix` seconds as a timestamp literal PostgreSQL reads unambiguously.
fn timestamp_literal(unix: i64) -> Result<String, ProviderError> {
    k8s_openapi::jiff::Timestamp::from_second(unix)
        .map(|at| quote_literal(&at.to_string()))
        .map_err(|_| ProviderError::Invalid(format!("expiry {unix} is out of range")))
}

/// The statements creating a lease's role: one implicit transaction.
pub fn create_role(
    role: &str,
    verifier: &str,
    expires_at: i64,
    member_of: &[String],
    comment: &RoleComment,
) -> Result<String, ProviderError> {
    let role = quote_identifier(role)?;
    let mut sql = format!(
        "CREATE ROLE {role} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION \
         NOBYPASSRLS INHERIT PASSWORD {} VALID UNTIL {}",
        quote_literal(verifier),
        timestamp_literal(expires_at)?
    );
    if !member_of.is_empty() {
        let roles = member_of
            .iter()
            .map(|name| quote_identifier(name))
            .collect::<Result<Vec<_>, _>>()?;
        let _ = write!(sql, " IN ROLE {}", roles.join(", "));
    }
    let _ = write!(
        sql,
        "; COMMENT ON ROLE {role} IS {}",
        quote_literal(&comment.to_string())
    );
    Ok(sql)
}

/// The statements moving a role's expiry: one implicit transaction.
pub fn extend_role(
    role: &str,
    expires_at: i64,
    comment: &RoleComment,
) -> Result<String, ProviderError> {
    let role = quote_identifier(role)?;
    Ok(format!(
        "ALTER ROLE {role} VALID UNTIL {}; COMMENT ON ROLE {role} IS {}",
        timestamp_literal(expires_at)?,
        quote_literal(&comment.to_string())
    ))
}

/// A SCRAM-SHA-256 verifier for `password` (RFC 5802, 7677), in the form
/// PostgreSQL stores: `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
///
/// postgres-protocol has one too, but it leaves the salted password (from
/// which the verifier and a login follow) in memory unwiped and draws its
/// own salt; this one wipes it and takes the broker's random source. A
/// test checks that both compute the same verifier.
pub fn scram_verifier(password: &[u8], salt: &[u8]) -> String {
    let mut salted = Zeroizing::new([0u8; 32]);
    let iterations =
        std::num::NonZeroU32::new(SCRAM_ITERATIONS).unwrap_or(std::num::NonZeroU32::MIN);
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        salt,
        password,
        salted.as_mut(),
    );
    let key = hmac::Key::new(hmac::HMAC_SHA256, salted.as_ref());
    let client_key = hmac::sign(&key, b"Client Key");
    let stored_key = digest::digest(&digest::SHA256, client_key.as_ref());
    let server_key = hmac::sign(&key, b"Server Key");
    format!(
        "SCRAM-SHA-256${SCRAM_ITERATIONS}:{}${}:{}",
        BASE64.encode(salt),
        BASE64.encode(stored_key.as_ref()),
        BASE64.encode(server_key.as_ref())
    )
}

/// What ferry writes on each role it creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleComment {
    /// The pod the role is for.
    pub pod_uid: String,
    /// The BrokeredSecret, `namespace/name`.
    pub secret: String,
    /// When the role was created or last renewed (Unix seconds): how
    /// recently a live pod asked for it.
    pub issued_at: i64,
    /// When the role stops working (Unix seconds).
    pub expires_at: i64,
}

impl std::fmt::Display for RoleComment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{COMMENT_MARKER} pod={} secret={} issued={} expires={}",
            self.pod_uid, self.secret, self.issued_at, self.expires_at
        )
    }
}

/// Why the reaper drops a role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReapReason {
    /// Past its expiry.
    Expired,
    /// Its pod no longer exists.
    PodGone,
    /// A Revocation took it away, or no valid Grant allows it any more.
    Withdrawn,
}

impl ReapReason {
    fn as_str(self) -> &'static str {
        match self {
            Self::Expired => "expired",
            Self::PodGone => "pod_gone",
            Self::Withdrawn => "withdrawn",
        }
    }
}

impl RoleComment {
    /// Reads a comment ferry wrote; `None` for any other text.
    pub fn parse(text: &str) -> Option<Self> {
        let mut words = text.split(' ');
        if words.next()? != COMMENT_MARKER {
            return None;
        }
        let mut field = |name: &str| {
            words
                .next()?
                .strip_prefix(name)?
                .strip_prefix('=')
                .map(str::to_owned)
        };
        let pod_uid = field("pod")?;
        let secret = field("secret")?;
        let issued_at = field("issued")?.parse().ok()?;
        let expires_at = field("expires")?.parse().ok()?;
        (!pod_uid.is_empty()).then_some(Self {
            pod_uid,
            secret,
            issued_at,
            expires_at,
        })
    }

    /// Whether, and why, the role should be dropped in this pass.
    pub fn reap_reason(&self, context: ReapContext<'_>) -> Option<ReapReason> {
        if self.expires_at <= context.now {
            return Some(ReapReason::Expired);
        }
        match (context.presence)(&self.pod_uid) {
            PodPresence::Present => {
                (context.withdrawn)(&self.pod_uid, &self.secret).then_some(ReapReason::Withdrawn)
            }
            PodPresence::Departed => Some(ReapReason::PodGone),
            PodPresence::Unknown => (context.now - self.issued_at >= context.unknown_pod_grace)
                .then_some(ReapReason::PodGone),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_are_plain_prefixed_and_fit_postgres() {
        let name = role_name("shop", &[0xab; 8]);
        assert_eq!(name, "ferry_shop_abababababababab");
        let long = role_name(&"a-very-long-namespace".repeat(4), &[1; 8]);
        assert!(long.len() <= MAX_IDENTIFIER, "{long}");
        assert!(is_plain_identifier(&long), "{long}");
        assert!(long.ends_with("_0101010101010101"));
    }

    #[test]
    fn identifiers_from_a_spec_are_validated_before_quoting() {
        assert_eq!(
            quote_identifier("orders_reader").unwrap(),
            "\"orders_reader\""
        );
        for bad in [
            "",
            "Orders",
            "a\"b",
            "a;drop role x",
            "1abc",
            &"a".repeat(64),
        ] {
            assert!(quote_identifier(bad).is_err(), "{bad:?}");
        }
        assert_eq!(quote_literal("it's"), "'it''s'");
    }

    #[test]
    fn create_role_quotes_everything_and_refuses_bad_member_roles() {
        let comment = RoleComment {
            pod_uid: "uid-1".into(),
            secret: "payments/orders-db".into(),
            issued_at: 1_800_000_000,
            expires_at: 1_800_000_900,
        };
        let sql = create_role(
            "ferry_shop_01",
            "SCRAM-SHA-256$4096:c2FsdA==$a:b",
            1_800_000_900,
            &["orders_reader".into()],
            &comment,
        )
        .unwrap();
        assert_eq!(
            sql,
            "CREATE ROLE \"ferry_shop_01\" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE \
             NOREPLICATION NOBYPASSRLS INHERIT PASSWORD 'SCRAM-SHA-256$4096:c2FsdA==$a:b' \
             VALID UNTIL '2027-01-15T08:15:00Z' IN ROLE \"orders_reader\"; COMMENT ON ROLE \
             \"ferry_shop_01\" IS 'ferry:v1 pod=uid-1 secret=payments/orders-db \
             issued=1800000000 expires=1800000900'"
        );
        // Without memberOf: the role and its comment.
        let plain = create_role("ferry_shop_01", "v", 1_800_000_900, &[], &comment).unwrap();
        assert!(
            plain.starts_with("CREATE ROLE \"ferry_shop_01\""),
            "{plain}"
        );
        assert!(!plain.contains("IN ROLE"), "{plain}");
        let injected = create_role(
            "ferry_shop_01",
            "v",
            1,
            &["x\"; DROP TABLE orders; --".into()],
            &comment,
        );
        assert!(injected.is_err());
    }

    #[test]
    fn comments_round_trip_and_foreign_comments_are_ignored() {
        let comment = RoleComment {
            pod_uid: "0f1e".into(),
            secret: "payments/orders-db".into(),
            issued_at: 10,
            expires_at: 20,
        };
        assert_eq!(RoleComment::parse(&comment.to_string()), Some(comment));
        assert_eq!(RoleComment::parse("created by hand"), None);
        assert_eq!(
            RoleComment::parse("ferry:v1 pod= secret=a/b issued=1 expires=2"),
            None
        );
        assert_eq!(RoleComment::parse("ferry:v1 pod=x"), None);
    }

    #[test]
    fn the_reaper_drops_expired_roles_and_roles_of_gone_pods_after_a_grace() {
        let comment = RoleComment {
            pod_uid: "pod".into(),
            secret: "a/b".into(),
            issued_at: 1000,
            expires_at: 2000,
        };
        let reason = |now: i64, presence: PodPresence| {
            comment.reap_reason(ReapContext {
                secrets: &[],
                presence: &move |_| presence,
                withdrawn: &|_, _| false,
                now,
                unknown_pod_grace: 60,
            })
        };
        assert_eq!(
            reason(2000, PodPresence::Present),
            Some(ReapReason::Expired)
        );
        assert_eq!(reason(1500, PodPresence::Present), None);
        assert_eq!(
            reason(1001, PodPresence::Departed),
            Some(ReapReason::PodGone)
        );
        assert_eq!(
            reason(1500, PodPresence::Unknown),
            Some(ReapReason::PodGone)
        );
        // Another replica may know a pod this one has not seen yet.
        assert_eq!(reason(1010, PodPresence::Unknown), None);
    }

    #[test]
    fn scram_verifiers_have_postgres_shape_and_depend_on_salt_and_password() {
        let verifier = scram_verifier(b"pencil", b"0123456789abcdef");
        let (method, rest) = verifier.split_once('$').unwrap();
        assert_eq!(method, "SCRAM-SHA-256");
        let (params, keys) = rest.split_once('$').unwrap();
        assert_eq!(
            params,
            format!("4096:{}", BASE64.encode(b"0123456789abcdef"))
        );
        let (stored, server) = keys.split_once(':').unwrap();
        assert_eq!(BASE64.decode(stored).unwrap().len(), 32);
        assert_eq!(BASE64.decode(server).unwrap().len(), 32);
        assert_ne!(verifier, scram_verifier(b"pencil", b"fedcba9876543210"));
        assert_ne!(verifier, scram_verifier(b"pen", b"0123456789abcdef"));
        assert!(!verifier.contains("pencil"));
    }

    #[test]
    fn scram_verifiers_match_the_postgres_client_librarys() {
        // postgres-protocol salts its own verifier at random: reuse its
        // salt, and ours must come out byte for byte the same.
        for password in [
            "pencil",
            "Zm9vYmFy+/=",
            "a much longer password of 40 characters",
        ] {
            let theirs = postgres_protocol::password::scram_sha_256(password.as_bytes());
            let salt = theirs
                .split(['$', ':'])
                .nth(2)
                .and_then(|salt| BASE64.decode(salt).ok())
                .expect("a salt in postgres-protocol's verifier");
            assert_eq!(scram_verifier(password.as_bytes(), &salt), theirs);
        }
    }

    #[test]
    fn quoting_leaves_no_way_out_of_a_literal_or_identifier() {
        assert_eq!(
            quote_literal("x'; DROP ROLE y; --"),
            "'x''; DROP ROLE y; --'"
        );
        // A backslash switches to E'' syntax, safe whatever
        // standard_conforming_strings says.
        assert_eq!(quote_literal(r"a\'b"), r" E'a\\''b'");
        assert_eq!(
            quote_identifier("ferry_app").ok().as_deref(),
            Some("\"ferry_app\"")
        );
        assert!(quote_identifier("x\" OR \"1").is_err());
    }

    #[test]
    fn a_role_is_dropped_with_its_sessions_in_one_round_trip() {
        assert_eq!(
            drop_statements("ferry_shop_01").unwrap(),
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = \
             'ferry_shop_01'; GRANT \"ferry_shop_01\" TO CURRENT_USER; DROP OWNED BY \
             \"ferry_shop_01\"; DROP ROLE IF EXISTS \"ferry_shop_01\""
        );
        assert!(drop_statements("x'; DROP ROLE y; --").is_err());
    }

    #[test]
    fn handles_that_are_not_ferry_roles_are_refused() {
        assert!(own_role("ferry_shop_01").is_ok());
        assert!(own_role("postgres").is_err());
        assert!(own_role("ferry_\"x").is_err());
    }
}
