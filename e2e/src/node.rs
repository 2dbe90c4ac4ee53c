//! A node stand-in: **test infrastructure standing in for the kubelet**. It
//! is not part of ferry.
//!
//! Kept only where a real kubelet cannot run: `make demo` falls back to it
//! when this machine cannot run containers (the real node,
//! [`crate::RealNode`], needs root, containerd and cgroups), so the demo
//! still shows a pod's secrets end to end; `e2e/tests/node.rs` checks what
//! the demo relies on. ferry's behaviours are all tested on the real node,
//! where images, the kubelet's probes, ordering, restarts and volumes are
//! the real thing rather than this imitation.
//!
//! It registers a Node, binds pending pods to it (without the real node
//! the harness runs no scheduler), and for each pod bound to it does what
//! a kubelet would do for ferry's injected sidecar, with real pieces
//! wherever ferry meets them:
//!
//! - every `emptyDir` volume is a directory on a real tmpfs (`/dev/shm`);
//! - every projected `serviceAccountToken` is a real TokenRequest bound to
//!   the pod, with the volume's audience and expiry, written with the
//!   volume's mode and refreshed at 80 % of its lifetime;
//! - the native sidecar's command (`/ferry-sidecar ...`) runs as a local
//!   process, the binary built from this repository, with the container's
//!   environment resolved (downward API included) and its mount paths
//!   mapped to those directories, as the container's user when the harness
//!   runs as root;
//! - its exec startup probe runs the same way; when it passes, the app's
//!   containers "start" (there are no images to run: the stand-in records
//!   what the app would find in its volumes at that moment) and the pod
//!   reports Running and Ready;
//! - on deletion the sidecar gets SIGTERM, then SIGKILL after the grace
//!   period; the volumes are removed and the pod object is finalised.
//!
//! Other containers are not run. Crashed sidecars are not restarted.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ferry_contract::SIDECAR_COMMAND;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStatus, Node, Pod, PodCondition,
    PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde_json::json;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use crate::HarnessError;
use crate::background::Background;
use crate::process::ProcessGroup;

/// The stand-in node's name.
pub const NODE_NAME: &str = "ferry-e2e-node";

/// A file in a pod's volume as the app found it when it started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenFile {
    /// Path relative to the volume.
    pub path: String,
    /// Permission bits.
    pub mode: u32,
    /// Content.
    pub content: Vec<u8>,
}

/// What the stand-in knows of one pod it runs.
#[derive(Debug, Clone, Default)]
pub struct PodRun {
    /// Host directory of each volume, by volume name.
    pub volumes: BTreeMap<String, PathBuf>,
    /// The sidecar's process id while it runs.
    pub sidecar_pid: Option<u32>,
    /// The sidecar's exit status once it has exited.
    pub sidecar_exit: Option<i32>,
    /// Whether the startup probe passed (the app started).
    pub started: bool,
    /// The files of each emptyDir volume when the app started, by volume.
    pub seen_at_start: BTreeMap<String, Vec<SeenFile>>,
    /// The files of each emptyDir volume once the sidecar had exited,
    /// before the volumes were removed: what a sidecar left behind.
    pub left_at_exit: BTreeMap<String, Vec<SeenFile>>,
    /// The sidecar's stdout and stderr.
    pub sidecar_log: PathBuf,
    /// Whether the pod has been torn down (volumes removed).
    pub finished: bool,
}

type Runs = Arc<Mutex<HashMap<String, PodRun>>>;

/// The running node stand-in; stops (SIGKILLing what it runs) when dropped.
pub struct NodeStandIn {
    background: Background,
    runs: Runs,
    processes: Arc<ProcessGroup>,
    root: tempfile::TempDir,
}

impl NodeStandIn {
    /// The directory holding the pods' volumes (gone once the stand-in
    /// has stopped).
    pub fn dir(&self) -> &Path {
        self.root.path()
    }

