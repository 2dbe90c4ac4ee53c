//! A real node for the harness: containerd and runc from Debian's packages,
//! a kubelet registered with the cluster's apiserver as a Node, and
//! kube-scheduler, so that pods, Deployments and Jobs are scheduled and
//! really run, from images built here ([`crate::images`]).
//!
//! Two kinds of node. [`RealNode::shared`]'s pods use the host's network
//! (`hostNetwork: true`): traffic stays on this machine's loopback, where
//! the broker, the webhook and the apiserver listen as processes of the
//! harness; pods off the host's network get a loopback interface only.
//! [`RealNode::shared_with_pod_network`] runs in a network namespace of its
//! own with a pod network, kube-proxy and CoreDNS ([`crate::pod_network`]),
//! for ferry's own components running as pods of the Helm chart.
//!
//! Nothing outlives the harness. containerd and the kubelet run in a private
//! PID and mount namespace whose init is a child of `unshare --kill-child`
//! in the node's process group: when the group stops (drop, or the
//! watchdog after the test process died, even by SIGKILL), the kernel kills
//! every process in that namespace, containers and shims included, and
//! every mount made there (the kubelet's root bind mount, the pods' tmpfs
//! volumes, overlay root filesystems) goes with it. The kubelet's cgroups
//! live under a cgroup root of their own, which a janitor (another watchdog
//! on the same kind of lifeline) removes once the namespace is empty.

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, ListParams};

use crate::HarnessError;
use crate::cluster::{Cluster, free_ports, mkdir, write_kubeconfig, write_kubeconfig_via};
use crate::images::{self, ImageSet};
use crate::pod_network::{self, PodNetwork};
use crate::process::ProcessGroup;

/// The real node's name (the kubelet's `--hostname-override`), which is
/// also how the apiserver reaches it: the kubelet serves on 127.0.0.1 only
/// and refuses a loopback node IP, so the apiserver dials the Hostname
/// address.
pub const REAL_NODE_NAME: &str = "localhost";

/// Where Debian's containernetworking-plugins puts the CNI plugins.
const CNI_BIN: &str = "/usr/lib/cni";

/// The kubelet's `--root-dir`, in the node's directory.
const KUBELET_ROOT_DIR: &str = "kubelet";

/// How long containerd may take to answer on its socket.
const CONTAINERD_DEADLINE: Duration = Duration::from_secs(60);

/// How long the kubelet may take to register a Node with the apiserver.
const REGISTER_DEADLINE: Duration = Duration::from_secs(120);

/// How long the namespace's processes may take to die before the janitor
/// removes the cgroups anyway (it kills what is left first).
const JANITOR_WAIT_TENTHS: u32 = 100;

/// Runs as PID 1 of the node's namespace: mounts a private /run/containerd
/// (shim sockets and runc state stay out of the host's) and a private
/// /var/lib (what the kubelet and CNI write there whatever they are told:
/// device-plugin sockets, CNI result caches), then becomes the pause
/// program, which reaps orphans (shims re-parent to it) and does
/// nothing else.
///
/// With a network namespace of its own (`$2` = `net`), it brings up its
/// loopback and lets the namespace route and filter bridged traffic (what
/// kube-proxy's rules for pods on one bridge need).
const NODE_INIT: &str = r#"set -e
mkdir -p /run/containerd
mount -t tmpfs -o mode=0755 ferry-e2e-run /run/containerd
mount -t tmpfs -o mode=0755 ferry-e2e-var-lib /var/lib
if [ "$2" = net ]; then
  ip link set lo up
  echo 1 > /proc/sys/net/ipv4/ip_forward
  if [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]; then
    echo 1 > /proc/sys/net/bridge/bridge-nf-call-iptables
  fi
fi
exec "$1""#;

