//! The status both controllers write: one `Ready` condition, applied only
//! when it changed, and an Event when its status or reason changes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::{Context, ReconcileError};
use ferry_contract::OPERATOR_MANAGER;

/// Server-side applies `desired` as the status of `object` when it differs
/// from `current`, and announces a change of the Ready condition from
/// `previous` to `ready` with an Event.
pub(super) async fn write_status<K, S>(
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

/// The `Ready` condition, keeping its transition time unless the status
/// actually changed.
pub(super) fn ready_condition(
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
        event_not_published(&error);
    }
}

/// Logs an Event the apiserver would not take. Into a namespace being
/// deleted that is expected (its objects go with it), so only at debug;
/// anything else is a warning naming the code and message, never the
/// whole Status.
pub(super) fn event_not_published(error: &kube::Error) {
    match error {
        kube::Error::Api(status) if namespace_terminating(status) => {
            tracing::debug!(message = %status.message, "no Event: its namespace is being deleted");
        }
        kube::Error::Api(status) => {
            tracing::warn!(code = status.code, reason = %status.reason, message = %status.message, "could not publish an Event");
        }
        other => tracing::warn!(error = %other, "could not publish an Event"),
    }
}

/// Whether the apiserver refused a write because the namespace is being
/// deleted (403 with the cause `NamespaceTerminating`).
fn namespace_terminating(status: &kube::core::Status) -> bool {
    status.code == 403
        && status
            .details
            .as_ref()
            .is_some_and(|d| d.causes.iter().any(|c| c.reason == "NamespaceTerminating"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16, cause: &str) -> kube::core::Status {
        serde_json::from_value(json!({
            "status": "Failure", "code": code, "reason": "Forbidden",
            "message": "events is forbidden: unable to create new content in namespace shop because it is being terminated",
            "details": {"kind": "events", "causes": [{"reason": cause, "message": "namespace shop is being terminated", "field": "metadata.namespace"}]},
        }))
        .unwrap()
    }

    #[test]
    fn a_refusal_in_a_namespace_being_deleted_is_recognised_and_nothing_else_is() {
        assert!(namespace_terminating(&status(403, "NamespaceTerminating")));
        assert!(!namespace_terminating(&status(403, "FieldValueInvalid")));
        assert!(!namespace_terminating(&status(422, "NamespaceTerminating")));
    }
}