    /// The id of the process group the sidecars run in (gone once the
    /// stand-in has stopped).
    pub fn process_group(&self) -> i32 {
        self.processes.id()
    }

    /// Starts the stand-in against the cluster `config` reaches, running
    /// `sidecar_binary` for the sidecar's command.
    pub fn start(config: kube::Config, sidecar_binary: &Path) -> Result<Self, HarnessError> {
        let io = |what: &str| {
            let what = what.to_owned();
            move |source| HarnessError::Io { what, source }
        };
        let shm = Path::new("/dev/shm");
        let root = tempfile::Builder::new()
            .prefix("ferry-node-")
            .tempdir_in(if shm.is_dir() { shm } else { Path::new("/tmp") })
            .map_err(io("creating the node's directory"))?;
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755))
            .map_err(io("opening the node's directory"))?;
        // The sidecar may run as another user, who must be able to run it.
        let bin_dir = root.path().join("bin");
        std::fs::create_dir(&bin_dir).map_err(io("creating the node's bin directory"))?;
        let binary = bin_dir.join("ferry-sidecar");
        std::fs::copy(sidecar_binary, &binary).map_err(io("copying the sidecar binary"))?;
        std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755))
            .map_err(io("making the sidecar binary executable"))?;
        let logs = root.path().join("logs");
        std::fs::create_dir(&logs).map_err(io("creating the node's log directory"))?;
        let processes = Arc::new(ProcessGroup::new(&logs, root.path())?);

        let runs: Runs = Arc::default();
        let node = Kubelet {
            binary,
            pods_dir: root.path().join("pods"),
            logs,
            process_group: processes.id(),
            runs: Arc::clone(&runs),
        };
        std::fs::create_dir(&node.pods_dir).map_err(io("creating the node's pod directory"))?;
        let background = Background::spawn("ferry-e2e-node", move |shutdown| async move {
            let client = match kube::Client::try_from(config) {
                Ok(client) => client,
                Err(error) => return tracing::error!(%error, "node stand-in client"),
            };
            node.run(client, shutdown).await;
        })?;
        Ok(Self {
            background,
            runs,
            processes,
            root,
        })
    }

    /// What the stand-in knows of the pod with `uid`.
    pub fn pod(&self, uid: &str) -> Option<PodRun> {
        self.runs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(uid)
            .cloned()
    }

    /// Stops the stand-in and everything it runs.
    pub fn stop(mut self) {
        self.background.stop();
    }
}

/// The stand-in's state inside its runtime.
#[derive(Clone)]
struct Kubelet {
    binary: PathBuf,
    pods_dir: PathBuf,
    logs: PathBuf,
    process_group: i32,
    runs: Runs,
}

