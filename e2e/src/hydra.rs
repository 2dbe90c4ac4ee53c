//! A real OAuth2 authorization server for tests: ory/hydra, built from its
//! published Go module by `e2e/hydra/build.sh`, one private process per
//! test on free loopback ports. Both its ports serve TLS with a
//! certificate from a fresh [`Authority`] (so a client must trust
//! [`Hydra::ca_pem`], as the broker would trust a real issuer's CA), it
//! keeps its state in memory (SQLite, `DSN=memory`), and it runs without
//! `--dev`, with hydra's production checks on. Its log goes to a file in
//! its private directory ([`Hydra::log`]); it dies with the harness.
//!
//! Hydra's defaults that tests lean on: refresh tokens rotate (each use
//! returns a new one; no grace period), and reusing a spent one is refused
//! and revokes every token issued from it since; access tokens are opaque
//! (introspect them, [`Hydra::introspect`]); the login and consent screens
//! are left to the caller: [`Hydra::authorize_headless`] accepts them
//! through the admin API.
//!
//! Hydra redacts queries, cookies and `Authorization` in its request log,
//! but not the `Location` of its redirects: authorization codes and
//! login/consent challenges appear in [`Hydra::log`]. Tokens, client
//! secrets and `SECRETS_SYSTEM` do not.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::HarnessError;
use crate::https_client::{HttpsClient, HttpsReply, form_body};
use crate::pki::Authority;
use crate::process::ProcessGroup;

/// How long hydra may take to answer `/health/ready` on both ports.
const READY_DEADLINE: Duration = Duration::from_secs(60);

/// Where hydra sends the browser to log in. Nothing listens there and
/// nothing fetches it: [`Hydra::authorize_headless`] takes the challenge
/// out of the redirect.
const LOGIN_URL: &str = "http://127.0.0.1:1/login";

/// Where hydra sends the browser for consent; never fetched either.
const CONSENT_URL: &str = "http://127.0.0.1:1/consent";

/// The subject every headless login accepts.
pub const HEADLESS_SUBJECT: &str = "user";

/// Redirects [`Hydra::authorize_headless`] follows before giving up.
const MAX_REDIRECTS: usize = 10;

/// The name of hydra's process (and log) in its process group.
const PROCESS: &str = "hydra";

/// How a [`Hydra`] is configured.
#[derive(Debug, Clone)]
pub struct HydraOptions {
    /// How long access tokens are valid (hydra's `ttl.access_token`, set
    /// as `TTL_ACCESS_TOKEN`); hydra's default is an hour.
    pub access_token_ttl: Duration,
}

impl Default for HydraOptions {
    fn default() -> Self {
        Self {
            access_token_ttl: Duration::from_secs(3600),
        }
    }
}

/// An OAuth2 client to register with [`Hydra::create_client`]: the fields
/// of hydra's `POST /admin/clients` body that ferry's tests use. Empty
/// fields are left out, so hydra's defaults apply (response type `code`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ClientSpec {
    /// The client's id.
    pub client_id: String,
    /// The client's secret; hydra generates one when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    /// The grants it may use (`client_credentials`, `authorization_code`,
    /// `refresh_token`); hydra's default is `authorization_code`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub grant_types: Vec<String>,
    /// The scopes it may ask for, space-separated (`offline_access` is
    /// needed for a refresh token).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub scope: String,
    /// The audiences it may ask for.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub audience: Vec<String>,
    /// How it authenticates at the token endpoint: `client_secret_basic`
    /// (hydra's default), `client_secret_post`, `private_key_jwt` or
    /// `none`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_endpoint_auth_method: Option<String>,
    /// Where the authorization endpoint may send its codes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub redirect_uris: Vec<String>,
    /// The algorithm its `private_key_jwt` assertions are signed with
    /// (hydra assumes `RS256`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_endpoint_auth_signing_alg: Option<String>,
    /// Its public keys (a JWK Set), for `private_key_jwt`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks: Option<Value>,
}

/// A running hydra.
pub struct Hydra {
    // Declared first so it drops first: the process stops before `dir` goes.
    processes: ProcessGroup,
    authority: Authority,
    public: SocketAddr,
    admin: SocketAddr,
    paused: AtomicBool,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for Hydra {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hydra")
            .field("public", &self.public)
            .field("admin", &self.admin)
            .finish_non_exhaustive()
    }
}

