//! `ferry-e2e`: runs ferry's local demo on a real control plane built from
//! Kubernetes' published Go modules.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::Path;

use ferry_api::resources::Grant;
use ferry_contract::SECRETS_VOLUME_NAME;
use ferry_e2e::{Cluster, NODE_NAME, Postgres, Stack, postgres_bin_dir};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ListParams, PostParams};

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
    /// kube-controller-manager), PostgreSQL and ferry, apply the examples,
    /// run the example pod on the node stand-in, show its secrets and use
    /// them, delete the pod and show them gone; then stop everything.
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
        "starting a local control plane and PostgreSQL (the first run builds the control plane from Go modules: many minutes)..."
    );
    let (cluster, database) = tokio::try_join!(
        async { Cluster::start().await.context("starting the control plane") },
        async { Postgres::start().await.context("starting PostgreSQL") },
    )?;
    println!("apiserver: {}", cluster.server());
    println!("kubeconfig: {}", cluster.kubeconfig().display());
    println!("control-plane process group: {}", cluster.process_group());
    println!("PostgreSQL: 127.0.0.1:{}", database.port());
    println!("logs: {}", cluster.dir().join("logs").display());
    println!();

    eprintln!("installing ferry: CRDs, operator, broker, webhook and a node stand-in...");
    let stack = Stack::start(&cluster).await?;
    let client = cluster.client()?;
    println!(
        "webhook: {} (registered as inject.ferry.dev)",
        stack.webhook.url()
    );
    println!("broker: {}", stack.broker_url());
    println!(
        "node: {NODE_NAME}, a stand-in for the kubelet that runs the sidecar binary as a local process"
    );
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
    let grants = Api::<Grant>::namespaced(client.clone(), "shop");
    wait_for("the Grants for shop/checkout", || async {
        Ok(grants.list(&ListParams::default()).await?.items.len() == 2)
    })
    .await?;
    // The webhook's Grant index follows the operator's write within moments.
    wait_for("the webhook to admit the example pod", || async {
        let output = cluster
            .kubectl()
            .current_dir(REPOSITORY)
            .args(["apply", "-f", "examples/pod.yaml"])
            .output()?;
        Ok(output.status.success())
    })
    .await?;
    println!("$ kubectl apply -f examples/pod.yaml");
    println!("pod/checkout created");
    println!();
    show(&cluster, &["get", "bs,ap,grants", "-A"])?;

    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    let uid = pods
        .get("checkout")
        .await?
        .metadata
        .uid
        .context("the pod has no uid")?;
    let mut run = None;
    wait_for("the sidecar's startup probe to pass", || {
        let found = stack.node.pod(&uid).filter(|run| run.started);
        let started = found.is_some();
        run = found;
        async move { Ok(started) }
    })
    .await?;
    let run = run.context("the pod did not start")?;
    show(
        &cluster,
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

    // A role name is not secret; its password is.
    let username = read_secret(&secrets.join("orders-db/username"))?.to_string();
    println!("The app's PostgreSQL role {username} works, for what orders_reader may do:");
    psql_as_app(&secrets, "SELECT id, item FROM orders ORDER BY id")?;
    psql_as_app(&secrets, "DELETE FROM orders")?;
    println!();

    show(&cluster, &["-n", "shop", "delete", "pod", "checkout"])?;
    wait_for("the pod to be torn down", || async {
        Ok(stack.node.pod(&uid).is_some_and(|run| run.finished))
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
    let remaining = database
        .admin()
        .await?
        .query("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&username])
        .await?
        .len();
    println!("$ psql -c \"SELECT rolname FROM pg_roles WHERE rolname = '{username}'\"");
    println!("({remaining} rows)   # the sidecar revoked the lease; the broker dropped the role");
    println!();

    if keep {
        println!(
            "Everything keeps running. Try: export KUBECONFIG={}",
            cluster.kubeconfig().display()
        );
        println!("  kubectl apply -f examples/pod.yaml; kubectl get pods -A");
        println!("Press Ctrl-C to stop everything.");
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
    }
    // What must be gone once everything stops: the process groups, the
    // private directories, and (checked before the server stops) every
    // role the broker made.
    let groups = [
        cluster.process_group(),
        database.process_group(),
        stack.node.process_group(),
    ];
    let dirs = [
        cluster.dir().to_path_buf(),
        database.dir().to_path_buf(),
        stack.node.dir().to_path_buf(),
    ];
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
    eprintln!("stopping ferry, PostgreSQL and the control plane...");
    drop(stack);
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
    if !left.is_empty() {
        anyhow::bail!("stopped, but left behind: {}", left.join(", "));
    }
    eprintln!(
        "stopped; nothing left behind: no ferry role, no process of {} groups, none of {} directories.",
        groups.len(),
        dirs.len()
    );
    Ok(())
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