impl Kubelet {
    async fn run(self, client: kube::Client, shutdown: CancellationToken) {
        register_node(&client).await;
        let pods: Api<Pod> = Api::all(client.clone());
        let events = watcher::watcher(pods, watcher::Config::default()).default_backoff();
        let mut events = std::pin::pin!(events);
        let mut running: HashMap<String, CancellationToken> = HashMap::new();
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            let event = tokio::select! {
                () = shutdown.cancelled() => break,
                event = events.next() => event,
            };
            let pods = match event {
                None => break,
                Some(Ok(Event::Apply(pod) | Event::InitApply(pod))) => vec![pod],
                Some(Ok(Event::Delete(pod))) => {
                    if let Some(stop) = pod.metadata.uid.as_ref().and_then(|uid| running.get(uid)) {
                        stop.cancel();
                    }
                    vec![]
                }
                Some(Ok(Event::Init | Event::InitDone)) => vec![],
                Some(Err(error)) => {
                    tracing::warn!(%error, "node stand-in: pod watch failed; retrying");
                    vec![]
                }
            };
            for pod in pods {
                let (Some(uid), Some(namespace), Some(name)) = (
                    pod.metadata.uid.clone(),
                    pod.metadata.namespace.clone(),
                    pod.metadata.name.clone(),
                ) else {
                    continue;
                };
                if namespace == "kube-system" {
                    continue;
                }
                let node_name = pod.spec.as_ref().and_then(|spec| spec.node_name.clone());
                match node_name.as_deref() {
                    None if pod.metadata.deletion_timestamp.is_none() => {
                        bind(&client, &namespace, &name).await;
                    }
                    Some(NODE_NAME) => {
                        if pod.metadata.deletion_timestamp.is_some() {
                            match running.get(&uid) {
                                Some(stop) => stop.cancel(),
                                None => finalise(&client, &namespace, &name).await,
                            }
                        } else if !running.contains_key(&uid) {
                            let stop = CancellationToken::new();
                            running.insert(uid.clone(), stop.clone());
                            let (node, client) = (self.clone(), client.clone());
                            tasks.spawn(async move { node.run_pod(client, pod, stop).await });
                        }
                    }
                    _ => {}
                }
            }
        }
        for stop in running.values() {
            stop.cancel();
        }
        while tasks.join_next().await.is_some() {}
    }

    fn update(&self, uid: &str, change: impl FnOnce(&mut PodRun)) {
        let mut runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
        change(runs.entry(uid.to_owned()).or_default());
    }

    async fn run_pod(self, client: kube::Client, pod: Pod, stop: CancellationToken) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let dir = self.pods_dir.join(&uid);
        let result = self.run_pod_inner(&client, &pod, &dir, &stop).await;
        if let Err(error) = result {
            tracing::warn!(pod = %format!("{namespace}/{name}"), %error, "node stand-in: pod failed");
            let _ = report(&client, &namespace, &name, failed_status(&error)).await;
            stop.cancelled().await;
        }
        let _ = std::fs::remove_dir_all(&dir);
        self.update(&uid, |run| run.finished = true);
        finalise(&client, &namespace, &name).await;
    }

    async fn run_pod_inner(
        &self,
        client: &kube::Client,
        pod: &Pod,
        dir: &Path,
        stop: &CancellationToken,
    ) -> Result<(), String> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let security = spec.security_context.clone().unwrap_or_default();
        let fs_group = security
            .fs_group
            .and_then(|group| u32::try_from(group).ok());

        // Volumes: emptyDirs on tmpfs, projected tokens from TokenRequest.
        let mut volumes = BTreeMap::new();
        let mut tokens = Vec::new();
        for volume in spec.volumes.iter().flatten() {
            let path = dir.join("volumes").join(&volume.name);
            std::fs::create_dir_all(&path).map_err(|e| format!("volume {}: {e}", volume.name))?;
            if volume.empty_dir.is_some() {
                // As the kubelet makes an emptyDir: writable by the pod's
                // users, owned by its fsGroup when it has one.
                set_mode(&path, if fs_group.is_some() { 0o2777 } else { 0o777 })?;
                if let Some(group) = fs_group {
                    chown(&path, None, Some(group))?;
                }
            } else if let Some(projected) = &volume.projected {
                set_mode(&path, 0o755)?;
                let mode = projected.default_mode.unwrap_or(0o644);
                for source in projected.sources.iter().flatten() {
                    if let Some(token) = &source.service_account_token {
                        tokens.push(ProjectedToken {
                            file: path.join(&token.path),
                            audience: token.audience.clone().unwrap_or_default(),
                            seconds: token.expiration_seconds.unwrap_or(3600),
                            mode: u32::try_from(mode).unwrap_or(0o644),
                        });
                    }
                }
            }
            volumes.insert(volume.name.clone(), path);
        }
        let sidecar_log = self.logs.join(format!("{uid}.log"));
        self.update(&uid, |run| {
            run.volumes = volumes.clone();
            run.sidecar_log = sidecar_log.clone();
        });

        let sidecar = spec
            .init_containers
            .iter()
            .flatten()
            .find(|container| {
                container.restart_policy.as_deref() == Some("Always")
                    && container
                        .command
                        .as_ref()
                        .and_then(|c| c.first())
                        .map(String::as_str)
                        == Some(SIDECAR_COMMAND)
            })
            .cloned();
        let owner = sidecar
            .as_ref()
            .and_then(|container| user_of(container, &security));
        for token in &tokens {
            token.write(client, pod, owner).await?;
        }
        let refresher = {
            let (client, pod, tokens, stop) =
                (client.clone(), pod.clone(), tokens.clone(), stop.clone());
            tokio::spawn(async move { refresh_tokens(client, pod, tokens, owner, stop).await })
        };

        let mut child = None;
        if let Some(container) = &sidecar {
            let env = resolve_env(container, pod, &volumes)?;
            let mut process = self.command(container, &env, owner, &sidecar_log)?;
            let spawned = process
                .spawn()
                .map_err(|e| format!("starting the sidecar: {e}"))?;
            self.update(&uid, |run| run.sidecar_pid = spawned.id());
            child = Some(spawned);
            if let Some(probe) = &container.startup_probe {
                self.probe(container, probe, &env, owner, child.as_mut(), stop)
                    .await?;
            }
        }
        if stop.is_cancelled() {
            return self.terminate(pod, child, &uid, refresher).await;
        }

        // The app's containers start now: record what they would find.
        let seen = memory_volumes(pod)
            .into_iter()
            .filter_map(|name| {
                volumes
                    .get(&name)
                    .map(|path| (name, list_files(path, false)))
            })
            .collect();
        self.update(&uid, |run| {
            run.started = true;
            run.seen_at_start = seen;
        });
        let _ = report(client, &namespace, &name, running_status(&spec)).await;

        // Until deletion, watch for the sidecar exiting on its own.
        tokio::select! {
            () = stop.cancelled() => {}
            status = async {
                match child.as_mut() {
                    Some(child) => child.wait().await.ok(),
                    None => std::future::pending().await,
                }
            } => {
                let code = status.and_then(|status| status.code()).unwrap_or(-1);
                self.update(&uid, |run| {
                    run.sidecar_exit = Some(code);
                    run.sidecar_pid = None;
                });
                child = None;
                stop.cancelled().await;
            }
        }
        self.terminate(pod, child, &uid, refresher).await
    }

    fn command(
        &self,
        container: &Container,
        env: &[(String, String)],
        owner: Option<(u32, u32)>,
        log: &Path,
    ) -> Result<Command, String> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("opening {}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let mut command = Command::new(&self.binary);
        command
            .args(container.args.iter().flatten())
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(self.process_group)
            .kill_on_drop(true);
        if let Some((uid, gid)) = owner {
            command.uid(uid).gid(gid);
        }
        Ok(command)
    }

    /// Runs the exec startup probe until it passes; fails when it fails
    /// `failureThreshold` times or the sidecar exits.
    async fn probe(
        &self,
        container: &Container,
        probe: &k8s_openapi::api::core::v1::Probe,
        env: &[(String, String)],
        owner: Option<(u32, u32)>,
        mut child: Option<&mut Child>,
        stop: &CancellationToken,
    ) -> Result<(), String> {
        let Some(args) = probe.exec.as_ref().and_then(|exec| exec.command.as_ref()) else {
            return Ok(());
        };
        let period =
            Duration::from_secs(u64::try_from(probe.period_seconds.unwrap_or(10)).unwrap_or(10));
        let threshold = probe.failure_threshold.unwrap_or(3);
        let probe_container = Container {
            args: Some(args.iter().skip(1).cloned().collect()),
            ..container.clone()
        };
        let mut failures = 0;
        loop {
            let mut command =
                self.command(&probe_container, env, owner, &self.logs.join("probes.log"))?;
            command.kill_on_drop(true);
            let passed = tokio::time::timeout(period.max(Duration::from_secs(1)), command.status())
                .await
                .ok()
                .and_then(Result::ok)
                .is_some_and(|status| status.success());
            if passed {
                return Ok(());
            }
            failures += 1;
            if failures >= threshold {
                return Err(format!("startup probe failed {failures} times"));
            }
            if let Some(child) = child.as_deref_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!("the sidecar exited before it was ready: {status}"));
            }
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                () = tokio::time::sleep(period) => {}
            }
        }
    }

    /// SIGTERM, the grace period, SIGKILL; then the token refresher stops.
    async fn terminate(
        &self,
        pod: &Pod,
        child: Option<Child>,
        uid: &str,
        refresher: tokio::task::JoinHandle<()>,
    ) -> Result<(), String> {
        if let Some(mut child) = child {
            let grace = pod
                .metadata
                .deletion_grace_period_seconds
                .or_else(|| {
                    pod.spec
                        .as_ref()
                        .and_then(|spec| spec.termination_grace_period_seconds)
                })
                .unwrap_or(30);
            if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            let grace = Duration::from_secs(u64::try_from(grace.max(1)).unwrap_or(1));
            let status = match tokio::time::timeout(grace, child.wait()).await {
                Ok(status) => status.ok(),
                Err(_) => {
                    let _ = child.kill().await;
                    child.wait().await.ok()
                }
            };
            let code = status.and_then(|status| status.code()).unwrap_or(-1);
            self.update(uid, |run| {
                run.sidecar_exit = Some(code);
                run.sidecar_pid = None;
            });
        }
        let left = memory_volumes(pod)
            .into_iter()
            .filter_map(|name| {
                let dir = self.pods_dir.join(uid).join("volumes").join(&name);
                dir.is_dir().then(|| (name, list_files(&dir, true)))
            })
            .collect();
        self.update(uid, |run| run.left_at_exit = left);
        refresher.abort();
        Ok(())
    }
}