/// The directory holding the `hydra` binary, building it first if needed
/// (`e2e/hydra/build.sh`, a no-op when up to date). `FERRY_HYDRA_BIN`
/// overrides it.
pub fn hydra_bin_dir() -> Result<PathBuf, HarnessError> {
    static BIN_DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN_DIR
        .get_or_init(|| crate::build_script_bin_dir("hydra/build.sh", "FERRY_HYDRA_BIN"))
        .clone()
        .map_err(HarnessError::Build)
}

/// The value of an `Authorization` header for OAuth2's
/// `client_secret_basic`: id and secret form-encoded before base64
/// (RFC 6749 §2.3.1), which plain HTTP Basic does not do.
pub fn client_secret_basic(client_id: &str, client_secret: &str) -> String {
    use base64::Engine as _;
    let encode = |text: &str| form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>();
    let credentials = format!("{}:{}", encode(client_id), encode(client_secret));
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(credentials)
    )
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HarnessError {
    let what = what.into();
    move |source| HarnessError::Io { what, source }
}

impl Hydra {
    /// Starts a new hydra and waits until both its ports are ready.
    pub async fn start(options: HydraOptions) -> Result<Self, HarnessError> {
        let bin = hydra_bin_dir()?.join("hydra");
        // Free ports are found by binding port 0 and letting go; another
        // process can take one in between, so a bind clash is retried.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::start_once(&bin, &options).await {
                Err(HarnessError::Exited { log_tail, .. })
                    if attempt < 3 && log_tail.contains("address already in use") =>
                {
                    tracing::warn!(
                        attempt,
                        "a port of hydra's was taken; retrying with new ports"
                    );
                }
                other => return other,
            }
        }
    }

    async fn start_once(bin: &Path, options: &HydraOptions) -> Result<Self, HarnessError> {
        let dir = tempfile::Builder::new()
            .prefix("ferry-hydra-")
            .tempdir()
            .map_err(io("creating a temporary directory"))?;
        let authority = Authority::generate("ferry-e2e hydra CA")?;
        let tls = authority.serving_cert(&["127.0.0.1"], dir.path(), "hydra")?;
        let log_dir = dir.path().join("logs");
        std::fs::create_dir(&log_dir).map_err(io("creating the log directory"))?;
        let mut processes = ProcessGroup::new(&log_dir, dir.path())?;
        let (public, admin) = (crate::free_port()?, crate::free_port()?);
        let ttl = format!("{}ms", options.access_token_ttl.as_millis());
        let mut server = Command::new(bin);
        // Only what is set here: a developer's SECRETS_*, DSN or LOG_* must
        // not reconfigure the tests' server.
        server
            .env_clear()
            .args(["serve", "all"])
            .env("DSN", "memory")
            .env("SECRETS_SYSTEM", crate::postgres::random_password()?)
            .env("URLS_SELF_ISSUER", format!("https://{public}"))
            .env("URLS_LOGIN", LOGIN_URL)
            .env("URLS_CONSENT", CONSENT_URL)
            .env("TTL_ACCESS_TOKEN", ttl);
        for (port, addr) in [("PUBLIC", public), ("ADMIN", admin)] {
            server
                .env(format!("SERVE_{port}_HOST"), addr.ip().to_string())
                .env(format!("SERVE_{port}_PORT"), addr.port().to_string())
                .env(format!("SERVE_{port}_TLS_ENABLED"), "true")
                .env(format!("SERVE_{port}_TLS_CERT_PATH"), &tls.cert)
                .env(format!("SERVE_{port}_TLS_KEY_PATH"), &tls.key)
                // The readiness polls would be most of the log.
                .env(
                    format!("SERVE_{port}_REQUEST_LOG_DISABLE_FOR_HEALTH"),
                    "true",
                );
        }
        processes.spawn(PROCESS, server)?;
        let hydra = Self {
            processes,
            authority,
            public,
            admin,
            paused: AtomicBool::new(false),
            dir,
        };
        hydra.wait_ready().await
    }

    async fn wait_ready(mut self) -> Result<Self, HarnessError> {
        let (public, admin) = (self.public_client()?, self.admin_client()?);
        let ready = |client: HttpsClient| async move {
            client
                .request("GET", "/health/ready", None, b"")
                .await
                .is_ok_and(|reply| reply.status == 200)
        };
        self.processes
            .wait_ready(PROCESS, READY_DEADLINE, || async {
                ready(public.clone()).await && ready(admin.clone()).await
            })
            .await?;
        Ok(self)
    }

    /// The issuer of hydra's tokens, also the origin of its public port:
    /// `https://127.0.0.1:<port>`, no trailing slash.
    pub fn issuer(&self) -> String {
        format!("https://{}", self.public)
    }

    /// The address of the public port (TLS).
    pub fn public_addr(&self) -> SocketAddr {
        self.public
    }

    /// The token endpoint.
    pub fn token_url(&self) -> String {
        format!("{}/oauth2/token", self.issuer())
    }

    /// The RFC 7009 revocation endpoint.
    pub fn revocation_url(&self) -> String {
        format!("{}/oauth2/revoke", self.issuer())
    }

    /// The authorization endpoint.
    pub fn authorization_url(&self) -> String {
        format!("{}/oauth2/auth", self.issuer())
    }

    /// The RFC 7662 introspection endpoint, on the admin port (hydra has
    /// none on the public one); it asks for no client authentication.
    pub fn introspection_url(&self) -> String {
        format!("https://{}/admin/oauth2/introspect", self.admin)
    }

    /// The CA (PEM) that signed both ports' certificate.
    pub fn ca_pem(&self) -> String {
        self.authority.cert_pem()
    }

    /// A client for the public port, trusting [`Self::ca_pem`].
    pub fn public_client(&self) -> Result<HttpsClient, HarnessError> {
        HttpsClient::new(self.public, &self.ca_pem())
    }

    fn admin_client(&self) -> Result<HttpsClient, HarnessError> {
        HttpsClient::new(self.admin, &self.ca_pem())
    }

    /// Registers an OAuth2 client and returns it as hydra stored it (with
    /// the generated secret, if the spec had none).
    pub async fn create_client(&self, spec: &ClientSpec) -> Result<Value, HarnessError> {
        let body = serde_json::to_vec(spec).map_err(|e| {
            HarnessError::Process(format!("encoding client {}: {e}", spec.client_id))
        })?;
        let reply = self
            .admin_client()?
            .request("POST", "/admin/clients", None, &body)
            .await?;
        expect_status(&reply, 201, &format!("creating client {}", spec.client_id))?;
        reply.json()
    }

    /// What hydra's introspection endpoint says of `token` (`active`,
    /// `scope`, `client_id`, `exp`, ...).
    pub async fn introspect(&self, token: &str) -> Result<Value, HarnessError> {
        let reply = self
            .admin_client()?
            .request_with_headers(
                "POST",
                "/admin/oauth2/introspect",
                &[("content-type", "application/x-www-form-urlencoded")],
                form_body(&[("token", token)]).as_bytes(),
            )
            .await?;
        expect_status(&reply, 200, "introspecting a token")?;
        reply.json()
    }

    /// Runs the authorization-code flow for `authorization_request` (the
    /// authorization endpoint with its query: client_id, redirect_uri,
    /// scope, state, PKCE challenge) as a browser would, with a user who
    /// logs in as [`HEADLESS_SUBJECT`] and consents to every scope and
    /// audience asked for; returns the URL hydra finally redirects to: the
    /// client's redirect URI with `code` and `state` (or `error`).
    pub async fn authorize_headless(
        &self,
        authorization_request: &str,
    ) -> Result<String, HarnessError> {
        let public = self.public_client()?;
        let mut cookies = CookieJar::default();
        let mut next = authorization_request.to_owned();
        for _ in 0..MAX_REDIRECTS {
            let location = if let Some(query) = next.strip_prefix(&format!("{LOGIN_URL}?")) {
                let challenge = query_value(query, "login_challenge")?;
                self.accept("login", &challenge, json!({ "subject": HEADLESS_SUBJECT }))
                    .await?
            } else if let Some(query) = next.strip_prefix(&format!("{CONSENT_URL}?")) {
                let challenge = query_value(query, "consent_challenge")?;
                let asked = self.consent_request(&challenge).await?;
                let grant = json!({
                    "grant_scope": asked.get("requested_scope").cloned().unwrap_or(json!([])),
                    "grant_access_token_audience": asked
                        .get("requested_access_token_audience")
                        .cloned()
                        .unwrap_or(json!([])),
                });
                self.accept("consent", &challenge, grant).await?
            } else if let Some(path) = next.strip_prefix(&self.issuer()) {
                let cookie = cookies.header();
                let headers: &[(&str, &str)] = if cookie.is_empty() {
                    &[]
                } else {
                    &[("cookie", &cookie)]
                };
                let reply = public
                    .request_with_headers("GET", path, headers, b"")
                    .await?;
                cookies.store(&reply);
                reply.header("location").map(str::to_owned).ok_or_else(|| {
                    HarnessError::Process(format!(
                        "hydra answered {} to GET {} without a redirect: {}",
                        reply.status,
                        path.split('?').next().unwrap_or(path),
                        String::from_utf8_lossy(&reply.body)
                    ))
                })?
            } else {
                // Neither hydra nor its login or consent: the client's.
                return Ok(next);
            };
            next = location;
        }
        Err(HarnessError::Process(format!(
            "the authorization flow took more than {MAX_REDIRECTS} redirects"
        )))
    }

    /// Accepts the login or consent (`flow`) request `challenge` with
    /// `body`; returns where hydra sends the browser next.
    async fn accept(
        &self,
        flow: &str,
        challenge: &str,
        body: Value,
    ) -> Result<String, HarnessError> {
        let path = format!(
            "/admin/oauth2/auth/requests/{flow}/accept?{}",
            form_body(&[(&format!("{flow}_challenge"), challenge)])
        );
        let reply = self
            .admin_client()?
            .request("PUT", &path, None, body.to_string().as_bytes())
            .await?;
        expect_status(&reply, 200, &format!("accepting the {flow} request"))?;
        reply
            .json()?
            .get("redirect_to")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| {
                HarnessError::Process(format!("accepting the {flow} request: no redirect_to"))
            })
    }

    /// The consent request `challenge`: what the client asked for.
    async fn consent_request(&self, challenge: &str) -> Result<Value, HarnessError> {
        let path = format!(
            "/admin/oauth2/auth/requests/consent?{}",
            form_body(&[("consent_challenge", challenge)])
        );
        let reply = self
            .admin_client()?
            .request("GET", &path, None, b"")
            .await?;
        expect_status(&reply, 200, "reading the consent request")?;
        reply.json()
    }

    /// Makes hydra unavailable the way a hung server is: SIGSTOP, so
    /// connections to either port are still accepted (by the kernel) but
    /// never answered. The admin port stops too.
    pub fn pause(&self) -> Result<(), HarnessError> {
        self.processes.signal(PROCESS, Signal::SIGSTOP)?;
        self.paused.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Undoes [`Self::pause`]: requests waiting on hydra are answered.
    pub fn resume(&self) -> Result<(), HarnessError> {
        self.processes.signal(PROCESS, Signal::SIGCONT)?;
        self.paused.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Everything hydra logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.processes.log_path(PROCESS)).unwrap_or_default()
    }

    /// The process group hydra runs in.
    pub fn process_group(&self) -> i32 {
        self.processes.id()
    }

    /// hydra's private directory (its certificate and log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Hydra {
    fn drop(&mut self) {
        // A stopped process would sit out SIGTERM's whole grace period.
        if self.paused.load(Ordering::SeqCst) {
            let _ = self.processes.signal(PROCESS, Signal::SIGCONT);
        }
    }
}

