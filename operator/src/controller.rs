//! The controllers: AccessPolicy → Grants, and BrokeredSecret validation.
//!
//! Each reconcile is a pipeline: read the world from watch caches, derive
//! the desired state with a pure function ([`crate::grants`]), apply it with
//! server-side apply (one field manager), delete what is stale, and write
//! status (conditions with reasons) only when it changed. An invalid policy
//! becomes a `Ready=False` condition and waits for a change; it never stops
//! other objects from reconciling.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_contract::{MANAGED_BY_LABEL, OPERATOR_MANAGER, POLICY_UID_LABEL};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalized, finalizer};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use crate::metrics::OperatorMetrics;
use ferry_api::grants::{PolicyWorld, derive_grants, next_expiry};
use ferry_api::resources::{
    AccessPolicy, AccessPolicyStatus, BrokeredSecret, BrokeredSecretStatus, Grant,
};
use ferry_api::templates::{JWT_VARIABLES, POSTGRES_VARIABLES, check_templates, check_variables};

/// Finalizer on AccessPolicies: their Grants live in other namespaces, where
/// owner references cannot reach, so deletion is ours to do.
pub const POLICY_FINALIZER: &str = "ferry.dev/grants";

/// How often an unchanged object is looked at again anyway.
const RESYNC: Duration = Duration::from_secs(600);

/// How soon a BrokeredSecret whose references do not resolve is rechecked
/// (Secrets are not watched: the operator only `get`s the ones named).
const UNRESOLVED_RECHECK: Duration = Duration::from_secs(20);

/// How soon a failed reconcile is retried.
const RETRY: Duration = Duration::from_secs(10);

/// How soon a reconcile that lost a write race is retried: the finalizer
/// patch carries a precondition, and a reconcile started from a cached
/// object that trails our own last write fails it. The cache catches up
/// within moments, so waiting the full [`RETRY`] would only delay grants.
const RETRY_CONFLICT: Duration = Duration::from_secs(1);

/// Why a reconcile failed (it is retried; the object's status says more).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// A call to the apiserver failed.
    #[error("{what}: {source}")]
    Kube {
        /// What the controller was doing.
        what: String,
        /// The apiserver's answer.
        source: kube::Error,
    },
    /// Adding or removing the finalizer failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<ReconcileError>>),
    /// A watch cache closed (the process is shutting down).
    #[error("watch cache closed")]
    CacheClosed,
}

impl ReconcileError {
    fn kube(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Self {
        let what = what.into();
        move |source| Self::Kube { what, source }
    }

    /// A short, stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Kube { .. } => "kube",
            Self::Finalizer(_) => "finalizer",
            Self::CacheClosed => "cache_closed",
        }
    }
}

/// What every reconcile reads: the client, watch caches and the recorder.
pub struct Context {
    client: Client,
    secrets: Store<BrokeredSecret>,
    namespaces: Store<Namespace>,
    grants: Store<Grant>,
    recorder: Recorder,
    metrics: Arc<OperatorMetrics>,
    caches_filled: tokio::sync::watch::Receiver<bool>,
}

impl Context {
    /// Waits until every watch cache holds its initial list: deriving from
    /// a half-filled cache would delete valid grants.
    async fn caches_ready(&self) -> Result<(), ReconcileError> {
        let mut filled = self.caches_filled.clone();
        filled
            .wait_for(|filled| *filled)
            .await
            .map(|_| ())
            .map_err(|_| ReconcileError::CacheClosed)
    }
}

/// Flips `filled` once every watch cache holds its initial list.
///
/// kube-runtime's `Store::wait_until_ready` wakes only the most recent of
/// several concurrent waiters (it polls one oneshot receiver from each), so
/// exactly one task waits on each store, here, and everyone else waits on
/// the watch channel.
async fn announce_filled(
    secrets: Store<BrokeredSecret>,
    namespaces: Store<Namespace>,
    grants: Store<Grant>,
    filled: tokio::sync::watch::Sender<bool>,
) {
    let ready = secrets.wait_until_ready().await.is_ok()
        && namespaces.wait_until_ready().await.is_ok()
        && grants.wait_until_ready().await.is_ok();
    if ready {
        tracing::debug!("watch caches filled");
        let _ = filled.send(true);
    }
}

