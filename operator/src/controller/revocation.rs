//! Revocation → status: does its target exist? `Active` when it does (the
//! broker has been acting on it since it was created), `Invalid` when not
//! (the broker then ignores it, so a pod created later under that name is
//! not blocked by an order that named nothing). The phase is decided once;
//! a Revocation is never edited, only deleted.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;

use super::status::{ready_condition, write_status};
use super::{Context, ReconcileError};
use ferry_api::resources::{
    AccessPolicy, BrokeredSecret, Revocation, RevocationPhase, RevocationStatus,
};
use ferry_api::revocation::{Target, describe, target};

#[tracing::instrument(skip_all, fields(revocation = %ObjectRef::from_obj(revocation.as_ref())))]
pub(super) async fn reconcile_revocation(
    revocation: Arc<Revocation>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let ctx = ctx.as_ref();
    let current = revocation.status.clone().unwrap_or_default();
    if current.phase.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = revocation.namespace().unwrap_or_default();
    let missing = match target(&revocation) {
        Some(target) => missing(ctx, &namespace, target).await?,
        None => Some(("NoTarget", "it names no target".to_owned())),
    };
    let what = describe(&revocation);
    let (phase, reason, message) = match missing {
        None => (
            RevocationPhase::Active,
            "Active",
            format!(
                "{what}: every live lease is revoked, and none is issued while this Revocation exists; delete it to lift it"
            ),
        ),
        Some((reason, missing)) => (
            RevocationPhase::Invalid,
            reason,
            format!(
                "{missing}: nothing was revoked and nothing is refused; delete this Revocation and name one that exists"
            ),
        ),
    };
    let ready = ready_condition(
        &current.conditions,
        if phase == RevocationPhase::Active {
            "True"
        } else {
            "False"
        },
        reason,
        &message,
        revocation.metadata.generation,
    );
    let desired = RevocationStatus {
        phase: Some(phase),
        target: Some(what),
        conditions: vec![ready.clone()],
        observed_generation: revocation.metadata.generation,
    };
    write_status(
        ctx,
        revocation.as_ref(),
        &current,
        &desired,
        &current.conditions,
        &ready,
    )
    .await?;
    Ok(Action::await_change())
}

/// Why the target does not exist (a reason and a message), or `None`.
async fn missing(
    ctx: &Context,
    namespace: &str,
    target: Target<'_>,
) -> Result<Option<(&'static str, String)>, ReconcileError> {
    let name = target.name();
    let reading = |kind: &str| format!("reading {kind} {namespace}/{name}");
    let found = match target {
        Target::Pod(_) => Api::<Pod>::namespaced(ctx.client.clone(), namespace)
            .get_opt(name)
            .await
            .map_err(ReconcileError::kube(reading("pod")))?
            .is_some(),
        Target::ServiceAccount(_) => {
            Api::<ServiceAccount>::namespaced(ctx.client.clone(), namespace)
                .get_opt(name)
                .await
                .map_err(ReconcileError::kube(reading("service account")))?
                .is_some()
        }
        Target::Secret(_) => Api::<BrokeredSecret>::namespaced(ctx.client.clone(), namespace)
            .get_opt(name)
            .await
            .map_err(ReconcileError::kube(reading("BrokeredSecret")))?
            .is_some(),
        Target::Policy(_) => Api::<AccessPolicy>::namespaced(ctx.client.clone(), namespace)
            .get_opt(name)
            .await
            .map_err(ReconcileError::kube(reading("AccessPolicy")))?
            .is_some(),
    };
    if found {
        return Ok(None);
    }
    let reason = match target {
        Target::Pod(_) => "PodNotFound",
        Target::ServiceAccount(_) => "ServiceAccountNotFound",
        Target::Secret(_) => "BrokeredSecretNotFound",
        Target::Policy(_) => "AccessPolicyNotFound",
    };
    Ok(Some((
        reason,
        format!("no {} {namespace}/{name} exists", target.kind()),
    )))
}
