//! The controllers: AccessPolicy → Grants ([`policy`]), AccessRequest
//! judgement ([`request`]: approved requests are what a policy requiring
//! approval grants), and BrokeredSecret validation ([`secret`]), with the
//! status they write ([`status`]).
//!
//! Each reconcile is a pipeline: read the world from watch caches, derive
//! the desired state with a pure function (`ferry_api::grants`,
//! `ferry_api::checks`), apply it with server-side apply (one field
//! manager), delete what is stale, and write status (conditions with
//! reasons) only when it changed. An invalid policy becomes a `Ready=False`
//! condition and waits for a change; it never stops other objects from
//! reconciling. This module holds what both share: the watches that feed
//! them, the context they read, and how failures are counted and retried.

mod limits;
mod policy;
mod request;
mod revocation;
mod secret;
mod status;

pub use limits::{
    DEFAULT_MAX_GRANTS_PER_NAMESPACE, DEFAULT_MAX_GRANTS_PER_POLICY, GrantLimits, TOO_MANY_GRANTS,
};

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_api::confinement::Installation;
use ferry_contract::{MANAGED_BY_LABEL, OPERATOR_MANAGER};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};

use crate::metrics::OperatorMetrics;
use ferry_api::resources::{AccessPolicy, AccessRequest, BrokeredSecret, Grant, Revocation};
use policy::{reconcile_policy, sweep_orphans};
use request::reconcile_request;
use revocation::reconcile_revocation;
use secret::reconcile_secret;

/// Finalizer on AccessPolicies: their Grants live in other namespaces, where
/// owner references cannot reach, so deletion is ours to do.
pub const POLICY_FINALIZER: &str = "ferry.dev/grants";

/// How often an unchanged object is looked at again anyway.
const RESYNC: Duration = Duration::from_secs(600);

/// Reconciles of one kind under way at once. Unbounded, a start with
/// thousands of policies in etcd reconciled them all at once, each with its
/// own apiserver connection and buffers: at 1,000 policies the operator
/// peaked over 200 MiB. The apiserver's write rate bounds convergence
/// either way.
const RECONCILE_CONCURRENCY: u16 = 16;

fn controller_config() -> kube::runtime::controller::Config {
    kube::runtime::controller::Config::default().concurrency(RECONCILE_CONCURRENCY)
}

/// How soon a BrokeredSecret whose references do not resolve is rechecked,
/// at first and at most. Secrets are not watched (the operator may only
/// `get` the ones named, never list them), so an owner who creates or
/// labels the Secret just after the BrokeredSecret is seen within seconds;
/// one left unresolved for long is looked at less often (see
/// [`unresolved_recheck`]).
const UNRESOLVED_RECHECK_FIRST: Duration = Duration::from_secs(2);
const UNRESOLVED_RECHECK_MAX: Duration = Duration::from_secs(30);

/// When to look again at a BrokeredSecret unresolved for `unresolved_for`:
/// an eighth of that, between [`UNRESOLVED_RECHECK_FIRST`] and
/// [`UNRESOLVED_RECHECK_MAX`].
fn unresolved_recheck(unresolved_for: Duration) -> Duration {
    (unresolved_for / 8).clamp(UNRESOLVED_RECHECK_FIRST, UNRESOLVED_RECHECK_MAX)
}

/// How long the controllers may take to stop once shutdown begins. A
/// reconcile under way finishes within it; but kube-runtime's runner waits
/// for its object cache to be filled before it stops, and a shutdown that
/// comes before the cache is filled (a SIGTERM moments after becoming
/// leader) would otherwise wait forever, holding the leader lease.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

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
    requests: Store<AccessRequest>,
    recorder: Recorder,
    metrics: Arc<OperatorMetrics>,
    caches_filled: tokio::sync::watch::Receiver<bool>,
    installation: Installation,
    limits: GrantLimits,
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
    requests: Store<AccessRequest>,
    filled: tokio::sync::watch::Sender<bool>,
) {
    let ready = secrets.wait_until_ready().await.is_ok()
        && namespaces.wait_until_ready().await.is_ok()
        && grants.wait_until_ready().await.is_ok()
        && requests.wait_until_ready().await.is_ok();
    if ready {
        tracing::debug!("watch caches filled");
        let _ = filled.send(true);
    }
}

/// Runs both controllers until `shutdown` completes, with the default
/// installation and [`GrantLimits`].
pub async fn run(
    client: Client,
    metrics: Arc<OperatorMetrics>,
    reporter_instance: Option<String>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    run_with(
        client,
        metrics,
        reporter_instance,
        Installation::default(),
        GrantLimits::default(),
        shutdown,
    )
    .await;
}

