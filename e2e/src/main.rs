//! `ferry-e2e`: runs ferry's local demo on a real control plane built from
//! Kubernetes' published Go modules.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};

use ferry_api::resources::Grant;
use ferry_contract::{DEFAULT_MOUNT_PATH, SECRETS_VOLUME_NAME};

use ferry_e2e::images::{self, PSQL_IMAGE};
use ferry_e2e::{
    ClientSpec, Cluster, Hydra, HydraOptions, NODE_NAME, NodeStandIn, PodStack, Postgres,
    REAL_NODE_NAME, RealNode, Stack, postgres_bin_dir,
};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ListParams, LogParams, PostParams};

/// Command-line interface of the e2e harness.
#[derive(Debug, Parser)]
#[command(name = "ferry-e2e", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Debug, Subcommand)]
enum Commands {
    /// Start a local control plane (etcd, kube-apiserver,
    /// kube-controller-manager), PostgreSQL, a node and ferry, apply the
    /// examples, run the example pod (on a kubelet with containerd where
    /// this runs as root, else on the node stand-in), show its secrets and
    /// use them, delete the pod and show them gone; then stop everything.
    Demo {
        /// Leave everything running afterwards, for exploring with
        /// kubectl, until Ctrl-C.
        #[arg(long)]
        keep: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,kube_client::client::builder=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Commands::Demo { keep } => demo(keep).await,
    }
}

/// The repository, whose examples/ the demo applies (the README's examples,
/// also applied by the tests).
const REPOSITORY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