/// A projected service-account token file.
#[derive(Clone)]
struct ProjectedToken {
    file: PathBuf,
    audience: String,
    seconds: i64,
    mode: u32,
}

impl ProjectedToken {
    async fn write(
        &self,
        client: &kube::Client,
        pod: &Pod,
        owner: Option<(u32, u32)>,
    ) -> Result<(), String> {
        let token = crate::pod_bound_token(client, pod, &self.audience, self.seconds)
            .await
            .map_err(|e| format!("TokenRequest: {e}"))?;
        let temporary = self.file.with_extension("tmp");
        std::fs::write(&temporary, token).map_err(|e| format!("writing the token: {e}"))?;
        set_mode(&temporary, self.mode)?;
        if let Some((uid, gid)) = owner {
            chown(&temporary, Some(uid), Some(gid))?;
        }
        std::fs::rename(&temporary, &self.file).map_err(|e| format!("placing the token: {e}"))
    }
}

async fn refresh_tokens(
    client: kube::Client,
    pod: Pod,
    tokens: Vec<ProjectedToken>,
    owner: Option<(u32, u32)>,
    stop: CancellationToken,
) {
    let Some(shortest) = tokens.iter().map(|token| token.seconds).min() else {
        return;
    };
    let every = Duration::from_secs(u64::try_from(shortest * 4 / 5).unwrap_or(60).max(1));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        for token in &tokens {
            if let Err(error) = token.write(&client, &pod, owner).await {
                tracing::warn!(%error, "node stand-in: refreshing a token failed");
            }
        }
    }
}