/// Runs both controllers until `shutdown` completes, judging
/// BrokeredSecrets by `installation` and capping Grants at `limits`.
pub async fn run_with(
    client: Client,
    metrics: Arc<OperatorMetrics>,
    reporter_instance: Option<String>,
    installation: Installation,
    limits: GrantLimits,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let (secrets, secrets_writer) = reflector::store();
    let (namespaces, namespaces_writer) = reflector::store();
    let (grants, grants_writer) = reflector::store();
    let (requests, requests_writer) = reflector::store();
    let reporter = Reporter {
        controller: OPERATOR_MANAGER.into(),
        instance: reporter_instance,
    };
    let (filled_tx, caches_filled) = tokio::sync::watch::channel(false);
    let filled = announce_filled(
        secrets.clone(),
        namespaces.clone(),
        grants.clone(),
        requests.clone(),
        filled_tx,
    );
    let context = Arc::new(Context {
        client: client.clone(),
        secrets,
        namespaces,
        grants,
        requests,
        recorder: Recorder::new(client.clone(), reporter),
        metrics,
        caches_filled,
        installation,
        limits,
    });

    let policies = Controller::new(
        Api::<AccessPolicy>::all(client.clone()),
        watcher::Config::default(),
    )
    .with_config(controller_config());
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
        triggers.clone(),
        |_, grant| {
            vec![ObjectRef::new(&grant.spec.policy.name).within(&grant.spec.policy.namespace)]
        },
        shutdown.clone(),
    );
    // A request's approval, end or deletion changes its policy's Grants.
    let request_watch = drive(
        reflect(
            requests_writer,
            Api::<AccessRequest>::all(client.clone()),
            watcher::Config::default(),
        ),
        policy_store.clone(),
        triggers,
        |_, request| {
            vec![
                ObjectRef::new(&request.spec.policy)
                    .within(&request.namespace().unwrap_or_default()),
            ]
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

    // Requests follow their policy: approvers copied while Pending, the
    // end of access when the policy goes or stops allowing it.
    let requests = Controller::new(
        Api::<AccessRequest>::all(client.clone()),
        watcher::Config::default(),
    )
    .with_config(controller_config());
    let request_store = requests.store();
    let requests = requests
        .watches(
            Api::<AccessPolicy>::all(client.clone()),
            watcher::Config::default(),
            move |policy| requests_naming(&request_store, &policy),
        )
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(
            |request, ctx| observed::<AccessRequest>(ctx.clone(), reconcile_request(request, ctx)),
            retry::<AccessRequest>,
            context.clone(),
        )
        .for_each(|_| futures::future::ready(()));

    let revocations = Controller::new(
        Api::<Revocation>::all(client.clone()),
        watcher::Config::default(),
    )
    .with_config(controller_config())
    .graceful_shutdown_on(shutdown.clone().cancelled_owned())
    .run(
        |revocation, ctx| {
            observed::<Revocation>(ctx.clone(), reconcile_revocation(revocation, ctx))
        },
        retry::<Revocation>,
        context.clone(),
    )
    .for_each(|_| futures::future::ready(()));

    let secrets = Controller::new(
        Api::<BrokeredSecret>::all(client),
        watcher::Config::default(),
    )
    .with_config(controller_config())
    .graceful_shutdown_on(shutdown.clone().cancelled_owned())
    .run(
        |secret, ctx| observed::<BrokeredSecret>(ctx.clone(), reconcile_secret(secret, ctx)),
        retry::<BrokeredSecret>,
        context.clone(),
    )
    .for_each(|_| futures::future::ready(()));

    let stopping = shutdown.clone();
    let orphans = sweep_orphans(context, policy_store, shutdown);
    let stopped = async {
        tokio::join!(
            policies,
            requests,
            revocations,
            secrets,
            orphans,
            secret_watch,
            namespace_watch,
            grant_watch,
            request_watch,
            filled
        );
    };
    tokio::select! {
        () = stopped => {}
        () = async {
            stopping.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => tracing::warn!(
            grace = ?SHUTDOWN_GRACE,
            "the controllers had not stopped this long after the shutdown began; leaving them"
        ),
    }
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
    // managedFields are most of a server-side-applied object's size and
    // nothing here reads them: the caches keep objects without them.
    let events = watcher(api, config).modify(|object: &mut K| object.managed_fields_mut().clear());
    reflector::reflector(writer, events)
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

/// Requests in a policy's namespace that name it.
fn requests_naming(
    requests: &Store<AccessRequest>,
    policy: &AccessPolicy,
) -> Vec<ObjectRef<AccessRequest>> {
    let (namespace, name) = (policy.namespace(), policy.name_any());
    requests
        .state()
        .iter()
        .filter(|r| r.namespace() == namespace && r.spec.policy == name)
        .map(|r| ObjectRef::from_obj(r.as_ref()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unresolved_secret_is_rechecked_soon_at_first_then_less_often() {
        let secs = Duration::from_secs;
        assert_eq!(unresolved_recheck(secs(0)), secs(2));
        assert_eq!(unresolved_recheck(secs(16)), secs(2));
        assert_eq!(unresolved_recheck(secs(80)), secs(10));
        assert_eq!(unresolved_recheck(secs(3600)), secs(30));
    }

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
}
