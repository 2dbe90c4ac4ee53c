//! The admission policies installed into harness clusters with every CRD
//! install, as the chart installs them:
//!
//! - only the operator writes Grants: the harness runs the operator
//!   in-process as its admin (or impersonating the operator's service
//!   account), so both identities are the writers here; tests act as
//!   tenants by impersonation to see everyone else refused;
//! - the broker's service account in [`FERRY_NAMESPACE`] updates only a
//!   brokerable Secret's refresh token, claim annotation and shared access
//!   token (tests that run the broker with least privilege impersonate
//!   that account);
//! - an AccessRequest's requester and approver are the users the apiserver
//!   authenticated, and never the same.

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};

use crate::HarnessError;
use crate::cluster::ADMIN_USER;
use crate::stack::FERRY_NAMESPACE;
use ferry_operator::admission::access_requests::access_request_policy;
use ferry_operator::admission::broker_secrets::broker_secret_policy;
use ferry_operator::admission::grants::{grant_admission_policy, operator_username};

/// Who may write Grants in a harness cluster: the admin the in-process
/// operator runs as, and the operator's service account in ferry's
/// namespace (tests that run the operator with least privilege).
pub fn harness_grant_writers() -> Vec<String> {
    vec![ADMIN_USER.to_owned(), operator_username(FERRY_NAMESPACE)]
}

/// Applies the Grant admission policy and its binding (idempotent).
pub async fn install_grant_policy(client: &Client, writers: &[String]) -> Result<(), HarnessError> {
    let (policy, binding) = grant_admission_policy(writers);
    apply(client, &policy, &binding).await
}

/// Applies the policy narrowing the Secret updates of the broker in
/// [`FERRY_NAMESPACE`], and its binding (idempotent).
pub async fn install_broker_secret_policy(client: &Client) -> Result<(), HarnessError> {
    let (policy, binding) = broker_secret_policy(FERRY_NAMESPACE);
    apply(client, &policy, &binding).await
}

/// Applies the policy checking who creates and decides AccessRequests, and
/// its binding (idempotent).
pub async fn install_access_request_policy(client: &Client) -> Result<(), HarnessError> {
    let (policy, binding) = access_request_policy();
    apply(client, &policy, &binding).await
}

/// Applies `policy` and then `binding`, so the binding never names a
/// policy the apiserver has not seen.
async fn apply(
    client: &Client,
    policy: &ValidatingAdmissionPolicy,
    binding: &ValidatingAdmissionPolicyBinding,
) -> Result<(), HarnessError> {
    let apply = PatchParams::apply("ferry-e2e").force();
    Api::<ValidatingAdmissionPolicy>::all(client.clone())
        .patch(&policy.name_any(), &apply, &Patch::Apply(policy))
        .await?;
    Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
        .patch(&binding.name_any(), &apply, &Patch::Apply(binding))
        .await?;
    Ok(())
}
