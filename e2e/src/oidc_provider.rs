//! A real OAuth2 authorization server with RFC 8693 token exchange for
//! tests: node-oidc-provider, installed from npm by
//! `e2e/oidc-provider/install.sh`, one private process per test on a free
//! loopback port. Hydra has no token exchange; this server's configuration
//! and its token-exchange grant are `e2e/oidc-provider/server.mjs`, and
//! everything else (client authentication, token issuance, introspection,
//! revocation) is oidc-provider's own. It serves TLS with a certificate from
//! a fresh [`Authority`] (so a client must trust [`OidcProvider::ca_pem`]),
//! keeps its state in memory, and logs to a file in its private directory
//! ([`OidcProvider::log`]); it dies with the harness.
//!
//! What tests lean on:
//! - Clients are oidc-provider client metadata (`client_id`,
//!   `client_secret` or `jwks`, `grant_types`, `scope`,
//!   `token_endpoint_auth_method`); a client has only the grants it lists.
//!   Authentication is `client_secret_basic`, `client_secret_post` or
//!   `private_key_jwt` (its assertion's `aud` the issuer or the token URL).
//! - Access tokens are opaque: introspect them ([`OidcProvider::introspect`],
//!   as a client registered for that alone). One from the token exchange
//!   has the subject token's `sub`, the asked `scope` and `audience` (`aud`,
//!   a list when more than one); one from client_credentials has no `sub`,
//!   and an `aud` only from RFC 8707's `resource`.
//! - A scope the client is not registered for is refused (`invalid_scope`),
//!   with one oidc-provider quirk: client_credentials drops scopes that no
//!   client has instead of refusing them.
//! - A token may be revoked only by the client it was issued to.
//!
//! The server logs one line per request (method, path, status, OAuth error
//! code): never a query, a body, a token or a secret.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{Value, json};

use crate::HarnessError;
use crate::https_client::{HttpsClient, HttpsReply, form_body};
use crate::pki::Authority;
use crate::process::ProcessGroup;

/// How long oidc-provider may take to serve its discovery document.
const READY_DEADLINE: Duration = Duration::from_secs(30);

/// The name of the server's process (and log) in its process group.
const PROCESS: &str = "oidc-provider";

/// The client [`OidcProvider::introspect`] authenticates as; registered
/// with every server, for no grant.
pub const INTROSPECTION_CLIENT_ID: &str = "ferry-e2e-introspector";

/// RFC 8693's grant type, for a client's `grant_types` and a request's
/// `grant_type`.
pub const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

/// The `subject_token_type` of a JWT, the one subject token the server
/// takes.
pub const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

/// The `issued_token_type` (and the one `requested_token_type`) of the
/// token exchange: an access token.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// How an [`OidcProvider`] is configured.
#[derive(Debug, Clone)]
pub struct OidcProviderOptions {
    /// How long access tokens are valid, from either grant (whole seconds,
    /// at least one).
    pub access_token_ttl: Duration,
    /// The clients, as oidc-provider client metadata; their `client_id`s
    /// must differ from each other and from [`INTROSPECTION_CLIENT_ID`].
    pub clients: Vec<Value>,
    /// Whose subject tokens the token exchange takes; `None` leaves the
    /// grant out.
    pub token_exchange: Option<TokenExchangeTrust>,
}

impl Default for OidcProviderOptions {
    fn default() -> Self {
        Self {
            access_token_ttl: Duration::from_secs(3600),
            clients: Vec::new(),
            token_exchange: None,
        }
    }
}

/// The subject tokens the token exchange accepts: JWTs signed (ES256 or
/// EdDSA) by a key in `subject_jwks`, from `subject_issuer`, for
/// `subject_audience`, unexpired and naming a `sub`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TokenExchangeTrust {
    /// The subject token's required `iss`.
    pub subject_issuer: String,
    /// A value the subject token's `aud` must hold.
    pub subject_audience: String,
    /// The public keys its signature is checked with (a JWK Set).
    pub subject_jwks: Value,
}

/// A running oidc-provider.
pub struct OidcProvider {
    // Declared first so it drops first: the process stops before `dir` goes.
    processes: ProcessGroup,
    authority: Authority,
    addr: SocketAddr,
    introspection_secret: String,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for OidcProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcProvider")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// The directory holding `server.mjs` and its `node_modules`, installing
/// them first if needed (`e2e/oidc-provider/install.sh`, a no-op when up to
/// date). `FERRY_OIDC_PROVIDER_DIR` overrides it.
pub fn oidc_provider_dir() -> Result<PathBuf, HarnessError> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| {
        crate::build_script_bin_dir("oidc-provider/install.sh", "FERRY_OIDC_PROVIDER_DIR")
    })
    .clone()
    .map_err(HarnessError::Build)
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HarnessError {
    let what = what.into();
    move |source| HarnessError::Io { what, source }
}

