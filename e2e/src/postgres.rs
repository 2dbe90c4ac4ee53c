//! A real PostgreSQL server for tests and the demo: the Debian package's
//! binaries (`.ci/run` installs them with apt), a private temporary data
//! directory, a free loopback port, password (SCRAM) authentication over
//! TCP, and every statement logged, so tests can check what reached the
//! server. It dies with the harness, like the control plane.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::HarnessError;
use crate::process::ProcessGroup;

/// The superuser's name; its password is random per server.
const SUPERUSER: &str = "postgres";

/// How long the server may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The server shared by the tests of one binary.
static SHARED: tokio::sync::OnceCell<Postgres> = tokio::sync::OnceCell::const_new();

/// A running PostgreSQL server.
pub struct Postgres {
    port: u16,
    password: String,
    processes: ProcessGroup,
    // Removed when the server is dropped (or by the watchdog).
    dir: tempfile::TempDir,
}

/// The directory holding `initdb` and `postgres`: `$FERRY_POSTGRES_BIN`, or
/// the newest `/usr/lib/postgresql/<version>/bin`.
pub fn postgres_bin_dir() -> Result<PathBuf, HarnessError> {
    if let Some(dir) = std::env::var_os("FERRY_POSTGRES_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .max_by_key(|(version, _)| *version);
    newest.map(|(_, bin)| bin).ok_or_else(|| {
        HarnessError::Build(
            "PostgreSQL is not installed: `apt-get install postgresql` (as .ci/run does), \
             or point FERRY_POSTGRES_BIN at a directory holding initdb and postgres"
                .into(),
        )
    })
}

/// PostgreSQL refuses to run as root: as root, the server runs as the
/// package's `postgres` user, which must own its files.
fn server_user() -> Result<Option<(u32, u32)>, HarnessError> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let user = nix::unistd::User::from_name(SUPERUSER)
        .map_err(|error| HarnessError::Process(format!("looking up user postgres: {error}")))?
        .ok_or_else(|| {
            HarnessError::Process(
                "running as root, PostgreSQL needs the `postgres` user its package creates".into(),
            )
        })?;
    Ok(Some((user.uid.as_raw(), user.gid.as_raw())))
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HarnessError {
    let what = what.into();
    move |source| HarnessError::Io { what, source }
}

fn as_user(command: &mut Command, user: Option<(u32, u32)>) {
    use std::os::unix::process::CommandExt;
    if let Some((uid, gid)) = user {
        command.uid(uid).gid(gid);
    }
}

impl Postgres {
    /// Starts a new server and waits until it accepts connections.
    pub async fn start() -> Result<Self, HarnessError> {
        Self::start_with(None, None).await
    }

    /// Starts a new server that also offers TLS with the certificate and
    /// key in `tls` (PEM; the certificate's chain is the caller's to trust).
    pub async fn start_tls(tls: &crate::pki::CertFiles) -> Result<Self, HarnessError> {
        Self::start_with(Some(tls), None).await
    }

    /// Like [`Self::start_tls`], and every TLS connection logs in by client
    /// certificate alone (`hostssl all all 127.0.0.1/32 cert`): the
    /// certificate must chain to `client_ca_pem` and its common name be
    /// the user's. Connections without TLS still use passwords.
    pub async fn start_tls_with_client_certificates(
        tls: &crate::pki::CertFiles,
        client_ca_pem: &str,
    ) -> Result<Self, HarnessError> {
        Self::start_with(Some(tls), Some(client_ca_pem)).await
    }

    /// A server for certificate logins
    /// ([`Self::start_tls_with_client_certificates`] trusting
    /// `client_ca_pem`), serving 127.0.0.1 with a certificate from a fresh
    /// CA, with a LOGIN role named for each of `roles` (and no password).
    /// Returns it and that CA's certificate (PEM), which clients verify the
    /// server with.
    pub async fn start_certificate_logins(
        client_ca_pem: &str,
        roles: &[&str],
    ) -> Result<(Self, String), HarnessError> {
        let server_ca = crate::pki::Authority::generate("ferry-e2e postgres server CA")?;
        // The server copies its certificate and key: the files may go.
        let dir = tempfile::tempdir().map_err(io("creating a temporary directory"))?;
        let tls = server_ca.serving_cert(&["127.0.0.1"], dir.path(), "postgres")?;
        let server = Self::start_tls_with_client_certificates(&tls, client_ca_pem).await?;
        let create: String = roles
            .iter()
            .map(|role| format!("CREATE ROLE \"{role}\" LOGIN;"))
            .collect();
        let sql = |error: tokio_postgres::Error| {
            HarnessError::Process(format!("creating roles {roles:?}: {error}"))
        };
        server
            .admin()
            .await
            .map_err(sql)?
            .batch_execute(&create)
            .await
            .map_err(sql)?;
        Ok((server, server_ca.cert_pem()))
    }

    async fn start_with(
        tls: Option<&crate::pki::CertFiles>,
        client_ca_pem: Option<&str>,
    ) -> Result<Self, HarnessError> {
        let bin = postgres_bin_dir()?;
        let user = server_user()?;
        let dir = tempfile::Builder::new()
            .prefix("ferry-postgres-")
            .tempdir()
            .map_err(io("creating a temporary directory"))?;
        let password = random_password()?;
        let password_file = dir.path().join("password");
        std::fs::write(&password_file, &password).map_err(io("writing the password file"))?;
        if let Some((uid, gid)) = user {
            for path in [dir.path(), password_file.as_path()] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid))
                    .map_err(io(format!("handing {} to postgres", path.display())))?;
            }
        }
        let data = dir.path().join("data");
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("--pgdata")
            .arg(&data)
            .arg(format!("--username={SUPERUSER}"))
            .arg("--pwfile")
            .arg(&password_file)
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .args(["--encoding=UTF8", "--no-sync", "--no-instructions"]);
        as_user(&mut initdb, user);
        let output = initdb.output().map_err(io("running initdb"))?;
        if !output.status.success() {
            return Err(HarnessError::Process(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        std::fs::remove_file(&password_file).map_err(io("removing the password file"))?;

        let log_dir = dir.path().join("logs");
        std::fs::create_dir(&log_dir).map_err(io("creating the log directory"))?;
        let mut processes = ProcessGroup::new(&log_dir, dir.path())?;
        let port = crate::free_port()?.port();
        let mut server = Command::new(bin.join("postgres"));
        server
            .arg("-D")
            .arg(&data)
            .arg("-p")
            .arg(port.to_string())
            .arg("-k")
            .arg(dir.path())
            .args(["-c", "listen_addresses=127.0.0.1"])
            // Test data is thrown away; durability only slows a shared machine.
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off"])
            // Every statement in the log: tests check no password reaches it.
            .args(["-c", "log_statement=all"]);
        if let Some(tls) = tls {
            // The server insists its key is private to it.
            let (cert, key) = (dir.path().join("server.crt"), dir.path().join("server.key"));
            std::fs::copy(&tls.cert, &cert).map_err(io("copying the server certificate"))?;
            std::fs::copy(&tls.key, &key).map_err(io("copying the server key"))?;
            std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .map_err(io("restricting the server key"))?;
            if let Some((uid, gid)) = user {
                for path in [&cert, &key] {
                    std::os::unix::fs::chown(path, Some(uid), Some(gid))
                        .map_err(io(format!("handing {} to postgres", path.display())))?;
                }
            }
            server
                .args(["-c", "ssl=on"])
                .arg("-c")
                .arg(format!("ssl_cert_file={}", cert.display()))
                .arg("-c")
                .arg(format!("ssl_key_file={}", key.display()));
            if let Some(ca_pem) = client_ca_pem {
                let ca = dir.path().join("client-ca.crt");
                std::fs::write(&ca, ca_pem).map_err(io("writing the client CA"))?;
                // First match wins: TLS connections log in by certificate.
                let hba = data.join("pg_hba.conf");
                let rules = std::fs::read_to_string(&hba).map_err(io("reading pg_hba.conf"))?;
                std::fs::write(&hba, format!("hostssl all all 127.0.0.1/32 cert\n{rules}"))
                    .map_err(io("writing pg_hba.conf"))?;
                if let Some((uid, gid)) = user {
                    std::os::unix::fs::chown(&ca, Some(uid), Some(gid))
                        .map_err(io("handing the client CA to postgres"))?;
                }
                server
                    .arg("-c")
                    .arg(format!("ssl_ca_file={}", ca.display()));
            }
        }
        as_user(&mut server, user);
        processes.spawn("postgres", server)?;
        let postgres = Self {
            port,
            password,
            processes,
            dir,
        };
        postgres.wait_ready().await?;
        Ok(postgres)
    }

    /// The server shared by every test of one test binary, started on
    /// first use. Give each test its own database or roles.
    pub async fn shared() -> Result<&'static Self, HarnessError> {
        SHARED.get_or_try_init(Self::start).await
    }

    /// The shared server with a NOLOGIN role `reader` and the broker's
    /// admin role `broker_admin` (password `admin-password`, CREATEROLE,
    /// may grant `reader` and end sessions), made once per test binary.
    pub async fn shared_with_broker_admin() -> Result<&'static Self, HarnessError> {
        static ROLES: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
        let postgres = Self::shared().await?;
        let sql = |error: tokio_postgres::Error| {
            HarnessError::Process(format!("creating reader and broker_admin: {error}"))
        };
        ROLES
            .get_or_try_init(|| async {
                postgres
                    .admin()
                    .await
                    .map_err(sql)?
                    .batch_execute(
                        "CREATE ROLE reader NOLOGIN;
                         CREATE ROLE broker_admin LOGIN CREATEROLE PASSWORD 'admin-password';
                         GRANT reader TO broker_admin WITH ADMIN OPTION;
                         GRANT pg_signal_backend TO broker_admin;",
                    )
                    .await
                    .map_err(sql)
            })
            .await?;
        Ok(postgres)
    }

    async fn wait_ready(&self) -> Result<(), HarnessError> {
        let started = Instant::now();
        loop {
            match self.admin().await {
                Ok(_) => return Ok(()),
                Err(error) if started.elapsed() > READY_TIMEOUT => {
                    return Err(HarnessError::Process(format!(
                        "PostgreSQL was not ready after {READY_TIMEOUT:?} ({error}); its log ends with:\n{}",
                        self.processes.log_tail("postgres", 20)
                    )));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// The loopback port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The superuser's connection string. The broker refuses a superuser
    /// admin connection: give BrokeredSecrets a CREATEROLE role's
    /// ([`Self::dsn`]).
    pub fn admin_dsn(&self) -> String {
        self.dsn(SUPERUSER, &self.password)
    }

    /// The superuser's password.
    pub fn admin_password(&self) -> &str {
        &self.password
    }

    /// A connection string to the `postgres` database as `user`.
    pub fn dsn(&self, user: &str, password: &str) -> String {
        format!(
            "postgres://{user}:{password}@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
    }

    /// Whether a role `name` exists (asked as the superuser).
    pub async fn role_exists(&self, name: &str) -> Result<bool, tokio_postgres::Error> {
        Ok(self
            .admin()
            .await?
            .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&name])
            .await?
            .is_some())
    }

    /// A connection as the superuser.
    pub async fn admin(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        self.connect_as(SUPERUSER, &self.password).await
    }

    /// A connection as `user` with `password`, over TCP with password
    /// authentication, as an application would connect.
    pub async fn connect_as(
        &self,
        user: &str,
        password: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(self.port)
            .user(user)
            .password(password)
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(5))
            .connect(tokio_postgres::NoTls)
            .await?;
        tokio::spawn(connection);
        Ok(client)
    }

    /// Everything the server logged so far (every statement included).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.processes.log_path("postgres")).unwrap_or_default()
    }

    /// Everything the shared server (if started) logged so far.
    pub fn log_of_shared() -> String {
        Self::shared_if_started().map(Self::log).unwrap_or_default()
    }

    fn shared_if_started() -> Option<&'static Self> {
        SHARED.get()
    }

    /// The server's private directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The id of the process group the server runs in (gone once it has
    /// stopped).
    pub fn process_group(&self) -> i32 {
        self.processes.id()
    }
}

/// 32 random hex digits, for passwords and secrets.
pub(crate) fn random_password() -> Result<String, HarnessError> {
    use std::fmt::Write as _;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| std::io::Read::read_exact(&mut random, &mut bytes))
        .map_err(io("reading /dev/urandom"))?;
    Ok(bytes.iter().fold(String::new(), |mut text, byte| {
        let _ = write!(text, "{byte:02x}");
        text
    }))
}