/// The uid and gid a container runs as, when the harness may switch to
/// them (it runs as root).
fn user_of(
    container: &Container,
    pod: &k8s_openapi::api::core::v1::PodSecurityContext,
) -> Option<(u32, u32)> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let context = container.security_context.as_ref();
    let uid = context
        .and_then(|c| c.run_as_user)
        .or(pod.run_as_user)
        .and_then(|uid| u32::try_from(uid).ok())?;
    let gid = context
        .and_then(|c| c.run_as_group)
        .or(pod.run_as_group)
        .and_then(|gid| u32::try_from(gid).ok())
        .unwrap_or(uid);
    Some((uid, gid))
}

/// The container's environment: plain values and the downward API, with
/// paths under its mounts mapped to the volumes' host directories.
fn resolve_env(
    container: &Container,
    pod: &Pod,
    volumes: &BTreeMap<String, PathBuf>,
) -> Result<Vec<(String, String)>, String> {
    let mounts: Vec<(String, PathBuf)> = container
        .volume_mounts
        .iter()
        .flatten()
        .filter_map(|mount| {
            volumes.get(&mount.name).map(|dir| {
                (
                    mount.mount_path.trim_end_matches('/').to_owned(),
                    dir.clone(),
                )
            })
        })
        .collect();
    let map_path = |value: String| {
        for (mount, dir) in &mounts {
            if value == *mount {
                return dir.display().to_string();
            }
            if let Some(rest) = value.strip_prefix(&format!("{mount}/")) {
                return dir.join(rest).display().to_string();
            }
        }
        value
    };
    let mut env = vec![("PATH".to_owned(), "/usr/bin:/bin".to_owned())];
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(value), _) => value.clone(),
            (None, Some(source)) => {
                let field = source
                    .field_ref
                    .as_ref()
                    .map(|field| field.field_path.as_str())
                    .ok_or_else(|| format!("env {}: only fieldRef is supported", var.name))?;
                match field {
                    "metadata.name" => pod.metadata.name.clone().unwrap_or_default(),
                    "metadata.namespace" => pod.metadata.namespace.clone().unwrap_or_default(),
                    "metadata.uid" => pod.metadata.uid.clone().unwrap_or_default(),
                    "spec.serviceAccountName" => pod
                        .spec
                        .as_ref()
                        .and_then(|spec| spec.service_account_name.clone())
                        .unwrap_or_default(),
                    "spec.nodeName" => NODE_NAME.to_owned(),
                    "status.podIP" | "status.hostIP" => "127.0.0.1".to_owned(),
                    other => {
                        return Err(format!(
                            "env {}: fieldRef {other} is not supported",
                            var.name
                        ));
                    }
                }
            }
            (None, None) => String::new(),
        };
        env.push((var.name.clone(), map_path(value)));
    }
    Ok(env)
}

