//! A real, local Kubernetes control plane for tests and the demo.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::config::{AuthInfo, KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use tempfile::TempDir;

use crate::HarnessError;
use crate::pki::{self, Authority};
use crate::process::ProcessGroup;

/// How long the apiserver may take to report ready.
const READY_DEADLINE: Duration = Duration::from_secs(120);

/// How long a new namespace may take to get its `default` ServiceAccount.
const NAMESPACE_DEADLINE: Duration = Duration::from_secs(60);

/// The controllers the harness runs: enough for service accounts and their
/// tokens, namespace deletion, owner-reference garbage collection, and
/// Deployments creating ReplicaSets creating Pods, Jobs, and the aggregated
/// ClusterRoles (`view`, `edit`, `admin`) filled in as in a real cluster.
const CONTROLLERS: &str = "serviceaccount-controller,serviceaccount-token-controller,\
namespace-controller,garbage-collector-controller,replicaset-controller,\
deployment-controller,root-ca-certificate-publisher-controller,\
clusterrole-aggregation-controller,job-controller,endpoints-controller,\
endpointslice-controller";

/// The username of the harness's admin (group `system:masters`).
pub const ADMIN_USER: &str = "ferry-e2e-admin";

/// The common name of the apiserver's front-proxy client certificate, the
/// one name aggregated API servers accept caller headers from.
pub const FRONT_PROXY_CLIENT: &str = "front-proxy-client";

/// The service-account token issuer of harness clusters.
pub const SERVICE_ACCOUNT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// A running control plane: etcd, kube-apiserver and kube-controller-manager
/// on 127.0.0.1, with RBAC, a client-certificate admin and service-account
/// token issuance. Every process is stopped when the cluster is dropped, and
/// also when the process holding it dies (see the `process` module).
pub struct Cluster {
    // Declared first so it drops first: processes stop before `dir` goes.
    processes: Mutex<ProcessGroup>,
    authority: Authority,
    config: Config,
    server: String,
    kubeconfig: PathBuf,
    bin_dir: PathBuf,
    issued: AtomicU32,
    dir: TempDir,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("server", &self.server)
            .field("kubeconfig", &self.kubeconfig)
            .finish_non_exhaustive()
    }
}

/// The directory holding the control-plane binaries, building them first
/// if needed (`e2e/controlplane/build.sh`, a no-op when up to date).
/// `FERRY_CONTROLPLANE_BIN` overrides it.
pub fn controlplane_bin_dir() -> Result<PathBuf, HarnessError> {
    static BIN_DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN_DIR
        .get_or_init(|| {
            crate::build_script_bin_dir("controlplane/build.sh", "FERRY_CONTROLPLANE_BIN")
        })
        .clone()
        .map_err(HarnessError::Build)
}

