//! `kubectl ferry`: see and steer who can get which secret.
//!
//! Exit codes: 0 success (and `can-i`'s yes, `lint` without errors);
//! 1 `can-i`'s no, `lint` with errors, or any failure, which prints one
//! line naming what to fix on standard error.

use std::collections::BTreeSet;
use std::io::Read;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use ferry_api::confinement::Installation;
use ferry_api::resources::{
    AccessPolicy, AccessRequest, BrokeredSecret, Grant, Revocation, Verdict,
};
use ferry_contract::DEFAULT_NAMESPACE;
use k8s_openapi::api::core::v1::{Event, Namespace, Pod, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde::Serialize;

use kubectl_ferry::access::{self, AccessWorld, Decision, GrantView};
use kubectl_ferry::cluster::{self, Cluster, Connection};
use kubectl_ferry::explain::{self, PodExplanation, SecretExplanation};
use kubectl_ferry::leases::{self, LeaseFilter, LeaseView};
use kubectl_ferry::lint::{self, Document, Seen, Settings};
use kubectl_ferry::output::{Format, Output, Table};
use kubectl_ferry::requests::{self, Ask, RequestView};
use kubectl_ferry::revoke::{self, RevocationView};
use kubectl_ferry::target::{Target, parse_service_account_user, parse_target};

/// See and steer who can get which secret, from the command line.
#[derive(Debug, Parser)]
#[command(name = "kubectl ferry", bin_name = "kubectl ferry", version)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct Global {
    /// Path to the kubeconfig file (default: KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true)]
    kubeconfig: Option<std::path::PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    context: Option<String>,
    /// The namespace (default: the context's).
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    /// Print tables without their header line.
    #[arg(long, global = true)]
    no_headers: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Every service account holding a Grant for a secret, and the pods
    /// holding live leases of it.
    WhoCan {
        /// The BrokeredSecret, NAMESPACE/NAME.
        secret: String,
    },
    /// Whether a service account's pods may get a secret now, and why
    /// (exit 0: yes, 1: no).
    CanI {
        /// The service account, system:serviceaccount:NAMESPACE:NAME.
        #[arg(long = "as")]
        user: String,
        /// Only get: pods get secrets.
        verb: GetVerb,
        /// The BrokeredSecret, NAMESPACE/NAME.
        secret: String,
        /// Print nothing; answer with the exit code only.
        #[arg(short, long)]
        quiet: bool,
    },
    /// What ferry did for an object.
    Explain {
        /// The kind: pod.
        kind: ExplainKind,
        /// The pod, NAMESPACE/NAME.
        name: String,
    },
    /// The live leases the broker knows (names and times, never a secret).
    Leases {
        /// Only leases of this BrokeredSecret (NAMESPACE/NAME).
        #[arg(long)]
        secret: Option<String>,
        /// Only leases of this pod (NAMESPACE/NAME).
        #[arg(long)]
        pod: Option<String>,
        /// Leases of secrets in every namespace you may see.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
    },
    /// Ask for just-in-time access under an AccessPolicy that requires approval.
    Request {
        /// The AccessPolicy, NAMESPACE/NAME.
        policy: String,
        /// How long access should last once approved, like 30m.
        #[arg(long)]
        duration: String,
        /// Why (the approver reads it; it stays in the audit trail).
        #[arg(long)]
        reason: String,
        /// Only this secret of the policy (repeatable; default: all).
        #[arg(long = "secret")]
        secrets: Vec<String>,
        /// Only this service account, NAMESPACE/NAME (default: every subject).
        #[arg(long)]
        service_account: Option<String>,
        /// The request's name (default: the policy's name and a suffix).
        #[arg(long)]
        name: Option<String>,
    },
    /// Approve a pending AccessRequest (NAMESPACE/NAME) as yourself.
    Approve(DecideArgs),
    /// Deny a pending AccessRequest (NAMESPACE/NAME) as yourself.
    Deny(DecideArgs),
    /// Take live leases away now and refuse new ones while the Revocation
    /// exists; list and lift Revocations.
    Revoke {
        #[command(subcommand)]
        what: RevokeCommand,
    },
    /// Check BrokeredSecrets and AccessPolicies before applying them, as
    /// the apiserver and the operator would.
    Lint(LintArgs),
}