/// Runs both controllers until `shutdown` completes.
pub async fn run(
    client: Client,
    metrics: Arc<OperatorMetrics>,
    reporter_instance: Option<String>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let (secrets, secrets_writer) = reflector::store();
    let (namespaces, namespaces_writer) = reflector::store();
    let (grants, grants_writer) = reflector::store();
    let reporter = Reporter {
        controller: OPERATOR_MANAGER.into(),
        instance: reporter_instance,
    };
    let (filled_tx, caches_filled) = tokio::sync::watch::channel(false);
    let filled = announce_filled(
        secrets.clone(),
        namespaces.clone(),
        grants.clone(),
        filled_tx,
    );
    let context = Arc::new(Context {
        client: client.clone(),
        secrets,
        namespaces,
        grants,
        recorder: Recorder::new(client.clone(), reporter),
        metrics,
        caches_filled,
    });

    let policies = Controller::new(
        Api::<AccessPolicy>::all(client.clone()),
        watcher::Config::default(),
    );
    let policy_store = policies.store();

    // The watch caches are driven here, not through the controller: a
    // reconcile waits for them to be filled, so they must make progress
    // whatever the controller is doing. Their changes reach the controller
    // as triggers through a channel.
    let (triggers, triggered) = futures::channel::mpsc::unbounded();
    let secret_watch = drive(
        reflect(
            secrets_writer,
            Api::<BrokeredSecret>::all(client.clone()),
            watcher::Config::default(),
        ),
        policy_store.clone(),
        triggers.clone(),
        policies_naming,
        shutdown.clone(),
    );
    let namespace_watch = drive(
        reflect(
            namespaces_writer,
            Api::<Namespace>::all(client.clone()),
            watcher::Config::default(),
        ),
        policy_store.clone(),
        triggers.clone(),
        |policies, _| policies_selecting_namespaces(policies),
        shutdown.clone(),
    );
    let grant_watch = drive(
        reflect(
            grants_writer,
            Api::<Grant>::all(client.clone()),
            watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={OPERATOR_MANAGER}")),
        ),
        policy_store.clone(),
        triggers,
        |_, grant| {
            vec![ObjectRef::new(&grant.spec.policy.name).within(&grant.spec.policy.namespace)]
        },
        shutdown.clone(),
    );

    let policies = policies
        .reconcile_on(triggered)
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(
            |policy, ctx| observed::<AccessPolicy>(ctx.clone(), reconcile_policy(policy, ctx)),
            retry::<AccessPolicy>,
            context.clone(),
        )
        .for_each(|_| futures::future::ready(()));

    let secrets = Controller::new(
        Api::<BrokeredSecret>::all(client),
        watcher::Config::default(),
    )
    .graceful_shutdown_on(shutdown.clone().cancelled_owned())
    .run(
        |secret, ctx| observed::<BrokeredSecret>(ctx.clone(), reconcile_secret(secret, ctx)),
        retry::<BrokeredSecret>,
        context.clone(),
    )
    .for_each(|_| futures::future::ready(()));

    let orphans = sweep_orphans(context, policy_store, shutdown);
    tokio::join!(
        policies,
        secrets,
        orphans,
        secret_watch,
        namespace_watch,
        grant_watch,
        filled
    );
}