/// The names of the pod's emptyDir volumes.
fn memory_volumes(pod: &Pod) -> Vec<String> {
    pod.spec
        .iter()
        .flat_map(|spec| spec.volumes.iter().flatten())
        .filter(|volume| volume.empty_dir.is_some())
        .map(|volume| volume.name.clone())
        .collect()
}

/// Every file under `dir` (symlinks followed), relative path, mode and
/// content; hidden entries (the writer's own) only with `hidden`.
fn list_files(dir: &Path, hidden: bool) -> Vec<SeenFile> {
    fn walk(root: &Path, dir: &Path, hidden: bool, out: &mut Vec<SeenFile>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if !hidden && entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let relative = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .display()
                .to_string();
            let Ok(metadata) = std::fs::metadata(&path) else {
                // A dangling symlink: still something left behind.
                out.push(SeenFile {
                    path: relative,
                    mode: 0,
                    content: Vec::new(),
                });
                continue;
            };
            if metadata.is_dir() {
                walk(root, &path, hidden, out);
            } else if let Ok(content) = std::fs::read(&path) {
                out.push(SeenFile {
                    path: relative,
                    mode: metadata.permissions().mode() & 0o7777,
                    content,
                });
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, dir, hidden, &mut files);
    files.sort_by(|a, b| a.path.cmp(&b.path));
    files
}

fn set_mode(path: &Path, mode: u32) -> Result<(), String> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", path.display()))
}

fn chown(path: &Path, uid: Option<u32>, gid: Option<u32>) -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    std::os::unix::fs::chown(path, uid, gid).map_err(|e| format!("chown {}: {e}", path.display()))
}

