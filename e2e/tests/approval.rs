//! Just-in-time access against a real apiserver, with real identities
//! (client certificates the apiserver authenticates):
//!
//! - an AccessPolicy that requires approval grants nothing until an
//!   approver approves a request; then its Grants carry `validUntil` =
//!   approval time + duration and vanish when it passes;
//! - the admission policy (`ferry_operator::admission::access_requests`,
//!   as the chart renders it) refuses self-approval, a non-approver, an
//!   approver field naming someone else, a requester field naming someone
//!   else, and a decision on a request that is not Pending;
//! - the CRD's rules refuse changing a decision and editing a request;
//!   RBAC keeps the status the operator's;
//! - a duration over the policy's maximum makes the request Invalid, and
//!   an unanswered one Expires; neither yields a Grant.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ferry_api::resources::{AccessRequest, Grant, RequestPhase};
use ferry_e2e::{
    Cluster, RunningOperator, controlplane_bin_dir, create_object, eventually, install_crds,
};
use ferry_operator::admission::access_requests::access_request_policy;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

const WAIT: Duration = Duration::from_secs(60);

/// One namespace holding the secret, the policy, its subjects and the
/// requests, and clients for the people in this story.
struct Team {
    ns: String,
    admin: Client,
    /// A requester, also listed as an approver (to show self-approval is
    /// refused all the same).
    alice: Client,
    /// An approver by username.
    bob: Client,
    /// Allowed by RBAC to edit requests, but no approver.
    carol: Client,
    /// An approver through their group.
    dave: Client,
}

impl Team {
    fn user(&self, who: &str) -> String {
        format!("{who}@{}", self.ns)
    }

    /// The requests API as `client`.
    fn requests(&self, client: &Client) -> Api<AccessRequest> {
        Api::namespaced(client.clone(), &self.ns)
    }
}

/// The shared cluster with the CRDs and admission policies, the operator,
/// and a fresh namespace with a BrokeredSecret, an AccessPolicy requiring
/// approval (`requestTtl` as given, `maxDuration` 1h), and four people
/// whom RBAC lets create and update (not status) requests there.
async fn team(prefix: &str, request_ttl: &str) -> Team {
    static OPERATOR: OnceCell<RunningOperator> = OnceCell::const_new();
    let cluster = Cluster::shared().await.unwrap();
    let admin = cluster.client().unwrap();
    OPERATOR
        .get_or_init(|| async {
            install_crds(&admin).await.unwrap();
            RunningOperator::start(cluster.config().clone()).unwrap()
        })
        .await;
    let ns = cluster.create_namespace(prefix).await.unwrap();
    let user = |who: &str| format!("{who}@{ns}");
    let group = format!("secops@{ns}");
    create_object::<Role>(
        &admin,
        &ns,
        json!({"metadata": {"name": "requests"},
               "rules": [{"apiGroups": ["ferry.dev"], "resources": ["accessrequests"],
                          "verbs": ["get", "list", "watch", "create", "update", "patch"]}]}),
    )
    .await
    .unwrap();
    create_object::<RoleBinding>(
        &admin,
        &ns,
        json!({"metadata": {"name": "requests"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "requests"},
        "subjects": [
            {"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": user("alice")},
            {"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": user("bob")},
            {"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": user("carol")},
            {"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": group},
        ]}),
    )
    .await
    .unwrap();
    create_object::<ferry_api::resources::BrokeredSecret>(
        &admin,
        &ns,
        json!({"metadata": {"name": "orders-db"},
               "spec": {"source": {"postgres": {"connectionSecretRef": {"name": "db-admin"}}}}}),
    )
    .await
    .unwrap();
    create_object::<ferry_api::resources::AccessPolicy>(
        &admin,
        &ns,
        json!({"metadata": {"name": "orders-jit"},
        "spec": {
            "subjects": [{"serviceAccount": {"name": "checkout", "namespace": ns}}],
            "secrets": [{"name": "orders-db"}],
            "approval": {
                "approvers": {"users": [user("alice"), user("bob")], "groups": [group]},
                "maxDuration": "1h",
                "requestTtl": request_ttl,
            },
        }}),
    )
    .await
    .unwrap();
    Team {
        alice: cluster.user_client(&user("alice"), None).unwrap(),
        bob: cluster.user_client(&user("bob"), None).unwrap(),
        carol: cluster.user_client(&user("carol"), None).unwrap(),
        dave: cluster.user_client(&user("dave"), Some(&group)).unwrap(),
        admin,
        ns,
    }
}