/// Drains a watch-cache stream until shutdown, sending the policies each
/// changed object concerns to the controller.
async fn drive<K>(
    events: impl Stream<Item = Result<K, watcher::Error>> + Send,
    policies: Store<AccessPolicy>,
    triggers: futures::channel::mpsc::UnboundedSender<ObjectRef<AccessPolicy>>,
    concerned: impl Fn(&Store<AccessPolicy>, &K) -> Vec<ObjectRef<AccessPolicy>>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let events = events.take_until(shutdown.cancelled_owned());
    futures::pin_mut!(events);
    while let Some(event) = events.next().await {
        match event {
            Ok(object) => {
                for policy in concerned(&policies, &object) {
                    // Fails only once the controller has stopped.
                    let _ = triggers.unbounded_send(policy);
                }
            }
            Err(error) => {
                let kind = std::any::type_name::<K>()
                    .rsplit("::")
                    .next()
                    .unwrap_or("object");
                ferry_runtime::lifecycle::log_watch_error(kind, &error);
            }
        }
    }
}

/// A reflector over `api`: keeps `writer`'s store current and yields every
/// touched object, retrying watch errors with backoff.
fn reflect<K>(
    writer: reflector::store::Writer<K>,
    api: Api<K>,
    config: watcher::Config,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    reflector::reflector(writer, watcher(api, config))
        .default_backoff()
        .touched_objects()
}

/// Policies in a BrokeredSecret's namespace that name it.
fn policies_naming(
    policies: &Store<AccessPolicy>,
    secret: &BrokeredSecret,
) -> Vec<ObjectRef<AccessPolicy>> {
    let (namespace, name) = (secret.namespace(), secret.name_any());
    policies
        .state()
        .iter()
        .filter(|p| p.namespace() == namespace && p.spec.secrets.iter().any(|s| s.name == name))
        .map(|p| ObjectRef::from_obj(p.as_ref()))
        .collect()
}

/// Policies with a namespaceSelector subject (a namespace's labels changed).
fn policies_selecting_namespaces(policies: &Store<AccessPolicy>) -> Vec<ObjectRef<AccessPolicy>> {
    policies
        .state()
        .iter()
        .filter(|p| {
            p.spec
                .subjects
                .iter()
                .any(|s| s.namespace_selector.is_some())
        })
        .map(|p| ObjectRef::from_obj(p.as_ref()))
        .collect()
}

async fn reconcile_policy(
    policy: Arc<AccessPolicy>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let ctx = ctx.as_ref();
    ctx.caches_ready().await?;
    let api: Api<AccessPolicy> =
        Api::namespaced(ctx.client.clone(), &policy.namespace().unwrap_or_default());
    finalizer(&api, POLICY_FINALIZER, policy, |event| async {
        match event {
            Finalized::Apply(policy) => apply_policy(&policy, ctx).await,
            Finalized::Cleanup(policy) => delete_grants_of(&policy, ctx)
                .await
                .map(|()| Action::await_change()),
        }
    })
    .await
    .map_err(|e| ReconcileError::Finalizer(Box::new(e)))
}