async fn demo(keep: bool) -> anyhow::Result<()> {
    eprintln!(
        "starting a local control plane, PostgreSQL and a node (the first run builds the control plane from Go modules: many minutes)..."
    );
    let ((cluster, real_node), database, crm_auth) = tokio::try_join!(
        async {
            let cluster = Cluster::start()
                .await
                .context("starting the control plane")?;
            let node = start_real_node(&cluster).await;
            anyhow::Ok((cluster, node))
        },
        async { Postgres::start().await.context("starting PostgreSQL") },
        async {
            Hydra::start(HydraOptions::default())
                .await
                .context("starting hydra, the CRM's OAuth2 server")
        },
    )?;
    println!("apiserver: {}", cluster.server());
    println!("kubeconfig: {}", cluster.kubeconfig().display());
    println!("control-plane process group: {}", cluster.process_group());
    println!("PostgreSQL: 127.0.0.1:{}", database.port());
    println!(
        "OAuth2 server (ory/hydra, standing in for a CRM's): {}",
        crm_auth.issuer()
    );
    println!("logs: {}", cluster.dir().join("logs").display());
    println!();

    eprintln!("installing ferry: CRDs, operator, broker and webhook...");
    let node = match real_node {
        Ok(node) => {
            let stack = PodStack::start(&cluster, &node).await?;
            DemoNode::Real {
                node: Box::new(node),
                stack,
            }
        }
        Err(why) => DemoNode::StandIn {
            stack: Stack::start(&cluster).await?,
            why,
        },
    };
    let client = cluster.client()?;
    println!(
        "webhook: {} (registered as inject.ferry.dev)",
        node.webhook_url()
    );
    println!("broker: {}", node.broker_url());
    match &node {
        DemoNode::Real { .. } => println!(
            "node: {REAL_NODE_NAME}, a kubelet with containerd running the pods' containers (on the host's network)"
        ),
        DemoNode::StandIn { why, .. } => println!(
            "node: {NODE_NAME}, a stand-in for the kubelet that runs the sidecar binary as a local process (no real node: {why})"
        ),
    }
    println!();

    // The database owner's side: the orders table, the orders_reader role,
    // and the broker's admin role with a random password that goes only
    // into the Secret.
    let admin_password = format!("{:032x}", rand_u128());
    run_sql_file(&database, "examples/orders-db.sql", &admin_password)?;
    println!(
        "$ psql -f examples/orders-db.sql   # table orders, role orders_reader, role broker_admin"
    );
    println!();
    show(
        &cluster,
        &["create", "namespace", "payments", "--save-config"],
    )?;
    // Through the API rather than kubectl's command line, where any local
    // user could read it.
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "orders-db-admin", "labels": {"ferry.dev/brokerable": "true"}},
        "stringData": {"dsn": database.dsn("broker_admin", &admin_password)},
    }))?;
    Api::<Secret>::namespaced(client.clone(), "payments")
        .create(&PostParams::default(), &secret)
        .await?;
    println!("(created Secret payments/orders-db-admin: the broker's admin connection string)");
    println!();
    show(&cluster, &["apply", "-f", "examples/access.yaml"])?;
    crm_client(&cluster, &crm_auth).await?;
    let grants = Api::<Grant>::namespaced(client.clone(), "shop");
    wait_for("the Grants for shop/checkout", || async {
        Ok(grants.list(&ListParams::default()).await?.items.len() == 3)
    })
    .await?;
    let manifest = demo_pod(&cluster, matches!(node, DemoNode::Real { .. }))?;
    // The webhook's Grant index follows the operator's write within moments.
    wait_for("the webhook to admit the example pod", || async {
        let output = cluster
            .kubectl()
            .current_dir(REPOSITORY)
            .arg("apply")
            .arg("-f")
            .arg(&manifest)
            .output()?;
        Ok(output.status.success())
    })
    .await?;
    println!("$ kubectl apply -f {}", manifest.display());
    println!(
        "  # examples/pod.yaml, also asking for sales/crm in its ferry.dev/secrets annotation"
    );
    if let DemoNode::Real { .. } = node {
        println!(
            "  # and made to run here: image {PSQL_IMAGE} (imported; nothing is pulled), the host's network (the broker listens on its loopback), and as the app:"
        );
        for line in app_script().lines() {
            println!("  #   {line}");
        }
    }
    println!("pod/checkout created");
    println!();
    show(&cluster, &["get", "bs,ap,grants", "-A"])?;

    let uid = Api::<Pod>::namespaced(client.clone(), "shop")
        .get("checkout")
        .await?
        .metadata
        .uid
        .context("the pod has no uid")?;
    let (username, crm_token) = match &node {
        DemoNode::Real { node, .. } => app_on_real_node(&cluster, node, &uid, &crm_auth).await?,
        DemoNode::StandIn { stack, .. } => {
            app_on_stand_in(&cluster, &stack.node, &uid, &crm_auth).await?
        }
    };
    let remaining = database
        .admin()
        .await?
        .query("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&username])
        .await?
        .len();
    println!("$ psql -c \"SELECT rolname FROM pg_roles WHERE rolname = '{username}'\"");
    println!("({remaining} rows)   # the sidecar revoked the lease; the broker dropped the role");
    println!();
    // The sidecar revoked the crm lease as the pod ended; the broker
    // revokes the token at the server (RFC 7009).
    wait_for("the CRM token to be revoked at hydra", || async {
        Ok(crm_auth.introspect(&crm_token).await?["active"] == false)
    })
    .await?;
    println!(
        "$ curl {} -d token=...   # the pod's CRM token, asked again",
        crm_auth.introspection_url()
    );
    println!(
        "{}   # the broker revoked it at hydra when the pod ended",
        crm_auth.introspect(&crm_token).await?
    );
    println!();

    if keep {
        println!(
            "Everything keeps running. Try: export KUBECONFIG={}",
            cluster.kubeconfig().display()
        );
        println!(
            "  kubectl apply -f {}; kubectl get pods -A",
            Path::new(REPOSITORY).join(&manifest).display()
        );
        println!("Press Ctrl-C to stop everything.");
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
    }
    // What must be gone once everything stops: the process groups, the
    // private directories, the real node's cgroups and mount namespace,
    // and (checked before the server stops) every role the broker made.
    let groups = [
        cluster.process_group(),
        database.process_group(),
        crm_auth.process_group(),
        node.process_group()?,
    ];
    let dirs = [
        cluster.dir().to_path_buf(),
        database.dir().to_path_buf(),
        crm_auth.dir().to_path_buf(),
        node.dir(),
    ];
    let node_namespace = match &node {
        DemoNode::Real { node, .. } => Some((node.cgroup_root().to_owned(), node.init_pid())),
        DemoNode::StandIn { .. } => None,
    };
    let ferry_roles = database
        .admin()
        .await?
        .query(
            "SELECT 1 FROM pg_roles WHERE starts_with(rolname, $1)",
            &[&ferry_broker::providers::postgres::ROLE_PREFIX],
        )
        .await?
        .len();
    println!(
        "process groups: {}",
        groups.map(|group| group.to_string()).join(" ")
    );
    println!(
        "directories: {}",
        dirs.iter()
            .map(|dir| dir.display().to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    if let Some((cgroup_root, _)) = &node_namespace {
        println!("node cgroup root: {cgroup_root}");
    }
    eprintln!("stopping ferry, the node, PostgreSQL and the control plane...");
    drop(node);
    drop(crm_auth);
    drop(database);
    drop(cluster);
    let mut left = Vec::new();
    if ferry_roles > 0 {
        left.push(format!("{ferry_roles} ferry roles in PostgreSQL"));
    }
    for group in groups {
        // Signal 0 only asks whether any process of the group is left.
        if nix::sys::signal::killpg(nix::unistd::Pid::from_raw(group), None).is_ok() {
            left.push(format!("processes of group {group}"));
        }
    }
    left.extend(
        dirs.iter()
            .filter(|dir| dir.exists())
            .map(|dir| format!("directory {}", dir.display())),
    );
    if let Some((cgroup_root, init_pid)) = &node_namespace {
        left.extend(cgroups_named(cgroup_root).map(|dir| format!("cgroup {}", dir.display())));
        // The containers' mounts live and die with the node's namespace.
        if Path::new(&format!("/proc/{init_pid}")).exists() {
            left.push(format!("the node's namespace (init PID {init_pid})"));
        }
    }
    if !left.is_empty() {
        anyhow::bail!("stopped, but left behind: {}", left.join(", "));
    }
    eprintln!(
        "stopped; nothing left behind: no ferry role, no process of {} groups, none of {} directories{}.",
        groups.len(),
        dirs.len(),
        if node_namespace.is_some() {
            ", no container, cgroup or mount of the node"
        } else {
            ""
        }
    );
    Ok(())
}

/// The CRM team's side of examples/crm.yaml: an OAuth2 client at hydra
/// that may ask for contacts.read and contacts.write, its credentials in
/// the one Secret the broker reads, and the example applied with this
/// hydra's endpoints.
async fn crm_client(cluster: &Cluster, hydra: &Hydra) -> anyhow::Result<()> {
    let client_secret = zeroize::Zeroizing::new(format!("{:032x}", rand_u128()));
    hydra
        .create_client(&ClientSpec {
            client_id: "crm-reports".into(),
            client_secret: Some(client_secret.to_string()),
            grant_types: vec!["client_credentials".into()],
            scope: "contacts.read contacts.write".into(),
            audience: vec![CRM_AUDIENCE.into()],
            ..ClientSpec::default()
        })
        .await?;
    println!(
        "$ hydra create oauth2-client --name crm-reports --grant-type client_credentials --scope contacts.read,contacts.write --audience {CRM_AUDIENCE}"
    );
    println!(
        "(the CRM's side: a client for the sales team, its secret generated and kept from view)"
    );
    println!();
    let example = Path::new(REPOSITORY).join("examples/crm.yaml");
    let yaml = std::fs::read_to_string(&example)
        .with_context(|| format!("reading {}", example.display()))?
        .replace("https://auth.crm.example/oauth2/token", &hydra.token_url())
        .replace(
            "https://auth.crm.example/oauth2/revoke",
            &hydra.revocation_url(),
        );
    let applied = cluster.dir().join("crm.yaml");
    std::fs::write(&applied, yaml).with_context(|| format!("writing {}", applied.display()))?;
    println!(
        "$ kubectl apply -f examples/crm.yaml   # tokenUrl and revocationUrl: {}",
        hydra.issuer()
    );
    let status = cluster
        .kubectl()
        .arg("apply")
        .arg("-f")
        .arg(&applied)
        .status()?;
    anyhow::ensure!(
        status.success(),
        "kubectl apply -f examples/crm.yaml failed: {status}"
    );
    println!();
    // Through the API, like the admin DSN: never on a command line.
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "crm-client", "labels": {"ferry.dev/brokerable": "true"}},
        "stringData": {
            "client_id": "crm-reports",
            "client_secret": client_secret.as_str(),
            "ca.crt": hydra.ca_pem(),
        },
    }))?;
    Api::<Secret>::namespaced(cluster.client()?, "sales")
        .create(&PostParams::default(), &secret)
        .await?;
    println!(
        "(created Secret sales/crm-client: client_id, client_secret and the server's CA, ca.crt)"
    );
    println!();
    Ok(())
}