impl OidcProvider {
    /// Starts a new oidc-provider and waits until it serves.
    pub async fn start(options: OidcProviderOptions) -> Result<Self, HarnessError> {
        let install = oidc_provider_dir()?;
        // Free ports are found by binding port 0 and letting go; another
        // process can take one in between, so a bind clash is retried.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::start_once(&install, &options).await {
                Err(HarnessError::Exited { log_tail, .. })
                    if attempt < 3 && log_tail.contains("EADDRINUSE") =>
                {
                    tracing::warn!(
                        attempt,
                        "oidc-provider's port was taken; retrying with a new one"
                    );
                }
                other => return other,
            }
        }
    }

    async fn start_once(
        install: &Path,
        options: &OidcProviderOptions,
    ) -> Result<Self, HarnessError> {
        let dir = tempfile::Builder::new()
            .prefix("ferry-oidc-provider-")
            .tempdir()
            .map_err(io("creating a temporary directory"))?;
        let authority = Authority::generate("ferry-e2e oidc-provider CA")?;
        let tls = authority.serving_cert(&["127.0.0.1"], dir.path(), "oidc-provider")?;
        let log_dir = dir.path().join("logs");
        std::fs::create_dir(&log_dir).map_err(io("creating the log directory"))?;
        let mut processes = ProcessGroup::new(&log_dir, dir.path())?;
        let addr = crate::free_port()?;
        let introspection_secret = crate::postgres::random_password()?;

        let mut clients = options.clients.clone();
        clients.push(json!({
            "client_id": INTROSPECTION_CLIENT_ID,
            "client_secret": introspection_secret,
            "token_endpoint_auth_method": "client_secret_basic",
        }));
        let utf8 = |path: &Path| {
            path.to_str()
                .map(str::to_owned)
                .ok_or_else(|| HarnessError::Process(format!("{} is not UTF-8", path.display())))
        };
        let config = json!({
            "issuer": format!("https://{addr}"),
            "port": addr.port(),
            "tls": { "cert_file": utf8(&tls.cert)?, "key_file": utf8(&tls.key)? },
            "access_token_ttl_seconds": options.access_token_ttl.as_secs().max(1),
            "clients": clients,
            "token_exchange": options.token_exchange,
        });
        // Client secrets are in it: the owner alone may read it.
        let config_path = dir.path().join("config.json");
        crate::pki::write_file(&config_path, config.to_string().as_bytes())?;

        let mut server = Command::new("node");
        // Only what is set here: a developer's NODE_OPTIONS or DEBUG must
        // not reconfigure (or make chatty) the tests' server.
        server
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .arg(install.join("server.mjs"))
            .arg(&config_path)
            .current_dir(install);
        processes.spawn(PROCESS, server)?;
        let provider = Self {
            processes,
            authority,
            addr,
            introspection_secret,
            dir,
        };
        provider.wait_ready().await
    }

    async fn wait_ready(mut self) -> Result<Self, HarnessError> {
        let client = self.client()?;
        self.processes
            .wait_ready(PROCESS, READY_DEADLINE, || async {
                client
                    .request("GET", "/.well-known/openid-configuration", None, b"")
                    .await
                    .is_ok_and(|reply| reply.status == 200)
            })
            .await?;
        Ok(self)
    }

    /// The issuer, also the server's origin: `https://127.0.0.1:<port>`,
    /// no trailing slash.
    pub fn issuer(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The server's address (TLS).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The token endpoint (both grants).
    pub fn token_url(&self) -> String {
        format!("{}/token", self.issuer())
    }

    /// The RFC 7009 revocation endpoint; it authenticates the client.
    pub fn revocation_url(&self) -> String {
        format!("{}/token/revocation", self.issuer())
    }

    /// The RFC 7662 introspection endpoint; it authenticates the client.
    pub fn introspection_url(&self) -> String {
        format!("{}/token/introspection", self.issuer())
    }

    /// The CA (PEM) that signed the server's certificate.
    pub fn ca_pem(&self) -> String {
        self.authority.cert_pem()
    }

    /// A client for the server, trusting [`Self::ca_pem`].
    pub fn client(&self) -> Result<HttpsClient, HarnessError> {
        HttpsClient::new(self.addr, &self.ca_pem())
    }

    /// POSTs the form `pairs` to `url`, one of the server's endpoints, with
    /// `headers` (such as `authorization`), and returns the reply whatever
    /// its status.
    pub async fn post_form(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        pairs: &[(&str, &str)],
    ) -> Result<HttpsReply, HarnessError> {
        let issuer = self.issuer();
        let path = url.strip_prefix(&issuer).ok_or_else(|| {
            HarnessError::Process(format!("{url} is not an endpoint of {issuer}"))
        })?;
        // oidc-provider derives its endpoints' URLs (which a private_key_jwt
        // assertion may name as its `aud`) from the Host header.
        let host = self.addr.to_string();
        let mut all = vec![
            ("content-type", "application/x-www-form-urlencoded"),
            ("host", host.as_str()),
        ];
        all.extend_from_slice(headers);
        self.client()?
            .request_with_headers("POST", path, &all, form_body(pairs).as_bytes())
            .await
    }

    /// What the introspection endpoint says of `token` (`active`, `sub`,
    /// `client_id`, `scope`, `aud`, `exp`, ...), asked as
    /// [`INTROSPECTION_CLIENT_ID`].
    pub async fn introspect(&self, token: &str) -> Result<Value, HarnessError> {
        let authorization =
            crate::client_secret_basic(INTROSPECTION_CLIENT_ID, &self.introspection_secret);
        let reply = self
            .post_form(
                &self.introspection_url(),
                &[("authorization", &authorization)],
                &[("token", token)],
            )
            .await?;
        if reply.status != 200 {
            return Err(HarnessError::Process(format!(
                "introspecting a token: oidc-provider answered {}: {}",
                reply.status,
                String::from_utf8_lossy(&reply.body)
            )));
        }
        reply.json()
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.processes.log_path(PROCESS)).unwrap_or_default()
    }

    /// The server's private directory (its certificate, configuration and
    /// log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}