impl Cluster {
    /// Starts a new control plane and waits until the apiserver is ready.
    pub async fn start() -> Result<Self, HarnessError> {
        let bin_dir = controlplane_bin_dir()?;
        // Free ports are found by binding port 0 and letting go; another
        // process can take one in between, so a bind clash is retried.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::start_once(&bin_dir).await {
                Err(HarnessError::Exited { log_tail, .. })
                    if attempt < 3 && log_tail.contains("address already in use") =>
                {
                    tracing::warn!(
                        attempt,
                        "a control-plane port was taken; retrying with new ports"
                    );
                }
                other => return other,
            }
        }
    }

    /// The cluster shared by every test of one test binary, started on first
    /// use. Give each test its own namespace ([`Cluster::create_namespace`]).
    pub async fn shared() -> Result<&'static Self, HarnessError> {
        static SHARED: tokio::sync::OnceCell<Cluster> = tokio::sync::OnceCell::const_new();
        SHARED.get_or_try_init(Self::start).await
    }

    async fn start_once(bin_dir: &Path) -> Result<Self, HarnessError> {
        let dir = tempfile::Builder::new()
            .prefix("ferry-e2e-")
            .tempdir()
            .map_err(|source| HarnessError::Io {
                what: "creating a temporary directory".into(),
                source,
            })?;
        let pki_dir = mkdir(dir.path(), "pki")?;
        let log_dir = mkdir(dir.path(), "logs")?;
        let mut processes = ProcessGroup::new(&log_dir, dir.path())?;

        let authority = Authority::generate("ferry-e2e-ca")?;
        let ca = pki_dir.join("ca.crt");
        pki::write_file(&ca, authority.cert_pem().as_bytes())?;
        let serving = authority.serving_cert(
            &[
                "127.0.0.1",
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
                // The `kubernetes` Service's ClusterIP, which pods of the
                // node with a pod network reach the apiserver at.
                "10.96.0.1",
            ],
            &pki_dir,
            "apiserver",
        )?;
        let admin = authority.client_cert(ADMIN_USER, Some("system:masters"), &pki_dir, "admin")?;
        let controller_manager = authority.client_cert(
            "system:kube-controller-manager",
            None,
            &pki_dir,
            "controller-manager",
        )?;
        let sa_key = pki::service_account_key(&pki_dir)?;
        // API aggregation (the broker's live-lease API): the apiserver
        // calls aggregated servers with a client certificate of its own
        // CA, and they believe the caller headers only from it.
        let front_proxy = Authority::generate("ferry-e2e-front-proxy-ca")?;
        let front_proxy_ca = pki_dir.join("front-proxy-ca.crt");
        pki::write_file(&front_proxy_ca, front_proxy.cert_pem().as_bytes())?;
        let proxy_client =
            front_proxy.client_cert(FRONT_PROXY_CLIENT, None, &pki_dir, "front-proxy-client")?;
        // How the apiserver reaches a real node's kubelet (logs, exec).
        let kubelet_client = authority.client_cert(
            "kube-apiserver-kubelet-client",
            Some("system:masters"),
            &pki_dir,
            "kubelet-client",
        )?;

        let [etcd_client, etcd_peer, apiserver_port] = free_ports()?;
        let etcd_url = format!("http://127.0.0.1:{etcd_client}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer}");
        let mut etcd = Command::new(bin_dir.join("etcd"));
        etcd.arg("--name=ferry-e2e")
            .arg(format!("--data-dir={}", dir.path().join("etcd").display()))
            .arg(format!("--listen-client-urls={etcd_url}"))
            .arg(format!("--advertise-client-urls={etcd_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=ferry-e2e={peer_url}"))
            // Test data is thrown away; fsync only slows a shared machine.
            .arg("--unsafe-no-fsync")
            .arg("--log-level=warn");
        processes.spawn("etcd", etcd)?;

        let server = format!("https://127.0.0.1:{apiserver_port}");
        let mut apiserver = Command::new(bin_dir.join("kube-apiserver"));
        apiserver
            .arg(format!("--etcd-servers={etcd_url}"))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={apiserver_port}"))
            .arg(format!("--tls-cert-file={}", serving.cert.display()))
            .arg(format!("--tls-private-key-file={}", serving.key.display()))
            .arg(format!("--client-ca-file={}", ca.display()))
            // Node and NodeRestriction: a real node's kubelet gets only
            // what its own pods need.
            .arg("--authorization-mode=Node,RBAC")
            .arg("--enable-admission-plugins=NodeRestriction")
            .arg(format!(
                "--kubelet-client-certificate={}",
                kubelet_client.cert.display()
            ))
            .arg(format!(
                "--kubelet-client-key={}",
                kubelet_client.key.display()
            ))
            // A real node's kubelet listens on 127.0.0.1 only, and is
            // named `localhost` (the kubelet refuses a loopback node IP).
            .arg("--kubelet-preferred-address-types=Hostname,InternalIP")
            .arg(format!("--service-account-issuer={SERVICE_ACCOUNT_ISSUER}"))
            .arg(format!(
                "--service-account-key-file={}",
                sa_key.cert.display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                sa_key.key.display()
            ))
            .arg("--service-cluster-ip-range=10.96.0.0/24")
            // There is no network behind 127.0.0.1 for the `kubernetes`
            // Service; loopback endpoints would be rejected anyway.
            .arg("--endpoint-reconciler-type=none")
            // Webhooks behind a Service are called at their endpoints' pod
            // IPs: the host has no kube-proxy for ClusterIPs.
            .arg("--enable-aggregator-routing=true")
            .arg(format!(
                "--requestheader-client-ca-file={}",
                front_proxy_ca.display()
            ))
            .arg(format!(
                "--requestheader-allowed-names={FRONT_PROXY_CLIENT}"
            ))
            .arg("--requestheader-username-headers=X-Remote-User")
            .arg("--requestheader-group-headers=X-Remote-Group")
            .arg("--requestheader-extra-headers-prefix=X-Remote-Extra-")
            .arg(format!(
                "--proxy-client-cert-file={}",
                proxy_client.cert.display()
            ))
            .arg(format!(
                "--proxy-client-key-file={}",
                proxy_client.key.display()
            ))
            .arg(format!("--cert-dir={}", pki_dir.display()))
            .arg("--profiling=false");
        processes.spawn("kube-apiserver", apiserver)?;

        let kubeconfig = dir.path().join("kubeconfig");
        write_kubeconfig(&kubeconfig, &server, &ca, &admin)?;
        let cm_kubeconfig = pki_dir.join("controller-manager.kubeconfig");
        write_kubeconfig(&cm_kubeconfig, &server, &ca, &controller_manager)?;

        let config = Config::from_custom_kubeconfig(
            Kubeconfig::read_from(&kubeconfig)
                .map_err(|e| HarnessError::Kubeconfig(e.to_string()))?,
            &KubeConfigOptions::default(),
        )
        .await
        .map_err(|e| HarnessError::Kubeconfig(e.to_string()))?;

        wait_ready(&mut processes, &config).await?;

        let mut cm = Command::new(bin_dir.join("kube-controller-manager"));
        cm.arg(format!("--kubeconfig={}", cm_kubeconfig.display()))
            .arg("--leader-elect=false")
            .arg(format!("--controllers={CONTROLLERS}"))
            .arg("--use-service-account-credentials=true")
            .arg(format!(
                "--service-account-private-key-file={}",
                sa_key.key.display()
            ))
            .arg(format!("--root-ca-file={}", ca.display()))
            .arg("--secure-port=0")
            .arg("--profiling=false");
        processes.spawn("kube-controller-manager", cm)?;

        Ok(Self {
            processes: Mutex::new(processes),
            authority,
            config,
            server,
            kubeconfig,
            bin_dir: bin_dir.to_path_buf(),
            issued: AtomicU32::new(0),
            dir,
        })
    }

    /// A new client with cluster-admin rights (group `system:masters`).
    ///
    /// Clients are cheap; make one per test (a client belongs to the tokio
    /// runtime it was made in, and each `#[tokio::test]` has its own).
    pub fn client(&self) -> Result<Client, HarnessError> {
        Ok(Client::try_from(self.config.clone())?)
    }

    /// The admin client configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// A client authenticated by a new client certificate for `user` (and
    /// `group`), with only the rights RBAC gives that identity.
    pub fn user_client(&self, user: &str, group: Option<&str>) -> Result<Client, HarnessError> {
        let n = self.issued.fetch_add(1, Ordering::Relaxed);
        let files = self.authority.client_cert(
            user,
            group,
            &self.dir.path().join("pki"),
            &format!("user-{n}"),
        )?;
        let mut config = self.config.clone();
        config.auth_info = AuthInfo {
            client_certificate: Some(files.cert.display().to_string()),
            client_key: Some(files.key.display().to_string()),
            ..AuthInfo::default()
        };
        Ok(Client::try_from(config)?)
    }

    /// A kubeconfig file for a new client certificate of `user` (and
    /// `group`), for command-line tools run as that identity (`kubectl
    /// ferry --kubeconfig ...`).
    pub fn user_kubeconfig(
        &self,
        user: &str,
        group: Option<&str>,
    ) -> Result<PathBuf, HarnessError> {
        let n = self.issued.fetch_add(1, Ordering::Relaxed);
        let pki_dir = self.dir.path().join("pki");
        let files = self
            .authority
            .client_cert(user, group, &pki_dir, &format!("user-{n}"))?;
        let path = self.dir.path().join(format!("kubeconfig-user-{n}"));
        write_kubeconfig(&path, &self.server, &pki_dir.join("ca.crt"), &files)?;
        Ok(path)
    }

    /// An admin client that impersonates `user` in `groups`, so requests are
    /// authorized exactly as that identity's (for example
    /// `system:serviceaccount:ns:name` with `system:serviceaccounts`).
    pub fn impersonating_client(
        &self,
        user: &str,
        groups: &[&str],
    ) -> Result<Client, HarnessError> {
        let mut config = self.config.clone();
        config.auth_info.impersonate = Some(user.to_string());
        config.auth_info.impersonate_groups = Some(groups.iter().map(|g| g.to_string()).collect());
        Ok(Client::try_from(config)?)
    }

    /// Creates a namespace with a unique name starting with `prefix` and
    /// waits until the controller-manager has given it its `default`
    /// ServiceAccount (pods cannot be created before that).
    pub async fn create_namespace(&self, prefix: &str) -> Result<String, HarnessError> {
        let client = self.client()?;
        let n = self.issued.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}-{}-{n}", std::process::id());
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        namespaces
            .create(&PostParams::default(), &namespace)
            .await?;
        let accounts: Api<ServiceAccount> = Api::namespaced(client, &name);
        let deadline = Instant::now() + NAMESPACE_DEADLINE;
        while accounts.get_opt("default").await?.is_none() {
            if Instant::now() > deadline {
                return Err(HarnessError::Process(format!(
                    "namespace {name} got no default ServiceAccount in {}s; is kube-controller-manager running? log: {}",
                    NAMESPACE_DEADLINE.as_secs(),
                    self.log_path("kube-controller-manager").display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(name)
    }

    /// The apiserver's URL (`https://127.0.0.1:PORT`).
    pub fn server(&self) -> &str {
        &self.server
    }

    /// A kubeconfig file for the admin identity, for kubectl and helm.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The cluster CA certificate (PEM): it signs the apiserver's serving
    /// certificate and every client certificate, and can sign webhook
    /// serving certificates for tests.
    pub fn ca_pem(&self) -> String {
        self.authority.cert_pem()
    }

    /// The cluster's certificate authority.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The cluster's private directory (removed when the cluster stops).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The path of a control-plane binary (`kubectl`, `helm`, ...).
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    /// A `kubectl` command (the one built with the control plane) pointed
    /// at this cluster.
    pub fn kubectl(&self) -> Command {
        let mut command = Command::new(self.bin("kubectl"));
        command.env("KUBECONFIG", &self.kubeconfig);
        command
    }

    /// The log file of a component (`etcd`, `kube-apiserver`,
    /// `kube-controller-manager`).
    pub fn log_path(&self, component: &str) -> PathBuf {
        self.dir
            .path()
            .join("logs")
            .join(format!("{component}.log"))
    }

    /// The id of the process group every control-plane process runs in
    /// (gone once the cluster has stopped).
    pub fn process_group(&self) -> i32 {
        self.processes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .id()
    }

    /// The first control-plane component that has exited, if any.
    pub fn exited_component(&self) -> Option<String> {
        let mut processes = self
            .processes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        processes
            .exited()
            .map(|(name, status)| format!("{name} ({status})"))
    }
}

/// Polls `/readyz` until it answers `ok`, failing fast if a process exits.
async fn wait_ready(processes: &mut ProcessGroup, config: &Config) -> Result<(), HarnessError> {
    let client = Client::try_from(config.clone())?;
    let deadline = Instant::now() + READY_DEADLINE;
    let mut last_error;
    loop {
        if let Some((component, status)) = processes.exited() {
            return Err(HarnessError::Exited {
                log_tail: processes.log_tail(&component, 30),
                component,
                status,
            });
        }
        let request = http::Request::get("/readyz")
            .body(Vec::new())
            .map_err(|e| HarnessError::Process(e.to_string()))?;
        match client.request_text(request).await {
            Ok(body) if body.trim() == "ok" => return Ok(()),
            Ok(body) => last_error = body,
            Err(e) => last_error = e.to_string(),
        }
        if Instant::now() > deadline {
            return Err(HarnessError::NotReady {
                seconds: READY_DEADLINE.as_secs(),
                last_error,
                log_tail: processes.log_tail("kube-apiserver", 30),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(crate) fn mkdir(parent: &Path, name: &str) -> Result<PathBuf, HarnessError> {
    let path = parent.join(name);
    std::fs::create_dir_all(&path).map_err(|source| HarnessError::Io {
        what: format!("creating {}", path.display()),
        source,
    })?;
    Ok(path)
}

/// Finds `N` distinct free TCP ports on 127.0.0.1 (held together so they
/// differ, then released for the components to bind).
pub(crate) fn free_ports<const N: usize>() -> Result<[u16; N], HarnessError> {
    let mut listeners = Vec::with_capacity(N);
    let mut ports = [0; N];
    for port in &mut ports {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|source| HarnessError::Io {
            what: "finding a free port".into(),
            source,
        })?;
        *port = listener
            .local_addr()
            .map_err(|source| HarnessError::Io {
                what: "finding a free port".into(),
                source,
            })?
            .port();
        listeners.push(listener);
    }
    Ok(ports)
}

pub(crate) fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca: &Path,
    user: &pki::CertFiles,
) -> Result<(), HarnessError> {
    write_kubeconfig_via(path, server, None, ca, user)
}

/// Like [`write_kubeconfig`], with the name the server's certificate is
/// checked against when `server` is a relay's address.
pub(crate) fn write_kubeconfig_via(
    path: &Path,
    server: &str,
    tls_server_name: Option<&str>,
    ca: &Path,
    user: &pki::CertFiles,
) -> Result<(), HarnessError> {
    let mut cluster = serde_json::json!({"server": server, "certificate-authority": ca});
    if let Some(name) = tls_server_name {
        cluster["tls-server-name"] = serde_json::json!(name);
    }
    let kubeconfig = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "ferry-e2e", "cluster": cluster}],
        "users": [{"name": "ferry-e2e", "user": {"client-certificate": user.cert, "client-key": user.key}}],
        "contexts": [{"name": "ferry-e2e", "context": {"cluster": "ferry-e2e", "user": "ferry-e2e"}}],
        "current-context": "ferry-e2e",
    });
    let yaml =
        serde_yaml::to_string(&kubeconfig).map_err(|e| HarnessError::Kubeconfig(e.to_string()))?;
    pki::write_file(path, yaml.as_bytes())
}