/// Ignores the terminal's signals and reads its stdin until EOF (the node
/// was dropped, or the harness is gone; a line `init PID` names the node
/// namespace's init), waits for that init to die, then kills whatever is
/// left in the node's cgroups, removes them and the node's directory.
const JANITOR: &str = r#"trap '' INT TERM HUP
init=
while read -r word pid; do [ "$word" = init ] && init=$pid; done
root=$1 dir=$2
i=0
while [ -n "$init" ] && [ -e "/proc/$init" ] && [ "$i" -lt "$3" ]; do sleep 0.1; i=$((i+1)); done
i=0
while [ "$i" -lt 50 ]; do
  left=0
  for c in /sys/fs/cgroup/*/"$root"; do
    [ -d "$c" ] || continue
    find "$c" -name cgroup.procs -exec cat {} + 2>/dev/null | while read -r pid; do kill -9 "$pid" 2>/dev/null; done
    find "$c" -depth -type d -exec rmdir {} + 2>/dev/null
    [ -d "$c" ] && left=1
  done
  [ "$left" = 0 ] && break
  sleep 0.1; i=$((i+1))
done
[ -n "$dir" ] && rm -rf -- "$dir"
exit 0"#;

/// A running node: containerd, the kubelet and kube-scheduler. Stopped, with
/// everything it ran, when dropped.
pub struct RealNode {
    // Declared first so it drops first: processes stop before the janitor.
    processes: Mutex<Option<ProcessGroup>>,
    namespace: Mutex<Child>,
    init_pid: u32,
    janitor: Janitor,
    dir: PathBuf,
    socket: PathBuf,
    cgroup_root: String,
    images: ImageSet,
    apiserver_relay: Option<SocketAddr>,
    // Dropped after the processes: its relays serve them until they stop.
    network: Option<PodNetwork>,
}

impl std::fmt::Debug for RealNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealNode")
            .field("dir", &self.dir)
            .field("cgroup_root", &self.cgroup_root)
            .finish_non_exhaustive()
    }
}

impl RealNode {
    /// The node shared by every test of one test binary, joined to
    /// [`Cluster::shared`], started on first use.
    pub async fn shared() -> Result<&'static Self, HarnessError> {
        static SHARED: tokio::sync::OnceCell<RealNode> = tokio::sync::OnceCell::const_new();
        SHARED
            .get_or_try_init(|| async { Self::start(Cluster::shared().await?).await })
            .await
    }

    /// Like [`Self::shared`], but a node with a pod network: pods get
    /// addresses of their own, Services work by name and ClusterIP, and
    /// the apiserver reaches webhooks in pods. A test binary uses one kind.
    pub async fn shared_with_pod_network() -> Result<&'static Self, HarnessError> {
        static SHARED: tokio::sync::OnceCell<RealNode> = tokio::sync::OnceCell::const_new();
        SHARED
            .get_or_try_init(|| async { Self::start_node(Cluster::shared().await?, true).await })
            .await
    }

    /// Builds the images, starts containerd, imports them, then starts the
    /// kubelet and kube-scheduler against `cluster` and waits until the
    /// Node is registered. Fails, with the tail of the failing component's
    /// log, within a deadline. Its pods use the host's network.
    pub async fn start(cluster: &Cluster) -> Result<Self, HarnessError> {
        Self::start_node(cluster, false).await
    }

    async fn start_node(cluster: &Cluster, pod_network: bool) -> Result<Self, HarnessError> {
        let tools = node_tools()?;
        let bin_dir = crate::controlplane_bin_dir()?;
        let dir = tempfile::Builder::new()
            .prefix("ferry-node-")
            .tempdir()
            .map_err(|source| HarnessError::Io {
                what: "creating the node's directory".into(),
                source,
            })?
            .keep();
        // From here on the janitor owns the directory.
        let cgroup_root = format!("ferry-e2e-{}-{}", std::process::id(), unique());
        let log_dir = mkdir(&dir, "logs")?;
        let mut janitor = Janitor::start(&cgroup_root, &dir)?;
        create_cgroup_root(&cgroup_root)?;

        // Images first: the slowest part, and no process to stop if it fails.
        let images = images::build_node_images(&bin_dir, &dir.join("images")).await?;

        let processes = ProcessGroup::new(&log_dir, &dir)?;
        let (namespace, init_pid) =
            start_namespace(&processes, &bin_dir.join("pause"), &log_dir, pod_network)?;
        janitor.watch(init_pid);
        let mut node = Self {
            processes: Mutex::new(Some(processes)),
            namespace: Mutex::new(namespace),
            init_pid,
            janitor,
            socket: dir.join("containerd.sock"),
            dir,
            cgroup_root,
            images,
            apiserver_relay: None,
            network: None,
        };
        if pod_network {
            node.link_network(cluster).await?;
        }
        node.start_containerd(&tools).await?;
        for archive in node.images.archives() {
            node.import(archive)?;
        }
        node.start_kubelet(cluster, &bin_dir)?;
        if node.network.is_some() {
            node.start_kube_proxy(cluster, &bin_dir)?;
            node.start_coredns(cluster, &bin_dir).await?;
        }
        node.start_scheduler(cluster, &bin_dir)?;
        node.start_node_lifecycle(cluster, &bin_dir)?;
        node.wait_registered(cluster).await?;
        Ok(node)
    }

    async fn start_containerd(&mut self, tools: &NodeTools) -> Result<(), HarnessError> {
        let config = self.dir.join("containerd.toml");
        let root = mkdir(&self.dir, "containerd")?;
        let cni = mkdir(&self.dir, "cni")?;
        let toml = format!(
            r#"version = 2
root = "{root}/root"
state = "{root}/state"
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  # This VM forbids lowering oom_score_adj; without this every sandbox
  # fails with "can't get final child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    conf_dir = "{cni}"
    bin_dir = "{cni_bin}"
"#,
            root = root.display(),
            socket = self.socket.display(),
            pause = images::PAUSE_IMAGE,
            cni = cni.display(),
            cni_bin = CNI_BIN,
        );
        match &self.network {
            Some(network) => crate::pki::write_file(
                &cni.join("10-ferry-e2e.conflist"),
                network.cni_config(&mkdir(&self.dir, "cni-ipam")?).as_bytes(),
            )?,
            // Pods off the host's network get a loopback interface and
            // nothing else: traffic stays on this machine, and the
            // runtime's network is ready, so the node is.
            None => crate::pki::write_file(
                &cni.join("10-loopback.conflist"),
                br#"{"cniVersion": "0.4.0", "name": "ferry-e2e-loopback", "plugins": [{"type": "loopback"}]}"#,
            )?,
        }
        crate::pki::write_file(&config, toml.as_bytes())?;
        let mut command = self.in_namespace();
        command
            .arg(&tools.containerd)
            .arg(format!("--config={}", config.display()));
        self.spawn("containerd", command)?;

        let deadline = Instant::now() + CONTAINERD_DEADLINE;
        loop {
            self.fail_if_exited()?;
            let version = self.ctr().arg("version").output();
            if matches!(&version, Ok(output) if output.status.success()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(HarnessError::Process(format!(
                    "containerd did not answer on {} within {CONTAINERD_DEADLINE:?}; its log ends with:\n{}",
                    self.socket.display(),
                    self.log_tail("containerd", 30)
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn start_kubelet(&mut self, cluster: &Cluster, bin_dir: &Path) -> Result<(), HarnessError> {
        let pki = mkdir(&self.dir, "pki")?;
        let ca = pki.join("ca.crt");
        crate::pki::write_file(&ca, cluster.ca_pem().as_bytes())?;
        let identity = cluster.authority().client_cert(
            &format!("system:node:{REAL_NODE_NAME}"),
            Some("system:nodes"),
            &pki,
            "kubelet-client",
        )?;
        let serving = cluster.authority().serving_cert(
            &["127.0.0.1", "localhost"],
            &pki,
            "kubelet-serving",
        )?;
        let kubeconfig = pki.join("kubelet.kubeconfig");
        self.write_node_kubeconfig(cluster, &kubeconfig, &identity)?;
        let [mut port, healthz] = free_ports()?;
        let mut address = Ipv4Addr::LOCALHOST;
        if let Some(network) = self.network.as_mut() {
            // The apiserver dials the Node's Hostname (localhost) for logs
            // and exec: a relay there reaches the kubelet in the node's
            // namespace, on the same port.
            address = network.node_address();
            port = network
                .relay(
                    "kubelet-relay",
                    SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                    |bound| SocketAddr::from((address, bound.port())),
                )?
                .port();
        }
        let root_dir = mkdir(&self.dir, KUBELET_ROOT_DIR)?;
        let pod_logs = mkdir(&self.dir, "pod-logs")?;
        let mut config = serde_json::json!({
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": address.to_string(),
            "port": port,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": healthz,
            "tlsCertFile": serving.cert,
            "tlsPrivateKeyFile": serving.key,
            // The apiserver reaches the kubelet (logs, exec) with a client
            // certificate from the cluster's CA; nobody else is let in.
            "authentication": {
                "anonymous": {"enabled": false},
                "webhook": {"enabled": false},
                "x509": {"clientCAFile": ca},
            },
            "authorization": {"mode": "AlwaysAllow"},
            "containerRuntimeEndpoint": format!("unix://{}", self.socket.display()),
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": format!("/{}", self.cgroup_root),
            "failSwapOn": false,
            "evictionHard": {},
            "localStorageCapacityIsolation": false,
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "resolvConf": "",
            "podLogsDir": pod_logs,
            "makeIPTablesUtilChains": false,
            "serializeImagePulls": false,
            "registerNode": true,
            "rotateCertificates": false,
        });
        let mut command = self.in_namespace();
        command.arg(bin_dir.join("kubelet"));
        if self.network.is_some() {
            // Pods ask CoreDNS, on the node's address, for Services.
            config["clusterDNS"] = serde_json::json!([address.to_string()]);
            config["clusterDomain"] = serde_json::json!(pod_network::CLUSTER_DOMAIN);
            command.arg(format!("--node-ip={address}"));
        }
        let config_path = self.dir.join("kubelet.yaml");
        crate::pki::write_file(&config_path, config.to_string().as_bytes())?;
        command
            .arg(format!("--config={}", config_path.display()))
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(format!("--root-dir={}", root_dir.display()))
            .arg(format!("--hostname-override={REAL_NODE_NAME}"))
            .arg("--v=1");
        self.spawn("kubelet", command)
    }

    /// Gives the node its own network ([`PodNetwork`]): the veth pair, the
    /// relay to the apiserver, and the `kubernetes` Service pointing there.
    async fn link_network(&mut self, cluster: &Cluster) -> Result<(), HarnessError> {
        let mut network = PodNetwork::link(self.init_pid)?;
        let apiserver: SocketAddr = cluster
            .server()
            .trim_start_matches("https://")
            .parse()
            .map_err(|e| HarnessError::Process(format!("the apiserver's address: {e}")))?;
        let relay = network.relay("apiserver-relay", pod_network::on_host(&network, 0), |_| {
            apiserver
        })?;
        network.publish_apiserver(cluster, relay).await?;
        self.apiserver_relay = Some(relay);
        self.network = Some(network);
        Ok(())
    }

    /// Writes a kubeconfig for a component of the node as `identity`: the
    /// apiserver on loopback, or through the relay from the node's own
    /// network namespace (its certificate names localhost, not the relay).
    fn write_node_kubeconfig(
        &self,
        cluster: &Cluster,
        path: &Path,
        identity: &crate::pki::CertFiles,
    ) -> Result<(), HarnessError> {
        let ca = self.dir.join("pki").join("ca.crt");
        match self.apiserver_relay {
            Some(relay) => write_kubeconfig_via(
                path,
                &format!("https://{relay}"),
                Some("localhost"),
                &ca,
                identity,
            ),
            None => write_kubeconfig(path, cluster.server(), &ca, identity),
        }
    }

    /// The real kube-proxy in the node's namespace: Services' ClusterIPs
    /// reach their pods through iptables rules, as on any node.
    fn start_kube_proxy(&mut self, cluster: &Cluster, bin_dir: &Path) -> Result<(), HarnessError> {
        let Some(network) = self.network.as_ref() else {
            return Ok(());
        };
        let pki = self.dir.join("pki");
        let identity =
            cluster
                .authority()
                .client_cert("system:kube-proxy", None, &pki, "kube-proxy")?;
        let kubeconfig = pki.join("kube-proxy.kubeconfig");
        self.write_node_kubeconfig(cluster, &kubeconfig, &identity)?;
        let config = self.dir.join("kube-proxy.yaml");
        crate::pki::write_file(
            &config,
            pod_network::kube_proxy_config(network, &kubeconfig, REAL_NODE_NAME).as_bytes(),
        )?;
        let mut command = self.in_namespace();
        command
            .arg(bin_dir.join("kube-proxy"))
            .arg(format!("--config={}", config.display()))
            .arg("--v=1");
        self.spawn("kube-proxy", command)
    }

    /// The real CoreDNS in the node's namespace, serving the cluster's zone
    /// on the node's address (the kubelet's `clusterDNS`).
    async fn start_coredns(
        &mut self,
        cluster: &Cluster,
        bin_dir: &Path,
    ) -> Result<(), HarnessError> {
        let Some(network) = self.network.as_ref() else {
            return Ok(());
        };
        let user = pod_network::grant_coredns(cluster).await?;
        let pki = self.dir.join("pki");
        let identity = cluster
            .authority()
            .client_cert(user, None, &pki, "coredns")?;
        let kubeconfig = pki.join("coredns.kubeconfig");
        self.write_node_kubeconfig(cluster, &kubeconfig, &identity)?;
        let corefile = self.dir.join("Corefile");
        crate::pki::write_file(&corefile, network.corefile(&kubeconfig).as_bytes())?;
        let mut command = self.in_namespace();
        command
            .arg(bin_dir.join("coredns"))
            .arg("-conf")
            .arg(&corefile);
        self.spawn("coredns", command)
    }

    fn start_scheduler(&mut self, cluster: &Cluster, bin_dir: &Path) -> Result<(), HarnessError> {
        let pki = self.dir.join("pki");
        let identity =
            cluster
                .authority()
                .client_cert("system:kube-scheduler", None, &pki, "scheduler")?;
        let kubeconfig = pki.join("scheduler.kubeconfig");
        write_kubeconfig(
            &kubeconfig,
            cluster.server(),
            &pki.join("ca.crt"),
            &identity,
        )?;
        let mut command = Command::new(bin_dir.join("kube-scheduler"));
        command
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg("--leader-elect=false")
            .arg("--bind-address=127.0.0.1")
            .arg("--secure-port=0")
            .arg("--profiling=false");
        self.spawn("kube-scheduler", command)
    }

    /// The node lifecycle controller, in a controller-manager of its own:
    /// it lifts the `not-ready` taint the apiserver puts on every new Node
    /// once the kubelet reports Ready. (The cluster's own controller-manager
    /// does not run it: the node stand-in sends no heartbeats.)
    fn start_node_lifecycle(
        &mut self,
        cluster: &Cluster,
        bin_dir: &Path,
    ) -> Result<(), HarnessError> {
        let pki = self.dir.join("pki");
        let identity = cluster.authority().client_cert(
            "system:kube-controller-manager",
            None,
            &pki,
            "node-lifecycle",
        )?;
        let kubeconfig = pki.join("node-lifecycle.kubeconfig");
        write_kubeconfig(
            &kubeconfig,
            cluster.server(),
            &pki.join("ca.crt"),
            &identity,
        )?;
        let mut command = Command::new(bin_dir.join("kube-controller-manager"));
        command
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg("--leader-elect=false")
            .arg("--controllers=node-lifecycle-controller")
            .arg("--use-service-account-credentials=true")
            .arg("--secure-port=0")
            .arg("--profiling=false");
        self.spawn("node-lifecycle-controller", command)
    }

    async fn wait_registered(&self, cluster: &Cluster) -> Result<(), HarnessError> {
        let nodes: Api<Node> = Api::all(cluster.client()?);
        let deadline = Instant::now() + REGISTER_DEADLINE;
        loop {
            self.fail_if_exited()?;
            let node = nodes.get_opt(REAL_NODE_NAME).await?;
            if node.as_ref().is_some_and(schedulable) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(HarnessError::Process(format!(
                    "Node {REAL_NODE_NAME} was not Ready and untainted within {REGISTER_DEADLINE:?} (it is: {}); the kubelet's log ends with:\n{}",
                    node.map(|node| format!(
                        "conditions {:?}, taints {:?}",
                        node.status.and_then(|s| s.conditions),
                        node.spec.and_then(|s| s.taints)
                    ))
                    .unwrap_or_else(|| "not registered".into()),
                    self.log_tail("kubelet", 40)
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A command run inside the node's PID and mount namespaces (and its
    /// network namespace, if it has one).
    fn in_namespace(&self) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--target={}", self.init_pid))
            .arg("--mount")
            .arg("--pid");
        if self.network.is_some() {
            command.arg("--net");
        }
        command.arg("--");
        command
    }

    /// A `ctr` command against the node's containerd, in the CRI's
    /// namespace (`k8s.io`).
    pub fn ctr(&self) -> Command {
        let mut command = Command::new("ctr");
        command
            .arg(format!("--address={}", self.socket.display()))
            .args(["--namespace", "k8s.io"]);
        command
    }

    /// Imports more images into the node's containerd.
    pub fn import_images(&self, images: &ImageSet) -> Result<(), HarnessError> {
        images
            .archives()
            .iter()
            .try_for_each(|archive| self.import(archive))
    }

    fn import(&self, archive: &Path) -> Result<(), HarnessError> {
        let output = self
            .ctr()
            .args(["images", "import", "--no-unpack=false"])
            .arg(archive)
            .output()
            .map_err(|source| HarnessError::Io {
                what: "running ctr images import".into(),
                source,
            })?;
        if !output.status.success() {
            return Err(HarnessError::Process(format!(
                "importing {} into containerd failed ({}): {}{}",
                archive.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr),
                self.log_tail("containerd", 20)
            )));
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<ProcessGroup>> {
        self.processes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn spawn(&self, name: &str, command: Command) -> Result<(), HarnessError> {
        match self.lock().as_mut() {
            Some(processes) => processes.spawn(name, command),
            None => Err(HarnessError::Process("the node has stopped".into())),
        }
    }

    /// Fails, with its log's tail, if a component of the node has exited.
    fn fail_if_exited(&self) -> Result<(), HarnessError> {
        let mut processes = self.lock();
        let Some(processes) = processes.as_mut() else {
            return Err(HarnessError::Process("the node has stopped".into()));
        };
        if let Some((name, status)) = processes.exited() {
            return Err(HarnessError::Exited {
                log_tail: processes.log_tail(&name, 40),
                component: name,
                status,
            });
        }
        Ok(())
    }

    /// The last `lines` lines of a component's log (`containerd`,
    /// `kubelet`, `kube-scheduler`).
    pub fn log_tail(&self, component: &str, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join("logs").join(format!("{component}.log")))
            .unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The images the node has imported.
    pub fn images(&self) -> &ImageSet {
        &self.images
    }

    /// The node's private directory (removed when the node stops).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cgroup root under which the kubelet puts every pod (in each
    /// cgroup v1 hierarchy under /sys/fs/cgroup).
    pub fn cgroup_root(&self) -> &str {
        &self.cgroup_root
    }

    /// The id of the process group of the node's processes (none once the
    /// node has stopped).
    pub fn process_group(&self) -> Option<i32> {
        self.lock().as_ref().map(ProcessGroup::id)
    }

    /// The host PID of the node namespace's init (gone once the node has
    /// stopped).
    pub fn init_pid(&self) -> u32 {
        self.init_pid
    }

    /// `path` as the node's mount namespace sees it (the pods' volumes are
    /// mounted there, not in the harness's own namespace).
    pub fn node_path(&self, path: &Path) -> PathBuf {
        let relative = path.strip_prefix("/").unwrap_or(path);
        PathBuf::from(format!("/proc/{}/root", self.init_pid)).join(relative)
    }

    /// The node namespace's mount table (`/proc/<init>/mountinfo`).
    pub fn mounts(&self) -> String {
        std::fs::read_to_string(format!("/proc/{}/mountinfo", self.init_pid)).unwrap_or_default()
    }

    /// The directory of volume `volume` of pod `pod_uid` as the harness
    /// reads it (through [`Self::node_path`]: a tmpfs or a projected token
    /// is mounted in the node's namespace only), whatever its plugin
    /// (`kubernetes.io~empty-dir`, `kubernetes.io~projected`, ...); `None`
    /// while the kubelet has not set it up or after it removed it.
    pub fn pod_volume(&self, pod_uid: &str, volume: &str) -> Option<PathBuf> {
        let volumes = self.node_path(
            &self
                .dir
                .join(KUBELET_ROOT_DIR)
                .join("pods")
                .join(pod_uid)
                .join("volumes"),
        );
        std::fs::read_dir(volumes)
            .ok()?
            .flatten()
            .map(|plugin| plugin.path().join(volume))
            .find(|dir| dir.is_dir())
    }

    /// The host PIDs of the processes of container `container_id` (as the
    /// pod status says it, with or without `containerd://`), from its
    /// cgroup.
    pub fn container_pids(&self, container_id: &str) -> Vec<u32> {
        let id = container_id
            .strip_prefix("containerd://")
            .unwrap_or(container_id);
        let base = Path::new("/sys/fs/cgroup/pids").join(&self.cgroup_root);
        find_dir(&base, id, 6)
            .and_then(|dir| std::fs::read_to_string(dir.join("cgroup.procs")).ok())
            .map(|procs| {
                procs
                    .lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The cgroup v1 memory usage, in bytes, of container `container_id`
    /// (its `memory.usage_in_bytes` and the RSS line of `memory.stat`).
    pub fn container_memory(&self, container_id: &str) -> Option<(u64, u64)> {
        let id = container_id
            .strip_prefix("containerd://")
            .unwrap_or(container_id);
        let base = Path::new("/sys/fs/cgroup/memory").join(&self.cgroup_root);
        let dir = find_dir(&base, id, 6)?;
        let usage = std::fs::read_to_string(dir.join("memory.usage_in_bytes"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let stat = std::fs::read_to_string(dir.join("memory.stat")).ok()?;
        let rss = stat
            .lines()
            .find_map(|line| line.strip_prefix("total_rss "))
            .and_then(|value| value.trim().parse().ok())?;
        Some((usage, rss))
    }

    /// What to say when a pod is not where a test expected it: the pod's
    /// phase and container states, its events and the kubelet's log tail.
    pub async fn diagnose(&self, client: &kube::Client, namespace: &str, pod: &str) -> String {
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let status = match pods.get_opt(pod).await {
            Ok(Some(pod)) => serde_json::to_string_pretty(&pod.status).unwrap_or_default(),
            Ok(None) => "pod not found".into(),
            Err(error) => format!("reading the pod: {error}"),
        };
        let events: Api<Event> = Api::namespaced(client.clone(), namespace);
        let params = ListParams::default().fields(&format!("involvedObject.name={pod}"));
        let events = match events.list(&params).await {
            Ok(list) => list
                .items
                .iter()
                .map(|e| {
                    format!(
                        "{} {} {}",
                        e.type_.as_deref().unwrap_or(""),
                        e.reason.as_deref().unwrap_or(""),
                        e.message.as_deref().unwrap_or("")
                    )
                })
                .collect::<Vec<_>>()
                .join("\n"),
            Err(error) => format!("listing events: {error}"),
        };
        format!(
            "pod {namespace}/{pod} status: {status}\nevents:\n{events}\nkubelet log ends with:\n{}",
            self.log_tail("kubelet", 30)
        )
    }

    /// Runs pod `sleeper` (busybox sleeping, on the host's network) in a
    /// fresh namespace of `cluster` and waits until it runs: something for
    /// the node to clean up.
    pub async fn run_sleeper(&self, cluster: &Cluster) -> Result<Pod, HarnessError> {
        let client = cluster.client()?;
        let namespace = cluster.create_namespace("sleeper").await?;
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "sleeper"},
            "spec": {"hostNetwork": true, "containers": [{
                "name": "app", "image": images::BUSYBOX_IMAGE, "imagePullPolicy": "Never",
                "command": ["sleep", "3600"]}]},
        }))
        .map_err(|error| HarnessError::Process(format!("the sleeper pod: {error}")))?;
        Api::<Pod>::namespaced(client.clone(), &namespace)
            .create(&kube::api::PostParams::default(), &pod)
            .await?;
        self.wait_pod(
            &client,
            &namespace,
            "sleeper",
            "the sleeper running",
            Duration::from_secs(120),
            |pod| {
                pod.status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .and_then(|s| s.first())
                    .and_then(|s| s.state.as_ref())
                    .is_some_and(|s| s.running.is_some())
            },
        )
        .await
    }

    /// Waits until `check` says yes about pod `name` (read afresh each
    /// time) and returns it; after `deadline`, fails with [`Self::diagnose`].
    pub async fn wait_pod(
        &self,
        client: &kube::Client,
        namespace: &str,
        name: &str,
        what: &str,
        deadline: Duration,
        check: impl Fn(&Pod) -> bool,
    ) -> Result<Pod, HarnessError> {
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let end = Instant::now() + deadline;
        loop {
            if let Some(pod) = pods.get_opt(name).await?
                && check(&pod)
            {
                return Ok(pod);
            }
            if Instant::now() > end {
                return Err(HarnessError::Process(format!(
                    "pod {namespace}/{name}: {what} not seen within {deadline:?}\n{}",
                    self.diagnose(client, namespace, name).await
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for RealNode {
    fn drop(&mut self) {
        // The namespace first: killing unshare kills its init, and with it
        // every process in the namespace. Then the group (the nsenter
        // parents, kube-scheduler); then the janitor removes the cgroups
        // and the directory once the namespace is empty.
        {
            let mut namespace = self
                .namespace
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let _ = namespace.kill();
            let _ = namespace.wait();
        }
        let processes = self.lock().take();
        drop(processes);
        self.janitor.finish();
    }
}

/// Whether `node` reports Ready and carries no taint.
fn schedulable(node: &Node) -> bool {
    let ready = node
        .status
        .as_ref()
        .and_then(|status| status.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        });
    let tainted = node
        .spec
        .as_ref()
        .and_then(|spec| spec.taints.as_ref())
        .is_some_and(|taints| !taints.is_empty());
    ready && !tainted
}

/// Paths of the node's tools from Debian's packages.
struct NodeTools {
    containerd: PathBuf,
}

fn node_tools() -> Result<NodeTools, HarnessError> {
    let find = |name: &str| -> Result<PathBuf, HarnessError> {
        std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
            .ok_or_else(|| {
                HarnessError::Build(format!(
                    "{name} is not installed; run e2e/node/install.sh (make node) for containerd, runc and busybox-static"
                ))
            })
    };
    find("runc")?;
    find("ctr")?;
    find("nsenter")?;
    find("unshare")?;
    Ok(NodeTools {
        containerd: find("containerd")?,
    })
}

/// Starts `unshare` (in `processes`' group, so the group's stop and its
/// watchdog reach it) making a PID and mount namespace whose init runs
/// `pause`; returns the unshare child and the init's host PID.
fn start_namespace(
    processes: &ProcessGroup,
    pause: &Path,
    log_dir: &Path,
    own_network: bool,
) -> Result<(Child, u32), HarnessError> {
    use std::os::unix::process::CommandExt;
    let log = std::fs::File::create(log_dir.join("node-init.log")).map_err(|source| {
        HarnessError::Io {
            what: "creating the node-init log".into(),
            source,
        }
    })?;
    let mut unshare = Command::new("unshare");
    if own_network {
        unshare.arg("--net");
    }
    let mut child = unshare
        .args([
            "--pid",
            "--fork",
            "--kill-child",
            "--mount",
            "--propagation",
            "private",
            "--mount-proc",
            "sh",
            "-c",
            NODE_INIT,
            "ferry-node-init",
        ])
        .arg(pause)
        .arg(if own_network { "net" } else { "host" })
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(processes.id())
        .spawn()
        .map_err(|source| HarnessError::Io {
            what: "starting unshare for the node's namespace".into(),
            source,
        })?;
    let children = format!("/proc/{0}/task/{0}/children", child.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let init = std::fs::read_to_string(&children)
            .ok()
            .and_then(|text| text.split_whitespace().next()?.parse::<u32>().ok());
        // Wait for the init to have mounted /run/containerd and exec'd pause.
        if let Some(pid) = init
            && std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == pause)
        {
            return Ok((child, pid));
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(HarnessError::Process(format!(
                "the node's namespace (unshare) exited with {status}: {}",
                std::fs::read_to_string(log_dir.join("node-init.log")).unwrap_or_default()
            )));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(HarnessError::Process(format!(
                "the node's namespace did not start in 10s: {}",
                std::fs::read_to_string(log_dir.join("node-init.log")).unwrap_or_default()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Creates `root` in every cgroup v1 hierarchy (the kubelet insists that
/// its cgroup root exists), with the parent's CPUs and memory nodes for
/// cpuset, whose new cgroups start with none.
fn create_cgroup_root(root: &str) -> Result<(), HarnessError> {
    let base = Path::new("/sys/fs/cgroup");
    let entries = std::fs::read_dir(base).map_err(|source| HarnessError::Io {
        what: "listing /sys/fs/cgroup (the real node needs cgroups)".into(),
        source,
    })?;
    for entry in entries.flatten() {
        let hierarchy = entry.path();
        if !hierarchy.join("cgroup.procs").exists() {
            continue;
        }
        let dir = hierarchy.join(root);
        std::fs::create_dir_all(&dir).map_err(|source| HarnessError::Io {
            what: format!("creating cgroup {}", dir.display()),
            source,
        })?;
        for file in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(value) = std::fs::read_to_string(hierarchy.join(file)) {
                std::fs::write(dir.join(file), value.trim()).map_err(|source| {
                    HarnessError::Io {
                        what: format!("setting {}", dir.join(file).display()),
                        source,
                    }
                })?;
            }
        }
    }
    Ok(())
}

/// The first directory named `name` under `base`, at most `depth` levels down.
fn find_dir(base: &Path, name: &str, depth: usize) -> Option<PathBuf> {
    let entries = std::fs::read_dir(base).ok()?;
    let dirs: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    if let Some(found) = dirs
        .iter()
        .find(|p| p.file_name().is_some_and(|n| n == name))
    {
        return Some(found.clone());
    }
    if depth == 0 {
        return None;
    }
    dirs.iter().find_map(|dir| find_dir(dir, name, depth - 1))
}

fn unique() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The watchdog that removes the node's cgroups and directory when the
/// node is dropped or the harness dies.
struct Janitor {
    child: Child,
    lifeline: Option<ChildStdin>,
}

impl Janitor {
    fn start(cgroup_root: &str, dir: &Path) -> Result<Self, HarnessError> {
        use std::os::unix::process::CommandExt;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(JANITOR)
            .arg("ferry-node-janitor")
            .arg(cgroup_root)
            .arg(dir)
            .arg(JANITOR_WAIT_TENTHS.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own group: stopping the node's processes must not stop it.
            .process_group(0)
            .spawn()
            .map_err(|source| HarnessError::Io {
                what: "starting the node's janitor (sh)".into(),
                source,
            })?;
        let lifeline = child.stdin.take();
        Ok(Self { child, lifeline })
    }

    /// Tells the janitor which namespace init to wait for.
    fn watch(&mut self, init_pid: u32) {
        if let Some(lifeline) = self.lifeline.as_mut() {
            let _ = writeln!(lifeline, "init {init_pid}");
        }
    }

    /// Closes the lifeline and waits for the janitor to finish its cleanup.
    fn finish(&mut self) {
        self.lifeline.take();
        let _ = self.child.wait();
    }
}