/// Derives the policy's grants, applies them, deletes stale ones, and
/// records the outcome in status.
async fn apply_policy(policy: &AccessPolicy, ctx: &Context) -> Result<Action, ReconcileError> {
    let namespace = policy.namespace().unwrap_or_default();
    let uid = policy.uid().unwrap_or_default();
    let secrets: BTreeMap<String, BrokeredSecret> = ctx
        .secrets
        .state()
        .iter()
        .filter(|s| s.namespace().as_deref() == Some(namespace.as_str()))
        .map(|s| (s.name_any(), s.as_ref().clone()))
        .collect();
    let namespaces: Vec<Namespace> = if policy
        .spec
        .subjects
        .iter()
        .any(|s| s.namespace_selector.is_some())
    {
        ctx.namespaces
            .state()
            .iter()
            .map(|n| n.as_ref().clone())
            .collect()
    } else {
        Vec::new()
    };
    let now = Timestamp::now();
    let derivation = derive_grants(
        policy,
        PolicyWorld {
            secrets: &secrets,
            namespaces: &namespaces,
            now,
        },
    );

    let existing = ctx.grants.state_filter(|g| g.spec.policy.uid == uid);
    let apply = PatchParams::apply(OPERATOR_MANAGER).force();
    for desired in &derivation.grants {
        let (grant_ns, name) = (desired.namespace().unwrap_or_default(), desired.name_any());
        let unchanged = existing.iter().any(|g| {
            g.namespace().as_deref() == Some(grant_ns.as_str())
                && g.name_any() == name
                && g.spec == desired.spec
                && g.labels() == desired.labels()
        });
        if unchanged {
            continue;
        }
        let mut object = serde_json::to_value(desired).map_err(|e| ReconcileError::Kube {
            what: format!("serializing Grant {grant_ns}/{name}"),
            source: kube::Error::SerdeError(e),
        })?;
        object["apiVersion"] = json!(Grant::api_version(&()));
        object["kind"] = json!(Grant::kind(&()));
        Api::<Grant>::namespaced(ctx.client.clone(), &grant_ns)
            .patch(&name, &apply, &Patch::Apply(object))
            .await
            .map_err(ReconcileError::kube(format!(
                "applying Grant {grant_ns}/{name}"
            )))?;
    }
    let wanted: BTreeSet<(String, String)> = derivation
        .grants
        .iter()
        .map(|g| (g.namespace().unwrap_or_default(), g.name_any()))
        .collect();
    for stale in existing
        .iter()
        .filter(|g| !wanted.contains(&(g.namespace().unwrap_or_default(), g.name_any())))
    {
        delete_grant(ctx, stale).await?;
    }

    // Counted from the cache, which may trail the writes above by a moment.
    ctx.metrics.set_grants(ctx.grants.state().len() as i64);

    let (status, reason, message) = if derivation.expired {
        (
            "False",
            "Expired".to_string(),
            "validUntil has passed; the policy grants nothing".to_string(),
        )
    } else if let Some(first) = derivation.problems.first() {
        let all: Vec<String> = derivation
            .problems
            .iter()
            .map(ToString::to_string)
            .collect();
        ("False", first.reason().to_string(), all.join("; "))
    } else {
        let message = format!(
            "{} grants for {} service accounts",
            derivation.grants.len(),
            derivation.subjects
        );
        ("True", "Granted".to_string(), message)
    };
    let current = policy.status.clone().unwrap_or_default();
    let ready = ready_condition(
        &current.conditions,
        status,
        &reason,
        &message,
        policy.metadata.generation,
    );
    let desired = AccessPolicyStatus {
        conditions: vec![ready.clone()],
        observed_generation: policy.metadata.generation,
        subjects: Some(derivation.subjects as i64),
        grants: Some(derivation.grants.len() as i64),
    };
    write_status(ctx, policy, &current, &desired, &current.conditions, &ready).await?;

    Ok(match next_expiry(policy, now) {
        // One second past validUntil, so the clock has surely passed it.
        Some(left) if left < RESYNC => Action::requeue(left + Duration::from_secs(1)),
        _ => Action::requeue(RESYNC),
    })
}

/// Server-side applies `desired` as the status of `object` when it differs
/// from `current`, and announces a change of the Ready condition from
/// `previous` to `ready` with an Event.
async fn write_status<K, S>(
    ctx: &Context,
    object: &K,
    current: &S,
    desired: &S,
    previous: &[Condition],
    ready: &Condition,
) -> Result<(), ReconcileError>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    S: serde::Serialize + PartialEq,
{
    if desired == current {
        return Ok(());
    }
    let (namespace, name) = (object.namespace().unwrap_or_default(), object.name_any());
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &namespace);
    let patch = json!({"apiVersion": K::api_version(&()), "kind": K::kind(&()), "status": desired});
    api.patch_status(
        &name,
        &PatchParams::apply(OPERATOR_MANAGER).force(),
        &Patch::Apply(patch),
    )
    .await
    .map_err(ReconcileError::kube(format!(
        "writing status of {} {namespace}/{name}",
        K::kind(&())
    )))?;
    announce_transition(ctx, object.object_ref(&()), previous, ready).await;
    Ok(())
}

