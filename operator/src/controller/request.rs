//! AccessRequest → status: judge the request against its policy
//! (`ferry_api::approval::judge_request`), write the phase, who decided,
//! when access starts and ends, and which Grants it yields, and announce
//! each phase with an Event. The Grants themselves are the policy
//! controller's: a request's change triggers its policy's reconcile, which
//! counts the approved requests.

use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::policy::world_of;
use super::status::ready_condition;
use super::{Context, RESYNC, ReconcileError};
use ferry_api::approval::{approved_access, judge_request};
use ferry_api::grants::{PolicyWorld, derive_grants};
use ferry_api::resources::{AccessPolicy, AccessRequest, AccessRequestStatus, RequestPhase};
use ferry_contract::OPERATOR_MANAGER;

#[tracing::instrument(skip_all, fields(request = %ObjectRef::from_obj(request.as_ref())))]
pub(super) async fn reconcile_request(
    request: Arc<AccessRequest>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let ctx = ctx.as_ref();
    let current = request.status.clone().unwrap_or_default();
    if current.phase.is_some_and(RequestPhase::is_final) && current.grants.is_empty() {
        return Ok(Action::await_change());
    }
    ctx.caches_ready().await?;
    let namespace = request.namespace().unwrap_or_default();
    let policy = Api::<AccessPolicy>::namespaced(ctx.client.clone(), &namespace)
        .get_opt(&request.spec.policy)
        .await
        .map_err(ReconcileError::kube(format!(
            "reading AccessPolicy {namespace}/{}",
            request.spec.policy
        )))?;
    let now = Timestamp::now();
    let judgement = judge_request(&request, policy.as_ref(), now);
    let phase = judgement.phase().unwrap_or(RequestPhase::Pending);

    let mut desired = judgement.status.clone();
    desired.grants = policy
        .as_ref()
        .map(|policy| grants_of(&request, &desired, policy, ctx, now))
        .unwrap_or_default();
    desired.observed_generation = request.metadata.generation;
    let granting = if phase == RequestPhase::Approved {
        "True"
    } else {
        "False"
    };
    let ready = ready_condition(
        &current.conditions,
        granting,
        phase.as_str(),
        &judgement.message,
        request.metadata.generation,
    );
    desired.conditions = vec![ready];
    if desired != current {
        write_request_status(ctx, &request, &desired).await?;
        if current.phase != Some(phase) {
            announce(ctx, &request, phase, &judgement.message).await;
        }
    }
    Ok(match judgement.recheck_in {
        Some(left) if left < RESYNC => Action::requeue(left),
        _ if phase.is_final() => Action::await_change(),
        _ => Action::requeue(RESYNC),
    })
}

/// The Grants (`<namespace>/<name>`) the request yields with `status`:
/// what its policy derives from this approval alone (none unless it is
/// Approved and current).
fn grants_of(
    request: &AccessRequest,
    status: &AccessRequestStatus,
    policy: &AccessPolicy,
    ctx: &Context,
    now: Timestamp,
) -> Vec<String> {
    let judged = AccessRequest {
        status: Some(status.clone()),
        ..request.clone()
    };
    let Some(access) = approved_access(&judged, &policy.uid().unwrap_or_default(), now) else {
        return Vec::new();
    };
    let (secrets, namespaces) = world_of(policy, ctx);
    // The policy's other approvals do not change which Grants this one
    // covers, only how long they last; they are left out.
    let derivation = derive_grants(
        policy,
        PolicyWorld {
            secrets: &secrets,
            namespaces: &namespaces,
            now,
            approved: std::slice::from_ref(&access),
        },
    );
    derivation
        .grants
        .iter()
        .map(|g| format!("{}/{}", g.namespace().unwrap_or_default(), g.name_any()))
        .collect()
}

/// Server-side applies `status` as the request's status.
async fn write_request_status(
    ctx: &Context,
    request: &AccessRequest,
    status: &AccessRequestStatus,
) -> Result<(), ReconcileError> {
    let (namespace, name) = (request.namespace().unwrap_or_default(), request.name_any());
    let patch = json!({
        "apiVersion": AccessRequest::api_version(&()),
        "kind": AccessRequest::kind(&()),
        "status": status,
    });
    Api::<AccessRequest>::namespaced(ctx.client.clone(), &namespace)
        .patch_status(
            &name,
            &PatchParams::apply(OPERATOR_MANAGER).force(),
            &Patch::Apply(patch),
        )
        .await
        .map_err(ReconcileError::kube(format!(
            "writing status of AccessRequest {namespace}/{name}"
        )))?;
    Ok(())
}

/// Publishes the request's new phase as an Event: who decided and why,
/// or why it expired, ended or is invalid.
async fn announce(ctx: &Context, request: &AccessRequest, phase: RequestPhase, message: &str) {
    let event = Event {
        type_: match phase {
            RequestPhase::Pending | RequestPhase::Approved | RequestPhase::Ended => {
                EventType::Normal
            }
            RequestPhase::Denied | RequestPhase::Expired | RequestPhase::Invalid => {
                EventType::Warning
            }
        },
        reason: phase.as_str().into(),
        note: Some(message.chars().take(1024).collect()),
        action: "Judge".into(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &request.object_ref(&())).await {
        super::status::event_not_published(&error);
    }
}
