//! AccessPolicy → Grants: derive the Grants a policy means, apply them,
//! delete the stale ones, keep the finalizer that deletes them all with
//! the policy, and sweep Grants whose policy is gone.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use ferry_contract::{OPERATOR_MANAGER, POLICY_UID_LABEL};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalized, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::status::{ready_condition, write_status};
use super::{Context, POLICY_FINALIZER, RESYNC, ReconcileError, TOO_MANY_GRANTS};
use ferry_api::approval::approved_access;
use ferry_api::grants::{ApprovedAccess, PolicyWorld, derive_grants, next_expiry, secret_names};
use ferry_api::resources::{AccessPolicy, AccessPolicyStatus, BrokeredSecret, Grant};

#[tracing::instrument(skip_all, fields(policy = %ObjectRef::from_obj(policy.as_ref())))]
pub(super) async fn reconcile_policy(
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
    let (secrets, namespaces) = world_of(policy, ctx);
    let now = Timestamp::now();
    let approved = approved_for(policy, ctx, now);
    let derivation = derive_grants(
        policy,
        PolicyWorld {
            secrets: &secrets,
            namespaces: &namespaces,
            now,
            approved: &approved,
        },
    );

    let existing = ctx.grants.state_filter(|g| g.spec.policy.uid == uid);
    let others = ctx
        .grants
        .state()
        .iter()
        .filter(|g| g.spec.policy.namespace == namespace && g.spec.policy.uid != uid)
        .count();
    let over_cap = ctx
        .limits
        .exceeded(&namespace, derivation.grants.len(), others);
    // Over a cap, no Grant is added: those the policy already holds and
    // still derives stay (no outage for what was granted), the rest go.
    let desired_grants: Vec<&Grant> = derivation
        .grants
        .iter()
        .filter(|desired| {
            over_cap.is_none()
                || existing.iter().any(|g| {
                    g.namespace() == desired.namespace() && g.name_any() == desired.name_any()
                })
        })
        .collect();
    let apply = PatchParams::apply(OPERATOR_MANAGER).force();
    for desired in desired_grants.iter().copied() {
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
    let wanted: BTreeSet<(String, String)> = desired_grants
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
    } else if let Some(message) = &over_cap {
        ("False", TOO_MANY_GRANTS.to_string(), message.clone())
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
        grants: Some(desired_grants.len() as i64),
        secret_names: Some(secret_names(policy)),
    };
    write_status(ctx, policy, &current, &desired, &current.conditions, &ready).await?;

    Ok(match next_expiry(policy, &approved, now) {
        // One second past validUntil, so the clock has surely passed it.
        Some(left) if left < RESYNC => Action::requeue(left + Duration::from_secs(1)),
        _ => Action::requeue(RESYNC),
    })
}

/// The BrokeredSecrets of the policy's namespace, by name, and the
/// namespaces its selectors judge (none when it has no selector).
pub(super) fn world_of(
    policy: &AccessPolicy,
    ctx: &Context,
) -> (BTreeMap<String, BrokeredSecret>, Vec<Namespace>) {
    let namespace = policy.namespace().unwrap_or_default();
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
    (secrets, namespaces)
}

/// The access the policy's approved, unexpired AccessRequests give, from
/// the watch cache (none when the policy does not require approval).
fn approved_for(policy: &AccessPolicy, ctx: &Context, now: Timestamp) -> Vec<ApprovedAccess> {
    if policy.spec.approval.is_none() {
        return Vec::new();
    }
    let (namespace, name) = (policy.namespace(), policy.name_any());
    let uid = policy.uid().unwrap_or_default();
    ctx.requests
        .state()
        .iter()
        .filter(|r| r.namespace() == namespace && r.spec.policy == name)
        .filter_map(|r| approved_access(r, &uid, now))
        .collect()
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
pub(super) async fn sweep_orphans(
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