async fn delete_grant(ctx: &Context, grant: &Grant) -> Result<(), ReconcileError> {
    let (namespace, name) = (grant.namespace().unwrap_or_default(), grant.name_any());
    match Api::<Grant>::namespaced(ctx.client.clone(), &namespace)
        .delete(&name, &DeleteParams::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(source) => Err(ReconcileError::Kube {
            what: format!("deleting Grant {namespace}/{name}"),
            source,
        }),
    }
}

/// Deletes every Grant of a policy being deleted. Lists from the apiserver
/// rather than the cache: missing one here would leave access behind.
async fn delete_grants_of(policy: &AccessPolicy, ctx: &Context) -> Result<(), ReconcileError> {
    let uid = policy.uid().unwrap_or_default();
    let selector = ListParams::default().labels(&format!("{POLICY_UID_LABEL}={uid}"));
    let grants = Api::<Grant>::all(ctx.client.clone())
        .list(&selector)
        .await
        .map_err(ReconcileError::kube(format!(
            "listing Grants of AccessPolicy {}",
            policy.name_any()
        )))?;
    for grant in &grants.items {
        delete_grant(ctx, grant).await?;
    }
    Ok(())
}

/// Deletes Grants whose policy no longer exists (for example when the
/// operator was down while a policy's finalizer was removed by hand).
///
/// The first sweep waits a full period so the controller's policy cache is
/// filled (waiting on that store here would steal its readiness wake-up
/// from the controller, see [`announce_filled`]); and each candidate is
/// re-checked with the apiserver before deletion anyway.
async fn sweep_orphans(
    ctx: Arc<Context>,
    policies: Store<AccessPolicy>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    const EVERY: Duration = Duration::from_secs(60);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(EVERY) => {}
        }
        if ctx.caches_ready().await.is_ok() {
            let live: BTreeSet<String> = policies.state().iter().filter_map(|p| p.uid()).collect();
            let grants = ctx.grants.state();
            ctx.metrics.set_grants(grants.len() as i64);
            for orphan in grants.iter().filter(|g| !live.contains(&g.spec.policy.uid)) {
                // Re-check with the apiserver before deleting: the policy
                // cache may lag behind a policy created a moment ago.
                let api: Api<AccessPolicy> =
                    Api::namespaced(ctx.client.clone(), &orphan.spec.policy.namespace);
                let exists = match api.get_opt(&orphan.spec.policy.name).await {
                    Ok(policy) => policy.is_some_and(|p| {
                        p.uid().as_deref() == Some(orphan.spec.policy.uid.as_str())
                    }),
                    Err(_) => true,
                };
                if !exists {
                    tracing::info!(grant = %ObjectRef::from_obj(orphan.as_ref()), "deleting Grant whose AccessPolicy is gone");
                    if let Err(error) = delete_grant(&ctx, orphan).await {
                        tracing::warn!(%error, "could not delete an orphaned Grant");
                    }
                }
            }
        }
    }
}