/// The audience of the CRM's API.
const CRM_AUDIENCE: &str = "https://api.crm.example";

/// Shows what the CRM's server says of the pod's access token: its
/// introspection (RFC 7662), the token itself left out.
async fn show_crm_token(
    hydra: &Hydra,
    secrets: &Path,
) -> anyhow::Result<zeroize::Zeroizing<String>> {
    let token = read_secret(&secrets.join("crm/access_token"))?;
    println!(
        "crm/access_token is an opaque token from hydra; its introspection ($ curl {} -d token=...):",
        hydra.introspection_url()
    );
    let found = hydra.introspect(&token).await?;
    println!(
        "  {}",
        serde_json::json!({
            "active": found["active"],
            "client_id": found["client_id"],
            "scope": found["scope"],
            "aud": found["aud"],
            "exp": found["exp"],
        })
    );
    println!(
        "  # contacts.read only: the policy narrowed the secret's scopes, and hydra issued the narrower token"
    );
    println!();
    Ok(token)
}

/// Where the example pod runs.
enum DemoNode {
    /// A kubelet with containerd: the app is the psql image. Declared
    /// first, so the node stops before ferry.
    Real {
        node: Box<RealNode>,
        stack: PodStack,
    },
    /// The stand-in runs only the sidecar; the demo runs psql for the app.
    StandIn { stack: Stack, why: String },
}

