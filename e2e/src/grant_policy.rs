//! The admission policy that lets only the operator write Grants, installed
//! into harness clusters with every CRD install: the harness runs the
//! operator in-process as its admin (or impersonating the operator's
//! service account), so both identities are the writers here; tests act
//! as tenants by impersonation to see everyone else refused.

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use kube::Client;
use kube::api::{Api, Patch, PatchParams};

use crate::HarnessError;
use crate::cluster::ADMIN_USER;
use crate::stack::FERRY_NAMESPACE;
use ferry_operator::admission::grants::{
    GRANT_POLICY_NAME, grant_admission_policy, operator_username,
};

/// Who may write Grants in a harness cluster: the admin the in-process
/// operator runs as, and the operator's service account in ferry's
/// namespace (tests that run the operator with least privilege).
pub fn harness_grant_writers() -> Vec<String> {
    vec![ADMIN_USER.to_owned(), operator_username(FERRY_NAMESPACE)]
}

/// Applies the Grant admission policy and its binding (idempotent).
pub async fn install_grant_policy(client: &Client, writers: &[String]) -> Result<(), HarnessError> {
    let (policy, binding) = grant_admission_policy(writers);
    let apply = PatchParams::apply("ferry-e2e").force();
    Api::<ValidatingAdmissionPolicy>::all(client.clone())
        .patch(GRANT_POLICY_NAME, &apply, &Patch::Apply(&policy))
        .await?;
    Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
        .patch(GRANT_POLICY_NAME, &apply, &Patch::Apply(&binding))
        .await?;
    Ok(())
}
