//! Cluster-sized scale, on the real control plane with ferry's release
//! binaries as processes: N namespaces, each with K BrokeredSecrets and P
//! AccessPolicies granting all K secrets to S service accounts of their
//! namespace, so G = N·P·S·K Grants (defaults 2,000 × 5 × 5 × 2 =
//! 100,000 Grants from 10,000 policies). Measured:
//!
//! - the operator, started with every object already in etcd: time until
//!   all G Grants exist, then until every policy is Ready; its peak RSS;
//!   the apiserver's request counts for ferry's resources meanwhile (from
//!   its own `apiserver_request_total`, the bench's own polls subtracted);
//! - one policy edit (a subject removed) until its Grant is gone, p50/p99
//!   over FERRY_BENCH_EDITS edits at that size;
//! - the webhook and the broker: RSS with no Grants and with G (they
//!   watched the Grants arrive), per Grant; and a second instance of each
//!   started at that size: time to `/readyz` and its RSS.
//!
//! Not a test: nothing is asserted about the numbers. Run with `make
//! bench-scale` (or `cargo bench -p ferry-e2e --bench scale`). Quick run:
//! `FERRY_BENCH_NAMESPACES=200 make bench-scale` (10,000 Grants).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_api::resources::{AccessPolicy, BrokeredSecret, Grant};
use ferry_e2e::pki::CertFiles;
use ferry_e2e::{
    Cluster, KillOnDrop, bench_setting, free_port, install_crds, memory_kib, percentile,
    wait_admin_ready, workspace_binary,
};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

/// Objects created at once while filling etcd.
const CONCURRENCY: usize = 64;

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The shape of the cluster.
#[derive(Clone, Copy)]
struct Shape {
    namespaces: u64,
    policies: u64,
    subjects: u64,
    secrets: u64,
}

impl Shape {
    fn grants(self) -> u64 {
        self.namespaces * self.policies * self.subjects * self.secrets
    }
}

fn namespace(n: u64) -> String {
    format!("team-{n:05}")
}