#[derive(Debug, Subcommand)]
enum RevokeCommand {
    /// A pod's leases (and those of the next pod of that name): NAMESPACE/POD.
    Pod(RevokeArgs),
    /// The leases of every pod of a service account: NAMESPACE/NAME.
    #[command(alias = "serviceaccount")]
    Sa(RevokeArgs),
    /// Every lease of a BrokeredSecret, in every namespace: NAMESPACE/NAME.
    Secret(RevokeArgs),
    /// Every lease an AccessPolicy's Grants allowed: NAMESPACE/NAME.
    Policy(RevokeArgs),
    /// The Revocations of a namespace (-n) or of all (-A).
    List {
        /// Of every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
    },
    /// Delete a Revocation (NAMESPACE/NAME), lifting its block.
    Lift {
        /// The Revocation.
        revocation: String,
    },
}

#[derive(Debug, Args)]
struct RevokeArgs {
    /// What to revoke, NAMESPACE/NAME.
    target: String,
    /// Why (kept in Events and the broker's audit log; never shown to the
    /// revoked pods).
    #[arg(long)]
    reason: String,
    /// The Revocation's name (default: the kind, the target's name and a suffix).
    #[arg(long)]
    name: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum GetVerb {
    Get,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ExplainKind {
    Pod,
}

#[derive(Debug, Args)]
struct DecideArgs {
    /// The AccessRequest, NAMESPACE/NAME.
    request: String,
    /// Why (kept in the request's status and an Event).
    #[arg(long)]
    reason: String,
}

#[derive(Debug, Args)]
struct LintArgs {
    /// Files to check (`-` for standard input); repeatable.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<String>,
    /// Also consult the cluster for the BrokeredSecrets, Secrets (key
    /// names only) and Namespaces the objects name.
    #[arg(long)]
    cluster: bool,
    /// ferry's namespace in the installation (no BrokeredSecret there is served).
    #[arg(long, default_value = DEFAULT_NAMESPACE)]
    ferry_namespace: String,
    /// The installation's allowed JWT issuers (namespace=issuer,...), as
    /// the operator's --allowed-issuers.
    #[arg(long, default_value = "")]
    allowed_issuers: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let output = Output::new(cli.global.output, cli.global.no_headers);
    let connection = Connection {
        kubeconfig: cli.global.kubeconfig.clone(),
        context: cli.global.context.clone(),
        namespace: cli.global.namespace.clone(),
    };
    match run(cli.command, &connection, &output).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(
    command: Command,
    connection: &Connection,
    output: &Output,
) -> anyhow::Result<ExitCode> {
    if let Command::Lint(args) = command {
        return lint(args, connection, output).await;
    }
    let cluster = connection.connect().await?;
    match command {
        Command::WhoCan { secret } => who_can(&cluster, &secret, output).await,
        Command::CanI {
            user,
            verb: GetVerb::Get,
            secret,
            quiet,
        } => can_i(&cluster, &user, &secret, quiet, output).await,
        Command::Explain {
            kind: ExplainKind::Pod,
            name,
        } => explain_pod(&cluster, &name, output).await,
        Command::Leases {
            secret,
            pod,
            all_namespaces,
        } => {
            list_leases(
                &cluster,
                secret,
                pod,
                all_namespaces,
                connection.namespace.is_some(),
                output,
            )
            .await
        }
        Command::Request {
            policy,
            duration,
            reason,
            secrets,
            service_account,
            name,
        } => {
            let policy =
                parse_target(&policy, &cluster.namespace, "policy").map_err(anyhow::Error::msg)?;
            let service_account = service_account
                .map(|sa| parse_target(&sa, &cluster.namespace, "--service-account"))
                .transpose()
                .map_err(anyhow::Error::msg)?;
            let ask = Ask {
                policy,
                secrets,
                service_account,
                duration,
                reason,
                name,
            };
            request(&cluster, &ask, output).await
        }
        Command::Approve(args) => decide(&cluster, &args, Verdict::Approved, output).await,
        Command::Deny(args) => decide(&cluster, &args, Verdict::Denied, output).await,
        Command::Revoke { what } => revoke_command(&cluster, what, output).await,
        Command::Lint(_) => unreachable_lint(),
    }
}

/// `lint` is dispatched before connecting.
fn unreachable_lint() -> anyhow::Result<ExitCode> {
    Err(anyhow::anyhow!("lint runs without a cluster connection"))
}

/// The world `can-i` and `who-can` judge: Grants of `grant_namespace`
/// (all when `None`), the policies, requests and the BrokeredSecret of the
/// secret's namespace.
async fn access_world(
    client: &Client,
    secret: &Target,
    grant_namespace: Option<&str>,
) -> anyhow::Result<AccessWorld> {
    let grants = cluster::list::<Grant>(client, grant_namespace, "Grants").await?;
    let policies =
        cluster::list::<AccessPolicy>(client, Some(&secret.namespace), "AccessPolicies").await?;
    // Requests only explain approvals: without the right to read them the
    // answer stands, it only says less.
    let requests =
        cluster::list::<AccessRequest>(client, Some(&secret.namespace), "AccessRequests")
            .await
            .unwrap_or_default();
    let found =
        cluster::get::<BrokeredSecret>(client, &secret.namespace, &secret.name, "BrokeredSecret")
            .await?;
    // Revocations of the subjects' namespace (all, for who-can) and of the
    // secret's; unreadable ones leave a caveat on every yes.
    let mut revocations = Some(Vec::new());
    let namespaces: Vec<Option<&str>> = match grant_namespace {
        None => vec![None],
        Some(ns) if ns == secret.namespace => vec![Some(ns)],
        Some(ns) => vec![Some(ns), Some(secret.namespace.as_str())],
    };
    for namespace in namespaces {
        match cluster::list::<Revocation>(client, namespace, "Revocations").await {
            Ok(found) => {
                if let Some(all) = revocations.as_mut() {
                    all.extend(found);
                }
            }
            Err(_) => revocations = None,
        }
    }
    Ok(AccessWorld {
        grants,
        policies,
        requests,
        secret: found,
        revocations,
    })
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WhoCanReport {
    secret: String,
    grants: Vec<GrantView>,
    leases: Vec<LeaseView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    leases_unavailable: Option<String>,
}

async fn who_can(cluster: &Cluster, secret: &str, output: &Output) -> anyhow::Result<ExitCode> {
    let secret = parse_target(secret, &cluster.namespace, "secret").map_err(anyhow::Error::msg)?;
    let world = access_world(&cluster.client, &secret, None)
        .await
        .context("who-can reads every Grant of the cluster, and the AccessPolicies and BrokeredSecret of the secret's namespace")?;
    if world.secret.is_none() {
        anyhow::bail!("BrokeredSecret {secret} not found");
    }
    let grants = access::grants_of(&secret, &world, Timestamp::now());
    let (leases, leases_unavailable) =
        match cluster::live_leases(&cluster.client, Some(&secret.namespace)).await {
            Ok(list) => (
                leases::select(
                    &list,
                    &LeaseFilter {
                        secret: Some(secret.to_string()),
                        ..LeaseFilter::default()
                    },
                ),
                None,
            ),
            Err(error) => (Vec::new(), Some(format!("{error:#}"))),
        };
    let report = WhoCanReport {
        secret: secret.to_string(),
        grants,
        leases,
        leases_unavailable,
    };
    output.print(&report, || {
        let mut text = String::new();
        if report.grants.is_empty() {
            text.push_str(&format!(
                "No service account holds a Grant for {}.\n",
                report.secret
            ));
        } else {
            let mut table = Table::new(&[
                "serviceAccount",
                "policy",
                "maxTtl",
                "audience",
                "scopes",
                "validUntil",
                "approval",
                "state",
            ]);
            for grant in &report.grants {
                let state = match grant.state {
                    "Active" => output.green("Active"),
                    other => output.yellow(other),
                };
                table.row(vec![
                    grant.service_account.clone(),
                    grant.policy.clone(),
                    grant.max_ttl.clone(),
                    grant.audience.join(","),
                    grant.scopes.join(","),
                    grant.valid_until.clone().unwrap_or_default(),
                    grant.approval.clone().unwrap_or_default(),
                    state,
                ]);
            }
            text.push_str(&table.render(output.no_headers));
        }
        text.push('\n');
        match &report.leases_unavailable {
            Some(why) => text.push_str(&format!("Live leases: unknown: {why}\n")),
            None => text.push_str(&leases::table(&report.leases, output)),
        }
        text
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn can_i(
    cluster: &Cluster,
    user: &str,
    secret: &str,
    quiet: bool,
    output: &Output,
) -> anyhow::Result<ExitCode> {
    let service_account = parse_service_account_user(user).map_err(anyhow::Error::msg)?;
    let secret = parse_target(secret, &cluster.namespace, "secret").map_err(anyhow::Error::msg)?;
    let world = access_world(&cluster.client, &secret, Some(&service_account.namespace)).await?;
    let decision = access::decide(&service_account, &secret, &world, Timestamp::now());
    if !quiet {
        output.print(&decision, || {
            let answer = if decision.allowed {
                output.green("yes")
            } else {
                output.red("no")
            };
            format!("{answer} - {}\n", decision.reason)
        })?;
    }
    Ok(if decision.allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn explain_pod(cluster: &Cluster, name: &str, output: &Output) -> anyhow::Result<ExitCode> {
    let target = parse_target(name, &cluster.namespace, "pod").map_err(anyhow::Error::msg)?;
    let client = &cluster.client;
    let pod = cluster::get::<Pod>(client, &target.namespace, &target.name, "Pod")
        .await?
        .ok_or_else(|| anyhow::anyhow!("pod {target} not found"))?;
    let service_account = Target {
        namespace: target.namespace.clone(),
        name: explain::service_account_of(&pod),
    };
    let (injected, not_injected) = match explain::injection_of(&pod) {
        Ok(status) => (Some(status), None),
        Err(why) => (None, Some(why)),
    };
    let mut secrets = Vec::new();
    let mut namespaces = BTreeSet::new();
    for qualified in injected.iter().flat_map(|s| s.secrets.iter()) {
        let secret =
            parse_target(qualified, &target.namespace, "secret").map_err(anyhow::Error::msg)?;
        namespaces.insert(secret.namespace.clone());
        let decision = match access_world(client, &secret, Some(&target.namespace)).await {
            Ok(world) => access::decide(&service_account, &secret, &world, Timestamp::now()),
            Err(error) => Decision {
                allowed: false,
                reason: format!("cannot tell: {error:#}"),
                grant: None,
            },
        };
        secrets.push(SecretExplanation {
            secret: secret.to_string(),
            decision,
        });
    }
    let mut errors = pod_warnings(client, &pod).await;
    if injected.is_some() {
        let params = LogParams {
            container: Some(ferry_contract::SIDECAR_CONTAINER_NAME.to_owned()),
            tail_lines: Some(500),
            ..LogParams::default()
        };
        match Api::<Pod>::namespaced(client.clone(), &target.namespace)
            .logs(&target.name, &params)
            .await
        {
            Ok(log) => errors.extend(explain::sidecar_errors(&log, 5)),
            Err(error) => errors.push(format!(
                "(the sidecar's log could not be read: {})",
                cluster::failed("reading its log", error)
            )),
        }
    }
    let pod_uid = pod.metadata.uid.clone().unwrap_or_default();
    let mut leases = Vec::new();
    let mut leases_unavailable = None;
    for namespace in &namespaces {
        match cluster::live_leases(client, Some(namespace)).await {
            Ok(list) => leases.extend(
                leases::select(
                    &list,
                    &LeaseFilter {
                        pod: Some(target.to_string()),
                        ..LeaseFilter::default()
                    },
                )
                .into_iter()
                .filter(|l| l.pod_uid == pod_uid),
            ),
            Err(error) => leases_unavailable = Some(format!("{error:#}")),
        }
    }
    let explanation = PodExplanation {
        pod: target.to_string(),
        service_account: service_account.to_string(),
        phase: pod
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_else(|| "Unknown".into()),
        injected,
        not_injected,
        secrets,
        sidecar: explain::sidecar_of(&pod),
        leases,
        leases_unavailable,
        errors,
    };
    output.print(&explanation, || explain::describe(&explanation, output))?;
    Ok(ExitCode::SUCCESS)
}

/// The pod's last Warning Events, newest last.
async fn pod_warnings(client: &Client, pod: &Pod) -> Vec<String> {
    let namespace = pod.namespace().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let params = ListParams::default().fields(&format!("involvedObject.uid={uid},type=Warning"));
    match Api::<Event>::namespaced(client.clone(), &namespace)
        .list(&params)
        .await
    {
        Ok(list) => {
            let mut events: Vec<(String, String)> = list
                .items
                .iter()
                .map(|e| {
                    let when = e
                        .last_timestamp
                        .as_ref()
                        .map(|t| t.0.to_string())
                        .or_else(|| e.event_time.as_ref().map(|t| t.0.to_string()))
                        .unwrap_or_default();
                    let text = format!(
                        "{when} event {}: {}",
                        e.reason.as_deref().unwrap_or_default(),
                        e.message.as_deref().unwrap_or_default()
                    );
                    (when, text)
                })
                .collect();
            events.sort();
            let skip = events.len().saturating_sub(5);
            events
                .into_iter()
                .skip(skip)
                .map(|(_, text)| text)
                .collect()
        }
        Err(error) => vec![format!(
            "(the pod's Events could not be read: {})",
            cluster::failed("listing Events", error)
        )],
    }
}

#[derive(Serialize)]
struct LeasesReport {
    leases: Vec<LeaseView>,
    #[serde(skip_serializing_if = "String::is_empty")]
    replica: String,
}

async fn list_leases(
    cluster: &Cluster,
    secret: Option<String>,
    pod: Option<String>,
    all: bool,
    namespace_given: bool,
    output: &Output,
) -> anyhow::Result<ExitCode> {
    let secret = secret
        .map(|s| parse_target(&s, &cluster.namespace, "--secret"))
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let pod = pod
        .map(|p| parse_target(&p, &cluster.namespace, "--pod"))
        .transpose()
        .map_err(anyhow::Error::msg)?;
    // Leases are listed under their secret's namespace: --secret names it;
    // -n (or the context's namespace) otherwise, unless -A or only --pod.
    let namespace = match (&secret, all, &pod) {
        (Some(secret), _, _) => Some(secret.namespace.clone()),
        (None, true, _) => None,
        (None, false, Some(_)) if !namespace_given => None,
        (None, false, _) => Some(cluster.namespace.clone()),
    };
    let list = cluster::live_leases(&cluster.client, namespace.as_deref()).await?;
    let filter = LeaseFilter {
        secret: secret.map(|s| s.to_string()),
        pod: pod.map(|p| p.to_string()),
        pod_namespace: None,
    };
    let report = LeasesReport {
        leases: leases::select(&list, &filter),
        replica: list.replica.clone(),
    };
    output.print(&report, || leases::table(&report.leases, output))?;
    Ok(ExitCode::SUCCESS)
}

async fn request(cluster: &Cluster, ask: &Ask, output: &Output) -> anyhow::Result<ExitCode> {
    let requester = cluster::whoami(&cluster.client).await?;
    let object = requests::access_request(ask, &requester);
    let created = Api::<AccessRequest>::namespaced(cluster.client.clone(), &ask.policy.namespace)
        .create(&PostParams::default(), &object)
        .await
        .map_err(|error| {
            cluster::failed(
                &format!(
                    "creating an AccessRequest under AccessPolicy {}",
                    ask.policy
                ),
                error,
            )
        })?;
    let view = RequestView::from(&created);
    output.print(&view, || view.line("created"))?;
    Ok(ExitCode::SUCCESS)
}

async fn decide(
    cluster: &Cluster,
    args: &DecideArgs,
    verdict: Verdict,
    output: &Output,
) -> anyhow::Result<ExitCode> {
    let target =
        parse_target(&args.request, &cluster.namespace, "request").map_err(anyhow::Error::msg)?;
    let approver = cluster::whoami(&cluster.client).await?;
    let api = Api::<AccessRequest>::namespaced(cluster.client.clone(), &target.namespace);
    let patch = requests::decision_patch(verdict, &approver, &args.reason);
    let patched = api
        .patch(&target.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|error| {
            cluster::failed(
                &format!("deciding AccessRequest {target} as {approver}"),
                error,
            )
        })?;
    let action = match verdict {
        Verdict::Approved => "approved",
        Verdict::Denied => "denied",
    };
    let view = RequestView::from(&patched);
    output.print(&view, || view.line(action))?;
    Ok(ExitCode::SUCCESS)
}

async fn revoke_command(
    cluster: &Cluster,
    what: RevokeCommand,
    output: &Output,
) -> anyhow::Result<ExitCode> {
    let (kind, args) = match what {
        RevokeCommand::Pod(args) => (revoke::Kind::Pod, args),
        RevokeCommand::Sa(args) => (revoke::Kind::ServiceAccount, args),
        RevokeCommand::Secret(args) => (revoke::Kind::Secret, args),
        RevokeCommand::Policy(args) => (revoke::Kind::Policy, args),
        RevokeCommand::List { all_namespaces } => {
            let namespace = (!all_namespaces).then_some(cluster.namespace.as_str());
            let found =
                cluster::list::<Revocation>(&cluster.client, namespace, "Revocations").await?;
            let views: Vec<RevocationView> = found.iter().map(RevocationView::from).collect();
            output.print(&views, || revoke::table(&views, output))?;
            return Ok(ExitCode::SUCCESS);
        }
        RevokeCommand::Lift { revocation } => {
            let target = parse_target(&revocation, &cluster.namespace, "revocation")
                .map_err(anyhow::Error::msg)?;
            Api::<Revocation>::namespaced(cluster.client.clone(), &target.namespace)
                .delete(&target.name, &kube::api::DeleteParams::default())
                .await
                .map_err(|error| {
                    cluster::failed(&format!("deleting Revocation {target}"), error)
                })?;
            let lifted = serde_json::json!({"revocation": target.to_string(), "lifted": true});
            output.print(&lifted, || {
                format!("revocation {target} deleted: its block is lifted\n")
            })?;
            return Ok(ExitCode::SUCCESS);
        }
    };
    let target =
        parse_target(&args.target, &cluster.namespace, "target").map_err(anyhow::Error::msg)?;
    let object = revoke::revocation(kind, &target, &args.reason, args.name.as_deref());
    let created = Api::<Revocation>::namespaced(cluster.client.clone(), &target.namespace)
        .create(&PostParams::default(), &object)
        .await
        .map_err(|error| {
            cluster::failed(
                &format!("creating a Revocation in namespace {}", target.namespace),
                error,
            )
        })?;
    let view = RevocationView::from(&created);
    output.print(&view, || {
        format!(
            "revocation {} created: the live leases of {} are revoked now, and none is issued \
             while it exists (kubectl ferry revoke lift {} lifts it)\n",
            view.revocation, view.target, view.revocation
        )
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn lint(
    args: LintArgs,
    connection: &Connection,
    output: &Output,
) -> anyhow::Result<ExitCode> {
    let mut documents: Vec<Document> = Vec::new();
    for file in &args.files {
        let text = if file == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading standard input")?;
            text
        } else {
            std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?
        };
        documents.extend(lint::documents(file, &text).map_err(anyhow::Error::msg)?);
    }
    let installation = Installation::new(&args.ferry_namespace, &args.allowed_issuers)
        .map_err(anyhow::Error::msg)?;
    let (default_namespace, seen) = if args.cluster {
        let cluster = connection.connect().await?;
        let seen = seen_in_cluster(&cluster, &documents).await?;
        (cluster.namespace, seen)
    } else {
        (
            connection
                .namespace
                .clone()
                .unwrap_or_else(|| "default".to_owned()),
            Seen::default(),
        )
    };
    let settings = Settings {
        default_namespace,
        installation,
        now: Timestamp::now(),
    };
    let mut findings = lint::lint(&documents, &settings, &seen)?;
    findings.sort_by(|a, b| (a.level, &a.file, &a.object).cmp(&(b.level, &b.file, &b.object)));
    let objects = documents
        .iter()
        .filter(|d| d.object["apiVersion"] == ferry_contract::GROUP_VERSION)
        .count();
    let report = lint::Report {
        findings: &findings,
        objects,
    };
    output.print(&report, || lint::table(&report, output))?;
    Ok(if lint::has_errors(&findings) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// What `--cluster` adds: the BrokeredSecrets and Secrets (key names,
/// type and opt-in label only) the objects name, and the namespaces.
async fn seen_in_cluster(cluster: &Cluster, documents: &[Document]) -> anyhow::Result<Seen> {
    let client = &cluster.client;
    let mut seen = Seen {
        complete: true,
        ..Seen::default()
    };
    for (namespace, name) in lint::references(documents, &cluster.namespace) {
        if let Some(secret) =
            cluster::get::<BrokeredSecret>(client, &namespace, &name, "BrokeredSecret").await?
        {
            seen.brokered_secrets
                .insert((namespace.clone(), name.clone()), secret);
        }
        if let Some(secret) = cluster::get::<Secret>(client, &namespace, &name, "Secret").await? {
            seen.secrets.insert(
                (namespace.clone(), name.clone()),
                ferry_api::checks::FoundSecret {
                    keys: secret.data.unwrap_or_default().into_keys().collect(),
                    secret_type: secret.type_,
                    brokerable: secret
                        .metadata
                        .labels
                        .unwrap_or_default()
                        .remove(ferry_contract::BROKERABLE_LABEL),
                },
            );
        }
    }
    seen.namespaces = Api::<Namespace>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map(|list| list.items)
        .map_err(|error| {
            cluster::failed("listing Namespaces (for namespaceSelector subjects)", error)
        })?;
    Ok(seen)
}