/// Checks that a BrokeredSecret's references resolve and says so in status.
async fn reconcile_secret(
    secret: Arc<BrokeredSecret>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let (secret, ctx) = (secret.as_ref(), ctx.as_ref());
    let namespace = secret.namespace().unwrap_or_default();
    let source = &secret.spec.source;
    let (kind, reference) = if let Some(pg) = &source.postgres {
        (
            "postgres",
            Some((
                pg.connection_secret_ref.name.as_str(),
                Some(pg.connection_secret_ref.key.as_str()),
            )),
        )
    } else if let Some(k8s) = &source.kubernetes_secret {
        ("kubernetesSecret", Some((k8s.name.as_str(), None)))
    } else {
        ("jwt", None)
    };
    // The variables the source gives templates, when known.
    let mut provided: Option<Vec<String>> = match kind {
        "postgres" => Some(POSTGRES_VARIABLES.map(String::from).to_vec()),
        "jwt" => Some(JWT_VARIABLES.map(String::from).to_vec()),
        _ => None,
    };
    let (status, reason, message) = match reference {
        None => (
            "True",
            "Resolved",
            format!("{kind} source needs no reference"),
        ),
        Some((name, key)) => {
            let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
            let found = secrets
                .get_opt(name)
                .await
                .map_err(ReconcileError::kube(format!(
                    "reading Secret {namespace}/{name}"
                )))?;
            // Only key names are looked at; values never leave this scope.
            if key.is_none() {
                provided = found
                    .as_ref()
                    .map(|s| s.data.iter().flat_map(|d| d.keys().cloned()).collect());
            }
            let has_key = |k: &str| {
                found
                    .as_ref()
                    .is_some_and(|s| s.data.as_ref().is_some_and(|d| d.contains_key(k)))
            };
            match (found.is_some(), key) {
                (false, _) => (
                    "False",
                    "SecretNotFound",
                    format!("Secret {namespace}/{name} not found"),
                ),
                (true, Some(key)) if !has_key(key) => (
                    "False",
                    "KeyNotFound",
                    format!("Secret {namespace}/{name} has no key {key:?}"),
                ),
                _ => (
                    "True",
                    "Resolved",
                    format!("Secret {namespace}/{name} found"),
                ),
            }
        }
    };
    let (status, reason, message) = match template_problem(&secret.spec.files, provided.as_deref())
    {
        Some(problem) => ("False", "InvalidTemplate", problem),
        None => (status, reason, message),
    };
    let current = secret.status.clone().unwrap_or_default();
    let ready = ready_condition(
        &current.conditions,
        status,
        reason,
        &message,
        secret.metadata.generation,
    );
    let desired = BrokeredSecretStatus {
        conditions: vec![ready.clone()],
        observed_generation: secret.metadata.generation,
        source: Some(kind.to_string()),
    };
    write_status(ctx, secret, &current, &desired, &current.conditions, &ready).await?;
    Ok(Action::requeue(if status == "True" {
        RESYNC
    } else {
        UNRESOLVED_RECHECK
    }))
}

/// What is wrong with a BrokeredSecret's file templates, if anything: a
/// template does not parse, leaves ferry's template subset, or uses a
/// variable its source does not provide (`provided`, when known).
fn template_problem(
    files: &BTreeMap<String, String>,
    provided: Option<&[String]>,
) -> Option<String> {
    let checked = match provided {
        Some(names) => {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            check_variables(files, &names)
        }
        None => check_templates(files),
    };
    checked.err().map(|error| format!("spec.files: {error}"))
}

/// Records a finished reconcile of `K` in the metrics (the controller
/// label is the kind in lower case) and passes its result on.
async fn observed<K: Resource<DynamicType = ()>>(
    ctx: Arc<Context>,
    reconcile: impl std::future::Future<Output = Result<Action, ReconcileError>>,
) -> Result<Action, ReconcileError> {
    let started = Instant::now();
    let result = reconcile.await;
    let controller = K::kind(&()).to_lowercase();
    ctx.metrics.observe_reconcile(
        &controller,
        started.elapsed(),
        result.as_ref().map(|_| ()).map_err(|e| e.kind()),
    );
    result
}

/// What to do after a failed reconcile of `object`: log, count, retry.
fn retry<K: Resource<DynamicType = ()>>(
    object: Arc<K>,
    error: &ReconcileError,
    ctx: Arc<Context>,
) -> Action {
    let object = ObjectRef::from_obj(object.as_ref());
    ctx.metrics
        .observe_error(&K::kind(&()).to_lowercase(), error.kind());
    if lost_write_race(error) {
        // Expected while the cache trails our own last write: not news.
        tracing::debug!(%object, %error, "reconciled from a stale cache; retrying shortly");
        return Action::requeue(RETRY_CONFLICT);
    }
    tracing::warn!(%object, %error, "reconcile failed; retrying");
    Action::requeue(match error {
        ReconcileError::Finalizer(_) => RETRY_CONFLICT,
        _ => RETRY,
    })
}