/// Creates every namespace, BrokeredSecret and AccessPolicy.
async fn fill(client: &kube::Client, shape: Shape) {
    futures::stream::iter(0..shape.namespaces)
        .map(|n| {
            let client = client.clone();
            async move {
                let ns = namespace(n);
                let object: Namespace =
                    serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
                Api::<Namespace>::all(client.clone())
                    .create(&PostParams::default(), &object)
                    .await
                    .unwrap();
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<()>>()
        .await;
    let secrets = (0..shape.namespaces).flat_map(|n| (0..shape.secrets).map(move |k| (n, k)));
    futures::stream::iter(secrets)
        .map(|(n, k)| {
            let client = client.clone();
            async move {
                let ns = namespace(n);
                let secret: BrokeredSecret = serde_json::from_value(json!({
                    "apiVersion": "ferry.dev/v1alpha1", "kind": "BrokeredSecret",
                    "metadata": {"name": format!("secret-{k}")},
                    "spec": {"ttl": "10m", "maxTtl": "1h",
                             "source": {"kubernetesSecret": {"name": format!("source-{k}")}}},
                }))
                .unwrap();
                Api::<BrokeredSecret>::namespaced(client, &ns)
                    .create(&PostParams::default(), &secret)
                    .await
                    .unwrap();
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<()>>()
        .await;
    let policies = (0..shape.namespaces).flat_map(|n| (0..shape.policies).map(move |p| (n, p)));
    futures::stream::iter(policies)
        .map(|(n, p)| {
            let client = client.clone();
            async move {
                let ns = namespace(n);
                Api::<AccessPolicy>::namespaced(client, &ns)
                    .create(
                        &PostParams::default(),
                        &policy(&ns, p, shape, shape.subjects),
                    )
                    .await
                    .unwrap();
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<()>>()
        .await;
}

/// Policy `p` of namespace `ns`: every secret to its first `subjects`
/// service accounts.
fn policy(ns: &str, p: u64, shape: Shape, subjects: u64) -> AccessPolicy {
    let subjects: Vec<_> = (0..subjects)
        .map(|j| json!({"serviceAccount": {"namespace": ns, "name": format!("sa-{p}-{j}")}}))
        .collect();
    let secrets: Vec<_> = (0..shape.secrets)
        .map(|k| json!({"name": format!("secret-{k}")}))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "AccessPolicy",
        "metadata": {"name": format!("policy-{p}")},
        "spec": {"subjects": subjects, "secrets": secrets},
    }))
    .unwrap()
}

/// How many Grants exist, from one paginated list of one item (the
/// apiserver counts the rest; nothing is transferred but one Grant).
async fn grant_count(grants: &Api<Grant>) -> u64 {
    let list = grants.list(&ListParams::default().limit(1)).await.unwrap();
    let remaining = list
        .metadata
        .remaining_item_count
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(0);
    list.items.len() as u64 + remaining
}

/// How many AccessPolicies are Ready=True, listed in pages.
async fn ready_policies(policies: &Api<AccessPolicy>) -> (u64, u64) {
    let (mut ready, mut lists) = (0, 0);
    let mut params = ListParams::default().limit(2000);
    loop {
        let page = policies.list(&params).await.unwrap();
        lists += 1;
        ready += page
            .items
            .iter()
            .filter(|policy| {
                policy.status.as_ref().is_some_and(|status| {
                    status
                        .conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                })
            })
            .count() as u64;
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => return (ready, lists),
        }
    }
}

/// `apiserver_request_total` summed by (verb, resource) for ferry.dev.
async fn ferry_requests(client: &kube::Client) -> BTreeMap<(String, String), u64> {
    let request = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = client.request_text(request).await.unwrap();
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|pair| pair.strip_prefix(&format!("{name}=\"")))
                .map(|v| v.trim_end_matches('"').to_owned())
                .unwrap_or_default()
        };
        if label("group") != "ferry.dev" {
            continue;
        }
        let value: f64 = value.trim().parse().unwrap_or(0.0);
        *counts
            .entry((label("verb"), label("resource")))
            .or_default() += value as u64;
    }
    counts
}

/// A ferry component as a process of its release binary.
struct Component {
    process: KillOnDrop,
    admin: SocketAddr,
}

fn spawn(
    cluster: &Cluster,
    binary: &std::path::Path,
    args: &[&str],
    tls: Option<&CertFiles>,
) -> Component {
    let admin = free_port().unwrap();
    let mut command = Command::new(binary);
    command
        .args(args)
        .args(["--log-format", "json"])
        .args(["--admin-addr", &admin.to_string()])
        .env("KUBECONFIG", cluster.kubeconfig())
        .env("POD_NAMESPACE", "ferry-system")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(files) = tls {
        command
            .args(["--listen-addr", &free_port().unwrap().to_string()])
            .arg("--tls-cert")
            .arg(&files.cert)
            .arg("--tls-key")
            .arg(&files.key);
    }
    Component {
        process: KillOnDrop(command.spawn().unwrap()),
        admin,
    }
}

/// Starts a component and waits for `/readyz`: how long it took.
async fn start_ready(
    cluster: &Cluster,
    binary: &std::path::Path,
    args: &[&str],
    tls: &CertFiles,
    what: &str,
) -> (Component, Duration) {
    let started = Instant::now();
    let component = spawn(cluster, binary, args, Some(tls));
    wait_admin_ready(component.admin, what, Duration::from_secs(600))
        .await
        .unwrap();
    (component, started.elapsed())
}

#[tokio::main]
async fn main() {
    let shape = Shape {
        namespaces: bench_setting("FERRY_BENCH_NAMESPACES", 2_000).max(1),
        policies: bench_setting("FERRY_BENCH_POLICIES_PER_NAMESPACE", 5).max(1),
        subjects: bench_setting("FERRY_BENCH_SUBJECTS_PER_POLICY", 5).max(2),
        secrets: bench_setting("FERRY_BENCH_SECRETS_PER_NAMESPACE", 2).max(1),
    };
    let edits = bench_setting("FERRY_BENCH_EDITS", 20).max(1);
    let expected = shape.grants();
    let policy_total = shape.namespaces * shape.policies;

    let operator_binary = workspace_binary("ferry-operator").unwrap();
    let webhook_binary = workspace_binary("ferry-webhook").unwrap();
    let cluster = Cluster::start().await.unwrap();
    let client = cluster.client().unwrap();
    install_crds(&client).await.unwrap();
    let ferry_ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": "ferry-system"}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ferry_ns)
        .await
        .unwrap();
    let tls = cluster
        .authority()
        .serving_cert(&["127.0.0.1"], cluster.dir(), "bench-scale")
        .unwrap();
    let broker_args = ["broker"];
    let webhook_args = ["run"];

    // The webhook and the broker with no Grants: their baseline.
    let (webhook, _) = start_ready(&cluster, &webhook_binary, &webhook_args, &tls, "webhook").await;
    let (broker, _) = start_ready(&cluster, &operator_binary, &broker_args, &tls, "broker").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let webhook_empty = memory_kib(webhook.process.0.id());
    let broker_empty = memory_kib(broker.process.0.id());

    let filling = Instant::now();
    fill(&client, shape).await;
    let filled = filling.elapsed();

    // The operator starts with every object in etcd.
    let grants = Api::<Grant>::all(client.clone());
    let policies = Api::<AccessPolicy>::all(client.clone());
    let before = ferry_requests(&client).await;
    let started = Instant::now();
    let operator = spawn(&cluster, &operator_binary, &["run"], None);
    let operator_pid = operator.process.0.id();
    let mut count_polls = 0_u64;
    let mut operator_peak = 0;
    let all_grants = loop {
        count_polls += 1;
        operator_peak = operator_peak.max(memory_kib(operator_pid).1);
        if grant_count(&grants).await >= expected {
            break started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut policy_lists = 0;
    let (all_ready, ready) = loop {
        operator_peak = operator_peak.max(memory_kib(operator_pid).1);
        let (ready, lists) = ready_policies(&policies).await;
        policy_lists += lists;
        if ready >= policy_total || started.elapsed() > Duration::from_secs(1200) {
            break (started.elapsed(), ready);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let after = ferry_requests(&client).await;

    // One subject removed from a policy: until its Grants are gone.
    let mut edit_times = Vec::new();
    for e in 0..edits {
        let ns = namespace(e % shape.namespaces);
        let p = (e / shape.namespaces) % shape.policies;
        let edited = policy(&ns, p, shape, shape.subjects - 1);
        let gone = format!("{ns}.policy-{p}.secret-0.sa-{p}-{}", shape.subjects - 1);
        let namespaced = Api::<Grant>::namespaced(client.clone(), &ns);
        let at = Instant::now();
        Api::<AccessPolicy>::namespaced(client.clone(), &ns)
            .patch(
                &format!("policy-{p}"),
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"subjects": edited.spec.subjects}})),
            )
            .await
            .unwrap();
        while namespaced.get_opt(&gone).await.unwrap().is_some() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        edit_times.push(at.elapsed());
    }
    edit_times.sort();
    operator_peak = operator_peak.max(memory_kib(operator_pid).1);

    // The webhook and the broker watched every Grant arrive.
    let webhook_full = memory_kib(webhook.process.0.id());
    let broker_full = memory_kib(broker.process.0.id());
    drop((webhook, broker));
    // And fresh ones start at that size.
    let (webhook, webhook_ready) =
        start_ready(&cluster, &webhook_binary, &webhook_args, &tls, "webhook").await;
    let (broker, broker_ready) =
        start_ready(&cluster, &operator_binary, &broker_args, &tls, "broker").await;
    let webhook_fresh = memory_kib(webhook.process.0.id());
    let broker_fresh = memory_kib(broker.process.0.id());

    let per_grant = |empty: (u64, u64), full: (u64, u64)| {
        full.0.saturating_sub(empty.0) as f64 * 1024.0 / expected as f64
    };
    println!();
    println!(
        "ferry at scale: {} namespaces x {} policies x {} subjects x {} secrets = {expected} Grants from {policy_total} AccessPolicies (release binaries, real apiserver and etcd)",
        shape.namespaces, shape.policies, shape.subjects, shape.secrets
    );
    println!("  etcd filled (namespaces, BrokeredSecrets, policies) in {filled:.1?}");
    println!("| what | measured | goal | ratio |");
    println!("|---|---|---|---|");
    let row = |what: &str, measured: String, goal: &str, ratio: f64| {
        println!("| {what} | {measured} | {goal} | {ratio:.2}x |");
    };
    row(
        "operator: start to every Grant present",
        format!("{all_grants:.1?}"),
        "60 s",
        all_grants.as_secs_f64() / 60.0,
    );
    row(
        "operator: start to every policy Ready",
        format!("{all_ready:.1?} ({ready}/{policy_total} Ready)"),
        "60 s",
        all_ready.as_secs_f64() / 60.0,
    );
    row(
        "operator: peak RSS",
        format!("{:.1} MiB", mib(operator_peak)),
        "200 MiB",
        mib(operator_peak) / 200.0,
    );
    row(
        "policy edit to its Grant gone, p50",
        format!("{:.1?}", percentile(&edit_times, 0.50)),
        "-",
        0.0,
    );
    row(
        "policy edit to its Grant gone, p99",
        format!("{:.1?}", percentile(&edit_times, 0.99)),
        "-",
        0.0,
    );
    for (what, empty, full, fresh, ready_in) in [
        (
            "webhook",
            webhook_empty,
            webhook_full,
            webhook_fresh,
            webhook_ready,
        ),
        (
            "broker",
            broker_empty,
            broker_full,
            broker_fresh,
            broker_ready,
        ),
    ] {
        let bytes = per_grant(empty, full);
        row(
            &format!(
                "{what}: index memory per Grant (RSS {:.1} -> {:.1} MiB)",
                mib(empty.0),
                mib(full.0)
            ),
            format!("{bytes:.0} B"),
            "300 B",
            bytes / 300.0,
        );
        row(
            &format!(
                "{what}: started at this size, to /readyz (RSS {:.1} MiB)",
                mib(fresh.0)
            ),
            format!("{ready_in:.1?}"),
            "10 s",
            ready_in.as_secs_f64() / 10.0,
        );
    }
    println!();
    println!(
        "  apiserver requests for ferry.dev during convergence (the bench's own {count_polls} Grant counts and {policy_lists} policy list pages included):"
    );
    for (key, count) in &after {
        let delta = count.saturating_sub(before.get(key).copied().unwrap_or(0));
        if delta > 0 {
            println!("    {:>8} {} {}", delta, key.0, key.1);
        }
    }
}