fn expect_status(reply: &HttpsReply, status: u16, what: &str) -> Result<(), HarnessError> {
    if reply.status == status {
        return Ok(());
    }
    Err(HarnessError::Process(format!(
        "{what}: hydra answered {}: {}",
        reply.status,
        String::from_utf8_lossy(&reply.body)
    )))
}

/// The value of `name` in the URL query `query`.
fn query_value(query: &str, name: &str) -> Result<String, HarnessError> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
        .ok_or_else(|| HarnessError::Process(format!("hydra's redirect has no {name}")))
}

/// The cookies of one browser session with one host: hydra's CSRF cookies
/// tie the steps of a login and consent together. Attributes are ignored:
/// every request goes to the same origin.
#[derive(Default)]
struct CookieJar(Vec<(String, String)>);

impl CookieJar {
    fn store(&mut self, reply: &HttpsReply) {
        let set = reply
            .headers
            .iter()
            .filter(|(name, _)| name == "set-cookie")
            .filter_map(|(_, value)| value.split(';').next()?.split_once('='));
        for (name, value) in set {
            let (name, value) = (name.trim(), value.trim());
            self.0.retain(|(kept, _)| kept != name);
            self.0.push((name.to_owned(), value.to_owned()));
        }
    }

    fn header(&self) -> String {
        self.0
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}