async fn register_node(client: &kube::Client) {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = match serde_json::from_value(json!({
        "metadata": {"name": NODE_NAME, "labels": {"kubernetes.io/hostname": NODE_NAME}},
    })) {
        Ok(node) => node,
        Err(error) => return tracing::warn!(%error, "node stand-in: node object"),
    };
    if let Err(error) = nodes.create(&PostParams::default(), &node).await
        && !matches!(&error, kube::Error::Api(status) if status.code == 409)
    {
        tracing::warn!(%error, "node stand-in: registering the node");
        return;
    }
    let status = json!({"status": {"conditions": [{
        "type": "Ready", "status": "True", "reason": "StandIn",
        "message": "ferry's e2e node stand-in (not a kubelet)",
        "lastHeartbeatTime": Time(k8s_openapi::jiff::Timestamp::now()),
        "lastTransitionTime": Time(k8s_openapi::jiff::Timestamp::now()),
    }]}});
    let _ = nodes
        .patch_status(NODE_NAME, &PatchParams::default(), &Patch::Merge(status))
        .await;
}

/// Binds a pending pod to the stand-in node (there is no scheduler).
async fn bind(client: &kube::Client, namespace: &str, name: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let binding = json!({
        "apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": name},
        "target": {"apiVersion": "v1", "kind": "Node", "name": NODE_NAME},
    });
    if let Err(error) = pods
        .create_subresource::<serde_json::Value, serde_json::Value>(
            "binding",
            name,
            &PostParams::default(),
            &binding,
        )
        .await
        && !matches!(&error, kube::Error::Api(status) if status.code == 409 || status.code == 404)
    {
        tracing::warn!(%error, pod = %format!("{namespace}/{name}"), "node stand-in: binding");
    }
}

/// Deletes the pod object for good, as a kubelet does once its
/// containers have stopped.
async fn finalise(client: &kube::Client, namespace: &str, name: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let _ = pods
        .delete(name, &DeleteParams::default().grace_period(0))
        .await;
}

async fn report(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    status: PodStatus,
) -> Result<(), kube::Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": status})),
    )
    .await
    .map(|_| ())
}

fn condition(kind: &str, status: bool) -> PodCondition {
    PodCondition {
        type_: kind.to_owned(),
        status: if status { "True" } else { "False" }.to_owned(),
        last_transition_time: Some(Time(k8s_openapi::jiff::Timestamp::now())),
        ..PodCondition::default()
    }
}

fn running(container: &Container, ready: bool) -> ContainerStatus {
    ContainerStatus {
        name: container.name.clone(),
        image: container.image.clone().unwrap_or_default(),
        image_id: String::new(),
        ready,
        started: Some(true),
        restart_count: 0,
        state: Some(ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(Time(k8s_openapi::jiff::Timestamp::now())),
            }),
            ..ContainerState::default()
        }),
        ..ContainerStatus::default()
    }
}

fn running_status(spec: &k8s_openapi::api::core::v1::PodSpec) -> PodStatus {
    PodStatus {
        phase: Some("Running".into()),
        host_ip: Some("127.0.0.1".into()),
        pod_ip: Some("127.0.0.1".into()),
        start_time: Some(Time(k8s_openapi::jiff::Timestamp::now())),
        conditions: Some(
            ["PodScheduled", "Initialized", "ContainersReady", "Ready"]
                .iter()
                .map(|kind| condition(kind, true))
                .collect(),
        ),
        init_container_statuses: Some(
            spec.init_containers
                .iter()
                .flatten()
                .map(|container| running(container, true))
                .collect(),
        ),
        container_statuses: Some(spec.containers.iter().map(|c| running(c, true)).collect()),
        ..PodStatus::default()
    }
}

fn failed_status(error: &str) -> PodStatus {
    PodStatus {
        phase: Some("Pending".into()),
        conditions: Some(vec![PodCondition {
            message: Some(error.to_owned()),
            reason: Some("StandInError".into()),
            ..condition("Ready", false)
        }]),
        ..PodStatus::default()
    }
}