impl DemoNode {
    fn webhook_url(&self) -> String {
        match self {
            Self::Real { stack, .. } => stack.webhook.url(),
            Self::StandIn { stack, .. } => stack.webhook.url(),
        }
    }

    fn broker_url(&self) -> String {
        match self {
            Self::Real { stack, .. } => stack.broker_url().to_owned(),
            Self::StandIn { stack, .. } => stack.broker.url(),
        }
    }

    fn process_group(&self) -> anyhow::Result<i32> {
        match self {
            Self::Real { node, .. } => node.process_group().context("the node has stopped"),
            Self::StandIn { stack, .. } => Ok(stack.node.process_group()),
        }
    }

    fn dir(&self) -> PathBuf {
        match self {
            Self::Real { node, .. } => node.dir().to_path_buf(),
            Self::StandIn { stack, .. } => stack.node.dir().to_path_buf(),
        }
    }
}

/// Starts the real node with the psql image, or says in one line why it
/// cannot run here.
async fn start_real_node(cluster: &Cluster) -> Result<RealNode, String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("containers need root, and this runs as a user".into());
    }
    let one_line = |error: ferry_e2e::HarnessError| {
        error
            .to_string()
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    let images = cluster.dir().join("images");
    let (node, psql) = tokio::join!(RealNode::start(cluster), images::build_psql_image(&images));
    let node = node.map_err(one_line)?;
    node.import_images(&psql.map_err(one_line)?)
        .map_err(one_line)?;
    Ok(node)
}