/// Creates, as `client`, a request named `name` by `requester` for
/// `duration`.
async fn request(
    team: &Team,
    client: &Client,
    name: &str,
    requester: &str,
    duration: &str,
) -> Result<AccessRequest, kube::Error> {
    let request: AccessRequest = serde_json::from_value(json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "AccessRequest",
        "metadata": {"name": name, "namespace": team.ns},
        "spec": {
            "policy": "orders-jit",
            "secrets": ["orders-db"],
            "serviceAccount": {"namespace": team.ns, "name": "checkout"},
            "duration": duration,
            "reason": "incident 4711: read the orders table",
            "requester": requester,
        },
    }))
    .unwrap();
    team.requests(client)
        .create(&PostParams::default(), &request)
        .await
}

/// Writes, as `client`, the decision `verdict` by `approver` on `name`.
async fn decide(
    team: &Team,
    client: &Client,
    name: &str,
    verdict: &str,
    approver: &str,
) -> Result<AccessRequest, kube::Error> {
    let patch = json!({"spec": {"decision": {
        "verdict": verdict, "approver": approver, "reason": "on call, ticket checked",
    }}});
    team.requests(client)
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
}

/// The apiserver's refusal message; panics when the call succeeded.
fn refusal<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> String {
    match result {
        Err(kube::Error::Api(status)) => status.message.clone(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Waits until request `name` reaches `phase`, and returns it.
async fn phase(team: &Team, name: &str, phase: RequestPhase) -> AccessRequest {
    let api = team.requests(&team.admin);
    eventually(&format!("request {name} {phase:?}"), WAIT, || async {
        let request = api.get(name).await.unwrap();
        let status = request.status.as_ref()?;
        (status.phase == Some(phase)).then_some(request)
    })
    .await
}

async fn grants(team: &Team) -> Vec<Grant> {
    Api::<Grant>::namespaced(team.admin.clone(), &team.ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
}

/// Waits for an Event with `reason` about request `name`, and returns its note.
async fn event(team: &Team, name: &str, reason: &str) -> String {
    let events = Api::<Event>::namespaced(team.admin.clone(), &team.ns);
    eventually(&format!("a {reason} Event on {name}"), WAIT, || async {
        let list = events.list(&ListParams::default()).await.unwrap();
        list.items.into_iter().find_map(|e| {
            (e.reason.as_deref() == Some(reason)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .then(|| e.note.unwrap_or_default())
        })
    })
    .await
}

#[tokio::test]
async fn an_approved_request_yields_grants_that_vanish_when_its_duration_ends() {
    let team = team("jit-approved", "10m").await;
    let alice = team.user("alice");
    request(&team, &team.alice, "debug", &alice, "20s")
        .await
        .unwrap();
    let pending = phase(&team, "debug", RequestPhase::Pending).await;
    let status = pending.status.unwrap();
    assert!(
        status.approvers.unwrap().users.contains(&team.user("bob")),
        "the policy's approvers are copied into status"
    );
    assert!(status.expires_at.is_some());
    assert!(
        grants(&team).await.is_empty(),
        "a policy requiring approval grants nothing before an approval"
    );

    decide(&team, &team.bob, "debug", "Approved", &team.user("bob"))
        .await
        .unwrap();
    let approved = phase(&team, "debug", RequestPhase::Approved).await;
    let status = approved.status.unwrap();
    assert_eq!(status.approver.as_deref(), Some(team.user("bob").as_str()));
    assert_eq!(
        status.decision_reason.as_deref(),
        Some("on call, ticket checked")
    );
    let decided_at = status.decided_at.unwrap().0;
    let valid_until = status.valid_until.clone().unwrap().0;
    assert_eq!(valid_until.duration_since(decided_at).as_secs(), 20);
    let note = event(&team, "debug", "Approved").await;
    assert!(
        note.contains(&format!("approved by {}", team.user("bob"))),
        "{note}"
    );

    let grant = eventually("the approved Grant", WAIT, || async {
        grants(&team).await.into_iter().next()
    })
    .await;
    assert_eq!(grant.spec.service_account, "checkout");
    assert_eq!(grant.spec.secret.name, "orders-db");
    assert_eq!(
        grant.spec.valid_until.as_ref().map(|t| t.0),
        Some(valid_until)
    );
    let listed = phase(&team, "debug", RequestPhase::Approved).await;
    assert_eq!(
        listed.status.unwrap().grants,
        vec![format!("{}/{}", team.ns, grant.name_any())]
    );

    // The duration ends: the Grant goes, and the request says so.
    eventually("the Grant removed after validUntil", WAIT, || async {
        grants(&team).await.is_empty().then_some(())
    })
    .await;
    assert!(Timestamp::now() >= valid_until);
    let ended = phase(&team, "debug", RequestPhase::Ended).await;
    assert!(ended.status.unwrap().grants.is_empty());
    event(&team, "debug", "Ended").await;
}

#[tokio::test]
async fn only_an_authenticated_approver_other_than_the_requester_decides() {
    let team = team("jit-identity", "10m").await;
    let (alice, bob) = (team.user("alice"), team.user("bob"));

    // The requester is whoever the apiserver authenticated.
    let message = refusal(request(&team, &team.alice, "forged", &bob, "10m").await);
    assert!(
        message.contains("spec.requester must be the user creating the request"),
        "{message}"
    );
    let decided: AccessRequest = serde_json::from_value(json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "AccessRequest",
        "metadata": {"name": "predecided", "namespace": team.ns},
        "spec": {"policy": "orders-jit", "duration": "10m", "reason": "r", "requester": alice,
                 "decision": {"verdict": "Approved", "approver": alice, "reason": "me"}},
    }))
    .unwrap();
    let message = refusal(
        team.requests(&team.alice)
            .create(&PostParams::default(), &decided)
            .await,
    );
    assert!(message.contains("cannot be created decided"), "{message}");

    request(&team, &team.alice, "debug", &alice, "10m")
        .await
        .unwrap();
    phase(&team, "debug", RequestPhase::Pending).await;

    // Alice is listed as an approver, and still cannot approve herself.
    let message = refusal(decide(&team, &team.alice, "debug", "Approved", &alice).await);
    assert!(
        message.contains("self-approval is not allowed"),
        "{message}"
    );
    // Carol may edit requests (RBAC) but is no approver.
    let message =
        refusal(decide(&team, &team.carol, "debug", "Approved", &team.user("carol")).await);
    assert!(
        message.contains("is not an approver of this request"),
        "{message}"
    );
    // Carol writing Bob's name changes nothing: the approver is who she is.
    let message = refusal(decide(&team, &team.carol, "debug", "Approved", &bob).await);
    assert!(
        message.contains("spec.decision.approver must be the user deciding"),
        "{message}"
    );
    // The requester cannot write status (approvers, phase): RBAC.
    let status = json!({"status": {"approvers": {"users": [alice], "groups": []}}});
    let written = team
        .requests(&team.alice)
        .patch_status("debug", &PatchParams::default(), &Patch::Merge(status))
        .await;
    assert!(matches!(written, Err(kube::Error::Api(s)) if s.code == 403));
    // Nor edit what she asked for.
    let longer = json!({"spec": {"duration": "50m"}});
    let message = refusal(
        team.requests(&team.alice)
            .patch("debug", &PatchParams::default(), &Patch::Merge(longer))
            .await,
    );
    assert!(message.contains("a request cannot be edited"), "{message}");
    assert!(grants(&team).await.is_empty());

    // Dave approves through his group; the decision is then final.
    decide(&team, &team.dave, "debug", "Approved", &team.user("dave"))
        .await
        .unwrap();
    let approved = phase(&team, "debug", RequestPhase::Approved).await;
    assert_eq!(
        approved.status.unwrap().approver.as_deref(),
        Some(team.user("dave").as_str())
    );
    let message = refusal(decide(&team, &team.bob, "debug", "Denied", &bob).await);
    assert!(message.contains("already decided"), "{message}");
    eventually("the approved Grant", WAIT, || async {
        (!grants(&team).await.is_empty()).then_some(())
    })
    .await;
}

#[tokio::test]
async fn bad_requests_are_refused_with_a_reason_and_grant_nothing() {
    let team = team("jit-bad", "10m").await;
    let (alice, bob) = (team.user("alice"), team.user("bob"));

    // Over the policy's maximum: Invalid, and not decidable.
    request(&team, &team.alice, "too-long", &alice, "2h")
        .await
        .unwrap();
    let invalid = phase(&team, "too-long", RequestPhase::Invalid).await;
    let condition = &invalid.status.unwrap().conditions[0];
    assert!(
        condition
            .message
            .contains("duration 2h exceeds the policy's maxDuration 1h"),
        "{}",
        condition.message
    );
    assert_eq!(condition.reason, "Invalid");
    let message = refusal(decide(&team, &team.bob, "too-long", "Approved", &bob).await);
    assert!(
        message.contains("only a Pending request can be decided; this one is Invalid"),
        "{message}"
    );

    // Denied, then approved: refused, the denial stands.
    request(&team, &team.alice, "denied", &alice, "10m")
        .await
        .unwrap();
    phase(&team, "denied", RequestPhase::Pending).await;
    decide(&team, &team.bob, "denied", "Denied", &bob)
        .await
        .unwrap();
    let denied = phase(&team, "denied", RequestPhase::Denied).await;
    assert_eq!(
        denied.status.unwrap().approver.as_deref(),
        Some(bob.as_str())
    );
    let note = event(&team, "denied", "Denied").await;
    assert!(note.contains(&format!("denied by {bob}")), "{note}");
    let message =
        refusal(decide(&team, &team.dave, "denied", "Approved", &team.user("dave")).await);
    assert!(message.contains("already decided"), "{message}");

    assert!(grants(&team).await.is_empty(), "nothing was half-applied");
}

#[tokio::test]
async fn an_unanswered_request_expires_and_cannot_be_approved_after() {
    let team = team("jit-expiry", "10s").await;
    let alice = team.user("alice");
    request(&team, &team.alice, "waiting", &alice, "10m")
        .await
        .unwrap();
    phase(&team, "waiting", RequestPhase::Pending).await;
    let expired = phase(&team, "waiting", RequestPhase::Expired).await;
    let status = expired.status.unwrap();
    assert!(Timestamp::now() >= status.expires_at.unwrap().0);
    event(&team, "waiting", "Expired").await;
    let message = refusal(decide(&team, &team.bob, "waiting", "Approved", &team.user("bob")).await);
    assert!(message.contains("this one is Expired"), "{message}");
    assert!(grants(&team).await.is_empty());
}

/// The chart renders the admission policy Rust builds (and the harness
/// installs).
#[test]
fn the_chart_renders_the_access_request_policy_rust_builds() {
    let helm = controlplane_bin_dir().unwrap().join("helm");
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/ferry");
    let output = Command::new(helm)
        .args([
            "template",
            "ferry",
            chart.to_str().unwrap(),
            "--namespace",
            "ferry-system",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rendered: Vec<Value> = serde_yaml::Deserializer::from_slice(&output.stdout)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
        .filter(|doc: &Value| !doc.is_null())
        .collect();
    let (policy, binding) = access_request_policy();
    for rust in [
        serde_json::to_value(policy).unwrap(),
        serde_json::to_value(binding).unwrap(),
    ] {
        let (kind, name) = (&rust["kind"], &rust["metadata"]["name"]);
        let chart = rendered
            .iter()
            .find(|doc| doc["kind"] == *kind && doc["metadata"]["name"] == *name)
            .unwrap_or_else(|| panic!("{kind} {name} not rendered"));
        assert_eq!(chart["spec"], rust["spec"], "{kind} {name}");
    }
}

/// `kubectl` as the admin; its stdout once it succeeds (discovery of a
/// new CRD may trail its install by a moment).
async fn kubectl(cluster: &Cluster, ns: &str, args: &[&str]) -> String {
    let cache = cluster.dir().join(format!("kubectl-cache-{ns}"));
    eventually(&format!("kubectl {}", args.join(" ")), WAIT, || async {
        let output = tokio::process::Command::from(cluster.kubectl())
            .arg("--cache-dir")
            .arg(&cache)
            .args(["-n", ns])
            .args(args)
            .output()
            .await
            .unwrap();
        output
            .status
            .success()
            .then(|| String::from_utf8(output.stdout).unwrap())
    })
    .await
}

#[tokio::test]
async fn kubectl_explains_and_lists_requests_and_the_schema_wants_an_approver() {
    let team = team("jit-kubectl", "10m").await;
    let cluster = Cluster::shared().await.unwrap();
    request(&team, &team.alice, "debug", &team.user("alice"), "15m")
        .await
        .unwrap();
    phase(&team, "debug", RequestPhase::Pending).await;

    let explained = kubectl(
        cluster,
        &team.ns,
        &["explain", "accessrequest.spec.decision"],
    )
    .await;
    assert!(explained.contains("`Approved` or `Denied`"), "{explained}");
    let explained = kubectl(
        cluster,
        &team.ns,
        &["explain", "accesspolicy.spec.approval"],
    )
    .await;
    assert!(
        explained.contains("The longest access one approval may grant"),
        "{explained}"
    );
    let table = kubectl(cluster, &team.ns, &["get", "ar"]).await;
    let header = table.lines().next().unwrap();
    for column in [
        "POLICY",
        "REQUESTER",
        "DURATION",
        "PHASE",
        "APPROVER",
        "VALIDUNTIL",
    ] {
        assert!(header.contains(column), "{table}");
    }
    assert!(table.contains("Pending"), "{table}");
    let listed = kubectl(cluster, &team.ns, &["get", "ferry"]).await;
    assert!(listed.contains("accessrequest.ferry.dev/debug"), "{listed}");

    let nobody = create_object::<ferry_api::resources::AccessPolicy>(
        &team.admin,
        &team.ns,
        json!({"metadata": {"name": "nobody-approves"},
        "spec": {
            "subjects": [{"serviceAccount": {"name": "checkout", "namespace": team.ns}}],
            "secrets": [{"name": "orders-db"}],
            "approval": {"approvers": {}, "maxDuration": "200h"},
        }}),
    )
    .await;
    let message = format!("{nobody:?}");
    assert!(message.contains("name at least one approver"), "{message}");
    assert!(
        message.contains("maxDuration must be between 1m and 168h"),
        "{message}"
    );
}
