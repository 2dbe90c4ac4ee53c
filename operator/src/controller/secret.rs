//! BrokeredSecret validation: look up the Secret its source names (key
//! names only), reach the verdict with `ferry_api::checks::verdict`, and
//! write it as the `Ready` condition.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;

use super::status::{ready_condition, write_status};
use super::{Context, RESYNC, ReconcileError, unresolved_recheck};
use ferry_api::checks::{self, FoundSecret, Reference};
use ferry_api::resources::{BrokeredSecret, BrokeredSecretStatus};
use ferry_contract::BROKERABLE_LABEL;

/// Checks that a BrokeredSecret's references resolve and its templates
/// render, and says so in status.
#[tracing::instrument(skip_all, fields(secret = %ObjectRef::from_obj(secret.as_ref())))]
pub(super) async fn reconcile_secret(
    secret: Arc<BrokeredSecret>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let (secret, ctx) = (secret.as_ref(), ctx.as_ref());
    let namespace = secret.namespace().unwrap_or_default();
    // Only key names, the type and the opt-in label are kept; values never
    // leave this scope.
    let found: Option<FoundSecret> = match checks::reference(secret) {
        None => None,
        Some(Reference { name, .. }) => Api::<Secret>::namespaced(ctx.client.clone(), &namespace)
            .get_opt(name)
            .await
            .map_err(ReconcileError::kube(format!(
                "reading Secret {namespace}/{name}"
            )))?
            .map(|found| FoundSecret {
                brokerable: found
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|labels| labels.get(BROKERABLE_LABEL))
                    .cloned(),
                secret_type: found.type_,
                keys: found
                    .data
                    .into_iter()
                    .flat_map(|data| data.into_keys())
                    .collect(),
            }),
    };
    let verdict = checks::judge(secret, found.as_ref(), &ctx.installation);
    let status = if verdict.ready { "True" } else { "False" };
    // The custody part of status is the broker's (its own field manager):
    // left out of what is compared and applied, so it is neither taken
    // over nor rewritten here.
    let current = BrokeredSecretStatus {
        custody: None,
        ..secret.status.clone().unwrap_or_default()
    };
    let ready = ready_condition(
        &current.conditions,
        status,
        verdict.reason,
        &verdict.message,
        secret.metadata.generation,
    );
    let desired = BrokeredSecretStatus {
        conditions: vec![ready.clone()],
        observed_generation: secret.metadata.generation,
        source: Some(verdict.source.to_string()),
        custody: None,
    };
    write_status(ctx, secret, &current, &desired, &current.conditions, &ready).await?;
    Ok(Action::requeue(if verdict.ready {
        RESYNC
    } else {
        // A transition time ahead of this clock counts as just now.
        let since = Timestamp::now().duration_since(ready.last_transition_time.0);
        unresolved_recheck(Duration::try_from(since).unwrap_or_default())
    }))
}
