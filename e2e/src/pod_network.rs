//! A pod network for the real node, for what host-network pods cannot
//! show: several replicas of one component on one node, Services reached by
//! name and ClusterIP, and the apiserver calling a webhook in a pod.
//!
//! Everything lives in the node's own network namespace, which the kernel
//! removes with the node's processes: a veth pair links it to the host
//! (`ferry-nN` on the host, 10.243.N.1, and `eth0` in the node, 10.243.N.2);
//! pods sit on a CNI bridge in the node's namespace (10.244.N.0/24, from
//! Debian's containernetworking-plugins); the real kube-proxy (iptables) and
//! the real CoreDNS run in the node's namespace as they run on any node.
//! Traffic never leaves this machine: the node's namespace has no default
//! route, and the host routes only the pod subnet to it.
//!
//! The apiserver listens on the host's loopback, which the node's namespace
//! cannot reach; two relays of the harness join them: the node's
//! components and pods reach the apiserver at 10.243.N.1 (the `kubernetes`
//! Service's endpoint), and the apiserver reaches the kubelet (logs, exec)
//! at its usual loopback address. The apiserver reaches webhooks in pods at
//! their pod IPs (`--enable-aggregator-routing`), through the host's route.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::process::Command;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Api, Patch, PatchParams};

use crate::HarnessError;
use crate::background::Background;
use crate::cluster::Cluster;

/// The cluster's DNS domain, as CoreDNS serves it and the kubelet tells pods.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// The identity CoreDNS reads Services and EndpointSlices as.
const COREDNS_USER: &str = "ferry-e2e:coredns";

/// A node's network: the veth pair's addresses and the relays between the
/// host's loopback and the node's namespace. The kernel removes the pair,
/// the host's route, the bridge and every rule with the namespace.
pub(crate) struct PodNetwork {
    index: u8,
    relays: Vec<Background>,
}

impl std::fmt::Debug for PodNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodNetwork")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl PodNetwork {
    /// Links the network namespace of process `init_pid` to the host with a
    /// veth pair on the first free index, addresses both ends and routes the
    /// pod subnet to the node.
    pub(crate) fn link(init_pid: u32) -> Result<Self, HarnessError> {
        let mut index = None;
        for candidate in 0..=250u8 {
            let output = run_output(Command::new("ip").args([
                "link",
                "add",
                &host_link(candidate),
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &init_pid.to_string(),
            ]))?;
            if output.status.success() {
                index = Some(candidate);
                break;
            }
            let stderr = String::from_utf8_lossy(&output.stderr);
            if !stderr.contains("File exists") {
                return Err(HarnessError::Process(format!(
                    "creating the node's veth pair failed: {stderr}"
                )));
            }
        }
        let index = index.ok_or_else(|| {
            HarnessError::Process("no free ferry-nN link name for the node's veth pair".into())
        })?;
        let network = Self {
            index,
            relays: Vec::new(),
        };
        let link = host_link(index);
        run(Command::new("ip").args([
            "addr",
            "add",
            &format!("{}/24", network.host_address()),
            "dev",
            &link,
        ]))?;
        run(Command::new("ip").args(["link", "set", &link, "up"]))?;
        let in_node = |args: &[&str]| {
            let mut command = Command::new("nsenter");
            command
                .arg(format!("--net=/proc/{init_pid}/ns/net"))
                .arg("--")
                .arg("ip")
                .args(args);
            run(&mut command)
        };
        in_node(&[
            "addr",
            "add",
            &format!("{}/24", network.node_address()),
            "dev",
            "eth0",
        ])?;
        in_node(&["link", "set", "eth0", "up"])?;
        run(Command::new("ip").args([
            "route",
            "add",
            &network.pod_subnet(),
            "via",
            &network.node_address().to_string(),
            "dev",
            &link,
        ]))?;
        Ok(network)
    }

    /// The host's end of the veth pair.
    pub(crate) fn host_address(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 243, self.index, 1)
    }

    /// The node's end: the Node's InternalIP, where the kubelet and CoreDNS
    /// listen.
    pub(crate) fn node_address(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 243, self.index, 2)
    }

    /// The pods' subnet on the node's bridge.
    pub(crate) fn pod_subnet(&self) -> String {
        format!("10.244.{}.0/24", self.index)
    }

    /// The CNI configuration: a bridge with the pods' default route through
    /// it, addresses from host-local IPAM kept in `ipam_dir`.
    pub(crate) fn cni_config(&self, ipam_dir: &Path) -> String {
        serde_json::json!({
            "cniVersion": "0.4.0",
            "name": "ferry-e2e",
            "plugins": [{
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": true,
                "isDefaultGateway": true,
                "hairpinMode": true,
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "dataDir": ipam_dir,
                    "ranges": [[{
                        "subnet": self.pod_subnet(),
                        "gateway": format!("10.244.{}.1", self.index),
                    }]],
                },
            }],
        })
        .to_string()
    }

    /// Starts a relay from `listen` to `upstream(bound address)` on a
    /// thread of its own, kept until the network is dropped. Returns the
    /// bound address.
    pub(crate) fn relay(
        &mut self,
        name: &str,
        listen: SocketAddr,
        upstream: impl FnOnce(SocketAddr) -> SocketAddr,
    ) -> Result<SocketAddr, HarnessError> {
        let io = |source| HarnessError::Io {
            what: format!("binding {listen} for the {name} relay"),
            source,
        };
        let listener = std::net::TcpListener::bind(listen).map_err(io)?;
        listener.set_nonblocking(true).map_err(io)?;
        let bound = listener.local_addr().map_err(io)?;
        let upstream = upstream(bound);
        self.relays.push(Background::spawn(name, move |shutdown| {
            relay(listener, upstream, shutdown)
        })?);
        Ok(bound)
    }

    /// Points the `kubernetes` Service at the apiserver relay on the host's
    /// end, so that pods' in-cluster configuration (10.96.0.1) reaches the
    /// apiserver through kube-proxy, as on any node. (The apiserver runs
    /// with `--endpoint-reconciler-type=none`: it writes no endpoint of its
    /// own, which would be loopback.)
    pub(crate) async fn publish_apiserver(
        &self,
        cluster: &Cluster,
        relay: SocketAddr,
    ) -> Result<(), HarnessError> {
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "kubernetes",
                "namespace": "default",
                "labels": {
                    "kubernetes.io/service-name": "kubernetes",
                    "endpointslice.kubernetes.io/managed-by": "ferry-e2e",
                },
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [relay.ip().to_string()], "conditions": {"ready": true}}],
            "ports": [{"name": "https", "port": relay.port(), "protocol": "TCP"}],
        }))
        .map_err(|e| HarnessError::Process(format!("the kubernetes EndpointSlice: {e}")))?;
        Api::<EndpointSlice>::namespaced(cluster.client()?, "default")
            .patch(
                "kubernetes",
                &PatchParams::apply("ferry-e2e").force(),
                &Patch::Apply(&slice),
            )
            .await?;
        Ok(())
    }

    /// The Corefile: the cluster's zone from the apiserver, on the node's
    /// address, and nothing forwarded anywhere.
    pub(crate) fn corefile(&self, kubeconfig: &Path) -> String {
        format!(
            ".:53 {{\n    bind {address}\n    errors\n    kubernetes {CLUSTER_DOMAIN} in-addr.arpa {{\n        kubeconfig {kubeconfig} ferry-e2e\n    }}\n}}\n",
            address = self.node_address(),
            kubeconfig = kubeconfig.display(),
        )
    }
}