/// Whether a finalizer patch failed only because its precondition (the
/// finalizer list it expected) no longer held: the apiserver answers a
/// failed JSON-patch `test` with 422 and a stale resourceVersion with 409.
fn lost_write_race(error: &ReconcileError) -> bool {
    use kube::runtime::finalizer::Error as FinalizerError;
    let ReconcileError::Finalizer(error) = error else {
        return false;
    };
    matches!(
        error.as_ref(),
        FinalizerError::AddFinalizer(kube::Error::Api(status))
            | FinalizerError::RemoveFinalizer(kube::Error::Api(status))
            if status.code == 409 || status.code == 422
    )
}

/// The `Ready` condition, keeping its transition time unless the status
/// actually changed.
fn ready_condition(
    previous: &[Condition],
    status: &str,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) -> Condition {
    let last = previous.iter().find(|c| c.type_ == "Ready");
    let last_transition_time = match last {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => Time(Timestamp::now()),
    };
    Condition {
        type_: "Ready".into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time,
    }
}

/// Publishes an Event when the Ready condition's status or reason changes.
async fn announce_transition(
    ctx: &Context,
    reference: k8s_openapi::api::core::v1::ObjectReference,
    previous: &[Condition],
    ready: &Condition,
) {
    let before = previous.iter().find(|c| c.type_ == "Ready");
    if before.is_some_and(|c| c.status == ready.status && c.reason == ready.reason) {
        return;
    }
    let event = Event {
        type_: if ready.status == "True" {
            EventType::Normal
        } else {
            EventType::Warning
        },
        reason: ready.reason.clone(),
        note: Some(ready.message.clone()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &reference).await {
        tracing::warn!(%error, "could not publish an Event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_failed_finalizer_precondition_counts_as_a_lost_write_race() {
        use kube::core::Status;
        use kube::runtime::finalizer::Error as FinalizerError;
        let api = |code| kube::Error::Api(Status::failure("m", "Invalid").with_code(code).boxed());
        let finalizer = |error| ReconcileError::Finalizer(Box::new(error));
        assert!(lost_write_race(&finalizer(FinalizerError::AddFinalizer(
            api(422)
        ))));
        assert!(lost_write_race(&finalizer(
            FinalizerError::RemoveFinalizer(api(409))
        )));
        assert!(!lost_write_race(&finalizer(FinalizerError::AddFinalizer(
            api(403)
        ))));
        assert!(!lost_write_race(&finalizer(FinalizerError::UnnamedObject)));
    }

    fn files(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(f, t)| (f.to_string(), t.to_string()))
            .collect()
    }

    #[test]
    fn valid_templates_are_no_problem() {
        let provided = ["username".to_string(), "password".to_string()];
        let dsn = files(&[(
            "dsn",
            "postgres://{{ username }}:{{ password | urlencode }}@db/x",
        )]);
        assert_eq!(template_problem(&dsn, Some(&provided)), None);
        assert_eq!(template_problem(&BTreeMap::new(), Some(&[])), None);
    }

    #[test]
    fn a_template_that_does_not_parse_is_named_with_its_line() {
        let problem = template_problem(&files(&[("dsn", "ok\n{{ username ")]), None).unwrap();
        assert!(
            problem.starts_with("spec.files: file \"dsn\", line 2: syntax error"),
            "{problem}"
        );
    }

    #[test]
    fn a_variable_the_source_does_not_provide_is_named_with_what_it_does() {
        let provided = ["username".to_string(), "password".to_string()];
        let problem = template_problem(
            &files(&[("dsn", "{{ username }}:{{ pasword }}")]),
            Some(&provided),
        )
        .unwrap();
        assert_eq!(
            problem,
            "spec.files: file \"dsn\": undefined variable {{ pasword }} (the source provides: password, username)"
        );
    }
}
