//! Installing ferry's CRDs into a harness cluster.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions::is_crd_established};
use kube::{Client, ResourceExt};

use crate::HarnessError;

/// The field manager the harness applies CRDs with.
const FIELD_MANAGER: &str = "ferry-e2e";

/// How long the apiserver may take to establish one CRD.
const ESTABLISH_DEADLINE: Duration = Duration::from_secs(60);

/// Applies ferry's CRDs with server-side apply and waits until each is
/// Established, then the admission policies the chart installs with them
/// (only the operator writes Grants; the broker's Secret updates are
/// narrowed; AccessRequests are decided by an authenticated approver). Idempotent, and safe to call from many tests at once: every
/// call applies the same objects as the same field manager.
pub async fn install_crds(client: &Client) -> Result<(), HarnessError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let apply = PatchParams::apply(FIELD_MANAGER).force();
    let crds = ferry_api::crds();
    for crd in &crds {
        api.patch(&crd.name_any(), &apply, &Patch::Apply(crd))
            .await?;
    }
    for crd in &crds {
        let name = crd.name_any();
        let established = await_condition(api.clone(), &name, is_crd_established());
        match tokio::time::timeout(ESTABLISH_DEADLINE, established).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                return Err(HarnessError::Process(format!(
                    "waiting for CRD {name} to be established: {error}"
                )));
            }
            Err(_) => {
                return Err(HarnessError::Process(format!(
                    "CRD {name} was not established after {ESTABLISH_DEADLINE:?}"
                )));
            }
        }
    }
    // Grants come with the rule of who may write them, the broker that
    // reads them with the rule of which Secrets it may write, and
    // AccessRequests with the rule of who requests and who decides.
    crate::install_grant_policy(client, &crate::harness_grant_writers()).await?;
    crate::install_broker_secret_policy(client).await?;
    crate::install_access_request_policy(client).await
}