/// The user CoreDNS authenticates as, allowed to read what it serves (what
/// the ClusterRole CoreDNS's own manifests ship grants).
pub(crate) async fn grant_coredns(cluster: &Cluster) -> Result<&'static str, HarnessError> {
    let client = cluster.client()?;
    let role: ClusterRole = serde_json::from_value(serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "ferry-e2e:coredns"},
        "rules": [
            {"apiGroups": [""], "resources": ["services", "namespaces", "pods", "endpoints"], "verbs": ["list", "watch"]},
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
        ],
    }))
    .map_err(|e| HarnessError::Process(format!("CoreDNS's ClusterRole: {e}")))?;
    let binding: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "ferry-e2e:coredns"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "ferry-e2e:coredns"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": COREDNS_USER}],
    }))
    .map_err(|e| HarnessError::Process(format!("CoreDNS's ClusterRoleBinding: {e}")))?;
    let apply = PatchParams::apply("ferry-e2e").force();
    Api::<ClusterRole>::all(client.clone())
        .patch("ferry-e2e:coredns", &apply, &Patch::Apply(&role))
        .await?;
    Api::<ClusterRoleBinding>::all(client)
        .patch("ferry-e2e:coredns", &apply, &Patch::Apply(&binding))
        .await?;
    Ok(COREDNS_USER)
}

/// The kube-proxy configuration: iptables, this node's pods as the
/// cluster's, and no attempt to change the host-wide conntrack settings
/// (a network namespace may not).
pub(crate) fn kube_proxy_config(
    network: &PodNetwork,
    kubeconfig: &Path,
    node_name: &str,
) -> String {
    serde_json::json!({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": kubeconfig},
        "hostnameOverride": node_name,
        "bindAddress": network.node_address().to_string(),
        // In the node's namespace: no port of the host's is taken.
        "healthzBindAddress": "127.0.0.1:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        "clusterCIDR": network.pod_subnet(),
        "mode": "iptables",
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
        "iptables": {"minSyncPeriod": "0s", "syncPeriod": "30s"},
    })
    .to_string()
}

/// The address a relay on the host's end listens on for `port` (0: any).
pub(crate) fn on_host(network: &PodNetwork, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(network.host_address(), port))
}

fn host_link(index: u8) -> String {
    format!("ferry-n{index}")
}

async fn relay(
    listener: std::net::TcpListener,
    upstream: SocketAddr,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => {
                let Ok((mut client, _)) = accepted else { continue };
                tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        }
    }
}

fn run_output(command: &mut Command) -> Result<std::process::Output, HarnessError> {
    command.output().map_err(|source| HarnessError::Io {
        what: format!("running {command:?}"),
        source,
    })
}

fn run(command: &mut Command) -> Result<(), HarnessError> {
    let output = run_output(command)?;
    if output.status.success() {
        Ok(())
    } else {
        Err(HarnessError::Process(format!(
            "{command:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )))
    }
}