/// What the app container runs on the real node: it lists what it found in
/// its secrets volume, then uses the DSN file with psql (echoing each
/// query), then waits to be stopped.
fn app_script() -> String {
    format!(
        r#"cd {DEFAULT_MOUNT_PATH}
for f in */*; do printf '  %s  %5s bytes  %s\n' "$(stat -L -c %a "$f")" "$(stat -L -c %s "$f")" "$f"; done
dsn=$(cat orders-db/dsn)
# The password goes to libpq's environment, not psql's command line (ps shows that to anyone).
export PGPASSWORD="$(cat orders-db/password)"
for sql in 'SELECT id, item FROM orders ORDER BY id' 'DELETE FROM orders'; do
  psql "${{dsn%%://*}}://$(cat orders-db/username)@${{dsn#*@}}" --echo-queries -c "$sql" 2>&1
done
echo {APP_DONE}
trap 'exit 0' TERM
sleep 3600 & wait"#
    )
}

/// The line [`app_script`] logs once it has run its queries.
const APP_DONE: &str = "queried";

/// Writes examples/pod.yaml as the demo runs it: asking for sales/crm too,
/// and on the real node, with the psql image, which is imported and cannot
/// be pulled; the host's network, where the broker listens on loopback;
/// [`app_script`] as the app. Returns its path.
fn demo_pod(cluster: &Cluster, real_node: bool) -> anyhow::Result<PathBuf> {
    let example = Path::new(REPOSITORY).join("examples/pod.yaml");
    let mut pod: serde_json::Value = serde_yaml::from_str(
        &std::fs::read_to_string(&example)
            .with_context(|| format!("reading {}", example.display()))?,
    )?;
    let secrets = &mut pod["metadata"]["annotations"][ferry_contract::SECRETS_ANNOTATION];
    let asked = secrets
        .as_str()
        .context("examples/pod.yaml names no secrets")?;
    *secrets = format!("{asked},sales/crm").into();
    let path = cluster.dir().join("checkout-pod.yaml");
    if !real_node {
        std::fs::write(&path, serde_yaml::to_string(&pod)?)
            .with_context(|| format!("writing {}", path.display()))?;
        return Ok(path);
    }
    pod["spec"]["hostNetwork"] = true.into();
    let app = pod["spec"]["containers"]
        .get_mut(0)
        .context("examples/pod.yaml has no container")?;
    app["image"] = PSQL_IMAGE.into();
    app["imagePullPolicy"] = "Never".into();
    app["command"] = serde_json::json!(["/bin/sh", "-c", app_script()]);
    std::fs::write(&path, serde_yaml::to_string(&pod)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Shows the example pod running on the real node: its containers, its
/// secrets volume, and the app's own log of what it found and queried;
/// then deletes it and shows the volume gone. Returns the app's role.
async fn app_on_real_node(
    cluster: &Cluster,
    node: &RealNode,
    uid: &str,
    crm_auth: &Hydra,
) -> anyhow::Result<(String, zeroize::Zeroizing<String>)> {
    let client = cluster.client()?;
    node.wait_pod(
        &client,
        "shop",
        "checkout",
        "the app and its sidecar ready",
        POD_DEADLINE,
        pod_ready,
    )
    .await?;
    show(
        cluster,
        &["-n", "shop", "get", "pod", "checkout", "-o", "wide"],
    )?;
    let volume = secrets_mount(&node.mounts(), uid)
        .context("the node has no tmpfs mounted for the pod's secrets volume")?;
    println!(
        "The pod's secrets volume is a tmpfs the kubelet mounted at {} on the node.",
        volume.display()
    );
    let secrets = node.node_path(&volume);
    let token = read_secret(&secrets.join("orders-api-token/token"))?;
    println!("orders-api-token/token is a JWT the broker signed; its claims:");
    println!("  {}", jwt_claims(&token)?);
    println!();
    let crm_token = show_crm_token(crm_auth, &secrets).await?;

    // A role name is not secret; its password is.
    let username = read_secret(&secrets.join("orders-db/username"))?.to_string();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    let app_log = LogParams {
        container: Some("app".into()),
        ..LogParams::default()
    };
    wait_for("the app to run its queries", || async {
        Ok(pods
            .logs("checkout", &app_log)
            .await?
            .lines()
            .any(|line| line == APP_DONE))
    })
    .await?;
    println!(
        "The app's log: what it found in its secrets volume, then its PostgreSQL role {username} at work, for what orders_reader may do:"
    );
    show(cluster, &["-n", "shop", "logs", "checkout", "-c", "app"])?;

    show(cluster, &["-n", "shop", "delete", "pod", "checkout"])?;
    wait_for("the kubelet to remove the pod's volume", || async {
        Ok(!secrets.exists() && secrets_mount(&node.mounts(), uid).is_none())
    })
    .await?;
    println!("$ ls {}   # on the node", volume.display());
    println!("ls: {}: No such file or directory", volume.display());
    Ok((username, crm_token))
}

/// Shows the example pod on the node stand-in: what the app would have
/// found when it started, and psql run here with those files; then deletes
/// it and shows the volume gone. Returns the app's role.
async fn app_on_stand_in(
    cluster: &Cluster,
    stand_in: &NodeStandIn,
    uid: &str,
    crm_auth: &Hydra,
) -> anyhow::Result<(String, zeroize::Zeroizing<String>)> {
    let mut run = None;
    wait_for("the sidecar's startup probe to pass", || {
        let found = stand_in.pod(uid).filter(|run| run.started);
        let started = found.is_some();
        run = found;
        async move { Ok(started) }
    })
    .await?;
    let run = run.context("the pod did not start")?;
    show(
        cluster,
        &["-n", "shop", "get", "pod", "checkout", "-o", "wide"],
    )?;
    let secrets = run.volumes[SECRETS_VOLUME_NAME].clone();
    println!(
        "The pod's secrets volume is the tmpfs directory {}; what `app` found there when it started:",
        secrets.display()
    );
    for file in &run.seen_at_start[SECRETS_VOLUME_NAME] {
        println!(
            "  {:o}  {:>5} bytes  {}",
            file.mode,
            file.content.len(),
            file.path
        );
    }
    println!();
    let token = read_secret(&secrets.join("orders-api-token/token"))?;
    println!("orders-api-token/token is a JWT the broker signed; its claims:");
    println!("  {}", jwt_claims(&token)?);
    println!();
    let crm_token = show_crm_token(crm_auth, &secrets).await?;

    // A role name is not secret; its password is.
    let username = read_secret(&secrets.join("orders-db/username"))?.to_string();
    println!("The app's PostgreSQL role {username} works, for what orders_reader may do:");
    psql_as_app(&secrets, "SELECT id, item FROM orders ORDER BY id")?;
    psql_as_app(&secrets, "DELETE FROM orders")?;
    println!();

    show(cluster, &["-n", "shop", "delete", "pod", "checkout"])?;
    wait_for("the pod to be torn down", || async {
        Ok(stand_in.pod(uid).is_some_and(|run| run.finished))
    })
    .await?;
    println!("$ ls {}", secrets.display());
    println!(
        "ls: {}: {}",
        secrets.display(),
        if secrets.exists() {
            "still there (unexpected)"
        } else {
            "No such file or directory"
        }
    );
    Ok((username, crm_token))
}

/// How long the example pod may take to be ready on the real node.
const POD_DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);

/// Whether the pod reports Ready: the sidecar started, the app runs.
fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|status| status.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

/// Where the node mounted the tmpfs of pod `uid`'s secrets volume, from
/// the node's mount table (`/proc/<pid>/mountinfo`).
fn secrets_mount(mountinfo: &str, uid: &str) -> Option<PathBuf> {
    let suffix = format!("/pods/{uid}/volumes/kubernetes.io~empty-dir/{SECRETS_VOLUME_NAME}");
    mountinfo.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        let point = mount.split(' ').nth(4)?;
        (fs.starts_with("tmpfs ") && point.ends_with(&suffix)).then(|| PathBuf::from(point))
    })
}

/// The cgroups named `root` that exist, one per cgroup v1 hierarchy.
fn cgroups_named(root: &str) -> impl Iterator<Item = PathBuf> {
    let root = root.to_owned();
    std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .map(move |hierarchy| hierarchy.path().join(&root))
        .filter(|dir| dir.is_dir())
}

/// Runs an example SQL file as the database's superuser, with psql.
fn run_sql_file(database: &Postgres, file: &str, broker_password: &str) -> anyhow::Result<()> {
    let output = std::process::Command::new(postgres_bin_dir()?.join("psql"))
        .current_dir(REPOSITORY)
        .env("PGPASSWORD", database.admin_password())
        .args(["-h", "127.0.0.1", "-p", &database.port().to_string()])
        .args([
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-q",
        ])
        .arg("-v")
        .arg(format!("broker_password={broker_password}"))
        .args(["-f", file])
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "psql -f {file}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// Runs `sql` with psql as the app would: with the connection string from
/// its secrets volume, passed in the environment rather than shown.
fn psql_as_app(secrets: &Path, sql: &str) -> anyhow::Result<()> {
    let dsn = read_secret(&secrets.join("orders-db/dsn"))?;
    println!("$ psql \"$(cat orders-db/dsn)\" -c '{sql}'");
    // libpq's environment, so the password is on no command line.
    let config: tokio_postgres::Config = dsn.parse()?;
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        _ => anyhow::bail!("the dsn names no TCP host"),
    };
    let password = zeroize::Zeroizing::new(String::from_utf8(
        config.get_password().unwrap_or_default().to_vec(),
    )?);
    let output = std::process::Command::new(postgres_bin_dir()?.join("psql"))
        .env("PGHOST", host)
        .env(
            "PGPORT",
            config.get_ports().first().unwrap_or(&5432).to_string(),
        )
        .env("PGUSER", config.get_user().unwrap_or_default())
        .env("PGPASSWORD", password.as_str())
        .env("PGDATABASE", config.get_dbname().unwrap_or_default())
        .args(["-c", sql])
        .output()?;
    print!("{}", String::from_utf8_lossy(&output.stdout));
    print!("{}", String::from_utf8_lossy(&output.stderr));
    Ok(())
}

/// A secret file's content, wiped from memory when dropped.
fn read_secret(path: &Path) -> anyhow::Result<zeroize::Zeroizing<String>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(zeroize::Zeroizing::new(String::from_utf8(bytes)?))
}

/// The claims of a JWT, without its signature (which would make the token
/// usable).
fn jwt_claims(token: &str) -> anyhow::Result<String> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).context("not a JWT")?;
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload)?;
    Ok(String::from_utf8(claims)?)
}

/// Runs kubectl with the command and its output shown.
fn show(cluster: &Cluster, args: &[&str]) -> anyhow::Result<()> {
    println!(
        "$ kubectl {}",
        args.join(" ")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    );
    let status = cluster
        .kubectl()
        .current_dir(REPOSITORY)
        .args(args)
        .status()?;
    anyhow::ensure!(
        status.success(),
        "kubectl {} failed: {status}",
        args.join(" ")
    );
    println!();
    Ok(())
}

/// Polls `check` until it holds, for at most a minute.
async fn wait_for<F, Fut>(what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !check().await? {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    Ok(())
}

/// 128 random bits from the OS, for the demo's throwaway token.
fn rand_u128() -> u128 {
    let mut bytes = [0u8; 16];
    if let Ok(mut urandom) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = urandom.read_exact(&mut bytes);
    }
    u128::from_le_bytes(bytes)
}
